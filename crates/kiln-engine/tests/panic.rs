//! A panic on the engine thread: the handle must say so (a server then reports it and
//! exits), and requests must not wait for ever.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_engine::{Engine, EngineConfig, EngineHandle, Request, SamplingParams};
use kiln_tokenizer::Tokenizer;

#[path = "support/panics.rs"]
mod panics;
use panics::Panics;

#[test]
fn a_panicking_engine_thread_is_reported_and_ends_its_requests() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny-qwen2/model.gguf");
    let f = kiln_formats::gguf::GgufFile::open(fixture).unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&f).unwrap());
    let handle = EngineHandle::spawn(Engine::new(Panics, tok, EngineConfig::default()));
    assert!(!handle.has_failed());
    let (tx, rx) = mpsc::channel();
    handle
        .submit(
            Request {
                prompt: vec![1, 2, 3],
                params: SamplingParams::default(),
                constraint: None,
            },
            Box::new(move |e| tx.send(e).is_ok()),
        )
        .unwrap();
    // The sink is dropped with the thread: the request's receiver ends instead of hanging.
    // A failure event may come first (whatever the engine managed to say), then the end.
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(kiln_engine::Event::Failed(_)) => continue,
            Ok(e) => panic!("unexpected event {e:?}"),
            Err(e) => {
                assert_eq!(e, mpsc::RecvTimeoutError::Disconnected);
                break;
            }
        }
    }
    let t0 = Instant::now();
    while !handle.has_failed() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "has_failed never said so"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A stopped engine refuses new work rather than accepting it silently.
    let r = handle.submit(
        Request {
            prompt: vec![1],
            params: SamplingParams::default(),
            constraint: None,
        },
        Box::new(|_| true),
    );
    assert!(r.is_err());
}
