//! `kiln serve` on loopback, driven by real clients: curl and the `openai` Python package.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::Server;

fn python(script: &str, port: u16) -> Output {
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("KILN_PORT", port.to_string())
        .output()
        .expect("python3")
}

#[test]
fn openai_endpoints_with_curl() {
    let s = Server::start(&[]);
    let h = s.health();
    assert_eq!(h["status"], "ok");
    let (code, models) = s.curl(&[&s.url("/v1/models")]);
    assert_eq!(code, 200);
    let models: serde_json::Value = serde_json::from_str(&models).unwrap();
    let id = models["data"][0]["id"].as_str().unwrap().to_owned();

    // Non-streaming chat, greedy: the reference answer of the golden fixture.
    let (code, v) = s.post(
        "/v1/chat/completions",
        &format!(r#"{{"model":"{id}","messages":[{{"role":"user","content":"What is 2+2?"}}],"temperature":0,"max_tokens":16}}"#),
        &[],
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains('4'),
        "{v}"
    );
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );

    // Streaming chat with usage.
    let (code, text) = s.curl(&[
        "-N",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"model":"default","messages":[{"role":"user","content":"Count to three."}],"temperature":0,"max_tokens":12,"stream":true,"stream_options":{"include_usage":true}}"#,
        &s.url("/v1/chat/completions"),
    ]);
    assert_eq!(code, 200);
    let datas: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(datas.last(), Some(&"[DONE]"));
    let chunks: Vec<serde_json::Value> = datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!content.is_empty());
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"].is_string()));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 12);

    // Completions, n = 2 with a seed, logprobs.
    let (code, v) = s.post(
        "/v1/completions",
        r#"{"model":"default","prompt":"Once upon a time","max_tokens":8,"n":2,"seed":5,"temperature":0.9,"logprobs":3}"#,
        &[],
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["choices"][0]["logprobs"]["top_logprobs"][0]
            .as_object()
            .unwrap()
            .len(),
        3
    );
    // Same seed, same answer.
    let (_, v2) = s.post(
        "/v1/completions",
        r#"{"model":"default","prompt":"Once upon a time","max_tokens":8,"n":2,"seed":5,"temperature":0.9,"logprobs":3}"#,
        &[],
    );
    assert_eq!(v["choices"][0]["text"], v2["choices"][0]["text"]);

    // Bad input: each with its status and an OpenAI-shaped error naming the problem.
    let long = "word ".repeat(9000);
    let too_long = format!(r#"{{"messages":[{{"role":"user","content":"{long}"}}]}}"#);
    let huge = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(1 << 21));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/v1/chat/completions", "{not json".into(), 400, "body"),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}"#.into(),
            404,
            "model",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#.into(),
            400,
            "temperature",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"x"}],"temperature":7}"#.into(),
            400,
            "temperature",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#.into(),
            400,
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"x"}],"n":100}"#.into(),
            400,
            "n",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":"hello"}"#.into(),
            400,
            "messages",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"default"}"#.into(),
            400,
            "messages",
        ),
        ("/v1/chat/completions", too_long, 400, "messages"),
        ("/v1/completions", huge, 413, ""),
        (
            "/v1/completions",
            r#"{"prompt":"x","top_p":0}"#.into(),
            400,
            "top_p",
        ),
    ];
    for (path, body, status, param) in cases {
        let (code, v) = s.post(path, &body, &[]);
        assert_eq!(code, status, "{path} {}: {v}", &body[..body.len().min(80)]);
        let err = &v["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        if !param.is_empty() {
            assert_eq!(err["param"], param, "{v}");
        }
    }
    let (code, _) = s.curl(&[&s.url("/v1/nothing")]);
    assert_eq!(code, 404);

    // Ising endpoints.
    let (code, v) = s.post(
        "/v1/ising/empathy",
        r#"{"a":{"n":20,"seed":42},"b":{"n":20,"seed":43},"steps":100,"seed":100}"#,
        &[],
    );
    assert_eq!(code, 200, "{v}");
    assert!(v["empathy"].as_f64().is_some(), "{v}");
    let (code, v) = s.post(
        "/v1/ising/empathy",
        r#"{"a":{"n":0,"seed":1},"b":{"n":20,"seed":43}}"#,
        &[],
    );
    assert_eq!(code, 400, "{v}");

    // Metrics reflect the traffic.
    let (_, m) = s.curl(&[&s.url("/metrics")]);
    for needle in [
        "kiln_requests_total{endpoint=\"chat_completions\",status=\"200\"}",
        "kiln_requests_total{endpoint=\"chat_completions\",status=\"400\"}",
        "kiln_time_to_first_token_seconds_count",
        "kiln_inter_token_latency_seconds_bucket",
        "kiln_generation_tokens_total",
        "kiln_kv_blocks_free",
        "kiln_queue_depth",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}");
    }
}

#[test]
fn openai_python_client_streaming_and_not() {
    let s = Server::start(&[]);
    let script = r#"
import os, openai
c = openai.OpenAI(base_url=f"http://127.0.0.1:{os.environ['KILN_PORT']}/v1", api_key="unused")
r = c.chat.completions.create(model="default", messages=[{"role": "user", "content": "What is 2+2?"}], temperature=0, max_tokens=16)
assert r.choices[0].finish_reason in ("stop", "length"), r
assert "4" in r.choices[0].message.content, r.choices[0].message.content
parts = []
usage = None
for chunk in c.chat.completions.create(model="default", messages=[{"role": "user", "content": "What is 2+2?"}], temperature=0, max_tokens=16, stream=True, stream_options={"include_usage": True}):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage
assert "".join(parts) == r.choices[0].message.content, (parts, r.choices[0].message.content)
assert usage.completion_tokens == r.usage.completion_tokens
cp = c.completions.create(model="default", prompt="The sky is", max_tokens=5, temperature=0)
assert len(cp.choices[0].text) > 0
try:
    c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError as e:
    assert "nope" in str(e)
print("ok")
"#;
    let out = python(script, s.port);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn api_keys_and_cors() {
    let s = Server::start(&["--api-key", "sekret", "--cors-origin", "http://app.example"]);
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#;
    let (code, v) = s.post("/v1/chat/completions", body, &[]);
    assert_eq!(code, 401, "{v}");
    assert_eq!(v["error"]["type"], "authentication_error");
    let (code, _) = s.post(
        "/v1/chat/completions",
        body,
        &["-H", "authorization: Bearer wrong"],
    );
    assert_eq!(code, 401);
    let (code, v) = s.post(
        "/v1/chat/completions",
        body,
        &["-H", "authorization: Bearer sekret"],
    );
    assert_eq!(code, 200, "{v}");
    let (code, text) = s.curl(&["-i", &s.url("/health")]);
    assert_eq!(code, 200, "health needs no key");
    assert!(text.to_lowercase().contains("x-request-id: req-"), "{text}");
    let (code, text) = s.curl(&[
        "-i",
        "-X",
        "OPTIONS",
        "-H",
        "origin: http://app.example",
        &s.url("/v1/chat/completions"),
    ]);
    assert_eq!(code, 204);
    assert!(
        text.to_lowercase()
            .contains("access-control-allow-origin: http://app.example"),
        "{text}"
    );
}

#[test]
fn disconnect_cancels_and_sigterm_finishes_streams() {
    let s = Server::start(&[]);
    // A client that gives up after a moment: its sequence must be cancelled.
    let _ = s.curl(&[
        "-N",
        "--max-time",
        "1",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"messages":[{"role":"user","content":"Tell me a very long story."}],"max_tokens":4000,"stream":true}"#,
        &s.url("/v1/chat/completions"),
    ]);
    let t0 = Instant::now();
    loop {
        let h = s.health();
        if h["engine"]["running"] == 0 && h["engine"]["blocks_used"] == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "sequence not cancelled: {h}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM while a stream runs: the stream completes, then the server exits cleanly.
    let url = s.url("/v1/chat/completions");
    let client = std::thread::spawn(move || {
        Command::new("curl")
            .args(["-sSN", "--max-time", "120", "-H", "content-type: application/json", "-d"])
            .arg(r#"{"messages":[{"role":"user","content":"Say something."}],"max_tokens":24,"temperature":0,"stream":true}"#)
            .arg(url)
            .output()
            .unwrap()
    });
    let t0 = Instant::now();
    while s.health()["engine"]["running"] == 0 {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = client.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "stream cut short: {text}"
    );
    let mut s = s;
    let status = s.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}

/// Tools through a template that renders them (a Hermes-style template given with
/// `--chat-template`), batched completions, `/tokenize` and `/detokenize`, an alias and a CORS
/// preflight, with the real `openai` client (tests/native_tools.py).
#[test]
fn openai_python_client_native_tools_and_the_rest_of_the_surface() {
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hermes.jinja");
    let s = Server::start(&[
        "--chat-template",
        template,
        "--alias",
        "gpt-4o-mini",
        "--cors-origin",
        "http://app.example",
    ]);
    let out = python(include_str!("native_tools.py"), s.port);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok: native tools"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Speculative decoding with a draft model (here the model itself, so that every proposal
/// must be taken) through the real `openai` client (tests/draft.py): plain answers, greedy
/// and sampled, streamed or not, proposals in `usage` and /metrics, bad values refused.
#[test]
fn openai_python_client_speculative_decoding_with_a_draft_model() {
    let model = kiln_model::fetch::ensure_default_model(true).expect("default model");
    let s = Server::start(&["--draft", model.to_str().unwrap(), "--draft-max", "6"]);
    let out = python(include_str!("draft.py"), s.port);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok: draft model"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Structured output and tool calling with the real `openai` client (tests/structured.py):
/// `parse` with a Pydantic model, JSON mode, a function-calling round trip, a named call,
/// streamed tool-call deltas, and fifty constrained answers over varied schemas, every one
/// of which must parse and validate.
#[test]
fn openai_python_client_structured_output_and_tools() {
    let s = Server::start(&[]);
    let script = include_str!("structured.py");
    let out = python(script, s.port);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("50 of 50"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
