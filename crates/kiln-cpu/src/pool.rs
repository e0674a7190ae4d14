//! A persistent pool of worker threads for per-token work: no spawning, no allocation
//! and no locking on the hot path, just an epoch counter and counters of parts. A task's
//! parts go to whichever threads claim them, so a worker the system has descheduled (a
//! browser, an HTTP client, the server's own I/O threads taking its core for a moment)
//! holds up nothing it has not started: the caller takes its parts, and the task ends when
//! every part is done, not when every thread has looked in. A pool sized automatically lets
//! [`crate::tune::Tuner`] run its tasks on fewer threads while other programs take cores.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::pool_timing as timing;
use crate::tune::{CpuSampler, Tuner};

type Task = dyn Fn(usize, usize) + Sync;

/// A value alone on its cache lines (two: Intel's prefetcher fetches lines in pairs). The
/// workers spin reading the epoch while the caller writes a task's other fields; in the one
/// or two lines they shared, each of those writes took the line from the spinning readers,
/// who took it back (about 1 us an empty task on two threads, docs/PERF.md, twenty-seventh
/// session).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The current task as the threads claim its parts: one cache line, written by `run` before
/// it announces the task, so a worker that saw the announcement reads all of it in one
/// transfer (the task's fields were spread over five lines before, each a transfer between
/// cores on a worker's way to its part: 145 to 180 ns each, `scripts/pingpong.c` on the
/// machine of docs/PERF.md's forty-third session).
struct Claims {
    /// The task's number (the high 32 bits), its parts (bits 16 to 31) and the next part to
    /// claim (the low 16 bits). A thread claims a part by raising the next part while the
    /// number is still the task's and parts are left: while a part is claimed and not done,
    /// `run` does not return, so the task below stays alive.
    word: AtomicU64,
    /// The task, lifetime-erased: a pointer to `run`'s reference to its closure. Read only
    /// after a claim succeeded (the claim word's release by `run` orders it before).
    task: AtomicPtr<&'static Task>,
}

struct Shared {
    claims: Padded<Claims>,
    /// The current task's number (above the low 16 bits) and how many threads take part in
    /// it (the low 16 bits): threads `0..active` look for its parts, the rest rest.
    epoch: Padded<AtomicUsize>,
    /// How many of the current task's parts are done.
    done: Padded<AtomicUsize>,
    wake: Condvar,
    wake_lock: Mutex<()>,
    /// Workers asleep on `wake` (or about to be): `run` only notifies when there are some,
    /// so a busy pool makes no system call per task.
    sleepers: Padded<AtomicUsize>,
    stop: Padded<AtomicBool>,
    /// A part of the current task panicked (set before the part is counted done).
    panicked: AtomicBool,
    /// Tests: workers wait here before looking for parts, as a descheduled thread would.
    #[cfg(test)]
    hold: AtomicBool,
    n_threads: usize,
}

/// A fixed set of threads that run one closure at a time, each with its own index.
pub struct ThreadPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    /// Serialises callers (one task in flight at a time), and holds what they share.
    gate: Mutex<Gate>,
}

/// The callers' side of the pool.
struct Gate {
    /// Tasks started.
    count: usize,
    /// Threads that took part in the last task.
    last_active: usize,
    /// Chooses the threads of each task (`None`: all of them).
    tuner: Option<Tuner>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThreadPool({})", self.shared.n_threads)
    }
}

/// Most threads a pool runs (what `--threads` accepts; a larger count is refused where
/// the backend is opened).
pub const MAX_THREADS: usize = 1024;

/// Spins this many times waiting for work before sleeping on the condition variable.
const SPIN: usize = 20_000;

impl ThreadPool {
    /// A pool of `n_threads` (the caller's thread counts as one of them), 1 to
    /// [`MAX_THREADS`].
    pub fn new(n_threads: usize) -> Self {
        Self::with_tuner(n_threads, false)
    }

    /// A pool of `n_threads` whose tasks run on fewer of them while other programs take
    /// cores and fewer run faster ([`Tuner`]; where `/proc` does not tell the load, all).
    pub fn adaptive(n_threads: usize) -> Self {
        Self::with_tuner(n_threads, true)
    }

    fn with_tuner(n_threads: usize, adaptive: bool) -> Self {
        let n_threads = n_threads.clamp(1, MAX_THREADS);
        let shared = Arc::new(Shared {
            claims: Padded(Claims {
                word: AtomicU64::new(0),
                task: AtomicPtr::new(std::ptr::null_mut()),
            }),
            epoch: Padded(AtomicUsize::new(0)),
            done: Padded(AtomicUsize::new(0)),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            sleepers: Padded(AtomicUsize::new(0)),
            stop: Padded(AtomicBool::new(false)),
            panicked: AtomicBool::new(false),
            #[cfg(test)]
            hold: AtomicBool::new(false),
            n_threads,
        });
        let handles = (1..n_threads)
            .map(|idx| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("kiln-worker-{idx}"))
                    .spawn(move || worker(s, idx))
                    .expect("spawning a worker thread")
            })
            .collect();
        let tuner = (adaptive && n_threads > 1).then(|| Tuner::new(n_threads, CpuSampler::new()));
        ThreadPool {
            shared,
            handles,
            gate: Mutex::new(Gate {
                count: 0,
                last_active: n_threads,
                tuner,
            }),
        }
    }

    /// Number of threads, the caller's included.
    pub fn n_threads(&self) -> usize {
        self.shared.n_threads
    }

    /// Runs `f(part, parts)` once for every part `0..parts` and returns when all are done;
    /// `parts` is the number of threads taking part in the task (all of them, or fewer in
    /// an adaptive pool). The parts go to whichever threads claim them first (the caller
    /// among them), so `f` must not care which thread runs a part, nor whether one thread
    /// runs several.
    ///
    /// If any part panics, the panic is raised here, after every part has finished with
    /// `f` (workers borrow it through a raw pointer; unwinding earlier would free it under
    /// them), and the pool stays usable.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        if self.shared.n_threads == 1 {
            f(0, 1);
            return;
        }
        let mut g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        let n = g
            .tuner
            .as_ref()
            .map_or(self.shared.n_threads, Tuner::active);
        if n == 1 {
            // The workers fall asleep on their own; the next task with more threads wakes them.
            g.last_active = 1;
            f(0, 1);
            if let Some(t) = g.tuner.as_mut() {
                t.task_done();
            }
            return;
        }
        let sh = &*self.shared;
        let parts = n;
        let task: &(dyn Fn(usize, usize) + Sync + '_) = &f;
        // SAFETY: erase the lifetime; a worker reaches the closure only through a claimed
        // part, and this function returns only when every part is done.
        let task: &'static Task = unsafe {
            std::mem::transmute::<&(dyn Fn(usize, usize) + Sync + '_), &'static Task>(task)
        };
        sh.done.store(0, Ordering::Relaxed);
        g.count = g.count.wrapping_add(1).max(1);
        let epoch = (g.count << 16) | n;
        sh.claims
            .task
            .store((&raw const task).cast_mut(), Ordering::Relaxed);
        // The task's number, its parts and the first (this thread's own) taken, released after
        // the task's pointer (a claim acquires it); before announcing, so that a worker that
        // sees the epoch finds the task (or its parts already taken). This thread runs part
        // 0 without a claim, so the workers' first claims meet no claim of its.
        sh.claims
            .word
            .store(claim_word(epoch >> 16, parts, 1), Ordering::Release);
        let t_pub = timing::now();
        // SeqCst on both sides (here: epoch then sleepers; a worker: sleepers then epoch):
        // either this load sees the worker going to sleep, or the worker sees the new epoch.
        // Threads that rested (not counted as sleepers) are woken when more take part.
        sh.epoch.store(epoch, Ordering::SeqCst);
        let more = n > g.last_active;
        g.last_active = n;
        if more || sh.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = sh.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.wake.notify_all();
        }
        let mut failed = None;
        run_part(sh, task, 0, parts, &mut failed);
        sh.done.fetch_add(1, Ordering::Release);
        claim_parts(sh, epoch >> 16, &mut failed);
        let t_mine = timing::now();
        // The parts others claimed: wait for those to end.
        let mut spins = 0usize;
        while sh.done.load(Ordering::Acquire) < parts {
            spins += 1;
            if spins < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // Every part was claimed and is done: a worker that looks for parts now (or pushed
        // off its core before its claim) finds none left, or another task's number, and
        // never reaches `f`.
        timing::note(std::any::type_name::<F>(), t_pub, t_mine, timing::now());
        if let Some(t) = g.tuner.as_mut() {
            t.task_done();
        }
        drop(g);
        if let Some(payload) = failed {
            sh.panicked.store(false, Ordering::Release);
            std::panic::resume_unwind(payload);
        }
        if sh.panicked.swap(false, Ordering::AcqRel) {
            panic!("a CPU pool worker thread panicked (its message is above)");
        }
    }
}

/// The claim word of task `count` with `parts` parts, `next` of them claimed.
fn claim_word(count: usize, parts: usize, next: usize) -> u64 {
    ((count as u64 & 0xFFFF_FFFF) << 32) | ((parts as u64) << 16) | next as u64
}

/// A claim word's task number (as [`claim_word`] keeps it), parts and next part.
fn claim_fields(word: u64) -> (u64, usize, usize) {
    (
        word >> 32,
        (word >> 16 & 0xFFFF) as usize,
        (word & 0xFFFF) as usize,
    )
}

/// Runs part `p` of `parts` of `f`; a panic is told through `panicked` (before the caller
/// counts the part done, so `run` sees it once all parts are) and the first kept in
/// `failed`. The caller counts the part done even if it panicked (`run` must not wait for
/// ever), after this returns: `f` may be freed as soon as the last part counts done.
fn run_part(s: &Shared, f: &Task, p: usize, parts: usize, failed: &mut Option<Panic>) {
    let t0 = timing::now();
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(p, parts))) {
        s.panicked.store(true, Ordering::Relaxed);
        failed.get_or_insert(e);
    }
    timing::part(p, t0, timing::now());
}

/// A caught panic's payload.
type Panic = Box<dyn std::any::Any + Send>;

/// Claims task `count`'s parts one by one and runs them ([`run_part`]) until none is left
/// (or the task is another's: it ended).
fn claim_parts(s: &Shared, count: usize, failed: &mut Option<Panic>) {
    let mut word = s.claims.word.load(Ordering::Acquire);
    loop {
        let (number, parts, next) = claim_fields(word);
        if number != claim_fields(claim_word(count, 0, 0)).0 || next >= parts {
            return;
        }
        if let Err(now) =
            s.claims
                .word
                .compare_exchange_weak(word, word + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            word = now;
            continue;
        }
        // SAFETY: part `next` of the task is claimed and not done, so `run` has not returned
        // and its reference to the closure lives; the claim acquired the word that `run`
        // released after storing the pointer (or a later claim's), so this is that task's.
        let f: &Task = unsafe { *s.claims.task.load(Ordering::Relaxed) };
        run_part(s, f, next, parts, failed);
        s.done.fetch_add(1, Ordering::Release);
        word = s.claims.word.load(Ordering::Acquire);
    }
}

fn worker(s: Arc<Shared>, idx: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0usize;
        // Whether this thread took part in the last task it saw: a thread that rests sleeps
        // at once, uncounted (`run` wakes every thread when more take part).
        let mut resting = false;
        loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                if idx < e & 0xFFFF {
                    break;
                }
                resting = true;
                spins = SPIN;
            }
            spins += 1;
            if spins < SPIN {
                std::hint::spin_loop();
            } else {
                let l = s.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
                if !resting {
                    s.sleepers.fetch_add(1, Ordering::SeqCst);
                }
                if s.epoch.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::Acquire) {
                    // The lock is held from the check to the wait, so a notification sent
                    // after `run` saw this sleeper (or raised the threads taking part)
                    // cannot fall between them.
                    let _l = s
                        .wake
                        .wait_timeout(l, std::time::Duration::from_millis(50))
                        .unwrap_or_else(|e| e.into_inner());
                }
                if !resting {
                    s.sleepers.fetch_sub(1, Ordering::SeqCst);
                }
                // Woken without a new task (the wait timed out): back to sleep without
                // spinning again; a new task is seen at the top of the loop.
                spins = SPIN;
            }
        }
        #[cfg(test)]
        while s.hold.load(Ordering::Acquire) && !s.stop.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        // The parts of the task this epoch announced, if any are left (its number is the
        // epoch's high bits); a part's panic is told to `run` through `panicked` (its
        // message was printed where it was raised).
        claim_parts(&s, seen >> 16, &mut None);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _l = self
                .shared
                .wake_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// The part `[start, end)` of `0..len` that thread `i` of `n` takes, in chunks of `align`.
pub fn split_range(len: usize, i: usize, n: usize, align: usize) -> (usize, usize) {
    let chunks = len.div_ceil(align);
    let per = chunks / n;
    let extra = chunks % n;
    let start = i * per + i.min(extra);
    let count = per + usize::from(i < extra);
    ((start * align).min(len), ((start + count) * align).min(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_index_runs_once_per_call() {
        let pool = ThreadPool::new(3);
        let hits = AtomicU64::new(0);
        for _ in 0..1000 {
            pool.run(|i, n| {
                assert_eq!(n, 3);
                hits.fetch_add(1 << (20 * i), Ordering::Relaxed);
            });
        }
        let h = hits.load(Ordering::Relaxed);
        assert_eq!(h & 0xFFFFF, 1000);
        assert_eq!((h >> 20) & 0xFFFFF, 1000);
        assert_eq!(h >> 40, 1000);
    }

    /// Tasks on 1, 2 or 3 of 3 threads, changing from task to task and after the workers
    /// fell asleep: each part of each task runs once, told how many take part.
    #[test]
    fn fewer_threads_run_every_part_once() {
        let pool = ThreadPool::new(3);
        pool.gate.lock().unwrap().tuner = Some(Tuner::new(3, None));
        for round in 0..600usize {
            let want = [3, 1, 2, 2, 3, 1, 1, 3][round % 8];
            pool.gate
                .lock()
                .unwrap()
                .tuner
                .as_mut()
                .unwrap()
                .set_active(want);
            if round % 100 == 99 {
                // Long enough for spinning workers to fall asleep.
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let hits = AtomicU64::new(0);
            pool.run(|i, n| {
                assert_eq!(n, want);
                hits.fetch_add(1 << (20 * i), Ordering::Relaxed);
            });
            let h = hits.load(Ordering::Relaxed);
            for i in 0..3 {
                let expect = u64::from(i < want);
                assert_eq!((h >> (20 * i)) & 0xFFFFF, expect, "round {round}, part {i}");
            }
        }
    }

    #[test]
    fn a_panic_in_any_part_reaches_the_caller_after_every_part_is_done() {
        let pool = ThreadPool::new(3);
        for bad in 0..3 {
            let finished = AtomicU64::new(0);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(|i, _| {
                    if i == bad {
                        panic!("part {i} fails");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    finished.fetch_add(1, Ordering::Relaxed);
                })
            }));
            assert!(r.is_err(), "part {bad}: the panic was swallowed");
            // The other two parts had finished with the closure before `run` unwound.
            assert_eq!(finished.load(Ordering::Relaxed), 2, "part {bad}");
            // And the pool still works, every part once.
            let hits = AtomicU64::new(0);
            pool.run(|i, _| {
                hits.fetch_add(1 << (20 * i), Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), 1 | 1 << 20 | 1 << 40);
        }
    }

    /// Workers that do not come (descheduled by the system) hold up nothing: the caller
    /// runs every part, and they find the tasks ended (another task's number, or no part
    /// left) when they come back.
    #[test]
    fn a_task_ends_without_workers_that_do_not_come() {
        let pool = Arc::new(ThreadPool::new(3));
        pool.shared.hold.store(true, Ordering::Release);
        let p = pool.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let me = std::thread::current().id();
            let mut all_mine = true;
            for _ in 0..200 {
                let hits = AtomicU64::new(0);
                let mine = AtomicU64::new(0);
                p.run(|i, n| {
                    assert_eq!(n, 3);
                    hits.fetch_add(1 << (20 * i), Ordering::Relaxed);
                    if std::thread::current().id() == me {
                        mine.fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert_eq!(hits.load(Ordering::Relaxed), 1 | 1 << 20 | 1 << 40);
                all_mine &= mine.load(Ordering::Relaxed) == 3;
            }
            tx.send(all_mine).unwrap();
        });
        let all_mine = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the tasks waited for workers that were held back");
        assert!(all_mine, "a held-back worker ran a part");
        // Let go, the workers find the tasks ended, and take parts again.
        pool.shared.hold.store(false, Ordering::Release);
        let hits = AtomicU64::new(0);
        for _ in 0..200 {
            pool.run(|i, _| {
                hits.fetch_add(1 << (20 * i), Ordering::Relaxed);
            });
        }
        assert_eq!(hits.load(Ordering::Relaxed), 200 | 200 << 20 | 200 << 40);
    }

    #[test]
    fn split_covers_range_exactly() {
        for len in [0, 1, 5, 31, 32, 33, 1000] {
            for n in 1..5 {
                let mut next = 0;
                for i in 0..n {
                    let (a, b) = split_range(len, i, n, 4);
                    assert_eq!(a, next);
                    assert!(b >= a);
                    next = b;
                }
                assert_eq!(next, len);
            }
        }
    }
}
