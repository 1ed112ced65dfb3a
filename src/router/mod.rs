//! The router: which lane set serves a client's requests.
//!
//! A single upstream is one endpoint, so every client gets the lane set of
//! `--upstream`; the router is where identities (AUTH passthrough), cluster
//! slots and primary/replica roles choose among many.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::pool::{LaneSet, PoolContext, Registry};

/// See the module docs.
pub(crate) struct Router {
    registry: Registry,
}

impl Router {
    /// Opens the lane sets the configuration names.
    pub fn start(config: &Config, ctx: Arc<PoolContext>) -> Router {
        Router {
            registry: Registry::start(config.upstream.clone(), ctx),
        }
    }

    /// The lane set a new client starts on.
    pub fn initial(&self) -> Arc<LaneSet> {
        self.registry.default_set().clone()
    }

    /// Closes every lane set (after every client is gone).
    pub async fn close(self, deadline: Duration) {
        self.registry.close(deadline).await;
    }
}
