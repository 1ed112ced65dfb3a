//! One client connection: read a batch of requests, route each, and write the
//! replies back in request order, one write per batch.
//!
//! Each request gets a slot in `pending`, in arrival order. Local answers fill
//! their slot at once; requests sent to the client's lane or to its pinned
//! session get theirs filled when the reply arrives. Whatever prefix of
//! `pending` is filled is moved to the output and written, so replies leave in
//! request order no matter the order in which they were resolved.
//!
//! Consecutive requests for the shared lane go to it as one *run* (see
//! [`crate::pool::lane::LaneRequest`]), handed over once the input is used up
//! or something else comes between them; the lane answers a run with one
//! delivery whose first slot takes all the reply bytes (the other slots get
//! empty replies), so a pipeline costs one hand-over each way.
//!
//! A client starts on a shared lane. A command that needs connection state
//! (see [`crate::command::Stateful`]) first waits until every earlier request
//! of the client has been answered (so nothing overtakes it on another
//! connection), then gets a dedicated connection (`session`) that carries
//! all of the client's commands until the state ends; then the client returns
//! to its lane.

pub mod auth;
mod buffers;
mod local;
mod session;
mod stop;

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::time::{sleep_until, Duration, Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::codec::{
    Decoded, ProtocolError, Request, RequestDecoder, RequestLimits, RequestRef, RequestSpan,
};
use crate::command::{classify, Command, Local, Route, Stateful};
use crate::config::Config;
use crate::error::{error_line, Error};
use crate::net::Stream;
use crate::pool::lane::{Delivery, LaneRequest, ReplyInbox, MAX_RUN};
use crate::pool::{LaneHandle, Upstreams};
use session::{PinnedConn, Session, SessionBroken, SessionEvent};
use stop::{Stop, StopSignals};

/// Replies up to this size are copied into the output buffer; larger ones are
/// written from their own buffer to avoid copying megabytes.
const COPY_LIMIT: usize = 16 * 1024;

/// How often a client that is not being read, and waits on a blocking
/// command, is asked whether it hung up ([`Client::hang_up_check`]): one
/// `poll(2)` per interval per such client, a hung-up client's slot and
/// dedicated connection held this long at most.
const HANG_UP_CHECK_INTERVAL: Duration = Duration::from_millis(500);

type Checkout = Pin<Box<dyn Future<Output = Result<PinnedConn, Error>> + Send>>;
/// Waiting for the first validated upstream connection (`true` once one has
/// passed validation, `false` if none did in time).
type VersionWait = Pin<Box<dyn Future<Output = bool> + Send>>;

/// What the parked request waits for outside the client: there is one
/// parked request, so at most one of these runs.
enum Wait {
    /// A dedicated connection being checked out.
    Checkout(Checkout),
    /// The first validated upstream connection, whose server version a
    /// `HELLO` reply carries.
    Version(VersionWait),
}

/// How a [`Wait`] ended.
enum WaitOutcome {
    Checkout(Result<PinnedConn, Error>),
    /// Whether a connection passed validation in time.
    Version(bool),
}

impl Wait {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<WaitOutcome> {
        match self {
            Wait::Checkout(checkout) => checkout.as_mut().poll(cx).map(WaitOutcome::Checkout),
            Wait::Version(wait) => wait.as_mut().poll(cx).map(WaitOutcome::Version),
        }
    }

    /// For log lines.
    fn what(&self) -> &'static str {
        match self {
            Wait::Checkout(_) => "a dedicated connection",
            Wait::Version(_) => "the first validated upstream connection",
        }
    }
}

/// Serves one client until it disconnects, QUITs, breaks the protocol, or the
/// proxy shuts down.
pub async fn serve(
    stream: Stream,
    config: Arc<Config>,
    upstreams: Arc<Upstreams>,
    shutdown: CancellationToken,
    abort: CancellationToken,
) {
    let peer = stream.peer_addr().ok();
    let mut client = Client::new(stream, config, upstreams);
    let result = client.run(shutdown, abort).await;
    client.end_session();
    client.stream.close_notify();
    match result {
        Ok(()) => tracing::trace!(?peer, "client closed"),
        Err(e) => tracing::debug!(?peer, error = %e, "client connection ended with an error"),
    }
}

struct Client {
    stream: Stream,
    /// The client's address, for log lines about it.
    peer: Option<SocketAddr>,
    config: Arc<Config>,
    upstreams: Arc<Upstreams>,
    /// This client's id (CLIENT ID, HELLO).
    id: u64,
    /// The shared lane for the client's protocol.
    lane: LaneHandle,
    /// RESP version the client speaks (2, or 3 after `HELLO 3`).
    protocol: u8,
    /// Where lanes deliver this client's replies (a sender for it travels
    /// with each request), and the budget they count against: reply bytes
    /// held for the client — resolved in `pending` or waiting in the output —
    /// against `--client-output-limit`, so that a client that does not read
    /// cannot make respool buffer without bound. Lanes count their
    /// deliveries; the client counts the rest and what it writes.
    replies: ReplyInbox,
    /// Deliveries taken from `replies`, kept for its allocation.
    arrived: Vec<Delivery>,
    decoder: RequestDecoder,
    /// Bytes read and not yet decoded; small while the client is quiet.
    inbuf: BytesMut,
    /// The last read filled the buffer: more is likely waiting, read bigger.
    last_read_filled: bool,
    /// Replies in request order; `None` until resolved.
    pending: VecDeque<Option<Bytes>>,
    /// Sequence number of `pending[0]`.
    base_seq: u64,
    /// Slots waiting on the shared lane (those in `run` included).
    shared_pending: usize,
    /// Consecutive requests for the shared lane not handed over yet: they go
    /// as one message when the input is used up (or something else comes
    /// between them), so a pipeline costs one hand-over, not one per request.
    run: Option<Run>,
    /// Resolved replies waiting to be written: small ones coalesced into
    /// `out_small`, large ones queued as their own buffers.
    out: VecDeque<Bytes>,
    out_small: BytesMut,
    /// No more requests will be read (QUIT, protocol error, EOF, shutdown).
    reading_done: bool,
    /// Authenticated (always true when no client auth is configured).
    authenticated: bool,
    /// CLIENT SETNAME, kept here so that naming a client does not pin it.
    name: Option<Bytes>,
    /// The dedicated connection while the client has connection state.
    session: Option<Session>,
    /// A request waiting for earlier ones to finish before it can go on
    /// (entering a session, ending one, switching protocol lanes).
    parked: Option<(Request, Command)>,
    /// What the parked request waits for, if it is not the client's own
    /// earlier requests.
    wait: Option<Wait>,
    /// The client sent more during the wait: its socket stays readable, so
    /// it is not watched for a hang-up until the wait ends.
    sent_while_waiting: bool,
    /// Reused buffer for session events.
    events: Vec<SessionEvent>,
    /// When the client last sent something or was written to
    /// (`--client-idle-timeout`).
    last_activity: Instant,
    /// Since when the decoder has been waiting for the rest of a request the
    /// client started (`--request-read-timeout`).
    partial_since: Option<Instant>,
    /// When to next ask whether a client that is not being read has hung
    /// up, while it waits on a reply with no deadline (see
    /// [`Client::hang_up_check`]).
    hang_up_check_at: Option<Instant>,
}

impl Client {
    fn new(stream: Stream, config: Arc<Config>, upstreams: Arc<Upstreams>) -> Client {
        let replies = ReplyInbox::new(config.client_output_limit);
        let authenticated = !config.client_auth.required();
        let limits = if authenticated {
            RequestLimits {
                max_bulk_len: config.max_bulk_length,
                ..RequestLimits::default()
            }
        } else {
            RequestLimits::unauthenticated()
        };
        Client {
            peer: stream.peer_addr().ok(),
            stream,
            id: upstreams.next_client_id(),
            lane: upstreams.lane(2),
            protocol: 2,
            config,
            upstreams,
            replies,
            arrived: Vec::new(),
            decoder: RequestDecoder::new(limits),
            inbuf: BytesMut::new(),
            last_read_filled: false,
            pending: VecDeque::new(),
            base_seq: 0,
            shared_pending: 0,
            run: None,
            out: VecDeque::new(),
            out_small: BytesMut::new(),
            reading_done: false,
            authenticated,
            name: None,
            session: None,
            parked: None,
            wait: None,
            sent_while_waiting: false,
            events: Vec::new(),
            last_activity: Instant::now(),
            partial_since: None,
            hang_up_check_at: None,
        }
    }

    async fn run(
        &mut self,
        shutdown: CancellationToken,
        abort: CancellationToken,
    ) -> io::Result<()> {
        let mut stop = StopSignals::new(shutdown, abort);
        let mut deadlines = Deadlines::default();
        poll_fn(|cx| self.poll_run(cx, &mut stop, &mut deadlines)).await
    }

    /// One poll of the client's task: waits on its sources by hand rather
    /// than through `select!`, which on every turn of the loop (three or
    /// four per request at pipeline 1) rebuilt a future for each source and
    /// polled them all again. Here a source whose waker is registered is not
    /// polled again in the same poll of the task: the stop signals and the
    /// reply mailbox are only changed by other tasks, which wake this one —
    /// and so poll it again — when they change them. The client's own
    /// socket, its session's and its deadlines depend on what the client
    /// just did, and are polled on every turn as before.
    ///
    /// Sources are polled in the order of urgency: the stop signals, the
    /// replies, the session, a wait (checkout or version), the deadlines,
    /// then writing to and reading from the client.
    fn poll_run(
        &mut self,
        cx: &mut Context<'_>,
        stop: &mut StopSignals,
        deadlines: &mut Deadlines,
    ) -> Poll<io::Result<()>> {
        let mut stop_registered = false;
        let mut replies_registered = false;
        loop {
            if self.reading_done
                && self.pending.is_empty()
                && self.out_is_empty()
                && self.parked.is_none()
            {
                return Poll::Ready(Ok(()));
            }
            let mut progress = false;
            if !stop_registered {
                // Ready or not, the signal futures are left registered.
                stop_registered = true;
                match stop.poll_stop(cx) {
                    Poll::Ready(Stop::Abort) => return Poll::Ready(Ok(())),
                    Poll::Ready(Stop::Shutdown) => {
                        self.reading_done = true;
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            if !replies_registered {
                // Taking the deliveries leaves the waker registered, and the
                // mailbox empty: the next delivery wakes the task.
                replies_registered = true;
                if self.replies.poll_take(cx, &mut self.arrived).is_ready() {
                    let mut arrived = std::mem::take(&mut self.arrived);
                    for d in arrived.drain(..) {
                        self.resolve_shared(d);
                    }
                    self.arrived = arrived;
                    progress = true;
                }
            }
            if let Some(session) = &self.session {
                let stream = session.stream();
                let wants_write = session.wants_write();
                match stream.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        self.on_session_readable();
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => {
                        self.session_failed(SessionBroken::Lost("socket error".into()));
                        progress = true;
                    }
                    Poll::Pending => {
                        if wants_write {
                            match stream.poll_write_ready(cx) {
                                Poll::Ready(Ok(())) => progress = true,
                                Poll::Ready(Err(_)) => {
                                    self.session_failed(SessionBroken::Lost("socket error".into()));
                                    progress = true;
                                }
                                Poll::Pending => {}
                            }
                        }
                    }
                }
            }
            if let Some(wait) = &self.wait {
                if !self.sent_while_waiting && !self.reading_done {
                    // The client is not read while its request waits, but
                    // one that hangs up must not hold its place (and its
                    // `--max-clients` slot) until the wait ends: it must
                    // leave the queue for a dedicated connection (dropping
                    // the checkout does), not be handed one and run a
                    // command for nobody. Looked at before the wait: a
                    // connection handed over just now goes back to the pool
                    // with it.
                    match self.stream.poll_hung_up(cx) {
                        Poll::Ready(Ok(true)) => {
                            tracing::debug!(peer = ?self.peer, waiting_for = wait.what(), "client hung up while its request waited");
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Ready(Ok(false)) => self.sent_while_waiting = true,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {}
                    }
                }
            }
            if let Some(wait) = &mut self.wait {
                if let Poll::Ready(outcome) = wait.poll(cx) {
                    self.wait = None;
                    self.sent_while_waiting = false;
                    match outcome {
                        WaitOutcome::Checkout(result) => self.on_checkout(result),
                        WaitOutcome::Version(true) => {}
                        WaitOutcome::Version(false) => self.no_server_version(),
                    }
                    progress = true;
                }
            }
            let can_read = !self.reading_done
                && self.parked.is_none()
                && self.pending.len() < self.config.max_pending_per_client;
            let session_deadline = self.session.as_ref().and_then(Session::deadline);
            if deadlines.session.poll(cx, session_deadline).is_ready() {
                self.session_timed_out();
                progress = true;
            }
            if deadlines
                .request
                .poll(cx, self.request_deadline(can_read))
                .is_ready()
            {
                self.request_timed_out();
                progress = true;
            }
            if deadlines.idle.poll(cx, self.idle_deadline()).is_ready() {
                tracing::debug!(peer = ?self.peer, "closing an idle client (--client-idle-timeout)");
                return Poll::Ready(Ok(()));
            }
            let check_at = self.hang_up_check(can_read);
            if deadlines.hang_up.poll(cx, check_at).is_ready() {
                if self.stream.peer_closed() {
                    tracing::debug!(peer = ?self.peer, "client hung up while its blocking command waited");
                    return Poll::Ready(Ok(()));
                }
                self.hang_up_check_at = None;
                progress = true;
            }
            let want_write = !self.out_is_empty() || self.stream.has_pending_output();
            if want_write {
                if let Poll::Ready(r) = self.stream.poll_write_ready(cx) {
                    r?;
                    progress = true;
                }
            }
            if can_read && !progress {
                // Read only once the turn's events are handled: replies
                // resolved above free their room in `pending` first.
                if let Poll::Ready(r) = self.stream.poll_read_ready(cx) {
                    r?;
                    match self.read_some()? {
                        // EOF: the client is gone; replies still pending would
                        // reach nobody. (Its commands still run, as with Redis.)
                        Some(0) => return Poll::Ready(Ok(())),
                        Some(_) => self.touch(),
                        // Nothing after all: the read registered no waker of
                        // ours, so the next turn polls readiness again.
                        None => {}
                    }
                    progress = true;
                }
            }
            if !progress {
                // Every source has this task's waker.
                return Poll::Pending;
            }
            // Replies resolved above leave `pending` first, so that the room
            // they free is there when the input is decoded: with a full
            // pipeline already read, nothing else would come to decode it.
            self.collect_ready();
            self.advance();
            self.collect_ready();
            self.release_idle_buffer();
            self.flush_session();
            if self.write_some()? {
                return Poll::Ready(Ok(()));
            }
            if self.over_output_limit() {
                // Like Redis's client-output-buffer-limit: the client is not
                // reading its replies; drop them along with the connection.
                tracing::info!(
                    peer = ?self.peer,
                    held_bytes = self.replies.budget().held(),
                    "client output limit (--client-output-limit) exceeded; disconnecting the client"
                );
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn over_output_limit(&self) -> bool {
        self.replies.budget().exceeded()
    }

    /// When to ask whether the client has hung up: only while it is not
    /// being read (after QUIT or a protocol error, or with
    /// `--max-pending-per-client` requests in flight) and its session waits
    /// on a reply with no deadline (a blocking command). Reading is how a
    /// hang-up is noticed otherwise; without this, such a client would hold
    /// its task, its `--max-clients` slot and a dedicated connection until
    /// the command ended, forever for `BLPOP key 0`. Other waits end within
    /// `--timeout`, and a client's requests still unread then run, as
    /// Redis runs what a client sent before it closed.
    #[inline]
    fn hang_up_check(&mut self, can_read: bool) -> Option<Instant> {
        let unbounded = !can_read
            && self
                .session
                .as_ref()
                .is_some_and(|s| !s.idle() && s.deadline().is_none());
        if !unbounded {
            self.hang_up_check_at = None;
            return None;
        }
        Some(
            *self
                .hang_up_check_at
                .get_or_insert_with(|| Instant::now() + HANG_UP_CHECK_INTERVAL),
        )
    }

    /// When a request the client started must be complete. Only while
    /// respool is reading: a full pipeline waiting on replies is respool's
    /// wait, not the client's.
    fn request_deadline(&self, can_read: bool) -> Option<Instant> {
        let timeout = self.config.request_read_timeout?;
        let since = self.partial_since.filter(|_| can_read)?;
        Some(since + timeout)
    }

    fn request_timed_out(&mut self) {
        let Some(after) = self.config.request_read_timeout else {
            return;
        };
        tracing::debug!(peer = ?self.peer, "client did not complete a request in time; closing its connection");
        self.reading_done = true;
        self.discard_input();
        self.partial_since = None;
        self.push_ready(Error::RequestIncomplete(after).to_resp());
    }

    /// Notes that the client sent something or was written to. Reading the
    /// clock twice per request is measurable at pipeline 1, so only when
    /// `--client-idle-timeout` needs it.
    fn touch(&mut self) {
        if self.config.client_idle_timeout.is_some() {
            self.last_activity = Instant::now();
        }
    }

    /// When a quiet client is closed: nothing in flight, nothing to write,
    /// and — as Redis exempts them — not subscribed (a blocked command is in
    /// flight, so blocked clients are exempt too).
    fn idle_deadline(&self) -> Option<Instant> {
        let timeout = self.config.client_idle_timeout?;
        let busy = !self.pending.is_empty()
            || !self.out_is_empty()
            || self.parked.is_some()
            || self.wait.is_some()
            || self.session.as_ref().is_some_and(Session::subscribed);
        (!busy).then_some(self.last_activity + timeout)
    }

    /// Routes buffered requests and moves parked ones on, until the input is
    /// used up or a parked request must wait for an event.
    fn advance(&mut self) {
        loop {
            self.unpark();
            if self.parked.is_some() || self.reading_done {
                break;
            }
            self.process_input();
            if self.parked.is_none() {
                break;
            }
        }
        self.flush_run();
    }

    /// Reads what the socket has, after `readable()` fired. `Some(0)` is EOF;
    /// `None` a spurious wakeup.
    ///
    /// The read goes through `AsyncRead` (polled once, never waiting) rather
    /// than `try_read`: tokio clears the socket's readiness after a short read
    /// there, which saves the extra `recv` that would otherwise return EAGAIN
    /// on every request.
    fn read_some(&mut self) -> io::Result<Option<usize>> {
        if self.inbuf.capacity() == 0 {
            self.inbuf = buffers::take();
        }
        let spare = self.inbuf.capacity() - self.inbuf.len();
        if spare < 512 || (self.last_read_filled && spare < self.config.read_buffer_size / 2) {
            // Grow to the configured size only for clients whose reads fill
            // the buffer (pipelines, large values).
            self.inbuf.reserve(self.config.read_buffer_size);
        }
        let spare = self.inbuf.capacity() - self.inbuf.len();
        match self.stream.read_buf(&mut self.inbuf).now_or_never() {
            None => Ok(None),
            Some(Ok(n)) => {
                self.last_read_filled = n == spare;
                Ok(Some(n))
            }
            Some(Err(e)) => Err(e),
        }
    }

    /// Decodes and routes buffered requests while the in-flight limit allows
    /// and no request is parked.
    fn process_input(&mut self) {
        while self.pending.len() < self.config.max_pending_per_client
            && !self.reading_done
            && self.parked.is_none()
        {
            // Requests joining the run stay in `inbuf` until it is handed
            // over: decoding goes on after them.
            let start = self.run.as_ref().map_or(0, |run| run.len);
            match self.decoder.decode_at(&mut self.inbuf, start) {
                Ok(Some(Decoded::Request(span))) => {
                    self.partial_since = None;
                    self.route_in_place(start, span);
                }
                Ok(Some(Decoded::Inline { consumed, request })) => {
                    self.partial_since = None;
                    self.flush_run();
                    self.inbuf.advance(consumed);
                    self.route(request);
                }
                Ok(Some(Decoded::Nothing { consumed })) => {
                    self.flush_run();
                    self.inbuf.advance(consumed);
                }
                Ok(None) => {
                    if self.decoder.in_progress(&self.inbuf[start..]) {
                        self.partial_since.get_or_insert_with(Instant::now);
                    }
                    break;
                }
                Err(e) => self.protocol_error(e),
            }
        }
    }

    /// An idle client keeps no read buffer: once everything read is decoded
    /// *and answered*, the buffer goes back to the thread's pool. Not sooner:
    /// requests in flight still share its memory, and a buffer handed on in
    /// that state could not be reused in place — the next client to take it
    /// would allocate a new one (and a new shared header), once per request
    /// for clients that do not pipeline.
    fn release_idle_buffer(&mut self) {
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 && self.pending.is_empty() {
            buffers::give_back(std::mem::take(&mut self.inbuf));
        }
    }

    /// Drops what the client sent after the requests already routed, which
    /// (the run among them) still go on: they have their slots.
    fn discard_input(&mut self) {
        self.flush_run();
        self.inbuf.clear();
    }

    fn protocol_error(&mut self, e: ProtocolError) {
        self.reading_done = true;
        self.discard_input();
        if e == ProtocolError::Http {
            return;
        }
        tracing::debug!(error = %e, "client protocol error; closing its connection");
        self.push_ready(Error::ClientProtocol(e).to_resp());
    }

    fn next_seq(&self) -> u64 {
        self.base_seq + self.pending.len() as u64
    }

    /// Opens the reply slot of a request for the shared lane; its sequence
    /// number.
    fn shared_slot(&mut self) -> u64 {
        let seq = self.next_seq();
        self.pending.push_back(None);
        self.shared_pending += 1;
        seq
    }

    /// What becomes of a request, before anything is done with it.
    fn admit(&self, req: RequestRef<'_>) -> Admission {
        self.upstreams.stats.requests.add(1);
        if !self.authenticated && !local::allowed_before_auth(req) {
            Admission::NoAuth
        } else if self.config.deny.denies(req) {
            Admission::Denied
        } else {
            Admission::Command(classify(req, self.config.upstream.db))
        }
    }

    /// Routes the request `span` found at `inbuf[start..]`, right after the
    /// run being collected. The common case — another request for the
    /// shared lane — only lengthens the run: the request is neither split
    /// off nor copied, and the whole run leaves `inbuf` as one piece.
    fn route_in_place(&mut self, start: usize, span: RequestSpan) {
        let admission = self.admit(span.view(&self.inbuf[start..]));
        let command = match admission {
            Admission::Command(c) if c.route == Route::Shared && self.session.is_none() => c,
            _ => {
                self.flush_run();
                let req = span.split_off(&mut self.inbuf);
                self.dispatch(req, admission);
                return;
            }
        };
        let seq = self.shared_slot();
        let safe = u64::from(command.retry_safe);
        if let Some(run) = &mut self.run {
            if run.count < MAX_RUN {
                debug_assert_eq!(run.seq + u64::from(run.count), seq);
                run.len += span.len();
                run.retry_safe |= safe << run.count;
                run.count += 1;
                return;
            }
            self.flush_run();
        }
        self.run = Some(Run {
            seq,
            len: span.len(),
            count: 1,
            retry_safe: safe,
        });
    }

    fn route(&mut self, req: Request) {
        let admission = self.admit(req.view());
        self.dispatch(req, admission);
    }

    fn dispatch(&mut self, req: Request, admission: Admission) {
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
                self.push_ready(reply);
                return;
            }
            Admission::Denied => {
                if let Some(session) = &mut self.session {
                    session.abort_transaction_on_exec();
                }
                self.deny(&req);
                return;
            }
            Admission::Command(command) => command,
        };
        // Whatever this request does (it may even switch lanes), the shared
        // requests before it are on their way first.
        self.flush_run();
        match command.route {
            Route::Shared => match &mut self.session {
                Some(session) => {
                    let seq = self.base_seq + self.pending.len() as u64;
                    if session.send(&req, seq, None) {
                        self.pending.push_back(None);
                    }
                }
                None => self.send_shared(req, command.retry_safe),
            },
            Route::Local(local) => self.local(local, req, command),
            Route::Dedicated(state) => self.dedicated(state, req, command),
            Route::Denied => self.deny(&req),
            Route::Attack => {
                // Like Redis: drop the connection without a word.
                tracing::warn!("possible cross-protocol attack (HTTP request on the proxy port); connection closed");
                self.protocol_error(ProtocolError::Http);
                self.pending.clear();
                self.out.clear();
                self.out_small.clear();
            }
        }
    }

    /// Sends one request that is not in `inbuf` (an inline command, a
    /// request that waited) to the lane on its own.
    fn send_shared(&mut self, req: Request, retry_safe: bool) {
        let seq = self.shared_slot();
        self.hand_to_lane(seq, req.into_raw().freeze(), 1, u64::from(retry_safe));
    }

    /// Hands the collected run of shared requests to the lane.
    fn flush_run(&mut self) {
        let Some(run) = self.run.take() else {
            return;
        };
        let raw = self.inbuf.split_to(run.len).freeze();
        self.hand_to_lane(run.seq, raw, run.count, run.retry_safe);
    }

    fn hand_to_lane(&mut self, seq: u64, raw: Bytes, count: u32, retry_safe: u64) {
        let sent = self.lane.send(LaneRequest {
            seq,
            raw,
            count,
            retry_safe,
            reply_to: self.replies.sender(),
        });
        if sent.is_err() {
            let error = Error::ShuttingDown.to_resp();
            for seq in seq..seq + u64::from(count) {
                self.replies.budget().add(error.len());
                self.resolve(seq, error.clone());
            }
            self.shared_pending -= count as usize;
        }
    }

    fn deny(&mut self, req: &Request) {
        let command = String::from_utf8_lossy(req.name()).to_ascii_uppercase();
        self.push_ready(Error::Denied(command.into()).to_resp());
    }

    /// A command that needs (or ends) connection state.
    fn dedicated(&mut self, state: Stateful, req: Request, command: Command) {
        if state == Stateful::Monitor {
            // Refused in a session too: the monitor stream would arrive on
            // the session as replies nobody asked for.
            self.push_ready(error_line("ERR", "MONITOR is not supported through respool: it would need a connection that streams every client's commands; run MONITOR against Redis directly"));
            return;
        }
        if let Some(session) = &mut self.session {
            let follows_exec = matches!(
                state,
                Stateful::Subscribe(_) | Stateful::Unsubscribe(_) | Stateful::ClientReply
            );
            if follows_exec && session.abort_transaction_on_exec() {
                // At EXEC these change what Redis sends on the connection
                // (pub/sub mode, replies silenced) from inside EXEC's reply,
                // where respool cannot follow; refused like any command
                // refused while queueing, so EXEC answers EXECABORT.
                self.push_ready(local::changes_replies_in_exec(&req));
                return;
            }
            let seq = self.base_seq + self.pending.len() as u64;
            if session.send(&req, seq, Some(state)) {
                self.pending.push_back(None);
            }
            return;
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
            Some(reply) => self.push_ready(reply),
            None => self.parked = Some((req, command)),
        }
    }

    /// Commands answered (or partly answered) by respool itself.
    fn local(&mut self, local: Local, req: Request, command: Command) {
        if !matches!(local, Local::Quit | Local::Reset)
            && self.session.as_ref().is_some_and(Session::pubsub_only)
        {
            // Redis refuses it on a RESP2 connection in pub/sub mode; so does
            // respool, rather than answer what Redis would not.
            self.push_ready(local::not_in_pubsub_context(&req));
            return;
        }
        if !matches!(local, Local::Quit | Local::Reset | Local::SelectDefault)
            && self
                .session
                .as_mut()
                .is_some_and(|s| s.abort_transaction_on_exec())
        {
            // Redis would queue it and run it at EXEC, but respool answers
            // it itself and has no place in EXEC's reply for it. Refusing it
            // keeps the reply count right: as with any command refused while
            // queueing, EXEC answers EXECABORT and nothing runs.
            self.push_ready(local::not_queueable(&req));
            return;
        }
        match local {
            Local::Quit => {
                self.push_ready(Bytes::from_static(b"+OK\r\n"));
                self.reading_done = true;
            }
            Local::Reset if self.session.is_some() => self.parked = Some((req, command)),
            Local::Reset => {
                let reply = self.reset();
                self.push_ready(reply);
            }
            Local::SelectDefault if self.session.is_some() => {
                self.dedicated(Stateful::Select, req, command)
            }
            Local::Hello => {
                if let Some(protocol) = local::hello_protocol(&req) {
                    if protocol != self.protocol
                        && self.session.is_none()
                        && self.shared_pending > 0
                    {
                        // Switching lanes: wait until the old lane answered
                        // everything, so nothing is reordered.
                        self.parked = Some((req, command));
                        return;
                    }
                }
                match self.hello(&req) {
                    Some(reply) => self.push_ready(reply),
                    None => {
                        // No wait is running: a HELLO is parked while one
                        // does, and nothing is read behind it.
                        let within = self.config.hold_timeout;
                        let wait = self.upstreams.version.wait_validated(within);
                        self.wait = Some(Wait::Version(Box::pin(wait)));
                        self.parked = Some((req, command));
                    }
                }
            }
            other => {
                let reply = self.simple_local(other, &req);
                self.push_ready(reply);
            }
        }
    }

    fn simple_local(&mut self, local: Local, req: &Request) -> Bytes {
        match local {
            Local::Auth => self.auth(req),
            Local::Ok | Local::SelectDefault => Bytes::from_static(b"+OK\r\n"),
            Local::ClientId => Bytes::from(format!(":{}\r\n", self.id)),
            Local::Stats => self.stats_reply(),
            Local::ClientGetName => match &self.name {
                Some(name) => local::bulk(name),
                None => local::nil(self.protocol),
            },
            Local::ClientSetName => match local::validate_client_name(req) {
                Ok(name) => {
                    self.name = name;
                    Bytes::from_static(b"+OK\r\n")
                }
                Err(reply) => reply,
            },
            Local::Quit | Local::Reset | Local::Hello => Bytes::from_static(b"+OK\r\n"),
        }
    }

    fn auth(&mut self, req: &Request) -> Bytes {
        match local::auth(&self.config.client_auth, req) {
            Ok(()) => {
                self.set_authenticated();
                Bytes::from_static(b"+OK\r\n")
            }
            Err(reply) => reply,
        }
    }

    fn set_authenticated(&mut self) {
        if !self.authenticated {
            self.authenticated = true;
            self.decoder.set_limits(RequestLimits {
                max_bulk_len: self.config.max_bulk_length,
                ..RequestLimits::default()
            });
        }
    }

    /// HELLO's reply; `None` when it would succeed but no upstream
    /// connection has passed validation yet, so the server version its reply
    /// carries is not known: nothing is changed then, and the caller waits.
    fn hello(&mut self, req: &Request) -> Option<Bytes> {
        let hello = match local::parse_hello(req) {
            Ok(h) => h,
            Err(reply) => return Some(reply),
        };
        let authenticates = match hello.auth {
            Some((user, password)) => match self.config.client_auth.check(Some(user), password) {
                crate::client::auth::AuthOutcome::Ok => true,
                _ => return Some(local::wrongpass()),
            },
            None if !self.authenticated => return Some(error_line("NOAUTH", "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")),
            None => false,
        };
        if !self.upstreams.version.is_validated() {
            return None;
        }
        if authenticates {
            self.set_authenticated();
        }
        if let Some(name) = hello.setname {
            self.name = name;
        }
        if let Some(protocol) = hello.protocol {
            if protocol != self.protocol {
                self.protocol = protocol;
                self.lane = self.upstreams.lane(protocol);
                if let Some(session) = &mut self.session {
                    session.switch_protocol(protocol == 3);
                }
            }
        }
        // Unknown only where an ACL forbids the validation's `INFO server`.
        let version = self.upstreams.version.get();
        let version = version.as_deref().unwrap_or("unknown");
        Some(local::hello_reply(self.protocol, self.id, version))
    }

    /// The parked `HELLO` waited `--hold-timeout` for a validated upstream
    /// connection in vain: it fails, changing nothing, as a command sent
    /// while Redis is down would.
    fn no_server_version(&mut self) {
        if self.parked.take().is_some() {
            let error = Error::NoServerVersion {
                addr: self.config.upstream.addr.to_string().into(),
                waited: self.config.hold_timeout,
            };
            self.push_ready(error.to_resp());
        }
    }

    /// `INFO respool`: the process's counters, summed over its event loops.
    fn stats_reply(&self) -> Bytes {
        let version = self.upstreams.version.get();
        let ctx = crate::stats::Context {
            upstream: &self.config.upstream.addr,
            upstream_version: version.as_deref(),
            event_loops: self.config.event_loops(),
            connected_clients: self
                .config
                .connected_clients
                .load(std::sync::atomic::Ordering::Relaxed),
            uptime_secs: self.config.stats.uptime_secs(),
        };
        let text = crate::stats::render(ctx, self.config.stats.totals());
        local::bulk(text.as_bytes())
    }

    /// RESET of a client without a session: its own state goes back to a new
    /// connection's.
    fn reset(&mut self) -> Bytes {
        self.name = None;
        if self.protocol != 2 {
            self.protocol = 2;
            self.lane = self.upstreams.lane(2);
        }
        if self.config.client_auth.required() && self.authenticated {
            self.authenticated = false;
            self.decoder.set_limits(RequestLimits::unauthenticated());
        }
        Bytes::from_static(b"+RESET\r\n")
    }

    /// Moves a parked request on once what it waits for has happened.
    fn unpark(&mut self) {
        let Some((req, command)) = self.parked.take() else {
            return;
        };
        match command.route {
            Route::Local(Local::Reset) => match self.session.take() {
                Some(session) if !session.idle() => {
                    self.session = Some(session);
                    self.parked = Some((req, command));
                }
                session => {
                    if let Some(session) = session {
                        session.release(self.upstreams.pinned.settings.clone());
                    }
                    let reply = self.reset();
                    self.push_ready(reply);
                }
            },
            Route::Local(local @ Local::Hello) => {
                if self.shared_pending > 0 || self.wait.is_some() {
                    self.parked = Some((req, command));
                } else {
                    self.local(local, req, command);
                }
            }
            Route::Dedicated(state) => {
                if self.session.is_some() {
                    self.dedicated(state, req, command);
                } else if self.shared_pending > 0 || self.wait.is_some() {
                    self.parked = Some((req, command));
                } else {
                    self.wait = Some(Wait::Checkout(Box::pin(checkout(
                        self.upstreams.clone(),
                        self.config.checkout_timeout,
                    ))));
                    self.parked = Some((req, command));
                }
            }
            _ => self.route(req),
        }
    }

    fn on_checkout(&mut self, result: Result<PinnedConn, Error>) {
        match result {
            Ok(conn) => {
                let mut session = Session::new(
                    conn,
                    self.config.upstream.db,
                    self.config.timeout,
                    self.config.read_buffer_size,
                );
                if self.protocol == 3 {
                    session.switch_protocol(true);
                }
                self.session = Some(session);
                // The parked request goes out on the new session.
                self.unpark();
            }
            Err(e) => {
                if self.parked.take().is_some() {
                    self.push_ready(e.to_resp());
                }
            }
        }
    }

    fn on_session_readable(&mut self) {
        let Some(session) = &mut self.session else {
            return;
        };
        let mut events = std::mem::take(&mut self.events);
        let result = session.read(&mut events);
        for event in events.drain(..) {
            match event {
                SessionEvent::Reply(seq, reply) => {
                    self.replies.budget().add(reply.len());
                    self.resolve(seq, reply);
                    self.collect_ready();
                }
                SessionEvent::OutOfBand(frame) => {
                    // It came before the replies still outstanding.
                    self.collect_ready();
                    self.replies.budget().add(frame.len());
                    self.push_out(frame);
                }
                SessionEvent::Nothing => {}
            }
        }
        self.events = events;
        match result {
            Err(broken) => self.session_failed(broken),
            Ok(()) => self.maybe_release_session(),
        }
    }

    fn maybe_release_session(&mut self) {
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.finished() && s.wbuf.is_empty())
        {
            if let Some(session) = self.session.take() {
                session.release(self.upstreams.pinned.settings.clone());
            }
        }
    }

    fn flush_session(&mut self) {
        let Some(session) = &mut self.session else {
            return;
        };
        if let Err(broken) = session.write() {
            self.session_failed(broken);
        }
    }

    fn session_timed_out(&mut self) {
        let error = Error::Timeout {
            addr: self.config.upstream.addr.clone(),
            after: self.config.timeout,
        };
        self.fail_session(error.to_resp());
    }

    fn session_failed(&mut self, broken: SessionBroken) {
        let error = match broken {
            SessionBroken::Lost(why) => {
                tracing::warn!(reason = %why, "pinned upstream connection lost");
                Error::LostAfterWrite
            }
            SessionBroken::BadReply(why) => {
                tracing::warn!(reason = %why, "pinned upstream connection sent what respool cannot follow; closing it and the client");
                Error::UpstreamProtocol {
                    addr: self.config.upstream.addr.clone(),
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
        }
        let mut told = false;
        for slot in self.pending.iter_mut().filter(|s| s.is_none()) {
            self.replies.budget().add(error.len());
            *slot = Some(error.clone());
            told = true;
        }
        if !told {
            // Nothing was waiting (CLIENT REPLY OFF, a subscriber): the
            // client still learns why it is closed, not just that it is.
            self.push_ready(error);
        }
        self.parked = None;
        self.reading_done = true;
    }

    /// Gives the session back when the client goes away.
    fn end_session(&mut self) {
        if let Some(session) = self.session.take() {
            session.release(self.upstreams.pinned.settings.clone());
        }
    }

    fn push_ready(&mut self, reply: Bytes) {
        self.replies.budget().add(reply.len());
        self.pending.push_back(Some(reply));
    }

    /// A delivery from the lane: the replies to `d.count` requests, back to
    /// back. The first slot takes all the bytes, the others an empty reply,
    /// so they are written out together in one piece.
    fn resolve_shared(&mut self, d: Delivery) {
        if d.count == 0 {
            // Answers nothing (lanes never send one; a slot must not be
            // filled by it).
            self.replies.budget().release(d.reply.len());
            return;
        }
        self.shared_pending = self.shared_pending.saturating_sub(d.count as usize);
        self.resolve(d.seq, d.reply);
        for seq in d.seq + 1..d.seq + u64::from(d.count) {
            self.resolve(seq, Bytes::new());
        }
    }

    /// Fills the slot of request `seq` with a reply already counted in the
    /// budget (uncounted again if there is no such slot).
    fn resolve(&mut self, seq: u64, reply: Bytes) {
        let slot = seq
            .checked_sub(self.base_seq)
            .and_then(|index| self.pending.get_mut(index as usize));
        match slot {
            Some(slot @ None) => *slot = Some(reply),
            _ => self.replies.budget().release(reply.len()),
        }
    }

    /// Moves the resolved prefix of `pending` to the output.
    fn collect_ready(&mut self) {
        while let Some(Some(_)) = self.pending.front() {
            let Some(Some(reply)) = self.pending.pop_front() else {
                break;
            };
            self.base_seq += 1;
            self.push_out(reply);
        }
    }

    fn push_out(&mut self, reply: Bytes) {
        if reply.len() <= COPY_LIMIT {
            self.out_small.extend_from_slice(&reply);
        } else {
            if !self.out_small.is_empty() {
                self.out.push_back(self.out_small.split().freeze());
            }
            self.out.push_back(reply);
        }
    }

    fn out_is_empty(&self) -> bool {
        self.out.is_empty() && self.out_small.is_empty()
    }

    /// Writes as much output as the socket takes without waiting. Returns
    /// true when the connection should now close (everything written after
    /// QUIT or a protocol error).
    fn write_some(&mut self) -> io::Result<bool> {
        loop {
            let chunk: &[u8] = match self.out.front() {
                Some(b) => b,
                None if !self.out_small.is_empty() => &self.out_small,
                None => break,
            };
            match self.stream.try_write(chunk) {
                Ok(n) => {
                    self.replies.budget().release(n);
                    self.touch();
                    if let Some(front) = self.out.front_mut() {
                        front.advance(n);
                        if front.is_empty() {
                            self.out.pop_front();
                        }
                    } else {
                        self.out_small.advance(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        match self.stream.try_flush() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            result => result?,
        }
        if self.out_small.is_empty() && self.out_small.capacity() > 64 * 1024 {
            self.out_small = BytesMut::new();
        }
        Ok(self.reading_done && self.pending.is_empty() && self.parked.is_none())
    }
}

/// Consecutive requests for the shared lane, collected while decoding. They
/// stay at the front of the client's read buffer, back to back as they
/// arrived, until the run is handed over.
struct Run {
    /// Sequence number of the first.
    seq: u64,
    /// Their bytes: `inbuf[..len]`.
    len: usize,
    count: u32,
    /// Bit `i`: request `i` may be resent after a connection loss.
    retry_safe: u64,
}

/// What becomes of a request ([`Client::admit`]).
#[derive(Clone, Copy)]
enum Admission {
    /// Refused: the client has not authenticated.
    NoAuth,
    /// Refused by `--deny-command`.
    Denied,
    Command(Command),
}

/// Checks out a dedicated connection, saying precisely why when none comes.
async fn checkout(
    upstreams: Arc<Upstreams>,
    wait: std::time::Duration,
) -> Result<PinnedConn, Error> {
    let pinned = &upstreams.pinned;
    match pinned.pool.get_owned().await {
        Ok(conn) => {
            upstreams.stats.pinned_checkouts.add(1);
            Ok(conn)
        }
        Err(e) => {
            upstreams.stats.pinned_checkout_failures.add(1);
            let cause = match (e, pinned.failures.borrow().clone()) {
                (bb8::RunError::User(e), _) | (bb8::RunError::TimedOut, Some(e)) => e.to_string(),
                (bb8::RunError::TimedOut, None) => format!(
                    "all {} dedicated connections (--max-pinned) are in use",
                    pinned.pool.state().connections
                ),
            };
            Err(Error::NoDedicatedConnection {
                addr: pinned.settings.addr.clone(),
                cause: cause.into(),
                waited: wait,
            })
        }
    }
}

/// The deadlines the client loop waits on, each with a timer kept from turn
/// to turn: re-armed when its deadline moves, not rebuilt on every turn.
#[derive(Default)]
struct Deadlines {
    session: Deadline,
    request: Deadline,
    idle: Deadline,
    hang_up: Deadline,
}

#[derive(Default)]
struct Deadline(Option<Pin<Box<Sleep>>>);

impl Deadline {
    /// Ready once `at` has passed; pending without a deadline (a timer left
    /// from an earlier one may still wake the task once, harmlessly).
    #[inline(always)]
    fn poll(&mut self, cx: &mut Context<'_>, at: Option<Instant>) -> Poll<()> {
        // Inlined, so that an unarmed deadline (the usual case, three per
        // turn) costs a test, not a call. Always: a plain `#[inline]` was
        // dropped once `poll_run` grew, at 190 instructions per request.
        match at {
            None => Poll::Pending,
            Some(at) => self.poll_at(cx, at),
        }
    }

    fn poll_at(&mut self, cx: &mut Context<'_>, at: Instant) -> Poll<()> {
        let sleep = self.0.get_or_insert_with(|| Box::pin(sleep_until(at)));
        if sleep.deadline() != at {
            sleep.as_mut().reset(at);
        }
        sleep.as_mut().poll(cx)
    }
}
