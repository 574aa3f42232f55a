//! Release links put the functions that run in start-up, idle and serving side by side
//! (`code-order.txt`, made by `scripts/code-order.sh`): a process then maps a few
//! megabytes of its code rather than the kernel's fault-around windows (64 KiB or more) all
//! over the binary (docs/benchmarks.md, "Code layout"). Only with the LLD linker Rust uses by default on
//! x86_64 Linux; `GATEHOUSE_CODE_ORDER=off` links without it (for comparisons).
//!
//! Release links also pack the position-independent executable's relative relocations
//! (DT_RELR) when the build machine's glibc can load them (2.36 and later): the dynamic
//! loader then reads a few kilobytes at start-up instead of a 1.4 MB table that stays in
//! every process's RSS.

fn main() {
    println!("cargo:rerun-if-changed=code-order.txt");
    println!("cargo:rerun-if-env-changed=GATEHOUSE_CODE_ORDER");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let lld_by_default = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    let wanted = !std::env::var("GATEHOUSE_CODE_ORDER").is_ok_and(|v| v == "off");
    if !(release && lld_by_default) {
        return;
    }
    if glibc_loads_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    if !wanted {
        return;
    }
    let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let order = std::path::Path::new(&dir).join("code-order.txt");
    if order.exists() {
        // Symbols of another build (another compiler or lock file) are skipped silently:
        // the order loses its effect, never the link.
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether this machine's glibc, which a native build runs on, knows DT_RELR (2.36+).
fn glibc_loads_relr() -> bool {
    let Ok(output) = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
    else {
        return false;
    };
    // "glibc 2.36"
    let text = String::from_utf8_lossy(&output.stdout);
    let mut numbers = text
        .trim()
        .trim_start_matches("glibc ")
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (2, 36)
}
