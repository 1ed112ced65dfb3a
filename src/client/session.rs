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

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::io::poll_read_buf;

use crate::codec::{ReplyDecoder, Request, Value};
use crate::command::{Stateful, SubKind};
use crate::error::ConnectError;
use crate::pool::connection::Broken;
use crate::pool::endpoint::Endpoint;
use crate::pool::validate::login;
use crate::pool::{LaneSet, PinnedConn};

/// What a request's reply does to the connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    None,
    Multi,
    /// EXEC or DISCARD: ends the transaction and the WATCHes.
    EndTransaction,
    Watch,
    Unwatch,
    Select(u32),
    Flag,
    /// CLIENT REPLY ON (the reply that turns replies back on).
    ReplyOn,
}

/// One request sent on the session, awaiting its reply.
struct Expect {
    /// The client's slot; `None` for a request respool sent on its own
    /// account (`HELLO 3` for a RESP3 client), whose reply is swallowed.
    seq: Option<u64>,
    /// Frames that make up the reply; `None` until the request reaches the
    /// front of the queue (UNSUBSCRIBE without arguments: one frame per
    /// current subscription, known only then).
    frames: Option<u32>,
    /// For `frames: None`: which subscriptions it ends.
    unsubscribe: Option<SubKind>,
    /// A (un)subscribe request: its replies are confirmations.
    pubsub: bool,
    effect: Effect,
    /// Reply deadline; `None` for commands that block by design.
    deadline: Option<Instant>,
    /// Frames of a multi-frame reply received so far.
    got: u32,
    acc: Option<BytesMut>,
    /// What the client gets instead of Redis's reply (an EXEC sent upstream
    /// as DISCARD answers `-EXECABORT`).
    reply_instead: Option<Bytes>,
}

/// The connection state that makes a session necessary.
#[derive(Debug, Default)]
struct State {
    multi: bool,
    watching: bool,
    channels: HashSet<Vec<u8>>,
    patterns: HashSet<Vec<u8>>,
    shards: HashSet<Vec<u8>>,
    db: u32,
    /// CLIENT REPLY OFF is in force.
    reply_off: bool,
    /// CLIENT REPLY SKIP: the next command gets no reply.
    skip_next: bool,
    /// A (un)subscribe went out under CLIENT REPLY OFF/SKIP, so no request
    /// waits for its confirmations, which Redis 7 sends all the same (6.2
    /// does not): any frame may be one of them from now on.
    silenced_pubsub: bool,
    /// TRACKING, CACHING, NO-EVICT, NO-TOUCH, READONLY… set at some point.
    flags: bool,
}

impl State {
    fn subscribed(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shards.is_empty())
    }
}

/// What a frame from the pinned connection means for the client.
pub(crate) enum SessionEvent {
    /// The complete reply for the client's request `seq`.
    Reply(u64, Bytes),
    /// A frame that answers no request (pub/sub message, push): it goes to the
    /// client now, ahead of replies still outstanding.
    OutOfBand(Bytes),
    /// Nothing for the client (a swallowed reply, or part of a multi-frame one).
    Nothing,
}

/// A pinned session; see the module docs.
pub(crate) struct Session {
    conn: PinnedConn,
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
    /// The subscriptions once Redis has run every (un)subscribe sent so
    /// far, confirmed or not: what decides how Redis treats the next
    /// command (`state` follows the confirmations).
    projected: [HashSet<Vec<u8>>; 3],
}

impl Session {
    pub(crate) fn new(
        conn: PinnedConn,
        default_db: u32,
        timeout: Duration,
        read_buffer_size: usize,
    ) -> Session {
        Session {
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
            projected: Default::default(),
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

    /// Sends a client request. Returns false when Redis will not reply to it
    /// (CLIENT REPLY OFF/SKIP), so the client must not wait for one.
    pub(crate) fn send(&mut self, req: &Request, seq: u64, stateful: Option<Stateful>) -> bool {
        let mut reply_instead = None;
        if stateful == Some(Stateful::Exec) && std::mem::take(&mut self.abort_exec) {
            // Redis would abort: discard the transaction upstream instead.
            self.wbuf.extend_from_slice(b"*1\r\n$7\r\nDISCARD\r\n");
            reply_instead = Some(crate::error::error_line(
                "EXECABORT",
                "Transaction discarded because of previous errors.",
            ));
        } else {
            self.wbuf.extend_from_slice(req.raw());
        }
        match stateful {
            Some(Stateful::Subscribe(kind)) if !self.queuing => self.project(req, kind, true),
            Some(Stateful::Unsubscribe(kind)) if !self.queuing => self.project(req, kind, false),
            _ => {}
        }
        let stateful = match stateful {
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
        };
        let mut frames = Some(1);
        let mut unsubscribe = None;
        let mut effect = Effect::None;
        let mut deadline = Some(Instant::now() + self.timeout);
        match stateful {
            None => {}
            Some(Stateful::Multi) => effect = Effect::Multi,
            Some(Stateful::Exec | Stateful::Discard) => effect = Effect::EndTransaction,
            Some(Stateful::Watch) => effect = Effect::Watch,
            Some(Stateful::Unwatch) => effect = Effect::Unwatch,
            Some(Stateful::Blocking) => deadline = None,
            Some(Stateful::Subscribe(_)) => {
                // One confirmation per channel (or one error without any).
                frames = Some((req.argc() as u32 - 1).max(1));
                deadline = None;
            }
            Some(Stateful::Unsubscribe(kind)) => {
                if req.argc() > 1 {
                    frames = Some(req.argc() as u32 - 1);
                } else {
                    frames = None;
                    unsubscribe = Some(kind);
                }
            }
            Some(Stateful::Select) => {
                effect = match req
                    .arg(1)
                    .and_then(|a| std::str::from_utf8(a).ok()?.parse().ok())
                {
                    Some(db) => Effect::Select(db),
                    None => Effect::None,
                };
            }
            Some(Stateful::ConnectionFlag) => effect = Effect::Flag,
            // Only a well-formed CLIENT REPLY that Redis will run changes
            // the reply mode; any other gets Redis's error, one reply.
            Some(Stateful::ClientReply) if req.argc() == 3 && !self.pubsub_only() => {
                let mode = req.arg(2).map(|m| m.to_ascii_uppercase());
                match mode.as_deref() {
                    Some(b"OFF") => {
                        self.state.reply_off = true;
                        self.dirty = true;
                        return false;
                    }
                    Some(b"SKIP") => {
                        self.state.skip_next = true;
                        self.dirty = true;
                        return false;
                    }
                    Some(b"ON") => effect = Effect::ReplyOn,
                    _ => {}
                }
            }
            Some(Stateful::ClientReply | Stateful::Monitor) => {}
        }
        if effect != Effect::None || stateful.is_some_and(|s| !matches!(s, Stateful::Blocking)) {
            self.dirty = true;
        }
        let pubsub = matches!(
            stateful,
            Some(Stateful::Subscribe(_) | Stateful::Unsubscribe(_))
        );
        if effect != Effect::ReplyOn
            && (self.state.reply_off || std::mem::take(&mut self.state.skip_next))
        {
            self.state.silenced_pubsub |= pubsub;
            return false;
        }
        if effect == Effect::ReplyOn {
            self.state.reply_off = false;
        }
        self.expect.push_back(Expect {
            seq: Some(seq),
            frames,
            unsubscribe,
            pubsub,
            effect,
            deadline,
            got: 0,
            acc: None,
            reply_instead,
        });
        true
    }

    /// A command inside the open transaction was refused locally; returns
    /// false when no transaction is open.
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
    }

    /// True while the connection is in pub/sub mode.
    pub(crate) fn subscribed(&self) -> bool {
        self.state.subscribed()
    }

    /// True when no request is outstanding.
    pub(crate) fn idle(&self) -> bool {
        self.expect.is_empty()
    }

    /// The earliest reply deadline.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.expect.front().and_then(|e| e.deadline)
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

    fn on_frame(&mut self, frame: Bytes) -> Result<SessionEvent, Broken> {
        // Only a subscribed connection (or one expecting confirmations, or
        // one whose confirmations nobody waits for, or a RESP3 push) can
        // carry pub/sub frames; anything else is a plain reply even if it
        // looks like one (LRANGE of ["message", …]).
        let pubsub_context = frame.first() == Some(&b'>')
            || self.state.subscribed()
            || self.state.silenced_pubsub
            || self.expect.front().is_none_or(|e| e.pubsub);
        let notice = if pubsub_context {
            pubsub_notice(&frame)
        } else {
            None
        };
        match &notice {
            Some(Notice::Confirm {
                kind,
                subscribe,
                name,
            }) => {
                // Resolve an argument-less UNSUBSCRIBE's frame count against
                // the subscriptions as they were before this confirmation.
                if let Some(front) = self.expect.front_mut() {
                    if front.frames.is_none() {
                        let n = match front.unsubscribe.unwrap_or(*kind) {
                            SubKind::Channel => self.state.channels.len(),
                            SubKind::Pattern => self.state.patterns.len(),
                            SubKind::Shard => self.state.shards.len(),
                        };
                        front.frames = Some(n.max(1) as u32);
                    }
                }
                let set = match kind {
                    SubKind::Channel => &mut self.state.channels,
                    SubKind::Pattern => &mut self.state.patterns,
                    SubKind::Shard => &mut self.state.shards,
                };
                if let Some(name) = name {
                    if *subscribe {
                        set.insert(name.clone());
                    } else {
                        set.remove(name);
                    }
                }
            }
            Some(Notice::Message) => return Ok(SessionEvent::OutOfBand(frame)),
            None if frame.first() == Some(&b'>') => return Ok(SessionEvent::OutOfBand(frame)),
            None => {}
        }
        if notice.is_some() && !self.expect.front().is_some_and(|e| e.pubsub) {
            // A confirmation no request waits for: under CLIENT REPLY
            // OFF/SKIP, respool expects no reply to a (un)subscribe, but
            // Redis 7 sends its confirmations anyway (pub/sub frames are not
            // silenced). The state is updated above; the client gets them as
            // Redis sent them.
            return Ok(SessionEvent::OutOfBand(frame));
        }
        // RESP2 messages look like replies: tell them apart by their kind,
        // which only arrives while subscribed.
        let Some(front) = self.expect.front_mut() else {
            return Err(Broken::BadReply(
                "a reply arrived with no request pending".into(),
            ));
        };
        if front.frames.is_none() {
            front.frames = Some(1);
        }
        front.got += 1;
        let frames = front.frames.unwrap_or(1);
        if frames > 1 {
            front
                .acc
                .get_or_insert_with(BytesMut::new)
                .extend_from_slice(&frame);
            if front.got < frames {
                return Ok(SessionEvent::Nothing);
            }
        }
        let Some(done) = self.expect.pop_front() else {
            return Ok(SessionEvent::Nothing);
        };
        // The next request's reply deadline runs from now: it may have been
        // queued behind a command that blocked for longer than --timeout.
        if let Some(next) = self.expect.front_mut() {
            if next.deadline.is_some() {
                next.deadline = Some(Instant::now() + self.timeout);
            }
        }
        let is_error = matches!(frame.first(), Some(b'-' | b'!'));
        match done.effect {
            Effect::Multi if !is_error => self.state.multi = true,
            // EXEC/DISCARD end the transaction and the WATCHes, and so does
            // an EXECABORT; "EXEC without MULTI" ends nothing (a WATCH stays).
            Effect::EndTransaction if !is_error || frame.starts_with(b"-EXECABORT") => {
                self.state.multi = false;
                self.state.watching = false;
            }
            Effect::Watch if !is_error => self.state.watching = true,
            Effect::Unwatch => self.state.watching = false,
            Effect::Select(db) if !is_error => self.state.db = db,
            Effect::Flag if !is_error => self.state.flags = true,
            _ => {}
        }
        let reply = match (done.reply_instead, done.acc) {
            (Some(instead), _) => instead,
            (None, Some(acc)) => acc.freeze(),
            (None, None) => frame,
        };
        Ok(match done.seq {
            Some(seq) => SessionEvent::Reply(seq, reply),
            None => SessionEvent::Nothing,
        })
    }

    /// Gives the connection back to `lanes`' pool (in the background): as
    /// is if nothing was ever changed on it, after RESET (+ AUTH, SELECT) if
    /// it was, or closed if a request is still outstanding (a blocked
    /// command cannot be interrupted) or the reset fails.
    pub(crate) fn release(mut self, lanes: &LaneSet) {
        if !self.expect.is_empty() || !self.wbuf.is_empty() {
            self.conn.broken = true;
            return;
        }
        if !self.dirty {
            return;
        }
        let endpoint = lanes.endpoint().clone();
        let timeout = lanes.timeout();
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

/// A pub/sub frame that needs special handling.
enum Notice {
    /// A (un)subscribe confirmation: counts as a reply, changes the state.
    Confirm {
        kind: SubKind,
        subscribe: bool,
        name: Option<Vec<u8>>,
    },
    /// A published message: out of band.
    Message,
}

/// Recognises pub/sub frames: arrays (RESP2) or pushes (RESP3) whose first
/// element names the event. Only the first two elements are looked at.
fn pubsub_notice(frame: &[u8]) -> Option<Notice> {
    let (Value::Array(mut items) | Value::Push(mut items)) = Value::of_frame(frame).ok()? else {
        return None;
    };
    let count = items.len();
    let kind = items.next()?.bytes()?.to_ascii_lowercase();
    let name = items.next().and_then(|v| v.bytes()).map(<[u8]>::to_vec);
    let confirm = |kind: SubKind, subscribe: bool| {
        Some(Notice::Confirm {
            kind,
            subscribe,
            name: name.clone(),
        })
    };
    match &kind[..] {
        b"subscribe" => confirm(SubKind::Channel, true),
        b"psubscribe" => confirm(SubKind::Pattern, true),
        b"ssubscribe" => confirm(SubKind::Shard, true),
        b"unsubscribe" => confirm(SubKind::Channel, false),
        b"punsubscribe" => confirm(SubKind::Pattern, false),
        b"sunsubscribe" => confirm(SubKind::Shard, false),
        b"message" | b"pmessage" | b"smessage" if count >= 3 => Some(Notice::Message),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_pubsub_frames() {
        let confirm = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        assert!(
            matches!(pubsub_notice(confirm), Some(Notice::Confirm { kind: SubKind::Channel, subscribe: true, name: Some(n) }) if n == b"ch")
        );
        let unsub_none = b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n";
        assert!(matches!(
            pubsub_notice(unsub_none),
            Some(Notice::Confirm {
                subscribe: false,
                name: None,
                ..
            })
        ));
        let message = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
        assert!(matches!(pubsub_notice(message), Some(Notice::Message)));
        assert!(pubsub_notice(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n").is_none());
        assert!(pubsub_notice(b"+OK\r\n").is_none());
        // A user's list value that happens to start with "message" is only
        // a message if it has the message shape; LRANGE replies never reach
        // this check while subscribed anyway.
        assert!(pubsub_notice(b"*1\r\n$7\r\nmessage\r\n").is_none());
    }
}
