//! Refinements hold a thread of the blocking pool for their whole run; tokenizing and
//! templating of every request share that pool. With more refinements than slots, the rest
//! wait for a slot without a thread, so an ordinary request still gets one and finishes
//! while they run.

use std::time::{Duration, Instant};

use kiln_engine::EngineConfig;
use kiln_server::{AppState, ServerConfig};

#[path = "support/slow.rs"]
mod slow;
use slow::Slow;

#[path = "support/lm.rs"]
mod lm;
use lm::tiny_lm;

#[path = "support/http.rs"]
mod http;
use http::request;

#[test]
fn refinements_leave_blocking_threads_to_ordinary_requests() {
    // Two blocking threads, one refinement slot: without the slot three refinements would
    // hold both threads and the ordinary request's tokenizing would wait for one to end.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lm = tiny_lm(Slow, EngineConfig::default(), "slow", 256);
        let cfg = ServerConfig {
            max_refinements: 1,
            ..ServerConfig::default()
        };
        let state = AppState::new(Some(lm), cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(kiln_server::serve(
            listener,
            state,
            std::future::pending::<()>(),
        ));
        // Each refinement generates at least 12 tokens at 50 ms a step: over half a second.
        let refine = r#"{"messages":[{"role":"user","content":"Why?"}],"max_tokens":12,
            "refine":{"profile":"edge","max_tokens":12}}"#;
        let t0 = Instant::now();
        let refinements: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn(async move {
                    let r = request(port, "POST /v1/chat/completions", refine).await;
                    (r, t0.elapsed())
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let plain = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2}"#;
        let r = request(port, "POST /v1/chat/completions", plain).await;
        let plain_done = t0.elapsed();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let mut ends = Vec::new();
        for h in refinements {
            let (r, t) = h.await.unwrap();
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            ends.push(t);
        }
        ends.sort();
        // The refinements ran one after another, and the ordinary request did not wait for
        // the last of them (nor, with its two tokens, for more than the first).
        assert!(
            plain_done < ends[1],
            "the ordinary request ended at {plain_done:?}, the refinements at {ends:?}"
        );
    });
}
