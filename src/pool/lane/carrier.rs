//! A lane's work over one upstream connection: move queued requests into
//! the write buffer, write it, read replies and hand them to the clients,
//! hold requests after a transient error, PING when idle — until the
//! connection breaks or the lane closes. Then [`Carrier::settle`] decides,
//! request by request, what is resent and what fails.
//!
//! The loop is polled by hand rather than through `select!`: the inbox and
//! the ticker are only changed by other tasks and by time, which wake the
//! task when they do, so each is polled once per poll of the task; the
//! connection's reads and writes, which the loop's own work changes, on
//! every turn. (At pipeline 1 a `select!` that rebuilt and polled every
//! source per turn cost ~10 % more instructions per request.)

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bb8::PooledConnection;
use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::io::{poll_read_buf, poll_write_buf};

use super::job::{release_overtaken, Job, Replies, Sent};
use super::{Lane, LaneHandle, MAX_REDIRECTS};
use crate::codec::{ReplyDecoder, ReplyKind};
use crate::error::Error;
use crate::ops::commands::{command_id, nth_request_name};
use crate::pool::connection::Broken;
use crate::pool::manager::UpstreamManager;
use crate::pool::outbox::Outbox;
use crate::pool::write_gate::WriteGate;
use crate::retry::{is_transient_error, Backoff};
use crate::slowlog::{SlowRun, Slowlog};
use crate::stats::FailCause;
use crate::topology::cluster::Redirect;

/// Stop taking new requests into the write buffer above this many bytes, so
/// that a slow upstream pushes back on clients instead of growing memory.
pub(super) const WRITE_HIGH_WATER: usize = 4 << 20;
/// Where a followed primary went, for messages: its new address, or that a
/// failover is under way.
pub(crate) fn moved_to(node: &crate::pool::endpoint::Node) -> String {
    match node.following().and_then(|f| f.current()) {
        Some(addr) => addr.to_string(),
        None => "a new primary (failover under way)".into(),
    }
}

/// What a cluster node's error reply `frame` means for its request (see
/// [`crate::topology::cluster::ClusterLink::redirect`]); out of line, so
/// that a single upstream's reply path stays as short as it was.
#[cold]
#[inline(never)]
fn cluster_redirect(lane: &Lane, frame: &[u8]) -> Option<Redirect> {
    let cluster = lane.ctx.cluster.as_ref()?;
    cluster.redirect(
        frame,
        &lane.node.addr(),
        lane.protocol,
        &lane.identity,
        &lane.ctx.refresh,
    )
}

/// How long a connection to a primary that moved may still deliver the
/// replies in flight on it.
const RETIRE_GRACE: Duration = Duration::from_secs(1);
/// The health-check request, sent on an idle lane.
const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
/// Written before a request a cluster node redirected with `-ASK`.
const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";

/// Records the run `sent` just finished in the slowlog if it took longer
/// than the threshold (`total`: from the lane taking it to its last reply).
#[inline]
fn check_slow(slowlog: &Slowlog, sent: &Sent, total: std::time::Duration, lane: &Lane) {
    let Some(job) = &sent.job else { return };
    let Some(threshold) = slowlog.threshold() else {
        return;
    };
    if total < threshold {
        return;
    }
    let queued = sent.written_at.saturating_duration_since(job.accepted);
    slowlog.record(SlowRun {
        raw: &job.req.raw,
        requests: job.req.count,
        client_id: job.req.reply_to.client_id(),
        upstream: lane.addr(),
        queued,
        at_redis: total.saturating_sub(queued),
    });
}

/// One connection's state while a lane serves over it.
pub(super) struct Carrier {
    conn: PooledConnection<'static, UpstreamManager>,
    /// Requests written (or being written), oldest first.
    inflight: VecDeque<Sent>,
    /// Requests answered with a transient error, to resend after a pause.
    retry_later: VecDeque<Job>,
    /// Until when nothing new is written (after a transient error).
    hold_until: Option<Instant>,
    /// Pauses between resends of transiently refused requests.
    transient_backoff: Backoff,
    wbuf: Outbox,
    /// Bytes moved into `wbuf` since the connection opened.
    enqueued: u64,
    /// Bytes the socket took since the connection opened.
    written: u64,
    /// The stream took bytes since it was last flushed (TLS keeps records).
    unflushed: bool,
    decoder: ReplyDecoder,
    /// When the connection last read or wrote, as of the last tick: the I/O
    /// itself only raises `io_since_tick`, so that it does not read the
    /// clock twice per turn for a health check measured in seconds.
    last_io: Instant,
    io_since_tick: bool,
    /// The time read in the current turn of the loop, if it was.
    turn_clock: Option<Instant>,
    gate: WriteGate,
    /// A client request got its answer over this connection.
    served: bool,
    /// The node moved (a failover): nothing new is written here, and the
    /// connection is given up once its replies are in, or at this instant.
    retiring: Option<Instant>,
    /// The upstream answered `-READONLY` where a primary was expected: it
    /// was demoted, so the connection is given up once what is in flight
    /// has answered, and the next is validated afresh.
    demoted: bool,
    /// Deadlines (reply timeout, end of a hold, idle health check) are
    /// checked on one periodic tick instead of a timer per loop turn:
    /// arming and disarming timers on every batch costs more than the
    /// precision is worth (the tick is 1/20 of the timeout, ≤ 100 ms).
    ticker: Interval,
}

impl Carrier {
    pub(super) fn new(conn: PooledConnection<'static, UpstreamManager>, lane: &Lane) -> Carrier {
        let (pool, retry) = (&lane.ctx.pool, lane.ctx.retry.get());
        let mut ticker = tokio::time::interval(
            (retry.timeout / 20).clamp(Duration::from_millis(5), Duration::from_millis(100)),
        );
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Carrier {
            conn,
            inflight: VecDeque::new(),
            retry_later: VecDeque::new(),
            hold_until: None,
            transient_backoff: retry.backoff.delays(),
            wbuf: Outbox::with_capacity(pool.read_buffer_size),
            enqueued: 0,
            written: 0,
            unflushed: false,
            decoder: ReplyDecoder::default(),
            last_io: Instant::now(),
            io_since_tick: false,
            turn_clock: None,
            gate: WriteGate::new(pool.batch_writes),
            served: false,
            retiring: None,
            demoted: false,
            ticker,
        }
    }

    /// Whether a client request got its answer over this connection: it
    /// was a good one, whatever broke it later.
    pub(super) fn served(&self) -> bool {
        self.served
    }

    /// Nothing is waiting on the connection.
    fn idle(&self) -> bool {
        self.inflight.is_empty() && self.retry_later.is_empty() && self.wbuf.is_empty()
    }

    /// Serves until the connection breaks (`Some`) or the lane has closed
    /// and everything is answered (`None`). Sources are taken in the order
    /// of urgency, one event per turn: replies, the write, new requests,
    /// the tick.
    pub(super) fn poll_serve(
        &mut self,
        cx: &mut Context<'_>,
        lane: &mut Lane,
    ) -> Poll<Option<Broken>> {
        let mut inbox_registered = false;
        loop {
            if lane.closing && lane.queue.is_empty() && self.idle() {
                return Poll::Ready(None);
            }
            self.fill(lane);
            self.turn_clock = None;
            match self.poll_read(cx, lane) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(broken)) => return Poll::Ready(Some(broken)),
                Poll::Pending => {}
            }
            match self.poll_write(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(broken)) => return Poll::Ready(Some(broken)),
                Poll::Pending => {}
            }
            if !inbox_registered && !lane.closing && self.wbuf.len() < WRITE_HIGH_WATER {
                // Taking what waits leaves the waker registered.
                inbox_registered = true;
                if lane.poll_accept(cx, &mut self.turn_clock).is_ready() {
                    continue;
                }
            }
            // Last: its waker is the one left registered when nothing else
            // is ready (once per poll of the task).
            if self.ticker.poll_tick(cx).is_ready() {
                if let Some(broken) = self.on_tick(lane) {
                    return Poll::Ready(Some(broken));
                }
                continue;
            }
            return Poll::Pending;
        }
    }

    /// Moves queued requests into the write buffer, unless holding after a
    /// transient error (order must be kept) or batching behind an
    /// unanswered write ([`WriteGate`]).
    fn fill(&mut self, lane: &mut Lane) {
        self.gate
            .answered_up_to(self.inflight.front().map(|f| f.end));
        if self.hold_until.is_some()
            || self.retiring.is_some()
            || lane.queue.is_empty()
            || !self.gate.open(lane.queue.len())
        {
            return;
        }
        let stats = &lane.ctx.stats;
        // Read when the requests were taken in, just before.
        let now = *self.turn_clock.get_or_insert_with(Instant::now);
        let batch_start = self.enqueued;
        let mut batch_requests = 0u64;
        while self.wbuf.len() < WRITE_HIGH_WATER {
            let Some(mut job) = lane.queue.pop_front() else {
                break;
            };
            if job.hold_deadline <= now {
                let error = lane.expired_error(&job, now, &mut None);
                job.fail(&error, stats, FailCause::Unavailable);
                continue;
            }
            if job.req.reply_to.abandoned() {
                continue;
            }
            // Sent again: an earlier transient answer is no longer the
            // latest word on it.
            job.transient = None;
            if job.req.asking {
                self.push_own(ASKING, now);
            }
            self.wbuf.push(&job.req.raw);
            self.enqueued += job.req.raw.len() as u64;
            batch_requests += u64::from(job.req.count);
            self.inflight.push_back(Sent {
                job: Some(job),
                asking: false,
                end: self.enqueued,
                written_at: now,
            });
        }
        // Unless every job had expired unsent.
        if self.enqueued > batch_start {
            self.gate.wrote(self.enqueued);
            stats.lane_writes.add(1);
            stats.lane_requests_written.add(batch_requests);
            stats.upstream_bytes_out.add(self.enqueued - batch_start);
        }
    }

    /// Reads what the socket has and answers the requests in flight with
    /// it: ready when something was read.
    fn poll_read(&mut self, cx: &mut Context<'_>, lane: &Lane) -> Poll<Result<(), Broken>> {
        let read_buffer_size = lane.ctx.pool.read_buffer_size;
        let conn = &mut *self.conn;
        if conn.read_buf.capacity() - conn.read_buf.len() < read_buffer_size / 4 {
            conn.read_buf.reserve(read_buffer_size);
        }
        match poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.read_buf) {
            Poll::Ready(Ok(0)) => {
                Poll::Ready(Err(Broken::Lost("connection closed by upstream".into())))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(Broken::Lost(e.to_string()))),
            Poll::Ready(Ok(n)) => {
                self.io_since_tick = true;
                lane.ctx.stats.upstream_bytes_in.add(n as u64);
                Poll::Ready(self.on_replies(lane))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes what waits, then flushes it: ready when the socket took
    /// something (or a flush finished).
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Broken>> {
        let stream = &mut self.conn.stream;
        if !self.wbuf.is_empty() {
            return match poll_write_buf(Pin::new(stream), cx, &mut self.wbuf) {
                Poll::Ready(Ok(n)) => {
                    self.written += n as u64;
                    self.io_since_tick = true;
                    self.unflushed = true;
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(Broken::Lost(e.to_string()))),
                Poll::Pending => Poll::Pending,
            };
        }
        if !self.unflushed {
            return Poll::Pending;
        }
        match Pin::new(stream).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.unflushed = false;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(Broken::Lost(e.to_string()))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The periodic tick: reply deadlines, the end of a hold, the idle
    /// health check.
    fn on_tick(&mut self, lane: &mut Lane) -> Option<Broken> {
        let now = Instant::now();
        if std::mem::take(&mut self.io_since_tick) {
            self.last_io = now;
        }
        // Read once per tick: a reload may change it.
        let timeout = lane.ctx.retry.timeout();
        if self
            .inflight
            .front()
            .is_some_and(|f| f.deadline(timeout) <= now)
        {
            return Some(Broken::Timeout);
        }
        if let Some(moved) = self.moved(lane, now) {
            return Some(moved);
        }
        // Resume after a hold only once every earlier request has answered,
        // so resent requests keep their order.
        if self.hold_until.is_some_and(|h| h <= now) && self.inflight.is_empty() {
            if self.demoted {
                // Its held requests go to the next connection, which must
                // pass the gate again (a replica fails the write probe).
                return Some(Broken::Lost(
                    "the upstream answered READONLY: it is a replica now".into(),
                ));
            }
            self.hold_until = None;
            while let Some(job) = self.retry_later.pop_back() {
                lane.queue.push_front(job);
            }
        }
        let idle = self.inflight.is_empty() && self.wbuf.is_empty() && self.hold_until.is_none();
        let check_every = lane.ctx.pool.health_check_interval;
        if idle && check_every.is_some_and(|i| self.last_io + i <= now) {
            self.push_own(PING, now);
        }
        None
    }

    /// Writes a request of the lane's own (`PING`, `ASKING`), whose reply
    /// no client waits for.
    fn push_own(&mut self, request: &'static [u8], now: Instant) {
        self.wbuf.push_static(request);
        self.enqueued += request.len() as u64;
        self.inflight.push_back(Sent {
            job: None,
            asking: request == ASKING,
            end: self.enqueued,
            written_at: now,
        });
    }

    /// A followed node (Sentinel's primary) that moved: stop writing here,
    /// let the replies in flight arrive for a moment (a request answered
    /// `-READONLY` by a demoted primary is held and resent like any that
    /// did not run), then give the connection up; what is still in flight
    /// is settled as after any loss.
    fn moved(&mut self, lane: &Lane, now: Instant) -> Option<Broken> {
        if lane.node.is_current(self.conn.generation) {
            return None;
        }
        let until = *self.retiring.get_or_insert(now + RETIRE_GRACE);
        (self.inflight.is_empty() || until <= now).then(|| Broken::Moved(moved_to(&lane.node)))
    }

    /// Takes every whole reply out of the read buffer and answers the
    /// requests in flight with them. The replies to one run of requests
    /// reach its client as one delivery, taken out of the buffer in one
    /// piece (they lie back to back there): one hand-over per pipeline, not
    /// one per reply.
    fn on_replies(&mut self, lane: &Lane) -> Result<(), Broken> {
        let mut replies = Replies::default();
        let result = loop {
            match self.decoder.decode_at(&mut self.conn.read_buf, replies.len) {
                Ok(Some(len)) => {
                    if let Err(b) = self.on_reply(len, &mut replies, lane) {
                        break Err(b);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(Broken::BadReply(e.to_string())),
            }
        };
        // Whatever part of the front run was answered goes out now, even on
        // error: those replies are good, and the client can write them.
        replies.deliver_to_front(&mut self.conn.read_buf, &mut self.inflight);
        // Replies only gather for the front run, so nothing is left over;
        // the decoder's place in an unfinished frame counts from here.
        debug_assert_eq!(replies.count, 0);
        result
    }

    /// Handles the reply frame `read_buf[replies.len..][..len]`: adds it to
    /// `replies` (the front run's undelivered replies), or holds its request
    /// after a transient error.
    fn on_reply(&mut self, len: usize, replies: &mut Replies, lane: &Lane) -> Result<(), Broken> {
        let rbuf = &mut self.conn.read_buf;
        let frame = &rbuf[replies.len..replies.len + len];
        if ReplyKind::of(frame) == ReplyKind::Push {
            // Shared connections never subscribe or track; ignore strays.
            tracing::debug!(
                lane = lane.id,
                "ignoring a push frame on a shared connection"
            );
            // The replies before it go first, so that it can be dropped
            // from the front.
            replies.deliver_to_front(rbuf, &mut self.inflight);
            rbuf.advance(replies.len + len);
            return Ok(());
        }
        let Some(sent) = self.inflight.front_mut() else {
            return Err(Broken::BadReply(
                "a reply arrived with no request pending".into(),
            ));
        };
        let written = sent.written_at;
        let Some(job) = sent.job.as_mut() else {
            // The lane's own request: the runs before it were answered in
            // full, so nothing is gathered ahead of its reply. Whatever
            // `ASKING` answers (`+OK`, or an error for a user without it:
            // then the request behind it gets `-ASK` again, and is
            // redirected again within its bound), the connection is sound.
            debug_assert_eq!(replies.len, 0);
            let broken = (!sent.asking && frame != b"+PONG\r\n").then(|| {
                let answer = String::from_utf8_lossy(&frame[..frame.len().min(64)]);
                Broken::BadReply(format!("health check PING answered {}", answer.trim_end()))
            });
            self.inflight.pop_front();
            rbuf.advance(len);
            return broken.map_or(Ok(()), Err);
        };
        let stats = &lane.ctx.stats;
        let is_error = frame.first() == Some(&b'-');
        let demoted = is_error && lane.ctx.expects_primary && frame.starts_with(b"-READONLY");
        let mut redirect_held = false;
        if is_error && lane.ctx.cluster.is_some() {
            match cluster_redirect(lane, frame) {
                // Behind a request of the same client held here (after a
                // `-TRYAGAIN`, or a redirection to a node not in the map
                // yet), it waits its turn: sent on now, it would run
                // before that one.
                Some(Redirect::To(_) | Redirect::Ask(_))
                    if self
                        .retry_later
                        .iter()
                        .any(|h| h.req.reply_to.same_client(&job.req.reply_to)) =>
                {
                    redirect_held = true;
                }
                Some(Redirect::To(target)) => {
                    self.redirect(len, replies, target, false, lane);
                    return Ok(());
                }
                Some(Redirect::Ask(target)) => {
                    self.redirect(len, replies, target, true, lane);
                    return Ok(());
                }
                Some(Redirect::Hold) => redirect_held = true,
                None => {}
            }
        }
        if demoted && !self.demoted {
            self.demoted = true;
            tracing::warn!(lane = lane.id, upstream = %lane.node.addr(), "the primary answered READONLY: it was demoted; holding requests and looking for the primary");
            lane.ctx.refresh.notify_one();
        }
        if demoted || redirect_held || is_transient_error(frame) {
            // The command did not run: hold it and resend after a backoff,
            // for as long as its hold window lasts (not limited by --retries:
            // a restart's LOADING phase is one outage, however many polls).
            let delay = self.transient_backoff.next_delay();
            let now = Instant::now();
            if now + delay < job.hold_deadline {
                // The replies before it in its run are good: hand them over
                // first, then take the held request out of the run.
                replies.deliver_to(rbuf, job);
                let mut held = job.take_first();
                held.transient = Some(rbuf.split_to(len).freeze());
                self.retry_later.push_back(held);
                stats.requests_held.add(1);
                if job.remaining() == 0 {
                    self.inflight.pop_front();
                }
                let until = now + delay;
                self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
                return Ok(());
            }
        } else {
            if frame.first() == Some(&b'-') {
                // Rare: worth finding which command it answers.
                let name = nth_request_name(&job.req.raw, job.answered + replies.count);
                stats
                    .command_errors
                    .add(name.map_or(crate::ops::commands::OTHER, command_id));
            }
            if self.transient_backoff.used() {
                // Only a sequence that was drawn from needs replacing:
                // building one per reply would cost more than the reply.
                self.transient_backoff = lane.ctx.retry.backoff().delays();
            }
            if !self.retry_later.is_empty() {
                // The request this answers comes after the run's answered
                // ones and those gathered in `replies`.
                let read_only = job.req.is_retry_safe(job.answered + replies.count);
                if release_overtaken(&mut self.retry_later, &job.req.reply_to, read_only, stats)
                    && self.retry_later.is_empty()
                {
                    // Nothing is left to resend, and the upstream just ran a
                    // command: no reason to keep the lane waiting.
                    self.hold_until = None;
                }
            }
        }
        self.served = true;
        replies.push(len);
        if replies.count == job.remaining() {
            // The run is answered: one clock read for its latencies (and
            // for the next fill of this turn).
            let now = *self.turn_clock.get_or_insert_with(Instant::now);
            // Read family when every request of the run is read-only (no
            // popcount: it is a library call on baseline x86-64).
            let all = u64::MAX >> (64 - job.req.count.clamp(1, 64));
            let family = usize::from(job.req.retry_safe & all != all);
            let n = u64::from(job.req.count);
            let upstream = now.saturating_duration_since(written);
            // Usually taken and written in the same turn: one subtraction.
            let in_lane = if job.accepted == written {
                upstream
            } else {
                now.saturating_duration_since(job.accepted)
            };
            stats.lane_latency[family].record_n(in_lane, n);
            stats.upstream_latency[family].record_n(upstream, n);
            replies.deliver_to(rbuf, job);
            if let Some(slowlog) = &lane.ctx.slowlog {
                check_slow(slowlog, sent, in_lane, lane);
            }
            self.inflight.pop_front();
        }
        Ok(())
    }

    /// Sends the request the reply frame `read_buf[replies.len..][..len]`
    /// answers — a cluster node's `-MOVED` or `-ASK`: it did not run — to
    /// `target`, the lane of the slot's owner now (or of the node importing
    /// it, `asking`), which answers its client in its place. Requests of
    /// one client that this node redirects reach `target` in the order
    /// they were sent; after [`MAX_REDIRECTS`] the client gets an error
    /// instead.
    #[cold]
    #[inline(never)]
    fn redirect(
        &mut self,
        len: usize,
        replies: &mut Replies,
        target: LaneHandle,
        asking: bool,
        lane: &Lane,
    ) {
        let Some(job) = self.inflight.front_mut().and_then(|s| s.job.as_mut()) else {
            return;
        };
        // The replies before it in its run are good: hand them over first.
        replies.deliver_to(&mut self.conn.read_buf, job);
        let mut moved = job.take_first();
        let answer = self.conn.read_buf.split_to(len).freeze();
        if job.remaining() == 0 {
            self.inflight.pop_front();
        }
        self.served = true;
        let stats = &lane.ctx.stats;
        if moved.req.redirects >= MAX_REDIRECTS {
            let line = crate::error::error_line(
                "ERR",
                &format!(
                    "the cluster redirected this request {MAX_REDIRECTS} times (last: {}); its slot is moving: retry",
                    String::from_utf8_lossy(&answer[1..]).trim_end()
                ),
            );
            // The slot could not be reached for as long as it kept moving.
            moved.fail(&line, stats, FailCause::Unavailable);
            return;
        }
        moved.req.redirects += 1;
        moved.req.asking = asking;
        if let Some(cluster) = &lane.ctx.cluster {
            cluster
                .stats
                .redirected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Err(req) = target.send(moved.req) {
            req.reply_to.send(req.seq, 1, Error::ShuttingDown.to_resp());
        }
    }

    /// After the connection broke: resend what is safe to resend, in order,
    /// and fail the rest with an error that says what may have happened.
    /// The connection is closed, never pooled again.
    pub(super) fn settle(mut self, broken: Broken, lane: &mut Lane) {
        self.conn.broken = true;
        let addr = lane.addr();
        let (addr, retry, stats) = (&addr, lane.ctx.retry.get(), &lane.ctx.stats);
        let cause = match broken {
            Broken::BadReply(_) => FailCause::BadReply,
            _ => FailCause::LostAfterWrite,
        };
        let (reason, error) = match &broken {
            Broken::Lost(why) => (why.clone(), Error::LostAfterWrite),
            Broken::Moved(to) => (format!("the primary moved to {to}"), Error::LostAfterWrite),
            Broken::Timeout => (
                format!("no reply within {:?}", retry.timeout),
                Error::LostAfterWrite,
            ),
            Broken::BadReply(why) => (
                format!("invalid reply: {why}"),
                Error::UpstreamProtocol {
                    addr: addr.clone(),
                    detail: why.clone().into(),
                },
            ),
        };
        tracing::warn!(lane = lane.id, upstream = %self.conn.addr, reason = %reason, pending = self.inflight.len(), "upstream connection broken; closing it");
        stats.lane_connections_broken.add(1);
        let error = error.to_resp();
        let timeout_error = Error::Timeout {
            addr: addr.clone(),
            after: retry.timeout,
        }
        .to_resp();
        let now = Instant::now();
        // Order: requests answered with a transient error were sent before
        // every request still in flight; the queue holds the newest.
        let mut again: VecDeque<Job> = std::mem::take(&mut self.retry_later);
        for sent in std::mem::take(&mut self.inflight) {
            let deadline = sent.deadline(retry.timeout);
            let Some(mut run) = sent.job else { continue };
            // Each request of a run is settled on its own: a write may have
            // stopped in the middle of the run. The run's bytes end at
            // `sent.end` in the connection's byte stream.
            let mut end = sent.end - run.req.raw.len() as u64;
            end += run.trim_answered() as u64;
            while run.remaining() > 0 {
                let mut job = run.take_first();
                end += job.req.raw.len() as u64;
                let fully_written = end <= self.written;
                let retry_safe = job.req.is_retry_safe(0);
                if !fully_written {
                    // Redis executes only whole commands: this one did not run.
                    again.push_back(job);
                } else if deadline <= now {
                    job.fail(&timeout_error, stats, FailCause::Timeout);
                } else if retry_safe && job.attempts < retry.retries {
                    job.attempts += 1;
                    job.written = true;
                    stats.requests_resent.add(1);
                    again.push_back(job);
                } else if retry_safe {
                    let attempts = job.attempts + 1;
                    let line: Bytes = Error::RetriesExhausted {
                        addr: addr.clone(),
                        attempts,
                    }
                    .to_resp();
                    job.fail(&line, stats, FailCause::RetriesExhausted);
                } else {
                    job.fail(&error, stats, cause);
                }
            }
        }
        again.append(&mut lane.queue);
        lane.queue = again;
    }

    /// Hands the connection back to its pool after the lane closed.
    pub(super) fn finish(mut self) {
        self.conn.last_used = std::time::Instant::now();
    }
}
