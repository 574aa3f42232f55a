#!/usr/bin/env bash
# Regenerates crates/gatehouse/pgo.profdata: how often each branch and call of the gateway's
# code ran while serving, for the profile-guided release build (scripts/release-build.sh,
# docs/benchmarks.md "Profile-guided build"). LLVM then lays out each function's hot path
# straight, its cold branches apart, and inlines by what runs.
#
# Builds an instrumented release binary (its own target directory: other flags), runs the
# gateway demo, the peer benchmark's gateway in front of it under wrk, and the mesh demo,
# stops each with SIGTERM (the counters are written when a process exits), and merges the
# counts with llvm-profdata (rustup component llvm-tools). A profile made for older code
# still applies to the functions that did not change; regenerate it when the request path
# changes, then scripts/code-order.sh. Needs wrk and curl. About ten minutes on 2 cores, most
# of it the instrumented build.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
profdata_tool=$(ls "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata 2>/dev/null | head -1 || true)
if [ -z "$profdata_tool" ]; then
    echo "pgo-profile: llvm-profdata is missing: rustup component add llvm-tools" >&2
    exit 1
fi
for tool in wrk curl; do
    command -v "$tool" >/dev/null || { echo "pgo-profile: $tool is missing (Debian: $tool)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

echo "pgo-profile: instrumented release build in $target/pgo-generate" >&2
# The same flags every time, so a second run builds incrementally; where the counts go is
# set when the binary runs (LLVM_PROFILE_FILE: one file a process).
(cd "$root" && RUSTFLAGS="-Cprofile-generate=$target/pgo-generate/profiles" \
    cargo build --release --locked --bin gatehouse --target-dir "$target/pgo-generate")
binary="$target/pgo-generate/release/gatehouse"
export LLVM_PROFILE_FILE="$work/raw/gatehouse-%p-%m.profraw"

# wait_for, requests, stop_tree.
source "$root/scripts/traffic.sh"

echo "pgo-profile: gateway demo and the peer benchmark's gateway in front of it" >&2
"$binary" demo --listen 127.0.0.1:18590 --admin 127.0.0.1:18591 --portal 127.0.0.1:18592 \
    > "$work/demo.out" 2>&1 &
demo=$!
wait_for http://127.0.0.1:18590/api/books
sed -e 's/127.0.0.1:18100/127.0.0.1:18595/' -e 's/127.0.0.1:18080/127.0.0.1:18590/' \
    "$root/examples/bench.yaml" > "$work/bench.yaml"
GATEHOUSE_LOG=warn "$binary" gateway -c "$work/bench.yaml" --threads 1 > "$work/bench.out" 2>&1 &
bench=$!
wait_for http://127.0.0.1:18595/api/books
for path in /api/books /api/books/2 '/echo/hello?x=1' /nowhere; do
    requests "http://127.0.0.1:18590$path" 200
done
# The benchmark's load: 64 keep-alive connections, as docs/benchmarks.md measures.
wrk -t1 -c64 -d10s http://127.0.0.1:18595/api/books > "$work/wrk.out"
wrk -t1 -c4 -d5s http://127.0.0.1:18595/api/books/2 >> "$work/wrk.out"
# A profile of failing requests would lay out the error path as the hot one.
if grep -E "Non-2xx|Socket errors" "$work/wrk.out" >&2; then
    echo "pgo-profile: the load saw failed requests; no profile written" >&2
    exit 1
fi
stop_tree "$bench" 2
stop_tree "$demo" 2

echo "pgo-profile: mesh demo" >&2
"$binary" demo --mesh --listen 127.0.0.1:18580 --admin 127.0.0.1:18581 \
    --mesh-base-port 18500 > "$work/mesh.out" 2>&1 &
mesh=$!
wait_for http://127.0.0.1:18580/products/7
requests http://127.0.0.1:18580/products/7 300
stop_tree "$mesh" 2

"$profdata_tool" merge --sparse -o "$root/crates/gatehouse/pgo.profdata" "$work"/raw/*.profraw
echo "pgo-profile: $(ls "$work"/raw | wc -l) profiles merged into crates/gatehouse/pgo.profdata" \
    "($(du -h "$root/crates/gatehouse/pgo.profdata" | cut -f1))" >&2
