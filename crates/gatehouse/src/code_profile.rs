//! Records which functions ran, for the linker's symbol ordering file
//! (`crates/gatehouse/code-order.txt`, made by `scripts/code-order.sh`; see docs/benchmarks.md,
//! "Code layout"). Compiled only into that script's profiling build: LLVM's
//! SanitizerCoverage there sets one flag per function on its first call, and each compiled
//! module hands its flags and its functions' addresses to the two hooks below at start-up.

use std::io::Write;
use std::sync::Mutex;

/// The linker merges every module's flags into one section and their `[address, kind]`
/// pairs into another, in the same module order; each module's constructor reports the
/// merged ranges again, so a range is kept once.
struct Tables {
    flags: Vec<(usize, usize)>,
    pcs: Vec<(usize, usize)>,
}

static TABLES: Mutex<Tables> = Mutex::new(Tables {
    flags: Vec::new(),
    pcs: Vec::new(),
});

#[no_mangle]
pub extern "C" fn __sanitizer_cov_bool_flag_init(start: *const bool, end: *const bool) {
    keep(|tables| &mut tables.flags, start as usize, end as usize);
}

#[no_mangle]
pub extern "C" fn __sanitizer_cov_pcs_init(start: *const usize, end: *const usize) {
    keep(|tables| &mut tables.pcs, start as usize, end as usize);
}

fn keep(list: fn(&mut Tables) -> &mut Vec<(usize, usize)>, start: usize, end: usize) {
    if let Ok(mut tables) = TABLES.lock() {
        let ranges = list(&mut tables);
        if !ranges.contains(&(start, end)) {
            ranges.push((start, end));
        }
    }
}

/// Appends the link-time address of every function that ran to the file named by
/// `GATEHOUSE_CODE_PROFILE`, one per line after the role that ran it (`sidecar 4f3a20`).
pub fn write() {
    let Some(path) = std::env::var_os("GATEHOUSE_CODE_PROFILE") else {
        return;
    };
    let Some(base) = load_base() else {
        eprintln!("gatehouse: code profile: cannot find the executable's load address");
        return;
    };
    let role = std::env::args().nth(1).unwrap_or_default();
    let Ok(tables) = TABLES.lock() else {
        return;
    };
    let mut out = String::new();
    for (&(flags_start, flags_end), &(pcs_start, pcs_end)) in
        tables.flags.iter().zip(tables.pcs.iter())
    {
        let count = flags_end - flags_start;
        if (pcs_end - pcs_start) / (2 * std::mem::size_of::<usize>()) != count {
            eprintln!("gatehouse: code profile: the flag and address tables disagree; skipped");
            continue;
        }
        for index in 0..count {
            // SAFETY: the compiler and linker laid out `count` flags at `flags_start` and
            // `2 * count` words at `pcs_start`; they live as long as the program.
            let (ran, pc) = unsafe {
                (
                    std::ptr::read_volatile((flags_start as *const bool).add(index)),
                    *(pcs_start as *const usize).add(2 * index),
                )
            };
            if ran {
                out.push_str(&format!("{role} {:x}\n", pc - base));
            }
        }
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(out.as_bytes()));
    if let Err(err) = written {
        eprintln!("gatehouse: code profile: {err}");
    }
}

/// Where the executable's first segment (file offset 0, link address 0: a PIE) is mapped.
fn load_base() -> Option<usize> {
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        let offset = fields.nth(1)?;
        let path = fields.nth(2)?;
        (path == exe.to_str()? && usize::from_str_radix(offset, 16).ok()? == 0)
            .then(|| usize::from_str_radix(range.split('-').next()?, 16).ok())
            .flatten()
    })
}
