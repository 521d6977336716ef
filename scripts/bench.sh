#!/usr/bin/env bash
# Switchboard's benchmarks in one command (release builds; run by hand, never in CI):
# Switchboard vs matchbox_server (and PeerJS server when npm is there), each server alone on
# core 0 and the load generator on core 1; raw UDP loopback as the data-channel ceiling; the
# Rust peer's WebRTC figures from its own bench (peer/examples/bench.rs). Writes the signaling
# section of docs/benchmarks.md (between its markers; the rest of the file is left alone) and
# prints one JSON line last. Only loopback traffic; every run is bounded in time.
#
#   scripts/bench.sh            # everything (~10 minutes once built)
#   QUICK=1 scripts/bench.sh    # 1 round, shorter runs, 1k/4k idle connections (a smoke test)
#   NO_WEBRTC=1 scripts/bench.sh  # skip the peer's WebRTC bench
#   NO_BROWSER=1 scripts/bench.sh # skip the browser <-> Rust connect bench (headless Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."

MATCHBOX_VERSION=0.15.0
PEERJS_VERSION=1.0.2
out=target/bench
mkdir -p "$out"
log() { echo "==> $*" >&2; }

log "building server and bench (release)"
cargo build --release -p server -p bench >&2

matchbox=target/matchbox/bin/matchbox_server
if [ ! -x "$matchbox" ] || ! grep -q "$MATCHBOX_VERSION" target/matchbox/.version 2>/dev/null; then
  log "installing matchbox_server $MATCHBOX_VERSION into target/matchbox"
  CARGO_TARGET_DIR=target/matchbox-build cargo install matchbox_server --version "$MATCHBOX_VERSION" \
    --locked --root target/matchbox >&2
  echo "$MATCHBOX_VERSION" > target/matchbox/.version
fi

peerjs_args=()
if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
  if [ ! -x target/peerjs/node_modules/.bin/peerjs ]; then
    log "installing PeerJS server $PEERJS_VERSION into target/peerjs"
    mkdir -p target/peerjs
    (cd target/peerjs && npm install --no-audit --no-fund --silent "peer@$PEERJS_VERSION" >&2)
  fi
  peerjs_args=(--peerjs target/peerjs/node_modules/.bin/peerjs --peerjs-version "$PEERJS_VERSION")
else
  log "node/npm not found: PeerJS server skipped"
fi

# WebRTC figures: the peer engineer's bench (connect time and data-channel throughput).
webrtc_json="$out/webrtc.json"
rm -f "$webrtc_json"
if [ -z "${NO_WEBRTC:-}" ] && [ -f peer/examples/bench.rs ]; then
  log "WebRTC: building and running peer/examples/bench.rs (release)"
  cargo build --release -p peer --example bench >&2
  if timeout 300 target/release/examples/bench > "$out/webrtc.txt" 2>"$out/webrtc.err"; then
    python3 - "$out/webrtc.txt" "$webrtc_json" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
out = {}
m = re.search(r"p50 ([0-9.]+) ms, p99 ([0-9.]+) ms", text)
if m:
    out["rust_connect_p50_ms"], out["rust_connect_p99_ms"] = float(m.group(1)), float(m.group(2))
rates = {int(k): float(v) for k, v in re.findall(r"throughput: (\d+) KiB messages.*= ([0-9.]+) MB/s", text)}
if rates:
    out["dc_mb_per_s_by_kib"] = rates
    out["dc_mb_per_s"] = max(rates.values())
json.dump(out, open(sys.argv[2], "w"))
PY
    cat "$out/webrtc.txt" >&2
  else
    log "the peer's WebRTC bench failed (see $out/webrtc.err); its keys stay null"
  fi
fi

# Browser <-> Rust connect time (join -> chat open, 20 runs each way) in headless Chromium and
# Firefox ESR: tests/tests/browser_bench.rs, #[ignore]d tests run here with the release binaries
# (Firefox and geckodriver as scripts/test.sh installs them).
if [ -z "${NO_BROWSER:-}" ]; then
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
      log "installing chromium and chromium-driver (as scripts/test.sh does)"
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
          chromium chromium-driver; } >&2 || log "could not install Chromium: the browser bench will say why it fails"
    fi
  fi
  log "browser: join -> chat open between headless Chromium and the Rust peer (release binaries)"
  cargo build --release -p server -p peer >&2
  cargo test -p tests --test browser_bench --no-run >&2
  if SWITCHBOARD_BIN_DIR="$PWD/target/release" timeout 600 \
      cargo test -p tests --test browser_bench -- --ignored --nocapture > "$out/browser.txt" 2>"$out/browser.err"; then
    python3 - "$out/browser.txt" "$webrtc_json" <<'PY'
import json, os, re, sys
text = open(sys.argv[1]).read()
out = json.load(open(sys.argv[2])) if os.path.exists(sys.argv[2]) else {}
for name, key in (("browser_connect_ms", "browser_connect"), ("rust_joins_browser_ms", "rust_joins_browser"),
                  ("firefox_connect_ms", "firefox_connect"), ("rust_joins_firefox_ms", "rust_joins_firefox")):
    m = re.search(name + r": (\{.*\})", text)
    if m:
        figures = json.loads(m.group(1))
        out[key + "_p50_ms"], out[key + "_p99_ms"] = figures["p50"], figures["p99"]
json.dump(out, open(sys.argv[2], "w"))
PY
    grep -E "^(browser_connect_ms|rust_joins_browser_ms|firefox_connect_ms|rust_joins_firefox_ms):" "$out/browser.txt" >&2 || true
  else
    log "the browser bench failed (see $out/browser.txt and $out/browser.err); its keys stay null"
  fi
fi

log "raw UDP loopback ceiling"
target/release/bench udp --bytes 64000 --small-bytes 1200 --duration 2s --out "$out/udp.json" >&2

if [ -n "${QUICK:-}" ]; then
  shape=(--rounds 1 --measure 2s --idle 1000,4000 --idle-key 4000)
else
  shape=(--rounds 3 --measure 4s --idle 1000,10000 --idle-key 10000)
fi

log "signaling: Switchboard vs matchbox_server${peerjs_args:+ vs PeerJS server} (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
summary=$(taskset -c 1 target/release/bench suite \
  --switchboard target/release/server --switchboard-version "$(git rev-parse --short HEAD 2>/dev/null || echo dev)" \
  --matchbox "$matchbox" --matchbox-version "$MATCHBOX_VERSION" \
  "${peerjs_args[@]}" \
  --server-core 0 "${shape[@]}" \
  --udp-json "$out/udp.json" --webrtc-json "$webrtc_json" \
  --doc docs/benchmarks.md --out "$out/results.json")
log "wrote docs/benchmarks.md (signaling section) and $out/results.json"
echo "$summary"
