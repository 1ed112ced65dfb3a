//! The router: which lane set serves a client's requests.
//!
//! A single upstream is one node, so a client gets the lane set of
//! `--upstream` — or, once it has logged in as another identity (AUTH
//! passthrough), that identity's lane set. The router is where cluster
//! slots and primary/replica roles will choose among nodes too.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::Error;
use crate::pool::endpoint::Identity;
use crate::pool::{LaneSet, PoolContext, Registry};

/// See the module docs.
pub(crate) struct Router {
    registry: Arc<Registry>,
    /// Closes the lane sets no client uses any more.
    reaper: JoinHandle<()>,
}

impl Router {
    /// Opens the lane sets the configuration names.
    pub fn start(config: &Config, ctx: Arc<PoolContext>) -> Router {
        let registry = Arc::new(Registry::start(
            config.upstream.clone(),
            ctx,
            config.identities,
        ));
        let reaper = tokio::spawn({
            let registry = registry.clone();
            async move { registry.reap().await }
        });
        Router { registry, reaper }
    }

    /// The lane set a new client starts on, and a client that logs out
    /// (RESET) returns to: respool's own identity's.
    pub fn initial(&self) -> Arc<LaneSet> {
        self.registry.default_set().clone()
    }

    /// The lane set a client that logs in as `identity` moves to.
    pub fn login(&self, identity: Identity) -> Result<Arc<LaneSet>, Error> {
        self.registry.lane_set(identity)
    }

    /// Closes every lane set (after every client is gone).
    pub async fn close(self, deadline: Duration) {
        self.reaper.abort();
        let _ = self.reaper.await;
        match Arc::into_inner(self.registry) {
            Some(registry) => registry.close(deadline).await,
            None => {
                tracing::warn!("upstream connections still referenced at shutdown; dropping them")
            }
        }
    }
}
