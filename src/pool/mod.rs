//! Upstream connections: created and validated through bb8
//! ([`manager`], [`validate`]) and carried by shared, multiplexed [`lane`]s.

pub mod lane;
pub mod mailbox;
pub mod manager;
pub mod outbox;
pub mod validate;
pub mod write_gate;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::Config;
use crate::retry::BackoffPolicy;
use crate::stats::LoopStats;
use crate::upstream::{ConnectError, ServerVersion, UpstreamConn, UpstreamSettings};
use lane::{Lane, LaneSettings};
use manager::UpstreamManager;

pub use lane::LaneHandle;

/// The shared lanes (each holds a handle to the bb8 pool behind them).
pub struct SharedLanes {
    lanes: Vec<LaneHandle>,
    tasks: Vec<JoinHandle<()>>,
    next: AtomicUsize,
}

impl SharedLanes {
    /// Builds the pool (connections are made in the background, so the proxy
    /// starts even when the upstream is down) and spawns one task per lane.
    /// `protocol` is the RESP version the lanes' connections speak: clients
    /// that said `HELLO 3` share lanes of their own, so every client gets
    /// replies in the protocol it asked for without re-encoding.
    pub fn start(
        config: &Config,
        protocol: u8,
        version: ServerVersion,
        stats: Arc<LoopStats>,
    ) -> SharedLanes {
        let settings = Arc::new(UpstreamSettings {
            protocol,
            server_version: version,
            stats: stats.clone(),
            ..UpstreamSettings::from_config(config)
        });
        let manager = UpstreamManager::new(settings.clone());
        let failures = manager.failures();
        let pool = bb8::Pool::builder()
            .max_size(config.max_connections + config.min_idle)
            .min_idle((config.min_idle > 0).then_some(config.min_idle))
            // Lanes hold their connections for as long as they are healthy;
            // the idle health check (a PING when idle too long) happens on
            // check-out, as redis-py does it, and is free otherwise.
            .test_on_check_out(true)
            .connection_timeout(config.checkout_timeout)
            // Lanes retry with their own backoff and report the precise error.
            .retry_connection(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .build_unchecked(manager);
        let lane_settings = Arc::new(LaneSettings {
            addr: settings.addr.clone(),
            timeout: config.timeout,
            checkout_timeout: config.checkout_timeout,
            hold_timeout: config.hold_timeout,
            retries: config.retries,
            backoff: BackoffPolicy {
                base: config.backoff_base,
                cap: config.backoff_cap,
            },
            health_check_interval: config.health_check_interval,
            read_buffer_size: config.read_buffer_size,
            batch_writes: config.batch_writes,
            stats,
        });
        let mut lanes = Vec::new();
        let mut tasks = Vec::new();
        for id in 0..config.max_connections as usize {
            let (tx, inbox) = LaneHandle::open();
            let lane = Lane::new(
                id,
                inbox,
                pool.clone(),
                failures.clone(),
                lane_settings.clone(),
            );
            tasks.push(tokio::spawn(lane.run()));
            lanes.push(tx);
        }
        SharedLanes {
            lanes,
            tasks,
            next: AtomicUsize::new(0),
        }
    }

    /// The lane for a new client (round robin).
    pub fn pick(&self) -> LaneHandle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        self.lanes[i].clone()
    }

    /// Closes the lanes: each finishes what is pending (clients must already
    /// have dropped their handles), then the connections are closed.
    pub async fn close(self, deadline: Duration) {
        drop(self.lanes);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("lanes did not finish within the shutdown deadline");
        }
    }
}

/// The pool of dedicated connections for pinned sessions.
pub struct PinnedPool {
    /// The connections (validated, RESP2).
    pub pool: bb8::Pool<UpstreamManager>,
    /// Connect failures, to say why a checkout failed.
    pub failures: tokio::sync::watch::Receiver<Option<ConnectError>>,
    /// Settings, for resetting connections before reuse.
    pub settings: Arc<UpstreamSettings>,
}

impl PinnedPool {
    /// Builds the pool; connections are made on demand (and `--min-idle`
    /// spares are not kept here: pinned connections are the expensive kind).
    pub fn new(config: &Config, version: ServerVersion, stats: Arc<LoopStats>) -> PinnedPool {
        let settings = Arc::new(UpstreamSettings {
            server_version: version,
            stats,
            ..UpstreamSettings::from_config(config)
        });
        let manager = UpstreamManager::new(settings.clone());
        let failures = manager.failures();
        let pool = bb8::Pool::builder()
            .max_size(config.max_pinned)
            .min_idle(None)
            .test_on_check_out(true)
            .connection_timeout(config.checkout_timeout)
            .retry_connection(true)
            .build_unchecked(manager);
        PinnedPool {
            pool,
            failures,
            settings,
        }
    }
}

/// Opens one validated connection with retries, for `--require-upstream`.
pub async fn probe_upstream(config: &Config) -> Result<(), ConnectError> {
    let settings = UpstreamSettings::from_config(config);
    let mut backoff = BackoffPolicy {
        base: config.backoff_base,
        cap: config.backoff_cap,
    }
    .delays();
    let mut attempt = 0;
    loop {
        match UpstreamConn::open(&settings).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt >= config.retries => return Err(e),
            Err(e) => {
                tracing::warn!(upstream = %settings.addr, error = %e, attempt, "upstream not ready yet");
                attempt += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Everything clients reach upstream through: shared lanes per protocol
/// version and the pool of dedicated connections for pinned sessions.
pub struct Upstreams {
    config: Arc<Config>,
    /// Lanes whose connections speak RESP2.
    resp2: SharedLanes,
    /// Lanes for clients that switched to RESP3, started on first use so a
    /// proxy whose clients never say `HELLO 3` holds no connections for them.
    resp3: std::sync::OnceLock<SharedLanes>,
    /// Dedicated connections.
    pub pinned: PinnedPool,
    /// The upstream's version, as validation learned it.
    pub version: ServerVersion,
    /// This event loop's counters (`INFO respool`).
    pub stats: Arc<LoopStats>,
}

impl Upstreams {
    /// Starts the RESP2 lanes and the (empty) pinned pool.
    pub fn start(config: Arc<Config>) -> Upstreams {
        let version = ServerVersion::default();
        let stats = config.stats.register();
        Upstreams {
            resp2: SharedLanes::start(&config, 2, version.clone(), stats.clone()),
            resp3: std::sync::OnceLock::new(),
            pinned: PinnedPool::new(&config, version.clone(), stats.clone()),
            version,
            stats,
            config,
        }
    }

    /// A lane for a client speaking `protocol`.
    pub fn lane(&self, protocol: u8) -> LaneHandle {
        if protocol == 3 {
            self.resp3
                .get_or_init(|| {
                    SharedLanes::start(&self.config, 3, self.version.clone(), self.stats.clone())
                })
                .pick()
        } else {
            self.resp2.pick()
        }
    }

    /// A fresh client id (CLIENT ID, HELLO).
    pub fn next_client_id(&self) -> u64 {
        // One sequence for the process, so ids stay unique across threads.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    /// Closes all lanes (after every client is gone).
    pub async fn close(self, deadline: Duration) {
        let resp3 = self.resp3.into_inner();
        let both = async move {
            self.resp2.close(deadline).await;
            if let Some(lanes) = resp3 {
                lanes.close(deadline).await;
            }
        };
        both.await;
    }
}
