#!/usr/bin/env bash
# Regenerates crates/gatehouse/code-order.txt: the functions the gateway, a sidecar and the
# control plane run while starting, idling and serving. The release link puts them side by
# side, so the few megabytes of code a process runs no longer drag in the kernel's 64 KiB
# fault-around of the rest of the binary (docs/benchmarks.md, "Code layout").
#
# It runs the release build itself under valgrind's callgrind (the mesh demo, the gateway
# demo and the peer benchmark's gateway, under traffic and idle) and lists every function of
# the binary that ran: the profile sees exactly the functions of the binary it orders, the
# precompiled standard library and the C code included. Needs valgrind and curl. Takes about
# three minutes on 2 cores after the release build. Run it after scripts/pgo-profile.sh.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# The profile-guided build (scripts/release-build.sh): its inlining decides which functions
# exist, so the order names the functions of the binary that is shipped and measured.
echo "code-order: profile-guided release build" >&2
built=$("$root/scripts/release-build.sh" | tail -1)
# A copy: the next release build relinks the original with the new order.
binary="$work/gatehouse"
cp "$built" "$binary"

# Runs the binary under callgrind, children included, one profile per process. Function
# names stay mangled: they are what the linker's ordering file names.
profiled() {
    exec valgrind --tool=callgrind --trace-children=yes --quiet \
        --callgrind-out-file="$work/callgrind.%p" --compress-strings=no --compress-pos=no \
        --dump-line=no --demangle=no "$binary" "$@"
}

# wait_for, requests, stop_tree. Under callgrind, shutting down takes seconds: children
# get 20 of them.
source "$root/scripts/traffic.sh"

echo "code-order: mesh demo" >&2
profiled demo --mesh --listen 127.0.0.1:18480 --admin 127.0.0.1:18481 \
    --mesh-base-port 18400 > "$work/mesh.out" 2>&1 &
mesh=$!
wait_for http://127.0.0.1:18480/products/7
for _ in 1 2 3; do
    requests http://127.0.0.1:18480/products/7 100
    sleep 20 # idle: heartbeats, snapshot pushes, timers
done
stop_tree "$mesh" 20

echo "code-order: gateway demo and the peer benchmark's gateway" >&2
profiled demo --listen 127.0.0.1:18490 --admin 127.0.0.1:18491 \
    --portal 127.0.0.1:18492 > "$work/demo.out" 2>&1 &
demo=$!
wait_for http://127.0.0.1:18490/api/books
# The benchmark's configuration, in front of the demo gateway instead of the harness's nginx.
# A relative path, as a user gives it (resolving it runs code too), and one worker thread, as
# the benchmark runs it.
sed -e 's/127.0.0.1:18100/127.0.0.1:18495/' -e 's/127.0.0.1:18080/127.0.0.1:18490/' \
    "$root/examples/bench.yaml" > "$work/bench.yaml"
(cd "$work" && profiled gateway -c bench.yaml --threads 1 > "$work/bench.out" 2>&1) &
bench=$!
wait_for http://127.0.0.1:18495/api/books
for path in /api/books /api/books/2 '/echo/hello?x=1' /nowhere; do
    requests "http://127.0.0.1:18490$path" 100
done
requests http://127.0.0.1:18495/api/books 200
sleep 20
stop_tree "$bench" 20
stop_tree "$demo" 20

# Functions are grouped by the roles that ran them so that each role's code is one stretch:
# the gateway's groups, then those it shares with the sidecar, then the sidecar's own, then
# the control plane's, and the demo's own last. Three sets cannot all be one stretch on a
# line: the control plane's is the one split (by the sidecar's own few hundred functions).
python3 - "$work" "$binary" "$root/crates/gatehouse/code-order.txt" <<'PYEOF'
import collections, glob, re, sys
work, binary, out = sys.argv[1:]
roles_of = collections.defaultdict(set)
for path in glob.glob(f"{work}/callgrind.*"):
    role, current_object = "", None
    for line in open(path, errors="replace"):
        if line.startswith("cmd:"):
            args = line.split()[1:]
            role = args[1] if len(args) > 1 else ""
        elif line.startswith("ob="):
            current_object = line[3:].strip()
        elif line.startswith("fn=") and current_object == binary:
            # `'2` marks a recursion level; `0x…` code without a symbol; `(below main)` is
            # callgrind's own.
            name = re.sub(r"'\d+$", "", line[3:].strip())
            if not name.startswith(("0x", "(")):
                roles_of[name].add(role)

GROUPS = [
    {"gateway", "control"}, {"gateway"}, {"sidecar", "gateway"},
    {"sidecar", "gateway", "control"}, {"sidecar", "control"}, {"sidecar"}, {"control"},
]

def group(roles):
    served = roles & {"sidecar", "gateway", "control"}
    return GROUPS.index(served) if served else len(GROUPS)

if not roles_of:
    sys.exit("code-order: no profile was written")
# Every process runs these two, but callgrind names the entry point `(below main)` and does
# not see the static `pthread_atfork` stub.
for name in ("_start", "pthread_atfork"):
    roles_of[name] |= {"sidecar", "gateway", "control"}
order = sorted(roles_of, key=lambda name: (group(roles_of[name]), name))
with open(out, "w") as f:
    f.write("\n".join(order) + "\n")
sizes = collections.Counter(group(roles_of[name]) for name in order)
print(f"code-order: {len(order)} functions ran, in {out}; per group:",
      [sizes[i] for i in range(len(GROUPS) + 1)], file=sys.stderr)
PYEOF
