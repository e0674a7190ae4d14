//! What routers and proxies in front of kiln read: a full queue answers 429 with
//! `Retry-After`, and streamed answers tell proxies not to buffer them.

use std::sync::Arc;
use std::time::Duration;

use kiln_engine::{Engine, EngineConfig, EngineHandle, Runner, Slice};
use kiln_model::chat::{ChatTemplate, CHATML};
use kiln_model::sample::{Adjust, RowSampling, Sampled};
use kiln_model::tokenizer::Tokenizer;
use kiln_model::ModelError;
use kiln_server::{AppState, LoadedLm, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A runner that takes 50 ms a step and always answers token 300.
struct Slow;

impl Runner for Slow {
    fn vocab_size(&self) -> usize {
        399
    }
    fn context_length(&self) -> usize {
        64
    }
    fn block_size(&self) -> usize {
        16
    }
    fn n_blocks(&self) -> usize {
        16
    }
    fn step(
        &mut self,
        _: &[Slice<'_>],
        rows: &[RowSampling],
        _: &[Adjust],
        out: &mut Vec<Sampled>,
    ) -> Result<(), ModelError> {
        std::thread::sleep(Duration::from_millis(50));
        out.clear();
        out.extend(rows.iter().map(|_| Sampled::token(300)));
        Ok(())
    }
    fn step_all(&mut self, _: &[Slice<'_>], _: &mut Vec<f32>) -> Result<(), ModelError> {
        Err(ModelError::Input("not used".into()))
    }
    fn max_logit_rows(&self) -> usize {
        4
    }
    fn copy_block(&mut self, _: u32, _: u32) {}
}

async fn request(port: u16, head: &str, body: &str) -> String {
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "{head} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_says_when_to_retry_and_streams_are_not_buffered() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kiln-model/tests/fixtures/tiny-qwen2/model.gguf");
    let f = kiln_gguf::GgufFile::open(fixture).unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&f).unwrap());
    let cfg = EngineConfig {
        max_running: 1,
        max_queue: 1,
        ..EngineConfig::default()
    };
    let lm = LoadedLm {
        engine: EngineHandle::spawn(Engine::new(Slow, tok.clone(), cfg)),
        tokenizer: tok,
        template: ChatTemplate::new(CHATML, "", "").unwrap(),
        id: "slow".into(),
        context_length: 64,
        load_s: 0.0,
    };
    let state = AppState::new(Some(lm), ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(kiln_server::serve(
        listener,
        state,
        std::future::pending::<()>(),
    ));
    // A streamed answer: event stream, not to be cached or buffered by a proxy.
    let body = r#"{"prompt":"hi","max_tokens":2,"stream":true,"ignore_eos":true}"#;
    let r = request(port, "POST /v1/completions", body).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(header(&r, "content-type"), Some("text/event-stream"), "{r}");
    assert_eq!(header(&r, "x-accel-buffering"), Some("no"), "{r}");
    assert_eq!(header(&r, "cache-control"), Some("no-cache"), "{r}");
    // One request runs, one waits, the rest find the queue full (a step is 50 ms, each
    // request 20 steps): 429 with Retry-After.
    let long = r#"{"prompt":"hi","max_tokens":20,"ignore_eos":true}"#;
    let all: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { request(port, "POST /v1/completions", long).await }))
        .collect();
    let mut full = 0;
    for h in all {
        let r = h.await.unwrap();
        if r.starts_with("HTTP/1.1 429") {
            full += 1;
            assert_eq!(header(&r, "retry-after"), Some("1"), "{r}");
            assert!(r.contains("queue_full"), "{r}");
        } else {
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        }
    }
    assert!(
        full >= 1,
        "five requests at once never filled a queue of one"
    );
}
