//! A shared lane: one upstream connection that carries the stateless
//! commands of many clients at once.
//!
//! Clients send [`LaneRequest`]s — runs of consecutive requests — into the
//! lane's queue; the lane coalesces everything queued into one write, keeps a
//! FIFO of runs awaiting replies, splits replies off its read buffer and hands
//! those of each run (as the raw bytes that arrived, joined without a copy)
//! to the client that sent it, in one delivery per run and read. A run is
//! split into its requests only to hold one after a transient error or to
//! settle each on its own after a connection loss. A client is bound to one
//! lane, so its commands execute in the order it sent them.
//!
//! The lane owns the rules of [`crate::retry`]: it reconnects with backoff and
//! holds requests meanwhile (each up to its checkout deadline), holds and
//! resends requests answered `-LOADING`/`-BUSY`/…, resends unwritten and
//! retry-safe requests after a connection loss, and fails everything else with
//! an error that says what happened. A connection whose reply stream is in
//! doubt (timeout, bad reply, EOF) is marked broken and never reused.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bb8::{Pool, PooledConnection, RunError};
use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use crate::codec::{first_request_len, ReplyDecoder, ReplyKind};
use crate::error::Error;
use crate::pool::mailbox::Mailbox;
use crate::pool::manager::UpstreamManager;
use crate::pool::outbox::Outbox;
use crate::pool::write_gate::WriteGate;
use crate::retry::{is_transient_error, Backoff, BackoffPolicy};
use crate::stats::LoopStats;
use crate::upstream::ConnectError;

/// Stop taking new requests into the write buffer above this many bytes, so
/// that a slow upstream pushes back on clients instead of growing memory.
const WRITE_HIGH_WATER: usize = 4 << 20;
/// The health-check request, sent on an idle lane.
const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
/// A connection that lasted this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);

/// Most requests in one [`LaneRequest`] (one bit each in its `retry_safe`).
pub const MAX_RUN: u32 = 64;

/// A run of consecutive requests of one client, as handed to a lane: a
/// pipeline crosses into the lane as one message, not one per request.
#[derive(Debug)]
pub struct LaneRequest {
    /// The client's sequence number for the first request; the others follow
    /// it. Echoed in the deliveries.
    pub seq: u64,
    /// `count` whole requests back to back, forwarded verbatim.
    pub raw: Bytes,
    /// How many requests `raw` holds (1 to [`MAX_RUN`]).
    pub count: u32,
    /// Bit `i` set: request `i` may be resent after the connection was lost
    /// with it written.
    pub retry_safe: u64,
    /// Where the replies go.
    pub reply_to: ReplySender,
}

impl LaneRequest {
    /// Whether request `i` of the run (counted from its first) may be resent
    /// after it may have run: it is read-only.
    fn is_retry_safe(&self, i: u32) -> bool {
        i < MAX_RUN && self.retry_safe >> i & 1 == 1
    }
}

/// A client's way into its lane, cloned once per client (not per request).
/// When the last handle is dropped the lane finishes what it has and stops.
#[derive(Debug)]
pub struct LaneHandle(Arc<LaneQueue>);

/// A lane's end of its queue of [`LaneRequest`]s.
#[derive(Debug)]
pub(crate) struct LaneInbox(Arc<LaneQueue>);

#[derive(Debug)]
struct LaneQueue {
    mailbox: Mailbox<LaneRequest>,
    /// Live [`LaneHandle`]s.
    handles: AtomicUsize,
}

impl LaneHandle {
    /// A new lane's queue: the first handle to it, and the lane's end.
    pub(crate) fn open() -> (LaneHandle, LaneInbox) {
        let queue = Arc::new(LaneQueue {
            mailbox: Mailbox::default(),
            handles: AtomicUsize::new(1),
        });
        (LaneHandle(queue.clone()), LaneInbox(queue))
    }

    /// Queues a run for the lane; gives it back if the lane has stopped.
    pub fn send(&self, req: LaneRequest) -> Result<(), LaneRequest> {
        self.0.mailbox.send(req)
    }
}

impl Clone for LaneHandle {
    fn clone(&self) -> LaneHandle {
        self.0.handles.fetch_add(1, Ordering::Relaxed);
        LaneHandle(self.0.clone())
    }
}

impl Drop for LaneHandle {
    fn drop(&mut self) {
        if self.0.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.mailbox.hang_up();
        }
    }
}

impl LaneInbox {
    /// Moves every run waiting to `into`; ready with `false` once the queue
    /// is empty and every handle is gone.
    fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<LaneRequest>) -> Poll<bool> {
        self.0.mailbox.poll_take(cx, into)
    }
}

impl Drop for LaneInbox {
    fn drop(&mut self) {
        // Runs sent after the lane stopped are refused, so their clients
        // answer them at once.
        self.0.mailbox.close();
    }
}

/// The final answers to one or more consecutive requests: upstream replies
/// or error lines.
#[derive(Debug)]
pub struct Delivery {
    /// Sequence number of the first request answered.
    pub seq: u64,
    /// How many requests `reply` answers, in order.
    pub count: u32,
    /// `count` RESP replies back to back, to send to the client as they are.
    pub reply: Bytes,
}

/// What a client shares with the lanes that answer it: its mailbox for
/// deliveries and its output budget, in one allocation per client.
#[derive(Debug)]
struct ReplyBox {
    mailbox: Mailbox<Delivery>,
    budget: OutputBudget,
}

/// A client's end of its `ReplyBox`: it takes the deliveries, and closes
/// the mailbox when dropped, so that replies arriving for a client that has
/// gone are dropped rather than kept.
#[derive(Debug)]
pub struct ReplyInbox(Arc<ReplyBox>);

impl ReplyInbox {
    /// An inbox whose replies count against a budget of `limit` bytes
    /// (`None`: unlimited).
    pub fn new(limit: Option<usize>) -> ReplyInbox {
        ReplyInbox(Arc::new(ReplyBox {
            mailbox: Mailbox::default(),
            budget: OutputBudget::new(limit),
        }))
    }

    /// Where a request's replies are to go (a reference-count increment,
    /// not an allocation, per request).
    pub fn sender(&self) -> ReplySender {
        ReplySender(self.0.clone())
    }

    /// The client's output budget.
    pub fn budget(&self) -> &OutputBudget {
        &self.0.budget
    }

    /// Moves every delivery waiting to `into`, or registers for the next.
    pub fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<Delivery>) -> Poll<()> {
        // Nobody hangs up a client's mailbox: the client itself holds a
        // sender, and counts what it is owed.
        self.0.mailbox.poll_take(cx, into).map(|_| ())
    }

    /// Moves every delivery waiting to `into`; false if there was none.
    #[cfg(test)]
    pub fn try_take(&self, into: &mut Vec<Delivery>) -> bool {
        self.0.mailbox.try_take(into)
    }
}

impl Drop for ReplyInbox {
    fn drop(&mut self) {
        self.0.mailbox.close();
    }
}

/// Where the replies to a request go: cloned into each request.
#[derive(Debug, Clone)]
pub struct ReplySender(Arc<ReplyBox>);

impl ReplySender {
    /// Counts the reply against the client's budget, then delivers it — or,
    /// past the limit, an empty reply instead: the client is about to be
    /// disconnected, and the lane may run ahead of it by many replies, so
    /// they must not pile up in its inbox. The empty delivery still wakes it.
    fn send(&self, seq: u64, count: u32, reply: Bytes) {
        let reply = if self.0.budget.add(reply.len()) {
            Bytes::new()
        } else {
            reply
        };
        // A client that has gone away no longer wants its reply.
        let _ = self.0.mailbox.send(Delivery { seq, count, reply });
    }

    /// Whether both send to the same client.
    fn same_client(&self, other: &ReplySender) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Reply bytes held for one client — delivered to it and not yet written to
/// its socket — against `--client-output-limit`. Shared by the client and the
/// lanes that deliver to it, so that it is counted before a reply is queued.
#[derive(Debug)]
pub struct OutputBudget {
    held: AtomicUsize,
    limit: Option<usize>,
    /// The limit was passed once: the client must go, even if writing to it
    /// brings the count back down — replies may have been dropped for it.
    exceeded: AtomicBool,
}

impl OutputBudget {
    /// A budget of `limit` bytes (`None`: unlimited).
    pub fn new(limit: Option<usize>) -> Self {
        OutputBudget {
            held: AtomicUsize::new(0),
            limit,
            exceeded: AtomicBool::new(false),
        }
    }

    /// Counts `n` more bytes; true once the limit has been passed.
    pub fn add(&self, n: usize) -> bool {
        let held = self.held.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        if self.limit.is_some_and(|limit| held > limit) {
            self.exceeded.store(true, Ordering::Relaxed);
        }
        self.exceeded()
    }

    /// `n` bytes were written to the client (or dropped).
    pub fn release(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether the limit has been passed (it stays passed).
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }
}

/// What a lane needs to know.
#[derive(Debug, Clone)]
pub struct LaneSettings {
    /// Upstream address, for messages.
    pub addr: Arc<str>,
    /// Request deadline.
    pub timeout: Duration,
    /// Longest wait for a connection.
    pub checkout_timeout: Duration,
    /// How long a request may be held unsent during an outage.
    pub hold_timeout: Duration,
    /// Retries per request.
    pub retries: u32,
    /// Reconnect and transient-error backoff.
    pub backoff: BackoffPolicy,
    /// Idle time after which the lane PINGs its connection.
    pub health_check_interval: Option<Duration>,
    /// Read buffer size.
    pub read_buffer_size: usize,
    /// Hold new requests while a write is unanswered (`--batch-writes`).
    pub batch_writes: bool,
    /// The event loop's counters (writes and the requests they carry).
    pub stats: Arc<LoopStats>,
}

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
fn release_overtaken(
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
                held.fail(&answer, stats);
            }
            _ => retry_later.push_back(held),
        }
    }
    true
}

/// A run of requests inside the lane.
struct Job {
    req: LaneRequest,
    /// Requests of the run answered so far (replies arrive in order).
    answered: u32,
    /// When the lane took it.
    accepted: Instant,
    /// Until when it may be held unsent: while no connection can be had, or
    /// while the upstream answers -LOADING/-BUSY/… (`--hold-timeout`).
    hold_deadline: Instant,
    /// Retries so far.
    attempts: u32,
    /// It was fully written on a connection that then broke, so it may have
    /// run (only read-only requests are requeued after that).
    written: bool,
    /// The transient error (`-LOADING`, `-BUSY`, …) it was last answered
    /// with: Redis's own answer, which it gets if its hold window ends
    /// before a resend is served.
    transient: Option<Bytes>,
}

impl Job {
    /// Requests of the run still waiting for their reply.
    fn remaining(&self) -> u32 {
        self.req.count - self.answered
    }

    /// Hands the next `count` replies, back to back in `reply`, to the client.
    fn deliver(&mut self, count: u32, reply: Bytes) {
        let seq = self.req.seq + u64::from(self.answered);
        self.req.reply_to.send(seq, count, reply);
        self.answered += count;
    }

    /// Answers every request still waiting with the error `line`, counted
    /// in `stats` as requests failed.
    fn fail(mut self, line: &Bytes, stats: &LoopStats) {
        let n = self.remaining();
        if n == 0 {
            return;
        }
        stats.requests_failed.add(u64::from(n));
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
    fn trim_answered(&mut self) -> usize {
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
    fn skip_requests(&mut self, n: u32) {
        self.req.seq += u64::from(n);
        self.req.count -= n;
        self.req.retry_safe = self.req.retry_safe.checked_shr(n).unwrap_or(0);
    }

    /// Takes the first unanswered request off the run, as a job of its own
    /// (to hold it after a transient error, or to settle it alone after the
    /// connection was lost).
    fn take_first(&mut self) -> Job {
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
struct Sent {
    /// `None` for the lane's own health-check PING.
    job: Option<Job>,
    /// Offset in the connection's byte stream just past this request: it has
    /// been fully written once that many bytes were.
    end: u64,
    /// Reply deadline.
    deadline: Instant,
}

/// Replies to the front run of requests that arrived and are not delivered
/// yet. They stay at the front of the read buffer, back to back as Redis
/// sent them, until they are handed over together.
#[derive(Default)]
struct Replies {
    /// Their bytes: `rbuf[..len]`.
    len: usize,
    count: u32,
}

impl Replies {
    fn push(&mut self, frame_len: usize) {
        self.len += frame_len;
        self.count += 1;
    }

    fn deliver_to(&mut self, rbuf: &mut BytesMut, job: &mut Job) {
        if self.count > 0 {
            job.deliver(self.count, rbuf.split_to(self.len).freeze());
            self.len = 0;
            self.count = 0;
        }
    }

    /// Delivers to the front run, the only one replies gather for.
    fn deliver_to_front(&mut self, rbuf: &mut BytesMut, inflight: &mut VecDeque<Sent>) {
        if let Some(job) = inflight.front_mut().and_then(|s| s.job.as_mut()) {
            self.deliver_to(rbuf, job);
        }
    }
}

/// The per-connection state replies act on.
struct Answers<'a> {
    inflight: &'a mut VecDeque<Sent>,
    /// Requests answered with a transient error, to resend after a pause.
    retry_later: &'a mut VecDeque<Job>,
    hold_until: &'a mut Option<Instant>,
    backoff: &'a mut Backoff,
}

/// Why a connection stopped being usable.
enum Broken {
    Lost(String),
    Timeout,
    BadReply(String),
}

/// The upstream is unreachable; kept to tell waiting clients why.
struct Outage {
    since: Instant,
    attempts: u32,
    last: ConnectError,
}

/// One lane's task state.
pub(crate) struct Lane {
    id: usize,
    inbox: LaneInbox,
    /// Runs taken from `inbox`, kept for its allocation.
    arrived: Vec<LaneRequest>,
    pool: Pool<UpstreamManager>,
    failures: watch::Receiver<Option<ConnectError>>,
    settings: Arc<LaneSettings>,
    /// Requests not yet written, oldest first.
    queue: VecDeque<Job>,
    outage: Option<Outage>,
    /// All senders are gone: finish what is pending, then stop.
    closing: bool,
}

impl Lane {
    pub(crate) fn new(
        id: usize,
        inbox: LaneInbox,
        pool: Pool<UpstreamManager>,
        failures: watch::Receiver<Option<ConnectError>>,
        settings: Arc<LaneSettings>,
    ) -> Lane {
        Lane {
            id,
            inbox,
            arrived: Vec::new(),
            pool,
            failures,
            settings,
            queue: VecDeque::new(),
            outage: None,
            closing: false,
        }
    }

    /// Runs until every sender is gone and every request is answered.
    pub(crate) async fn run(mut self) {
        let mut reconnect = self.settings.backoff.delays();
        let mut delay_first = None;
        loop {
            let Some(conn) = self.connect(&mut reconnect, delay_first.take()).await else {
                return;
            };
            let connected = Instant::now();
            self.serve(conn).await;
            if self.closing && self.queue.is_empty() {
                return;
            }
            // A connection that validated and broke again at once (a flapping
            // upstream, a proxy in between that drops traffic) must not turn
            // into a tight reconnect loop that burns every request's retries:
            // keep backing off until a connection stays up for a while.
            if connected.elapsed() < STABLE_CONNECTION {
                delay_first = Some(reconnect.next_delay());
            } else {
                reconnect = self.settings.backoff.delays();
            }
        }
    }

    fn accept(&mut self, req: LaneRequest, now: Instant) {
        let s = &self.settings;
        self.queue.push_back(Job {
            req,
            answered: 0,
            accepted: now,
            hold_deadline: now + s.hold_timeout,
            attempts: 0,
            written: false,
            transient: None,
        });
    }

    /// Takes the runs waiting in the inbox into the queue, or registers for
    /// the next (ready once the inbox is empty for good, too: then the lane
    /// is closing). `clock` is the time if it was read already in this turn
    /// of the caller's loop (one clock read per turn is plenty for deadlines
    /// of milliseconds, and it shows at one client).
    fn poll_accept(&mut self, cx: &mut Context<'_>, clock: &mut Option<Instant>) -> Poll<()> {
        let Poll::Ready(open) = self.inbox.poll_take(cx, &mut self.arrived) else {
            return Poll::Pending;
        };
        if !open {
            self.closing = true;
            return Poll::Ready(());
        }
        let now = *clock.get_or_insert_with(Instant::now);
        let mut arrived = std::mem::take(&mut self.arrived);
        for req in arrived.drain(..) {
            self.accept(req, now);
        }
        self.arrived = arrived;
        Poll::Ready(())
    }

    /// The error for a request that never got onto a connection in time.
    fn not_sent_error(&self, waited: Duration) -> Error {
        match &self.outage {
            Some(o) => Error::Unavailable {
                addr: self.settings.addr.clone(),
                cause: o.last.to_string().into(),
                attempts: o.attempts,
                elapsed: o.since.elapsed(),
            },
            None => Error::NotSent {
                addr: self.settings.addr.clone(),
                after: waited,
            },
        }
    }

    /// The answer for a request whose hold window ended before it could be
    /// (re)sent: the transient error it got last, if any (Redis's own
    /// `-LOADING` is the truth, not "never sent"). A request that was written
    /// on a connection that then broke may have run: the outage that kept it
    /// from being resent if there is one, else the lost connection. Anything
    /// else was never sent, and the error says why — kept in `not_sent` so
    /// that many requests expiring at once share one line.
    fn expired_error(&self, job: &Job, now: Instant, not_sent: &mut Option<Bytes>) -> Bytes {
        if let Some(reply) = &job.transient {
            return reply.clone();
        }
        if job.written && self.outage.is_none() {
            return Error::LostAfterWrite.to_resp();
        }
        not_sent
            .get_or_insert_with(|| {
                self.not_sent_error(now.saturating_duration_since(job.accepted))
                    .to_resp()
            })
            .clone()
    }

    /// Fails queued requests whose hold deadline has passed.
    fn expire_queue(&mut self) {
        let now = Instant::now();
        let mut not_sent = None;
        while self.queue.front().is_some_and(|j| j.hold_deadline <= now) {
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            let line = self.expired_error(&job, now, &mut not_sent);
            job.fail(&line, &self.settings.stats);
        }
    }

    /// Gets a validated connection from the pool, retrying with backoff while
    /// still taking requests and failing those that wait too long. `None` when
    /// the lane is closing.
    async fn connect(
        &mut self,
        backoff: &mut Backoff,
        mut delay: Option<Duration>,
    ) -> Option<PooledConnection<'static, UpstreamManager>> {
        loop {
            if let Some(delay) = delay.take() {
                self.wait_taking_requests(Instant::now() + delay).await;
            }
            if self.closing {
                let error = Error::ShuttingDown.to_resp();
                for job in self.queue.drain(..) {
                    job.fail(&error, &self.settings.stats);
                }
                return None;
            }
            let attempt = checkout(
                self.pool.clone(),
                self.failures.clone(),
                self.settings.checkout_timeout,
            );
            tokio::pin!(attempt);
            let result = loop {
                let expiry = self.queue.front().map(|j| j.hold_deadline);
                tokio::select! {
                    r = &mut attempt => break r,
                    () = poll_fn(|cx| self.poll_accept(cx, &mut None)), if !self.closing => {}
                    _ = sleep_until_opt(expiry) => self.expire_queue(),
                }
            };
            match result {
                Ok(conn) => {
                    if let Some(o) = self.outage.take() {
                        tracing::info!(lane = self.id, upstream = %self.settings.addr, down_for_ms = o.since.elapsed().as_millis() as u64, attempts = o.attempts, "upstream available again");
                    }
                    return Some(conn);
                }
                Err(e) => match &mut self.outage {
                    None => {
                        tracing::warn!(lane = self.id, upstream = %self.settings.addr, error = %e, "upstream unavailable; reconnecting with backoff, requests are held up to --hold-timeout");
                        self.outage = Some(Outage {
                            since: Instant::now(),
                            attempts: 1,
                            last: e,
                        });
                    }
                    Some(o) => {
                        tracing::debug!(lane = self.id, upstream = %self.settings.addr, error = %e, attempts = o.attempts, "upstream still unavailable");
                        o.attempts += 1;
                        o.last = e;
                    }
                },
            }
            delay = Some(backoff.next_delay());
        }
    }

    /// Waits until `until` while still queueing new requests and failing
    /// those whose checkout deadline passes.
    async fn wait_taking_requests(&mut self, until: Instant) {
        loop {
            let expiry = self.queue.front().map(|j| j.hold_deadline);
            tokio::select! {
                _ = sleep_until(until) => return,
                () = poll_fn(|cx| self.poll_accept(cx, &mut None)), if !self.closing => {
                    if self.closing {
                        return;
                    }
                }
                _ = sleep_until_opt(expiry) => self.expire_queue(),
            }
        }
    }

    /// Carries requests over `conn` until it breaks or the lane closes.
    async fn serve(&mut self, mut conn: PooledConnection<'static, UpstreamManager>) {
        let s = self.settings.clone();
        let mut inflight: VecDeque<Sent> = VecDeque::new();
        // Requests answered with a transient error, to resend after a pause.
        let mut retry_later: VecDeque<Job> = VecDeque::new();
        let mut hold_until: Option<Instant> = None;
        let mut transient_backoff = s.backoff.delays();
        let mut wbuf = Outbox::with_capacity(s.read_buffer_size);
        let mut enqueued: u64 = 0;
        let mut written: u64 = 0;
        let mut decoder = ReplyDecoder::default();
        // When the connection last read or wrote, as of the last tick: the
        // I/O itself only raises `io_since_tick`, so that it does not read
        // the clock twice per turn for a health check measured in seconds.
        let mut last_io = Instant::now();
        let mut io_since_tick = false;
        // The time read in the current turn of the loop, if it was.
        let mut turn_clock: Option<Instant> = None;
        let mut gate = WriteGate::new(s.batch_writes);
        // Deadlines (reply timeout, end of a hold, idle health check) are
        // checked on one periodic tick instead of a timer per loop turn:
        // arming and disarming timers on every batch costs more than the
        // precision is worth (the tick is 1/20 of the timeout, ≤ 100 ms).
        let mut ticker = tokio::time::interval(
            (s.timeout / 20).clamp(Duration::from_millis(5), Duration::from_millis(100)),
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        // The loop is polled by hand rather than through `select!`: the
        // inbox and the ticker are only changed by other tasks and by time,
        // which wake this task when they do, so each is polled once per poll
        // of the task; the connection's reads and writes, which the loop's
        // own work changes, on every turn. Sources are taken in the order of
        // urgency, one event per turn: replies, the write, new requests, the
        // tick.
        let broken = {
            let c = &mut *conn;
            let (mut rd, mut wr) = c.stream.split();
            let rbuf = &mut c.read_buf;
            poll_fn(|cx| {
                let mut inbox_registered = false;
                loop {
                    if self.closing
                        && inflight.is_empty()
                        && self.queue.is_empty()
                        && retry_later.is_empty()
                        && wbuf.is_empty()
                    {
                        return Poll::Ready(None);
                    }
                    gate.answered_up_to(inflight.front().map(|f| f.end));
                    // Move queued requests into the write buffer, unless holding
                    // after a transient error (order must be kept) or batching
                    // behind an unanswered write (`write_gate`).
                    if hold_until.is_none() && !self.queue.is_empty() && gate.open(self.queue.len())
                    {
                        // Read when the requests were taken in, just before.
                        let now = *turn_clock.get_or_insert_with(Instant::now);
                        let batch_start = enqueued;
                        let mut batch_requests = 0u64;
                        while wbuf.len() < WRITE_HIGH_WATER {
                            let Some(mut job) = self.queue.pop_front() else {
                                break;
                            };
                            if job.hold_deadline <= now {
                                let error = self.expired_error(&job, now, &mut None);
                                job.fail(&error, &s.stats);
                                continue;
                            }
                            // Sent again: an earlier transient answer is no
                            // longer the latest word on it.
                            job.transient = None;
                            wbuf.push(&job.req.raw);
                            enqueued += job.req.raw.len() as u64;
                            batch_requests += u64::from(job.req.count);
                            // The reply deadline runs from the write.
                            let deadline = now + s.timeout;
                            inflight.push_back(Sent {
                                job: Some(job),
                                end: enqueued,
                                deadline,
                            });
                        }
                        // Unless every job had expired unsent.
                        if enqueued > batch_start {
                            gate.wrote(enqueued);
                            s.stats.lane_writes.add(1);
                            s.stats.lane_requests_written.add(batch_requests);
                        }
                    }
                    if rbuf.capacity() - rbuf.len() < s.read_buffer_size / 4 {
                        rbuf.reserve(s.read_buffer_size);
                    }
                    turn_clock = None;
                    let read = std::pin::pin!(rd.read_buf(rbuf)).poll(cx);
                    match read {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Some(Broken::Lost(
                                "connection closed by upstream".into(),
                            )))
                        }
                        Poll::Ready(Err(e)) => {
                            return Poll::Ready(Some(Broken::Lost(e.to_string())))
                        }
                        Poll::Ready(Ok(_)) => {
                            io_since_tick = true;
                            let mut answers = Answers {
                                inflight: &mut inflight,
                                retry_later: &mut retry_later,
                                hold_until: &mut hold_until,
                                backoff: &mut transient_backoff,
                            };
                            if let Err(b) = self.on_replies(rbuf, &mut decoder, &mut answers) {
                                return Poll::Ready(Some(b));
                            }
                            continue;
                        }
                        Poll::Pending => {}
                    }
                    if !wbuf.is_empty() || wr.has_pending_output() {
                        let write = std::pin::pin!(wr.write_buf(&mut wbuf)).poll(cx);
                        match write {
                            Poll::Ready(Ok(n)) => {
                                written += n as u64;
                                io_since_tick = true;
                                continue;
                            }
                            Poll::Ready(Err(e)) => {
                                return Poll::Ready(Some(Broken::Lost(e.to_string())))
                            }
                            Poll::Pending => {}
                        }
                    }
                    if !inbox_registered && !self.closing && wbuf.len() < WRITE_HIGH_WATER {
                        // Taking what waits leaves the waker registered.
                        inbox_registered = true;
                        if self.poll_accept(cx, &mut turn_clock).is_ready() {
                            continue;
                        }
                    }
                    // Last: its waker is the one left registered when nothing
                    // else is ready (once per poll of the task).
                    if ticker.poll_tick(cx).is_ready() {
                        let now = Instant::now();
                        if std::mem::take(&mut io_since_tick) {
                            last_io = now;
                        }
                        if inflight.front().is_some_and(|f| f.deadline <= now) {
                            return Poll::Ready(Some(Broken::Timeout));
                        }
                        // Resume after a hold only once every earlier request
                        // has answered, so resent requests keep their order.
                        if hold_until.is_some_and(|h| h <= now) && inflight.is_empty() {
                            hold_until = None;
                            while let Some(job) = retry_later.pop_back() {
                                self.queue.push_front(job);
                            }
                        }
                        let idle = inflight.is_empty() && wbuf.is_empty() && hold_until.is_none();
                        if idle && s.health_check_interval.is_some_and(|i| last_io + i <= now) {
                            wbuf.push_static(PING);
                            enqueued += PING.len() as u64;
                            inflight.push_back(Sent {
                                job: None,
                                end: enqueued,
                                deadline: now + s.timeout,
                            });
                        }
                        continue;
                    }
                    return Poll::Pending;
                }
            })
            .await
        };
        conn.last_used = std::time::Instant::now();
        if let Some(broken) = broken {
            conn.broken = true;
            drop(conn);
            self.settle(broken, inflight, retry_later, written);
        }
    }

    /// Takes every whole reply out of `rbuf` and answers the requests in
    /// flight with them. The replies to one run of requests reach its client
    /// as one delivery, taken out of `rbuf` in one piece (they lie back to
    /// back there): one hand-over per pipeline, not one per reply.
    fn on_replies(
        &mut self,
        rbuf: &mut BytesMut,
        decoder: &mut ReplyDecoder,
        a: &mut Answers<'_>,
    ) -> Result<(), Broken> {
        let mut replies = Replies::default();
        let result = loop {
            match decoder.decode_at(rbuf, replies.len) {
                Ok(Some(len)) => {
                    if let Err(b) = self.on_reply(rbuf, len, &mut replies, a) {
                        break Err(b);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(Broken::BadReply(e.to_string())),
            }
        };
        // Whatever part of the front run was answered goes out now, even on
        // error: those replies are good, and the client can write them.
        replies.deliver_to_front(rbuf, a.inflight);
        // Replies only gather for the front run, so nothing is left over;
        // the decoder's place in an unfinished frame counts from here.
        debug_assert_eq!(replies.count, 0);
        result
    }

    /// Handles the reply frame `rbuf[replies.len..][..len]`: adds it to
    /// `replies` (the front run's undelivered replies), or holds its request
    /// after a transient error.
    fn on_reply(
        &mut self,
        rbuf: &mut BytesMut,
        len: usize,
        replies: &mut Replies,
        a: &mut Answers<'_>,
    ) -> Result<(), Broken> {
        let frame = &rbuf[replies.len..replies.len + len];
        if ReplyKind::of(frame) == ReplyKind::Push {
            // Shared connections never subscribe or track; ignore strays.
            tracing::debug!(
                lane = self.id,
                "ignoring a push frame on a shared connection"
            );
            // The replies before it go first, so that it can be dropped
            // from the front.
            replies.deliver_to_front(rbuf, a.inflight);
            rbuf.advance(replies.len + len);
            return Ok(());
        }
        let Some(sent) = a.inflight.front_mut() else {
            return Err(Broken::BadReply(
                "a reply arrived with no request pending".into(),
            ));
        };
        let Some(job) = sent.job.as_mut() else {
            // A health check's PING: the runs before it were answered in
            // full, so nothing is gathered ahead of its reply.
            debug_assert_eq!(replies.len, 0);
            let broken = (frame != b"+PONG\r\n").then(|| {
                let answer = String::from_utf8_lossy(&frame[..frame.len().min(64)]);
                Broken::BadReply(format!("health check PING answered {}", answer.trim_end()))
            });
            a.inflight.pop_front();
            rbuf.advance(len);
            return broken.map_or(Ok(()), Err);
        };
        if is_transient_error(frame) {
            // The command did not run: hold it and resend after a backoff,
            // for as long as its hold window lasts (not limited by --retries:
            // a restart's LOADING phase is one outage, however many polls).
            let delay = a.backoff.next_delay();
            let now = Instant::now();
            if now + delay < job.hold_deadline {
                // The replies before it in its run are good: hand them over
                // first, then take the held request out of the run.
                replies.deliver_to(rbuf, job);
                let mut held = job.take_first();
                held.transient = Some(rbuf.split_to(len).freeze());
                a.retry_later.push_back(held);
                self.settings.stats.requests_held.add(1);
                if job.remaining() == 0 {
                    a.inflight.pop_front();
                }
                let until = now + delay;
                *a.hold_until = Some(a.hold_until.map_or(until, |h| h.max(until)));
                return Ok(());
            }
        } else {
            if a.backoff.used() {
                // Only a sequence that was drawn from needs replacing:
                // building one per reply would cost more than the reply.
                *a.backoff = self.settings.backoff.delays();
            }
            if !a.retry_later.is_empty() {
                // The request this answers comes after the run's answered
                // ones and those gathered in `replies`.
                let read_only = job.req.is_retry_safe(job.answered + replies.count);
                if release_overtaken(
                    a.retry_later,
                    &job.req.reply_to,
                    read_only,
                    &self.settings.stats,
                ) && a.retry_later.is_empty()
                {
                    // Nothing is left to resend, and the upstream just ran a
                    // command: no reason to keep the lane waiting.
                    *a.hold_until = None;
                }
            }
        }
        replies.push(len);
        if replies.count == job.remaining() {
            replies.deliver_to(rbuf, job);
            a.inflight.pop_front();
        }
        Ok(())
    }

    /// After a connection broke: resend what is safe to resend, in order, and
    /// fail the rest with an error that says what may have happened.
    fn settle(
        &mut self,
        broken: Broken,
        inflight: VecDeque<Sent>,
        retry_later: VecDeque<Job>,
        written: u64,
    ) {
        let s = self.settings.clone();
        let (reason, error) = match &broken {
            Broken::Lost(why) => (why.clone(), Error::LostAfterWrite),
            Broken::Timeout => (
                format!("no reply within {:?}", s.timeout),
                Error::LostAfterWrite,
            ),
            Broken::BadReply(why) => (
                format!("invalid reply: {why}"),
                Error::UpstreamProtocol {
                    addr: s.addr.clone(),
                    detail: why.clone().into(),
                },
            ),
        };
        tracing::warn!(lane = self.id, upstream = %s.addr, reason = %reason, pending = inflight.len(), "upstream connection broken; closing it");
        s.stats.lane_connections_broken.add(1);
        let error = error.to_resp();
        let timeout_error = Error::Timeout {
            addr: s.addr.clone(),
            after: s.timeout,
        }
        .to_resp();
        let now = Instant::now();
        // Order: requests answered with a transient error were sent before
        // every request still in flight; the queue holds the newest.
        let mut again: VecDeque<Job> = retry_later;
        for sent in inflight {
            let Some(mut run) = sent.job else { continue };
            // Each request of a run is settled on its own: a write may have
            // stopped in the middle of the run. The run's bytes end at
            // `sent.end` in the connection's byte stream.
            let mut end = sent.end - run.req.raw.len() as u64;
            end += run.trim_answered() as u64;
            while run.remaining() > 0 {
                let mut job = run.take_first();
                end += job.req.raw.len() as u64;
                let fully_written = end <= written;
                let retry_safe = job.req.is_retry_safe(0);
                if !fully_written {
                    // Redis executes only whole commands: this one did not run.
                    again.push_back(job);
                } else if sent.deadline <= now {
                    job.fail(&timeout_error, &s.stats);
                } else if retry_safe && job.attempts < s.retries {
                    job.attempts += 1;
                    job.written = true;
                    s.stats.requests_resent.add(1);
                    again.push_back(job);
                } else if retry_safe {
                    let attempts = job.attempts + 1;
                    job.fail(
                        &Error::RetriesExhausted {
                            addr: s.addr.clone(),
                            attempts,
                        }
                        .to_resp(),
                        &s.stats,
                    );
                } else {
                    job.fail(&error, &s.stats);
                }
            }
        }
        again.append(&mut self.queue);
        self.queue = again;
    }
}

/// How often a checkout that is still waiting asks the pool again. bb8 does
/// not wake a waiter when a connection attempt fails, and starts a new
/// attempt only for a waiter that arrives while none is pending. On a
/// multi-thread runtime an attempt can fail between our look at `failures`
/// and bb8's count of pending attempts, and the waiter then slept until
/// bb8's own timeout (seen in a test as a 10 s stall after the upstream was
/// back). Asking again re-evaluates; it never starts a second attempt while
/// one is pending.
const CHECKOUT_REPOLL: Duration = Duration::from_millis(100);

/// Checks out a connection, returning the connect error as soon as an attempt
/// fails (bb8 itself would only report a timeout).
async fn checkout(
    pool: Pool<UpstreamManager>,
    mut failures: watch::Receiver<Option<ConnectError>>,
    wait: Duration,
) -> Result<PooledConnection<'static, UpstreamManager>, ConnectError> {
    failures.mark_unchanged();
    let last = |f: &watch::Receiver<Option<ConnectError>>| {
        f.borrow()
            .clone()
            .unwrap_or(ConnectError::CheckoutTimeout(wait))
    };
    let deadline = Instant::now() + wait;
    loop {
        let ask_again = (Instant::now() + CHECKOUT_REPOLL).min(deadline);
        tokio::select! {
            r = pool.get_owned() => return r.map_err(|e| match e {
                RunError::User(e) => e,
                RunError::TimedOut => last(&failures),
            }),
            changed = failures.changed() => return match changed {
                Ok(()) => Err(last(&failures)),
                Err(_) => Err(ConnectError::CheckoutTimeout(wait)),
            },
            () = sleep_until(ask_again) => {
                if ask_again >= deadline {
                    return Err(last(&failures));
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's inbox, read one delivery at a time.
    struct Inbox(ReplyInbox, VecDeque<Delivery>);

    impl Inbox {
        fn new() -> Inbox {
            Inbox(ReplyInbox::new(None), VecDeque::new())
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
        run.fail(&Bytes::from_static(b"-ERR gone\r\n"), &stats);
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
