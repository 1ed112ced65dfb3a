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

pub(crate) use lane_set::{LaneSet, PinnedConn, PoolView};
pub(crate) use registry::Registry;

/// What every lane set of an event loop is built with.
#[derive(Debug)]
pub(crate) struct PoolContext {
    pub pool: PoolSettings,
    /// Deadlines, holds, resends and backoff: a reload changes them.
    pub retry: Arc<crate::live::LiveRetry>,
    /// The lane sets of identities clients logged in as: a refused login
    /// there is a client's wrong password, not the upstream's outage, and
    /// is logged quietly.
    pub client_identity: bool,
    /// The connections must go to a primary (`--validate write`, or
    /// Sentinel's primary): `-READONLY` then means the primary was demoted,
    /// so the request is held and resent like one that got `-LOADING`, the
    /// connection is given up, and `refresh` asks where the primary is now.
    pub expects_primary: bool,
    /// Asks the topology to look for the primary again (see
    /// [`crate::topology`]).
    pub refresh: Arc<tokio::sync::Notify>,
    /// The event loop's counters.
    pub stats: Arc<LoopStats>,
    /// In front of a Redis Cluster: lanes count the `-MOVED`/`-ASK` replies
    /// they pass on and ask for a refresh of the slot map on those and
    /// when they cannot reach their node.
    pub cluster: Option<Arc<crate::topology::cluster::ClusterLink>>,
    /// The event loop's share of `--max-pinned` now (a reload changes it;
    /// `pool.max_pinned` is the share at start).
    pub pinned_limit: Arc<std::sync::atomic::AtomicU32>,
    /// Where the lanes record runs slower than `--slowlog-threshold`;
    /// `None` when the slowlog is off (the lanes then read no clock for it).
    pub slowlog: Option<Arc<crate::slowlog::Slowlog>>,
}

impl PoolContext {
    /// How the lane sets of identities clients logged in as (AUTH
    /// passthrough) are built: no `--min-idle` spares (those are respool's
    /// own identity's), and no write probe (a user's ACL may not cover the
    /// probe keys; respool's own lanes prove the server takes writes).
    pub fn for_client_identities(&self) -> PoolContext {
        let mut pool = self.pool.clone();
        pool.min_idle = 0;
        if pool.validate == crate::config::Validate::Write {
            pool.validate = crate::config::Validate::Ping;
        }
        PoolContext {
            pool,
            retry: self.retry.clone(),
            client_identity: true,
            expects_primary: self.expects_primary,
            refresh: self.refresh.clone(),
            stats: self.stats.clone(),
            cluster: self.cluster.clone(),
            pinned_limit: self.pinned_limit.clone(),
            slowlog: self.slowlog.clone(),
        }
    }
}

/// What the validation gate has said about a lane set's connections: the
/// server's version (`INFO server`), whether any connection has passed yet,
/// and whether the last attempt was refused at login (a wrong password, a
/// disabled user), with Redis's own words.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health(Arc<HealthCell>);

#[derive(Debug, Default)]
struct HealthCell {
    version: std::sync::RwLock<Option<Arc<str>>>,
    validated: std::sync::atomic::AtomicBool,
    /// Redis's refusal of the last login (without the leading `-`), until a
    /// connection passes again.
    login_refused: std::sync::Mutex<Option<Arc<str>>>,
    /// Woken when a connection passes or a login is refused.
    changed: tokio::sync::Notify,
}

/// What a login (a client's AUTH, passed through) finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoginCheck {
    /// A connection passed the gate as this identity.
    Accepted,
    /// Redis refused the identity's login: its error line, as sent.
    Refused(bytes::Bytes),
    /// Neither happened in time (the upstream is down or slow).
    TimedOut,
}

impl Health {
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
        self.lock_refusal().take();
        if !self
            .0
            .validated
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.0.changed.notify_waiters();
        }
    }

    /// Records Redis's refusal of a login (`reply` without the `-`).
    pub fn login_refused(&self, reply: Arc<str>) {
        *self.lock_refusal() = Some(reply);
        self.0.changed.notify_waiters();
    }

    fn lock_refusal(&self) -> std::sync::MutexGuard<'_, Option<Arc<str>>> {
        // Nothing panics while holding it; a poisoned value is intact.
        self.0
            .login_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last version seen, if any connection was validated yet.
    pub fn version(&self) -> Option<Arc<str>> {
        self.0.version.read().ok().and_then(|v| v.clone())
    }

    /// Whether any connection has passed validation: only then is the
    /// version as known as it will be.
    pub fn is_validated(&self) -> bool {
        self.0.validated.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the last login was refused (and none passed since).
    pub fn is_refused(&self) -> bool {
        self.lock_refusal().is_some()
    }

    /// What the gate says within `within`: a connection passed (now or
    /// before), the last login was refused, or neither in time.
    fn check(&self) -> Option<LoginCheck> {
        if let Some(reply) = self.lock_refusal().as_ref() {
            return Some(LoginCheck::Refused(crate::error::error_reply(reply)));
        }
        self.is_validated().then_some(LoginCheck::Accepted)
    }

    /// Resolves with the first of: a connection passes, a login is refused,
    /// `within` passes.
    pub fn wait_login(
        &self,
        within: Duration,
    ) -> impl std::future::Future<Output = LoginCheck> + Send + 'static {
        let this = self.clone();
        async move {
            let decided = async {
                loop {
                    // Registered before the check, so a change in between
                    // still wakes it.
                    let notified = this.0.changed.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if let Some(check) = this.check() {
                        return check;
                    }
                    notified.await;
                }
            };
            tokio::time::timeout(within, decided)
                .await
                .unwrap_or(LoginCheck::TimedOut)
        }
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
                    let notified = this.0.changed.notified();
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
            tracing::warn!(upstream = %endpoint.node.addr(), error = %e, "upstream not ready yet");
        })
        .await
}
