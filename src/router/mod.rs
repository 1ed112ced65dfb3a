//! The router: which lane set serves a client's requests.
//!
//! A client gets the lane set of the primary (`--upstream`, or the primary
//! Sentinel names) — or, once it has logged in as another identity (AUTH
//! passthrough), that identity's lane set. With `--read-from` other than
//! `primary`, the topology's replicas take the reads of clients on
//! respool's own identity (see [`crate::topology::replicas`]). With
//! `--cluster`, each request goes to the primary serving its key's hash
//! slot ([`slot`]), found by the cluster's own key specs ([`keys`]), over
//! that primary's lane set of the client's identity.

pub(crate) mod keys;
pub(crate) mod slot;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::Error;
use crate::live::Live;
use crate::pool::endpoint::Identity;
use crate::pool::{LaneSet, PoolContext, Registry};
use crate::topology::cluster::ClusterMap;
use crate::topology::replicas::ReplicaSet;
use crate::topology::Topology;

/// See the module docs.
pub(crate) struct Router {
    topology: Topology,
    registry: Arc<Registry>,
    /// Closes the lane sets no client uses any more.
    reaper: JoinHandle<()>,
}

impl Router {
    /// Opens the lane sets the configuration names; `live` holds what a
    /// reload may move (the `--upstream` address, a cluster's seeds).
    pub fn start(config: &Config, ctx: Arc<PoolContext>, live: &Live) -> Router {
        let identity_ctx = Arc::new(ctx.for_client_identities());
        let topology = Topology::start(config, &ctx, &identity_ctx, live);
        let registry = Arc::new(Registry::start(
            topology.primary.clone(),
            ctx,
            identity_ctx,
            config.identities,
            topology.cluster.clone(),
        ));
        let reaper = tokio::spawn({
            let registry = registry.clone();
            async move { registry.reap().await }
        });
        Router {
            topology,
            registry,
            reaper,
        }
    }

    /// The replicas reads may go to, with `--read-from` other than
    /// `primary`.
    pub fn replicas(&self) -> Option<&Arc<ReplicaSet>> {
        self.topology.replicas.as_ref()
    }

    /// The slot map, with `--cluster`.
    pub fn cluster(&self) -> Option<&Arc<ClusterMap>> {
        self.topology.cluster.as_ref()
    }

    /// What `INFO respool` shows of the primary and the replicas.
    pub fn render_topology(&self, out: &mut String) {
        self.topology.render(out);
    }

    /// What `RESPOOL POOLS` shows: every lane set of this event loop. In
    /// front of a cluster, the registry's sets (role `anchor`) serve
    /// keyless commands and logins on the anchor primary; each primary's
    /// own set is listed after them.
    pub fn pool_views(&self) -> Vec<crate::pool::PoolView> {
        let registry_role = if self.cluster().is_some() {
            "anchor"
        } else {
            "primary"
        };
        let mut views: Vec<_> = self
            .registry
            .all_sets()
            .iter()
            .map(|set| set.view(registry_role))
            .collect();
        if let Some(cluster) = self.cluster() {
            views.extend(cluster.pool_views());
        }
        if let Some(replicas) = self.replicas() {
            views.extend(replicas.pool_views());
        }
        views
    }

    /// The lane set a new client starts on, and a client that logs out
    /// (RESET) returns to: respool's own identity's.
    pub fn initial(&self) -> Arc<LaneSet> {
        self.registry.default_set().clone()
    }

    /// The lane set a client that logs in as `identity` moves to (in
    /// cluster mode, the anchor primary's: the other primaries' lane sets
    /// of the identity are the slot map's).
    pub fn login(&self, identity: Identity) -> Result<Arc<LaneSet>, Error> {
        self.registry.lane_set(identity)
    }

    /// Closes every lane set (after every client is gone).
    pub async fn close(self, deadline: Duration) {
        self.topology.stop();
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
