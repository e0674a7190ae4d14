//! What a router or an orchestrator sees of a server's life: `/health` answers 503 while the
//! model loads and again from the moment shutdown begins; while draining, new work is refused
//! with 503 and requests already running finish; then the server stops.

use std::time::Duration;

use kiln_engine::EngineConfig;
use kiln_server::{AppState, LoadedLm, ServerConfig};

#[path = "support/slow.rs"]
mod slow;
use slow::Slow;

#[path = "support/lm.rs"]
mod lm;
use lm::tiny_lm;

#[path = "support/http.rs"]
mod http;
use http::request;

fn slow_lm() -> LoadedLm {
    tiny_lm(Slow, EngineConfig::default(), "slow", 256)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_unavailable_while_loading_and_draining() {
    let state = AppState::loading(ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kiln_server::serve(listener, state.clone(), async {
        let _ = stop_rx.await;
    }));
    // Loading: health and new work answer 503.
    let h = request(port, "GET /health", "").await;
    assert!(
        h.starts_with("HTTP/1.1 503") && h.contains("\"loading\""),
        "{h}"
    );
    let body = r#"{"prompt":"hi","max_tokens":2}"#;
    let r = request(port, "POST /v1/completions", body).await;
    assert!(
        r.starts_with("HTTP/1.1 503") && r.contains("model_loading"),
        "{r}"
    );
    let l = request(port, "GET /get_load", "").await;
    assert!(l.starts_with("HTTP/1.1 503"), "{l}");
    // Ready.
    state.install(slow_lm());
    let h = request(port, "GET /health", "").await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    // A request of 30 steps (50 ms each) runs; shutdown begins.
    let long = r#"{"prompt":"hi","max_tokens":30,"ignore_eos":true}"#;
    let running = tokio::spawn(async move { request(port, "POST /v1/completions", long).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Draining: still answering, 503 for health and for new work.
    let h = request(port, "GET /health", "").await;
    assert!(
        h.starts_with("HTTP/1.1 503") && h.contains("\"draining\""),
        "{h}"
    );
    let r = request(port, "POST /v1/completions", body).await;
    assert!(
        r.starts_with("HTTP/1.1 503") && r.contains("shutting_down"),
        "{r}"
    );
    // The running request completes, then the server stops.
    let r = running.await.unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("\"completion_tokens\":30"), "{r}");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stopped after draining")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_ends_serve_with_its_error() {
    let state = AppState::loading(ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tokio::spawn(kiln_server::serve(
        listener,
        state.clone(),
        std::future::pending::<()>(),
    ));
    state.loading_failed("loading the model: no such file".into());
    let e = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve ended")
        .unwrap()
        .expect_err("serve must fail when loading failed");
    assert!(e.to_string().contains("no such file"), "{e}");
}
