//! A server whose engine thread panics must not go on answering `ok`: the request in flight
//! fails with a 500, and `serve` returns an error (the CLI then exits non-zero). A server
//! without a model answers `/get_load` with 503.

use std::time::Duration;

use kiln_engine::EngineConfig;
use kiln_server::{AppState, ServerConfig};

#[path = "../../kiln-engine/tests/support/panics.rs"]
mod panics;
use panics::Panics;

#[path = "support/lm.rs"]
mod lm;
use lm::tiny_lm;

#[path = "support/http.rs"]
mod http;
use http::request;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_panic_fails_the_request_and_ends_serve_with_an_error() {
    let lm = tiny_lm(Panics, EngineConfig::default(), "panics", 64);
    let cfg = ServerConfig {
        shutdown_grace: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let state = AppState::new(Some(lm), cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(kiln_server::serve(
        listener,
        state,
        std::future::pending::<()>(),
    ));
    let health = request(port, "GET /health", "").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let r = request(
        port,
        "POST /v1/completions",
        r#"{"prompt":"hi","max_tokens":2}"#,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 500"), "{r}");
    // The watchdog notices within a quarter second; serve then ends with an error.
    let out = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve ended")
        .unwrap();
    let e = out.expect_err("serve must fail when its engine died");
    assert!(e.to_string().contains("engine thread stopped"), "{e}");
}

/// A server without a language model must not look idle to a least-load router: `/get_load`
/// answers 503, naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_load_is_unavailable_without_a_model() {
    let state = AppState::new(None, ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kiln_server::serve(listener, state, async {
        let _ = stop_rx.await;
    }));
    let r = request(port, "GET /get_load", "").await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains("no language model is loaded"), "{r}");
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}
