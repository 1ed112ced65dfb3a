//! Where the primary is and where reads may go, for one event loop.
//!
//! * [`sentinel`] — following the primary through Sentinel: the primary's
//!   endpoint then has a *followed* node ([`FollowedAddr`]) whose address
//!   moves on failover, and every lane set built on it moves with it;
//! * [`replicas`] — the primary's replicas, their lag, and which a read may
//!   go to (`--read-from`), with read-your-writes;
//! * [`role`] — reading `ROLE` and Sentinel's replies;
//! * [`cluster`] — a Redis Cluster's slot map and a lane set per primary
//!   (`--cluster`); the primary's endpoint then follows one of them.
//!
//! Without `--sentinel` and with `--read-from primary` (the defaults) there
//! is nothing here but the fixed `--upstream` endpoint.

pub(crate) mod cluster;
pub(crate) mod replicas;
pub(crate) mod role;
pub(crate) mod sentinel;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::{Config, ReadFrom, Validate};
use crate::live::Live;
use crate::pool::endpoint::{Endpoint, FollowedAddr, Node};
use crate::pool::PoolContext;
use cluster::{ClusterMap, Refresher};
use replicas::{Checker, ReplicaSet};
use sentinel::{Follower, SentinelState};

/// See the module docs.
pub(crate) struct Topology {
    /// The primary's endpoint, as respool's own identity: `--upstream`'s,
    /// with a followed node under Sentinel.
    pub primary: Endpoint,
    /// What the Sentinels said, under Sentinel.
    sentinel: Option<(Arc<str>, Arc<SentinelState>)>,
    /// Replicas reads may go to, with `--read-from` other than `primary`.
    pub replicas: Option<Arc<ReplicaSet>>,
    /// The slot map, with `--cluster`.
    pub cluster: Option<Arc<ClusterMap>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Topology {
    /// Starts following the primary and checking the replicas, as the
    /// configuration asks.
    /// `live`: where `--upstream` is now (without Sentinel or a cluster)
    /// and a cluster's seeds, which a reload may change. `identity_ctx`: how the lane sets of identities
    /// clients log in as are built (a cluster's primaries get theirs).
    pub fn start(
        config: &Config,
        ctx: &Arc<PoolContext>,
        identity_ctx: &Arc<PoolContext>,
        live: &Live,
    ) -> Topology {
        let mut tasks = Vec::new();
        let mut primary = config.upstream.clone();
        let mut sentinel = None;
        if let Some(settings) = &config.topology.sentinel {
            let followed = Arc::new(FollowedAddr::unknown(
                &format!("sentinel master {}", settings.master),
                &format!(
                    "no primary known yet for master '{}' (asking the Sentinels)",
                    settings.master
                ),
            ));
            primary.node = Node::followed(
                followed.clone(),
                config.upstream.node.tls.clone(),
                config.topology.discovered_tls_name,
            );
            let state = Arc::new(SentinelState::default());
            let follower = Follower {
                settings: settings.clone(),
                primary: followed,
                upstream: primary.clone(),
                pool: config.pool.clone(),
                backoff: config.retry.backoff,
                refresh: ctx.refresh.clone(),
                state: state.clone(),
                failover: std::sync::Mutex::new(None),
            };
            tasks.push(tokio::spawn(follower.run()));
            sentinel = Some((settings.master.clone(), state));
        } else if let Some(upstream) = &live.upstream {
            primary.node =
                Node::followed(upstream.clone(), config.upstream.node.tls.clone(), false);
        }
        let mut cluster = None;
        if let (Some(settings), Some(link), Some(seeds)) =
            (&config.cluster, &ctx.cluster, &live.cluster_seeds)
        {
            let anchor = Arc::new(FollowedAddr::unknown(
                "a cluster primary",
                "no cluster primary known yet (asking the seed nodes)",
            ));
            let anchor_probe = Arc::new(AtomicU16::new(0));
            let template = primary.clone();
            primary.node = Node::followed(
                anchor.clone(),
                config.upstream.node.tls.clone(),
                config.topology.discovered_tls_name,
            );
            primary.probe_slot = Some(anchor_probe.clone());
            let map = Arc::new(ClusterMap::new(
                anchor,
                anchor_probe,
                ctx.refresh.clone(),
                link.clone(),
                identity_ctx.clone(),
            ));
            link.attach(&map);
            let refresher = Refresher {
                map: map.clone(),
                settings: settings.clone(),
                seeds: seeds.clone(),
                template,
                ctx: ctx.clone(),
            };
            tasks.push(tokio::spawn(refresher.run()));
            cluster = Some(map);
        }
        let replicas = (config.topology.replicas.read_from != ReadFrom::Primary).then(|| {
            let set = Arc::new(ReplicaSet::new(config.topology.replicas));
            let checker = Checker {
                set: set.clone(),
                primary: primary.clone(),
                replica_ctx: replica_context(ctx),
                pool: config.pool.clone(),
                refresh: ctx.refresh.clone(),
            };
            tasks.push(tokio::spawn(checker.run()));
            set
        });
        Topology {
            primary,
            sentinel,
            replicas,
            cluster,
            tasks,
        }
    }

    /// `INFO respool` lines about the primary and the replicas.
    pub fn render(&self, out: &mut String) {
        if let Some((master, state)) = &self.sentinel {
            let _ = write!(
                out,
                "sentinel_master:{master}\r\nsentinels_answering:{}\r\nprimary_epoch:{}\r\nfailovers:{}\r\n",
                state.answering.load(Ordering::Relaxed),
                state.epoch.load(Ordering::Relaxed),
                state.failovers.load(Ordering::Relaxed),
            );
        }
        if let Some(replicas) = &self.replicas {
            let read_from = match replicas.settings.read_from {
                ReadFrom::Primary => "primary",
                ReadFrom::PreferReplica => "prefer-replica",
                ReadFrom::Replica => "replica",
            };
            let _ = write!(out, "read_from:{read_from}\r\n");
            replicas.render(out);
        }
        if let Some(cluster) = &self.cluster {
            cluster.render(out);
        }
    }

    /// Stops following and checking.
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a replica's lane sets are built: no write probe (a replica refuses
/// writes), no spares, and `-READONLY` is a replica's word, not news of a
/// demoted primary.
fn replica_context(ctx: &Arc<PoolContext>) -> Arc<PoolContext> {
    let mut pool = ctx.pool.clone();
    pool.min_idle = 0;
    if pool.validate == Validate::Write {
        pool.validate = Validate::Ping;
    }
    Arc::new(PoolContext {
        pool,
        retry: ctx.retry.clone(),
        client_identity: false,
        expects_primary: false,
        refresh: Arc::new(Notify::new()),
        stats: ctx.stats.clone(),
        cluster: None,
        pinned_limit: ctx.pinned_limit.clone(),
        slowlog: ctx.slowlog.clone(),
    })
}
