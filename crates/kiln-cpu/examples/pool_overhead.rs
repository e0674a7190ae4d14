//! What a pool task costs besides its work: an automatically sized pool against a pool of one
//! thread, on empty tasks, and what one clock read costs. Run it with another program taking
//! a core (the automatic pool then runs its tasks on one thread, as `--threads 1` does):
//!
//! `(while :; do :; done) & cargo run --release -p kiln-cpu --example pool_overhead; kill %1`
use std::time::Instant;

use kiln_cpu::ThreadPool;

fn main() {
    const TASKS: u32 = 2_000_000;
    let auto = ThreadPool::adaptive(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let one = ThreadPool::new(1);
    // Long enough for the tuner's first readings of the load.
    let t = Instant::now();
    while t.elapsed().as_millis() < 500 {
        auto.run(|_, _| {});
    }
    for round in 1..=3 {
        for (name, pool) in [("automatic", &auto), ("one thread", &one)] {
            let t = Instant::now();
            for _ in 0..TASKS {
                pool.run(|_, n| {
                    std::hint::black_box(n);
                });
            }
            let ns = t.elapsed().as_nanos() as f64 / f64::from(TASKS);
            println!("round {round}: {name:<10} {ns:6.1} ns a task");
        }
    }
    let t = Instant::now();
    for _ in 0..TASKS {
        std::hint::black_box(Instant::now());
    }
    let ns = t.elapsed().as_nanos() as f64 / f64::from(TASKS);
    println!("one clock read: {ns:.1} ns");
}
