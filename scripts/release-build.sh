#!/usr/bin/env bash
# The production build: `cargo build --release` with the committed profile
# (crates/gatehouse/pgo.profdata, made by scripts/pgo-profile.sh) guiding LLVM's layout and
# inlining (docs/benchmarks.md, "Profile-guided build"). Its own target directory, as the
# flags differ from a plain release build's. Prints the binary's path on its last line.
#
#   scripts/release-build.sh
#
# Functions changed since the profile was made are built as without one (LLVM matches each
# function's profile by a hash of its shape, and skips the ones that differ).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
profile="$root/crates/gatehouse/pgo.profdata"
[ -f "$profile" ] || { echo "release-build: $profile is missing (scripts/pgo-profile.sh)" >&2; exit 1; }

log=$(mktemp)
trap 'rm -f "$log"' EXIT
(cd "$root" && RUSTFLAGS="-Cprofile-use=$profile" \
    cargo build --release --locked --bin gatehouse --target-dir "$target/pgo-use") 2>&1 \
    | tee "$log" >&2
# LLVM warns once per function whose shape no longer matches its profile.
changed=$(grep -c "hash mismatch" "$log" || true)
if [ "$changed" -gt 0 ]; then
    echo "release-build: $changed functions of the crates just compiled changed since the" \
        "profile was made and were built without it: regenerate it (scripts/pgo-profile.sh)" >&2
fi
echo "$target/pgo-use/release/gatehouse"
