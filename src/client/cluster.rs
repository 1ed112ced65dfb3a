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

use std::sync::Arc;

use bytes::Bytes;

use super::routing::Target;
use super::Client;
use crate::codec::RequestRef;
use crate::error::{error_line, Error};
use crate::pool::lane::LaneHandle;
use crate::router::keys::Placement;
use crate::router::slot::slot_of;
use crate::topology::cluster::{ClusterMap, SlotMap};

/// A client's view of the slot map.
pub(super) struct ClusterRoutes {
    map: Arc<ClusterMap>,
    /// The version `slots` and `lanes` are for.
    version: u64,
    slots: Arc<SlotMap>,
    /// Each primary's shared lane for `protocol`, by its index in `slots`.
    lanes: Vec<LaneHandle>,
    protocol: u8,
}

impl ClusterRoutes {
    pub fn new(map: Arc<ClusterMap>) -> ClusterRoutes {
        let (slots, version) = map.current();
        let mut routes = ClusterRoutes {
            map,
            version,
            slots,
            lanes: Vec::new(),
            protocol: 2,
        };
        routes.take_lanes();
        routes
    }

    /// Whether the lanes must be taken again: the client switched
    /// protocol, or the map moved and none of the client's requests is on
    /// a lane (`pending`: how many are).
    #[inline]
    pub fn is_stale(&self, protocol: u8, pending: usize) -> bool {
        protocol != self.protocol || (pending == 0 && self.map.version() != self.version)
    }

    /// Takes the current map and each primary's lane for `protocol`.
    pub fn refresh(&mut self, protocol: u8) {
        let (slots, version) = self.map.current();
        self.slots = slots;
        self.version = version;
        self.protocol = protocol;
        self.take_lanes();
    }

    fn take_lanes(&mut self) {
        self.lanes = self
            .slots
            .nodes
            .iter()
            .map(|n| n.lanes.lane(self.protocol))
            .collect();
    }

    /// The lane of primary `i` of the version routed by.
    #[inline]
    pub fn lane(&self, i: u16) -> Option<&LaneHandle> {
        self.lanes.get(usize::from(i))
    }

    /// Where `req` goes: a primary (its index), any node (`None`), or
    /// nowhere, with the error line the client gets.
    #[inline]
    pub fn place(&self, req: RequestRef<'_>) -> Result<Option<u16>, Bytes> {
        let Some(keys) = self.map.keys().filter(|_| self.version > 0) else {
            return Err(Error::NoSlotMap(self.map.why_unknown()).to_resp());
        };
        match keys.place(req, slot_of) {
            Placement::Slot(slot) => match self.slots.owner(slot) {
                Some(i) => Ok(Some(i as u16)),
                // Redis's words for a slot no primary serves.
                None => Err(error_line("CLUSTERDOWN", "Hash slot not served")),
            },
            Placement::AnyNode => Ok(None),
            Placement::CrossSlot => Err(error_line(
                "CROSSSLOT",
                "Keys in request don't hash to the same slot",
            )),
            Placement::Fanout => Err(Error::NotInCluster(
                upper(req.name()),
                "it goes to every primary (Redis's request_policy tip), which respool does not do yet; ask each node directly",
            )
            .to_resp()),
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
    pub(super) fn target_primary(&mut self, placed: Result<Option<u16>, Bytes>) -> bool {
        match placed {
            Ok(Some(node)) => {
                let target = Target::Node(node);
                if self.run_target != target {
                    self.flush_run();
                    self.run_target = target;
                }
                true
            }
            // Any node: the run's own.
            Ok(None) => true,
            Err(reply) => {
                self.output.push_ready(reply);
                false
            }
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
            "transactions, WATCH, blocking commands, (un)subscribing, MONITOR, connection flags and SCRIPT/FUNCTION KILL need a connection to one node, which respool does not pin in cluster mode yet",
        )
        .to_resp()
    }
}
