//! Release links put the functions that run in start-up, idle and serving side by side
//! (`code-order.txt`, made by `scripts/code-order.sh`): a process then maps a few
//! megabytes of its code rather than the kernel's 64 KiB read-around of most of the binary
//! (docs/benchmarks.md, "Code layout"). Only with the LLD linker Rust uses by default on
//! x86_64 Linux; `GATEHOUSE_CODE_ORDER=off` links without it (for comparisons).

fn main() {
    println!("cargo:rerun-if-changed=code-order.txt");
    println!("cargo:rerun-if-env-changed=GATEHOUSE_CODE_ORDER");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let lld_by_default = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    let wanted = !std::env::var("GATEHOUSE_CODE_ORDER").is_ok_and(|v| v == "off");
    if !(release && lld_by_default && wanted) {
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
