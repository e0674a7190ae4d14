//! What the server refuses before any work: requests a browser was tricked into sending,
//! bodies that are not JSON, and wrong API keys.
//!
//! Without an API key, anything that can reach the port can use the server, and a web page
//! the user opens is such a thing: it can POST a `text/plain` body without a CORS preflight,
//! or rebind its own DNS name to 127.0.0.1 to read the answers. So POST bodies must be
//! `application/json` (which a browser only sends cross-origin after a preflight kiln does not
//! grant), and without a key the `Host` must be one this server is known by (a rebound name
//! is not) and an `Origin`, when a browser sends one, must be this server's own or one the
//! operator allowed.
//!
//! [`layered`] puts these checks in front of every endpoint, with CORS (tower-http's
//! `CorsLayer`), API keys, request ids (tower-http's request-id layers), a log line and a
//! count per request.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::extract::{Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::error::ApiError;
use crate::{endpoint_name, ServerConfig, Shared};

/// The header of kiln's request ids.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The header naming the replica that answered.
const X_KILN_INSTANCE: HeaderName = HeaderName::from_static("x-kiln-instance");

/// `app` behind what every request goes through, outermost first: [`screen`] (the request
/// checks, which come before a CORS preflight is answered), CORS, [`admit`] (API keys, the log
/// line and the count), then the request id, set on the request and copied to its answer.
pub(crate) fn layered(app: Router<Shared>, st: &Shared) -> Router<Shared> {
    app.layer(
        ServiceBuilder::new()
            .layer(middleware::from_fn_with_state(st.clone(), screen))
            .layer(cors(&st.cfg))
            .layer(middleware::from_fn_with_state(st.clone(), admit))
            .layer(SetRequestIdLayer::new(X_REQUEST_ID, NextId(st.clone())))
            .layer(PropagateRequestIdLayer::new(X_REQUEST_ID)),
    )
}

/// Whether a browser's `Origin` gets CORS headers: an origin the operator allowed, or any
/// with `*` (echoed, not answered with `*`).
fn cors_allowed(allowed: &[String], origin: &HeaderValue) -> bool {
    origin.to_str().is_ok_and(|o| listed(allowed, o))
}

/// Whether `--cors-origin` lists `origin` (or `*`).
fn listed(allowed: &[String], origin: &str) -> bool {
    allowed.iter().any(|a| a == "*" || a == origin)
}

/// CORS for the allowed origins: a preflight is allowed GET, POST and OPTIONS, and the
/// request headers it asks for as [`screen`] leaves them, for 10 minutes.
fn cors(cfg: &ServerConfig) -> CorsLayer {
    let origins = cfg.cors_origins.clone();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |o, _| {
            cors_allowed(&origins, o)
        }))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(Duration::from_secs(600))
        // `Vary: Origin` goes on the answers that allow an origin, and on no other (see
        // `screen`); the layer would put its list on every answer.
        .vary(Vec::<HeaderName>::new())
}

/// The request checks ([`check_request`]) before anything else: a refusal is counted, logged,
/// and carries the allowed origin so that the page can read it. A preflight (any `OPTIONS`)
/// is answered with 204: by the CORS layer for an allowed origin, with the request headers
/// of [`preflight_headers`], and with no header otherwise.
async fn screen(State(st): State<Shared>, mut req: HttpRequest, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| cors_allowed(&st.cfg.cors_origins, o))
        .cloned();
    let mut r = if let Err(e) = check_request(&st.cfg, req.method(), req.headers()) {
        let (method, path) = (req.method(), req.uri().path());
        tracing::info!(%method, path, status = e.status.as_u16(), "request refused");
        st.metrics.request(endpoint_name(path), e.status.as_u16());
        let mut r = e.into_response();
        // Made before the CORS layer: the header that layer would add.
        if let Some(o) = origin {
            r.headers_mut()
                .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        }
        r
    } else if req.method() == Method::OPTIONS {
        if origin.is_none() {
            return StatusCode::NO_CONTENT.into_response();
        }
        let asked = preflight_headers(req.headers());
        req.headers_mut()
            .insert(header::ACCESS_CONTROL_REQUEST_HEADERS, asked);
        let mut r = next.run(req).await;
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    } else {
        next.run(req).await
    };
    if r.headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    {
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    r
}

/// The request headers a CORS preflight may allow: those the browser asks for
/// (`Access-Control-Request-Headers`, when they are plain header names, such as the
/// `x-stainless-*` headers of OpenAI's JavaScript client), or the two kiln reads.
fn preflight_headers(headers: &HeaderMap) -> HeaderValue {
    const BASE: &str = "authorization, content-type";
    let asked = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            v.len() <= 2048
                && v.split(',').all(|h| {
                    let h = h.trim();
                    !h.is_empty()
                        && h.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        });
    match asked {
        Some(a) => HeaderValue::from_str(&format!("{BASE}, {}", a.to_ascii_lowercase()))
            .unwrap_or(HeaderValue::from_static(BASE)),
        None => HeaderValue::from_static(BASE),
    }
}

/// API keys on the API's endpoints (`/v1/*`, `/metrics`, `/tokenize`, `/detokenize`; the page
/// and `/health` are open), then one log line and one count per request, and the
/// `x-kiln-instance` header.
async fn admit(State(st): State<Shared>, mut req: HttpRequest, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let protected = path.starts_with("/v1/")
        || matches!(path.as_str(), "/metrics" | "/tokenize" | "/detokenize");
    if protected && !st.cfg.api_keys.is_empty() {
        if let Err(e) = authenticate(&st.cfg.api_keys, req.headers()) {
            let msg = match e {
                AuthError::Missing => "missing API key: send `Authorization: Bearer <key>`",
                AuthError::Invalid => "invalid API key",
            };
            tracing::info!(%method, path, status = 401, "request refused");
            st.metrics.request(endpoint_name(&path), 401);
            return ApiError::new(StatusCode::UNAUTHORIZED, msg, Some("invalid_api_key"))
                .into_response();
        }
    }
    // Ids are kiln's own: one the client sent would be kept by the request-id layer.
    req.headers_mut().remove(X_REQUEST_ID);
    let t0 = Instant::now();
    let mut r = next.run(req).await;
    let status = r.status().as_u16();
    st.metrics.request(endpoint_name(&path), status);
    let request_id = r
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default();
    // One line per request; for streams it is written when the response starts.
    tracing::info!(
        request_id,
        %method,
        path,
        status,
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    // Routers may set their own request ids: the replica that answered, on its own.
    if let Ok(v) = HeaderValue::from_str(&st.instance) {
        r.headers_mut().insert(X_KILN_INSTANCE, v);
    }
    r
}

/// kiln's request ids, `req-{instance}-{n}`: `n` counts the requests admitted since start.
#[derive(Clone)]
pub(crate) struct NextId(Shared);

impl MakeRequestId for NextId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self
            .0
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeaderValue::from_str(&format!("req-{}-{n}", self.0.instance))
            .ok()
            .map(RequestId::new)
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
    if listed(&cfg.cors_origins, origin) {
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
}
