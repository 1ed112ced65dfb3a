//! A pinned session: an upstream connection checked out exclusively for one
//! client while that client has connection state (a transaction, WATCHed
//! keys, a blocking command in progress, subscriptions, another database,
//! CLIENT REPLY/TRACKING flags).
//!
//! The session keeps a FIFO of what it expects back for each request it sent
//! (usually one frame; one per channel for (UN)SUBSCRIBE; none while CLIENT
//! REPLY is OFF) and tracks the state each reply creates or ends. When no
//! request is outstanding and no state is left, the client gives the
//! connection back: reset first if anything was ever changed on it, or
//! discarded if its state is in doubt, so nothing leaks to the next client.

mod expect;

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::io::poll_read_buf;

use crate::codec::{ReplyDecoder, Request};
use crate::command::{Stateful, SubKind};
use crate::error::ConnectError;
use crate::pool::connection::Broken;
use crate::pool::endpoint::{Endpoint, Identity};
use crate::pool::validate::login;
use crate::pool::{LaneSet, PinnedConn};
use expect::{Effect, Expect, State};

/// What a frame from the pinned connection means for the client.
pub(crate) enum SessionEvent {
    /// The complete reply for the client's request `seq`.
    Reply(u64, Bytes),
    /// A frame that answers no request (pub/sub message, push): it goes to the
    /// client now, ahead of replies still outstanding.
    OutOfBand(Bytes),
    /// Nothing for the client (a swallowed reply, or part of a multi-frame one).
    Nothing,
    /// Redis ended a shard channel's subscription on its own (in a cluster:
    /// the channel's slot went to another primary); the frame says so in
    /// the client's protocol.
    ShardUnsubscribed { channel: Vec<u8>, frame: Bytes },
}

/// A pinned session; see the module docs.
pub(crate) struct Session {
    conn: PinnedConn,
    /// The lane set whose pool the connection belongs to: it goes back
    /// there reset to that set's identity, whoever the client logged in as
    /// meanwhile.
    origin: Arc<LaneSet>,
    /// Requests waiting to be written.
    wbuf: BytesMut,
    /// The stream took bytes since it was last flushed (TLS keeps records).
    unflushed: bool,
    decoder: ReplyDecoder,
    expect: VecDeque<Expect>,
    state: State,
    /// The configured database, where the session must end up.
    default_db: u32,
    /// Something was changed on the connection: RESET before reuse.
    dirty: bool,
    /// A MULTI was sent and no EXEC/DISCARD since: Redis only queues what
    /// follows, one `+QUEUED` (or error) each, so nothing is special.
    queuing: bool,
    /// A command of the open transaction was refused by respool (denied):
    /// its EXEC must fail with EXECABORT, as Redis fails a transaction with
    /// a command it refused to queue.
    abort_exec: bool,
    timeout: Duration,
    read_buffer_size: usize,
    /// The connection speaks RESP3 (respool sent `HELLO 3` on it).
    resp3: bool,
    /// Identities of the AUTHs sent and not answered yet, oldest first.
    logins: VecDeque<Identity>,
    /// The identity the last accepted AUTH logged the connection in as.
    logged_in: Option<Identity>,
    /// The subscriptions once Redis has run every (un)subscribe sent so
    /// far, confirmed or not: what decides how Redis treats the next
    /// command (`state` follows the confirmations).
    projected: [HashSet<Vec<u8>>; 3],
    /// When to look again whether the primary moved away from the
    /// connection (a followed node only: Sentinel's primary).
    moved_check_at: Option<Instant>,
}

/// How often a session on Sentinel's primary looks whether it moved, when
/// nothing else wakes the client (a subscriber, a blocked command).
const MOVED_CHECK_EVERY: Duration = Duration::from_secs(1);

impl Session {
    /// A session on `conn`, checked out of `origin`'s pool.
    pub(crate) fn new(conn: PinnedConn, origin: Arc<LaneSet>, read_buffer_size: usize) -> Session {
        let default_db = origin.endpoint().db;
        let timeout = origin.timeout();
        let moved_check_at = origin
            .endpoint()
            .node
            .following()
            .map(|_| Instant::now() + MOVED_CHECK_EVERY);
        Session {
            origin,
            conn,
            wbuf: BytesMut::new(),
            unflushed: false,
            decoder: ReplyDecoder::default(),
            expect: VecDeque::new(),
            state: State {
                db: default_db,
                ..State::default()
            },
            default_db,
            dirty: false,
            queuing: false,
            abort_exec: false,
            timeout,
            read_buffer_size,
            resp3: false,
            logins: VecDeque::new(),
            logged_in: None,
            projected: Default::default(),
            moved_check_at,
        }
    }

    /// Switches the connection to the client's protocol version (`HELLO`,
    /// on respool's own account), and notes it.
    pub(crate) fn switch_protocol(&mut self, resp3: bool) {
        self.send_internal(&Request::from_args(&[
            "HELLO",
            if resp3 { "3" } else { "2" },
        ]));
        self.resp3 = resp3;
    }

    /// Redis will refuse every command but (P|S)(UN)SUBSCRIBE, PING, QUIT
    /// and RESET on this connection: it is in RESP2 pub/sub mode, or will be
    /// once a SUBSCRIBE already sent has run.
    pub(crate) fn pubsub_only(&self) -> bool {
        !self.resp3 && self.projected.iter().any(|set| !set.is_empty())
    }

    /// Follows a (un)subscribe into [`projected`](Self::projected): the
    /// names it gives, or every subscription of its kind for an
    /// UNSUBSCRIBE without any. In RESP2 pub/sub mode nothing else
    /// changes subscriptions; a refused one changes nothing either.
    fn project(&mut self, req: &Request, kind: SubKind, subscribe: bool) {
        let set = &mut self.projected[kind as usize];
        match (subscribe, req.argc()) {
            (false, 1) => set.clear(),
            (_, 1) => {}
            (true, _) => set.extend(req.args().skip(1).map(<[u8]>::to_vec)),
            (false, _) => {
                for name in req.args().skip(1) {
                    set.remove(name);
                }
            }
        }
    }

    /// Requests (or, on TLS, encrypted output) are waiting for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        !self.wbuf.is_empty() || self.unflushed
    }

    /// Sends a request on respool's own account; its reply is swallowed.
    fn send_internal(&mut self, req: &Request) {
        self.dirty = true;
        self.wbuf.extend_from_slice(req.raw());
        self.expect.push_back(Expect {
            seq: None,
            frames: Some(1),
            unsubscribe: None,
            pubsub: false,
            effect: Effect::None,
            deadline: Some(Instant::now() + self.timeout),
            got: 0,
            acc: None,
            reply_instead: None,
        });
    }

    /// Subscribes to the shard `channel` again, on respool's own account
    /// (the client is subscribed already): the confirmation is swallowed;
    /// if Redis refuses, the client gets `unsubscribed`, the frame that
    /// told it nothing of the move.
    pub(crate) fn resubscribe_shard(&mut self, channel: &[u8], unsubscribed: Bytes) {
        let req = Request::from_args(&[&b"SSUBSCRIBE"[..], channel]);
        self.dirty = true;
        self.wbuf.extend_from_slice(req.raw());
        let stateful = self.what_runs_now(&req, Some(Stateful::Subscribe(SubKind::Shard)));
        if let Some(expect) = self.expected_reply(&req, stateful) {
            self.expect.push_back(Expect {
                seq: None,
                effect: Effect::Resubscribe,
                reply_instead: Some(unsubscribed),
                ..expect
            });
        }
    }

    /// The lane set the connection came from (a cluster primary's).
    pub(crate) fn origin(&self) -> &Arc<LaneSet> {
        &self.origin
    }

    /// Sends MULTI and the commands `held` after it whose replies the
    /// client already had from respool (a cluster transaction opened before
    /// its node was known): they are followed, and swallowed. One Redis
    /// refused makes Redis abort the transaction at EXEC.
    pub(crate) fn replay_transaction(&mut self, held: &[(Request, Option<Stateful>)]) {
        let multi = Request::from_args(&["MULTI"]);
        let commands = std::iter::once((&multi, Some(Stateful::Multi)))
            .chain(held.iter().map(|(req, state)| (req, *state)));
        for (req, stateful) in commands {
            self.dirty = true;
            self.wbuf.extend_from_slice(req.raw());
            let stateful = self.what_runs_now(req, stateful);
            if let Some(expect) = self.expected_reply(req, stateful) {
                self.expect.push_back(expect);
            }
        }
    }

    /// Sends a client's AUTH (passed through) on the session's connection;
    /// [`take_login`](Self::take_login) says when Redis accepted it. Returns
    /// false when Redis will not reply to it (CLIENT REPLY OFF/SKIP): the
    /// login is then not followed.
    pub(crate) fn send_login(&mut self, req: &Request, seq: u64, identity: Identity) -> bool {
        self.dirty = true;
        self.wbuf.extend_from_slice(req.raw());
        let Some(expect) = self.expected_reply(req, None) else {
            return false;
        };
        self.logins.push_back(identity);
        self.expect.push_back(Expect {
            seq: Some(seq),
            effect: Effect::Login,
            ..expect
        });
        true
    }

    /// The identity a login on the session switched its connection to,
    /// once (taken).
    pub(crate) fn take_login(&mut self) -> Option<Identity> {
        self.logged_in.take()
    }

    /// Sends a client request. Returns false when Redis will not reply to it
    /// (CLIENT REPLY OFF/SKIP), so the client must not wait for one.
    pub(crate) fn send(&mut self, req: &Request, seq: u64, stateful: Option<Stateful>) -> bool {
        let reply_instead = self.write(req, stateful);
        if self.state.monitoring {
            // Its reply comes within the monitor stream.
            return false;
        }
        let stateful = self.what_runs_now(req, stateful);
        match self.expected_reply(req, stateful) {
            Some(expect) => {
                self.expect.push_back(Expect {
                    seq: Some(seq),
                    reply_instead,
                    ..expect
                });
                true
            }
            None => false,
        }
    }

    /// Queues the request for the socket — or, for an EXEC whose
    /// transaction respool refused part of, a DISCARD, and the reply the
    /// client gets instead (Redis would abort it).
    fn write(&mut self, req: &Request, stateful: Option<Stateful>) -> Option<Bytes> {
        if stateful == Some(Stateful::Exec) && std::mem::take(&mut self.abort_exec) {
            self.wbuf.extend_from_slice(b"*1\r\n$7\r\nDISCARD\r\n");
            return Some(crate::error::error_line(
                "EXECABORT",
                "Transaction discarded because of previous errors.",
            ));
        }
        self.wbuf.extend_from_slice(req.raw());
        None
    }

    /// What the request does to the connection when Redis gets it: inside
    /// MULTI most commands are only queued.
    fn what_runs_now(&mut self, req: &Request, stateful: Option<Stateful>) -> Option<Stateful> {
        match stateful {
            Some(Stateful::Subscribe(kind)) if !self.queuing => self.project(req, kind, true),
            Some(Stateful::Unsubscribe(kind)) if !self.queuing => self.project(req, kind, false),
            _ => {}
        }
        match stateful {
            Some(Stateful::Multi) => {
                self.queuing = true;
                stateful
            }
            Some(Stateful::Exec | Stateful::Discard) => {
                self.queuing = false;
                self.abort_exec &= stateful == Some(Stateful::Exec);
                stateful
            }
            // Queued, not run: a SUBSCRIBE of two channels gets one
            // `+QUEUED`, CLIENT REPLY OFF gets a reply, BLPOP does not block.
            // What they do at EXEC is Redis's business; the connection is
            // already dirty (RESET before reuse) because of the MULTI.
            Some(
                Stateful::Blocking
                | Stateful::Subscribe(_)
                | Stateful::Unsubscribe(_)
                | Stateful::ClientReply,
            ) if self.queuing => None,
            // A queued SELECT takes effect at EXEC, or never (DISCARD): the
            // database is unknown until then, so keep the connection pinned
            // for the rest of the client's life (or until RESET).
            Some(Stateful::Select) if self.queuing => Some(Stateful::ConnectionFlag),
            _ => stateful,
        }
    }

    /// A command inside the open transaction was refused locally; returns
    /// false when no transaction is open.
    /// Notes the `CLIENT TRACKING … REDIRECT` about to be sent: the
    /// target's connection id upstream and the respool id the client named,
    /// so that GETREDIR and TRACKINGINFO answer with the latter.
    pub(crate) fn note_redirect(&mut self, upstream: u64, ours: u64) {
        self.state.redirect = Some((upstream, ours));
    }

    pub(crate) fn abort_transaction_on_exec(&mut self) -> bool {
        if self.queuing {
            self.abort_exec = true;
        }
        self.queuing
    }

    /// True when nothing is outstanding and no state is left: the client may
    /// give the connection back.
    pub(crate) fn finished(&self) -> bool {
        self.expect.is_empty()
            && !self.state.multi
            && !self.state.watching
            && !self.state.subscribed()
            && self.state.db == self.default_db
            && !self.state.reply_off
            && !self.state.skip_next
            && !self.state.flags
            && !self.state.monitoring
    }

    /// The shard channels the connection is subscribed to.
    pub(crate) fn shard_channels(&self) -> impl Iterator<Item = &[u8]> {
        self.state.shards.iter().map(Vec::as_slice)
    }

    /// True while the connection is in pub/sub mode.
    pub(crate) fn subscribed(&self) -> bool {
        self.state.subscribed()
    }

    /// What `CLIENT LIST` shows of the session: its database,
    /// subscriptions, transaction and blocking command.
    pub(crate) fn publish(&self, to: &mut crate::client::roster::Published) {
        to.db = self.state.db;
        to.subscriptions = [
            self.state.channels.len(),
            self.state.patterns.len(),
            self.state.shards.len(),
        ];
        to.multi = self.queuing;
        to.blocked = self
            .expect
            .iter()
            .any(|e| e.deadline.is_none() && !e.pubsub);
        to.pinned_upstream_id = self.conn.upstream_id;
    }

    /// True when no request is outstanding.
    pub(crate) fn idle(&self) -> bool {
        self.expect.is_empty()
    }

    /// The earliest reply deadline.
    pub(crate) fn reply_deadline(&self) -> Option<Instant> {
        self.expect.front().and_then(|e| e.deadline)
    }

    /// When [`on_deadline`](Self::on_deadline) is due: the reply deadline,
    /// or the next look at whether the primary moved.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match (self.reply_deadline(), self.moved_check_at) {
            (Some(reply), Some(check)) => Some(reply.min(check)),
            (reply, check) => reply.or(check),
        }
    }

    /// The primary moved away from this connection (a failover): the
    /// client's state stayed on the old one.
    pub(crate) fn moved(&self) -> bool {
        !self.origin.endpoint().node.is_current(self.conn.generation)
    }

    /// [`deadline`](Self::deadline) has passed: an error if a reply is late
    /// or the primary moved, else the next look is set.
    pub(crate) fn on_deadline(&mut self, now: Instant) -> Result<(), Broken> {
        if self.moved() {
            return Err(Broken::Moved(crate::pool::lane::moved_to(
                &self.origin.endpoint().node,
            )));
        }
        if self.reply_deadline().is_some_and(|d| d <= now) {
            return Err(Broken::Timeout);
        }
        if self.moved_check_at.is_some() {
            self.moved_check_at = Some(now + MOVED_CHECK_EVERY);
        }
        Ok(())
    }

    /// Reads what the socket has and turns it into events: ready when
    /// something was read (or the connection broke), pending with the
    /// waker registered otherwise.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        events: &mut Vec<SessionEvent>,
    ) -> Poll<Result<(), Broken>> {
        let c = &mut *self.conn;
        if c.read_buf.capacity() - c.read_buf.len() < 1024 {
            c.read_buf.reserve(self.read_buffer_size);
        }
        match poll_read_buf(Pin::new(&mut c.stream), cx, &mut c.read_buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(Broken::Lost("connection closed by upstream".into())))
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Broken::Lost(e.to_string()))),
            Poll::Ready(Ok(_)) => {}
        }
        loop {
            let frame = match self.decoder.decode(&mut self.conn.read_buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(Broken::BadReply(e.to_string()))),
            };
            match self.on_frame(frame) {
                Ok(event) => events.push(event),
                Err(broken) => return Poll::Ready(Err(broken)),
            }
        }
    }

    /// Writes what waits, then flushes: ready when the socket took
    /// something (or the connection broke).
    pub(crate) fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Broken>> {
        let stream = &mut self.conn.stream;
        let mut wrote = false;
        while !self.wbuf.is_empty() {
            match Pin::new(&mut *stream).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    wrote = true;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Broken::Lost(e.to_string()))),
                Poll::Pending => break,
            }
        }
        if self.unflushed && self.wbuf.is_empty() {
            match Pin::new(stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Broken::Lost(e.to_string()))),
                Poll::Pending => {}
            }
        }
        if wrote {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// Gives the connection back to its pool (in the background): as is if
    /// nothing was ever changed on it, after RESET (+ AUTH, SELECT as the
    /// pool's identity) if it was, or closed if a request is still
    /// outstanding (a blocked command cannot be interrupted), if other
    /// clients' invalidations may be redirected to it, or if the reset
    /// fails.
    pub(crate) fn release(mut self) {
        if !self.expect.is_empty() || !self.wbuf.is_empty() || self.state.invalidation_target {
            self.conn.broken = true;
            return;
        }
        if !self.dirty && !self.state.silenced_pubsub && self.finished() {
            // Nothing was left on it: back as it is, without a RESET.
            return;
        }
        let endpoint = self.origin.endpoint().clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            if let Err(e) = reset_connection(&mut self.conn, &endpoint, timeout).await {
                tracing::debug!(error = %e, "pinned connection could not be reset; closing it");
                self.conn.broken = true;
            }
        });
    }

    /// Marks the connection as not reusable.
    pub(crate) fn discard(mut self) {
        self.conn.broken = true;
    }
}

/// RESET, then log in again and re-select: RESET ends transactions,
/// WATCHes, subscriptions, tracking, CLIENT REPLY modes, RESP3, and also
/// logs the connection out and selects db 0.
async fn reset_connection(
    conn: &mut PinnedConn,
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<(), ConnectError> {
    let mut steps = vec![Request::from_args(&["RESET"])];
    if let Some((_, login)) = login(&endpoint.identity, 2) {
        steps.push(login);
    }
    if endpoint.db != 0 {
        steps.push(Request::from_args(&[
            "SELECT".to_string(),
            endpoint.db.to_string(),
        ]));
    }
    let replies = conn
        .exchange_skipping_pushes(&steps, "RESET", timeout)
        .await?;
    let expected: Vec<&[u8]> = std::iter::once(&b"+RESET\r\n"[..])
        .chain(std::iter::repeat_n(&b"+OK\r\n"[..], steps.len() - 1))
        .collect();
    if replies.iter().map(|r| &r[..]).eq(expected) {
        Ok(())
    } else {
        Err(ConnectError::Unexpected {
            step: "RESET",
            reply: "reset did not succeed".into(),
        })
    }
}
