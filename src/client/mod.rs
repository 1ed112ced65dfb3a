//! One client connection: read a batch of requests, route each, and write the
//! replies back in request order, one write per batch.
//!
//! A client is a few owned parts and a loop that moves between them:
//! * [`input`] — the read buffer, the decoder, and the run of shared
//!   requests being collected (a pipeline reaches the lane as one message);
//! * [`output`] — a slot per request in arrival order, filled as replies
//!   arrive, and the resolved prefix written out in order;
//! * [`routing`] — where each request goes: its lane, its pinned session,
//!   respool itself ([`local`]), or a refusal;
//! * [`pinned`] and [`session`] — a dedicated connection while the client
//!   has connection state;
//! * [`deadlines`] and [`stop`] — the timers and signals it waits on.
//!
//! A client starts on a shared lane. A command that needs connection state
//! (see [`crate::command::Stateful`]) first waits until every earlier request
//! of the client has been answered (so nothing overtakes it on another
//! connection), then gets a dedicated connection that carries all of the
//! client's commands until the state ends; then the client returns to its
//! lane.

mod admin;
pub(crate) mod auth;
mod buffers;
mod cluster;
mod deadlines;
pub(crate) mod inbox;
mod input;
mod introspection;
mod local;
mod login;
mod output;
mod pinned;
mod reads;
pub(crate) mod roster;
mod routing;
mod scan;
mod session;
mod shard_follow;
mod stop;
mod transaction;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::codec::{Request, RequestLimits};
use crate::command::Command;
use crate::config::ClientSettings;
use crate::error::Error;
use crate::net::{PeerAddr, Stream};
use crate::pool::lane::LaneHandle;
use crate::pool::{LaneSet, PinnedConn};
use crate::server::Shared;
use deadlines::Deadlines;
use input::Input;
use output::Output;
use roster::{Joining, Member, Published};
use session::{Session, SessionEvent};
use stop::{Stop, StopSignals};

/// At shutdown, how long a client's input is drained after respool ended
/// its stream (see [`Stream::linger`]).
const SHUTDOWN_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// Serves one client until it disconnects, QUITs, breaks the protocol, or the
/// proxy shuts down.
pub(crate) async fn serve(
    stream: Stream,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    abort: CancellationToken,
) {
    let peer = stream.peer_addr().ok();
    // CLIENT KILL closes this client alone; the shutdown deadline, all.
    let kill = abort.child_token();
    let mut client = Client::new(stream, shared, kill.clone());
    let mut stop = StopSignals::new(shutdown, kill.clone());
    let result = poll_fn(|cx| client.poll_run(cx, &mut stop)).await;
    client.end_session();
    client.stream.close();
    client.shared.process.roster.leave(client.id);
    if stop.shutdown_seen() {
        // The client may have sent more than respool read. Closing a socket
        // with bytes unread resets the connection, and a reset can destroy
        // replies still on their way, which the client would then resend
        // though they ran: drain its input until it closes too (it has our
        // end of stream), briefly, unless the shutdown deadline comes first.
        tokio::select! {
            _ = kill.cancelled() => {}
            _ = client.stream.linger(SHUTDOWN_LINGER) => {}
        }
    }
    match result {
        Ok(()) => tracing::trace!(?peer, "client closed"),
        Err(e) => tracing::debug!(?peer, error = %e, "client connection ended with an error"),
    }
}

/// Whether the client's requests are being read.
enum Phase {
    /// Requests are read and routed.
    Reading,
    /// A request waits before it can go on (for the client's earlier
    /// requests to be answered, or for what `wait` names); nothing more is
    /// read meanwhile.
    Parked(Parked),
    /// Nothing more will be read (QUIT, a protocol error, a request not
    /// completed in time, shutdown, a lost session): the replies owed are
    /// written, then the connection closes.
    Draining,
}

/// A request waiting before it can go on (entering a session, ending one,
/// switching protocol lanes, waiting for the server version).
struct Parked {
    req: Request,
    command: Command,
    /// What it waits for outside the client, if anything.
    wait: Option<Wait>,
    /// The client sent more during the wait: its socket stays readable, so
    /// it is not watched for a hang-up until the wait ends.
    sent_while_waiting: bool,
    /// Shutdown came during the wait: once the request has gone on, nothing
    /// more is read.
    drain_after: bool,
}

type Checkout = Pin<Box<dyn Future<Output = Result<PinnedConn, Error>> + Send>>;
/// Waiting for the first validated upstream connection (`true` once one has
/// passed validation, `false` if none did in time).
type VersionWait = Pin<Box<dyn Future<Output = bool> + Send>>;

/// What a parked request waits for outside the client: there is one parked
/// request, so at most one of these runs.
enum Wait {
    /// A dedicated connection being checked out.
    Checkout(Checkout),
    /// The first validated upstream connection, whose server version a
    /// `HELLO` reply carries.
    Version(VersionWait),
    /// The upstream's verdict on a login (AUTH passthrough).
    Login(login::LoginWait),
    /// The end of a `CLIENT PAUSE`.
    Pause(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// The new primary of a shard channel whose slot moved.
    NewOwner(Pin<Box<dyn Future<Output = Option<Arc<LaneSet>>> + Send>>),
}

/// How a [`Wait`] ended.
enum WaitOutcome {
    Checkout(Result<PinnedConn, Error>),
    /// Whether a connection passed validation in time.
    Version(bool),
    Login(login::LoginResult),
    PauseOver,
    NewOwner(Option<Arc<LaneSet>>),
}

impl Wait {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<WaitOutcome> {
        match self {
            Wait::Checkout(checkout) => checkout.as_mut().poll(cx).map(WaitOutcome::Checkout),
            Wait::Version(wait) => wait.as_mut().poll(cx).map(WaitOutcome::Version),
            Wait::Login(check) => check.as_mut().poll(cx).map(WaitOutcome::Login),
            Wait::Pause(over) => over.as_mut().poll(cx).map(|()| WaitOutcome::PauseOver),
            Wait::NewOwner(found) => found.as_mut().poll(cx).map(WaitOutcome::NewOwner),
        }
    }

    /// For log lines.
    fn what(&self) -> &'static str {
        match self {
            Wait::Checkout(_) => "a dedicated connection",
            Wait::Version(_) => "the first validated upstream connection",
            Wait::Login(_) => "the upstream's verdict on its login",
            Wait::Pause(_) => "the end of a CLIENT PAUSE",
            Wait::NewOwner(_) => "the new primary of a shard channel it subscribed to",
        }
    }
}

/// Why the client's loop ends.
enum End {
    /// Closed as it should be (QUIT answered, EOF, idle, hung up, …).
    Done,
    /// The client's socket failed.
    Failed(io::Error),
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> End {
        End::Failed(e)
    }
}

/// Which sources already have the task's waker in this poll of the task.
#[derive(Default)]
struct Registered {
    stop: bool,
    deliveries: bool,
}

struct Client {
    stream: Stream,
    /// The client's address, for log lines about it.
    peer: Option<PeerAddr>,
    shared: Arc<Shared>,
    /// This client's id (CLIENT ID, HELLO).
    id: u64,
    /// What others see of it (CLIENT LIST, KILL, …).
    member: Arc<Member>,
    /// The lane set serving the client.
    lanes: Arc<LaneSet>,
    /// Its shared lane for the client's protocol.
    lane: LaneHandle,
    /// RESP version the client speaks (2, or 3 after `HELLO 3`).
    protocol: u8,
    /// Authenticated (always true when no client auth is configured).
    authenticated: bool,
    /// Authenticated as `--admin-user`: may run `RESPOOL …`.
    admin: bool,
    /// The last short command name counted (as a word), its length and id
    /// (`id | len << 16`): the next request usually has the same.
    last_command: std::cell::Cell<(u64, u32)>,
    /// CLIENT SETNAME, kept here so that naming a client does not pin it.
    name: Option<Bytes>,
    input: Input,
    output: Output,
    phase: Phase,
    /// The dedicated connection while the client has connection state.
    session: Option<Session>,
    /// Reused buffer for session events.
    events: Vec<SessionEvent>,
    /// When the client last sent something or was written to
    /// (`--client-idle-timeout`).
    last_activity: Instant,
    deadlines: Deadlines,
    /// Reads from replicas (`--read-from` other than `primary`).
    reads: Option<reads::ReplicaReads>,
    /// Authentication, deny list and limits as they were when the client
    /// connected or last logged in: a reload applies to new connections
    /// and new logins, and costs the request path nothing.
    settings: Arc<ClientSettings>,
    /// Where the run of shared requests being collected goes.
    run_target: routing::Target,
    /// Routing by hash slot (`--cluster`).
    cluster: Option<cluster::ClusterRoutes>,
    /// `reads` or `cluster` is set: a run may go elsewhere than `lane`.
    routes_runs: bool,
    /// A MULTI in cluster mode whose node is not known yet.
    cluster_tx: Option<transaction::OpenTransaction>,
    /// The lane set a session being checked out comes from (a cluster
    /// primary's), when it is not `lanes`.
    session_origin: Option<Arc<LaneSet>>,
    /// Shard channels Redis unsubscribed the client from in the events
    /// being handled (their slot moved).
    moved_shards: Vec<shard_follow::MovedShard>,
    /// The moved shard channels being subscribed again elsewhere.
    following: Option<Vec<shard_follow::MovedShard>>,
}

impl Client {
    fn new(stream: Stream, shared: Arc<Shared>, kill: CancellationToken) -> Client {
        let settings = shared.process.live.clients.load_full();
        let authenticated = !settings.auth.required();
        let limits = if authenticated {
            RequestLimits {
                max_bulk_len: settings.max_bulk_length,
                ..RequestLimits::default()
            }
        } else {
            RequestLimits::unauthenticated()
        };
        let lanes = shared.router.initial();
        let cluster = shared
            .router
            .cluster()
            .cloned()
            .map(|map| cluster::ClusterRoutes::new(map, lanes.endpoint().identity.clone()));
        let id = next_client_id();
        let peer = stream.peer_addr().ok();
        let roster = &shared.process.roster;
        let output = Output::new(id, settings.output_limit, roster.memory.clone());
        let joining = Joining {
            id,
            addr: peer.clone(),
            laddr: stream.local_addr().ok(),
            fd: stream.fd(),
            kill,
            replies: output.sender(),
        };
        let member = roster.join(
            joining,
            Published {
                user: lanes.endpoint().identity.user().into(),
                resp: 2,
                db: lanes.endpoint().db,
                ..Published::default()
            },
        );
        Client {
            peer,
            stream,
            id,
            member,
            lane: lanes.lane(2),
            lanes,
            protocol: 2,
            authenticated,
            admin: false,
            last_command: std::cell::Cell::new((u64::MAX, 0)),
            name: None,
            input: Input::new(limits, shared.config.pool.read_buffer_size),
            output,
            phase: Phase::Reading,
            session: None,
            events: Vec::new(),
            last_activity: Instant::now(),
            deadlines: Deadlines::default(),
            reads: shared
                .router
                .replicas()
                .cloned()
                .map(reads::ReplicaReads::new),
            run_target: routing::Target::Primary,
            cluster,
            routes_runs: shared.router.replicas().is_some() || shared.router.cluster().is_some(),
            cluster_tx: None,
            session_origin: None,
            moved_shards: Vec::new(),
            following: None,
            settings,
            shared,
        }
    }

    fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// Takes the current settings (a login checks the passwords of now).
    fn refresh_settings(&mut self) {
        self.settings = self.shared.process.live.clients.load_full();
    }

    /// One poll of the client's task: turns of the loop until nothing is
    /// ready. Sources are polled by hand rather than through `select!`,
    /// which on every turn (three or four per request at pipeline 1)
    /// rebuilt a future for each source and polled them all again: here a
    /// source whose waker is registered is not polled again in the same
    /// poll of the task (the stop signals and the reply mailbox are only
    /// changed by other tasks, which wake this one when they change them).
    fn poll_run(&mut self, cx: &mut Context<'_>, stop: &mut StopSignals) -> Poll<io::Result<()>> {
        let mut registered = Registered::default();
        loop {
            match self.turn(cx, stop, &mut registered) {
                Ok(true) => {}
                Ok(false) => return Poll::Pending,
                Err(End::Done) => return Poll::Ready(Ok(())),
                Err(End::Failed(e)) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// One turn: polls the sources in order of urgency — the stop signals,
    /// the replies, the session, a wait, the deadlines, the client's socket
    /// — then does what they made possible. `Ok(false)`: nothing happened,
    /// and every source has the task's waker.
    #[inline]
    fn turn(
        &mut self,
        cx: &mut Context<'_>,
        stop: &mut StopSignals,
        registered: &mut Registered,
    ) -> Result<bool, End> {
        if self.finished() {
            return Err(End::Done);
        }
        let mut progress = self.poll_signals(cx, stop, registered)?;
        progress |= self.poll_session(cx);
        progress |= self.poll_wait(cx)?;
        progress |= self.poll_deadlines(cx)?;
        if self.output.wants_write() {
            match self
                .output
                .poll_write(&mut self.stream, cx, &self.shared.stats.client_bytes_out)
            {
                Poll::Ready(Ok(())) => progress = true,
                Poll::Ready(Err(e)) => return Err(End::Failed(e)),
                Poll::Pending => {}
            }
        }
        if !progress {
            // Read only once the turn's events are handled: replies
            // resolved above free their room in the slots first.
            progress = self.poll_read(cx)?;
        }
        if progress {
            self.work(cx)?;
        }
        Ok(progress)
    }

    /// The stop signals and the reply mailbox, each polled once per poll
    /// of the task (ready or not, their wakers stay registered).
    #[inline]
    fn poll_signals(
        &mut self,
        cx: &mut Context<'_>,
        stop: &mut StopSignals,
        registered: &mut Registered,
    ) -> Result<bool, End> {
        let mut progress = false;
        if !registered.stop {
            registered.stop = true;
            match stop.poll_stop(cx) {
                Poll::Ready(Stop::Abort) => return Err(End::Done),
                Poll::Ready(Stop::Shutdown) => {
                    self.stop_reading();
                    progress = true;
                }
                Poll::Pending => {}
            }
        }
        if !registered.deliveries {
            registered.deliveries = true;
            progress |= self.output.poll_deliveries(cx).is_ready();
        }
        Ok(progress)
    }

    /// The client's socket: read when it may send more.
    #[inline]
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        if !self.can_read() {
            return Ok(false);
        }
        match self.input.poll_read(&mut self.stream, cx) {
            Poll::Pending => Ok(false),
            // EOF: the client is gone; replies still pending would reach
            // nobody. (Its commands still run, as with Redis.)
            Poll::Ready(Ok(0)) => Err(End::Done),
            Poll::Ready(Ok(n)) => {
                self.shared.stats.client_bytes_in.add(n as u64);
                self.touch();
                self.member.active();
                Ok(true)
            }
            Poll::Ready(Err(e)) => Err(End::Failed(e)),
        }
    }

    /// A parked request's wait. The client is not read meanwhile, but one
    /// that hangs up must not hold its place (and its `--max-clients` slot)
    /// until the wait ends: it must leave the queue for a dedicated
    /// connection (dropping the checkout does), not be handed one and run a
    /// command for nobody. Looked at before the wait: a connection handed
    /// over just now goes back to the pool with it. What the client sends
    /// meanwhile stays in its read buffer for after the wait.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let Phase::Parked(parked) = &mut self.phase else {
            return Ok(false);
        };
        let Some(wait) = &mut parked.wait else {
            return Ok(false);
        };
        if !parked.sent_while_waiting && !parked.drain_after {
            match self.input.poll_read(&mut self.stream, cx) {
                Poll::Ready(Ok(0)) => {
                    tracing::debug!(peer = ?self.peer, waiting_for = wait.what(), "client hung up while its request waited");
                    return Err(End::Done);
                }
                Poll::Ready(Ok(n)) => {
                    self.shared.stats.client_bytes_in.add(n as u64);
                    parked.sent_while_waiting = true;
                }
                Poll::Ready(Err(e)) => return Err(End::Failed(e)),
                Poll::Pending => {}
            }
        }
        let Poll::Ready(outcome) = wait.poll(cx) else {
            return Ok(false);
        };
        parked.wait = None;
        parked.sent_while_waiting = false;
        match outcome {
            WaitOutcome::Checkout(result) => self.on_checkout(result),
            WaitOutcome::Version(true) => {}
            WaitOutcome::Version(false) => self.no_server_version(),
            WaitOutcome::Login(result) => self.on_login(result),
            // The request goes on when the loop unparks it.
            WaitOutcome::PauseOver => {}
            WaitOutcome::NewOwner(lanes) => self.on_new_owner(lanes),
        }
        Ok(true)
    }

    /// The session's reply deadline, an unfinished request, an idle client,
    /// and a hang-up check.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let mut progress = false;
        let can_read = self.can_read();
        let session_deadline = self.session.as_ref().and_then(Session::deadline);
        if self.deadlines.session.poll(cx, session_deadline).is_ready() {
            self.session_deadline_passed();
            progress = true;
        }
        let request_deadline = self.request_deadline(can_read);
        if self.deadlines.request.poll(cx, request_deadline).is_ready() {
            self.request_timed_out();
            progress = true;
        }
        let idle_deadline = self.idle_deadline();
        if self.deadlines.idle.poll(cx, idle_deadline).is_ready() {
            tracing::debug!(peer = ?self.peer, "closing an idle client (--client-idle-timeout)");
            return Err(End::Done);
        }
        // While the client is not read (after QUIT or a protocol error, or
        // with `--max-pending-per-client` requests in flight) and its
        // session waits on a reply with no deadline (a blocking command),
        // reading cannot notice a hang-up; without this, such a client
        // would hold its task, its `--max-clients` slot and a dedicated
        // connection until the command ended, forever for `BLPOP key 0`.
        let unbounded = !can_read
            && self
                .session
                .as_ref()
                .is_some_and(|s| !s.idle() && s.reply_deadline().is_none());
        let check_at = self.deadlines.hang_up_check(unbounded);
        if self.deadlines.hang_up.poll(cx, check_at).is_ready() {
            if self.stream.peer_closed() {
                tracing::debug!(peer = ?self.peer, "client hung up while its blocking command waited");
                return Err(End::Done);
            }
            self.deadlines.hang_up_at = None;
            progress = true;
        }
        Ok(progress)
    }

    /// What the turn's events made possible: route what was read or
    /// unparked, write the replies out, and close when all is said.
    #[inline]
    fn work(&mut self, cx: &mut Context<'_>) -> Result<(), End> {
        // Replies resolved this turn leave the slots first, so that the
        // room they free is there when the input is decoded: with a full
        // pipeline already read, nothing else would come to decode it.
        self.output.collect_ready();
        self.advance();
        self.output.collect_ready();
        let in_flight = self.output.in_flight();
        self.member.set_pending(in_flight);
        self.input.release_idle_buffer(in_flight == 0);
        self.flush_session(cx);
        if self.output.wants_write() {
            match self
                .output
                .poll_write(&mut self.stream, cx, &self.shared.stats.client_bytes_out)
            {
                Poll::Ready(Ok(())) => self.touch(),
                Poll::Ready(Err(e)) => return Err(End::Failed(e)),
                Poll::Pending => {}
            }
        }
        if self.finished() {
            return Err(End::Done);
        }
        if self.output.budget().exceeded() {
            // Like Redis's client-output-buffer-limit: the client is not
            // reading its replies; drop them along with the connection.
            tracing::info!(
                peer = ?self.peer,
                held_bytes = self.output.budget().held(),
                "client output limit (--client-output-limit) exceeded; disconnecting the client"
            );
            return Err(End::Done);
        }
        Ok(())
    }

    /// Everything owed is written and nothing more will be read.
    fn finished(&self) -> bool {
        matches!(self.phase, Phase::Draining) && self.output.is_empty()
    }

    /// Whether the client may send more now.
    #[inline]
    fn can_read(&self) -> bool {
        matches!(self.phase, Phase::Reading)
            && self.output.in_flight() < self.settings().max_pending
    }

    /// Nothing more will be read (QUIT, shutdown, …); a parked request
    /// still goes on first.
    fn stop_reading(&mut self) {
        match &mut self.phase {
            Phase::Parked(parked) => parked.drain_after = true,
            phase => *phase = Phase::Draining,
        }
    }

    /// Parks `req` until what it needs has happened.
    fn park(&mut self, req: Request, command: Command, wait: Option<Wait>) {
        let drain_after = matches!(self.phase, Phase::Draining);
        self.phase = Phase::Parked(Parked {
            req,
            command,
            wait,
            sent_while_waiting: false,
            drain_after,
        });
    }

    /// When a request the client started must be complete. Only while
    /// respool is reading: a full pipeline waiting on replies is respool's
    /// wait, not the client's.
    fn request_deadline(&self, can_read: bool) -> Option<Instant> {
        let timeout = self.settings().request_read_timeout?;
        let since = self.input.partial_since().filter(|_| can_read)?;
        Some(since + timeout)
    }

    fn request_timed_out(&mut self) {
        let Some(after) = self.settings().request_read_timeout else {
            return;
        };
        tracing::debug!(peer = ?self.peer, "client did not complete a request in time; closing its connection");
        self.phase = Phase::Draining;
        self.discard_input();
        self.output
            .push_ready(Error::RequestIncomplete(after).to_resp());
    }

    /// Notes that the client sent something or was written to. Reading the
    /// clock twice per request is measurable at pipeline 1, so only when
    /// `--client-idle-timeout` needs it.
    fn touch(&mut self) {
        if self.settings().idle_timeout.is_some() {
            self.last_activity = Instant::now();
        }
    }

    /// When a quiet client is closed: nothing in flight, nothing to write,
    /// and — as Redis exempts them — not subscribed (a blocked command is in
    /// flight, so blocked clients are exempt too).
    fn idle_deadline(&self) -> Option<Instant> {
        let timeout = self.settings().idle_timeout?;
        let busy = !self.output.is_empty()
            || matches!(self.phase, Phase::Parked(_))
            || self.session.as_ref().is_some_and(Session::subscribed);
        (!busy).then_some(self.last_activity + timeout)
    }
}

/// A fresh client id (CLIENT ID, HELLO): one sequence for the process, so
/// ids stay unique across event loops.
fn next_client_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
