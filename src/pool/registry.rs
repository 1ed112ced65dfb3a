//! The lane sets of one event loop, by endpoint: respool's own (the
//! `--upstream` URL's identity) for as long as the loop runs, and one per
//! identity clients log in as (AUTH passthrough), opened on demand, at most
//! `--max-identities`, closed once unused for `--identity-idle-timeout` or
//! once the upstream refused their login — and with them the credentials.
//!
//! In front of a Redis Cluster an identity's lane set here follows the
//! anchor primary (where its login is checked); the slot map keeps its lane
//! set on every other primary ([`ClusterMap`]), and forgets those of the
//! identities this registry has closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::endpoint::{Endpoint, Identity};
use super::{LaneSet, PoolContext};
use crate::config::IdentitySettings;
use crate::error::Error;
use crate::topology::cluster::ClusterMap;

/// How often unused lane sets are looked for.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// See the module docs.
pub(crate) struct Registry {
    /// The lane set of `--upstream` as respool's own identity.
    default: Arc<LaneSet>,
    /// The lane sets of the identities clients logged in as.
    identities: Mutex<HashMap<Identity, Arc<LaneSet>>>,
    /// How identities' lane sets are built
    /// ([`PoolContext::for_client_identities`]).
    identity_ctx: Arc<PoolContext>,
    settings: IdentitySettings,
    /// The slot map, with `--cluster`: the identities' lane sets on each
    /// primary live as long as their entry here.
    cluster: Option<Arc<ClusterMap>>,
}

impl Registry {
    /// Opens the lane set of the configured upstream.
    /// `identity_ctx`: how identities' lane sets are built.
    pub fn start(
        upstream: Endpoint,
        ctx: Arc<PoolContext>,
        identity_ctx: Arc<PoolContext>,
        settings: IdentitySettings,
        cluster: Option<Arc<ClusterMap>>,
    ) -> Registry {
        Registry {
            default: Arc::new(LaneSet::open(upstream, ctx)),
            identities: Mutex::default(),
            identity_ctx,
            settings,
            cluster,
        }
    }

    /// The lane set of `--upstream` as respool's own identity.
    pub fn default_set(&self) -> &Arc<LaneSet> {
        &self.default
    }

    /// Every lane set open: respool's own identity's first, then those of
    /// the identities clients logged in as.
    pub fn all_sets(&self) -> Vec<Arc<LaneSet>> {
        let mut all = vec![self.default.clone()];
        all.extend(self.lock().values().cloned());
        all
    }

    /// The lane set of `identity` (respool's own when it is the same),
    /// opened if there is none yet; an error when `--max-identities` sets
    /// are open and every one of them is in use.
    pub fn lane_set(&self, identity: Identity) -> Result<Arc<LaneSet>, Error> {
        if identity == self.default.endpoint().identity {
            return Ok(self.default.clone());
        }
        let mut sets = self.lock();
        if let Some(set) = sets.get(&identity) {
            return Ok(set.clone());
        }
        if sets.len() >= self.settings.max && !self.evict_one(&mut sets) {
            return Err(Error::TooManyIdentities(self.settings.max));
        }
        tracing::debug!(user = identity.user(), "opening lanes for a new identity");
        let endpoint = Endpoint {
            identity: identity.clone(),
            ..Endpoint::clone(self.default.endpoint())
        };
        let set = Arc::new(LaneSet::open(endpoint, self.identity_ctx.clone()));
        self.identity_ctx.stats.identities.add(1);
        sets.insert(identity, set.clone());
        Ok(set)
    }

    /// Makes room by closing the lane set unused the longest, if any is.
    fn evict_one(&self, sets: &mut HashMap<Identity, Arc<LaneSet>>) -> bool {
        let now = Instant::now();
        let unused = sets
            .iter()
            .filter(|(_, set)| Arc::strong_count(set) == 1)
            .max_by_key(|(_, set)| set.idle_for(false, now))
            .map(|(identity, _)| identity.clone());
        match unused.and_then(|identity| sets.remove(&identity)) {
            Some(set) => {
                self.identity_ctx.stats.identities.sub(1);
                close_later(set);
                true
            }
            None => false,
        }
    }

    /// Closes the lane sets no client uses: at once if the upstream
    /// refused their login, else after `--identity-idle-timeout`. Runs
    /// until the loop shuts down.
    pub async fn reap(&self) {
        let mut tick = tokio::time::interval(REAP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let mut sets = self.lock();
            let done: Vec<Identity> = sets
                .iter()
                .filter(|(_, set)| {
                    // Only the registry holds it: no client, no login waiting.
                    let unused = Arc::strong_count(set) == 1;
                    let idle = set.idle_for(!unused, now);
                    unused && (set.health().is_refused() || idle >= self.settings.idle_timeout)
                })
                .map(|(identity, _)| identity.clone())
                .collect();
            for identity in done {
                if let Some(set) = sets.remove(&identity) {
                    tracing::debug!(
                        user = identity.user(),
                        "closing the lanes of an identity no client uses"
                    );
                    self.identity_ctx.stats.identities.sub(1);
                    close_later(set);
                }
            }
            if let Some(cluster) = &self.cluster {
                // Also those evicted since the last look, and any a lane
                // reopened for a redirected request after its identity
                // was closed.
                cluster.retain_identities(|identity| sets.contains_key(identity));
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Identity, Arc<LaneSet>>> {
        // Nothing panics while holding it; a poisoned map is intact.
        self.identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes every lane set (after every client is gone).
    pub async fn close(self, deadline: Duration) {
        let sets = std::mem::take(&mut *self.lock());
        for set in std::iter::once(self.default).chain(sets.into_values()) {
            match Arc::into_inner(set) {
                Some(set) => set.close(deadline).await,
                None => tracing::warn!(
                    "upstream connections still referenced at shutdown; dropping them"
                ),
            }
        }
    }
}

/// Closes a lane set no one else holds, in the background: its lanes finish
/// what they have (nothing: no client holds them) and its connections close.
pub(crate) fn close_later(set: Arc<LaneSet>) {
    if let Some(set) = Arc::into_inner(set) {
        tokio::spawn(set.close(Duration::from_secs(1)));
    }
}
