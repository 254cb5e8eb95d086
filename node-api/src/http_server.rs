//! The HTTP/1 server both planes run (the gateway's S3 and jobs endpoint,
//! and every storage node's API), bounded so that slow or idle clients
//! cannot hold its resources: a cap on open connections, a deadline for
//! each request head (slowloris), and an idle deadline on request bodies
//! (a body trickled a byte at a time).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How much a server lets its clients hold.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections open at once; past it, new ones wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
    /// Time to send a request's head, from the moment the server waits
    /// for it (an idle keep-alive connection is closed after it too).
    pub header_timeout: Duration,
    /// Longest wait for the next piece of a request body the server is
    /// reading.
    pub body_idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// How long open connections may finish their requests after shutdown
/// is asked for.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` within `limits` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let idle = limits.body_idle_timeout;
    let app = app.layer(axum::middleware::map_request(
        move |req: Request| async move { idle_deadline(req, idle) },
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait, then go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
    Ok(())
}

/// A request whose body fails once its client sends nothing for `idle`
/// while the server waits for it.
fn idle_deadline(req: Request, idle: Duration) -> Request {
    let (parts, body) = req.into_parts();
    let body = body.into_data_stream();
    let timed = futures::stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some(body))),
            Ok(None) => None,
            Err(_) => Some((
                Err(axum::Error::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no request body data for {} s", idle.as_secs()),
                ))),
                None,
            )),
        }
    });
    Request::from_parts(parts, Body::from_stream(timed))
}
