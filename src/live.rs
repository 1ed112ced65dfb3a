//! The settings a reload can change while respool runs, in one place the
//! subsystems read from. Each is read where it costs least: a client takes
//! a snapshot of its settings when it connects (and again when it logs in),
//! the listener reads the client limit and TLS configuration per accepted
//! connection, and a lane set reads its dedicated-connection limit per
//! checkout — never per request.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::{ClientSettings, Config};
use crate::tls::ListenerTls;

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
    /// Each event loop's share of `--max-pinned`, in the order the loops
    /// started.
    pinned: Mutex<Vec<Arc<AtomicU32>>>,
}

impl Live {
    /// The live settings of a process started with `config`.
    pub fn new(config: &Config) -> Live {
        Live {
            clients: ArcSwap::from_pointee(config.clients.clone()),
            max_clients: AtomicUsize::new(config.listener.max_clients),
            listener_tls: ArcSwapOption::from(config.listener.tls.clone().map(Arc::new)),
            pinned: Mutex::default(),
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
