//! Where a client's reads go with `--read-from prefer-replica|replica`.
//!
//! A read of data (see [`crate::command::reads_data`]) by a
//! client on respool's own identity goes to a replica that
//! [serves](ReplicaSet::serves) it: usable, and caught up with the client's
//! last write. The client keeps reading from the same replica while it
//! can, so its reads do not go back in time between replicas. Everything
//! else — writes, scripts, transactions and other sessions, reads of
//! clients logged in as another identity — goes to the primary.
//!
//! Read-your-writes (`--read-your-writes`, on by default): a write's
//! sequence number is noted when it is routed; until its slot is answered
//! the client's reads go to the primary (on the same connection as the
//! write, so after it), and once it is, the time is noted, and a replica
//! serves the client only once it has caught up to that time. Until one
//! has, the client reads from the primary, even with `--read-from
//! replica`.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::routing::Target;
use super::Client;
use crate::command::Command;
use crate::config::ReadFrom;
use crate::error::error_line;
use crate::pool::lane::LaneHandle;
use crate::topology::replicas::{Replica, ReplicaSet};

/// A client's reads from replicas.
pub(super) struct ReplicaReads {
    set: Arc<ReplicaSet>,
    /// The replica the client reads from, its lane, and the protocol of
    /// that lane.
    chosen: Option<(Arc<Replica>, LaneHandle, u8)>,
    /// The latest write whose answer has not been seen yet.
    write_pending: Option<u64>,
    /// When the client's last write was seen answered.
    written: Option<std::time::Instant>,
}

impl ReplicaReads {
    pub fn new(set: Arc<ReplicaSet>) -> ReplicaReads {
        ReplicaReads {
            set,
            chosen: None,
            write_pending: None,
            written: None,
        }
    }

    /// The chosen replica's lane, for a run sent to a replica.
    pub fn lane(&self) -> Option<&LaneHandle> {
        self.chosen.as_ref().map(|(_, lane, _)| lane)
    }

    /// Counts `n` reads sent to the chosen replica.
    pub fn count(&self, n: u32) {
        if let Some((replica, _, _)) = &self.chosen {
            for _ in 0..n {
                replica.count_read();
            }
        }
    }

    /// A request (`retry_safe`: a read) went to the primary as slot `seq`.
    pub fn routed_to_primary(&mut self, seq: u64, retry_safe: bool) {
        if !retry_safe && self.set.settings.read_your_writes {
            self.write_pending = Some(seq);
        }
    }

    /// A session ended: what it ran may have written.
    pub fn session_ended(&mut self) {
        if self.set.settings.read_your_writes {
            self.written = Some(std::time::Instant::now());
        }
    }
}

impl Client {
    /// Where a shared request goes when replicas may take reads (`reads`
    /// is set): a replica, the primary, or (with `--read-from replica` and
    /// none usable) an error for the client. `reads_data`: it is a read a
    /// replica can answer; `seq` is the slot it will get.
    pub(super) fn read_target(
        &mut self,
        command: Command,
        reads_data: bool,
        seq: u64,
    ) -> Result<Target, Bytes> {
        let own_identity = Arc::ptr_eq(&self.lanes, &self.shared.router.initial());
        let protocol = self.protocol;
        let Some(reads) = &mut self.reads else {
            return Ok(Target::Primary);
        };
        if !reads_data || !own_identity {
            reads.routed_to_primary(seq, command.retry_safe);
            return Ok(Target::Primary);
        }
        if let Some(write) = reads.write_pending {
            if !self.output.is_answered(write) {
                reads
                    .set
                    .reads_on_primary
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(Target::Primary);
            }
            reads.write_pending = None;
            reads.written = Some(Instant::now().into_std());
        }
        let written = reads.written;
        let keep = reads
            .chosen
            .as_ref()
            .is_some_and(|(replica, _, p)| *p == protocol && reads.set.serves(replica, written));
        if !keep {
            reads.chosen = reads.set.choose(written).map(|replica| {
                let lane = replica.lane(protocol);
                (replica, lane, protocol)
            });
        }
        if reads.chosen.is_some() {
            return Ok(Target::Replica);
        }
        // Read-your-writes sends the client to the primary until a replica
        // has caught up, whatever `--read-from` says.
        let catching_up = written.is_some() && reads.set.choose(None).is_some();
        if !catching_up && reads.set.settings.read_from == ReadFrom::Replica {
            return Err(error_line(
                "ERR",
                "no replica can serve this read (--read-from replica): none is up and within --max-replica-lag; INFO respool lists the replicas, and --read-from prefer-replica falls back to the primary",
            ));
        }
        reads
            .set
            .reads_on_primary
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Target::Primary)
    }
}
