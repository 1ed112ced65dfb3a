//! What a pinned session expects back for each request it sent, and what
//! each reply (or pub/sub frame) does to the connection's state.

use std::collections::HashSet;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::{Session, SessionEvent};
use crate::codec::{Request, Value};
use crate::command::{Stateful, SubKind};
use crate::pool::connection::Broken;

/// The channel of tracking invalidations redirected to a RESP2 connection.
const INVALIDATION_CHANNEL: &[u8] = b"__redis__:invalidate";

/// What a request's reply does to the connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
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
    /// AUTH: on `+OK` the connection runs as the identity at the front of
    /// the session's `logins`.
    Login,
    /// MONITOR: on `+OK` every frame is the monitor stream.
    Monitor,
    /// CLIENT GETREDIR or TRACKINGINFO: the redirect id in the reply is the
    /// target's connection upstream; the client named respool's id.
    RedirectId,
    /// respool's own SSUBSCRIBE of a channel that moved with its slot: if
    /// refused, the client gets `reply_instead` (Redis's unsubscribe) out
    /// of band.
    Resubscribe,
}

/// One request sent on the session, awaiting its reply.
pub(super) struct Expect {
    /// The client's slot; `None` for a request respool sent on its own
    /// account (`HELLO 3` for a RESP3 client), whose reply is swallowed.
    pub(super) seq: Option<u64>,
    /// Frames that make up the reply; `None` until the request reaches the
    /// front of the queue (UNSUBSCRIBE without arguments: one frame per
    /// current subscription, known only then).
    pub(super) frames: Option<u32>,
    /// For `frames: None`: which subscriptions it ends.
    pub(super) unsubscribe: Option<SubKind>,
    /// A (un)subscribe request: its replies are confirmations.
    pub(super) pubsub: bool,
    pub(super) effect: Effect,
    /// Reply deadline; `None` for commands that block by design.
    pub(super) deadline: Option<Instant>,
    /// Frames of a multi-frame reply received so far.
    pub(super) got: u32,
    pub(super) acc: Option<BytesMut>,
    /// What the client gets instead of Redis's reply (an EXEC sent upstream
    /// as DISCARD answers `-EXECABORT`).
    pub(super) reply_instead: Option<Bytes>,
}

/// The connection state that makes a session necessary.
#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) multi: bool,
    pub(super) watching: bool,
    pub(super) channels: HashSet<Vec<u8>>,
    pub(super) patterns: HashSet<Vec<u8>>,
    pub(super) shards: HashSet<Vec<u8>>,
    pub(super) db: u32,
    /// CLIENT REPLY OFF is in force.
    pub(super) reply_off: bool,
    /// CLIENT REPLY SKIP: the next command gets no reply.
    pub(super) skip_next: bool,
    /// A (un)subscribe went out under CLIENT REPLY OFF/SKIP, so no request
    /// waits for its confirmations, which Redis 7 sends all the same (6.2
    /// does not): any frame may be one of them from now on.
    pub(super) silenced_pubsub: bool,
    /// TRACKING, CACHING, NO-EVICT, NO-TOUCH, READONLY… set at some point.
    pub(super) flags: bool,
    /// MONITOR: every frame from now on is the monitor stream.
    pub(super) monitoring: bool,
    /// Subscribed to `__redis__:invalidate` at some point: other clients'
    /// tracking may redirect to this connection, and Redis tells them the
    /// redirect broke (`tracking-redir-broken`) only once it is closed.
    pub(super) invalidation_target: bool,
    /// The last `CLIENT TRACKING … REDIRECT`: the target's connection id
    /// upstream and the respool id the client named.
    pub(super) redirect: Option<(u64, u64)>,
}

impl State {
    /// The subscriptions of one kind.
    pub(super) fn set(&mut self, kind: SubKind) -> &mut HashSet<Vec<u8>> {
        match kind {
            SubKind::Channel => &mut self.channels,
            SubKind::Pattern => &mut self.patterns,
            SubKind::Shard => &mut self.shards,
        }
    }

    pub(super) fn subscribed(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shards.is_empty())
    }
}

impl Session {
    /// The reply Redis will send to a request that does `stateful` (its
    /// frames, deadline, and what it changes), or `None` when Redis sends
    /// none (CLIENT REPLY OFF or SKIP in force, or set by this request).
    pub(super) fn expected_reply(
        &mut self,
        req: &Request,
        stateful: Option<Stateful>,
    ) -> Option<Expect> {
        let mut frames = Some(1);
        let mut unsubscribe = None;
        let mut effect = Effect::None;
        let mut deadline = Some(Instant::now() + self.timeout);
        match stateful {
            None if is_client_sub(req, b"GETREDIR") || is_client_sub(req, b"TRACKINGINFO") => {
                effect = Effect::RedirectId
            }
            None => {}
            Some(Stateful::Multi) => effect = Effect::Multi,
            Some(Stateful::Exec | Stateful::Discard) => effect = Effect::EndTransaction,
            Some(Stateful::Watch) => effect = Effect::Watch,
            Some(Stateful::Unwatch) => effect = Effect::Unwatch,
            Some(Stateful::Blocking) => deadline = None,
            Some(Stateful::Subscribe(kind)) => {
                // One confirmation per channel (or one error without any).
                frames = Some((req.argc() as u32 - 1).max(1));
                deadline = None;
                self.state.invalidation_target |= kind == SubKind::Channel
                    && req.args().skip(1).any(|c| c == INVALIDATION_CHANNEL);
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
                        return None;
                    }
                    Some(b"SKIP") => {
                        // Redis ignores SKIP while replies are OFF.
                        self.state.skip_next |= !self.state.reply_off;
                        self.dirty = true;
                        return None;
                    }
                    Some(b"ON") => effect = Effect::ReplyOn,
                    _ => {}
                }
            }
            Some(Stateful::Monitor) => effect = Effect::Monitor,
            Some(Stateful::ClientReply) => {}
        }
        // What the state does not follow to its end needs a RESET before the
        // connection is reused; the rest is clean once the state has ended.
        if matches!(effect, Effect::Flag | Effect::Monitor) {
            self.dirty = true;
        }
        let pubsub = matches!(
            stateful,
            Some(Stateful::Subscribe(_) | Stateful::Unsubscribe(_))
        );
        if effect == Effect::ReplyOn {
            // ON ends OFF and a pending SKIP alike, and is answered itself.
            self.state.reply_off = false;
            self.state.skip_next = false;
        } else if self.state.reply_off || std::mem::take(&mut self.state.skip_next) {
            self.state.silenced_pubsub |= pubsub;
            return None;
        }
        Some(Expect {
            seq: None,
            frames,
            unsubscribe,
            pubsub,
            effect,
            deadline,
            got: 0,
            acc: None,
            reply_instead: None,
        })
    }

    pub(super) fn on_frame(&mut self, frame: Bytes) -> Result<SessionEvent, Broken> {
        if self.state.monitoring {
            // The monitor stream, and the replies to whatever the client
            // sends meanwhile, in the order Redis sends them.
            return Ok(SessionEvent::OutOfBand(frame));
        }
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
            }) => self.follow_confirmation(*kind, *subscribe, name.as_deref()),
            Some(Notice::Message) => return Ok(SessionEvent::OutOfBand(frame)),
            None if frame.first() == Some(&b'>') => return Ok(SessionEvent::OutOfBand(frame)),
            None => {}
        }
        if notice.is_some() && !self.expect.front().is_some_and(|e| e.pubsub) {
            if let Some(Notice::Confirm {
                kind: SubKind::Shard,
                subscribe: false,
                name: Some(channel),
            }) = notice
            {
                // No SUNSUBSCRIBE of the client's waits: Redis ended it.
                return Ok(SessionEvent::ShardUnsubscribed { channel, frame });
            }
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
        self.apply(done.effect, &frame);
        if done.effect == Effect::Resubscribe {
            let refused = matches!(frame.first(), Some(b'-' | b'!'));
            return Ok(match done.reply_instead {
                Some(unsubscribed) if refused => {
                    tracing::info!(
                        reply = %String::from_utf8_lossy(&frame).trim_end(),
                        "a shard channel's new primary refused to subscribe to it; the client is told it is unsubscribed"
                    );
                    SessionEvent::OutOfBand(unsubscribed)
                }
                _ => SessionEvent::Nothing,
            });
        }
        let reply = match (done.reply_instead, done.acc) {
            (Some(instead), _) => instead,
            (None, Some(acc)) => acc.freeze(),
            (None, None) if done.effect == Effect::RedirectId => self.respool_redirect_id(frame),
            (None, None) if done.effect == Effect::EndTransaction => exec_redirected(frame),
            (None, None) => frame,
        };
        Ok(match done.seq {
            Some(seq) => SessionEvent::Reply(seq, reply),
            None => SessionEvent::Nothing,
        })
    }

    /// A (un)subscribe confirmation: the subscriptions it changes, and the
    /// frame count of an argument-less UNSUBSCRIBE waiting for it.
    fn follow_confirmation(&mut self, kind: SubKind, subscribe: bool, name: Option<&[u8]>) {
        // Resolve an argument-less UNSUBSCRIBE's frame count against the
        // subscriptions as they were before this confirmation.
        if let Some(front) = self.expect.front_mut() {
            if front.frames.is_none() {
                let n = self.state.set(front.unsubscribe.unwrap_or(kind)).len();
                front.frames = Some(n.max(1) as u32);
            }
        }
        if let Some(name) = name {
            let set = self.state.set(kind);
            if subscribe {
                set.insert(name.to_vec());
            } else {
                set.remove(name);
            }
        }
    }

    /// GETREDIR's `:<id>` or TRACKINGINFO's `redirect` field with the
    /// upstream id of the redirect target replaced by the respool id the
    /// client gave (also once the target has left: Redis keeps reporting
    /// the id it was given).
    fn respool_redirect_id(&self, frame: Bytes) -> Bytes {
        let Some((upstream, ours)) = self.state.redirect else {
            return frame;
        };
        let (theirs, mine) = (format!(":{upstream}\r\n"), format!(":{ours}\r\n"));
        if frame[..] == *theirs.as_bytes() {
            return Bytes::from(mine);
        }
        // TRACKINGINFO: `redirect` is a key (a bulk string) followed by its
        // integer, in RESP2 and RESP3 alike.
        let field = format!("$8\r\nredirect\r\n{theirs}");
        match memchr::memmem::find(&frame, field.as_bytes()) {
            Some(at) => {
                let value = at + field.len() - theirs.len();
                let mut out = BytesMut::with_capacity(frame.len() + mine.len());
                out.extend_from_slice(&frame[..value]);
                out.extend_from_slice(mine.as_bytes());
                out.extend_from_slice(&frame[value + theirs.len()..]);
                out.freeze()
            }
            None => frame,
        }
    }

    /// What a complete reply does to the connection's state.
    fn apply(&mut self, effect: Effect, reply: &[u8]) {
        let is_error = matches!(reply.first(), Some(b'-' | b'!'));
        match effect {
            Effect::Multi if !is_error => self.state.multi = true,
            // EXEC/DISCARD end the transaction and the WATCHes, and so do
            // an EXECABORT and a cluster node's refusal of EXEC (CROSSSLOT,
            // MOVED, …: Redis discards the transaction); "EXEC without
            // MULTI" ends nothing (a WATCH stays).
            Effect::EndTransaction if !is_error || !reply.starts_with(b"-ERR") => {
                self.state.multi = false;
                self.state.watching = false;
            }
            Effect::Watch if !is_error => self.state.watching = true,
            Effect::Unwatch => self.state.watching = false,
            Effect::Select(db) if !is_error => self.state.db = db,
            Effect::Flag if !is_error => self.state.flags = true,
            Effect::Login => {
                let identity = self.logins.pop_front();
                if !is_error {
                    self.logged_in = identity;
                }
            }
            Effect::Monitor if !is_error => self.state.monitoring = true,
            _ => {}
        }
    }
}

/// A cluster node's redirection of EXEC (a queued key's slot moved away):
/// the node discarded the transaction, which a client of respool — one
/// node owning every slot — is told as EXECABORT, not sent elsewhere.
fn exec_redirected(reply: Bytes) -> Bytes {
    if !(reply.starts_with(b"-MOVED ") || reply.starts_with(b"-ASK ")) {
        return reply;
    }
    let redirect = String::from_utf8_lossy(&reply[1..]);
    crate::error::error_line(
        "EXECABORT",
        &format!(
            "Transaction discarded because of: a slot of its keys moved to another primary during the transaction ({}); run it again",
            redirect.trim_end()
        ),
    )
}

/// `CLIENT <sub>`, any case.
fn is_client_sub(req: &Request, sub: &[u8]) -> bool {
    req.name().eq_ignore_ascii_case(b"CLIENT")
        && req.arg(1).is_some_and(|s| s.eq_ignore_ascii_case(sub))
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
