//! The bb8 connection manager of one lane set: how its connections are
//! created (connect and validation gate, as its endpoint's identity), checked
//! before reuse, and recognised as broken.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::connection::UpstreamConn;
use super::endpoint::Endpoint;
use super::{Health, PoolContext};
use crate::codec::Request;
use crate::error::ConnectError;

/// Creates validated upstream connections for bb8.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamManager {
    endpoint: Arc<Endpoint>,
    /// RESP version the connections speak.
    protocol: u8,
    ctx: Arc<PoolContext>,
    /// Where validation records what it found.
    health: Health,
    /// The latest connect failure, published so that waiters learn *why* no
    /// connection is coming instead of only that their wait timed out (bb8
    /// hands connect errors to its error sink, not to the waiting `get`).
    failures: Arc<watch::Sender<Option<ConnectError>>>,
}

impl UpstreamManager {
    /// A manager for connections to `endpoint` speaking `protocol`.
    pub fn new(
        endpoint: Arc<Endpoint>,
        protocol: u8,
        ctx: Arc<PoolContext>,
        health: Health,
    ) -> Self {
        UpstreamManager {
            endpoint,
            protocol,
            ctx,
            health,
            failures: Arc::new(watch::channel(None).0),
        }
    }

    /// Subscribes to connect failures.
    pub fn failures(&self) -> watch::Receiver<Option<ConnectError>> {
        self.failures.subscribe()
    }
}

impl bb8::ManageConnection for UpstreamManager {
    type Connection = UpstreamConn;
    type Error = ConnectError;

    async fn connect(&self) -> Result<UpstreamConn, ConnectError> {
        let started = Instant::now();
        let addr = self.endpoint.node.addr();
        match UpstreamConn::open(&self.endpoint, self.protocol, &self.ctx.pool).await {
            Ok((conn, version)) => {
                tracing::debug!(upstream = %addr, user = self.endpoint.identity.user(), took_ms = started.elapsed().as_millis() as u64, "upstream connection validated");
                self.ctx.stats.upstream_connections.add(1);
                self.health.validated(version);
                Ok(conn)
            }
            Err(e) => {
                tracing::debug!(upstream = %addr, user = self.endpoint.identity.user(), error = %e, "upstream connection attempt failed");
                self.ctx.stats.upstream_connect_failures.add(1);
                self.ctx.stats.connect_failures_by_step[crate::stats::connect_step(&e)].add(1);
                if let ConnectError::Rejected { reply, .. } = &e {
                    if e.is_login_refusal() {
                        self.health.login_refused(reply.clone());
                    }
                }
                self.failures.send_replace(Some(e.clone()));
                Err(e)
            }
        }
    }

    /// PINGs a connection that sat idle longer than the health-check interval
    /// (as redis-py does); a recently used one is trusted without a round trip.
    async fn is_valid(&self, conn: &mut UpstreamConn) -> Result<(), ConnectError> {
        if !self.endpoint.node.is_current(conn.generation) {
            conn.broken = true;
            return Err(ConnectError::Io(
                format!(
                    "made for a primary that has since moved to {}",
                    self.endpoint.node.addr()
                )
                .into(),
            ));
        }
        let Some(interval) = self.ctx.pool.health_check_interval else {
            return Ok(());
        };
        if conn.last_used.elapsed() < interval {
            return Ok(());
        }
        let replies = conn
            .exchange(
                &[Request::from_args(&["PING"])],
                "health check PING",
                self.ctx.retry.timeout(),
            )
            .await?;
        if replies.first().is_some_and(|r| &r[..] == b"+PONG\r\n") {
            Ok(())
        } else {
            conn.broken = true;
            let reply = replies
                .first()
                .map(|r| String::from_utf8_lossy(r).trim_end().to_string())
                .unwrap_or_default();
            Err(ConnectError::Unexpected {
                step: "health check PING",
                reply: reply.into(),
            })
        }
    }

    fn has_broken(&self, conn: &mut UpstreamConn) -> bool {
        conn.broken || !self.endpoint.node.is_current(conn.generation)
    }
}
