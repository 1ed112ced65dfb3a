//! The settings a reload can change while respool runs, in one place the
//! subsystems read from. Each is read where it costs least: a client takes
//! a snapshot of its settings when it connects (and again when it logs in),
//! the listener reads the client limit and TLS configuration per accepted
//! connection, and a lane set reads its dedicated-connection limit per
//! checkout — never per request.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::{ClientSettings, Config, RetrySettings};
use crate::pool::endpoint::FollowedAddr;
use crate::retry::BackoffPolicy;
use crate::tls::ListenerTls;
use crate::topology::cluster::Seeds;

/// See the module docs.
pub(crate) struct Live {
    /// Client authentication, deny list and per-client limits.
    pub clients: ArcSwap<ClientSettings>,
    /// `--max-clients`.
    pub max_clients: AtomicUsize,
    /// The listener's TLS configuration (`--tls-cert`, `--tls-key`,
    /// `--tls-ca`): new handshakes use the current one, connected clients
    /// keep theirs.
    pub listener_tls: ArcSwapOption<ListenerTls>,
    /// Request deadlines, holds, resends and backoff, shared by every lane.
    pub retry: Arc<LiveRetry>,
    /// Each event loop's share of `--max-pinned`, in the order the loops
    /// started.
    pinned: Mutex<Vec<Arc<AtomicU32>>>,
    /// The `--upstream` address every loop's lanes connect to, which a
    /// reload may move (lanes then drain their connections and validate
    /// new ones there, as after a failover). `None` under Sentinel, which
    /// decides the address itself, and in front of a cluster, whose slot
    /// map does.
    pub upstream: Option<Arc<FollowedAddr>>,
    /// In front of a cluster, the `--upstream` seed nodes, which a reload
    /// may replace: every loop's next slot-map refresh asks them (after the
    /// primaries it knows).
    pub cluster_seeds: Option<Arc<Seeds>>,
}

impl Live {
    /// The live settings of a process started with `config`.
    pub fn new(config: &Config) -> Live {
        Live {
            clients: ArcSwap::from_pointee(config.clients.clone()),
            max_clients: AtomicUsize::new(config.listener.max_clients),
            listener_tls: ArcSwapOption::from(config.listener.tls.clone().map(Arc::new)),
            retry: Arc::new(LiveRetry::new(config.retry)),
            pinned: Mutex::default(),
            upstream: (config.topology.sentinel.is_none() && config.cluster.is_none()).then(|| {
                let addr = config.upstream.node.addr();
                let followed = FollowedAddr::unknown(&addr, "no upstream address");
                followed.set(&addr);
                Arc::new(followed)
            }),
            cluster_seeds: config
                .cluster
                .as_ref()
                .map(|c| Arc::new(Seeds::from_pointee(c.seeds.clone()))),
        }
    }

    /// An event loop's `--max-pinned` share, which [`Live::set_max_pinned`]
    /// changes; `initial` is its share at start.
    pub fn register_pinned(&self, initial: u32) -> Arc<AtomicU32> {
        let limit = Arc::new(AtomicU32::new(initial));
        if let Ok(mut all) = self.pinned.lock() {
            all.push(limit.clone());
        }
        limit
    }

    /// Splits a new `--max-pinned` total between the event loops as at
    /// start ([`Config::loop_share`]).
    pub fn set_max_pinned(&self, config: &Config) {
        let Ok(all) = self.pinned.lock() else {
            return;
        };
        for (index, limit) in all.iter().enumerate() {
            let share = config.loop_share(index, all.len()).pool.max_pinned;
            limit.store(share, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("max_clients", &self.max_clients)
            .finish_non_exhaustive()
    }
}

/// `--timeout`, `--hold-timeout`, `--retries` and the backoff, as the
/// lanes read them: relaxed atomic loads (plain loads on x86 and ARM), once
/// per write batch or reconnect, so a reload reaches running lanes without
/// a lock or a pointer swap on the request path. A reader may see some of a
/// reload's values before the others; each value on its own is whole.
#[derive(Debug)]
pub(crate) struct LiveRetry {
    timeout_ns: AtomicU64,
    hold_timeout_ns: AtomicU64,
    retries: AtomicU32,
    backoff_base_ns: AtomicU64,
    backoff_cap_ns: AtomicU64,
}

impl LiveRetry {
    pub fn new(settings: RetrySettings) -> LiveRetry {
        let live = LiveRetry {
            timeout_ns: AtomicU64::new(0),
            hold_timeout_ns: AtomicU64::new(0),
            retries: AtomicU32::new(0),
            backoff_base_ns: AtomicU64::new(0),
            backoff_cap_ns: AtomicU64::new(0),
        };
        live.set(settings);
        live
    }

    /// Stores a reload's values.
    pub fn set(&self, s: RetrySettings) {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.timeout_ns.store(ns(s.timeout), Ordering::Relaxed);
        self.hold_timeout_ns
            .store(ns(s.hold_timeout), Ordering::Relaxed);
        self.retries.store(s.retries, Ordering::Relaxed);
        self.backoff_base_ns
            .store(ns(s.backoff.base), Ordering::Relaxed);
        self.backoff_cap_ns
            .store(ns(s.backoff.cap), Ordering::Relaxed);
    }

    /// The request deadline (`--timeout`).
    pub fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout_ns.load(Ordering::Relaxed))
    }

    /// The hold window (`--hold-timeout`).
    pub fn hold_timeout(&self) -> Duration {
        Duration::from_nanos(self.hold_timeout_ns.load(Ordering::Relaxed))
    }

    /// All of them now.
    pub fn get(&self) -> RetrySettings {
        RetrySettings {
            timeout: self.timeout(),
            hold_timeout: self.hold_timeout(),
            retries: self.retries.load(Ordering::Relaxed),
            backoff: self.backoff(),
        }
    }

    /// The reconnect and resend backoff.
    pub fn backoff(&self) -> BackoffPolicy {
        BackoffPolicy {
            base: Duration::from_nanos(self.backoff_base_ns.load(Ordering::Relaxed)),
            cap: Duration::from_nanos(self.backoff_cap_ns.load(Ordering::Relaxed)),
        }
    }
}
