//! A client's way into and out of a pinned session: parking the request
//! that needs one until the client's earlier requests are answered,
//! checking a dedicated connection out, following what arrives on it, and
//! giving it back once the connection state has ended.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::routing::Admission;
use super::session::{Session, SessionEvent};
use super::{Client, Parked, Phase, Wait};
use crate::command::{Local, Route, Stateful};
use crate::error::Error;
use crate::pool::connection::Broken;
use crate::pool::{LaneSet, PinnedConn};

impl Client {
    /// Moves a parked request on once what it waits for has happened.
    pub(super) fn unpark(&mut self) {
        let parked = match std::mem::replace(&mut self.phase, Phase::Reading) {
            Phase::Parked(parked) if parked.wait.is_none() => parked,
            phase => {
                self.phase = phase;
                return;
            }
        };
        let Parked {
            req,
            command,
            drain_after,
            ..
        } = parked;
        if drain_after {
            self.phase = Phase::Draining;
        }
        match command.route {
            Route::Local(Local::Reset) => match self.session.take() {
                Some(session) if !session.idle() => {
                    self.session = Some(session);
                    self.park(req, command, None);
                }
                session => {
                    if let Some(session) = session {
                        session.release();
                        self.session_over();
                        self.publish_session();
                    }
                    self.local(Local::Reset, req, command);
                }
            },
            Route::Local(local @ (Local::Hello | Local::Auth)) => self.local(local, req, command),
            Route::Dedicated(state) if self.session.is_some() => {
                self.dedicated(state, req, command)
            }
            // Needs a session: a command for one (or a cluster
            // transaction's first keyed command, or its EXEC).
            Route::Dedicated(_) | Route::Shared
                if self.session.is_none()
                    && (command.route != Route::Shared || self.cluster_tx.is_some()) =>
            {
                if self.output.shared_pending() > 0 {
                    self.park(req, command, None);
                } else {
                    self.sync_cluster();
                    let lanes = match self.session_lanes(&req) {
                        Ok(lanes) => lanes,
                        Err(reply) => return self.output.push_ready(reply),
                    };
                    let checkout = lanes.checkout_pinned();
                    self.session_origin = Some(lanes);
                    self.park(req, command, Some(Wait::Checkout(Box::pin(checkout))));
                }
            }
            _ => self.dispatch(req, Admission::Command(command)),
        }
    }

    /// The checkout a parked request waited for ended.
    pub(super) fn on_checkout(&mut self, result: Result<PinnedConn, Error>) {
        if self.following.is_some() {
            return self.on_follow_checkout(result);
        }
        match result {
            Ok(conn) => {
                let origin = self
                    .session_origin
                    .take()
                    .unwrap_or_else(|| self.lanes.clone());
                let mut session = self.new_session(conn, origin);
                if let Some(tx) = self.cluster_tx.take() {
                    // Its MULTI and keyless commands were answered by
                    // respool: now they run, before the parked request.
                    session.replay_transaction(tx.held());
                    if tx.aborted() {
                        session.abort_transaction_on_exec();
                    }
                }
                self.session = Some(session);
                // The parked request goes out on the new session.
                self.unpark();
                self.publish_session();
            }
            Err(e) => {
                if let Phase::Parked(parked) = std::mem::replace(&mut self.phase, Phase::Reading) {
                    // A cluster transaction fails with the command that
                    // would have opened its session; its EXEC ends it.
                    if parked.command.route == Route::Dedicated(Stateful::Exec) {
                        self.end_open_transaction();
                    }
                    self.abort_open_transaction();
                    if parked.drain_after {
                        self.phase = Phase::Draining;
                    }
                    self.output.push_ready(e.to_resp());
                }
            }
        }
    }

    /// A session on `conn`, checked out of `origin`'s pool, speaking the
    /// client's protocol.
    pub(super) fn new_session(&self, conn: PinnedConn, origin: Arc<LaneSet>) -> Session {
        let mut session = Session::new(conn, origin, self.shared.config.pool.read_buffer_size);
        if self.protocol == 3 {
            session.switch_protocol(true);
        }
        session
    }

    /// The session's socket, both ways: ready when something was read or
    /// written (or the session broke).
    pub(super) fn poll_session(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(session) = &mut self.session else {
            return false;
        };
        let mut events = std::mem::take(&mut self.events);
        let read = session.poll_read(cx, &mut events);
        let progress = match read {
            Poll::Ready(result) => {
                self.on_session_events(&mut events, result);
                true
            }
            Poll::Pending if session.wants_write() => match session.poll_write(cx) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(broken)) => {
                    self.session_failed(broken);
                    true
                }
                Poll::Pending => false,
            },
            Poll::Pending => false,
        };
        self.events = events;
        progress
    }

    fn on_session_events(&mut self, events: &mut Vec<SessionEvent>, result: Result<(), Broken>) {
        for event in events.drain(..) {
            match event {
                SessionEvent::Reply(seq, reply) => {
                    self.output.budget().add(reply.len());
                    self.output.resolve(seq, reply);
                    self.output.collect_ready();
                }
                SessionEvent::OutOfBand(frame) => {
                    // It came before the replies still outstanding.
                    self.output.collect_ready();
                    self.output.push_out_of_band(frame);
                }
                SessionEvent::ShardUnsubscribed { channel, frame } => {
                    self.on_shard_unsubscribed(channel, frame)
                }
                SessionEvent::Nothing => {}
            }
        }
        if result.is_ok() {
            self.follow_moved_shards();
        } else {
            self.moved_shards.clear();
        }
        if let Some(identity) = self.session.as_mut().and_then(Session::take_login) {
            self.logged_in_on_session(identity);
        }
        match result {
            Err(broken) => self.session_failed(broken),
            Ok(()) => self.maybe_release_session(),
        }
        self.publish_session();
    }

    /// Gives the session back once its connection state has ended.
    fn maybe_release_session(&mut self) {
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.finished() && !s.wants_write())
        {
            if let Some(session) = self.session.take() {
                session.release();
                self.session_over();
            }
        }
    }

    /// A session ended: for read-your-writes, whatever it ran may have
    /// written.
    pub(super) fn session_over(&mut self) {
        if let Some(reads) = &mut self.reads {
            reads.session_ended();
        }
    }

    /// Writes what waits for the session's socket.
    pub(super) fn flush_session(&mut self, cx: &mut Context<'_>) {
        let Some(session) = &mut self.session else {
            return;
        };
        if let Poll::Ready(Err(broken)) = session.poll_write(cx) {
            self.session_failed(broken);
        }
    }

    /// The session's deadline passed: a late reply, or a look at whether
    /// the primary moved.
    pub(super) fn session_deadline_passed(&mut self) {
        let Some(session) = &mut self.session else {
            return;
        };
        if let Err(broken) = session.on_deadline(tokio::time::Instant::now()) {
            self.session_failed(broken);
        }
    }

    fn session_failed(&mut self, broken: Broken) {
        let error = match broken {
            Broken::Lost(why) => {
                tracing::warn!(reason = %why, "pinned upstream connection lost");
                Error::LostAfterWrite
            }
            Broken::Timeout => Error::Timeout {
                addr: self.lanes.addr().clone(),
                after: self.lanes.timeout(),
            },
            Broken::Moved(to) => {
                tracing::info!(to = %to, "ending a pinned session on a primary that moved");
                Error::PrimaryMoved { to: to.into() }
            }
            Broken::BadReply(why) => {
                tracing::warn!(reason = %why, "pinned upstream connection sent what respool cannot follow; closing it and the client");
                Error::UpstreamProtocol {
                    addr: self.lanes.addr().clone(),
                    detail: why.into(),
                }
            }
        };
        self.fail_session(error.to_resp());
    }

    /// The session's connection is gone and with it the client's connection
    /// state: fail what waits on it and close the client, as Redis closing
    /// the connection would.
    fn fail_session(&mut self, error: Bytes) {
        if let Some(session) = self.session.take() {
            session.discard();
            self.session_over();
        }
        if !self.output.fail_waiting(&error) {
            // Nothing was waiting (CLIENT REPLY OFF, a subscriber): the
            // client still learns why it is closed, not just that it is.
            self.output.push_ready(error);
        }
        self.phase = Phase::Draining;
        self.publish_session();
    }

    /// Gives the session back when the client goes away.
    pub(super) fn end_session(&mut self) {
        if let Some(session) = self.session.take() {
            session.release();
        }
    }
}
