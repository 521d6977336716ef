//! Two instances on one Redis behind the real HAProxy (`deploy/haproxy/haproxy.cfg`), with a
//! Rust peer and a page (Chromium, Firefox) chatting through it while the instance under the
//! page is killed (SIGKILL). What a user would notice: nothing. The page resumes on the other
//! instance through HAProxy with the same id, its data channel to the peer never closes, and
//! every line sent before, during and after arrives exactly once.

use tests::browser::{Browser, BrowserKind, web_dir};
use tests::haproxy::HaProxy;
use tests::redis::Redis;
use tests::{Peer, Server, in_each_browser};

in_each_browser!(a_page_and_a_peer_chat_through_haproxy_while_the_instance_under_the_page_dies);
async fn a_page_and_a_peer_chat_through_haproxy_while_the_instance_under_the_page_dies(kind: BrowserKind) {
    let redis = Redis::start().await;
    let (url, web) = (redis.url(), web_dir());
    let web = web.to_str().expect("UTF-8 path");
    let args =
        ["--redis", &url, "--web-dir", web, "--trusted-proxy", "127.0.0.1/32", "--resume-grace", "20s"];
    let mut instances = [Server::start(&args).await, Server::start(&args).await];
    for instance in &instances {
        instance.wait_for_metric("switchboard_redis_up", 1.0).await;
    }
    let proxy = HaProxy::start(instances[0].addr(), instances[1].addr()).await;

    let mut rusty = Peer::spawn_with_url(&proxy.ws_url(), &["--room", "ha", "--name", "rusty"]).await;
    let rusty_id = rusty.joined().await;
    let before =
        [instances[0].metric("switchboard_members").await, instances[1].metric("switchboard_members").await];
    let ana = Browser::start_kind(kind, "ana").await;
    ana.open(&format!("{}/?room=ha&name=ana", proxy.http_url())).await;
    let ana_id = ana.self_id().await;
    ana.wait_connected(&rusty_id).await;
    rusty.wait_for("channel_open to ana", |e| e["event"] == "channel_open" && e["peer"] == ana_id).await;
    // The instance whose member count went up serves the page.
    let mut under_page = None;
    for (n, instance) in instances.iter().enumerate() {
        if instance.metric("switchboard_members").await > before[n] {
            under_page = Some(n);
        }
    }
    let under_page = under_page.expect("one instance serves the page");
    let rusty_shares_it = before[under_page] > 0.0;

    ana.send_line("before").await;
    rusty.wait_message(&ana_id, "before").await;
    rusty.send_line("before, back").await;
    ana.wait_line(&rusty_id, "before, back").await;

    instances[under_page].kill().await;
    // The data channel does not need the server.
    ana.send_line("during").await;
    rusty.send_line("during, back").await;
    rusty.wait_message(&ana_id, "during").await;
    ana.wait_line(&rusty_id, "during, back").await;

    // The page reconnects through HAProxy, which sends it to the live instance: a resume.
    let survivor = &instances[1 - under_page];
    survivor.wait_for_metric("switchboard_members", 2.0).await;
    ana.wait_until(
        "the joined state after the resume",
        r#"return document.querySelector('#status').dataset.state === 'joined'
             && document.querySelector('#banner').hidden;"#,
    )
    .await;
    assert_eq!(ana.self_id().await, ana_id, "same id: the page resumed on the other instance");
    if rusty_shares_it {
        let welcome =
            rusty.wait_for("a resumed welcome", |e| e["event"] == "welcome" && e["resumed"] == true).await;
        assert_eq!(welcome["id"], rusty_id.as_str(), "the peer resumed too, with its id");
    }

    ana.send_line("after").await;
    rusty.send_line("after, back").await;
    rusty.wait_message(&ana_id, "after").await;
    ana.wait_line(&rusty_id, "after, back").await;

    // Nothing lost, nothing twice, and the connection between them never went down.
    let shown = ana.chat_lines().await;
    for text in ["before, back", "during, back", "after, back"] {
        let count = shown.iter().filter(|line| line.from == rusty_id && line.text == text).count();
        assert_eq!(count, 1, "{text:?} shown once: {shown:?}");
    }
    let received: Vec<String> = rusty
        .poll_events()
        .iter()
        .filter(|e| e["event"] == "message" && e["from"] == ana_id.as_str())
        .map(|e| e["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(received, ["before", "during", "after"], "each line once, in order");
    ana.wait_connected(&rusty_id).await;
    rusty.assert_none("peer_left for ana", |e| e["event"] == "peer_left" && e["id"] == ana_id);
    rusty.assert_none("a closed or reopened channel to ana", |e| {
        (e["event"] == "channel_closed" || e["event"] == "channel_open") && e["peer"] == ana_id
    });
    ana.close().await;
}
