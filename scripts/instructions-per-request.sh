#!/usr/bin/env bash
# Counts the user-space instructions a proxy executes per request, under valgrind's
# callgrind: deterministic where requests per second are noisy, and the same for any proxy,
# so a change to the hot path, or Gatehouse against HAProxy or nginx, is compared exactly.
# The kernel's share (system calls, TCP) is not counted: see docs/benchmarks.md.
#
#   scripts/instructions-per-request.sh PORT [REQUESTS] -- COMMAND...
#
# Runs COMMAND under callgrind, waits until http://127.0.0.1:PORT/ answers, sends 2,000
# warm-up requests, zeroes the counters, sends REQUESTS (default 20,000) keep-alive GETs over
# 16 connections (CONNECTIONS below) with h2load, and prints the instructions per request.
# Needs valgrind and h2load (Debian: valgrind, nghttp2-client); the upstream the command
# proxies to must be running (the peer benchmark's backend: `cd ../shared/bench && ./peers.sh start`).
# Example, the benchmark gateway on another port:
#   sed 's/18100/18110/' examples/bench.yaml > /tmp/bench-18110.yaml
#   scripts/instructions-per-request.sh 18110 -- target/release/gatehouse gateway -c /tmp/bench-18110.yaml --threads 1
# CACHE_SIM=1 also simulates the caches of this machine's cores (AMD EPYC: 32 KiB 8-way L1
# instruction and data caches, 512 KiB 8-way L2 standing in for valgrind's last level) and
# prints the misses per request: how much code and data a request touches, where the vCPUs
# expose no hardware counters. Slower, same instruction count. CONNECTIONS=N sets how many
# connections carry the requests (default 16; the peer benchmark's wrk uses 64).
# DUMP_INSTR=1 keeps the cost of every instruction, by address, uncompressed, for an analysis
# of which code lines a request runs (docs/benchmarks.md, "A simulated cache").
set -euo pipefail

port=${1:?usage: $0 PORT [REQUESTS] -- COMMAND...}
shift
requests=20000
if [ "${1:-}" != "--" ]; then
  requests=$1
  shift
fi
[ "${1:-}" = "--" ] || { echo "usage: $0 PORT [REQUESTS] -- COMMAND..." >&2; exit 2; }
shift
for tool in valgrind callgrind_control h2load curl; do
  command -v "$tool" >/dev/null || { echo "$0: $tool is missing (Debian: valgrind, nghttp2-client, curl)" >&2; exit 1; }
done

connections=${CONNECTIONS:-16}
callgrind_options=()
if [ "${CACHE_SIM:-0}" = 1 ]; then
  callgrind_options=(--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=524288,8,64)
fi
if [ "${DUMP_INSTR:-0}" = 1 ]; then
  callgrind_options+=(--dump-instr=yes --dump-line=no --compress-pos=no --compress-strings=no)
fi
work=$(mktemp -d)
valgrind --tool=callgrind "${callgrind_options[@]}" --callgrind-out-file="$work/callgrind.%p" "$@" \
  > "$work/stdout" 2> "$work/stderr" &
profiled=$!
trap 'kill -KILL $profiled 2>/dev/null || true; rm -rf "$work"' EXIT

up=""
for _ in $(seq 600); do
  if curl -fs -o /dev/null "http://127.0.0.1:$port/"; then up=yes; break; fi
  kill -0 $profiled 2>/dev/null || break
  sleep 0.2
done
[ -n "$up" ] || { echo "$0: nothing answers on 127.0.0.1:$port" >&2; cat "$work/stderr" >&2; exit 1; }

h2load --h1 -n 2000 -c "$connections" "http://127.0.0.1:$port/" > /dev/null
callgrind_control --zero $profiled > /dev/null
result=$(h2load --h1 -n "$requests" -c "$connections" "http://127.0.0.1:$port/")
succeeded=$(echo "$result" | awk '/^requests:/ {print $8}')
[ "$succeeded" = "$requests" ] || { echo "$0: only $succeeded of $requests requests succeeded" >&2; echo "$result" >&2; exit 1; }
callgrind_control --dump $profiled > /dev/null
for _ in $(seq 50); do
  dump=$(ls "$work"/callgrind.*.1 2>/dev/null || true)
  [ -n "$dump" ] && grep -q '^totals:' "$dump" && break
  sleep 0.2
done
total=$(awk '/^summary:/ {print $2}' "$dump")
echo "instructions: $total for $requests requests: $((total / requests)) per request"
if [ "${CACHE_SIM:-0}" = 1 ]; then
  # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
  awk -v n="$requests" '/^summary:/ {
    printf "per request: L1i misses %.0f, L1d misses %.0f (read %.0f, write %.0f), L2 misses %.0f (code %.0f, data %.0f)\n",
      $5 / n, ($6 + $7) / n, $6 / n, $7 / n, ($8 + $9 + $10) / n, $8 / n, ($9 + $10) / n }' "$dump"
fi
mkdir -p /tmp/instructions-per-request
cp "$dump" "/tmp/instructions-per-request/callgrind.$(basename "$1").$profiled"
echo "profile: /tmp/instructions-per-request/callgrind.$(basename "$1").$profiled (callgrind_annotate --inclusive=yes)"
