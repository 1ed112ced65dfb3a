//! A shared lane: one upstream connection at a time that carries the
//! stateless commands of many clients at once.
//!
//! Clients send [`LaneRequest`]s — runs of consecutive requests — into the
//! lane's queue; the lane coalesces everything queued into one write, keeps a
//! FIFO of runs awaiting replies, splits replies off its read buffer and hands
//! those of each run (as the raw bytes that arrived, joined without a copy)
//! to the client that sent it, in one delivery per run and read. A client is
//! bound to one lane, so its commands execute in the order it sent them.
//!
//! * this module — the lane's queue and task: take requests, get a
//!   connection, serve over it, start again when it breaks;
//! * [`outage`] — getting a validated connection while the upstream is
//!   unreachable, holding requests up to `--hold-timeout`;
//! * [`carrier`] — the work over one connection, and what becomes of each
//!   request when it breaks;
//! * [`job`] — a run of requests inside the lane.
//!
//! The lane owns the rules of [`crate::retry`]: it reconnects with backoff and
//! holds requests meanwhile, holds and resends requests answered
//! `-LOADING`/`-BUSY`/…, resends unwritten and retry-safe requests after a
//! connection loss, and fails everything else with an error that says what
//! happened. A connection whose reply stream is in doubt (timeout, bad reply,
//! EOF) is marked broken and never reused.

mod carrier;
mod job;
mod outage;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bb8::Pool;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::endpoint::{Endpoint, Identity, Node};
use super::mailbox::Mailbox;
use super::manager::UpstreamManager;
use super::PoolContext;
use crate::client::inbox::ReplySender;
use crate::error::{ConnectError, Error};
use crate::pool::lane_set::LaneSetProbe;
use crate::stats::FailCause;
pub(crate) use carrier::moved_to;
use carrier::Carrier;
use job::Job;
use outage::Outage;

/// Most requests in one [`LaneRequest`] (one bit each in its `retry_safe`).
pub(crate) const MAX_RUN: u32 = 64;

/// A run of consecutive requests of one client, as handed to a lane: a
/// pipeline crosses into the lane as one message, not one per request.
#[derive(Debug)]
pub(crate) struct LaneRequest {
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
    /// Times a cluster node redirected it (`-MOVED`, `-ASK`) to another node's
    /// lane; bounded by [`MAX_REDIRECTS`].
    pub redirects: u8,
    /// A cluster node answered `-ASK` (its slot is being migrated to the
    /// node this lane reaches): the request is written right after an
    /// `ASKING`, which lets the importing node serve it once.
    pub asking: bool,
}

/// The most `-MOVED` redirections a request follows before its client
/// gets an error.
pub(crate) const MAX_REDIRECTS: u8 = 5;

impl LaneRequest {
    /// Whether request `i` of the run (counted from its first) may be resent
    /// after it may have run: it is read-only.
    pub(super) fn is_retry_safe(&self, i: u32) -> bool {
        i < MAX_RUN && self.retry_safe >> i & 1 == 1
    }
}

/// A client's way into its lane, cloned once per client (not per request).
/// When the last handle is dropped the lane finishes what it has and stops.
#[derive(Debug)]
pub(crate) struct LaneHandle(Arc<LaneQueue>);

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

/// One lane's task state.
pub(crate) struct Lane {
    id: usize,
    /// The RESP version its connections speak (a request a cluster node
    /// redirects goes to a lane of the same protocol on the new node).
    protocol: u8,
    /// The upstream node: its address for messages, and whether a
    /// connection still goes to it (a followed primary moves).
    node: Node,
    /// Who its connections log in as: a request a cluster node redirects
    /// goes to a lane of the same identity on the new node.
    identity: Identity,
    ctx: Arc<PoolContext>,
    inbox: LaneInbox,
    /// Runs taken from `inbox`, kept for its allocation.
    arrived: Vec<LaneRequest>,
    pool: Pool<UpstreamManager>,
    failures: watch::Receiver<Option<ConnectError>>,
    /// Requests not yet written, oldest first.
    queue: VecDeque<Job>,
    outage: Option<Outage>,
    /// All senders are gone: finish what is pending, then stop.
    closing: bool,
    /// The lane set's gauges: whether this lane is connected.
    probe: Arc<LaneSetProbe>,
}

impl Lane {
    pub(crate) fn new(
        id: usize,
        endpoint: &Endpoint,
        ctx: Arc<PoolContext>,
        inbox: LaneInbox,
        pool: Pool<UpstreamManager>,
        failures: watch::Receiver<Option<ConnectError>>,
        probe: Arc<LaneSetProbe>,
    ) -> Lane {
        Lane {
            id,
            protocol: 2,
            node: endpoint.node.clone(),
            identity: endpoint.identity.clone(),
            ctx,
            inbox,
            arrived: Vec::new(),
            pool,
            failures,
            queue: VecDeque::new(),
            outage: None,
            closing: false,
            probe,
        }
    }

    /// The RESP version the lane's connections speak (2 unless said): a
    /// request a cluster node redirects goes to a lane of the same
    /// protocol on the new owner.
    pub(crate) fn speaking(mut self, protocol: u8) -> Lane {
        self.protocol = protocol;
        self
    }

    /// Runs until every sender is gone and every request is answered.
    ///
    /// Reconnecting after a loss: a connection that served requests was a
    /// good one, so the next one is taken at once (a validated spare, when
    /// the pool has one) and the backoff starts again from its base. One
    /// that broke before answering anything (a flapping upstream, a proxy in
    /// between that drops traffic) must not turn into a tight reconnect loop
    /// that burns every request's retries: the backoff keeps growing until a
    /// connection serves again.
    pub(crate) async fn run(mut self) {
        let mut reconnect = self.ctx.retry.backoff().delays();
        let mut delay_first = None;
        let mut generation = None;
        loop {
            let Some(conn) = self.connect(&mut reconnect, delay_first.take()).await else {
                return;
            };
            if let Some(followed) = self.node.following() {
                if generation.is_some_and(|g| g != conn.generation) {
                    tracing::info!(lane = self.id, primary = %self.node.addr(), since_switch_ms = followed.since().elapsed().as_millis() as u64, queued = self.queue.len(), "serving the new primary");
                }
                generation = Some(conn.generation);
            }
            let mut carrier = Carrier::new(conn, &self);
            self.probe.lane_connected(true);
            let served = poll_fn(|cx| carrier.poll_serve(cx, &mut self)).await;
            self.probe.lane_connected(false);
            match served {
                None => {
                    carrier.finish();
                    return;
                }
                Some(broken) => {
                    let served = carrier.served();
                    carrier.settle(broken, &mut self);
                    if served {
                        reconnect = self.ctx.retry.backoff().delays();
                    } else {
                        delay_first = Some(reconnect.next_delay());
                    }
                }
            }
        }
    }

    fn accept(&mut self, req: LaneRequest, now: Instant) {
        self.queue.push_back(Job {
            req,
            answered: 0,
            accepted: now,
            hold_deadline: now + self.ctx.retry.hold_timeout(),
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

    /// The upstream's address now, for messages.
    fn addr(&self) -> Arc<str> {
        self.node.addr()
    }

    /// The error for a request that never got onto a connection in time.
    fn not_sent_error(&self, waited: Duration) -> Error {
        if let Some(o) = &self.outage {
            return o.error(&self.addr());
        }
        // A followed primary not known yet: the reason is the news.
        if let Err(why) = self.node.locate() {
            return Error::Unavailable {
                addr: self.addr(),
                cause: why.to_string().into(),
                attempts: 0,
                elapsed: waited,
            };
        }
        Error::NotSent {
            addr: self.addr(),
            after: waited,
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
            job.fail(&line, &self.ctx.stats, FailCause::Unavailable);
        }
    }
}
