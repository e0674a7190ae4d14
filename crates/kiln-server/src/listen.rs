//! Accepting connections, with limits that keep slow, idle or numerous clients from holding
//! the server: a deadline for request headers (which also ends idle keep-alive connections),
//! a cap on open connections, and a deadline for in-flight requests at shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Time a client has to send a request's headers, and to start the next request on a
    /// kept-alive connection.
    pub header_timeout: Duration,
    /// Most connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time in-flight requests get to finish at shutdown before their connections are cut.
    pub shutdown_grace: Duration,
}

/// Why serving stopped.
pub(crate) enum Stopped {
    /// The shutdown future resolved.
    Asked,
    /// `failed` said so (the engine thread died).
    Failed,
}

/// Serves `app` on `listener` until `shutdown` resolves (to the instant by which open
/// requests must be done) or `failed()` turns true (polled every quarter second; open
/// requests then get the grace time), then lets open requests finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = std::time::Instant> + Send + 'static,
    failed: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<Stopped> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (close_tx, close_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut deadline = None;
    let mut watchdog = tokio::time::interval(Duration::from_millis(250));
    let why = loop {
        // Reap finished connections so the set does not grow with the server's age.
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            d = &mut shutdown => { deadline = Some(d); break Stopped::Asked }
            _ = watchdog.tick() => {
                if failed() { break Stopped::Failed; }
                continue;
            }
            p = slots.clone().acquire_owned() => p,
        };
        let Ok(permit) = permit else {
            break Stopped::Asked;
        };
        let (stream, _) = tokio::select! {
            d = &mut shutdown => { deadline = Some(d); break Stopped::Asked }
            _ = watchdog.tick() => {
                if failed() { break Stopped::Failed; }
                continue;
            }
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let mut close = close_rx.clone();
        conns.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = close.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    };
    drop(listener);
    let _ = close_tx.send(true);
    let drain = async { while conns.join_next().await.is_some() {} };
    let left = deadline.map_or(limits.shutdown_grace, |d: std::time::Instant| {
        d.saturating_duration_since(std::time::Instant::now())
    });
    if tokio::time::timeout(left, drain).await.is_err() {
        tracing::warn!(
            open = conns.len(),
            "shutdown grace of {:?} is over: closing the connections still open",
            limits.shutdown_grace
        );
        conns.shutdown().await;
    }
    Ok(why)
}
