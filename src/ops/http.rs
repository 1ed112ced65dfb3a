//! `--metrics-listen`: a small HTTP/1 server on the event loop's runtime
//! for Prometheus and load balancers — `GET /metrics` (the Prometheus text
//! format), `GET /healthz` (200 while the process serves), `GET /readyz`
//! (200 when ready for clients, else 503 and why).
//!
//! A peer of this port is bounded like a client of the Redis port: headers
//! at most [`MAX_HEADER_BYTES`] and read within [`HEADER_READ_TIMEOUT`], at
//! most [`MAX_CONNECTIONS`] connections at once, each closed after
//! [`CONNECTION_LIFETIME`]; hyper answers malformed requests with 400 and
//! closes the connection. Nothing here is on the request path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::server::Process;

/// Largest request head (request line and headers) a peer may send; hyper
/// refuses a longer one (431) and closes the connection.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// hyper's read buffer bound (its minimum).
const MAX_BUF_BYTES: usize = 8 * 1024;
/// A request head must arrive within this long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at accept. Prometheus and a
/// few probes need a handful.
const MAX_CONNECTIONS: usize = 64;
/// A kept-alive connection is closed (gracefully, between requests) after
/// this long, so that idle peers cannot hold every slot forever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// How long a connection asked to close may finish its response.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the handlers read.
struct Endpoints {
    process: Arc<Process>,
    registry: Registry,
}

/// Binds `addr` (a bind error is the caller's to report).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until
/// `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    process: Arc<Process>,
    shutdown: CancellationToken,
) {
    let endpoints = Arc::new(Endpoints {
        registry: super::metrics::registry(process.clone()),
        process,
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics listener: too many connections; closing this one");
            continue;
        };
        let (endpoints, shutdown) = (endpoints.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let endpoints = endpoints.clone();
                async move { Ok::<_, Infallible>(respond(&endpoints, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_header_size(MAX_HEADER_BYTES)
                .max_buf_size(MAX_BUF_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
                }
                _ = shutdown.cancelled() => Ok(()),
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "metrics listener: connection ended with an error");
            }
        });
    }
}

/// The response to one request.
fn respond(endpoints: &Endpoints, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => match super::metrics::render(&endpoints.registry) {
            Ok(body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(super::metrics::CONTENT_TYPE),
                );
                response
            }
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the metrics could not be encoded\n".into(),
            ),
        },
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match super::health::ready(&endpoints.process) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", why.reason()),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: respool serves /metrics, /healthz and /readyz\n".into(),
        ),
    }
}

/// A plain-text response.
fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
