//! A lane set: everything one [`Endpoint`] owns — shared lanes per RESP
//! protocol with the bb8 pool behind them, a pool of dedicated connections
//! for pinned sessions, and its [`Health`] (has any connection passed the
//! gate, with which server version; was the last login refused).
//!
//! RESP2 lanes start with the set; RESP3 lanes on the first client that
//! says `HELLO 3`, so a set whose clients never do holds no connections for
//! them. Every connection of the set is validated as the endpoint's
//! identity, so one identity's connections never serve another's commands.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bb8::{Pool, PooledConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::checkout::{checkout, Wait};
use super::connection::UpstreamConn;
use super::endpoint::Endpoint;
use super::lane::{Lane, LaneHandle, LaneRequest};
use super::manager::UpstreamManager;
use super::{Health, PoolContext};
use crate::client::inbox::ReplyInbox;
use crate::client::roster::ReplyMemory;
use crate::error::{ConnectError, Error};
use crate::stats::{PoolProbe, PoolSnapshot};
use bytes::Bytes;

/// A dedicated connection, checked out for a pinned session.
pub(crate) type PinnedConn = PooledConnection<'static, UpstreamManager>;

/// What `RESPOOL POOLS` shows of a lane set: read from its pools when
/// asked, never counted on the request path.
#[derive(Debug, Clone)]
pub(crate) struct PoolView {
    /// The upstream node's address.
    pub upstream: Arc<str>,
    /// The user its connections log in as.
    pub identity: String,
    /// `primary` (the `--upstream`, or a cluster primary), `anchor` (in
    /// front of a cluster: the sets keyless commands and logins use) or
    /// `replica`.
    pub role: &'static str,
    /// Shared lanes started (RESP2, plus RESP3 once a client said HELLO 3).
    pub lanes: usize,
    /// Upstream connections the lanes' pools hold (lanes and spares).
    pub lane_connections: u32,
    /// Validated connections idle in the lanes' pools: the spares.
    pub idle_spares: u32,
    /// Dedicated connections checked out for pinned sessions.
    pub pinned_in_use: u32,
    /// `--max-pinned` (this event loop's share).
    pub pinned_max: u32,
    /// Checkouts waiting for a connection: clients waiting for a dedicated
    /// one, lanes waiting for theirs.
    pub waiters: usize,
    /// `validated`, `connecting` or `login refused`.
    pub state: &'static str,
}

/// See the module docs.
pub(crate) struct LaneSet {
    endpoint: Arc<Endpoint>,
    ctx: Arc<PoolContext>,
    health: Health,
    resp2: SharedLanes,
    resp3: OnceLock<SharedLanes>,
    /// The pool of dedicated connections, replaced by one of the new size
    /// when a reload changes `--max-pinned` (bb8 pools have a fixed size):
    /// sessions on the old pool's connections finish there, and the old
    /// pool closes with its last connection. Shared with the probe.
    pinned: Arc<Mutex<Arc<PinnedPool>>>,
    /// What `/metrics` reads of the set's pools (listed in the loop's
    /// stats for as long as the set lives).
    probe: Arc<LaneSetProbe>,
    /// Since when no client has used the set (the registry closes sets
    /// idle too long); `None` while one does.
    idle_since: std::sync::Mutex<Option<std::time::Instant>>,
}

impl LaneSet {
    /// Starts the RESP2 lanes (their connections are made in the
    /// background, so this works while the upstream is down) and the
    /// (empty) pool of dedicated connections.
    pub fn open(endpoint: Endpoint, ctx: Arc<PoolContext>) -> LaneSet {
        let endpoint = Arc::new(endpoint);
        let health = Health::default();
        let pinned = Arc::new(Mutex::new(Arc::new(PinnedPool::new(
            &endpoint,
            &ctx,
            &health,
            ctx.pool.max_pinned,
        ))));
        let probe = Arc::new(LaneSetProbe {
            endpoint: endpoint.clone(),
            lane_pools: Mutex::default(),
            pinned: pinned.clone(),
            lanes: AtomicUsize::new(0),
            lanes_connected: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
        });
        let listed: Arc<dyn PoolProbe> = probe.clone();
        ctx.stats.add_pool(&listed);
        LaneSet {
            resp2: SharedLanes::start(&endpoint, 2, &ctx, &health, &probe),
            resp3: OnceLock::new(),
            pinned,
            probe,
            endpoint,
            ctx,
            health,
            idle_since: std::sync::Mutex::new(None),
        }
    }

    /// What the set's connections are made for.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The upstream's address now, for messages.
    pub fn addr(&self) -> Arc<str> {
        self.endpoint.node.addr()
    }

    /// What the validation gate has said about the set's connections.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// What `RESPOOL POOLS` shows of the set.
    pub fn view(&self, role: &'static str) -> PoolView {
        let snapshot = self.probe.snapshot();
        let lane_connections = self
            .probe
            .lane_pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|p| p.state().connections)
            .sum();
        let state = if self.health.is_refused() {
            "login refused"
        } else if self.health.is_validated() {
            "validated"
        } else {
            "connecting"
        };
        PoolView {
            upstream: snapshot.upstream,
            identity: snapshot.identity.to_string(),
            role,
            lanes: snapshot.lanes as usize,
            lane_connections,
            idle_spares: snapshot.idle_spares as u32,
            pinned_in_use: snapshot.pinned_in_use as u32,
            pinned_max: snapshot.pinned_max as u32,
            waiters: snapshot.waiters as usize,
            state,
        }
    }

    /// A shared lane for a client speaking `protocol` (round robin).
    pub fn lane(&self, protocol: u8) -> LaneHandle {
        if protocol == 3 {
            self.resp3
                .get_or_init(|| {
                    SharedLanes::start(&self.endpoint, 3, &self.ctx, &self.health, &self.probe)
                })
                .pick()
        } else {
            self.resp2.pick()
        }
    }

    /// The pool of dedicated connections, sized by `--max-pinned` now.
    fn pinned_pool(&self) -> Arc<PinnedPool> {
        let limit = self.ctx.pinned_limit.load(Ordering::Relaxed);
        let mut pinned = self.pinned.lock().unwrap_or_else(PoisonError::into_inner);
        if pinned.max != limit {
            tracing::info!(upstream = %self.addr(), from = pinned.max, to = limit, "--max-pinned changed: new sessions use a pool of the new size; sessions now open finish on the old one");
            *pinned = Arc::new(PinnedPool::new(
                &self.endpoint,
                &self.ctx,
                &self.health,
                limit,
            ));
        }
        pinned.clone()
    }

    /// Checks out a dedicated connection, waiting up to
    /// `--checkout-timeout`, and says precisely why when none comes.
    pub fn checkout_pinned(
        &self,
    ) -> impl std::future::Future<Output = Result<PinnedConn, Error>> + Send + 'static {
        let pinned = self.pinned_pool();
        let pool = pinned.pool.clone();
        let failures = pinned.failures.clone();
        let (ctx, addr, probe) = (self.ctx.clone(), self.addr().clone(), self.probe.clone());
        async move {
            let wait = ctx.pool.checkout_timeout;
            let waiting = probe.waiting(&ctx.stats.checkout_wait[1]);
            let checked_out = checkout(pool.clone(), failures, wait, Wait::Deadline).await;
            drop(waiting);
            match checked_out {
                Ok(conn) => {
                    ctx.stats.pinned_checkouts.add(1);
                    Ok(conn)
                }
                Err(e) => {
                    ctx.stats.pinned_checkout_failures.add(1);
                    let cause = match e {
                        ConnectError::CheckoutTimeout(_) => format!(
                            "all {} dedicated connections (--max-pinned) are in use",
                            pool.state().connections
                        ),
                        e => e.to_string(),
                    };
                    Err(Error::NoDedicatedConnection {
                        addr,
                        cause: cause.into(),
                        waited: wait,
                    })
                }
            }
        }
    }

    /// Sends one request (`raw`, whole) on a shared lane of `protocol` on
    /// respool's own account, and resolves with its reply: how a client's
    /// AUTH is put to the upstream as the identity it names.
    pub fn ask(
        &self,
        protocol: u8,
        raw: Bytes,
    ) -> impl std::future::Future<Output = Bytes> + Send + 'static {
        let inbox = ReplyInbox::new(None, Arc::new(ReplyMemory::detached()));
        let sent = self.lane(protocol).send(LaneRequest {
            seq: 0,
            raw,
            count: 1,
            // Nothing a login check sends writes data.
            retry_safe: 1,
            reply_to: inbox.sender(),
            redirects: 0,
            asking: false,
        });
        async move {
            if sent.is_err() {
                return Error::ShuttingDown.to_resp();
            }
            let mut arrived = Vec::new();
            std::future::poll_fn(|cx| inbox.poll_take(cx, &mut arrived)).await;
            arrived
                .pop()
                .map_or_else(|| Error::ShuttingDown.to_resp(), |d| d.reply)
        }
    }

    /// Sends one request (`raw`, whole) to Redis on a connection of its own,
    /// logged in as the set's identity and nothing more, and resolves with
    /// the reply: for `SCRIPT KILL` and `FUNCTION KILL`, which must reach
    /// Redis while the script they stop holds every other connection.
    pub fn urgent(&self, raw: Bytes) -> impl std::future::Future<Output = Bytes> + Send + 'static {
        let (endpoint, ctx) = (self.endpoint.clone(), self.ctx.clone());
        async move {
            let addr = endpoint.node.addr();
            let unavailable = |e: ConnectError| {
                Error::Unavailable {
                    addr: addr.clone(),
                    cause: e.to_string().into(),
                    attempts: 1,
                    elapsed: Duration::ZERO,
                }
                .to_resp()
            };
            let mut conn = match UpstreamConn::open_logged_in(&endpoint, &ctx.pool).await {
                Ok(conn) => conn,
                Err(e) => return unavailable(e),
            };
            match conn
                .exchange_raw(&raw, 1, "request", ctx.retry.timeout())
                .await
            {
                Ok(mut replies) => replies
                    .pop()
                    .unwrap_or_else(|| Error::LostAfterWrite.to_resp()),
                Err(ConnectError::StepTimeout { after, .. }) => {
                    Error::Timeout { addr, after }.to_resp()
                }
                Err(_) => Error::LostAfterWrite.to_resp(),
            }
        }
    }

    /// Notes whether clients use the set now (`in_use`); how long it has
    /// been unused.
    pub fn idle_for(&self, in_use: bool, now: std::time::Instant) -> Duration {
        let mut since = self
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if in_use {
            *since = None;
            return Duration::ZERO;
        }
        now.saturating_duration_since(*since.get_or_insert(now))
    }

    /// The request deadline, for resets of pinned connections.
    pub fn timeout(&self) -> Duration {
        self.ctx.retry.timeout()
    }

    /// Closes the lanes: each finishes what is pending (clients must already
    /// have dropped their handles), then the connections are closed.
    pub async fn close(self, deadline: Duration) {
        self.resp2.close(deadline).await;
        if let Some(lanes) = self.resp3.into_inner() {
            lanes.close(deadline).await;
        }
    }
}

/// Which pool is being built: they differ in how they keep connections.
#[derive(Clone, Copy)]
enum PoolKind {
    /// Behind shared lanes: a few long-lived connections plus spares.
    Lanes,
    /// Dedicated connections, made on demand.
    Pinned,
}

/// The one place a bb8 pool is configured.
fn build_pool(
    manager: UpstreamManager,
    ctx: &PoolContext,
    kind: PoolKind,
    max_pinned: u32,
) -> Pool<UpstreamManager> {
    let s = &ctx.pool;
    let builder = Pool::builder()
        // The idle health check (a PING when idle too long) happens on
        // check-out, as redis-py does it, and is free otherwise.
        .test_on_check_out(true)
        .connection_timeout(s.checkout_timeout);
    let builder = match kind {
        PoolKind::Lanes => builder
            .max_size(s.max_connections + s.min_idle)
            .min_idle((s.min_idle > 0).then_some(s.min_idle))
            // Lanes retry with their own backoff and report the precise error.
            .retry_connection(false)
            // Lanes hold their connections for as long as they are healthy.
            .idle_timeout(None)
            .max_lifetime(None),
        // `--min-idle` spares are not kept here: pinned connections are the
        // expensive kind.
        PoolKind::Pinned => builder
            .max_size(max_pinned.max(1))
            .min_idle(None)
            .retry_connection(true),
    };
    builder.build_unchecked(manager)
}

/// The shared lanes of one protocol (each holds a handle to the pool).
struct SharedLanes {
    lanes: Vec<LaneHandle>,
    tasks: Vec<JoinHandle<()>>,
    next: AtomicUsize,
}

impl SharedLanes {
    /// Builds the pool and spawns one task per lane. `protocol` is the RESP
    /// version the lanes' connections speak: clients that said `HELLO 3`
    /// share lanes of their own, so every client gets replies in the
    /// protocol it asked for without re-encoding.
    fn start(
        endpoint: &Arc<Endpoint>,
        protocol: u8,
        ctx: &Arc<PoolContext>,
        health: &Health,
        probe: &Arc<LaneSetProbe>,
    ) -> SharedLanes {
        let manager = UpstreamManager::new(endpoint.clone(), protocol, ctx.clone(), health.clone());
        let failures = manager.failures();
        let pool = build_pool(manager, ctx, PoolKind::Lanes, 0);
        probe
            .lane_pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(pool.clone());
        probe
            .lanes
            .fetch_add(ctx.pool.max_connections as usize, Ordering::Relaxed);
        let (lanes, tasks) = (0..ctx.pool.max_connections as usize)
            .map(|id| {
                let (handle, inbox) = LaneHandle::open();
                let lane = Lane::new(
                    id,
                    endpoint,
                    ctx.clone(),
                    inbox,
                    pool.clone(),
                    failures.clone(),
                    probe.clone(),
                )
                .speaking(protocol);
                (handle, tokio::spawn(lane.run()))
            })
            .unzip();
        SharedLanes {
            lanes,
            tasks,
            next: AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> LaneHandle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        self.lanes[i].clone()
    }

    async fn close(self, deadline: Duration) {
        drop(self.lanes);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("lanes did not finish within the shutdown deadline");
        }
    }
}

/// The pool of dedicated connections for pinned sessions (validated,
/// RESP2: a session switches its connection to the client's protocol).
struct PinnedPool {
    pool: Pool<UpstreamManager>,
    /// Its size (`--max-pinned`'s share when it was made).
    max: u32,
    /// Connect failures, to say why a checkout failed.
    failures: watch::Receiver<Option<ConnectError>>,
}

impl PinnedPool {
    fn new(
        endpoint: &Arc<Endpoint>,
        ctx: &Arc<PoolContext>,
        health: &Health,
        max: u32,
    ) -> PinnedPool {
        let manager = UpstreamManager::new(endpoint.clone(), 2, ctx.clone(), health.clone());
        let failures = manager.failures();
        PinnedPool {
            pool: build_pool(manager, ctx, PoolKind::Pinned, max),
            max,
            failures,
        }
    }
}

/// What `/metrics` reads of a lane set's pools: the pools themselves (bb8
/// knows its idle and checked-out connections) and the gauges the lanes
/// and checkouts keep. Updated only when a connection is taken or lost,
/// never per request.
pub(crate) struct LaneSetProbe {
    endpoint: Arc<Endpoint>,
    /// The pools behind the shared lanes, one per protocol started.
    lane_pools: Mutex<Vec<Pool<UpstreamManager>>>,
    /// The set's pool of dedicated connections (a reload may replace it).
    pinned: Arc<Mutex<Arc<PinnedPool>>>,
    /// Shared lanes started (every protocol).
    lanes: AtomicUsize,
    /// Lanes serving over a validated connection now.
    lanes_connected: AtomicUsize,
    /// Checkouts waiting for a connection now.
    waiters: AtomicUsize,
}

impl std::fmt::Debug for LaneSetProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneSetProbe")
            .field("upstream", &self.endpoint.node.addr())
            .finish_non_exhaustive()
    }
}

impl LaneSetProbe {
    /// A lane got a validated connection (`true`) or lost it.
    pub fn lane_connected(&self, up: bool) {
        if up {
            self.lanes_connected.fetch_add(1, Ordering::Relaxed);
        } else {
            self.lanes_connected.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts a checkout as waiting until the guard is dropped, when its
    /// wait is recorded in `waited`.
    pub fn waiting<'a>(&'a self, waited: &'a crate::stats::Histogram) -> Waiting<'a> {
        self.waiters.fetch_add(1, Ordering::Relaxed);
        Waiting {
            probe: self,
            waited,
            since: std::time::Instant::now(),
        }
    }
}

/// A checkout in progress (see [`LaneSetProbe::waiting`]); also when its
/// future is dropped midway.
pub(crate) struct Waiting<'a> {
    probe: &'a LaneSetProbe,
    waited: &'a crate::stats::Histogram,
    since: std::time::Instant,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.probe.waiters.fetch_sub(1, Ordering::Relaxed);
        self.waited.record_n(self.since.elapsed(), 1);
    }
}

impl PoolProbe for LaneSetProbe {
    fn snapshot(&self) -> PoolSnapshot {
        let idle_spares = self
            .lane_pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|p| u64::from(p.state().idle_connections))
            .sum();
        let pinned_pool = self
            .pinned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let pinned = pinned_pool.pool.state();
        PoolSnapshot {
            upstream: self.endpoint.node.addr(),
            identity: self.endpoint.identity.user().into(),
            lanes: self.lanes.load(Ordering::Relaxed) as u64,
            lanes_connected: self.lanes_connected.load(Ordering::Relaxed) as u64,
            idle_spares,
            pinned_in_use: u64::from(pinned.connections - pinned.idle_connections),
            pinned_max: u64::from(pinned_pool.max),
            waiters: self.waiters.load(Ordering::Relaxed) as u64,
        }
    }
}
