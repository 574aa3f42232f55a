#!/usr/bin/env bash
# The overhead of HTTP/JSON transcoding: the same unary call (GetBook) made natively over
# gRPC and as `GET /v1/shelves/1/books/1` through the gateway, with h2load, in one run.
# Layout as the peer benchmark (../shared/bench): h2load alone on cpu0; the gateway (one
# worker thread) and the library server on cpu1. Reports requests per second and the
# gateway's CPU time per request (from /proc, user + system).
#
#   scripts/bench-grpc.sh [REQUESTS] [ROUNDS]     (defaults: 100000 requests, 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-100000}
rounds=${2:-3}
target=${CARGO_TARGET_DIR:-target}

command -v h2load >/dev/null || { echo "bench-grpc: h2load missing (Debian: nghttp2-client; ../shared/bench/setup.sh installs it)" >&2; exit 1; }
cargo build --release -q -p gatehouse -p gatehouse-grpc-fixture

work=$(mktemp -d)
cleanup() { kill "${server_pid:-}" "${gateway_pid:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

taskset -c 1 "$target/release/library-server" 127.0.0.1:50051 >"$work/server.log" &
server_pid=$!
taskset -c 1 "$target/release/gatehouse" gateway -c examples/bench-grpc.yaml --threads 1 >"$work/gateway.log" 2>&1 &
gateway_pid=$!
for _ in $(seq 100); do
  grep -q 'gatehouse: ready' "$work/gateway.log" 2>/dev/null && break
  sleep 0.1
done
grep -q 'gatehouse: ready' "$work/gateway.log" || { cat "$work/gateway.log" >&2; exit 1; }

# GetBookRequest { name: "shelves/1/books/1" }, length-prefixed.
printf '\x00\x00\x00\x00\x13\x0a\x11shelves/1/books/1' >"$work/get-book.bin"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$gateway_pid/stat"; }
ticks_per_second=$(getconf CLK_TCK)

run() { # name, then h2load arguments
  local name=$1; shift
  local before after out rps
  before=$(cpu_ticks)
  out=$(taskset -c 0 h2load -n "$requests" -c 16 -m 8 -t 1 "$@" 2>&1)
  after=$(cpu_ticks)
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  grep -q "$requests succeeded, 0 failed" <<<"$out" || { echo "$out" >&2; exit 1; }
  awk -v name="$name" -v rps="$rps" -v ticks=$((after - before)) -v hz="$ticks_per_second" -v n="$requests" \
    'BEGIN { printf "%-12s %10.0f req/s  %6.1f us gateway CPU per request\n", name, rps, ticks / hz / n * 1e6 }'
}

# Warm-up, then interleaved rounds.
h2load -n 2000 -c 4 -t 1 -d "$work/get-book.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
  http://127.0.0.1:18110/library.v1.LibraryService/GetBook >/dev/null
h2load -n 2000 -c 4 -t 1 http://127.0.0.1:18110/v1/shelves/1/books/1 >/dev/null
for round in $(seq "$rounds"); do
  echo "round $round"
  run native -d "$work/get-book.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    http://127.0.0.1:18110/library.v1.LibraryService/GetBook
  run transcoded http://127.0.0.1:18110/v1/shelves/1/books/1
done
