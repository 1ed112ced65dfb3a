//! A shared lane: one upstream connection that carries the stateless
//! commands of many clients at once.
//!
//! Clients send [`LaneRequest`]s into the lane's queue; the lane coalesces
//! everything queued into one write, keeps a FIFO of requests awaiting
//! replies, splits replies off its read buffer and hands each one (as the raw
//! bytes that arrived) to the client that sent the request. A client is bound
//! to one lane, so its commands execute in the order it sent them.
//!
//! The lane owns the rules of [`crate::retry`]: it reconnects with backoff and
//! holds requests meanwhile (each up to its checkout deadline), holds and
//! resends requests answered `-LOADING`/`-BUSY`/…, resends unwritten and
//! retry-safe requests after a connection loss, and fails everything else with
//! an error that says what happened. A connection whose reply stream is in
//! doubt (timeout, bad reply, EOF) is marked broken and never reused.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bb8::{Pool, PooledConnection, RunError};
use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::codec::Decoder;

use crate::codec::{ReplyDecoder, ReplyKind};
use crate::error::Error;
use crate::pool::manager::UpstreamManager;
use crate::retry::{is_transient_error, Backoff, BackoffPolicy};
use crate::upstream::ConnectError;

/// Stop taking new requests into the write buffer above this many bytes, so
/// that a slow upstream pushes back on clients instead of growing memory.
const WRITE_HIGH_WATER: usize = 4 << 20;
/// Requests drained from the queue per wakeup before yielding to I/O.
const MAX_BATCH: usize = 1024;
/// The health-check request, sent on an idle lane.
const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
/// A connection that lasted this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);

/// A client's request, as handed to a lane.
#[derive(Debug)]
pub struct LaneRequest {
    /// The client's sequence number for the request; echoed in the delivery.
    pub seq: u64,
    /// The request bytes, forwarded verbatim.
    pub raw: Bytes,
    /// May be resent after the connection was lost with it written.
    pub retry_safe: bool,
    /// Where the reply goes.
    pub reply_to: ReplySender,
}

/// The final answer to one request: an upstream reply, or an error line.
#[derive(Debug)]
pub struct Delivery {
    /// The request's sequence number.
    pub seq: u64,
    /// RESP bytes to send to the client as they are.
    pub reply: Bytes,
}

/// A client's inbox for deliveries (one per client, cloned into each request:
/// reference-count increments, not an allocation per request), with the
/// client's output budget.
#[derive(Debug, Clone)]
pub struct ReplySender {
    tx: mpsc::UnboundedSender<Delivery>,
    budget: Arc<OutputBudget>,
}

impl ReplySender {
    /// An inbox whose replies count against `budget`.
    pub fn new(tx: mpsc::UnboundedSender<Delivery>, budget: Arc<OutputBudget>) -> Self {
        ReplySender { tx, budget }
    }

    /// Counts the reply against the client's budget, then delivers it — or,
    /// past the limit, an empty reply instead: the client is about to be
    /// disconnected, and the lane may run ahead of it by many replies, so
    /// they must not pile up in its inbox. The empty delivery still wakes it.
    fn send(&self, seq: u64, reply: Bytes) {
        let reply = if self.budget.add(reply.len()) {
            Bytes::new()
        } else {
            reply
        };
        // A client that has gone away no longer wants its reply.
        let _ = self.tx.send(Delivery { seq, reply });
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
}

/// A request inside the lane.
struct Job {
    req: LaneRequest,
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
}

impl Job {
    fn deliver(self, reply: Bytes) {
        self.req.reply_to.send(self.req.seq, reply);
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
    rx: mpsc::UnboundedReceiver<LaneRequest>,
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
        rx: mpsc::UnboundedReceiver<LaneRequest>,
        pool: Pool<UpstreamManager>,
        failures: watch::Receiver<Option<ConnectError>>,
        settings: Arc<LaneSettings>,
    ) -> Lane {
        Lane {
            id,
            rx,
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
            accepted: now,
            hold_deadline: now + s.hold_timeout,
            attempts: 0,
            written: false,
        });
    }

    /// Takes whatever is waiting in the channel, up to a batch.
    fn accept_batch(&mut self, first: Option<LaneRequest>) {
        match first {
            None => self.closing = true,
            Some(req) => {
                let now = Instant::now();
                self.accept(req, now);
                for _ in 0..MAX_BATCH {
                    match self.rx.try_recv() {
                        Ok(req) => self.accept(req, now),
                        Err(_) => break,
                    }
                }
            }
        }
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

    /// Fails queued requests whose hold deadline has passed.
    fn expire_queue(&mut self) {
        let now = Instant::now();
        let mut error: Option<Bytes> = None;
        while self.queue.front().is_some_and(|j| j.hold_deadline <= now) {
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            if job.written {
                let line = Error::Timeout {
                    addr: self.settings.addr.clone(),
                    after: self.settings.timeout,
                }
                .to_resp();
                job.deliver(line);
                continue;
            }
            let waited = now.saturating_duration_since(job.accepted);
            let line = error
                .get_or_insert_with(|| self.not_sent_error(waited).to_resp())
                .clone();
            job.deliver(line);
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
                    job.deliver(error.clone());
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
                    msg = self.rx.recv(), if !self.closing => self.accept_batch(msg),
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
                msg = self.rx.recv(), if !self.closing => {
                    self.accept_batch(msg);
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
        let mut wbuf = BytesMut::with_capacity(s.read_buffer_size);
        let mut enqueued: u64 = 0;
        let mut written: u64 = 0;
        let mut decoder = ReplyDecoder::default();
        let mut last_io = Instant::now();
        // Deadlines (reply timeout, end of a hold, idle health check) are
        // checked on one periodic tick instead of a timer per loop turn:
        // arming and disarming timers on every batch costs more than the
        // precision is worth (the tick is 1/20 of the timeout, ≤ 100 ms).
        let mut ticker = tokio::time::interval(
            (s.timeout / 20).clamp(Duration::from_millis(5), Duration::from_millis(100)),
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let broken = 'conn: {
            let c = &mut *conn;
            let (mut rd, mut wr) = c.stream.split();
            let rbuf = &mut c.read_buf;
            loop {
                if self.closing
                    && inflight.is_empty()
                    && self.queue.is_empty()
                    && retry_later.is_empty()
                    && wbuf.is_empty()
                {
                    break 'conn None;
                }
                // Move queued requests into the write buffer, unless holding
                // after a transient error (order must be kept).
                if hold_until.is_none() {
                    let now = Instant::now();
                    while wbuf.len() < WRITE_HIGH_WATER {
                        let Some(job) = self.queue.pop_front() else {
                            break;
                        };
                        if job.hold_deadline <= now {
                            let error = if job.written {
                                Error::Timeout {
                                    addr: s.addr.clone(),
                                    after: s.timeout,
                                }
                            } else {
                                self.not_sent_error(now.saturating_duration_since(job.accepted))
                            };
                            job.deliver(error.to_resp());
                            continue;
                        }
                        wbuf.extend_from_slice(&job.req.raw);
                        enqueued += job.req.raw.len() as u64;
                        // The reply deadline runs from the write.
                        let deadline = now + s.timeout;
                        inflight.push_back(Sent {
                            job: Some(job),
                            end: enqueued,
                            deadline,
                        });
                    }
                }
                if rbuf.capacity() - rbuf.len() < s.read_buffer_size / 4 {
                    rbuf.reserve(s.read_buffer_size);
                }
                tokio::select! {
                    biased;
                    r = rd.read_buf(rbuf) => match r {
                        Ok(0) => break 'conn Some(Broken::Lost("connection closed by upstream".into())),
                        Err(e) => break 'conn Some(Broken::Lost(e.to_string())),
                        Ok(_) => {
                            last_io = Instant::now();
                            loop {
                                match decoder.decode(rbuf) {
                                    Ok(Some(frame)) => {
                                        if let Err(b) = self.on_reply(frame, &mut inflight, &mut retry_later, &mut hold_until, &mut transient_backoff) {
                                            break 'conn Some(b);
                                        }
                                    }
                                    Ok(None) => break,
                                    Err(e) => break 'conn Some(Broken::BadReply(e.to_string())),
                                }
                            }
                        }
                    },
                    r = wr.write_buf(&mut wbuf), if !wbuf.is_empty() || wr.has_pending_output() => match r {
                        Ok(n) => {
                            written += n as u64;
                            last_io = Instant::now();
                        }
                        Err(e) => break 'conn Some(Broken::Lost(e.to_string())),
                    },
                    msg = self.rx.recv(), if !self.closing && wbuf.len() < WRITE_HIGH_WATER => self.accept_batch(msg),
                    _ = ticker.tick() => {
                        let now = Instant::now();
                        if inflight.front().is_some_and(|f| f.deadline <= now) {
                            break 'conn Some(Broken::Timeout);
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
                            wbuf.extend_from_slice(PING);
                            enqueued += PING.len() as u64;
                            inflight.push_back(Sent { job: None, end: enqueued, deadline: now + s.timeout });
                        }
                    }
                }
            }
        };
        conn.last_used = std::time::Instant::now();
        if let Some(broken) = broken {
            conn.broken = true;
            drop(conn);
            self.settle(broken, inflight, retry_later, written);
        }
    }

    /// Handles one reply frame.
    fn on_reply(
        &mut self,
        frame: Bytes,
        inflight: &mut VecDeque<Sent>,
        retry_later: &mut VecDeque<Job>,
        hold_until: &mut Option<Instant>,
        backoff: &mut Backoff,
    ) -> Result<(), Broken> {
        if ReplyKind::of(&frame) == ReplyKind::Push {
            // Shared connections never subscribe or track; ignore strays.
            tracing::debug!(
                lane = self.id,
                "ignoring a push frame on a shared connection"
            );
            return Ok(());
        }
        let Some(sent) = inflight.pop_front() else {
            return Err(Broken::BadReply(
                "a reply arrived with no request pending".into(),
            ));
        };
        let Some(job) = sent.job else {
            if &frame[..] == b"+PONG\r\n" {
                return Ok(());
            }
            return Err(Broken::BadReply(format!(
                "health check PING answered {}",
                String::from_utf8_lossy(&frame[..frame.len().min(64)]).trim_end()
            )));
        };
        if is_transient_error(&frame) {
            // The command did not run: hold it and resend after a backoff,
            // for as long as its hold window lasts (not limited by --retries:
            // a restart's LOADING phase is one outage, however many polls).
            let delay = backoff.next_delay();
            let now = Instant::now();
            if now + delay < job.hold_deadline {
                retry_later.push_back(job);
                let until = now + delay;
                *hold_until = Some(hold_until.map_or(until, |h| h.max(until)));
                return Ok(());
            }
        } else if backoff.used() {
            // Only a sequence that was drawn from needs replacing: building
            // one per reply would cost more than the reply itself.
            *backoff = self.settings.backoff.delays();
        }
        job.deliver(frame);
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
            let Some(mut job) = sent.job else { continue };
            let fully_written = sent.end <= written;
            if !fully_written {
                // Redis executes only whole commands: this one did not run.
                again.push_back(job);
            } else if sent.deadline <= now {
                job.deliver(timeout_error.clone());
            } else if job.req.retry_safe && job.attempts < s.retries {
                job.attempts += 1;
                job.written = true;
                again.push_back(job);
            } else if job.req.retry_safe {
                let attempts = job.attempts + 1;
                job.deliver(
                    Error::RetriesExhausted {
                        addr: s.addr.clone(),
                        attempts,
                    }
                    .to_resp(),
                );
            } else {
                job.deliver(error.clone());
            }
        }
        again.append(&mut self.queue);
        self.queue = again;
    }
}

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
    tokio::select! {
        r = pool.get_owned() => r.map_err(|e| match e {
            RunError::User(e) => e,
            RunError::TimedOut => last(&failures),
        }),
        changed = failures.changed() => match changed {
            Ok(()) => Err(last(&failures)),
            Err(_) => Err(ConnectError::CheckoutTimeout(wait)),
        },
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}
