//! A memory budget for one piece of work whose size a hostile input sets and that cannot be
//! stopped from outside: rendering a chat template that came with a model file, where
//! `{% set s = s ~ s %}` in a loop doubles a string every few instructions, far inside any
//! instruction budget.
//!
//! The process's allocator ([`Counting`], installed by this crate) counts what a thread with a
//! budget allocates, less what it frees. [`run_bounded`] runs the work on a thread of its own
//! with a budget; once that thread asks for more, it is stopped inside the allocation that
//! went over: Rust gives an allocator no way to fail an allocation short of aborting the
//! process, and an allocator must not unwind, so the thread sleeps for good, holding at most
//! its budget, and the caller is told. Whatever the work was using may be left locked, so the
//! caller must never run it again (a chat template is disabled).
//!
//! Threads without a budget pay one thread-local read per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The allocator: the system's, with the counting described in the module's documentation.
pub struct Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

thread_local! {
    /// This thread's budget in bytes; 0: none.
    static LIMIT: Cell<usize> = const { Cell::new(0) };
    /// Bytes this thread has allocated, less those it freed, since its budget was set.
    static USED: Cell<usize> = const { Cell::new(0) };
    /// Whom to tell when the budget is exceeded.
    static WIRE: Cell<*const Wire> = const { Cell::new(std::ptr::null()) };
}

fn charge(n: usize) {
    // `try_with`: a thread's locals are gone while it exits; it has no budget then.
    let over = LIMIT
        .try_with(|limit| {
            let l = limit.get();
            // A panicking thread is not stopped: its hook may be printing a backtrace under
            // locks every other thread's panic needs (stopping it there hung the caller's own
            // failure report with RUST_BACKTRACE=1); the panic ends the work anyway.
            if l == 0 || std::thread::panicking() {
                return false;
            }
            let used = USED.with(|u| {
                let v = u.get().saturating_add(n);
                u.set(v);
                v
            });
            if used > l {
                limit.set(0);
                true
            } else {
                false
            }
        })
        .unwrap_or(false);
    if over {
        stop_here();
    }
}

fn refund(n: usize) {
    let _ = LIMIT.try_with(|limit| {
        if limit.get() != 0 {
            USED.with(|u| u.set(u.get().saturating_sub(n)));
        }
    });
}

/// Tells the waiting caller, then sleeps for good. Allocates nothing (a lock, a notification
/// and parking do not).
fn stop_here() -> ! {
    let w = WIRE.with(|w| w.get());
    if !w.is_null() {
        // SAFETY: the pointer was set by `run_bounded` to a `Wire` inside an `Arc` that this
        // thread's closure owns; the closure never returns from here, so it stays alive.
        let w = unsafe { &*w };
        if let Ok(mut s) = w.state.lock() {
            *s = Phase::Over;
        }
        w.cv.notify_all();
    }
    loop {
        std::thread::park();
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counting
// only reads and writes this thread's cells.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        refund(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            charge(new_size - layout.size());
        } else {
            refund(layout.size() - new_size);
        }
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Done,
    Over,
    Panicked,
}

struct Wire {
    state: Mutex<Phase>,
    cv: Condvar,
}

/// Why [`run_bounded`] has no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overrun {
    /// The work asked for more memory than its budget; its thread is stopped for good.
    Memory,
    /// The work did not end in time; its thread goes on until it ends by itself.
    Time,
    /// The work panicked (its thread ended; nothing is left held).
    Panicked,
    /// No thread could be started for it.
    NoThread,
}

/// Runs `work` on a thread of its own whose allocations, less its frees, may reach `budget`
/// bytes, and waits at most `timeout` for it. After `Memory`, whatever `work` shares with other
/// code may stay locked for good: do not run it again. After `Time` the thread goes on and
/// ends by itself.
pub fn run_bounded<T: Send + 'static>(
    budget: usize,
    timeout: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Overrun> {
    let wire = Arc::new(Wire {
        state: Mutex::new(Phase::Running),
        cv: Condvar::new(),
    });
    let out: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
    let (w, o) = (wire.clone(), out.clone());
    std::thread::Builder::new()
        .name("kiln-bounded".into())
        .spawn(move || {
            // The handle `park` uses, made before the budget starts.
            let _ = std::thread::current();
            WIRE.with(|c| c.set(Arc::as_ptr(&w)));
            USED.with(|u| u.set(0));
            LIMIT.with(|l| l.set(budget.max(1)));
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            LIMIT.with(|l| l.set(0));
            let phase = match r {
                Ok(r) => {
                    if let Ok(mut slot) = o.lock() {
                        *slot = Some(r);
                    }
                    Phase::Done
                }
                Err(_) => Phase::Panicked,
            };
            if let Ok(mut s) = w.state.lock() {
                *s = phase;
            }
            w.cv.notify_all();
        })
        .map_err(|_| Overrun::NoThread)?;
    let guard = wire.state.lock().map_err(|_| Overrun::Memory)?;
    let (guard, _) = wire
        .cv
        .wait_timeout_while(guard, timeout, |p| *p == Phase::Running)
        .map_err(|_| Overrun::Memory)?;
    match *guard {
        Phase::Done => out
            .lock()
            .ok()
            .and_then(|mut o| o.take())
            .ok_or(Overrun::Memory),
        Phase::Over => Err(Overrun::Memory),
        Phase::Panicked => Err(Overrun::Panicked),
        Phase::Running => Err(Overrun::Time),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_within_its_budget_returns() {
        let r = run_bounded(8 << 20, Duration::from_secs(10), || {
            let v = vec![1u8; 1 << 20];
            v.iter().map(|&x| x as usize).sum::<usize>()
        });
        assert_eq!(r, Ok(1 << 20));
    }

    #[test]
    fn freed_memory_is_given_back_to_the_budget() {
        // 64 allocations of 1 MiB, each freed before the next, under a 4 MiB budget.
        let r = run_bounded(4 << 20, Duration::from_secs(10), || {
            (0..64)
                .map(|i| vec![i as u8; 1 << 20][7] as usize)
                .sum::<usize>()
        });
        assert_eq!(r, Ok((0..64).sum::<usize>()));
    }

    #[test]
    fn doubling_past_the_budget_is_stopped() {
        let t = std::time::Instant::now();
        let r = run_bounded(16 << 20, Duration::from_secs(10), || {
            let mut s = String::from("ab");
            for _ in 0..40 {
                s = format!("{s}{s}");
            }
            s.len()
        });
        assert_eq!(r, Err(Overrun::Memory));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn a_panic_is_reported_at_once() {
        let t = std::time::Instant::now();
        let r = run_bounded(1 << 20, Duration::from_secs(10), || -> u8 {
            panic!("on purpose");
        });
        assert_eq!(r, Err(Overrun::Panicked));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn slow_work_times_out() {
        let r = run_bounded(1 << 20, Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_millis(400));
        });
        assert_eq!(r, Err(Overrun::Time));
    }
}
