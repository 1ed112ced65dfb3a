//! Redis Cluster (`--cluster`): which primary serves each of the 16 384
//! hash slots, and a lane set per primary.
//!
//! The map comes from `CLUSTER SHARDS` (`CLUSTER SLOTS` on servers that do
//! not have it), asked of the primaries known so far and then of the
//! `--upstream` seeds, until one answers. It is asked again every
//! `--cluster-refresh-interval`, and sooner when a lane sees a `-MOVED`
//! reply or cannot reach its node ([`ClusterMap::refresh`]); those
//! requests are coalesced and at most one refresh runs per
//! `--cluster-refresh-min-interval`, so a storm of redirections costs one.
//!
//! Each version of the map is immutable ([`SlotMap`]); a client keeps the
//! version it routes by and takes the new one when [`ClusterMap::version`]
//! moves. A primary that stays keeps its lane set across versions; a new
//! one gets a new lane set; one that left is dropped from the map, and its
//! lanes drain as the clients that still hold the old version move on.
//!
//! The first refresh also loads the cluster's command table (`COMMAND`):
//! where each command's keys are, and which ones Redis's own tips send to
//! every shard ([`KeyTable`]).
//!
//! Besides the per-primary lane sets, the registry's lane set (respool's
//! own identity) follows one primary, the *anchor*: keyless commands, the
//! server version a `HELLO` reports and `INFO` come from it.
//!
//! AUTH passthrough: a client that logged in as another identity gets that
//! identity's lane set in the registry (following the anchor, where its
//! login was checked) and, on each primary, a lane set of the same identity
//! ([`ClusterNode::lanes_of`]), opened on first use. They belong to the
//! node, so a redirection or a reroute from a lane of that identity finds
//! the new owner's lanes of the same identity — never respool's own, which
//! may do more than the client's user may. The registry decides how long
//! an identity lives (`--max-identities`, `--identity-idle-timeout`); the
//! nodes drop the lane sets of identities it has closed
//! ([`ClusterMap::retain_identities`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::codec::{Request, Value};
use crate::config::{ClusterSettings, PoolSettings};
use crate::pool::connection::UpstreamConn;
use crate::pool::endpoint::{Endpoint, FollowedAddr, Identity};
use crate::pool::{LaneSet, PoolContext};
use crate::router::keys::KeyTable;
use crate::router::slot::SLOTS;

/// A slot no primary serves (in the map respool has).
pub(crate) const NO_NODE: u16 = u16::MAX;

/// One version of the slot map.
pub(crate) struct SlotMap {
    /// Which of `nodes` serves each slot, or [`NO_NODE`].
    owner: Box<[u16]>,
    /// The primaries, in the order the map listed them.
    pub nodes: Vec<Arc<ClusterNode>>,
}

impl SlotMap {
    fn empty() -> SlotMap {
        SlotMap {
            owner: vec![NO_NODE; SLOTS].into_boxed_slice(),
            nodes: Vec::new(),
        }
    }

    /// The index in `nodes` of the primary serving `slot`, if any.
    #[inline]
    pub fn owner(&self, slot: u16) -> Option<usize> {
        match self.owner.get(usize::from(slot)) {
            Some(&NO_NODE) | None => None,
            Some(&i) => Some(usize::from(i)),
        }
    }

    /// How many slots have a primary.
    fn covered(&self) -> usize {
        self.owner.iter().filter(|&&o| o != NO_NODE).count()
    }
}

/// A primary and its lane sets: respool's own identity's, and those of
/// the identities clients logged in as.
pub(crate) struct ClusterNode {
    pub addr: Arc<str>,
    /// Respool's own identity's (`--upstream`'s user).
    pub lanes: Arc<LaneSet>,
    /// The lane sets of identities clients logged in as (AUTH
    /// passthrough), opened on first use.
    identities: Mutex<HashMap<Identity, Arc<LaneSet>>>,
    /// How those are built.
    identity_ctx: Arc<PoolContext>,
    /// A slot it serves, for its write probe's key.
    probe_slot: Arc<AtomicU16>,
}

impl ClusterNode {
    /// The node's lane set for `identity`: respool's own, or the one of an
    /// identity a client logged in as, opened now if it has none yet.
    pub fn lanes_of(&self, identity: &Identity) -> Arc<LaneSet> {
        if *identity == self.lanes.endpoint().identity {
            return self.lanes.clone();
        }
        let mut sets = self.lock_identities();
        if let Some(set) = sets.get(identity) {
            return set.clone();
        }
        tracing::debug!(node = %self.addr, user = identity.user(), "opening a cluster primary's lanes for a client identity");
        let endpoint = Endpoint {
            identity: identity.clone(),
            ..Endpoint::clone(self.lanes.endpoint())
        };
        let set = Arc::new(LaneSet::open(endpoint, self.identity_ctx.clone()));
        sets.insert(identity.clone(), set.clone());
        set
    }

    /// Closes the lane sets of the identities `keep` rejects.
    fn retain_identities(&self, keep: &impl Fn(&Identity) -> bool) {
        let mut sets = self.lock_identities();
        let gone: Vec<Identity> = sets.keys().filter(|i| !keep(i)).cloned().collect();
        for identity in gone {
            if let Some(set) = sets.remove(&identity) {
                tracing::debug!(node = %self.addr, user = identity.user(), "closing a cluster primary's lanes of a closed identity");
                crate::pool::registry::close_later(set);
            }
        }
    }

    fn lock_identities(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Arc<LaneSet>>> {
        // Nothing panics while holding it; a poisoned map is intact.
        self.identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a refresh learned: slot ranges and the address serving each.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shards {
    ranges: Vec<(u16, u16, Arc<str>)>,
}

/// See the module docs.
pub(crate) struct ClusterMap {
    current: RwLock<Arc<SlotMap>>,
    /// Moves with every change of `current`; 0 until the first map.
    version: AtomicU64,
    keys: OnceLock<Arc<KeyTable>>,
    /// Asks for a refresh (lanes on MOVED and on connect failures).
    pub refresh: Arc<Notify>,
    /// Woken when a map is first known.
    known: Notify,
    /// Woken whenever the map changes.
    changed: Notify,
    /// The anchor: the primary the registry's lane set follows.
    anchor: Arc<FollowedAddr>,
    /// A slot the anchor serves, for its write probe.
    anchor_probe: Arc<AtomicU16>,
    /// The lanes' view of the map, and the counters of `INFO respool`.
    link: Arc<ClusterLink>,
    /// How the primaries' lane sets of client identities are built.
    identity_ctx: Arc<PoolContext>,
    /// Why the last refresh failed, while it did.
    last_error: RwLock<Option<Arc<str>>>,
}

/// What the lanes of a cluster's primaries know of it: the map (to send a
/// request a node redirected to the new owner's lane) and the counters.
#[derive(Debug, Default)]
pub(crate) struct ClusterLink {
    /// Set once the map exists; weak, as the map owns the lane sets.
    map: OnceLock<std::sync::Weak<ClusterMap>>,
    pub stats: ClusterStats,
}

/// What a lane does with a `-MOVED` or `-ASK` reply.
pub(crate) enum Redirect {
    /// Send the request to this lane (the slot's owner now).
    To(crate::pool::lane::LaneHandle),
    /// Send the request, once, to this lane behind an `ASKING`: the slot
    /// is being migrated there, and the key is no longer on the node
    /// that answered.
    Ask(crate::pool::lane::LaneHandle),
    /// Hold it and send it again here after a pause: a redirection to a
    /// node respool has no lanes to yet (the map is being refreshed).
    Hold,
}

/// Where the requests of a lane whose node left the map go now: to lanes
/// of the same identity and protocol.
pub(crate) struct Reroute<'a> {
    map: Arc<ClusterMap>,
    slots: Arc<SlotMap>,
    protocol: u8,
    identity: &'a Identity,
}

impl Reroute<'_> {
    /// The lane of the primary serving the slot of the request `raw` (a
    /// keyless one: the first primary's); `None` if no primary serves it.
    pub fn lane_for(&self, raw: &[u8]) -> Option<crate::pool::lane::LaneHandle> {
        let node = match crate::codec::Request::of_whole(raw) {
            Some(req) => match self
                .map
                .keys()?
                .place(req.view(), crate::router::slot::slot_of)
            {
                crate::router::keys::Placement::Slot(slot) => self.slots.owner(slot)?,
                _ => 0,
            },
            None => 0,
        };
        let node = self.slots.nodes.get(node)?;
        Some(node.lanes_of(self.identity).lane(self.protocol))
    }
}

impl ClusterLink {
    /// `Some` once the map no longer names `addr` as a primary; its
    /// requests go to lanes of `identity` speaking `protocol`.
    pub fn reroute<'a>(
        &self,
        addr: &str,
        protocol: u8,
        identity: &'a Identity,
    ) -> Option<Reroute<'a>> {
        let map = self.map.get().and_then(std::sync::Weak::upgrade)?;
        let (slots, version) = map.current();
        if version == 0 || slots.nodes.iter().any(|n| *n.addr == *addr) {
            return None;
        }
        Some(Reroute {
            map,
            slots,
            protocol,
            identity,
        })
    }

    /// The map's shape now, for the metrics: `(primaries, slots with a
    /// primary, map version)`; `None` before the map exists.
    pub fn shape(&self) -> Option<(usize, usize, u64)> {
        let map = self.map.get().and_then(std::sync::Weak::upgrade)?;
        let (slots, version) = map.current();
        Some((slots.nodes.len(), slots.covered(), version))
    }

    /// Lets the lanes find `map`'s lane sets.
    pub fn attach(&self, map: &Arc<ClusterMap>) {
        let _ = self.map.set(Arc::downgrade(map));
    }

    /// What to do with a reply of a lane to `from` speaking `protocol` as
    /// `identity`, if it is a redirection; counts it, and asks for a
    /// refresh on `-MOVED`. The request goes on to a lane of the same
    /// identity and protocol: one user's request never runs as another.
    pub fn redirect(
        &self,
        frame: &[u8],
        from: &str,
        protocol: u8,
        identity: &Identity,
        refresh: &Notify,
    ) -> Option<Redirect> {
        // `-MOVED <slot> <host>:<port>`, `-ASK <slot> <host>:<port>`; an
        // empty host is the node's own.
        let (rest, ask) = match frame.strip_prefix(b"-ASK ") {
            Some(rest) => {
                self.stats.ask.fetch_add(1, Ordering::Relaxed);
                (rest, true)
            }
            None => {
                let rest = frame.strip_prefix(b"-MOVED ")?;
                self.stats.moved.fetch_add(1, Ordering::Relaxed);
                // An `-ASK` leaves the slot where it is: only a `-MOVED`
                // says the map is out of date.
                refresh.notify_one();
                (rest, false)
            }
        };
        let line = rest.strip_suffix(b"\r\n").unwrap_or(rest);
        let addr = line.splitn(2, |&b| b == b' ').nth(1)?;
        let addr = std::str::from_utf8(addr).ok()?;
        let map = self.map.get().and_then(std::sync::Weak::upgrade)?;
        let (slots, _) = map.current();
        let lanes = slots
            .nodes
            .iter()
            .find(|n| *n.addr == *addr || (addr.starts_with(':') && n.addr.ends_with(addr)));
        Some(match lanes {
            Some(node) if *node.addr != *from => {
                let lane = node.lanes_of(identity).lane(protocol);
                if ask {
                    Redirect::Ask(lane)
                } else {
                    Redirect::To(lane)
                }
            }
            // An importing node with no slot yet is not in the map: the
            // request waits on this node until the migration ends and it
            // answers `-MOVED` to a node the refreshed map has.
            _ => Redirect::Hold,
        })
    }
}

/// Counters of the cluster's map and redirections, for `INFO respool`.
#[derive(Debug, Default)]
pub(crate) struct ClusterStats {
    pub refreshes: AtomicU64,
    pub refresh_failures: AtomicU64,
    pub moved: AtomicU64,
    pub ask: AtomicU64,
    /// Requests a lane sent on to another node's lane after `-MOVED` or
    /// `-ASK`.
    pub redirected: AtomicU64,
    /// `cluster_current_epoch` of the node that gave the map.
    pub epoch: AtomicU64,
}

impl ClusterMap {
    /// An empty map whose anchor is `anchor`, probing `anchor_probe`;
    /// its primaries' lane sets of client identities are built with
    /// `identity_ctx`.
    pub fn new(
        anchor: Arc<FollowedAddr>,
        anchor_probe: Arc<AtomicU16>,
        refresh: Arc<Notify>,
        link: Arc<ClusterLink>,
        identity_ctx: Arc<PoolContext>,
    ) -> ClusterMap {
        ClusterMap {
            current: RwLock::new(Arc::new(SlotMap::empty())),
            version: AtomicU64::new(0),
            keys: OnceLock::new(),
            refresh,
            known: Notify::new(),
            changed: Notify::new(),
            anchor,
            anchor_probe,
            link,
            identity_ctx,
            last_error: RwLock::new(None),
        }
    }

    /// Closes the primaries' lane sets of the client identities `keep`
    /// rejects (the registry closed them). A primary that left the map
    /// drops all of its own as the clients holding it move on.
    pub fn retain_identities(&self, keep: impl Fn(&Identity) -> bool) {
        let (map, _) = self.current();
        for node in &map.nodes {
            node.retain_identities(&keep);
        }
    }

    /// The version clients compare with the one they route by.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The current map and its version.
    pub fn current(&self) -> (Arc<SlotMap>, u64) {
        let map = self.current.read().unwrap_or_else(PoisonError::into_inner);
        (map.clone(), self.version())
    }

    /// The cluster's command table, once loaded.
    pub fn keys(&self) -> Option<&Arc<KeyTable>> {
        self.keys.get()
    }

    /// Why no map is known, for the errors of requests that need one.
    pub fn why_unknown(&self) -> Arc<str> {
        self.last_error
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "asking the seed nodes".into())
    }

    /// Resolves once a map is known (`true`), or after `within` (`false`).
    pub async fn wait_known(&self, within: Duration) -> bool {
        let known = async {
            loop {
                let notified = self.known.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.version() > 0 && self.keys.get().is_some() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(within, known).await.is_ok()
    }

    /// The lane set of `identity` on the primary serving `slot`, once the
    /// map says that is no longer `from` (a node that gave the slot away);
    /// refreshes are asked for meanwhile. `None` if it still is (or no
    /// primary serves the slot) after `within`.
    pub async fn new_owner(
        self: Arc<Self>,
        slot: u16,
        from: Arc<str>,
        identity: Identity,
        within: Duration,
    ) -> Option<Arc<LaneSet>> {
        // A refresh that finds the old map changes nothing and wakes no
        // one: ask again after this long (refreshes are rate-limited).
        const ASK_AGAIN: Duration = Duration::from_millis(100);
        let moved = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let (slots, _) = self.current();
                if let Some(node) = slots.owner(slot).and_then(|i| slots.nodes.get(i)) {
                    if *node.addr != *from {
                        return node.lanes_of(&identity);
                    }
                }
                self.refresh.notify_one();
                let _ = tokio::time::timeout(ASK_AGAIN, changed).await;
            }
        };
        tokio::time::timeout(within, moved).await.ok()
    }

    /// `INFO respool` lines: the map, each primary's lanes, redirections.
    pub fn render(&self, out: &mut String) {
        let (map, version) = self.current();
        let s = &self.link.stats;
        let redirected = s.redirected.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "cluster_map_version:{version}\r\ncluster_epoch:{}\r\ncluster_slots_known:{}\r\ncluster_primaries:{}\r\ncluster_refreshes:{}\r\ncluster_refresh_failures:{}\r\ncluster_moved:{}\r\ncluster_ask:{}\r\ncluster_redirected:{redirected}\r\n",
            s.epoch.load(Ordering::Relaxed),
            map.covered(),
            map.nodes.len(),
            s.refreshes.load(Ordering::Relaxed),
            s.refresh_failures.load(Ordering::Relaxed),
            s.moved.load(Ordering::Relaxed),
            s.ask.load(Ordering::Relaxed),
        );
        for (i, node) in map.nodes.iter().enumerate() {
            let slots = map.owner.iter().filter(|&&o| usize::from(o) == i).count();
            let _ = write!(
                out,
                "cluster_node{i}:addr={},slots={slots},validated={},identities={}\r\n",
                node.addr,
                u8::from(node.lanes.health().is_validated()),
                node.lock_identities().len(),
            );
        }
    }

    /// What `RESPOOL POOLS` shows of each primary: its lane set of
    /// respool's own identity. (Client identities' sets exist only with
    /// AUTH passthrough, and the admin console needs respool's own users.)
    pub fn pool_views(&self) -> Vec<crate::pool::PoolView> {
        let (map, _) = self.current();
        map.nodes
            .iter()
            .map(|node| node.lanes.view("primary"))
            .collect()
    }

    /// Takes what a refresh learned as the new map, if it differs.
    fn install(&self, shards: &Shards, template: &Endpoint, ctx: &Arc<PoolContext>) -> bool {
        let (old, _) = self.current();
        let mut nodes: Vec<Arc<ClusterNode>> = Vec::new();
        let mut owner = vec![NO_NODE; SLOTS].into_boxed_slice();
        for (from, to, addr) in &shards.ranges {
            let index = match nodes.iter().position(|n| n.addr == *addr) {
                Some(i) => i,
                None => {
                    let node = old
                        .nodes
                        .iter()
                        .find(|n| n.addr == *addr)
                        .cloned()
                        .unwrap_or_else(|| {
                            tracing::info!(node = %addr, "cluster primary found; opening its lanes");
                            let probe_slot = Arc::new(AtomicU16::new(*from));
                            let endpoint = Endpoint {
                                node: super::sentinel::node_at(addr, &template.node),
                                probe_slot: Some(probe_slot.clone()),
                                ..template.clone()
                            };
                            Arc::new(ClusterNode {
                                addr: addr.clone(),
                                lanes: Arc::new(LaneSet::open(endpoint, ctx.clone())),
                                identities: Mutex::default(),
                                identity_ctx: self.identity_ctx.clone(),
                                probe_slot,
                            })
                        });
                    nodes.push(node);
                    nodes.len() - 1
                }
            };
            for slot in *from..=(*to).min(SLOTS as u16 - 1) {
                owner[usize::from(slot)] = index as u16;
            }
        }
        // Each primary's write probe names a slot it serves now.
        for (i, node) in nodes.iter().enumerate() {
            let current = node.probe_slot.load(Ordering::Relaxed);
            if owner[usize::from(current)] != i as u16 {
                if let Some(slot) = owner.iter().position(|&o| o == i as u16) {
                    node.probe_slot.store(slot as u16, Ordering::Relaxed);
                }
            }
        }
        let same = old.nodes.len() == nodes.len()
            && old.nodes.iter().zip(&nodes).all(|(a, b)| Arc::ptr_eq(a, b))
            && old.owner == owner;
        if same {
            return false;
        }
        for gone in old
            .nodes
            .iter()
            .filter(|n| !nodes.iter().any(|m| m.addr == n.addr))
        {
            tracing::info!(node = %gone.addr, "cluster primary left the map; its lanes drain");
        }
        let anchored = self
            .anchor
            .current()
            .and_then(|a| nodes.iter().position(|n| n.addr == a));
        let anchor = anchored.or((!nodes.is_empty()).then_some(0));
        if let Some(i) = anchor {
            // The probe slot first: a connection made for the new address
            // must already name one of its slots.
            if let Some(slot) = owner.iter().position(|&o| usize::from(o) == i) {
                self.anchor_probe.store(slot as u16, Ordering::Relaxed);
            }
            if anchored.is_none() {
                self.anchor.set(&nodes[i].addr);
            }
        }
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(SlotMap { owner, nodes });
        self.version.fetch_add(1, Ordering::AcqRel);
        drop(current);
        self.changed.notify_waiters();
        true
    }
}

/// The `host:port` of each seed node (`--upstream`), asked for the slot
/// map after the primaries already known; a reload may replace them.
pub(crate) type Seeds = arc_swap::ArcSwap<Vec<Arc<str>>>;

/// Keeps a [`ClusterMap`] current; runs until the event loop stops.
pub(crate) struct Refresher {
    pub map: Arc<ClusterMap>,
    pub settings: ClusterSettings,
    /// The seeds now (`settings.seeds` at start).
    pub seeds: Arc<Seeds>,
    /// What every primary's connections are made with (identity, TLS).
    pub template: Endpoint,
    pub ctx: Arc<PoolContext>,
}

impl Refresher {
    pub async fn run(self) {
        let mut last: Option<Instant> = None;
        loop {
            if let Some(last) = last {
                // Rate limit: a storm of requests is one refresh per
                // interval (the Notify keeps at most one permit).
                tokio::time::sleep_until(last + self.settings.refresh_min_interval).await;
            }
            last = Some(Instant::now());
            self.refresh_once().await;
            let pause = if self.map.version() == 0 {
                // Nothing known yet: ask again soon, with the backoff.
                self.ctx
                    .retry
                    .backoff()
                    .base
                    .max(Duration::from_millis(100))
            } else {
                self.settings.refresh_interval
            };
            tokio::select! {
                () = self.map.refresh.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Asks the known primaries, then the seeds, until one gives a map.
    async fn refresh_once(&self) {
        let (map, _) = self.map.current();
        let mut candidates: Vec<Arc<str>> = map.nodes.iter().map(|n| n.addr.clone()).collect();
        for seed in self.seeds.load().iter() {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        drop(map);
        let mut errors = Vec::new();
        for addr in candidates {
            match self.ask(&addr).await {
                Ok(shards) => {
                    self.map
                        .link
                        .stats
                        .refreshes
                        .fetch_add(1, Ordering::Relaxed);
                    if self.map.install(&shards, &self.template, &self.ctx) {
                        tracing::info!(from = %addr, ranges = shards.ranges.len(), "cluster slot map updated");
                    }
                    *self
                        .map
                        .last_error
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = None;
                    self.map.known.notify_waiters();
                    return;
                }
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        self.map
            .link
            .stats
            .refresh_failures
            .fetch_add(1, Ordering::Relaxed);
        let why = format!("no cluster node gave a slot map ({})", errors.join("; "));
        tracing::warn!("{why}");
        *self
            .map
            .last_error
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(why.into());
    }

    /// One node's view: its shards (and, the first time, the command
    /// table), over a connection of its own.
    async fn ask(&self, addr: &str) -> Result<Shards, String> {
        let endpoint = Endpoint {
            node: super::sentinel::node_at(addr, &self.template.node),
            probe_slot: None,
            ..self.template.clone()
        };
        let pool: &PoolSettings = &self.ctx.pool;
        let wait = pool.connect_timeout;
        let exchange = async {
            let mut conn = UpstreamConn::open_logged_in(&endpoint, pool)
                .await
                .map_err(|e| e.to_string())?;
            let mut requests = vec![
                Request::from_args(&["CLUSTER", "SHARDS"]),
                Request::from_args(&["CLUSTER", "SLOTS"]),
                Request::from_args(&["CLUSTER", "INFO"]),
            ];
            let want_keys = self.map.keys.get().is_none();
            if want_keys {
                requests.push(Request::from_args(&["COMMAND"]));
            }
            let replies = conn
                .exchange(&requests, "CLUSTER SHARDS", wait)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(replies)
        };
        let replies = tokio::time::timeout(wait * 2, exchange)
            .await
            .map_err(|_| format!("no answer within {wait:?}"))??;
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let tls = self.template.node.tls.is_some();
        let shards = replies
            .first()
            .and_then(|r| parse_shards(r, tls, host))
            .or_else(|| replies.get(1).and_then(|r| parse_slots(r, host)))
            .ok_or_else(|| {
                let reply = replies
                    .first()
                    .map(|r| String::from_utf8_lossy(r).into_owned());
                format!(
                    "no slot map in its CLUSTER SHARDS/SLOTS reply ({})",
                    reply.unwrap_or_default().trim_end()
                )
            })?;
        if shards.ranges.is_empty() {
            return Err("it serves no slots (not part of a formed cluster?)".into());
        }
        if let Some(info) = replies
            .get(2)
            .and_then(|r| Value::of_frame(r).ok()?.bytes().map(<[u8]>::to_vec))
        {
            if let Some(epoch) = info_field(&info, b"cluster_current_epoch:") {
                self.map.link.stats.epoch.store(epoch, Ordering::Relaxed);
            }
        }
        if let Some(reply) = replies.get(3) {
            match KeyTable::parse(reply) {
                Some(table) => {
                    tracing::debug!(commands = table.len(), "cluster command table loaded");
                    let _ = self.map.keys.set(Arc::new(table));
                }
                None => return Err("its COMMAND reply could not be read".into()),
            }
        }
        Ok(shards)
    }
}

/// `field:<n>` out of an INFO text.
fn info_field(info: &[u8], field: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(info, field)? + field.len();
    let rest = &info[at..];
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// `host:port`, bracketing an IPv6 host.
fn join(host: &[u8], port: i64) -> Arc<str> {
    let host = String::from_utf8_lossy(host);
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}").into()
    } else {
        format!("{host}:{port}").into()
    }
}

/// A `CLUSTER SHARDS` reply: each shard's slot ranges and its primary
/// (the node whose role is `master`, one whose health is `online` if there
/// is one); `None` if it is not one (an error on Redis before 7.0).
fn parse_shards(reply: &[u8], tls: bool, asked: &str) -> Option<Shards> {
    let value = Value::of_frame(reply).ok()?;
    if matches!(value, Value::Error(_)) {
        return None;
    }
    let mut ranges = Vec::new();
    for shard in value.elements()? {
        let mut slots = None;
        let mut primary = None;
        let mut it = shard.elements()?;
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match k.bytes()? {
                b"slots" => slots = Some(v),
                b"nodes" => {
                    for node in v.elements()? {
                        let mut fields = node.elements()?;
                        let (mut ip, mut endpoint, mut port, mut tls_port) =
                            (None, None, None, None);
                        let (mut master, mut online) = (false, false);
                        while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                            match k.bytes()? {
                                b"ip" => ip = v.bytes(),
                                b"endpoint" => endpoint = v.bytes(),
                                b"port" => port = v.int(),
                                b"tls-port" => tls_port = v.int(),
                                b"role" => master = v.bytes() == Some(b"master"),
                                b"health" => online = v.bytes() == Some(b"online"),
                                _ => {}
                            }
                        }
                        // A failed primary stays the owner until a replica
                        // is promoted: its requests are held on its lanes
                        // rather than refused meanwhile.
                        if master && (online || primary.is_none()) {
                            // A node that never met another does not know
                            // its own address: it is the one asked.
                            let known = |h: &&[u8]| !h.is_empty() && *h != b"?";
                            let host = endpoint
                                .filter(known)
                                .or(ip.filter(known))
                                .unwrap_or(asked.as_bytes());
                            // A node without a port of respool's kind
                            // (TLS or plain) cannot be dialled: its shard
                            // is skipped, not the whole map.
                            let Some(port) = (if tls { tls_port.or(port) } else { port }) else {
                                continue;
                            };
                            primary = Some(join(host, port));
                        }
                    }
                }
                _ => {}
            }
        }
        let (Some(slots), Some(primary)) = (slots, primary) else {
            continue;
        };
        let mut bounds = slots.elements()?;
        while let (Some(a), Some(b)) = (bounds.next(), bounds.next()) {
            let (a, b) = (u16::try_from(a.int()?).ok()?, u16::try_from(b.int()?).ok()?);
            ranges.push((a, b, primary.clone()));
        }
    }
    ranges.sort_unstable_by_key(|r| r.0);
    Some(Shards { ranges })
}

/// A `CLUSTER SLOTS` reply; an empty host is the node asked (`host`).
fn parse_slots(reply: &[u8], host: &str) -> Option<Shards> {
    let value = Value::of_frame(reply).ok()?;
    let mut ranges = Vec::new();
    for range in value.elements()? {
        let mut fields = range.elements()?;
        let a = u16::try_from(fields.next()?.int()?).ok()?;
        let b = u16::try_from(fields.next()?.int()?).ok()?;
        let mut primary = fields.next()?.elements()?;
        let ip = primary.next()?.bytes()?;
        let port = primary.next()?.int()?;
        let ip = if ip.is_empty() || ip == b"?" {
            host.as_bytes()
        } else {
            ip
        };
        ranges.push((a, b, join(ip, port)));
    }
    ranges.sort_unstable_by_key(|r| r.0);
    Some(Shards { ranges })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_slots_replies_are_read() {
        let reply = b"*2\r\n*3\r\n:0\r\n:5460\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n*3\r\n:5461\r\n:16383\r\n*2\r\n$0\r\n\r\n:7001\r\n";
        let shards = parse_slots(reply, "10.0.0.9").expect("a map");
        assert_eq!(
            shards.ranges,
            vec![
                (0, 5460, "127.0.0.1:7000".into()),
                (5461, 16383, "10.0.0.9:7001".into())
            ]
        );
        assert!(parse_slots(b"-ERR unknown\r\n", "h").is_none());
    }

    #[test]
    fn cluster_shards_replies_name_the_online_primary() {
        let node = |role: &str, port: u16, health: &str| {
            format!(
                "*10\r\n$2\r\nid\r\n$1\r\nx\r\n$4\r\nport\r\n:{port}\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n${}\r\n{role}\r\n$6\r\nhealth\r\n${}\r\n{health}\r\n",
                role.len(),
                health.len()
            )
        };
        let reply = format!(
            "*1\r\n*4\r\n$5\r\nslots\r\n*4\r\n:0\r\n:99\r\n:200\r\n:300\r\n$5\r\nnodes\r\n*2\r\n{}{}",
            node("replica", 7003, "online"),
            node("master", 7000, "online")
        );
        let shards = parse_shards(reply.as_bytes(), false, "h").expect("a map");
        assert_eq!(
            shards.ranges,
            vec![
                (0, 99, "127.0.0.1:7000".into()),
                (200, 300, "127.0.0.1:7000".into())
            ]
        );
        assert!(parse_shards(b"-ERR unknown subcommand\r\n", false, "h").is_none());
        // Until a replica takes over, the failed primary keeps its slots.
        let failed = format!(
            "*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:99\r\n$5\r\nnodes\r\n*2\r\n{}{}",
            node("master", 7000, "fail"),
            node("replica", 7003, "online")
        );
        let shards = parse_shards(failed.as_bytes(), false, "h").expect("a map");
        assert_eq!(shards.ranges, vec![(0, 99, "127.0.0.1:7000".into())]);
    }

    #[test]
    fn over_tls_the_tls_port_is_the_one_dialled() {
        // A node with both ports (`port` and `tls-port`), and one with TLS
        // only (`port 0`: no `port` field at all).
        let both = "*8\r\n$4\r\nport\r\n:7000\r\n$8\r\ntls-port\r\n:17000\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n";
        let tls_only = "*6\r\n$8\r\ntls-port\r\n:17001\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n";
        let reply = format!(
            "*2\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:99\r\n$5\r\nnodes\r\n*1\r\n{both}*4\r\n$5\r\nslots\r\n*2\r\n:100\r\n:199\r\n$5\r\nnodes\r\n*1\r\n{tls_only}"
        );
        let tls = parse_shards(reply.as_bytes(), true, "h").expect("a map");
        assert_eq!(
            tls.ranges,
            vec![
                (0, 99, "127.0.0.1:17000".into()),
                (100, 199, "127.0.0.1:17001".into())
            ]
        );
        let plain = parse_shards(reply.as_bytes(), false, "h").expect("a map");
        assert_eq!(plain.ranges, vec![(0, 99, "127.0.0.1:7000".into())]);
    }

    #[test]
    fn the_epoch_is_read_from_cluster_info() {
        let info = b"cluster_state:ok\r\ncluster_current_epoch:6\r\ncluster_my_epoch:2\r\n";
        assert_eq!(info_field(info, b"cluster_current_epoch:"), Some(6));
    }
}
