//! A run of requests inside a lane ([`Job`]), from the moment the lane takes
//! it until every request in it is answered: split into its requests only
//! to hold one after a transient error or to settle each on its own after a
//! connection loss.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use tokio::time::Instant;

use super::LaneRequest;
use crate::client::inbox::ReplySender;
use crate::codec::first_request_len;
use crate::stats::{FailCause, LoopStats};

/// The upstream has just run a request of `client` (its reply was not a
/// transient error). The client's requests held for a resend were sent
/// before it, and a resend would run them after it: harmless between two
/// reads, but a write and anything else would run out of the order the
/// client sent them in (its read would not see its write, or would see a
/// write it sent later). So unless both are read-only (`later_read_only`,
/// and the held request's retry-safe bit), the held request is not resent
/// but answered with the transient error it got, as it would have been by
/// Redis alone. This happens when, say, loading ends between two requests
/// of one pipeline. True if any was released.
pub(super) fn release_overtaken(
    retry_later: &mut VecDeque<Job>,
    client: &ReplySender,
    later_read_only: bool,
    stats: &LoopStats,
) -> bool {
    let overtaken = |held: &Job| {
        held.req.reply_to.same_client(client) && !(later_read_only && held.req.is_retry_safe(0))
    };
    if !retry_later.iter().any(overtaken) {
        return false;
    }
    for held in std::mem::take(retry_later) {
        match &held.transient {
            Some(answer) if overtaken(&held) => {
                let answer = answer.clone();
                held.fail(&answer, stats, FailCause::Overtaken);
            }
            _ => retry_later.push_back(held),
        }
    }
    true
}

/// A run of requests inside the lane.
pub(super) struct Job {
    pub(super) req: LaneRequest,
    /// Requests of the run answered so far (replies arrive in order).
    pub(super) answered: u32,
    /// When the lane took it.
    pub(super) accepted: Instant,
    /// Until when it may be held unsent: while no connection can be had, or
    /// while the upstream answers -LOADING/-BUSY/… (`--hold-timeout`).
    pub(super) hold_deadline: Instant,
    /// Retries so far.
    pub(super) attempts: u32,
    /// It was fully written on a connection that then broke, so it may have
    /// run (only read-only requests are requeued after that).
    pub(super) written: bool,
    /// The transient error (`-LOADING`, `-BUSY`, …) it was last answered
    /// with: Redis's own answer, which it gets if its hold window ends
    /// before a resend is served.
    pub(super) transient: Option<Bytes>,
}

impl Job {
    /// Requests of the run still waiting for their reply.
    pub(super) fn remaining(&self) -> u32 {
        self.req.count - self.answered
    }

    /// Hands the next `count` replies, back to back in `reply`, to the client.
    pub(super) fn deliver(&mut self, count: u32, reply: Bytes) {
        let seq = self.req.seq + u64::from(self.answered);
        self.req.reply_to.send(seq, count, reply);
        self.answered += count;
    }

    /// Answers every request still waiting with the error `line`, counted
    /// in `stats` as requests failed for `cause`.
    pub(super) fn fail(mut self, line: &Bytes, stats: &LoopStats, cause: FailCause) {
        let n = self.remaining();
        if n == 0 {
            return;
        }
        stats.requests_failed.add(u64::from(n));
        stats.failed_by_cause[cause as usize].add(u64::from(n));
        let reply = if n == 1 {
            line.clone()
        } else {
            let mut all = BytesMut::with_capacity(line.len() * n as usize);
            for _ in 0..n {
                all.extend_from_slice(line);
            }
            all.freeze()
        };
        self.deliver(n, reply);
    }

    /// Drops the requests already answered from the front of the run.
    /// Returns how many bytes they took.
    pub(super) fn trim_answered(&mut self) -> usize {
        let mut skipped = 0;
        for _ in 0..self.answered {
            match first_request_len(&self.req.raw[skipped..]) {
                Some(len) => skipped += len,
                None => break,
            }
        }
        self.req.raw.advance(skipped);
        self.skip_requests(self.answered);
        self.answered = 0;
        skipped
    }

    /// Moves the start of the run past its first `n` requests, whose bytes
    /// have already been taken off `raw`.
    pub(super) fn skip_requests(&mut self, n: u32) {
        self.req.seq += u64::from(n);
        self.req.count -= n;
        self.req.retry_safe = self.req.retry_safe.checked_shr(n).unwrap_or(0);
    }

    /// Takes the first unanswered request off the run, as a job of its own
    /// (to hold it after a transient error, or to settle it alone after the
    /// connection was lost).
    pub(super) fn take_first(&mut self) -> Job {
        self.trim_answered();
        // The run was validated when decoded, so its first request is whole;
        // should that ever not hold, the rest goes as one job rather than
        // being misattributed.
        let (len, count) = match first_request_len(&self.req.raw) {
            Some(len) if self.req.count > 1 => (len, 1),
            _ => (self.req.raw.len(), self.req.count),
        };
        let first = Job {
            req: LaneRequest {
                seq: self.req.seq,
                raw: self.req.raw.split_to(len),
                count,
                retry_safe: self.req.retry_safe & 1,
                reply_to: self.req.reply_to.clone(),
                redirects: self.req.redirects,
                asking: self.req.asking,
            },
            answered: 0,
            accepted: self.accepted,
            hold_deadline: self.hold_deadline,
            attempts: self.attempts,
            written: self.written,
            transient: None,
        };
        self.skip_requests(count);
        first
    }
}

/// A request written (or being written) to the connection.
pub(super) struct Sent {
    /// `None` for the lane's own requests: the health-check `PING`, and
    /// the `ASKING` before a request a cluster node redirected with `-ASK`.
    pub(super) job: Option<Job>,
    /// The lane's own request is an `ASKING`.
    pub(super) asking: bool,
    /// Offset in the connection's byte stream just past this request: it has
    /// been fully written once that many bytes were.
    pub(super) end: u64,
    /// When it was put in the write buffer (the write follows in the same
    /// turn): its reply deadline runs from here, and the slowlog's time at
    /// Redis.
    pub(super) written_at: Instant,
}

impl Sent {
    /// When its reply is due (`--timeout` after the write).
    pub(super) fn deadline(&self, timeout: std::time::Duration) -> Instant {
        self.written_at + timeout
    }
}

/// Replies to the front run of requests that arrived and are not delivered
/// yet. They stay at the front of the read buffer, back to back as Redis
/// sent them, until they are handed over together.
#[derive(Default)]
pub(super) struct Replies {
    /// Their bytes: `rbuf[..len]`.
    pub(super) len: usize,
    pub(super) count: u32,
}

impl Replies {
    pub(super) fn push(&mut self, frame_len: usize) {
        self.len += frame_len;
        self.count += 1;
    }

    pub(super) fn deliver_to(&mut self, rbuf: &mut BytesMut, job: &mut Job) {
        if self.count > 0 {
            job.deliver(self.count, rbuf.split_to(self.len).freeze());
            self.len = 0;
            self.count = 0;
        }
    }

    /// Delivers to the front run, the only one replies gather for.
    pub(super) fn deliver_to_front(&mut self, rbuf: &mut BytesMut, inflight: &mut VecDeque<Sent>) {
        if let Some(job) = inflight.front_mut().and_then(|s| s.job.as_mut()) {
            self.deliver_to(rbuf, job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::inbox::{Delivery, ReplyInbox};
    use crate::client::roster::ReplyMemory;
    use crate::codec::ReplyDecoder;
    use std::time::Duration;

    /// A client's inbox, read one delivery at a time.
    struct Inbox(ReplyInbox, VecDeque<Delivery>);

    impl Inbox {
        fn new() -> Inbox {
            Inbox(
                ReplyInbox::new(None, std::sync::Arc::new(ReplyMemory::detached())),
                VecDeque::new(),
            )
        }

        fn try_recv(&mut self) -> Option<Delivery> {
            let mut arrived = Vec::new();
            self.0.try_take(&mut arrived);
            self.1.extend(arrived);
            self.1.pop_front()
        }
    }

    fn job(raw: &'static [u8], count: u32, retry_safe: u64) -> (Job, Inbox) {
        let inbox = Inbox::new();
        let now = Instant::now();
        let job = Job {
            req: LaneRequest {
                seq: 10,
                raw: Bytes::from_static(raw),
                count,
                retry_safe,
                reply_to: inbox.0.sender(),
                redirects: 0,
                asking: false,
            },
            answered: 0,
            accepted: now,
            hold_deadline: now,
            attempts: 2,
            written: true,
            transient: None,
        };
        (job, inbox)
    }

    const RUN: &[u8] =
        b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$4\r\nINCR\r\n$1\r\nb\r\n*1\r\n$4\r\nPING\r\n";

    #[test]
    fn a_run_splits_into_its_requests_in_order() {
        // GET and PING may be resent, INCR not.
        let (mut run, _rx) = job(RUN, 3, 0b101);
        let first = run.take_first();
        assert_eq!(&first.req.raw[..], b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n");
        assert_eq!(
            (first.req.seq, first.req.count, first.req.retry_safe),
            (10, 1, 1)
        );
        assert_eq!((first.attempts, first.written), (2, true));
        let second = run.take_first();
        assert_eq!(&second.req.raw[..], b"*2\r\n$4\r\nINCR\r\n$1\r\nb\r\n");
        assert_eq!((second.req.seq, second.req.retry_safe), (11, 0));
        assert_eq!((run.req.seq, run.req.count, run.req.retry_safe), (12, 1, 1));
        let third = run.take_first();
        assert_eq!(&third.req.raw[..], b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(run.remaining(), 0);
        assert!(run.req.raw.is_empty());
    }

    #[test]
    fn answered_requests_are_skipped_before_splitting() {
        let (mut run, mut rx) = job(RUN, 3, 0b111);
        run.deliver(1, Bytes::from_static(b"$1\r\nx\r\n"));
        let d = rx.try_recv().unwrap();
        assert_eq!((d.seq, d.count, &d.reply[..]), (10, 1, &b"$1\r\nx\r\n"[..]));
        let skipped = run.trim_answered();
        assert_eq!(skipped, b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n".len());
        assert_eq!((run.req.seq, run.req.count, run.answered), (11, 2, 0));
        let next = run.take_first();
        assert_eq!(next.req.seq, 11);
        assert!(next.req.raw.starts_with(b"*2\r\n$4\r\nINCR"));
    }

    #[test]
    fn failing_a_run_answers_each_remaining_request() {
        let (mut run, mut rx) = job(RUN, 3, 0);
        run.deliver(1, Bytes::from_static(b":1\r\n"));
        let stats = LoopStats::default();
        run.fail(
            &Bytes::from_static(b"-ERR gone\r\n"),
            &stats,
            FailCause::Timeout,
        );
        assert_eq!(stats.requests_failed.get(), 2, "the two not answered");
        let first = rx.try_recv().unwrap();
        assert_eq!((first.seq, first.count), (10, 1));
        let rest = rx.try_recv().unwrap();
        assert_eq!((rest.seq, rest.count), (11, 2));
        assert_eq!(&rest.reply[..], b"-ERR gone\r\n-ERR gone\r\n");
    }

    #[test]
    fn replies_gathered_in_place_leave_the_buffer_in_one_piece() {
        let (mut run, mut rx) = job(RUN, 3, 0);
        // Three replies, and the start of a fourth frame.
        let mut buf = BytesMut::from(&b":1\r\n$2\r\nab\r\n:3\r\n$5\r\nhe"[..]);
        let mut replies = Replies::default();
        let mut decoder = ReplyDecoder::default();
        while let Some(len) = decoder.decode_at(&mut buf, replies.len).unwrap() {
            replies.push(len);
        }
        // (The unfinished bulk made room for itself: the buffer may have moved.)
        let start = buf.as_ptr();
        assert_eq!((replies.count, replies.len), (3, 16));
        replies.deliver_to(&mut buf, &mut run);
        let d = rx.try_recv().unwrap();
        assert_eq!((d.seq, d.count), (10, 3));
        assert_eq!(&d.reply[..], b":1\r\n$2\r\nab\r\n:3\r\n");
        assert_eq!(d.reply.as_ptr(), start, "taken out in place, not copied");
        assert_eq!((replies.count, replies.len), (0, 0));
        // The unfinished frame is finished from the new front of the buffer.
        buf.extend_from_slice(b"llo\r\n");
        assert_eq!(decoder.decode_at(&mut buf, 0).unwrap(), Some(11));
        assert_eq!(&buf[..], b"$5\r\nhello\r\n");
    }

    /// A single request of `inbox`'s client, held after `answer`; a GET if
    /// `read_only`, else a SET.
    fn held(inbox: &Inbox, seq: u64, read_only: bool, answer: &'static [u8]) -> Job {
        let now = Instant::now();
        let raw: &'static [u8] = if read_only {
            b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n"
        } else {
            b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n"
        };
        Job {
            req: LaneRequest {
                seq,
                raw: Bytes::from_static(raw),
                count: 1,
                retry_safe: u64::from(read_only),
                reply_to: inbox.0.sender(),
                redirects: 0,
                asking: false,
            },
            answered: 0,
            accepted: now,
            hold_deadline: now + Duration::from_secs(60),
            attempts: 0,
            written: false,
            transient: Some(Bytes::from_static(answer)),
        }
    }

    #[test]
    fn held_requests_overtaken_by_a_later_one_of_their_client_get_their_transient_answer() {
        let mut x = Inbox::new();
        let mut y = Inbox::new();
        let mut retry_later = VecDeque::from([
            held(&x, 10, false, b"-LOADING x\r\n"),
            held(&y, 4, false, b"-BUSY y\r\n"),
            held(&x, 11, true, b"-LOADING x2\r\n"),
        ]);
        // Another client's request ran: nothing of x's or y's is released.
        let z = Inbox::new();
        let stats = LoopStats::default();
        assert!(!release_overtaken(
            &mut retry_later,
            &z.0.sender(),
            false,
            &stats
        ));
        assert_eq!(retry_later.len(), 3);
        // A read of x's ran: its held write must not run after it, its held
        // read may.
        assert!(release_overtaken(
            &mut retry_later,
            &x.0.sender(),
            true,
            &stats
        ));
        let first = x.try_recv().unwrap();
        assert_eq!(
            (first.seq, first.count, &first.reply[..]),
            (10, 1, &b"-LOADING x\r\n"[..])
        );
        assert!(x.try_recv().is_none());
        assert_eq!(
            retry_later.iter().map(|h| h.req.seq).collect::<Vec<_>>(),
            [4, 11]
        );
        // A write of x's ran: its held read must not run after it either.
        assert!(release_overtaken(
            &mut retry_later,
            &x.0.sender(),
            false,
            &stats
        ));
        let second = x.try_recv().unwrap();
        assert_eq!(
            (second.seq, &second.reply[..]),
            (11, &b"-LOADING x2\r\n"[..])
        );
        assert_eq!(retry_later.len(), 1);
        assert_eq!(retry_later[0].req.seq, 4);
        assert!(y.try_recv().is_none(), "y's request is still held");
        assert_eq!(stats.requests_failed.get(), 2, "x's two, answered");
    }
}
