//! A shard channel subscription that follows its slot to another primary.
//!
//! In a cluster, `SSUBSCRIBE` holds a connection to the primary serving the
//! channel's slot. When the slot moves (resharding), that primary ends the
//! subscription itself: it sends `sunsubscribe <channel>` unasked. A client
//! of respool sees one node owning every slot, so nothing should change
//! for it: when the session held nothing else, respool waits for the map
//! to name the slot's new owner, takes a connection there and subscribes
//! again, swallowing the unasked unsubscribe and the new confirmation. The
//! client's later requests wait meanwhile, as they wait for any session.
//!
//! When the session holds more (channels of other slots, which stay
//! where they are, or anything else), one connection cannot serve both
//! primaries: the client gets the unsubscribe as Redis sent it, which is
//! what a client connected to the cluster directly sees. So does a client
//! whose channel's new owner is not known within `--hold-timeout`, or
//! refuses it.

use bytes::Bytes;

use super::{Client, Phase, Wait};
use crate::codec::Request;
use crate::command::{Command, Stateful, SubKind};
use crate::error::Error;
use crate::pool::PinnedConn;
use crate::router::slot::slot_of;

/// A shard channel Redis unsubscribed the client from, and the frame that
/// said so (in the client's protocol).
pub(super) type MovedShard = (Vec<u8>, Bytes);

impl Client {
    /// Redis ended the subscription to `channel` unasked.
    pub(super) fn on_shard_unsubscribed(&mut self, channel: Vec<u8>, frame: Bytes) {
        if self.cluster.is_some() {
            self.moved_shards.push((channel, frame));
        } else {
            self.tell_unsubscribed(std::iter::once(frame));
        }
    }

    /// Once a read's events are handled: follows the channels whose slot
    /// moved, or tells the client they were unsubscribed.
    pub(super) fn follow_moved_shards(&mut self) {
        if self.moved_shards.is_empty() {
            return;
        }
        // Redis unsubscribes every channel of a slot it gives away, one
        // frame each: those still to come may be in the next read.
        let more_to_come = self.session.as_ref().is_some_and(|session| {
            session.shard_channels().any(|held| {
                let slot = slot_of(held);
                self.moved_shards.iter().any(|(ch, _)| slot_of(ch) == slot)
            })
        });
        if more_to_come {
            return;
        }
        let moved = std::mem::take(&mut self.moved_shards);
        let alone = matches!(self.phase, Phase::Reading)
            && self
                .session
                .as_ref()
                .is_some_and(|s| s.finished() && !s.wants_write());
        let (Some(map), true) = (self.shared.router.cluster().cloned(), alone) else {
            tracing::info!(
                channels = moved.len(),
                "shard channels moved with their slot away from a connection that holds more; the client is told they were unsubscribed"
            );
            return self.tell_unsubscribed(moved.into_iter().map(|(_, frame)| frame));
        };
        let Some(session) = self.session.take() else {
            return;
        };
        let from = session.origin().addr();
        let identity = session.origin().endpoint().identity.clone();
        session.release();
        self.session_over();
        let first = &moved[0].0;
        tracing::info!(from = %from, "a shard channel's slot moved; subscribing again on its new primary");
        let new_owner = map.new_owner(
            slot_of(first),
            from,
            identity,
            self.shared.process.live.retry.hold_timeout(),
        );
        let req = Request::from_args(&[&b"SSUBSCRIBE"[..], first]);
        let command = Command::dedicated(Stateful::Subscribe(SubKind::Shard));
        self.following = Some(moved);
        self.park(req, command, Some(Wait::NewOwner(Box::pin(new_owner))));
        self.publish_session();
    }

    /// The wait for the moved channel's new primary ended: a connection
    /// there is checked out next, or the client learns it was
    /// unsubscribed.
    pub(super) fn on_new_owner(&mut self, lanes: Option<std::sync::Arc<crate::pool::LaneSet>>) {
        match (lanes, &mut self.phase) {
            (Some(lanes), Phase::Parked(parked)) => {
                parked.wait = Some(Wait::Checkout(Box::pin(lanes.checkout_pinned())));
                self.session_origin = Some(lanes);
            }
            _ => {
                tracing::info!(
                    "no new primary for a moved shard channel within --hold-timeout; the client is told it was unsubscribed"
                );
                self.end_following(None);
            }
        }
    }

    /// The checkout for following moved channels ended: they are
    /// subscribed again on the new connection, or the client learns it
    /// was unsubscribed.
    pub(super) fn on_follow_checkout(&mut self, result: Result<PinnedConn, Error>) {
        match result {
            Ok(conn) => self.end_following(Some(conn)),
            Err(e) => {
                tracing::warn!(error = %e, "no connection to a moved shard channel's new primary; the client is told it was unsubscribed");
                self.end_following(None);
            }
        }
    }

    /// Ends a follow: on `conn` (subscribing again there), or by telling
    /// the client. The client's requests are read again.
    fn end_following(&mut self, conn: Option<PinnedConn>) {
        let moved = self.following.take().unwrap_or_default();
        if let Phase::Parked(parked) = std::mem::replace(&mut self.phase, Phase::Reading) {
            if parked.drain_after {
                self.phase = Phase::Draining;
            }
        }
        let origin = self.session_origin.take();
        let (Some(conn), Some(origin)) = (conn, origin) else {
            return self.tell_unsubscribed(moved.into_iter().map(|(_, frame)| frame));
        };
        let mut session = self.new_session(conn, origin);
        for (channel, frame) in moved {
            session.resubscribe_shard(&channel, frame);
        }
        self.session = Some(session);
        self.publish_session();
    }

    /// Hands the client the unsubscribes Redis sent.
    fn tell_unsubscribed(&mut self, frames: impl Iterator<Item = Bytes>) {
        self.output.collect_ready();
        for frame in frames {
            self.output.push_out_of_band(frame);
        }
    }
}
