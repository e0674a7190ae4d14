//! What every request meets before its handler, as a client sees it: the request checks, CORS
//! (preflights and the headers of answers and refusals), API keys, the `x-request-id` and
//! `x-kiln-instance` headers, and the per-endpoint request count in `/metrics`. Driven through
//! the router itself, without a socket or a model.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use kiln_server::{router, AppState, ServerConfig};
use tower::ServiceExt;

/// Sends `method path` with `headers` (and a `Host` of 127.0.0.1 unless one is given) and
/// returns the status, headers and body.
async fn send(
    cfg: &ServerConfig,
    state: Option<std::sync::Arc<AppState>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let state = state.unwrap_or_else(|| AppState::new(None, cfg.clone()));
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", "127.0.0.1:8080");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = router(state)
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = r.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

/// Whether any CORS response header is present.
fn has_cors(h: &HeaderMap) -> bool {
    h.keys()
        .any(|k| k.as_str().starts_with("access-control-") || k.as_str() == "vary")
}

/// The items of a comma-separated header value.
fn items(v: Option<&str>) -> Vec<String> {
    v.unwrap_or("")
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

const APP: &str = "http://app.example";

fn cors_cfg() -> ServerConfig {
    ServerConfig {
        cors_origins: vec![APP.into()],
        ..Default::default()
    }
}

fn keyed_cfg() -> ServerConfig {
    ServerConfig {
        api_keys: vec!["sekret".into()],
        cors_origins: vec![APP.into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn answers_carry_a_request_id_and_the_instance() {
    let cfg = ServerConfig::default();
    let st = AppState::new(None, cfg.clone());
    let (code, h, _) = send(&cfg, Some(st.clone()), "GET", "/v1/models", &[]).await;
    assert_eq!(code, StatusCode::OK);
    let id = get(&h, "x-request-id").unwrap();
    let instance = get(&h, "x-kiln-instance").unwrap();
    assert_eq!(instance.len(), 8, "{instance}");
    assert!(
        instance.bytes().all(|b| b.is_ascii_hexdigit()),
        "{instance}"
    );
    assert_eq!(id, format!("req-{instance}-1"));
    assert!(!has_cors(&h), "{h:?}");
    // The next request gets the next number; an id the client sends is not taken.
    let (_, h, _) = send(
        &cfg,
        Some(st.clone()),
        "GET",
        "/health",
        &[("x-request-id", "mine")],
    )
    .await;
    assert_eq!(get(&h, "x-request-id"), Some(&*format!("req-{instance}-2")));
    // Unknown paths too.
    let (code, h, body) = send(&cfg, Some(st), "GET", "/nothing", &[]).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(get(&h, "x-request-id"), Some(&*format!("req-{instance}-3")));
}

#[tokio::test]
async fn allowed_origins_are_echoed_with_vary() {
    let cfg = cors_cfg();
    let (code, h, _) = send(&cfg, None, "GET", "/v1/models", &[("origin", APP)]).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(get(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(get(&h, "vary"), Some("Origin"));
    assert!(get(&h, "access-control-allow-methods").is_none());
    // Any origin: echoed, not `*`.
    let any = ServerConfig {
        cors_origins: vec!["*".into()],
        ..Default::default()
    };
    let other = "http://other.example";
    let (code, h, _) = send(&any, None, "GET", "/v1/models", &[("origin", other)]).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(get(&h, "access-control-allow-origin"), Some(other));
    assert_eq!(get(&h, "vary"), Some("Origin"));
    // An origin not allowed gets no CORS headers (with a key, so that it is not refused).
    let (code, h, _) = send(
        &keyed_cfg(),
        None,
        "GET",
        "/health",
        &[("origin", "http://evil.example")],
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert!(!has_cors(&h), "{h:?}");
}

#[tokio::test]
async fn preflights_allow_what_the_browser_asks_for_before_any_key() {
    let cfg = keyed_cfg();
    let st = AppState::new(None, cfg.clone());
    let preflight = |asked: Option<&'static str>| {
        let st = st.clone();
        let cfg = cfg.clone();
        async move {
            let mut h = vec![("origin", APP), ("access-control-request-method", "POST")];
            if let Some(a) = asked {
                h.push(("access-control-request-headers", a));
            }
            send(&cfg, Some(st), "OPTIONS", "/v1/chat/completions", &h).await
        }
    };
    let (code, h, body) = preflight(Some("Content-Type,X-Stainless-OS, x-stainless-lang")).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "{body}");
    assert!(body.is_empty());
    assert_eq!(get(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(get(&h, "vary"), Some("Origin"));
    assert_eq!(
        items(get(&h, "access-control-allow-methods")),
        ["GET", "POST", "OPTIONS"]
    );
    assert_eq!(
        get(&h, "access-control-allow-headers"),
        Some("authorization, content-type, content-type,x-stainless-os, x-stainless-lang")
    );
    assert_eq!(get(&h, "access-control-max-age"), Some("600"));
    // A preflight is no request: no id, no instance.
    assert!(get(&h, "x-request-id").is_none() && get(&h, "x-kiln-instance").is_none());
    // Nothing asked, or names that are not plain header names: the two kiln reads.
    for asked in [None, Some("x-a, x b"), Some("x-a,,x-b"), Some("x;y")] {
        let (code, h, _) = preflight(asked).await;
        assert_eq!(code, StatusCode::NO_CONTENT);
        assert_eq!(
            get(&h, "access-control-allow-headers"),
            Some("authorization, content-type"),
            "{asked:?}"
        );
    }
    let long = format!("x-{}", "a".repeat(2100));
    let (_, h, _) = send(
        &cfg,
        Some(st.clone()),
        "OPTIONS",
        "/v1/models",
        &[("origin", APP), ("access-control-request-headers", &long)],
    )
    .await;
    assert_eq!(
        get(&h, "access-control-allow-headers"),
        Some("authorization, content-type")
    );
    // An origin not allowed: 204 and nothing else.
    let (code, h, _) = send(
        &cfg,
        Some(st.clone()),
        "OPTIONS",
        "/v1/chat/completions",
        &[
            ("origin", "http://evil.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert!(!has_cors(&h), "{h:?}");
    let (code, h, _) = send(&cfg, Some(st.clone()), "OPTIONS", "/", &[]).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert!(!has_cors(&h), "{h:?}");
    // None of this was counted as a request: the first one gets number 1.
    let (_, h, _) = send(&cfg, Some(st), "GET", "/health", &[]).await;
    assert!(get(&h, "x-request-id").unwrap().ends_with("-1"), "{h:?}");
}

#[tokio::test]
async fn refusals_carry_cors_headers_and_no_request_id() {
    // A missing and a wrong key: 401 with OpenAI's error, readable by an allowed page.
    let cfg = keyed_cfg();
    let st = AppState::new(None, cfg.clone());
    for (auth, message) in [
        (None, "missing API key: send `Authorization: Bearer <key>`"),
        (Some("Bearer wrong"), "invalid API key"),
        (
            Some("Basic sekret"),
            "missing API key: send `Authorization: Bearer <key>`",
        ),
    ] {
        let mut h = vec![("origin", APP)];
        if let Some(a) = auth {
            h.push(("authorization", a));
        }
        let (code, h, body) = send(&cfg, Some(st.clone()), "GET", "/v1/models", &h).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"message": message, "type": "authentication_error",
                                         "param": null, "code": "invalid_api_key"}})
        );
        assert_eq!(get(&h, "access-control-allow-origin"), Some(APP));
        assert_eq!(get(&h, "vary"), Some("Origin"));
        assert!(get(&h, "x-request-id").is_none() && get(&h, "x-kiln-instance").is_none());
    }
    // Pages and health need no key.
    for path in ["/", "/health"] {
        let (code, _, _) = send(&cfg, Some(st.clone()), "GET", path, &[]).await;
        assert_eq!(code, StatusCode::OK, "{path}");
    }
    let (code, _, _) = send(
        &cfg,
        Some(st.clone()),
        "GET",
        "/metrics",
        &[("authorization", "bearer sekret")],
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    // A POST that is not JSON, from an allowed page: 415 with CORS headers.
    let (code, h, body) = send(
        &cfg,
        Some(st.clone()),
        "POST",
        "/v1/completions",
        &[("origin", APP), ("content-type", "text/plain")],
    )
    .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(body.contains("unsupported_media_type"), "{body}");
    assert_eq!(get(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(get(&h, "vary"), Some("Origin"));
    assert!(get(&h, "x-request-id").is_none());
    // Without a key, a rebound host name is refused, preflight or not, and the refusal
    // still carries the allowed page's CORS headers.
    let open = cors_cfg();
    for method in ["GET", "OPTIONS"] {
        let (code, h, body) = send(
            &open,
            None,
            method,
            "/v1/models",
            &[("host", "evil.example"), ("origin", APP)],
        )
        .await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{method}: {body}");
        assert!(body.contains("host_not_allowed"), "{body}");
        assert_eq!(get(&h, "access-control-allow-origin"), Some(APP));
        assert_eq!(get(&h, "vary"), Some("Origin"));
        assert!(get(&h, "access-control-allow-methods").is_none());
    }
    // The refusals were counted (each under its own status), the preflights not.
    let (_, _, m) = send(
        &cfg,
        Some(st),
        "GET",
        "/metrics",
        &[("authorization", "Bearer sekret")],
    )
    .await;
    for line in [
        "kiln_requests_total{endpoint=\"models\",status=\"401\"} 3",
        "kiln_requests_total{endpoint=\"other\",status=\"200\"} 3",
        "kiln_requests_total{endpoint=\"completions\",status=\"415\"} 1",
    ] {
        assert!(m.lines().any(|l| l == line), "no `{line}` in\n{m}");
    }
}
