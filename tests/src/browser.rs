//! Real headless browsers, Chromium and Firefox ESR, driven over WebDriver, for the page's
//! end-to-end tests.
//!
//! Each [`Browser`] is its own driver process (`chromedriver` or `geckodriver`, on a free
//! loopback port) with one browser session in a fresh profile directory. It is driven with
//! `fantoccini`, a WebDriver client: WebDriver is the W3C standard protocol, so one harness
//! drives both browsers (CDP would tie the tests to Chromium).
//!
//! Everything a test checks goes through the page's DOM contract (INTERFACES.md, "Page"):
//! `data-self-id`, `data-peer-id` + `data-channel` + `data-connection`, `#message`/`#send`,
//! `data-chat-from` + `[data-chat-text]`. A wait that runs out fails the test with what the page
//! showed at that moment, the browser console, and a screenshot under `target/browser-failures/`.
//!
//! Where the programs come from (a missing one fails the test and says how to install it):
//! - Chromium: Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`,
//!   `/usr/bin/chromedriver`); `SWITCHBOARD_CHROMIUM` and `SWITCHBOARD_CHROMEDRIVER` point
//!   elsewhere.
//! - Firefox: Debian's `firefox-esr` (`/usr/bin/firefox-esr`) and geckodriver from crates.io
//!   (`cargo install --locked geckodriver`, found on `PATH` or in `~/.cargo/bin`);
//!   `SWITCHBOARD_FIREFOX` and `SWITCHBOARD_GECKODRIVER` point elsewhere.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fantoccini::{Client, ClientBuilder, Locator};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

use crate::server::Server;

/// How long a wait for something the page should show may take before the test fails. It is a
/// deadline for "this never happens", not a performance threshold.
pub const BROWSER_DEADLINE: Duration = Duration::from_secs(30);
/// How long chromedriver and Chromium may take to start.
const START_DEADLINE: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(50);

const CHROMIUM_ENV: &str = "SWITCHBOARD_CHROMIUM";
const CHROMEDRIVER_ENV: &str = "SWITCHBOARD_CHROMEDRIVER";
const CHROMIUM_INSTALL_HINT: &str = "install Debian's `chromium` and `chromium-driver` packages \
     (`apt-get install -y chromium chromium-driver`; scripts/test.sh does it)";
const FIREFOX_ENV: &str = "SWITCHBOARD_FIREFOX";
const GECKODRIVER_ENV: &str = "SWITCHBOARD_GECKODRIVER";
const FIREFOX_INSTALL_HINT: &str = "install Debian's `firefox-esr` package and geckodriver \
     (`apt-get install -y firefox-esr` and `cargo install --locked geckodriver`; scripts/test.sh does both)";

/// Chromium flags for a headless run on a machine without a network, and for WebRTC on a
/// loopback-only interface: without `--allow-loopback-in-peer-connection` Chromium never pairs
/// 127.0.0.1 candidates, and without camera/microphone permission (`--use-fake-ui-for-media-stream`
/// grants it) it hides local addresses and gathers no host candidates at all.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--allow-loopback-in-peer-connection",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    // Headless screens are 800 px high unless told otherwise, which caps the window.
    "--screen-info={0,0 1920x1200}",
    "--enable-logging=stderr",
    "--v=0",
];

/// Firefox preferences for the same job, written into the fresh profile by geckodriver
/// (`moz:firefoxOptions.prefs`); measured in ../shared/notes/round2.md.
fn firefox_prefs() -> Value {
    json!({
        // Firefox gathers no loopback candidates without this, and a test namespace has only `lo`.
        "media.peerconnection.ice.loopback": true,
        // Without camera/microphone permission Firefox hides local addresses and, in a
        // loopback-only namespace, gathers no candidates at all (as Chromium does). 1 = allow.
        "permissions.default.camera": 1,
        "permissions.default.microphone": 1,
        // A fake camera and microphone (Chromium: --use-fake-device-for-media-stream), without
        // the permission prompt (Chromium: --use-fake-ui-for-media-stream).
        "media.navigator.streams.fake": true,
        "media.navigator.permission.disabled": true,
        // The page's console.* lines go to stdout, hence to the log that failures quote.
        "devtools.console.stdout.content": true,
        // No look-ups that a machine without a network cannot answer.
        "network.captive-portal-service.enabled": false,
        "network.connectivity-service.enabled": false,
        "browser.safebrowsing.update.enabled": false,
        "extensions.update.enabled": false,
        "app.update.disabledForTesting": true,
        "datareporting.policy.dataSubmissionEnabled": false,
        "toolkit.telemetry.reportingpolicy.firstRun": false,
    })
}

/// Which browser a [`Browser`] runs. Tests that should hold in every browser loop over
/// [`BrowserKind::ALL`] or are generated once per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrowserKind {
    /// Debian's `chromium`, through `chromedriver`.
    Chromium,
    /// Debian's `firefox-esr`, through `geckodriver`.
    Firefox,
}

impl BrowserKind {
    /// Every browser the page is tested in.
    pub const ALL: [BrowserKind; 2] = [BrowserKind::Chromium, BrowserKind::Firefox];

    /// `chromium` or `firefox`, as used in test names and labels.
    pub fn name(self) -> &'static str {
        match self {
            BrowserKind::Chromium => "chromium",
            BrowserKind::Firefox => "firefox",
        }
    }
}

impl std::fmt::Display for BrowserKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The page's `web/` directory in this checkout: tests serve it with `--web-dir`, so that they
/// test the files in the tree rather than whatever copy a server binary embedded.
pub fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(|p| p.join("web")).unwrap_or_else(|| "web".into())
}

/// Starts the server serving this checkout's `web/` (see [`web_dir`]), plus `extra_args`.
pub async fn start_server_with_page(extra_args: &[&str]) -> Server {
    let web = web_dir();
    let web = web.to_str().unwrap_or_else(|| panic!("web dir {} is not UTF-8", web.display()));
    let mut args = vec!["--web-dir", web];
    args.extend_from_slice(extra_args);
    Server::start(&args).await
}

/// A chat line as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatLine {
    /// `data-chat-from`: the sender's id.
    pub from: String,
    /// The `[data-chat-text]` element's textContent.
    pub text: String,
}

/// A remote peer's entry in the page's peer list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PeerEntry {
    /// `data-peer-id`
    pub id: String,
    /// `data-channel`: the `chat` channel's readyState.
    pub channel: String,
    /// `data-connection`: the RTCPeerConnection's connectionState.
    pub connection: String,
}

/// One browser with its own driver and profile. Close it with [`Browser::close`]; when dropped,
/// the driver is killed (the browser then goes with the test's PID namespace).
pub struct Browser {
    kind: BrowserKind,
    label: String,
    client: Client,
    driver: Child,
    /// The browser's profile (Chromium) or the driver's temp dir holding it (Firefox).
    profile: PathBuf,
    log: PathBuf,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("kind", &self.kind)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a desktop-sized window (1280×800).
    /// Fails the test, saying why, when either cannot be started.
    pub async fn start(label: &str) -> Browser {
        Browser::start_sized(label, 1280, 800).await
    }

    /// [`Browser::start`] with another window size.
    pub async fn start_sized(label: &str, width: u32, height: u32) -> Browser {
        Browser::start_kind_sized(BrowserKind::Chromium, label, width, height).await
    }

    /// Starts a headless Firefox ESR through geckodriver (1280×800).
    pub async fn start_firefox(label: &str) -> Browser {
        Browser::start_kind(BrowserKind::Firefox, label).await
    }

    /// Starts a headless browser of `kind` with a desktop-sized window (1280×800).
    pub async fn start_kind(kind: BrowserKind, label: &str) -> Browser {
        Browser::start_kind_sized(kind, label, 1280, 800).await
    }

    /// [`Browser::start_kind`] with another window size. Fails the test, saying why, when the
    /// browser or its driver cannot be started.
    pub async fn start_kind_sized(kind: BrowserKind, label: &str, width: u32, height: u32) -> Browser {
        Browser::start_at(kind, &DriverPlace::here(), label, width, height).await
    }

    /// A Chromium whose chromedriver and browser run inside a [`crate::Side`] of a
    /// [`crate::SplitNetwork`]: the page's WebRTC uses that side's network. The test reaches
    /// chromedriver over the side's link.
    pub async fn start_in(label: &str, side: &crate::Side) -> Browser {
        Browser::start_kind_in(BrowserKind::Chromium, label, side).await
    }

    /// [`Browser::start_in`] for a browser of `kind`.
    pub async fn start_kind_in(kind: BrowserKind, label: &str, side: &crate::Side) -> Browser {
        let place = DriverPlace { launcher: side.launcher(), driver_ip: side.addr, client_ip: side.gateway };
        Browser::start_at(kind, &place, label, 1280, 800).await
    }

    async fn start_at(
        kind: BrowserKind,
        place: &DriverPlace,
        label: &str,
        width: u32,
        height: u32,
    ) -> Browser {
        let (browser, driver) = match kind {
            BrowserKind::Chromium => (
                program(CHROMIUM_ENV, &["/usr/bin/chromium"], "Chromium", CHROMIUM_INSTALL_HINT),
                program(CHROMEDRIVER_ENV, &["/usr/bin/chromedriver"], "ChromeDriver", CHROMIUM_INSTALL_HINT),
            ),
            BrowserKind::Firefox => (
                program(FIREFOX_ENV, &["/usr/bin/firefox-esr"], "Firefox ESR", FIREFOX_INSTALL_HINT),
                program(GECKODRIVER_ENV, &geckodriver_candidates(), "geckodriver", FIREFOX_INSTALL_HINT),
            ),
        };
        let label = format!("{label}-{kind}");
        // A start that stalls (seen once in a few dozen on a loaded 2-core machine) is tried
        // once more with a new driver and profile; a second failure fails the test.
        let mut first_failure = None;
        for _ in 0..2 {
            match launch(kind, &browser, &driver, place, &label, width, height).await {
                Ok(started) => {
                    if let Some(why) = &first_failure {
                        eprintln!(
                            "browser {label}: the first start failed, the second worked. First failure: {why}"
                        );
                    }
                    eprintln!("browser {label}: {}", started.version());
                    return started;
                }
                Err(why) if first_failure.is_none() => first_failure = Some(why),
                Err(why) => panic!(
                    "browser {label}: {kind} could not be started twice.\nfirst: {}\nsecond: {why}",
                    first_failure.unwrap_or_default()
                ),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Which browser this is.
    pub fn kind(&self) -> BrowserKind {
        self.kind
    }

    /// The browser's name and version as its driver reported them at start, e.g.
    /// `firefox 140.10.2`.
    pub fn version(&self) -> String {
        let caps = self.client.capabilities();
        let field = |name: &str| {
            caps.and_then(|c| c.get(name)).and_then(Value::as_str).unwrap_or("unknown").to_string()
        };
        format!("{} {}", field("browserName"), field("browserVersion"))
    }

    /// The WebDriver client, for anything the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Navigates to `url` (returns at once: the page loads in the background).
    pub async fn open(&self, url: &str) {
        if let Err(e) = self.client.goto(url).await {
            self.fail(&format!("cannot open {url}: {e}")).await;
        }
    }

    /// Opens `/?room=ROOM&name=NAME` on `server` and waits for the page's `welcome`; returns
    /// its own id (`data-self-id`).
    pub async fn join(&self, server: &Server, room: &str, name: &str) -> String {
        self.open(&format!("{}/?room={room}&name={name}", server.http_url())).await;
        self.self_id().await
    }

    /// Opens `/` and joins through the form (`#room`, `#name`, `#join`), as a person would;
    /// returns its own id.
    pub async fn join_with_form(&self, server: &Server, room: &str, name: &str) -> String {
        self.open(&format!("{}/", server.http_url())).await;
        self.type_into("#room", room).await;
        self.type_into("#name", name).await;
        self.click("#join").await;
        self.self_id().await
    }

    /// Opens `/` and waits until its join form can be submitted: the page's scripts have run
    /// and it has not joined (a previous run's page leaves on unload).
    pub async fn open_join_form(&self, server: &Server) {
        self.open(&format!("{}/", server.http_url())).await;
        self.wait_until(
            "the join form, page scripts loaded",
            "return location.search === '' && document.readyState === 'complete' \
             && document.querySelector('#join-form') !== null && !document.querySelector('[data-self-id]');",
        )
        .await;
    }

    /// Fills the open join form with `room` and `name` and submits it; returns at once (a
    /// benchmark installs its timing hooks between [`Browser::open_join_form`] and this).
    pub async fn submit_join_form(&self, room: &str, name: &str) {
        self.eval(&format!(
            r#"document.querySelector('#room').value = {room};
               document.querySelector('#name').value = {name};
               document.querySelector('#join-form').requestSubmit();
               return true;"#,
            room = serde_json::json!(room),
            name = serde_json::json!(name)
        ))
        .await;
    }

    /// Waits for `data-self-id` and returns it.
    pub async fn self_id(&self) -> String {
        let v = self
            .wait_until(
                "own id (data-self-id)",
                "const e = document.querySelector('[data-self-id]'); return e && e.dataset.selfId;",
            )
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Waits until the peer `id` is listed with its `chat` channel open and its connection
    /// `connected`.
    pub async fn wait_connected(&self, id: &str) {
        self.wait_for_css(
            &format!("peer {id} with an open chat channel"),
            &format!(r#"[data-peer-id="{id}"][data-channel="open"][data-connection="connected"]"#),
        )
        .await;
    }

    /// Waits until the peer `id` is no longer listed (or shows `data-connection="closed"`).
    pub async fn wait_peer_gone(&self, id: &str) {
        let script = format!(
            r#"const e = document.querySelector('[data-peer-id="{id}"]');
               return !e || e.dataset.connection === 'closed';"#
        );
        self.wait_until(&format!("peer {id} gone from the list"), &script).await;
    }

    /// Types `text` into `#message` and clicks `#send`.
    pub async fn send_line(&self, text: &str) {
        self.type_into("#message", text).await;
        self.click("#send").await;
        self.wait_input_cleared().await;
    }

    /// Types `text` into `#message` and presses Enter.
    pub async fn send_line_with_enter(&self, text: &str) {
        self.type_into("#message", &format!("{text}\u{E007}")).await;
        self.wait_input_cleared().await;
    }

    async fn wait_input_cleared(&self) {
        // The page empties the input once the line went out; "not sent" notices leave it.
        self.wait_until(
            "#message emptied after sending",
            "return document.querySelector('#message').value === '';",
        )
        .await;
    }

    /// Every chat line shown, in order.
    pub async fn chat_lines(&self) -> Vec<ChatLine> {
        let v = self
            .eval(
                r#"return [...document.querySelectorAll('[data-chat-from]')].map(e => ({
                     from: e.dataset.chatFrom,
                     text: e.querySelector('[data-chat-text]').textContent }));"#,
            )
            .await;
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{}: odd chat lines: {e}", self.label))
    }

    /// Waits until a chat line `text` from `from` is shown.
    pub async fn wait_line(&self, from: &str, text: &str) {
        let script = format!(
            r#"const from = {from}, text = {text};
               return [...document.querySelectorAll('[data-chat-from]')].some(e =>
                 e.dataset.chatFrom === from && e.querySelector('[data-chat-text]').textContent === text);"#,
            from = json!(from),
            text = json!(text),
        );
        self.wait_until(&format!("chat line {text:?} from {from}"), &script).await;
    }

    /// The remote peers listed, with their states.
    pub async fn peers(&self) -> Vec<PeerEntry> {
        let v = self
            .eval(
                r#"return [...document.querySelectorAll('[data-peer-id]')].map(e => ({
                     id: e.dataset.peerId, channel: e.dataset.channel || '',
                     connection: e.dataset.connection || '' }));"#,
            )
            .await;
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{}: odd peer list: {e}", self.label))
    }

    /// Waits for an element matching `css`.
    pub async fn wait_for_css(&self, what: &str, css: &str) {
        let script = format!("return document.querySelector({}) !== null;", json!(css));
        self.wait_until(what, &script).await;
    }

    /// Waits until the element `css` is in the page and rendered (not inside a `hidden`
    /// ancestor), as a person needs it to be to click or type: geckodriver refuses keys for
    /// an element not yet shown, where chromedriver would type into it anyway.
    pub async fn wait_shown(&self, css: &str) {
        let script = format!(
            "const e = document.querySelector({}); return e !== null && e.getClientRects().length > 0;",
            json!(css)
        );
        self.wait_until(&format!("{css} shown"), &script).await;
    }

    /// Waits until `script` (a function body) returns something truthy, and returns it. Fails
    /// the test after [`BROWSER_DEADLINE`] with what the page shows.
    pub async fn wait_until(&self, what: &str, script: &str) -> Value {
        let give_up = Instant::now() + BROWSER_DEADLINE;
        let mut last_error = String::new();
        loop {
            match self.client.execute(script, vec![]).await {
                Ok(v) if truthy(&v) => return v,
                Ok(_) => {}
                // The page may still be loading (pageLoadStrategy "none"): keep trying.
                Err(e) => last_error = e.to_string(),
            }
            if Instant::now() >= give_up {
                let extra = if last_error.is_empty() {
                    String::new()
                } else {
                    format!(" (last error: {last_error})")
                };
                self.fail(&format!("waited {BROWSER_DEADLINE:?} for {what}{extra}")).await;
            }
            sleep(POLL).await;
        }
    }

    /// Runs `script` (a function body) in the page and returns its result.
    pub async fn eval(&self, script: &str) -> Value {
        match self.client.execute(script, vec![]).await {
            Ok(v) => v,
            Err(e) => self.fail(&format!("script failed: {e}\n{script}")).await,
        }
    }

    /// Clicks the element `css` (waiting for it to be shown first).
    pub async fn click(&self, css: &str) {
        self.wait_shown(css).await;
        let result = async { self.client.find(Locator::Css(css)).await?.click().await }.await;
        if let Err(e) = result {
            self.fail(&format!("cannot click {css}: {e}")).await;
        }
    }

    /// Types `text` into the element `css` (waiting for it to be shown first), as keystrokes.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.wait_shown(css).await;
        let result = async { self.client.find(Locator::Css(css)).await?.send_keys(text).await }.await;
        if let Err(e) = result {
            self.fail(&format!("cannot type into {css}: {e}")).await;
        }
    }

    /// Resizes the window (e.g. 390×844 for a phone).
    pub async fn set_window_size(&self, width: u32, height: u32) {
        if let Err(e) = self.client.set_window_size(width, height).await {
            self.fail(&format!("cannot resize the window: {e}")).await;
        }
    }

    /// Writes a PNG screenshot of the viewport to `path` (creating its directory).
    pub async fn screenshot(&self, path: &Path) {
        let png = match self.client.screenshot().await {
            Ok(png) => png,
            Err(e) => self.fail(&format!("cannot take a screenshot: {e}")).await,
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// Lines the page wrote to the browser console so far.
    pub fn console(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| is_console_line(l))
            .map(str::to_string)
            .collect()
    }

    /// Ends the WebDriver session (closing the browser) and the driver.
    pub async fn close(mut self) {
        self.close_quietly().await;
    }

    async fn close_quietly(&mut self) {
        let client = self.client.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        let _ = self.driver.start_kill();
        let _ = self.driver.wait().await;
    }

    /// Fails the test with `why`, what the page shows, its console, and a screenshot.
    async fn fail(&self, why: &str) -> ! {
        let mut report = String::new();
        let _ = writeln!(report, "browser {}: {why}", self.label);
        match self.client.execute(DESCRIBE_PAGE, vec![]).await {
            Ok(state) => {
                let pretty = serde_json::to_string_pretty(&state).unwrap_or_default();
                let _ = writeln!(report, "the page shows:\n{pretty}");
            }
            Err(e) => {
                let _ = writeln!(report, "(cannot read the page: {e})");
            }
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-failures");
        // Every test runs as PID 1 of its own namespace: the test's name tells them apart.
        let test = std::thread::current().name().unwrap_or("test").replace("::", "-");
        let shot = dir.join(format!("{test}-{}.png", self.label));
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::create_dir_all(&dir);
            if std::fs::write(&shot, png).is_ok() {
                let _ = writeln!(report, "screenshot: {}", shot.display());
            }
        }
        let _ = writeln!(report, "{}", log_tail(&self.log, 60));
        panic!("{report}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Where the driver (and so the browser) runs, and how the test reaches it.
struct DriverPlace {
    /// Command prefix that runs the driver there (empty: here).
    launcher: Vec<String>,
    /// Where the driver is reached.
    driver_ip: Ipv4Addr,
    /// The address the test connects from (chromedriver's `--allowed-ips`).
    client_ip: Ipv4Addr,
}

impl DriverPlace {
    fn here() -> DriverPlace {
        DriverPlace { launcher: Vec::new(), driver_ip: Ipv4Addr::LOCALHOST, client_ip: Ipv4Addr::LOCALHOST }
    }
}

/// Starts the driver and, through it, the browser; `Err` says why not (with the log's tail).
async fn launch(
    kind: BrowserKind,
    browser: &Path,
    driver_path: &Path,
    place: &DriverPlace,
    label: &str,
    width: u32,
    height: u32,
) -> Result<Browser, String> {
    let profile = fresh_profile_dir(kind);
    let log = profile.with_extension("log");
    let log_file = std::fs::File::create(&log)
        .unwrap_or_else(|e| panic!("cannot create the browser log {}: {e}", log.display()));
    let log_clone = log_file
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot share the browser log {}: {e}", log.display()));

    let port = free_port();
    let mut command = match place.launcher.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(driver_path);
            command
        }
        None => Command::new(driver_path),
    };
    let mut caps = serde_json::Map::new();
    // The default strategy waits for every load event and stalls for seconds here; tests
    // wait for what they need through the DOM instead.
    caps.insert("pageLoadStrategy".into(), json!("none"));
    match kind {
        BrowserKind::Chromium => {
            command
                .arg(format!("--port={port}"))
                .arg(format!("--allowed-ips={}", place.client_ip))
                // Chromium's own stderr, console messages included, goes to the log file.
                .arg("--enable-chrome-logs");
            let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
            args.push(format!("--user-data-dir={}", profile.display()));
            args.push(format!("--window-size={width},{height}"));
            caps.insert("browserName".into(), json!("chrome"));
            caps.insert(
                "goog:chromeOptions".into(),
                json!({ "binary": browser.to_string_lossy(), "args": args }),
            );
        }
        BrowserKind::Firefox => {
            // geckodriver makes its profile (and Firefox its caches) under TMPDIR: inside our
            // own directory, which Drop removes (geckodriver removes its profile only at a clean end).
            command
                .args(["--host", &place.driver_ip.to_string(), "--port", &port.to_string()])
                .env("TMPDIR", &profile);
            caps.insert("browserName".into(), json!("firefox"));
            caps.insert(
                "moz:firefoxOptions".into(),
                json!({
                    "binary": browser.to_string_lossy(),
                    "args": ["-headless"],
                    "prefs": firefox_prefs(),
                    // Remote settings would otherwise be fetched from the network at start.
                    "env": { "MOZ_REMOTE_SETTINGS_DEVTOOLS": "1" },
                }),
            );
        }
    }
    let mut driver = command
        .stdin(Stdio::null())
        // Firefox's stdout (console lines) and stderr go through geckodriver's.
        .stdout(log_clone)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} ({e}); {}", driver_path.display(), install_hint(kind)));
    wait_for_port(&mut driver, (place.driver_ip, port), driver_path, &log).await?;

    let url = format!("http://{}:{port}", place.driver_ip);
    let mut builder = ClientBuilder::native();
    builder.capabilities(caps);
    let connect = builder.connect(&url);
    let failure = match tokio::time::timeout(START_DEADLINE, connect).await {
        Ok(Ok(client)) => {
            let mut started = Browser { kind, label: label.to_string(), client, driver, profile, log };
            if kind == BrowserKind::Firefox {
                // Firefox takes no window size on its command line.
                if let Err(e) = started.client.set_window_size(width, height).await {
                    let why = format!("cannot size the window: {e}");
                    started.close_quietly().await;
                    return Err(why);
                }
            }
            return Ok(started);
        }
        Ok(Err(e)) => format!(
            "{} could not start {kind} ({}): {e}\n{}",
            driver_path.display(),
            browser.display(),
            log_tail(&log, 40)
        ),
        Err(_) => format!("{kind} did not start within {START_DEADLINE:?}\n{}", log_tail(&log, 40)),
    };
    let _ = driver.start_kill();
    let _ = driver.wait().await;
    let _ = std::fs::remove_dir_all(&profile);
    let _ = std::fs::remove_file(&log);
    Err(failure)
}

fn install_hint(kind: BrowserKind) -> &'static str {
    match kind {
        BrowserKind::Chromium => CHROMIUM_INSTALL_HINT,
        BrowserKind::Firefox => FIREFOX_INSTALL_HINT,
    }
}

/// Where geckodriver is looked for, in order: `PATH`, then cargo's install dir.
fn geckodriver_candidates() -> Vec<String> {
    let mut found: Vec<String> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("geckodriver")).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    if let Some(cargo_home) = cargo_home {
        found.push(cargo_home.join("bin/geckodriver").to_string_lossy().into_owned());
    }
    found
}

/// What [`Browser`] reports about the page when a wait fails.
const DESCRIBE_PAGE: &str = r#"
const q = (s) => document.querySelector(s);
return {
  url: location.href,
  self_id: q('[data-self-id]')?.dataset.selfId ?? null,
  status: q('#status')?.textContent ?? null,
  banner: q('#banner') && !q('#banner').hidden ? q('#banner').textContent : null,
  join_error: q('#join-error') && !q('#join-error').hidden ? q('#join-error').textContent : null,
  peers: [...document.querySelectorAll('[data-peer-id]')].map(e =>
    `${e.dataset.peerId} channel=${e.dataset.channel} connection=${e.dataset.connection}`),
  transfers: [...document.querySelectorAll('[data-file-name]')].map(e =>
    `${e.dataset.fileDirection} ${e.dataset.fileName} ${e.dataset.fileState}: ${e.querySelector('.transfer-status')?.textContent ?? ''}`),
  videos: [...document.querySelectorAll('video')].map(v =>
    `${v.dataset.peerVideo ?? (v.hasAttribute('data-self-video') ? 'self' : '?')}: ${v.videoWidth}x${v.videoHeight} ` +
    `paused=${v.paused} muted=${v.muted} readyState=${v.readyState} ` +
    `frames=${v.getVideoPlaybackQuality?.().totalVideoFrames} ` +
    `tracks=${v.srcObject ? v.srcObject.getTracks().map(t => `${t.kind}:${t.readyState}${t.muted ? '(muted)' : ''}`).join(',') : 'none'}`),
  log: [...document.querySelectorAll('#log > li')].map(e =>
    e.dataset.chatFrom ? `${e.dataset.chatFrom}: ${e.querySelector('[data-chat-text]').textContent}` : `-- ${e.textContent}`),
};
"#;

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// The program named by `env`, else the first of `defaults` that exists; fails the test when none does.
fn program<S: AsRef<str>>(env: &str, defaults: &[S], what: &str, hint: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env).map(PathBuf::from) {
        if !path.exists() {
            panic!("{what} not found at {} (from {env}); {hint}", path.display());
        }
        return path;
    }
    let looked: Vec<&str> = defaults.iter().map(AsRef::as_ref).collect();
    looked.iter().map(PathBuf::from).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("{what} not found (looked at {}; set {env} to use another); {hint}", looked.join(", "))
    })
}

/// A new, empty directory for one browser profile. The name cannot be derived from the process
/// id alone: every test runs as PID 1 of its own PID namespace while sharing `/tmp`, and two
/// Chromiums given one profile directory become one browser (the second start then stalls).
fn fresh_profile_dir(kind: BrowserKind) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    for _ in 0..100 {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("switchboard-{kind}-{}-{nanos:x}-{n}", std::process::id()));
        // create_dir (not _all) fails if it exists: the directory is ours alone.
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create a {kind} profile dir {}: {e}", dir.display()),
        }
    }
    panic!("cannot find a free name for a {kind} profile dir in {}", std::env::temp_dir().display())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot find a free loopback port for a WebDriver driver: {e}"));
    listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("no local address: {e}"))
}

async fn wait_for_port(
    driver: &mut Child,
    (ip, port): (Ipv4Addr, u16),
    path: &Path,
    log: &Path,
) -> Result<(), String> {
    let give_up = Instant::now() + START_DEADLINE;
    loop {
        if TcpStream::connect((ip, port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = driver.try_wait() {
            return Err(format!("{} exited at start ({status})\n{}", path.display(), log_tail(log, 40)));
        }
        if Instant::now() >= give_up {
            let _ = driver.start_kill();
            return Err(format!(
                "{} did not listen on port {port} within {START_DEADLINE:?}\n{}",
                path.display(),
                log_tail(log, 40)
            ));
        }
        sleep(POLL).await;
    }
}

/// A console message of the page in a driver's log: Chromium tags them `CONSOLE`, Firefox
/// (with `devtools.console.stdout.content`) starts them with `console.log:`, `console.warn:`...
fn is_console_line(line: &str) -> bool {
    line.contains("CONSOLE") || line.trim_start().starts_with("console.")
}

/// The last `n` lines of the driver's and browser's log, console messages first.
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let console: Vec<&str> = text.lines().filter(|l| is_console_line(l)).collect();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let _ = writeln!(out, "browser console ({} lines):", console.len());
    for l in console.iter().skip(console.len().saturating_sub(n)) {
        let _ = writeln!(out, "  {l}");
    }
    let _ = writeln!(out, "driver/browser log, last lines ({}):", log.display());
    for l in lines.iter().skip(lines.len().saturating_sub(n)) {
        let _ = writeln!(out, "  {l}");
    }
    out
}

/// One `#[test]` per browser for `async fn NAME(kind: BrowserKind)`: a module `NAME` holding
/// `NAME::chromium` and `NAME::firefox`, each running the body with that browser inside
/// [`isolated`](crate::isolated) (or `isolated_with_timeout` when a limit is given). Filter
/// with `firefox` or `chromium` to run one browser's tests.
///
/// ```ignore
/// tests::in_each_browser!(pages_chat);
/// async fn pages_chat(kind: BrowserKind) { let ana = Browser::start_kind(kind, "ana").await; /* ... */ }
/// ```
#[macro_export]
macro_rules! in_each_browser {
    ($name:ident) => {
        $crate::in_each_browser!($name, ::std::time::Duration::from_secs(300));
    };
    ($name:ident, $limit:expr) => {
        mod $name {
            // `$limit` is written at the call site: names it uses resolve as they do there.
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn chromium() {
                $crate::isolated_with_timeout($limit, || {
                    super::$name($crate::browser::BrowserKind::Chromium)
                });
            }
            #[test]
            fn firefox() {
                $crate::isolated_with_timeout($limit, || super::$name($crate::browser::BrowserKind::Firefox));
            }
        }
    };
}

/// One `#[test]` per ordered pair of browsers for `async fn NAME(first: BrowserKind, second:
/// BrowserKind)`: `NAME::chromium_chromium`, `NAME::chromium_firefox`, `NAME::firefox_chromium`
/// and `NAME::firefox_firefox`. For tests where two browsers meet: who joins second makes the
/// offer, so both orders of a mixed pair are covered.
#[macro_export]
macro_rules! in_each_browser_pair {
    ($name:ident) => {
        $crate::in_each_browser_pair!($name, ::std::time::Duration::from_secs(300));
    };
    ($name:ident, $limit:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::browser::BrowserKind::{Chromium, Firefox};
            #[test]
            fn chromium_chromium() {
                $crate::isolated_with_timeout($limit, || super::$name(Chromium, Chromium));
            }
            #[test]
            fn chromium_firefox() {
                $crate::isolated_with_timeout($limit, || super::$name(Chromium, Firefox));
            }
            #[test]
            fn firefox_chromium() {
                $crate::isolated_with_timeout($limit, || super::$name(Firefox, Chromium));
            }
            #[test]
            fn firefox_firefox() {
                $crate::isolated_with_timeout($limit, || super::$name(Firefox, Firefox));
            }
        }
    };
}
