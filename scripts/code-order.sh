#!/usr/bin/env bash
# Regenerates crates/gatehouse/code-order.txt: the functions the gateway, a sidecar and the
# control plane run while starting, idling and serving. The release link puts them side by
# side, so the few megabytes of code a process runs no longer drag in the kernel's 64 KiB
# read-around of the rest of the binary (docs/benchmarks.md, "Code layout").
#
# It builds an instrumented release binary (its own target directory), runs the mesh demo
# and the gateway demo under traffic and idle, and writes the functions that ran, by their
# names in a plain release build. Needs curl. Takes about 20 minutes on 2 cores.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
profile_target=${CODE_PROFILE_TARGET_DIR:-/var/tmp/gatehouse-code-profile}
release_target=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# SanitizerCoverage on every crate, through a rustc wrapper: cargo does not see the flags, so
# symbols keep the names (hashes included) of a plain release build. Build scripts and proc
# macros run inside the build: they get no-op coverage hooks linked in.
tools="$profile_target/code-profile"
mkdir -p "$tools"
cat > "$tools/hooks.c" <<'EOF'
#include <stdint.h>
void __sanitizer_cov_bool_flag_init(const _Bool *s, const _Bool *e) { (void)s; (void)e; }
void __sanitizer_cov_pcs_init(const uintptr_t *s, const uintptr_t *e) { (void)s; (void)e; }
EOF
cc -c -fPIC -O2 -o "$tools/hooks.o" "$tools/hooks.c"
cat > "$tools/rustc" <<EOF
#!/usr/bin/env bash
rustc=\$1; shift
extra=(-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=1
       -Cllvm-args=-sanitizer-coverage-inline-bool-flag -Cllvm-args=-sanitizer-coverage-pc-table)
case " \$* " in
  *" --crate-name gatehouse "*) extra+=(--cfg gatehouse_code_profile) ;;
  *" --crate-type proc-macro "*|*" --crate-name build_script_"*) extra+=(-Clink-arg=$tools/hooks.o) ;;
esac
exec "\$rustc" "\$@" "\${extra[@]}"
EOF
chmod +x "$tools/rustc"

echo "code-order: instrumented build in $profile_target" >&2
(cd "$root" && RUSTC_WRAPPER="$tools/rustc" CARGO_TARGET_DIR="$profile_target" \
    GATEHOUSE_CODE_ORDER=off cargo build --release --locked --bin gatehouse)
profiled="$profile_target/release/gatehouse"
echo "code-order: plain release build in $release_target" >&2
(cd "$root" && CARGO_TARGET_DIR="$release_target" cargo build --release --locked --bin gatehouse)
plain="$release_target/release/gatehouse"

export GATEHOUSE_CODE_PROFILE="$tools/ran.txt"
rm -f "$GATEHOUSE_CODE_PROFILE"
export GATEHOUSE_LOG=warn

# Stops a process and its children with SIGTERM (each writes its profile on the way out)
# and waits for them.
stop_tree() {
    local pid=$1 child
    for child in $(pgrep -P "$pid" || true); do
        kill -TERM "$child" 2>/dev/null || true
    done
    sleep 2
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Requests `count` times over one keep-alive connection.
requests() {
    local url=$1 count=$2 args=()
    for _ in $(seq "$count"); do args+=("$url"); done
    curl -s "${args[@]}" > /dev/null || true
}

wait_for() {
    local url=$1
    for _ in $(seq 100); do
        curl -s -o /dev/null "$url" && return 0
        sleep 0.2
    done
    echo "code-order: $url never answered" >&2
    return 1
}

echo "code-order: mesh demo" >&2
"$profiled" demo --mesh --listen 127.0.0.1:18480 --admin 127.0.0.1:18481 \
    --mesh-base-port 18400 > "$work/mesh.out" 2>&1 &
mesh=$!
wait_for http://127.0.0.1:18480/products/7
for _ in 1 2 3; do
    requests http://127.0.0.1:18480/products/7 300
    sleep 10 # idle: heartbeats, snapshot pushes, timers
done
stop_tree "$mesh"

echo "code-order: gateway demo" >&2
"$profiled" demo --listen 127.0.0.1:18490 --admin 127.0.0.1:18491 \
    --portal 127.0.0.1:18492 > "$work/demo.out" 2>&1 &
demo=$!
wait_for http://127.0.0.1:18490/api/books
for path in /api/books /api/books/2 '/echo/hello?x=1' /nowhere; do
    requests "http://127.0.0.1:18490$path" 300
done
sleep 10
stop_tree "$demo"

[ -s "$GATEHOUSE_CODE_PROFILE" ] || { echo "code-order: no profile was written" >&2; exit 1; }

# Link addresses of the instrumented binary -> names -> the same names in the plain build.
# Names differ in two ways: ThinLTO's `.llvm.N` suffix on promoted local functions depends on
# the module, and a function can be inlined in one build and not the other; so a name the
# plain build lacks is matched without that suffix, then without its hash, when that leaves
# one candidate. Functions are grouped by the roles that ran them, the sidecar's first and
# the demo's own last, so each role maps few pages outside its own groups.
python3 - "$GATEHOUSE_CODE_PROFILE" "$profiled" "$plain" "$root/crates/gatehouse/code-order.txt" <<'EOF'
import collections, re, subprocess, sys
ran_path, profiled, plain, out = sys.argv[1:]
roles_at = collections.defaultdict(set)
for line in open(ran_path):
    role, address = line.split()
    roles_at[int(address, 16)].add(role)

def symbols(binary):
    listing = subprocess.run(["nm", "--defined-only", binary], capture_output=True,
                             text=True, check=True).stdout
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTW":
            yield int(parts[0], 16), parts[2]

def unsuffixed(name):
    return re.sub(r"\.llvm\.\d+$", "", name)

def unhashed(name):
    return re.sub(r"17h[0-9a-f]{16}E$", "E", unsuffixed(name))

plain_names = {name for _, name in symbols(plain)}
candidates = {key: collections.defaultdict(list) for key in (unsuffixed, unhashed)}
for name in plain_names:
    for key, table in candidates.items():
        table[key(name)].append(name)

def in_plain(name):
    if name in plain_names:
        return name
    for key, table in candidates.items():
        if len(found := table.get(key(name), [])) == 1:
            return found[0]
    return None

roles_of = collections.defaultdict(set)
for address, name in symbols(profiled):
    if address in roles_at and (found := in_plain(name)):
        roles_of[found] |= roles_at[address]

GROUPS = [
    {"sidecar", "gateway", "control"}, {"sidecar", "gateway"}, {"sidecar", "control"},
    {"sidecar"}, {"gateway", "control"}, {"gateway"}, {"control"},
]

def group(roles):
    served = roles & {"sidecar", "gateway", "control"}
    return GROUPS.index(served) if served else len(GROUPS)

order = sorted(roles_of, key=lambda name: (group(roles_of[name]), name))
with open(out, "w") as f:
    f.write("\n".join(order) + "\n")
sizes = collections.Counter(group(roles_of[name]) for name in order)
print(f"code-order: {len(roles_at)} functions ran; {len(order)} of them in {out};",
      "per group:", [sizes[i] for i in range(len(GROUPS) + 1)], file=sys.stderr)
EOF
