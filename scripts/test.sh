#!/usr/bin/env bash
# Runs every test of Switchboard on a fresh Debian machine (as root): installs what the tests
# need (Chromium and ChromeDriver, Firefox ESR and geckodriver for the browser tests, iproute2
# for the per-test network namespaces, openssl for the TLS test's certificate, coturn for the
# TURN tests, its service left off; redis-server and haproxy for the several-instances tests,
# theirs too), builds once, checks formatting and lints, then runs the
# whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
command -v chromium >/dev/null 2>&1 || need_packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_packages+=(chromium-driver)
command -v ip >/dev/null 2>&1 || need_packages+=(iproute2)
{ command -v unshare && command -v prlimit; } >/dev/null 2>&1 || need_packages+=(util-linux)
command -v openssl >/dev/null 2>&1 || need_packages+=(openssl)
command -v firefox-esr >/dev/null 2>&1 || need_packages+=(firefox-esr)
command -v turnserver >/dev/null 2>&1 || need_packages+=(coturn)
# Several instances (tests/tests/cluster.rs): the real Redis and HAProxy, services left off too.
command -v redis-server >/dev/null 2>&1 || need_packages+=(redis-server)
command -v haproxy >/dev/null 2>&1 || need_packages+=(haproxy)
# The media tests make VP8/Opus files and decode recordings with ffmpeg (libvpx, libopus).
command -v ffmpeg >/dev/null 2>&1 || need_packages+=(ffmpeg)
if [ ${#need_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: missing ${need_packages[*]}; run as root (or install them) to run the e2e tests" >&2
    exit 1
  fi
  echo "==> installing ${need_packages[*]}"
  apt-get update -qq
  # coturn's package would start its system service; the TURN tests run their own turnserver
  # (tests/src/coturn.rs), so forbid service starts while installing (policy-rc.d) ...
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >/dev/null
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
# ... and keep it off for good.
if command -v systemctl >/dev/null 2>&1 && [ -e /lib/systemd/system/coturn.service ]; then
  systemctl disable --now coturn >/dev/null 2>&1 || true
fi
for service in redis-server haproxy; do
  if command -v systemctl >/dev/null 2>&1 && [ -e "/lib/systemd/system/$service.service" ]; then
    systemctl disable --now "$service" >/dev/null 2>&1 || true
  fi
done

# geckodriver (Firefox's WebDriver) is not packaged by Debian: built from crates.io into cargo's
# bin dir (about 2 minutes), where the browser tests look for it too.
if ! command -v geckodriver >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/geckodriver" ]; then
  echo "==> installing geckodriver (cargo install --locked geckodriver)"
  cargo install --locked --quiet geckodriver
fi
geckodriver_bin=$(command -v geckodriver || echo "${CARGO_HOME:-$HOME/.cargo}/bin/geckodriver")

# The first line of each version; not `| head -n 1`, which closes the pipe early and makes
# geckodriver panic (broken pipe, exit 101) and fail this script under pipefail.
first_line() { local out; out=$("$@" 2>/dev/null); echo "${out%%$'\n'*}"; }
echo "==> browsers under test"
first_line chromium --version
first_line chromedriver --version
first_line firefox-esr --version
first_line "$geckodriver_bin" --version

echo "==> cargo fmt --check"
cargo fmt --all --check

echo "==> build (once; the tests run these binaries)"
cargo build --workspace --all-targets

echo "==> clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> tests"
cargo test --workspace "$@"
