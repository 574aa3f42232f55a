//! In-process limit state: GCRA and sliding-window cells in a sharded map. A decision locks
//! one shard of 64 for a few arithmetic operations; there is no global lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::Instant;

use super::{Decision, LimitShape};

const SHARDS: usize = 64;
/// Entries per shard before expired cells are swept out.
const SWEEP_AT: usize = 4096;

#[derive(Clone, Copy)]
enum Cell {
    /// GCRA: theoretical arrival time, nanoseconds since the store's epoch.
    Gcra { tat: u64 },
    /// Sliding window: counts of the current and previous windows.
    Window {
        index: u64,
        previous: u64,
        current: u64,
    },
}

struct Shard {
    cells: HashMap<u64, Cell>,
    /// Size at which expired cells are swept out next; doubles when a sweep frees little,
    /// so a shard full of live keys is not scanned on every request.
    sweep_at: usize,
}

pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalStore {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        cells: HashMap::new(),
                        sweep_at: SWEEP_AT,
                    })
                })
                .collect(),
            hasher: Default::default(),
            epoch: Instant::now(),
        }
    }

    /// A keyed hash of the parts (random per process: a client cannot aim at collisions).
    pub fn key_of<'a>(&self, parts: impl Iterator<Item = &'a str>) -> u64 {
        self.key_with(|hasher| {
            for part in parts {
                part.hash(hasher);
            }
        })
    }

    /// A keyed hash of whatever `feed` writes.
    pub fn key_with(
        &self,
        feed: impl FnOnce(&mut std::collections::hash_map::DefaultHasher),
    ) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        feed(&mut hasher);
        hasher.finish()
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Take one request from `key`'s allowance under `shape`.
    pub fn acquire(&self, shape: &LimitShape, key: u64) -> Decision {
        let now = self.now();
        let shard = &self.shards[(key as usize) % SHARDS];
        // A poisoned shard only means another thread panicked mid-update of plain numbers.
        let mut guard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let shard = &mut *guard;
        if shard.cells.len() >= shard.sweep_at {
            shard.cells.retain(|_, cell| !expired(cell, shape, now));
            shard.sweep_at = (shard.cells.len() * 2).max(SWEEP_AT);
        }
        let cell = shard.cells.entry(key).or_insert_with(|| fresh(shape, now));
        decide(shape, cell, now)
    }

    /// What [`acquire`] would decide for `key` now, without taking anything.
    pub fn peek(&self, shape: &LimitShape, key: u64) -> Decision {
        let now = self.now();
        let shard = &self.shards[(key as usize) % SHARDS];
        let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let mut cell = shard
            .cells
            .get(&key)
            .copied()
            .unwrap_or_else(|| fresh(shape, now));
        decide(shape, &mut cell, now)
    }

    /// Give back a request taken by [`acquire`] (another limit of the route refused it).
    pub fn refund(&self, shape: &LimitShape, key: u64) {
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        match (shape, shard.cells.get_mut(&key)) {
            (LimitShape::Gcra { interval, .. }, Some(Cell::Gcra { tat })) => {
                *tat = tat.saturating_sub(*interval);
            }
            (LimitShape::Window { .. }, Some(Cell::Window { current, .. })) => {
                *current = current.saturating_sub(1);
            }
            _ => {}
        }
    }
}

/// Take one request from `cell`'s allowance under `shape` at `now`.
fn decide(shape: &LimitShape, cell: &mut Cell, now: u64) -> Decision {
    if !matches!(
        (&*cell, shape),
        (Cell::Gcra { .. }, LimitShape::Gcra { .. })
            | (Cell::Window { .. }, LimitShape::Window { .. })
    ) {
        // The limit changed algorithm across a reload but kept its store.
        *cell = fresh(shape, now);
    }
    match (shape, cell) {
        (
            LimitShape::Gcra {
                interval,
                tolerance,
            },
            Cell::Gcra { tat },
        ) => {
            let start = (*tat).max(now);
            let next = start + interval;
            if next - now > *tolerance {
                Decision::denied(start - now, next - now - tolerance)
            } else {
                *tat = next;
                Decision::allowed((tolerance - (next - now)) / interval, next - now)
            }
        }
        (
            LimitShape::Window { window, limit },
            Cell::Window {
                index: stored,
                previous,
                current,
            },
        ) => {
            let index = now / window;
            if *stored + 1 == index {
                *previous = *current;
                *current = 0;
            } else if *stored != index {
                *previous = 0;
                *current = 0;
            }
            *stored = index;
            let into = now % window;
            let reset = window - into;
            let weight = 1.0 - into as f64 / *window as f64;
            let estimate = *previous as f64 * weight + *current as f64;
            if estimate + 1.0 > *limit as f64 {
                Decision::denied(reset, reset)
            } else {
                *current += 1;
                Decision::allowed((*limit as f64 - estimate - 1.0).floor() as u64, reset)
            }
        }
        // Unreachable: the cell was made to match the shape above.
        _ => Decision::allowed(0, 0),
    }
}

fn fresh(shape: &LimitShape, now: u64) -> Cell {
    match shape {
        LimitShape::Gcra { .. } => Cell::Gcra { tat: now },
        LimitShape::Window { window, .. } => Cell::Window {
            index: now / window,
            previous: 0,
            current: 0,
        },
    }
}

fn expired(cell: &Cell, shape: &LimitShape, now: u64) -> bool {
    match (cell, shape) {
        (Cell::Gcra { tat }, _) => *tat <= now,
        (Cell::Window { index, .. }, LimitShape::Window { window, .. }) => index + 1 < now / window,
        (Cell::Window { .. }, _) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_admits_the_burst_then_the_rate() {
        let store = LocalStore::new();
        // 10 per second, burst 5.
        let shape = LimitShape::gcra(10, std::time::Duration::from_secs(1), 5);
        let key = store.key_of(["client"].into_iter());
        let admitted = (0..20)
            .filter(|_| store.acquire(&shape, key).allowed)
            .count();
        assert_eq!(admitted, 5);
        let denied = store.acquire(&shape, key);
        assert!(!denied.allowed);
        assert!(denied.retry_after_ns > 0 && denied.retry_after_ns <= 100_000_000);
        std::thread::sleep(std::time::Duration::from_millis(210));
        let refilled = (0..20)
            .filter(|_| store.acquire(&shape, key).allowed)
            .count();
        assert!((2..=3).contains(&refilled), "{refilled}");
    }

    #[test]
    fn sliding_window_caps_the_window_and_refunds() {
        let store = LocalStore::new();
        let shape = LimitShape::window(3, std::time::Duration::from_secs(60));
        let key = store.key_of(["a"].into_iter());
        let decisions: Vec<bool> = (0..5).map(|_| store.acquire(&shape, key).allowed).collect();
        assert_eq!(decisions, [true, true, true, false, false]);
        store.refund(&shape, key);
        assert!(store.acquire(&shape, key).allowed);
        let other = store.key_of(["b"].into_iter());
        assert_eq!(store.acquire(&shape, other).remaining, 2);
    }
}
