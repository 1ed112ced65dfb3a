//! The lane sets of one event loop, by endpoint.

use std::sync::Arc;
use std::time::Duration;

use super::endpoint::Endpoint;
use super::{LaneSet, PoolContext};

/// The lane sets of one event loop.
pub(crate) struct Registry {
    /// The lane set of `--upstream` as respool's own identity.
    default: Arc<LaneSet>,
}

impl Registry {
    /// Opens the lane set of the configured upstream.
    pub fn start(upstream: Endpoint, ctx: Arc<PoolContext>) -> Registry {
        Registry {
            default: Arc::new(LaneSet::open(upstream, ctx)),
        }
    }

    /// The lane set of `--upstream` as respool's own identity.
    pub fn default_set(&self) -> &Arc<LaneSet> {
        &self.default
    }

    /// Closes every lane set (after every client is gone).
    pub async fn close(self, deadline: Duration) {
        match Arc::into_inner(self.default) {
            Some(set) => set.close(deadline).await,
            None => {
                tracing::warn!("upstream connections still referenced at shutdown; dropping them")
            }
        }
    }
}
