#!/usr/bin/env bash
# The test command (README, and .ci/run calls it). Runs every test of the workspace:
# unit tests and end-to-end tests that start the real `gatehouse` binary on loopback.
# The current tests need no external services (Redis, PostgreSQL, Chromium); when tests
# that need them land, this script installs and starts them and fails if it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

cargo nextest run --workspace --no-fail-fast "$@"
