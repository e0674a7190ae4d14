//! How many of the pool's threads to use when other programs take cores: a laptop runs kiln
//! beside a browser and an editor, and a pool that waits at every task for a thread the
//! system has descheduled runs slower than one thread alone (each of the ~240 tasks of a
//! token waits for its slowest part).
//!
//! [`Tuner`] watches the share of the allowed CPUs that other processes use
//! ([`CpuSampler`], from `/proc`); when it changes (another program starts or stops taking
//! cores), it times the pool's tasks over a window with the threads it has, a window with
//! the alternative, and the first again, and keeps the alternative only if it ran 10% faster
//! than the mean of the two. The decision rests on measured speed, not on the load figure,
//! so a light load (an HTTP client streaming tokens) that does not slow the pool changes
//! nothing; a trial that loses makes the next wait twice as long. Only a core taken outright
//! (another process's whole core) switches to fewer threads at once, and a trial of all of
//! them follows later.

use std::time::{Duration, Instant};

/// Each window of a trial times this many tasks (about two tokens of a small model's
/// decoding), or what ran in `WINDOW_TIME` if that is shorter, at least `MIN_CALLS`.
const WINDOW: u32 = 512;
const WINDOW_TIME: Duration = Duration::from_millis(40);
const MIN_CALLS: u32 = 32;
/// How often the other processes' share of the CPUs is read.
const SAMPLE: Duration = Duration::from_millis(200);
/// The clock is read once every this many tasks (a token of a small model runs about 240;
/// a read costs about as much as a small task's bookkeeping, and with one thread taking
/// part, nothing else separates the pool from a pool of one).
const CLOCK_EVERY: u32 = 8;
/// Cores other processes must take (averaged over a sample) before fewer threads are tried;
/// from `TAKEN` on, a core is taken outright and fewer threads are used at once (the trial
/// back to all of them follows after `LONG_WAIT`, or as soon as the share drops).
const BUSY: f64 = 0.3;
const TAKEN: f64 = 0.6;
/// The wait after a lost trial before the next, doubled with each loss up to `MAX_WAIT`;
/// after fewer threads won, the wait before trying them all again unless the others' share
/// drops (`LONG_WAIT`).
const MIN_WAIT: Duration = Duration::from_millis(400);
const LONG_WAIT: Duration = Duration::from_millis(3200);
const MAX_WAIT: Duration = Duration::from_millis(6400);
/// How much faster the alternative must run than the mean of the windows around it.
const MARGIN: f64 = 1.10;

/// CPU time of the CPUs this process may run on, and of this process, read from `/proc`.
#[derive(Debug)]
pub struct CpuSampler {
    /// The CPUs this process may run on.
    allowed: Vec<usize>,
    /// Busy and total ticks of the allowed CPUs, and this process's ticks, at the last read.
    last: Option<(u64, u64, u64)>,
}

impl CpuSampler {
    /// A sampler, if `/proc` tells this process's CPUs and times.
    pub fn new() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .and_then(|v| parse_cpu_list(v.trim()))?;
        let mut s = CpuSampler {
            allowed,
            last: None,
        };
        s.last = Some(s.read()?);
        Some(s)
    }

    fn read(&mut self) -> Option<(u64, u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let (busy, total) = cpu_ticks(&stat, &self.allowed)?;
        let me = process_ticks(&own)?;
        Some((busy, total, me))
    }

    /// Cores' worth of the allowed CPUs other processes used since the last call (steal
    /// time counts as theirs: the hypervisor gave it to someone else); `None` if `/proc`
    /// could not be read.
    pub fn others(&mut self) -> Option<f64> {
        let now = self.read()?;
        let before = self.last.replace(now)?;
        let busy = now.0.saturating_sub(before.0) as f64;
        let total = now.1.saturating_sub(before.1) as f64;
        let me = now.2.saturating_sub(before.2) as f64;
        if total <= 0.0 {
            return Some(0.0);
        }
        let per_cpu = total / self.allowed.len() as f64;
        Some(((busy - me) / per_cpu).max(0.0))
    }
}

/// The CPUs of a list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().ok()?),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Busy and total ticks of the CPUs `allowed` in `/proc/stat`'s text (busy: user, nice,
/// system, irq, softirq, steal; total adds idle and iowait).
pub fn cpu_ticks(stat: &str, allowed: &[usize]) -> Option<(u64, u64)> {
    let (mut busy, mut total, mut found) = (0u64, 0u64, 0usize);
    for line in stat.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let Some(Ok(id)) = f.next().map(str::parse::<usize>) else {
            continue; // the aggregate line, "cpu  ..."
        };
        if !allowed.contains(&id) {
            continue;
        }
        let v: Vec<u64> = f.take(8).filter_map(|x| x.parse().ok()).collect();
        if v.len() < 8 {
            return None;
        }
        let b = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
        busy += b;
        total += b + v[3] + v[4];
        found += 1;
    }
    (found > 0).then_some((busy, total))
}

/// User and system ticks of a process from its `/proc/PID/stat` text (fields 14 and 15,
/// counted after the command name, which may hold spaces and parentheses).
pub fn process_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let u: u64 = f.get(11)?.parse().ok()?;
    let s: u64 = f.get(12)?.parse().ok()?;
    Some(u + s)
}

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Reading the load now and then.
    Watch,
    /// Timing the current threads before the alternative.
    Before { alt: usize },
    /// Timing the alternative.
    Trial { base: usize, before: f64 },
    /// Timing the current threads again.
    After { alt: usize, before: f64, trial: f64 },
}

/// Chooses how many threads take part in the pool's tasks (see the module's text).
#[derive(Debug)]
pub struct Tuner {
    n: usize,
    active: usize,
    sampler: Option<CpuSampler>,
    phase: Phase,
    /// Tasks ended since the clock was last read.
    unclocked: u32,
    /// Tasks and start of the window being timed.
    calls: u32,
    start: Instant,
    next_sample: Instant,
    /// No trial before this.
    quiet_until: Instant,
    wait: Duration,
    /// The others' share when the last trial was read, and when one last found every
    /// thread faster despite it (a share no higher then switches only through a trial).
    others: f64,
    all_won_at: f64,
    /// Trials decided, and how many switched (for tests and reports).
    pub trials: u32,
    pub switches: u32,
}

impl Tuner {
    /// A tuner over `n` threads reading the load with `sampler` (none: it never changes).
    pub fn new(n: usize, sampler: Option<CpuSampler>) -> Self {
        let now = Instant::now();
        Tuner {
            n: n.max(1),
            active: n.max(1),
            sampler,
            phase: Phase::Watch,
            unclocked: 0,
            calls: 0,
            start: now,
            next_sample: now,
            quiet_until: now,
            wait: MIN_WAIT,
            others: 0.0,
            all_won_at: f64::NEG_INFINITY,
            trials: 0,
            switches: 0,
        }
    }

    /// Threads to take part in the next task.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Sets the threads of the next tasks (a test's choice).
    #[cfg(test)]
    pub fn set_active(&mut self, a: usize) {
        self.active = a.clamp(1, self.n);
    }

    /// A task ended (the clock is read every [`CLOCK_EVERY`] tasks).
    pub fn task_done(&mut self) {
        self.unclocked += 1;
        if self.unclocked >= CLOCK_EVERY {
            let tasks = std::mem::take(&mut self.unclocked);
            self.done(Instant::now(), tasks);
        }
    }

    /// `tasks` tasks ended, the last at `now`.
    fn done(&mut self, now: Instant, tasks: u32) {
        if self.n < 2 {
            return;
        }
        match self.phase {
            Phase::Watch => {
                if now < self.next_sample {
                    return;
                }
                self.next_sample = now + SAMPLE;
                let Some(others) = self.sampler.as_mut().and_then(CpuSampler::others) else {
                    return;
                };
                self.consider(others, now);
            }
            Phase::Before { alt } => {
                if let Some(rate) = self.window(now, tasks) {
                    self.phase = Phase::Trial {
                        base: self.active,
                        before: rate,
                    };
                    self.active = alt;
                }
            }
            Phase::Trial { base, before } => {
                if let Some(rate) = self.window(now, tasks) {
                    self.phase = Phase::After {
                        alt: self.active,
                        before,
                        trial: rate,
                    };
                    self.active = base;
                }
            }
            Phase::After { alt, before, trial } => {
                if let Some(after) = self.window(now, tasks) {
                    self.decide(alt, before, trial, after, now);
                }
            }
        }
    }

    /// Starts a trial when the load says the threads may be wrong: others take cores while
    /// every thread runs (try fewer), or some threads rest (try them all: at once when the
    /// others' share has dropped, otherwise after the wait).
    fn consider(&mut self, others: f64, now: Instant) {
        self.others = others;
        let resting = self.n - self.active;
        let freed = resting > 0 && others < resting as f64 - 0.5;
        if now < self.quiet_until && !freed {
            return;
        }
        let alt = if resting == 0 {
            if others < BUSY {
                return;
            }
            self.n
                .saturating_sub((others.round() as usize).max(1))
                .max(1)
        } else {
            self.n
        };
        if alt == self.active {
            return;
        }
        if resting == 0 && others >= TAKEN && others > self.all_won_at + BUSY {
            self.active = alt;
            self.switches += 1;
            self.wait = LONG_WAIT;
            self.quiet_until = now + self.wait;
            return;
        }
        self.phase = Phase::Before { alt };
        self.calls = 0;
        self.start = now;
    }

    /// Counts `tasks` tasks of the window being timed; its tasks a second once the window is
    /// full, `None` before. A window whose time ran out with too few tasks (the work paused
    /// or is coarse) drops the trial (threads as before it).
    fn window(&mut self, now: Instant, tasks: u32) -> Option<f64> {
        self.calls += tasks;
        let spent = now.saturating_duration_since(self.start);
        if self.calls < WINDOW && spent < WINDOW_TIME {
            return None;
        }
        let calls = std::mem::take(&mut self.calls);
        self.start = now;
        if calls < MIN_CALLS {
            if let Phase::Trial { base, .. } = self.phase {
                self.active = base;
            }
            self.phase = Phase::Watch;
            self.quiet_until = now + self.wait;
            return None;
        }
        Some(calls as f64 / spent.as_secs_f64().max(1e-9))
    }

    fn decide(&mut self, alt: usize, before: f64, trial: f64, after: f64, now: Instant) {
        self.trials += 1;
        self.phase = Phase::Watch;
        if trial > MARGIN * 0.5 * (before + after) {
            self.wait = if alt < self.active {
                LONG_WAIT
            } else {
                self.all_won_at = self.others;
                MIN_WAIT
            };
            self.active = alt;
            self.switches += 1;
        } else {
            self.wait = (self.wait * 2).min(MAX_WAIT);
        }
        self.quiet_until = now + self.wait;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_texts_are_read() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        let stat = "cpu  10 0 10 100 0 0 0 0 0 0\n\
                    cpu0 5 0 5 50 2 1 1 3 0 0\n\
                    cpu1 1 1 1 60 0 0 0 0 0 0\n\
                    intr 1 2 3\n";
        // cpu0: busy 5+0+5+1+1+3 = 15, total 15+50+2 = 67; cpu1: busy 3, total 63.
        assert_eq!(cpu_ticks(stat, &[0, 1]), Some((18, 130)));
        assert_eq!(cpu_ticks(stat, &[1]), Some((3, 63)));
        assert_eq!(cpu_ticks(stat, &[7]), None);
        let own = "4242 (kiln serve (x)) R 1 2 3 4 5 6 7 8 9 10 120 30 0 0 20 0 4";
        assert_eq!(process_ticks(own), Some(150));
        assert_eq!(process_ticks("garbage"), None);
    }

    /// Drives a tuner with tasks whose speed depends on its threads, clocked every
    /// `CLOCK_EVERY` tasks as the pool clocks them; returns its threads after `ms`
    /// milliseconds of tasks.
    fn drive(t: &mut Tuner, others: f64, speed: impl Fn(usize) -> f64, ms: u64) -> usize {
        let t0 = Instant::now();
        let mut now = t0;
        // The sampler is replaced by a fixed load figure.
        while now < t0 + Duration::from_millis(ms) {
            if t.phase == Phase::Watch && now >= t.next_sample {
                t.next_sample = now + SAMPLE;
                t.consider(others, now);
            } else {
                t.done(now, CLOCK_EVERY);
            }
            now += Duration::from_secs_f64(CLOCK_EVERY as f64 / speed(t.active()));
        }
        t.active()
    }

    #[test]
    fn fewer_threads_only_when_they_run_faster() {
        // A busy core: one thread runs tasks twice as fast as two.
        let mut t = Tuner::new(2, None);
        assert_eq!(
            drive(
                &mut t,
                1.0,
                |a| if a == 1 { 20_000.0 } else { 10_000.0 },
                500
            ),
            1
        );
        assert_eq!(t.switches, 1);
        // The core is free again: two threads win their trial back.
        assert_eq!(
            drive(
                &mut t,
                0.0,
                |a| if a == 2 { 40_000.0 } else { 20_000.0 },
                2000
            ),
            2
        );
        // A light load that does not slow two threads changes nothing, and trials back off.
        let mut t = Tuner::new(2, None);
        assert_eq!(drive(&mut t, 0.5, |a| a as f64 * 20_000.0, 5000), 2);
        assert_eq!(t.switches, 0);
        assert!(t.trials >= 2 && t.trials <= 6, "{} trials in 5 s", t.trials);
        // A heavy load that still leaves every thread faster: the first switch (a core
        // looked taken) is undone by a trial, and the same load then needs a trial to
        // switch again, which it loses: no back and forth.
        let mut t = Tuner::new(2, None);
        assert_eq!(drive(&mut t, 0.7, |a| a as f64 * 20_000.0, 20_000), 2);
        assert_eq!(t.switches, 2, "down at once, then up after a trial");
        // Eight threads, one core taken: seven.
        let mut t = Tuner::new(8, None);
        assert_eq!(
            drive(
                &mut t,
                1.0,
                |a| if a == 7 { 70_000.0 } else { 20_000.0 },
                500
            ),
            7
        );
        // A single thread has nothing to choose.
        let mut t = Tuner::new(1, None);
        assert_eq!(drive(&mut t, 1.0, |_| 10_000.0, 200), 1);
    }

    #[test]
    fn a_window_of_sparse_tasks_drops_the_trial() {
        let mut t = Tuner::new(2, None);
        // Tasks 2 ms apart: 20 in a window's time, too few to time.
        assert_eq!(
            drive(&mut t, 0.5, |a| if a == 1 { 500.0 } else { 450.0 }, 1500),
            2
        );
        assert_eq!(t.trials, 0);
    }
}
