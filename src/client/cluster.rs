//! Where a client's shared requests go in front of a Redis Cluster
//! (`--cluster`): to the primary serving the hash slot of their keys, found
//! by the cluster's own key specs ([`crate::router::keys`]) and the slot map
//! ([`crate::topology::cluster`]).
//!
//! A run of requests for one primary goes to that primary's lane as one
//! message, like a run for a single upstream; the run breaks where the
//! primary changes. Keyless commands join the run being collected, whatever
//! its primary (any node answers them); outside a run they go to the
//! anchor primary (the client's own lane set).
//!
//! The client keeps the version of the map it routes by, with its lane to
//! each primary, and takes a new version only when none of its requests is
//! on a lane. Until then its requests for a slot that moved go where the
//! earlier ones went, and that node's `-MOVED` sends each on to the new
//! owner's lane in the order they came ([`crate::pool::lane`]): a request
//! routed by the new map can never overtake an earlier one of the same
//! client still being redirected.
//!
//! Its lanes are those of its identity: respool's own, or the one it
//! logged in as (AUTH passthrough), on every primary.

use std::sync::Arc;

use bytes::Bytes;

use super::routing::Target;
use super::scan::ScanStep;
use super::Client;
use crate::codec::RequestRef;
use crate::error::{error_line, Error};
use crate::pool::endpoint::Identity;
use crate::pool::lane::LaneHandle;
use crate::pool::LaneSet;
use crate::router::keys::{Fanout, KeyTable, Placement};
use crate::router::slot::slot_of;
use crate::topology::cluster::{ClusterMap, SlotMap};

/// Where a request goes in cluster mode.
pub(super) enum Routed {
    /// To this primary (its index in the client's map).
    Node(u16),
    /// To any primary: the run's own.
    AnyNode,
    /// Split by primary (its keys span slots).
    Split(Split),
    /// Nowhere: the client gets this error line.
    Refused(Bytes),
    /// `CLUSTER SLOTS|SHARDS|NODES|INFO|MYID`: answered by respool, as one
    /// node owning every slot.
    Myself(Describe),
}

/// What a cluster-aware client asks to learn the cluster's shape; respool
/// describes itself, so such a client sends everything to respool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Describe {
    Slots,
    Shards,
    Nodes,
    Info,
    MyId,
}

impl Describe {
    /// What `req` (command id `id`) asks, if it asks for the shape.
    #[inline]
    fn of(req: RequestRef<'_>, id: u16) -> Option<Describe> {
        if id != crate::ops::commands::CLUSTER || req.argc() != 2 {
            return None;
        }
        let sub = req.arg(1)?;
        let is = |s: &[u8]| sub.eq_ignore_ascii_case(s);
        Some(if is(b"SLOTS") {
            Describe::Slots
        } else if is(b"SHARDS") {
            Describe::Shards
        } else if is(b"NODES") {
            Describe::Nodes
        } else if is(b"INFO") {
            Describe::Info
        } else if is(b"MYID") {
            Describe::MyId
        } else {
            return None;
        })
    }

    /// The reply, for a respool reached at `addr`, the map known or not.
    fn reply(self, addr: std::net::SocketAddr, known: bool) -> Bytes {
        let ip = addr.ip().to_string();
        let port = addr.port();
        // A node id is 40 hex digits; respool's is its port's.
        let id = format!("{port:040x}");
        let bulk = |s: &str| format!("${}\r\n{s}\r\n", s.len());
        let text = match self {
            Describe::Slots => format!(
                "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n{}:{port}\r\n{}",
                bulk(&ip),
                bulk(&id)
            ),
            Describe::Shards => format!(
                "*1\r\n*4\r\n{}*2\r\n:0\r\n:16383\r\n{}*1\r\n*14\r\n{}{}{}:{port}\r\n{}{}{}{}{}{}{}:0\r\n{}{}",
                bulk("slots"),
                bulk("nodes"),
                bulk("id"),
                bulk(&id),
                bulk("port"),
                bulk("ip"),
                bulk(&ip),
                bulk("endpoint"),
                bulk(&ip),
                bulk("role"),
                bulk("master"),
                bulk("replication-offset"),
                bulk("health"),
                bulk("online"),
            ),
            Describe::Nodes => bulk(&format!(
                "{id} {ip}:{port}@{port} myself,master - 0 0 1 connected 0-16383\n"
            )),
            Describe::Info => {
                let (state, ok) = if known { ("ok", 16384) } else { ("fail", 0) };
                bulk(&format!(
                    "cluster_state:{state}\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:{ok}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:1\r\ncluster_size:1\r\ncluster_current_epoch:1\r\ncluster_my_epoch:1\r\n"
                ))
            }
            Describe::MyId => bulk(&id),
        };
        Bytes::from(text)
    }
}

/// A client's view of the slot map.
pub(super) struct ClusterRoutes {
    map: Arc<ClusterMap>,
    /// The version `slots` and `lanes` are for.
    version: u64,
    slots: Arc<SlotMap>,
    /// The cluster's command table, once a map is known (it is loaded
    /// with the first).
    keys: Option<Arc<KeyTable>>,
    /// Who the client acts as upstream.
    identity: Identity,
    /// Each primary's lane set of `identity`, by its index in `slots`:
    /// where a session on that primary checks out its connection.
    sets: Vec<Arc<LaneSet>>,
    /// Each primary's shared lane for `protocol`, by its index in `slots`.
    lanes: Vec<LaneHandle>,
    protocol: u8,
}

impl ClusterRoutes {
    /// Routes as `identity` (respool's own, for a new client).
    pub fn new(map: Arc<ClusterMap>, identity: Identity) -> ClusterRoutes {
        let (slots, version) = map.current();
        let mut routes = ClusterRoutes {
            map,
            version,
            slots,
            keys: None,
            identity,
            sets: Vec::new(),
            lanes: Vec::new(),
            protocol: 2,
        };
        routes.take_keys_and_lanes();
        routes
    }

    /// Routes as `identity` from now on (the client logged in or out; none
    /// of its requests is on a lane).
    pub fn switch_identity(&mut self, identity: Identity, protocol: u8) {
        self.identity = identity;
        self.refresh(protocol);
    }

    /// Whether the lanes must be taken again: the client switched
    /// protocol, or the map moved and none of the client's requests is on
    /// a lane (`pending`: how many are).
    #[inline]
    pub fn is_stale(&self, protocol: u8, pending: usize) -> bool {
        protocol != self.protocol || (pending == 0 && self.map.version() != self.version)
    }

    /// Takes the current map, its command table and each primary's lane
    /// for `protocol`.
    pub fn refresh(&mut self, protocol: u8) {
        let (slots, version) = self.map.current();
        self.slots = slots;
        self.version = version;
        self.protocol = protocol;
        self.take_keys_and_lanes();
    }

    fn take_keys_and_lanes(&mut self) {
        self.keys = self.map.keys().filter(|_| self.version > 0).cloned();
        self.sets = self
            .slots
            .nodes
            .iter()
            .map(|n| n.lanes_of(&self.identity))
            .collect();
        self.lanes = self.sets.iter().map(|s| s.lane(self.protocol)).collect();
    }

    /// The lane of primary `i` of the version routed by.
    #[inline]
    pub fn lane(&self, i: u16) -> Option<&LaneHandle> {
        self.lanes.get(usize::from(i))
    }

    /// The client's identity's lane set on each primary of the version
    /// routed by.
    pub fn primaries(&self) -> impl Iterator<Item = &Arc<crate::pool::LaneSet>> {
        self.sets.iter()
    }

    /// How many primaries the version routed by has.
    pub fn node_count(&self) -> u16 {
        self.lanes.len() as u16
    }

    /// Whether `lanes` (a session's origin: the client's identity's lane
    /// set on one primary) are primary `i`'s of the version routed by.
    pub fn is_node(&self, i: u16, lanes: &Arc<crate::pool::LaneSet>) -> bool {
        self.sets
            .get(usize::from(i))
            .is_some_and(|set| Arc::ptr_eq(set, lanes))
    }

    /// Redis's refusal of `req` when queued in a transaction (unknown
    /// command, argument count), if the cluster's command table has one.
    pub fn refusal(&self, req: RequestRef<'_>) -> Option<String> {
        self.map.keys()?.refusal(req)
    }

    /// The primary serving the key of `req` (command id `id`), if it is
    /// a command of one key at a fixed place (most are) and its slot has
    /// a primary; else `None`, and [`ClusterRoutes::place`] says where it
    /// goes.
    #[inline(always)]
    pub fn node_of_key(&self, req: RequestRef<'_>, id: u16) -> Option<u16> {
        let slot = self.keys.as_ref()?.single_key_slot(req, id)?;
        self.slots.owner(slot).map(|i| i as u16)
    }

    /// Where `req`, whose command id is `id`, goes.
    pub fn place(&self, req: RequestRef<'_>, id: u16) -> Routed {
        if let Some(describe) = Describe::of(req, id) {
            return Routed::Myself(describe);
        }
        let Some(keys) = &self.keys else {
            return Routed::Refused(Error::NoSlotMap(self.map.why_unknown()).to_resp());
        };
        match keys.place_command(req, id, slot_of) {
            Placement::Slot(slot) => match self.slots.owner(slot) {
                Some(i) => Routed::Node(i as u16),
                // Redis's words for a slot no primary serves.
                None => Routed::Refused(error_line("CLUSTERDOWN", "Hash slot not served")),
            },
            Placement::AnyNode => Routed::AnyNode,
            Placement::CrossSlot => match Split::of(req.name()) {
                Some(split) => Routed::Split(split),
                None => Routed::Refused(error_line(
                    "CROSSSLOT",
                    "Keys in request don't hash to the same slot",
                )),
            },
            Placement::Fanout(Fanout::Unsupported) if req.name().eq_ignore_ascii_case(b"SCAN") => {
                Routed::Split(Split::Scan)
            }
            Placement::Fanout(Fanout::Unsupported) => Routed::Refused(Error::NotInCluster(
                upper(req.name()),
                "it goes to every primary (Redis's request_policy tip) and its replies are not merged by respool yet; ask each node directly",
            )
            .to_resp()),
            Placement::Fanout(fanout) => Routed::Split(Split::Fanout(fanout)),
        }
    }
}

fn upper(name: &[u8]) -> Arc<str> {
    String::from_utf8_lossy(name).to_ascii_uppercase().into()
}

impl Client {
    /// Decides where a shared request in cluster mode goes, ending the run
    /// being collected if it goes to another primary; `false` (with the
    /// client's error answered) if it goes nowhere.
    pub(super) fn target_primary(&mut self, routed: Routed) -> bool {
        match routed {
            Routed::Node(node) => {
                let target = Target::Node(node);
                if self.run_target != target {
                    self.flush_run();
                    self.run_target = target;
                }
                true
            }
            // Any node: the run's own.
            Routed::AnyNode => true,
            Routed::Refused(reply) => {
                self.output.push_ready(reply);
                false
            }
            Routed::Myself(describe) => {
                // The address the client reached respool at (a client on
                // a Unix socket is told the TCP listener, if any).
                let addr = match self.stream.local_addr() {
                    Ok(crate::net::PeerAddr::Tcp(addr)) => addr,
                    _ => self
                        .shared
                        .config
                        .listener
                        .tcp
                        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                };
                let known = self.cluster.as_ref().is_some_and(|c| c.version > 0);
                self.output.push_ready(describe.reply(addr, known));
                false
            }
            // The caller splits it.
            Routed::Split(_) => false,
        }
    }

    /// Takes the current slot map if it moved and no request of the
    /// client is on a lane (see the module docs).
    #[inline]
    pub(super) fn sync_cluster(&mut self) {
        let pending = self.output.shared_pending();
        if self
            .cluster
            .as_ref()
            .is_some_and(|c| c.is_stale(self.protocol, pending))
        {
            self.flush_run();
            self.run_target = Target::Primary;
            let protocol = self.protocol;
            if let Some(cluster) = &mut self.cluster {
                cluster.refresh(protocol);
            }
        }
    }

    /// The lane set a session for `req` comes from: the client's own, or in
    /// cluster mode the primary serving its key (a blocking command's, a
    /// shard channel's), or an error line (keys in several slots).
    pub(super) fn session_lanes(
        &self,
        req: &crate::codec::Request,
    ) -> Result<Arc<crate::pool::LaneSet>, Bytes> {
        let Some(cluster) = &self.cluster else {
            return Ok(self.lanes.clone());
        };
        match cluster.place(req.view(), crate::ops::commands::command_id(req.name())) {
            Routed::Node(i) => Ok(cluster
                .sets
                .get(usize::from(i))
                .map_or_else(|| self.lanes.clone(), Arc::clone)),
            Routed::Refused(reply) => Err(reply),
            Routed::Split(_) => Err(error_line(
                "CROSSSLOT",
                "Keys in request don't hash to the same slot",
            )),
            Routed::AnyNode | Routed::Myself(_) => Ok(self.lanes.clone()),
        }
    }

    /// In cluster mode, the error for a command that needs a connection of
    /// its own (sessions are not pinned to a node yet), or `None` to go on.
    #[cold]
    pub(super) fn refused_in_cluster(&self, req: &crate::codec::Request) -> Bytes {
        if req.name().eq_ignore_ascii_case(b"SELECT") {
            // Redis Cluster's own answer.
            return error_line("ERR", "SELECT is not allowed in cluster mode");
        }
        Error::NotInCluster(
            upper(req.name()),
            "MONITOR and connection flags (READONLY, CLIENT TRACKING, …) would need a connection to every node",
        )
        .to_resp()
    }
}

/// How a multi-key command whose keys span slots is split by primary, and
/// its replies merged back into the one its client expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Split {
    /// `MGET`: the values, in the client's key order.
    Mget,
    /// `MSET`: `+OK` once every primary said it.
    Mset,
    /// `DEL`, `UNLINK`, `EXISTS`, `TOUCH`: the sum of the counts.
    Sum,
    /// A command for every primary, sent to each as it is.
    Fanout(Fanout),
    /// `SCAN`: to the primary its cursor names ([`super::scan`]).
    Scan,
    /// `SCAN` on its way to one primary: its reply with respool's cursor.
    ScanFrom(ScanStep),
}

impl Split {
    /// The split for command `name`, if it has one.
    pub fn of(name: &[u8]) -> Option<Split> {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        if is(b"MGET") {
            Some(Split::Mget)
        } else if is(b"MSET") {
            Some(Split::Mset)
        } else if is(b"DEL") || is(b"UNLINK") || is(b"EXISTS") || is(b"TOUCH") {
            Some(Split::Sum)
        } else {
            None
        }
    }

    /// Arguments per key (a key, or a key and its value).
    fn step(self) -> usize {
        if self == Split::Mset {
            2
        } else {
            1
        }
    }

    /// The client's reply out of each primary's (`parts[i]` answers the
    /// keys at `positions[i]`, `keys` keys in all).
    fn merge(self, parts: &[Bytes], positions: &[Vec<usize>], keys: usize, protocol: u8) -> Bytes {
        if let Some(error) = parts.iter().find(|p| p.first() == Some(&b'-')) {
            return error.clone();
        }
        match self {
            Split::ScanFrom(step) => parts
                .first()
                .map_or_else(|| Error::ShuttingDown.to_resp(), |p| step.merge(p)),
            Split::Fanout(Fanout::LogicalAnd) => logical_and(parts),
            Split::Scan | Split::Fanout(Fanout::AllSucceeded | Fanout::Unsupported) => parts
                .first()
                .cloned()
                .unwrap_or_else(|| Bytes::from_static(b"+OK\r\n")),
            Split::Fanout(Fanout::Concat) => {
                let mut items = Vec::new();
                let mut count = 0;
                for part in parts {
                    let Some(elements) = crate::codec::Value::of_frame(part)
                        .ok()
                        .and_then(|v| v.elements())
                    else {
                        return part.clone();
                    };
                    count += elements.len();
                    // The elements' bytes: the part after its header.
                    let header = memchr::memchr(b'\n', part).map_or(0, |i| i + 1);
                    items.extend_from_slice(&part[header..]);
                }
                let mut out = format!("*{count}\r\n").into_bytes();
                out.extend_from_slice(&items);
                Bytes::from(out)
            }
            Split::Mset => Bytes::from_static(b"+OK\r\n"),
            Split::Sum | Split::Fanout(Fanout::Sum) => {
                let sum: i64 = parts
                    .iter()
                    .filter_map(|p| crate::codec::Value::of_frame(p).ok()?.int())
                    .sum();
                Bytes::from(format!(":{sum}\r\n"))
            }
            Split::Mget => {
                let mut values: Vec<Option<&[u8]>> = vec![None; keys];
                for (part, at) in parts.iter().zip(positions) {
                    let Some(elements) = crate::codec::Value::of_frame(part)
                        .ok()
                        .and_then(|v| v.elements())
                    else {
                        return error_line(
                            "ERR",
                            "a cluster node answered MGET with something other than an array",
                        );
                    };
                    for (value, &i) in elements.zip(at) {
                        values[i] = value.bytes();
                    }
                }
                let mut out = Vec::with_capacity(16 + keys * 16);
                out.extend_from_slice(format!("*{keys}\r\n").as_bytes());
                for value in values {
                    match value {
                        Some(v) => {
                            out.extend_from_slice(format!("${}\r\n", v.len()).as_bytes());
                            out.extend_from_slice(v);
                            out.extend_from_slice(b"\r\n");
                        }
                        None if protocol == 3 => out.extend_from_slice(b"_\r\n"),
                        None => out.extend_from_slice(b"$-1\r\n"),
                    }
                }
                Bytes::from(out)
            }
        }
    }
}

impl Client {
    /// Sends a multi-key command whose keys span slots as one command per
    /// slot, to their primaries in parallel, and answers its slot with the
    /// merged reply.
    /// The parts are queued on the primaries' lanes now, so the client's
    /// later requests reach each primary after them.
    pub(super) fn split(&mut self, req: crate::codec::Request, split: Split) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        if split == Split::Scan {
            return self.scan(req);
        }
        let args: Vec<&[u8]> = req.args().collect();
        if let Split::Fanout(_) = split {
            // The same command for every primary.
            let parts = (0..cluster.lanes.len() as u16)
                .map(|node| (node, req.raw().to_vec().into()))
                .collect();
            return self.send_parts(parts, Vec::new(), 0, split, 0);
        }
        let step = split.step();
        if args.len() < 1 + step || (args.len() - 1) % step != 0 {
            // A cluster checks the slots before the pairs (`MSET a 1 b`).
            return self.output.push_ready(error_line(
                "CROSSSLOT",
                "Keys in request don't hash to the same slot",
            ));
        }
        // Keys (with their values) by slot — a node refuses keys of two
        // slots even if it serves both — in the client's order.
        let mut groups: Vec<(u16, u16, Vec<usize>)> = Vec::new();
        for (k, at) in (1..args.len()).step_by(step).enumerate() {
            let slot = slot_of(args[at]);
            let Some(node) = cluster.slots.owner(slot) else {
                return self
                    .output
                    .push_ready(error_line("CLUSTERDOWN", "Hash slot not served"));
            };
            match groups.iter_mut().find(|(s, _, _)| *s == slot) {
                Some((_, _, keys)) => keys.push(k),
                None => groups.push((slot, node as u16, vec![k])),
            }
        }
        // Reads may be resent after a lost connection; writes never.
        let retry_safe = u64::from(
            args[0].eq_ignore_ascii_case(b"MGET") || args[0].eq_ignore_ascii_case(b"EXISTS"),
        );
        let parts = groups
            .iter()
            .map(|(_, node, keys)| {
                let mut part_args: Vec<&[u8]> = vec![args[0]];
                for &k in keys {
                    part_args.extend_from_slice(&args[1 + k * step..1 + (k + 1) * step]);
                }
                let raw = crate::codec::Request::from_args(&part_args)
                    .into_raw()
                    .freeze();
                (*node, raw)
            })
            .collect();
        let keys = (args.len() - 1) / step;
        let positions: Vec<Vec<usize>> = groups.into_iter().map(|(_, _, k)| k).collect();
        self.send_parts(parts, positions, keys, split, retry_safe);
    }

    /// Queues `parts` (a primary and the request for it) on the
    /// primaries' lanes, and answers the client's slot with their replies
    /// merged as `split` says once all have come.
    pub(super) fn send_parts(
        &mut self,
        parts: Vec<(u16, Bytes)>,
        positions: Vec<Vec<usize>>,
        keys: usize,
        split: Split,
        retry_safe: u64,
    ) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let inbox = crate::client::inbox::ReplyInbox::new(
            None,
            Arc::new(crate::client::roster::ReplyMemory::detached()),
        );
        let expected = parts.len();
        let mut sent = 0;
        for (part, (node, raw)) in parts.into_iter().enumerate() {
            let lane = cluster.lane(node).unwrap_or(&self.lane);
            let queued = lane.send(crate::pool::lane::LaneRequest {
                seq: part as u64,
                raw,
                count: 1,
                retry_safe,
                reply_to: inbox.sender(),
                redirects: 0,
                asking: false,
            });
            if queued.is_ok() {
                sent += 1;
            }
        }
        let protocol = self.protocol;
        let seq = self.output.open_shared_slot();
        let reply_to = self.output.sender();
        if sent < expected || expected == 0 {
            return reply_to.send(seq, 1, Error::ShuttingDown.to_resp());
        }
        tokio::spawn(async move {
            let mut arrived = Vec::new();
            while arrived.len() < expected {
                let mut more = Vec::new();
                std::future::poll_fn(|cx| inbox.poll_take(cx, &mut more)).await;
                arrived.extend(more);
            }
            arrived.sort_unstable_by_key(|d| d.seq);
            let parts: Vec<Bytes> = arrived.into_iter().map(|d| d.reply).collect();
            reply_to.send(seq, 1, split.merge(&parts, &positions, keys, protocol));
        });
    }
}

/// `agg_logical_and` (SCRIPT EXISTS): element by element, 1 where every
/// primary said 1.
fn logical_and(parts: &[Bytes]) -> Bytes {
    let mut all: Option<Vec<bool>> = None;
    for part in parts {
        let Some(elements) = crate::codec::Value::of_frame(part)
            .ok()
            .and_then(|v| v.elements())
        else {
            return part.clone();
        };
        let these: Vec<bool> = elements.map(|e| e.int() == Some(1)).collect();
        all = Some(match all {
            None => these,
            Some(so_far) if so_far.len() == these.len() => {
                so_far.iter().zip(&these).map(|(a, b)| *a && *b).collect()
            }
            Some(_) => {
                return error_line(
                    "ERR",
                    "cluster nodes answered SCRIPT EXISTS with arrays of different lengths",
                )
            }
        });
    }
    let all = all.unwrap_or_default();
    let mut out = format!("*{}\r\n", all.len()).into_bytes();
    for exists in all {
        out.extend_from_slice(if exists { b":1\r\n" } else { b":0\r\n" });
    }
    Bytes::from(out)
}
