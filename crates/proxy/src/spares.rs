//! Per-thread stacks of spare values (header maps, write buffers) for the request path.
//!
//! Last in, first out: the value taken is the one given back last, still in the cache,
//! where a value kept per connection has left it by the connection's next request when
//! many are open (docs/benchmarks.md, "A simulated cache").

use std::cell::RefCell;
use std::thread::LocalKey;

/// A per-thread stack of spares, declared with `thread_local!`.
pub(crate) type Stack<T> = LocalKey<RefCell<Vec<T>>>;

/// The spare given back last, if the thread has one.
pub(crate) fn take<T: 'static>(stack: &'static Stack<T>) -> Option<T> {
    stack
        .try_with(|spare| {
            spare
                .try_borrow_mut()
                .ok()
                .and_then(|mut spare| spare.pop())
        })
        .ok()
        .flatten()
}

/// Keep `value` for the next [`take`], unless `most` are kept already.
pub(crate) fn give_back<T: 'static>(stack: &'static Stack<T>, value: T, most: usize) {
    // A thread being torn down keeps nothing: the value is simply dropped.
    let _ = stack.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < most {
                spare.push(value);
            }
        }
    });
}
