//! Where each of a client's requests goes: the run for its shared lane, its
//! pinned session, respool itself, or a refusal.

use bytes::Bytes;

use super::cluster::Routed;
use super::{local, Client, Phase};
use crate::codec::{Decoded, ProtocolError, Request, RequestRef, RequestSpan};
use crate::command::{classify, Command, Route, Stateful};
use crate::error::{error_line, Error};
use crate::ops::commands::{command_id, short_id, short_word, SHORT};
use crate::pool::lane::LaneRequest;

/// Where a run of shared requests goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// The client's own lane set: the primary (the anchor primary in
    /// cluster mode).
    Primary,
    /// The replica the client reads from (`--read-from`).
    Replica,
    /// A cluster primary, by its index in the client's slot map.
    Node(u16),
}

/// What becomes of a request, before anything is done with it.
#[derive(Clone, Copy)]
pub(super) enum Admission {
    /// Refused: the client has not authenticated.
    NoAuth,
    /// Refused by `--deny-command`.
    Denied,
    Command(Command),
}

impl Client {
    /// Routes buffered requests and moves a parked one on, until the input
    /// is used up or a parked request must wait for an event; then hands
    /// the collected run to the lane.
    pub(super) fn advance(&mut self) {
        loop {
            self.unpark();
            if !matches!(self.phase, Phase::Reading) {
                break;
            }
            self.process_input();
            if !matches!(self.phase, Phase::Parked(_)) {
                break;
            }
        }
        self.flush_run();
    }

    /// Decodes and routes buffered requests while the in-flight limit
    /// allows and the client is being read.
    fn process_input(&mut self) {
        while self.can_read() {
            match self.input.decode() {
                Ok(Some(Decoded::Request(span))) => self.route_in_place(span),
                Ok(Some(Decoded::Inline { consumed, request })) => {
                    self.flush_run();
                    self.input.skip(consumed);
                    self.route(request);
                }
                Ok(Some(Decoded::Nothing { consumed })) => {
                    self.flush_run();
                    self.input.skip(consumed);
                }
                Ok(None) => break,
                Err(e) => self.protocol_error(e),
            }
        }
    }

    /// Drops what the client sent after the requests already routed, which
    /// (the run among them) still go on: they have their slots.
    pub(super) fn discard_input(&mut self) {
        self.flush_run();
        self.input.discard();
    }

    fn protocol_error(&mut self, e: ProtocolError) {
        self.phase = Phase::Draining;
        self.discard_input();
        if e == ProtocolError::Http {
            return;
        }
        tracing::debug!(error = %e, "client protocol error; closing its connection");
        self.output.push_ready(Error::ClientProtocol(e).to_resp());
    }

    /// Counts the request by its command. A client usually sends the same
    /// few commands: the last name's id is kept, so that most requests
    /// cost one word compared, not a lookup.
    #[inline]
    fn count_command(&self, req: RequestRef<'_>) {
        let stats = &self.shared.stats;
        let len = req.name().len();
        let Some(word) = short_word(req.name_onwards(), len) else {
            return stats.commands.count(req.name());
        };
        let (last_word, last) = self.last_command.get();
        let id = if last_word == word && last >> 16 == len as u32 {
            last as u16
        } else {
            let id = short_id(word, len);
            self.last_command
                .set((word, u32::from(id) | (len as u32) << 16));
            id
        };
        stats.commands.add(id);
    }

    /// The id of the command of `req`, the request
    /// [`Client::count_command`] counted last: a short name's is the one
    /// it kept (it keeps every short name's), a longer one's is looked up.
    #[inline(always)]
    fn counted_command_id(&self, req: RequestRef<'_>) -> u16 {
        if req.name_len() <= SHORT {
            self.last_command.get().1 as u16
        } else {
            command_id(req.name())
        }
    }

    /// What becomes of a request, before anything is done with it.
    fn admit(&self, req: RequestRef<'_>) -> Admission {
        // Counted by command; the total is their sum.
        self.count_command(req);
        let settings = self.settings();
        let refused = || {
            // Rare: the id is looked up again rather than kept live.
            let command = command_id(req.name());
            self.shared.stats.command_errors.add(command);
        };
        if !self.authenticated && !local::allowed_before_auth(req) {
            refused();
            Admission::NoAuth
        } else if settings.deny.denies(req) {
            refused();
            Admission::Denied
        } else {
            Admission::Command(classify(req, self.lanes.endpoint().db))
        }
    }

    /// Routes the request `span` found right after the run being
    /// collected. The common case — another request for the shared lane —
    /// only lengthens the run: the request is neither split off nor copied,
    /// and the whole run leaves the read buffer as one piece.
    #[inline]
    fn route_in_place(&mut self, span: RequestSpan) {
        let req = span.view(self.input.after_run());
        let admission = self.admit(req);
        let command = match admission {
            Admission::Command(c)
                if c.route == Route::Shared
                    && self.session.is_none()
                    && self
                        .shared
                        .process
                        .roster
                        .paused_for(!c.retry_safe)
                        .is_none() =>
            {
                c
            }
            _ => {
                self.flush_run();
                let req = span.split_off(self.input.buf_mut());
                self.dispatch(req, admission);
                return;
            }
        };
        // One test on the path of a single upstream: whether runs go
        // anywhere but the client's own lane (replicas, cluster primaries).
        if self.routes_runs {
            // In front of a cluster most requests have one key, for the
            // primary of the run being collected: they join it here.
            let node = self.node_of_key(req);
            let joins = node.is_some_and(|node| self.run_target == Target::Node(node));
            if !joins && !self.target_elsewhere(span, command, node) {
                return;
            }
        }
        let seq = self.output.open_shared_slot();
        if !self.input.extend_run(seq, span.len(), command.retry_safe) {
            // The run is full: it goes, and this request starts the next.
            self.flush_run();
            self.input.extend_run(seq, span.len(), command.retry_safe);
        }
    }

    /// In front of a cluster, the primary serving the key of `req` (the
    /// request just admitted) if it is a command of one key at a fixed
    /// place and its slot has a primary, and the map routed by is current;
    /// else `None`. Inlined and calling nothing: no registers to save.
    #[inline(always)]
    fn node_of_key(&self, req: RequestRef<'_>) -> Option<u16> {
        let cluster = self.cluster.as_ref()?;
        if self.cluster_tx.is_some()
            || cluster.is_stale(self.protocol, self.output.shared_pending())
        {
            return None;
        }
        cluster.node_of_key(req, self.counted_command_id(req))
    }

    /// Decides where the shared request `span` goes with replicas taking
    /// reads or in front of a cluster (`node`: [`Client::node_of_key`]'s
    /// answer), ending the run if it goes elsewhere; `false` if it was
    /// answered or split (and taken out of the buffer) instead. Out of
    /// line, so that the path of one upstream stays as short as it was.
    #[inline(never)]
    fn target_elsewhere(&mut self, span: RequestSpan, command: Command, node: Option<u16>) -> bool {
        if self.cluster.is_some() {
            return match node {
                Some(node) => {
                    self.flush_run();
                    self.run_target = Target::Node(node);
                    true
                }
                None => self.route_in_cluster(span, command),
            };
        }
        self.target_replica(span, command)
    }

    /// [`Client::target_elsewhere`] with replicas taking reads.
    #[inline(never)]
    fn target_replica(&mut self, span: RequestSpan, command: Command) -> bool {
        if !self.target_run(
            command,
            command.retry_safe && crate::command::reads_data(span.view(self.input.after_run())),
        ) {
            // No replica may take it: the client is told so.
            self.flush_run();
            let _ = span.split_off(self.input.buf_mut());
            return false;
        }
        true
    }

    /// Decides which primary the shared request `span` goes to, ending the
    /// run if it goes elsewhere; `false` if it was answered or split (and
    /// taken out of the buffer) instead. For a request without one key at a
    /// fixed place, or whose slot has no primary, or with a map to take
    /// first, or a transaction waiting for its first key.
    fn route_in_cluster(&mut self, span: RequestSpan, command: Command) -> bool {
        if self.cluster_tx.is_some() {
            // A transaction waiting for its first key takes it.
            self.flush_run();
            let req = span.split_off(self.input.buf_mut());
            self.queue_in_transaction(req, command);
            return false;
        }
        self.sync_cluster();
        let req = span.view(self.input.after_run());
        let routed = match &self.cluster {
            Some(cluster) => cluster.place(req, self.counted_command_id(req)),
            None => Routed::AnyNode,
        };
        if let Routed::Split(split) = routed {
            self.flush_run();
            let req = span.split_off(self.input.buf_mut());
            self.split(req, split);
            return false;
        }
        if !self.target_primary(routed) {
            self.flush_run();
            let _ = span.split_off(self.input.buf_mut());
            return false;
        }
        true
    }

    /// Routes a request that is not part of the read buffer any more (an
    /// inline command, a request that waited).
    pub(super) fn route(&mut self, req: Request) {
        let admission = self.admit(req.view());
        self.dispatch(req, admission);
    }

    /// Sends a request where its admission says.
    pub(super) fn dispatch(&mut self, req: Request, admission: Admission) {
        let command = match admission {
            Admission::NoAuth => {
                let reply = if req.name().eq_ignore_ascii_case(b"EXEC") {
                    // Redis words any refusal of EXEC as an EXECABORT.
                    error_line(
                        "EXECABORT",
                        "Transaction discarded because of: NOAUTH Authentication required.",
                    )
                } else {
                    error_line("NOAUTH", "Authentication required.")
                };
                self.output.push_ready(reply);
                return;
            }
            Admission::Denied => return self.deny(&req),
            Admission::Command(command) => command,
        };
        // Whatever this request does (it may even switch lanes), the shared
        // requests before it are on their way first.
        self.flush_run();
        if self.cluster.is_some() {
            if let Some(req) = self.in_cluster_session(req, command) {
                return self.dispatch_routed(req, command);
            }
            return;
        }
        self.dispatch_routed(req, command);
    }

    /// In cluster mode, what a transaction or session makes of a request
    /// first; the request back if it goes on as usual.
    fn in_cluster_session(&mut self, req: Request, command: Command) -> Option<Request> {
        if self.session.is_none() {
            if self.cluster_tx.is_some() {
                self.queue_in_transaction(req, command);
                return None;
            }
            if command.route == Route::Dedicated(Stateful::Multi) {
                self.open_transaction();
                return None;
            }
        } else if matches!(command.route, Route::Shared | Route::Dedicated(_)) {
            if let Some(reply) = self.off_session_node(&req) {
                self.output.push_ready(reply);
                return None;
            }
        }
        // Blocking commands, subscriptions and WATCH get a session on the
        // node of their key (any node for channels and patterns); EXEC,
        // DISCARD and UNWATCH without one are answered here.
        let served = match command.route {
            Route::Dedicated(
                Stateful::Multi
                | Stateful::Exec
                | Stateful::Discard
                | Stateful::Watch
                | Stateful::Unwatch
                | Stateful::Blocking
                | Stateful::Subscribe(_)
                | Stateful::Unsubscribe(_),
            )
            | Route::Urgent => true,
            Route::Dedicated(_) => false,
            _ => true,
        };
        if !served {
            let reply = self.refused_in_cluster(&req);
            self.output.push_ready(reply);
            return None;
        }
        Some(req)
    }

    /// Sends a request where its route says, once paused clients may go.
    fn dispatch_routed(&mut self, req: Request, command: Command) {
        let req = match command.route {
            Route::Shared | Route::Dedicated(_) => match self.held_by_pause(req, command) {
                Some(req) => req,
                None => return,
            },
            _ => req,
        };
        match command.route {
            Route::Shared => self.forward(req, command.retry_safe),
            Route::Local(local) => self.local(local, req, command),
            Route::Dedicated(state) => self.dedicated(state, req, command),
            Route::Urgent => self.urgent(req),
            Route::Denied => self.deny(&req),
            Route::Attack => self.drop_attacker(),
        }
    }

    /// Like Redis: drops the connection without a word.
    pub(super) fn drop_attacker(&mut self) {
        tracing::warn!(
            "possible cross-protocol attack (HTTP request on the proxy port); connection closed"
        );
        self.protocol_error(ProtocolError::Http);
        self.output.clear();
    }

    /// Sends a request that needs no connection state: on the pinned
    /// session if there is one, else to the lane.
    pub(super) fn forward(&mut self, req: Request, retry_safe: bool) {
        match &mut self.session {
            Some(session) => {
                let seq = self.output.next_seq();
                if session.send(&req, seq, None) {
                    self.output.open_slot();
                }
            }
            None => self.send_shared(req, retry_safe),
        }
    }

    /// `SCRIPT KILL`, `FUNCTION KILL`: on a connection of their own, so
    /// that they reach Redis while the script they stop holds the lanes.
    /// The reply fills the request's slot like a lane's would. In cluster
    /// mode every primary is asked, each on a connection of its own, and
    /// one that stopped something answers (Redis's `one_succeeded` tip):
    /// else the first error (`-NOTBUSY` when nothing ran anywhere).
    fn urgent(&mut self, req: Request) {
        let seq = self.output.open_shared_slot();
        let reply_to = self.output.sender();
        let raw = req.into_raw().freeze();
        let Some(cluster) = &self.cluster else {
            let ask = self.lanes.urgent(raw);
            tokio::spawn(async move { reply_to.send(seq, 1, ask.await) });
            return;
        };
        let asks: Vec<_> = cluster
            .primaries()
            .map(|lanes| tokio::spawn(lanes.urgent(raw.clone())))
            .collect();
        tokio::spawn(async move {
            let mut first_error = None;
            for ask in asks {
                match ask.await {
                    Ok(reply) if !matches!(reply.first(), Some(b'-' | b'!')) => {
                        return reply_to.send(seq, 1, reply);
                    }
                    Ok(reply) => {
                        first_error.get_or_insert(reply);
                    }
                    Err(_) => {}
                }
            }
            let reply = first_error.unwrap_or_else(|| Error::ShuttingDown.to_resp());
            reply_to.send(seq, 1, reply);
        });
    }

    /// Sends one request that is not in the read buffer to the lane on its
    /// own.
    fn send_shared(&mut self, req: Request, retry_safe: bool) {
        // Outside a run, it goes to the primary: the run being collected
        // (flushed before this) decided where reads go.
        self.flush_run();
        self.run_target = Target::Primary;
        if self.cluster.is_some() {
            self.sync_cluster();
            let routed = match &self.cluster {
                Some(cluster) => cluster.place(req.view(), command_id(req.name())),
                None => Routed::AnyNode,
            };
            if let Routed::Split(split) = routed {
                return self.split(req, split);
            }
            if !self.target_primary(routed) {
                return;
            }
        }
        let seq = self.output.open_shared_slot();
        if let Some(reads) = &mut self.reads {
            reads.routed_to_primary(seq, retry_safe);
        }
        self.hand_to_lane(seq, req.into_raw().freeze(), 1, u64::from(retry_safe));
    }

    /// Decides where a shared request goes when replicas may take reads,
    /// ending the run being collected if it goes elsewhere; `false` (with
    /// the client's error answered) if nothing may take it.
    #[cold]
    fn target_run(&mut self, command: Command, reads_data: bool) -> bool {
        let seq = self.output.next_seq();
        match self.read_target(command, reads_data, seq) {
            Ok(target) => {
                if target != self.run_target {
                    self.flush_run();
                    self.run_target = target;
                }
                true
            }
            Err(reply) => {
                self.output.push_ready(reply);
                false
            }
        }
    }

    /// Hands the collected run of shared requests to its lane.
    #[inline]
    pub(super) fn flush_run(&mut self) {
        if let Some((run, raw)) = self.input.take_run() {
            self.hand_to_lane(run.seq, raw, run.count, run.retry_safe);
        }
    }

    fn hand_to_lane(&mut self, seq: u64, raw: Bytes, count: u32, retry_safe: u64) {
        let lane = match (&self.reads, self.run_target) {
            (_, Target::Primary) => &self.lane,
            (Some(reads), Target::Replica) => {
                reads.count(count);
                reads.lane().unwrap_or(&self.lane)
            }
            (_, Target::Node(i)) => self
                .cluster
                .as_ref()
                .and_then(|c| c.lane(i))
                .unwrap_or(&self.lane),
            (None, Target::Replica) => &self.lane,
        };
        let sent = lane.send(LaneRequest {
            seq,
            raw,
            count,
            retry_safe,
            reply_to: self.output.sender(),
            redirects: 0,
            asking: false,
        });
        if sent.is_err() {
            self.output
                .fail_shared(seq, count, &Error::ShuttingDown.to_resp());
        }
    }

    /// A command refused by policy (`--deny-command`, or one that would
    /// break the pool). Inside MULTI it aborts the transaction, as any
    /// command Redis refuses to queue does, and one Redis would never
    /// queue (SHUTDOWN, SYNC, PSYNC) gets Redis's own words for it.
    pub(super) fn deny(&mut self, req: &Request) {
        self.abort_open_transaction();
        let in_multi = self
            .session
            .as_mut()
            .is_some_and(|s| s.abort_transaction_on_exec());
        let no_multi = [&b"SHUTDOWN"[..], b"SYNC", b"PSYNC"]
            .iter()
            .any(|name| req.name().eq_ignore_ascii_case(name));
        let reply = if in_multi && no_multi {
            error_line("ERR", "Command not allowed inside a transaction")
        } else {
            let command = String::from_utf8_lossy(req.name()).to_ascii_uppercase();
            Error::Denied(command.into()).to_resp()
        };
        self.output.push_ready(reply);
    }

    /// A command that needs (or ends) connection state.
    pub(super) fn dedicated(&mut self, state: Stateful, req: Request, command: Command) {
        if self.session.is_some() {
            let is_tracking = state == Stateful::ConnectionFlag
                && req.name().eq_ignore_ascii_case(b"CLIENT")
                && req
                    .arg(1)
                    .is_some_and(|s| s.eq_ignore_ascii_case(b"TRACKING"));
            let req = if is_tracking {
                // Its REDIRECT id is respool's; the connection's is Redis's.
                match self.translate_redirect(req) {
                    Ok((req, redirect)) => {
                        if let (Some((upstream, ours)), Some(session)) =
                            (redirect, &mut self.session)
                        {
                            session.note_redirect(upstream, ours);
                        }
                        req
                    }
                    Err(reply) => return self.output.push_ready(reply),
                }
            } else {
                req
            };
            return self.send_on_session(state, req);
        }
        // Without a session there is no transaction or WATCH to end: answer
        // as Redis would.
        let reply = match state {
            Stateful::Exec => Some(error_line("ERR", "EXEC without MULTI")),
            Stateful::Discard => Some(error_line("ERR", "DISCARD without MULTI")),
            Stateful::Unwatch => Some(Bytes::from_static(b"+OK\r\n")),
            _ => None,
        };
        match reply {
            Some(reply) => self.output.push_ready(reply),
            None => self.park(req, command, None),
        }
    }

    /// Sends a stateful command on the client's session.
    fn send_on_session(&mut self, state: Stateful, req: Request) {
        let Some(session) = &mut self.session else {
            return;
        };
        let follows_exec = matches!(
            state,
            Stateful::Subscribe(_)
                | Stateful::Unsubscribe(_)
                | Stateful::ClientReply
                | Stateful::Monitor
        );
        if follows_exec && session.abort_transaction_on_exec() {
            // At EXEC these change what Redis sends on the connection
            // (pub/sub mode, replies silenced) from inside EXEC's reply,
            // where respool cannot follow; refused like any command
            // refused while queueing, so EXEC answers EXECABORT.
            self.output.push_ready(local::changes_replies_in_exec(&req));
            return;
        }
        let seq = self.output.next_seq();
        if session.send(&req, seq, Some(state)) {
            self.output.open_slot();
        }
        self.publish_session();
    }
}
