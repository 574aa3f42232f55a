#!/usr/bin/env bash
# The test command (README, and .ci/run calls it). Runs every test of the workspace:
# unit tests and end-to-end tests that start the real `gatehouse` binary on loopback.
# Cluster rate-limit tests need a real Redis on 127.0.0.1:6379 (and the redis-server binary,
# which outage tests start on their own ports), the store tests a real PostgreSQL on
# 127.0.0.1:5432, the metrics test needs promtool, and the portal's browser journey needs
# Chromium, Node.js and playwright-core: this script installs what is missing, starts Redis
# and PostgreSQL if they are not running, and fails loudly if it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "test.sh: installing redis-server (Debian package)" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null ||
      { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } ||
      { echo "test.sh: cannot install redis-server; install it and rerun" >&2; exit 1; }
  fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    echo "test.sh: starting redis-server on 127.0.0.1:6379" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp --logfile /tmp/gatehouse-test-redis.log
    for _ in $(seq 50); do
      redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && break
      sleep 0.1
    done
  fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    echo "test.sh: Redis is not answering on 127.0.0.1:6379; the cluster tests need it" >&2
    exit 1
  fi
}

# The metrics test lints the /metrics output with Prometheus's promtool.
ensure_promtool() {
  if ! command -v promtool >/dev/null 2>&1; then
    echo "test.sh: installing promtool (Debian package prometheus)" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null ||
      { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } ||
      { echo "test.sh: cannot install promtool; install Debian's prometheus package and rerun" >&2; exit 1; }
  fi
}

# The store tests need PostgreSQL on 127.0.0.1:5432, with a role that may create databases
# (each test makes its own): GATEHOUSE_TEST_PG, by default the local `postgres` role.
export GATEHOUSE_TEST_PG="${GATEHOUSE_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}"
ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    echo "test.sh: installing PostgreSQL (Debian package postgresql)" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null ||
      { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } ||
      { echo "test.sh: cannot install PostgreSQL; install it and rerun" >&2; exit 1; }
  fi
  if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    echo "test.sh: starting PostgreSQL" >&2
    for version in $(ls /etc/postgresql); do
      as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in $(seq 50); do
      pg_isready -h 127.0.0.1 -p 5432 -q && break
      sleep 0.2
    done
  fi
  if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    echo "test.sh: PostgreSQL is not answering on 127.0.0.1:5432; the store tests need it" >&2
    exit 1
  fi
  if ! psql "$GATEHOUSE_TEST_PG" -qtAc 'SELECT 1' >/dev/null; then
    echo "test.sh: cannot connect as $GATEHOUSE_TEST_PG; set GATEHOUSE_TEST_PG to a role that may create databases" >&2
    exit 1
  fi
}

# The portal's browser journey: Debian's Chromium, driven by playwright-core from npm
# (pinned in crates/gatehouse/tests/browser/package-lock.json).
export GATEHOUSE_CHROMIUM="${GATEHOUSE_CHROMIUM:-/usr/bin/chromium}"
ensure_browser() {
  if [ ! -x "$GATEHOUSE_CHROMIUM" ]; then
    echo "test.sh: installing chromium (Debian package)" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ||
      { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
      { echo "test.sh: cannot install chromium; install it (or set GATEHOUSE_CHROMIUM) and rerun" >&2; exit 1; }
  fi
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "test.sh: installing Node.js and npm (Debian packages)" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null ||
      { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; } ||
      { echo "test.sh: cannot install Node.js and npm; install them and rerun" >&2; exit 1; }
  fi
  local browser_tests=crates/gatehouse/tests/browser
  if [ ! -d "$browser_tests/node_modules/playwright-core" ] ||
     [ "$browser_tests/package-lock.json" -nt "$browser_tests/node_modules/.package-lock.json" ]; then
    echo "test.sh: installing playwright-core (npm ci)" >&2
    (cd "$browser_tests" && npm ci --no-audit --no-fund --loglevel=error) ||
      { echo "test.sh: npm ci failed in $browser_tests" >&2; exit 1; }
  fi
  if ! "$GATEHOUSE_CHROMIUM" --headless=new --no-sandbox --disable-gpu --dump-dom about:blank >/dev/null 2>&1; then
    echo "test.sh: $GATEHOUSE_CHROMIUM does not start headless" >&2
    exit 1
  fi
}

ensure_redis
ensure_promtool
ensure_postgres
ensure_browser

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

cargo nextest run --workspace --no-fail-fast "$@"
