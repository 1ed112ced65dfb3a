//! Upstream connections, per [`endpoint`]: each endpoint (node × identity ×
//! database) gets a [`lane_set`] — shared lanes per protocol, a bb8 pool
//! behind them, a pool of dedicated connections for pinned sessions, and
//! one validation gate and health record — and a [`registry`] holds the
//! lane sets of an event loop.
//!
//! * [`connection`] — one connection: connect, TLS, exchanges;
//! * [`validate`] — the gate a new connection must pass;
//! * [`manager`] — bb8's view: create, check, discard;
//! * [`checkout`] — taking a connection out, with the reason when none comes;
//! * [`lane`] — a shared lane: many clients multiplexed over one connection;
//! * [`mailbox`], [`outbox`], [`write_gate`] — how requests reach a lane
//!   and leave it.

pub(crate) mod checkout;
pub(crate) mod connection;
pub(crate) mod endpoint;
pub(crate) mod lane;
pub(crate) mod lane_set;
pub(crate) mod mailbox;
pub(crate) mod manager;
pub(crate) mod outbox;
pub(crate) mod registry;
pub(crate) mod validate;
pub(crate) mod write_gate;

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;

use crate::config::{PoolSettings, RetrySettings};
use crate::error::ConnectError;
use crate::stats::LoopStats;
use connection::UpstreamConn;
use endpoint::Endpoint;

pub(crate) use lane_set::{LaneSet, PinnedConn};
pub(crate) use registry::Registry;

/// What every lane set of an event loop is built with.
#[derive(Debug)]
pub(crate) struct PoolContext {
    pub pool: PoolSettings,
    pub retry: RetrySettings,
    /// The event loop's counters.
    pub stats: Arc<LoopStats>,
}

/// The upstream server's version (`INFO server`), as validation learned it,
/// and whether any connection of the lane set has passed validation yet.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerVersion(Arc<VersionCell>);

#[derive(Debug, Default)]
struct VersionCell {
    version: std::sync::RwLock<Option<Arc<str>>>,
    validated: std::sync::atomic::AtomicBool,
    /// Woken when the first connection passes validation.
    first_validated: tokio::sync::Notify,
}

impl ServerVersion {
    /// Records a connection that passed validation, with the version its
    /// `INFO server` gave (`None` if an ACL forbids `INFO`).
    pub fn validated(&self, version: Option<String>) {
        if let Some(version) = version {
            if let Ok(mut v) = self.0.version.write() {
                if v.as_deref() != Some(version.as_str()) {
                    *v = Some(version.into());
                }
            }
        }
        if !self
            .0
            .validated
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.0.first_validated.notify_waiters();
        }
    }

    /// The last version seen, if any connection was validated yet.
    pub fn get(&self) -> Option<Arc<str>> {
        self.0.version.read().ok().and_then(|v| v.clone())
    }

    /// Whether any connection has passed validation: only then is the
    /// version as known as it will be.
    pub fn is_validated(&self) -> bool {
        self.0.validated.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once a connection has passed validation (`true`), or after
    /// `within` without one (`false`).
    pub fn wait_validated(
        &self,
        within: Duration,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let this = self.clone();
        async move {
            let validated = async {
                loop {
                    // Registered before the check, so a validation in
                    // between still wakes it.
                    let notified = this.0.first_validated.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if this.is_validated() {
                        return;
                    }
                    notified.await;
                }
            };
            tokio::time::timeout(within, validated).await.is_ok()
        }
    }
}

/// Opens one validated connection to `endpoint`, retrying with backoff up
/// to `--retries` times, for `--require-upstream`.
pub(crate) async fn probe_upstream(
    endpoint: &Endpoint,
    pool: &PoolSettings,
    retry: &RetrySettings,
) -> Result<(), ConnectError> {
    let attempt = || async { UpstreamConn::open(endpoint, 2, pool).await.map(|_| ()) };
    attempt
        .retry(retry.backoff.delays().take(retry.retries as usize))
        .sleep(tokio::time::sleep)
        .notify(|e: &ConnectError, _| {
            tracing::warn!(upstream = %endpoint.node.addr, error = %e, "upstream not ready yet");
        })
        .await
}
