//! What routers and proxies in front of kiln read: a full queue answers 429 with
//! `Retry-After`, streamed answers tell proxies not to buffer them, `/metrics` carries the
//! gauges the inference gateway's endpoint picker reads (under vLLM's names), `/get_load`
//! the load, and responses the prompt tokens served from the prefix cache.

use std::time::Duration;

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

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_says_when_to_retry_and_streams_are_not_buffered() {
    let cfg = EngineConfig {
        max_running: 1,
        max_queue: 1,
        ..EngineConfig::default()
    };
    let lm = tiny_lm(Slow, cfg, "slow", 256);
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
    let idle = metrics(port).await;
    check_gauges(&idle);
    assert_eq!(idle["vllm:num_requests_running"], 0.0);
    // One request runs, one waits, the rest find the queue full (a step is 50 ms, each
    // request 20 steps): 429 with Retry-After.
    let long = r#"{"prompt":"hi","max_tokens":20,"ignore_eos":true}"#;
    let all: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { request(port, "POST /v1/completions", long).await }))
        .collect();
    // Under load the gauges move: a request runs and holds KV blocks.
    let mut busy = None;
    for _ in 0..100 {
        let m = metrics(port).await;
        check_gauges(&m);
        if m["vllm:num_requests_running"] == 1.0 {
            busy = Some(m);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy = busy.expect("no request was ever running");
    assert!(busy["vllm:kv_cache_usage_perc"] > 0.0, "{busy:?}");
    let load = json_body(&request(port, "GET /get_load", "").await);
    assert!(load["load"].as_u64().unwrap() >= 1, "{load}");
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
    let after = metrics(port).await;
    check_gauges(&after);
    assert_eq!(after["vllm:num_requests_running"], 0.0);
    assert_eq!(after["vllm:num_requests_waiting"], 0.0);

    // The same long prompt twice: the second is served from the prefix cache, says so in its
    // usage, and the counters show it.
    let prompt = "one two three four five six seven eight nine ten ".repeat(6);
    let body = format!(r#"{{"prompt":"{prompt}","max_tokens":1}}"#);
    let first = json_body(&request(port, "POST /v1/completions", &body).await);
    let second = json_body(&request(port, "POST /v1/completions", &body).await);
    let cached = |v: &serde_json::Value| {
        v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    let prompt_tokens = second["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 32, "{second}");
    assert!(
        cached(&second) >= 16 && cached(&second) < prompt_tokens,
        "{second}"
    );
    assert!(cached(&first) < cached(&second), "{first} {second}");
    let m = metrics(port).await;
    assert!(
        m["vllm:prefix_cache_hits_total"] >= cached(&second) as f64,
        "{m:?}"
    );
    assert!(
        m["vllm:prefix_cache_queries_total"] >= 2.0 * prompt_tokens as f64,
        "{m:?}"
    );
}

fn json_body(response: &str) -> serde_json::Value {
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

/// `/metrics` as name -> value (labels dropped), after checking each line's shape and the
/// gateway's names and types.
async fn metrics(port: u16) -> std::collections::HashMap<String, f64> {
    let r = request(port, "GET /metrics", "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let text = r.split("\r\n\r\n").nth(1).unwrap();
    let mut types = std::collections::HashMap::new();
    let mut values = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, ty) = t.split_once(' ').unwrap();
            types.insert(name.to_string(), ty.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, v) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            // A histogram's samples are its name with _bucket, _sum or _count.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|x| {
                    name.strip_suffix(x)
                        .filter(|b| types.get(*b).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "{name} has no TYPE line");
            values.insert(name.to_string(), v.parse::<f64>().unwrap());
        }
    }
    for (name, ty) in [
        ("vllm:num_requests_running", "gauge"),
        ("vllm:num_requests_waiting", "gauge"),
        ("vllm:kv_cache_usage_perc", "gauge"),
        ("vllm:cache_config_info", "gauge"),
        ("vllm:prefix_cache_queries_total", "counter"),
        ("vllm:prefix_cache_hits_total", "counter"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(ty), "{name}");
    }
    assert!(
        text.contains("vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"16\"} 1"),
        "{text}"
    );
    values
}

/// The gauges' ranges.
fn check_gauges(m: &std::collections::HashMap<String, f64>) {
    let usage = m["vllm:kv_cache_usage_perc"];
    assert!((0.0..=1.0).contains(&usage), "{usage}");
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting"] {
        let v = m[name];
        assert!(v >= 0.0 && v.fract() == 0.0, "{name} {v}");
    }
    assert!(m["vllm:num_requests_running"] <= 1.0, "max_running is 1");
    assert!(m["vllm:prefix_cache_hits_total"] <= m["vllm:prefix_cache_queries_total"]);
}
