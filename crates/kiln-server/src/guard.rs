//! What the server refuses before any work: requests a browser was tricked into sending,
//! bodies that are not JSON, wrong API keys, and request fields kiln does not implement.
//!
//! Without an API key, anything that can reach the port can use the server, and a web page
//! the user opens is such a thing: it can POST a `text/plain` body without a CORS preflight,
//! or rebind its own DNS name to 127.0.0.1 to read the answers. So POST bodies must be
//! `application/json` (which a browser only sends cross-origin after a preflight kiln does not
//! grant), and without a key the `Host` must be one this server is known by (a rebound name
//! is not) and an `Origin`, when a browser sends one, must be this server's own or one the
//! operator allowed.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, Method, StatusCode};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::ServerConfig;

/// Request fields of the OpenAI API that kiln does not implement: refused by name rather
/// than accepted and ignored (a client asking for JSON output or tool calls would otherwise
/// get free text and not know it).
const UNIMPLEMENTED: &[(&str, &str)] = &[
    ("functions", "the deprecated function calling; use `tools`"),
    (
        "function_call",
        "the deprecated function calling; use `tool_choice`",
    ),
];

/// Refuses a request body that sets (to anything but `null`) a field kiln does not implement.
pub(crate) fn refuse_unimplemented(m: &Map<String, Value>) -> Result<(), ApiError> {
    for &(field, what) in UNIMPLEMENTED {
        if m.get(field).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::bad(
                field,
                format!("`{field}` is not supported by kiln ({what}); remove the field"),
            ));
        }
    }
    Ok(())
}

/// Reads kiln's `parse_special` extension: whether control tokens written in a completions
/// `prompt` (such as `<|im_start|>`) are read as control tokens. Off by default, so that text
/// from users cannot forge turns; chat requests never take it (the template places them).
pub(crate) fn parse_special(m: &Map<String, Value>, chat: bool) -> Result<bool, ApiError> {
    match m.get("parse_special") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) if !chat => Ok(*b),
        Some(Value::Bool(_)) => Err(ApiError::bad(
            "parse_special",
            "`parse_special` applies to /v1/completions only; chat prompts get control tokens from the model's template, never from message contents",
        )),
        Some(v) => Err(ApiError::bad(
            "parse_special",
            format!("`parse_special` must be true or false, got {v}"),
        )),
    }
}

/// The host part of a `Host` header or an origin's authority, without port or brackets.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// Whether a `Host` value names this server in a way no web page can forge: an IP address
/// (DNS rebinding needs a name), `localhost`, or a name the operator allowed.
fn host_allowed(cfg: &ServerConfig, host: &str) -> bool {
    let name = host_name(host);
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || cfg
            .allowed_hosts
            .iter()
            .any(|h| h == "*" || h.eq_ignore_ascii_case(name))
}

/// Whether a browser's `Origin` may use the server: its own pages (same scheme-less
/// authority as `Host`) or an origin allowed with `--allow-origin`.
fn origin_allowed(cfg: &ServerConfig, origin: &str, host: Option<&str>) -> bool {
    if cfg.cors_origins.iter().any(|a| a == "*" || a == origin) {
        return true;
    }
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match (authority, host) {
        (Some(a), Some(h)) => a.eq_ignore_ascii_case(h),
        _ => false,
    }
}

/// Checks a request's `Host`, `Origin` and content type; the error is the response to send.
pub(crate) fn check_request(
    cfg: &ServerConfig,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let text = |name: header::HeaderName| -> Result<Option<&str>, ApiError> {
        headers
            .get(&name)
            .map(|v| {
                v.to_str().map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("the `{name}` header is not text"),
                        Some("bad_header"),
                    )
                })
            })
            .transpose()
    };
    let host = text(header::HOST)?;
    if cfg.api_keys.is_empty() {
        if let Some(h) = host {
            if !host_allowed(cfg, h) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "this server does not answer to the host name `{}`; start it with `--allow-host {}` (or an API key) to allow it",
                        host_name(h),
                        host_name(h)
                    ),
                    Some("host_not_allowed"),
                ));
            }
        }
        if let Some(o) = text(header::ORIGIN)? {
            if !origin_allowed(cfg, o, host) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "requests from the web origin `{o}` are refused; start the server with `--allow-origin {o}` (or an API key) to allow them"
                    ),
                    Some("origin_not_allowed"),
                ));
            }
        }
    }
    if method == Method::POST {
        let ct = text(header::CONTENT_TYPE)?.unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "request bodies must be JSON with `Content-Type: application/json`, got {}",
                    if ct.is_empty() {
                        "no content type".to_owned()
                    } else {
                        format!("`{ct}`")
                    }
                ),
                Some("unsupported_media_type"),
            ));
        }
    }
    Ok(())
}

/// Equality whose time depends on the lengths only, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, &y) in b.iter().enumerate() {
        let x = a.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(x ^ y);
    }
    diff == 0
}

/// Why a request is not authenticated.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A key that is not accepted.
    Invalid,
}

/// Checks `Authorization: Bearer <key>` (scheme in any case) against every accepted key,
/// each compared in constant time, so that timing does not reveal how much of a guess is
/// right.
pub(crate) fn authenticate(keys: &[String], headers: &HeaderMap) -> Result<(), AuthError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(char::is_whitespace)?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
        })
        .ok_or(AuthError::Missing)?;
    let ok = keys.iter().fold(false, |ok, k| {
        constant_time_eq(given.as_bytes(), k.as_bytes()) | ok
    });
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn status(cfg: &ServerConfig, m: Method, pairs: &[(header::HeaderName, &str)]) -> u16 {
        match check_request(cfg, &m, &headers(pairs)) {
            Ok(()) => 200,
            Err(e) => e.status.as_u16(),
        }
    }

    #[test]
    fn hosts_origins_and_content_types() {
        use header::{CONTENT_TYPE as CT, HOST, ORIGIN};
        let cfg = ServerConfig::default();
        let json = (CT, "application/json; charset=utf-8");
        assert_eq!(
            status(
                &cfg,
                Method::POST,
                &[(HOST, "127.0.0.1:8080"), json.clone()]
            ),
            200
        );
        assert_eq!(
            status(&cfg, Method::POST, &[(HOST, "[::1]:80"), json.clone()]),
            200
        );
        assert_eq!(status(&cfg, Method::GET, &[(HOST, "localhost:8080")]), 200);
        // A rebound name, a cross-origin page, a form post.
        assert_eq!(
            status(&cfg, Method::GET, &[(HOST, "evil.example:8080")]),
            403
        );
        let page = (ORIGIN, "http://evil.example");
        assert_eq!(
            status(
                &cfg,
                Method::POST,
                &[(HOST, "127.0.0.1:8080"), page, json.clone()]
            ),
            403
        );
        assert_eq!(
            status(
                &cfg,
                Method::POST,
                &[(HOST, "127.0.0.1:8080"), (CT, "text/plain")]
            ),
            415
        );
        assert_eq!(status(&cfg, Method::POST, &[(HOST, "127.0.0.1:8080")]), 415);
        // The server's own page: same origin.
        let own = (ORIGIN, "http://127.0.0.1:8080");
        assert_eq!(
            status(
                &cfg,
                Method::POST,
                &[(HOST, "127.0.0.1:8080"), own, json.clone()]
            ),
            200
        );
        let other_port = (ORIGIN, "http://127.0.0.1:3000");
        assert_eq!(
            status(
                &cfg,
                Method::POST,
                &[(HOST, "127.0.0.1:8080"), other_port, json.clone()]
            ),
            403
        );
        // What the operator allows.
        let cfg = ServerConfig {
            allowed_hosts: vec!["kiln.lan".into()],
            cors_origins: vec!["http://app.example".into()],
            ..Default::default()
        };
        assert_eq!(status(&cfg, Method::GET, &[(HOST, "KILN.lan:8080")]), 200);
        let app = (ORIGIN, "http://app.example");
        assert_eq!(
            status(&cfg, Method::POST, &[(HOST, "kiln.lan"), app, json.clone()]),
            200
        );
        // With a key, the key is the guard (and JSON still the only body).
        let cfg = ServerConfig {
            api_keys: vec!["k".into()],
            ..Default::default()
        };
        assert_eq!(
            status(&cfg, Method::POST, &[(HOST, "evil.example"), json]),
            200
        );
        assert_eq!(
            status(
                &cfg,
                Method::POST,
                &[(HOST, "evil.example"), (CT, "text/plain")]
            ),
            415
        );
    }

    #[test]
    fn bearer_keys() {
        use header::AUTHORIZATION as A;
        let keys = vec!["sekret".to_owned(), "other".to_owned()];
        let auth = |v: &str| authenticate(&keys, &headers(&[(A, v)]));
        assert_eq!(auth("Bearer sekret"), Ok(()));
        assert_eq!(auth("bearer other"), Ok(()));
        assert_eq!(auth("BEARER   sekret "), Ok(()));
        assert_eq!(auth("Bearer sekre"), Err(AuthError::Invalid));
        assert_eq!(auth("Bearer sekrett"), Err(AuthError::Invalid));
        assert_eq!(auth("Bearer "), Err(AuthError::Missing));
        assert_eq!(auth("Basic sekret"), Err(AuthError::Missing));
        assert_eq!(
            authenticate(&keys, &HeaderMap::new()),
            Err(AuthError::Missing)
        );
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b""));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn unimplemented_fields_are_named() {
        for f in ["functions", "function_call"] {
            let mut m = Map::new();
            m.insert(f.into(), serde_json::json!({"type": "sound"}));
            let e = refuse_unimplemented(&m).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(f));
            assert!(e.message.contains(f), "{}", e.message);
            m.insert(f.into(), Value::Null);
            assert!(refuse_unimplemented(&m).is_ok());
        }
        let mut m = Map::new();
        m.insert("parse_special".into(), Value::Bool(true));
        assert!(parse_special(&m, false).unwrap());
        assert!(parse_special(&m, true).is_err());
        m.insert("parse_special".into(), serde_json::json!(1));
        assert!(parse_special(&m, false).is_err());
    }
}
