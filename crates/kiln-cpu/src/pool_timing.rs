//! Timing of the pool's tasks, for a measuring build only (feature `pool-timing`,
//! `scripts/pool_tasks.sh`): per kind of task (its closure's type), the caller's serial time
//! before it, when the first worker's part started after the task was announced, the two
//! first parts' times, the caller's wait at its end and the worker's idle time before it;
//! printed to stderr every 40,000 tasks (about 260 steps of 8 rows of the default model).
//! Gaps over 2 ms (no work) are left out. Without the feature, every hook is empty.

#[cfg(not(feature = "pool-timing"))]
mod hooks {
    #[inline(always)]
    pub fn now() -> u64 {
        0
    }
    #[inline(always)]
    pub fn part(_p: usize, _a: u64, _b: u64) {}
    #[inline(always)]
    pub fn note(_name: &'static str, _t_pub: u64, _t_mine: u64, _t_end: u64) {}
}

#[cfg(feature = "pool-timing")]
mod hooks {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

    pub fn now() -> u64 {
        BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }

    thread_local! {
        /// 1 on the pool's workers, 0 on the caller's thread.
        static SIDE: usize = usize::from(
            std::thread::current().name().is_some_and(|n| n.starts_with("kiln-worker")),
        );
    }

    /// Per side (caller, workers): the current task's first part's start and last part's end.
    static FIRST: [AtomicU64; 2] = [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)];
    static LAST: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

    pub fn part(_p: usize, a: u64, b: u64) {
        let side = SIDE.with(|s| *s);
        FIRST[side].fetch_min(a, Ordering::Relaxed);
        LAST[side].fetch_max(b, Ordering::Relaxed);
    }

    #[derive(Default)]
    struct St {
        n: u64,
        /// Tasks the workers took part in.
        with_worker: u64,
        serial: u64,
        worker_start: u64,
        caller_busy: u64,
        worker_busy: u64,
        wait: u64,
        worker_idle: u64,
    }

    struct G {
        map: HashMap<&'static str, St>,
        last_end: u64,
        worker_last_end: u64,
        tasks: u64,
    }

    static M: Mutex<Option<G>> = Mutex::new(None);
    const IDLE: u64 = 2_000_000;

    pub fn note(name: &'static str, t_pub: u64, t_mine: u64, t_end: u64) {
        let mut g = M.lock().unwrap_or_else(|e| e.into_inner());
        let g = g.get_or_insert_with(|| G {
            map: HashMap::new(),
            last_end: t_pub,
            worker_last_end: t_pub,
            tasks: 0,
        });
        let take = |i: usize| {
            (
                FIRST[i].swap(u64::MAX, Ordering::Relaxed),
                LAST[i].swap(0, Ordering::Relaxed),
            )
        };
        let ((c0, c1), (w0, w1)) = (take(0), take(1));
        let st = g.map.entry(name).or_default();
        st.n += 1;
        let gap = t_pub.saturating_sub(g.last_end);
        st.serial += if gap < IDLE { gap } else { 0 };
        st.caller_busy += c1.saturating_sub(c0);
        st.wait += t_end.saturating_sub(t_mine);
        if w0 != u64::MAX {
            st.with_worker += 1;
            st.worker_start += w0.saturating_sub(t_pub);
            st.worker_busy += w1.saturating_sub(w0);
            let idle = w0.saturating_sub(g.worker_last_end);
            st.worker_idle += if idle < IDLE { idle } else { 0 };
            g.worker_last_end = w1;
        }
        g.last_end = t_end;
        g.tasks += 1;
        if g.tasks.is_multiple_of(40_000) {
            let mut v: Vec<_> = g.map.iter().collect();
            v.sort_by_key(|(_, s)| std::cmp::Reverse(s.n));
            eprintln!(
                "pool tasks, us a task: count with_worker serial_before worker_start \
                 caller_busy worker_busy caller_wait worker_idle | ms in all: serial \
                 caller_wait worker_idle | task"
            );
            for (k, s) in v {
                let (n, w) = (s.n as f64, s.with_worker.max(1) as f64);
                let ms = |x: u64| x as f64 / 1e6;
                let short: Vec<&str> = k.rsplit("::").take(3).collect();
                eprintln!(
                    "{:7} {:7} {:7.2} {:6.2} {:7.2} {:7.2} {:6.2} {:7.2} | {:7.1} {:6.1} {:7.1} | {}",
                    s.n,
                    s.with_worker,
                    s.serial as f64 / n / 1e3,
                    s.worker_start as f64 / w / 1e3,
                    s.caller_busy as f64 / n / 1e3,
                    s.worker_busy as f64 / w / 1e3,
                    s.wait as f64 / n / 1e3,
                    s.worker_idle as f64 / w / 1e3,
                    ms(s.serial),
                    ms(s.wait),
                    ms(s.worker_idle),
                    short.into_iter().rev().collect::<Vec<_>>().join("::")
                );
            }
            g.map.clear();
        }
    }
}

pub use hooks::{note, now, part};
