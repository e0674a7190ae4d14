//! Memory durability: a child process stores exchanges as fast as it can, printing an ack line
//! after each commit; it is killed with SIGKILL mid-way; every acknowledged exchange must be
//! found on reopening, intact.
//!
//! The child is this test binary itself, started with `KILN_IRP_WRITER` set and filtered to the
//! `writer_child` test.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_irp::{Memory, NewExchange, OpenOptions, Profile};

const ENV: &str = "KILN_IRP_WRITER";

/// The child's body: does nothing unless started by `killed_writer_loses_no_ack`.
#[test]
fn writer_child() {
    let Some(path) = std::env::var_os(ENV) else {
        return;
    };
    // The parent's KILN_MEMORY_SYNC picks FULL or NORMAL; both must keep every ack.
    let opts = OpenOptions {
        full_sync: std::env::var("KILN_MEMORY_SYNC").map_or(true, |v| v != "normal"),
        ..Default::default()
    };
    let mut m = Memory::open_with(std::path::Path::new(&path), opts).expect("child: open");
    let p = Profile::default();
    for i in 0u64.. {
        let q = format!("question number {i}: why does exchange {i} matter?");
        let a = format!(
            "Because exchange {i} was acknowledged. {}",
            "padding ".repeat((i % 50) as usize)
        );
        let r = kiln_irp::score_and_store(
            &p,
            Some(&mut m),
            &NewExchange {
                source: "durability",
                session: Some("child"),
                question: &q,
                answer: &a,
                irp: None,
            },
            None,
        )
        .expect("child: store");
        // The ack goes out only after the commit returned.
        println!("ACK {} {i}", r.id.unwrap_or(-1));
    }
}

#[test]
fn killed_writer_loses_no_ack_with_full_sync() {
    killed_writer_loses_no_ack("full");
}

#[test]
fn killed_writer_loses_no_ack_with_normal_sync() {
    killed_writer_loses_no_ack("normal");
}

fn killed_writer_loses_no_ack(sync: &str) {
    let dir =
        std::env::temp_dir().join(format!("kiln-irp-durability-{}-{sync}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("memory.db");
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<(i64, u64)> = Vec::new();
    // Two rounds: the second writes into the file the first killed writer left behind.
    for round in 0..2 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "writer_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(ENV, &db)
            .env("KILN_MEMORY_SYNC", sync)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let target = 40 + 25 * round;
        let started = Instant::now();
        let mut n = 0;
        for line in out.lines() {
            let line = line.unwrap();
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let mut it = rest.split(' ');
            let id: i64 = it.next().unwrap().parse().unwrap();
            let i: u64 = it.next().unwrap().parse().unwrap();
            acked.push((id, i));
            n += 1;
            if n == target {
                // SIGKILL while the child is in the middle of its next write.
                child.kill().unwrap();
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the writer is too slow"
            );
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child was killed");
        assert_eq!(n, target, "the child stopped acknowledging early");
    }
    let m = Memory::open(&db).unwrap();
    m.check_integrity().unwrap();
    for &(id, i) in &acked {
        let x = m
            .get(id)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged exchange #{id} is missing"));
        assert_eq!(
            x.question,
            format!("question number {i}: why does exchange {i} matter?")
        );
        assert!(x
            .answer
            .starts_with(&format!("Because exchange {i} was acknowledged.")));
    }
    let stats = m.stats().unwrap();
    assert!(stats.exchanges as usize >= acked.len());
    let _ = std::fs::remove_dir_all(&dir);
}
