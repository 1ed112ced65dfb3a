//! `FaultRelay`: a TCP relay between a client (usually the proxy under test)
//! and an upstream, whose behaviour tests switch at runtime to inject
//! faults for real: latency, silence, resets, replies cut mid-way, replies
//! in tiny pieces, refused connections.
//!
//! The relay runs on its own thread with a current-thread tokio runtime, so
//! it works the same from sync tests and from `#[tokio::test]`s, and keeps
//! running while a test blocks its own thread. Dropping it stops the thread
//! and closes every socket it holds.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::wait;

/// How long `set_mode` waits for the relay thread to apply a mode.
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the relay waits for its upstream to accept a connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest single read the relay forwards as one chunk.
const CHUNK: usize = 16 * 1024;

/// What the relay does with traffic. Modes apply to existing and new
/// connections alike unless noted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayMode {
    /// Forward everything as it arrives (the default).
    Pass,
    /// Forward upstream→client data this long after it arrived (each chunk
    /// is delayed by the duration; delays do not add up). Client→upstream
    /// data passes at once.
    Delay(Duration),
    /// Forward nothing in either direction (data, EOF) but keep every
    /// socket open and keep accepting. Held data flows again, intact, once
    /// the mode changes.
    Blackhole,
    /// Reset (SO_LINGER 0, close) both sides of every current connection,
    /// then behave as `Pass`. `set_mode` returns once the resets are done.
    ResetNow,
    /// On each connection, forward at most `n` more upstream→client bytes
    /// (counted from when the mode is set, or the connection opened); as soon
    /// as upstream sends a byte beyond that budget, forward what fits and
    /// close (FIN) both sides. `CutReplyAfter(0)` therefore lets a request
    /// reach the upstream and run, then drops the connection instead of
    /// delivering the reply.
    CutReplyAfter(usize),
    /// Forward in pieces of at most `n` bytes (both directions), each written
    /// and flushed separately on a TCP_NODELAY socket so the peer tends to
    /// read them separately.
    Slice(usize),
    /// Stop listening: the listening socket is closed, so new connection
    /// attempts fail with "connection refused" (ECONNREFUSED) exactly as if
    /// nothing ran on the port. Existing connections are left alone
    /// (`ResetNow` first to drop them too). Leaving this mode re-binds the
    /// same port; `set_mode` returns once the listener is closed / open again.
    Refuse,
    /// Reset every current connection (as `ResetNow`), then accept each new
    /// connection only to reset it at once, without connecting upstream: an
    /// upstream that is down, whose connection attempts (unlike refused
    /// ones) `connections_accepted` still counts.
    AcceptAndReset,
    /// Replace the next upstream→client chunk (on whichever connection
    /// carries one first) with these bytes, once per `set_mode`; everything
    /// else passes. For malformed-reply injection in front of a real Redis:
    /// the request reaches Redis and runs, its reply is swapped for garbage.
    /// (`&'static` keeps the mode `Copy`; `Box::leak` a built-up buffer.)
    InjectReply(&'static [u8]),
    /// Reset both sides of whichever connection next carries an
    /// upstream→client chunk, instead of forwarding that chunk; once per
    /// `set_mode`, everything else passes. In front of a real Redis: the
    /// request reaches Redis and runs, then its connection is lost before
    /// the reply gets through — one isolated reset right after a request.
    ResetInsteadOfReply,
}

/// The relay's switchable state, published through a `watch` channel so
/// that idle connections notice a change at once.
#[derive(Clone, Debug)]
struct Control {
    /// Never `ResetNow`: that is recorded as a bump of `reset_generation`.
    mode: RelayMode,
    /// Bumped on every `set_mode`, so a connection can tell a fresh
    /// `CutReplyAfter(n)` budget from the one it is already spending.
    mode_generation: u64,
    /// Connections opened under an older generation must reset themselves.
    reset_generation: u64,
}

/// Counters and registries shared with the relay thread.
#[derive(Default)]
struct Shared {
    accepted: AtomicU64,
    to_upstream: AtomicU64,
    /// Bytes read from the client side, forwarded or not (under `Blackhole`).
    from_client: AtomicU64,
    /// Whether the listening socket is open (false under `Refuse`).
    listening: AtomicBool,
    /// Mode generation whose one-shot mode (`InjectReply`,
    /// `ResetInsteadOfReply`) was already spent.
    spent: AtomicU64,
    /// Live connections: id → reset generation they were opened under.
    connections: Mutex<HashMap<u64, u64>>,
}

impl Shared {
    /// Spends the one-shot mode of `generation`: true for the first caller
    /// only.
    fn spend(&self, generation: u64) -> bool {
        self.spent.swap(generation, Ordering::SeqCst) != generation
    }

    fn connections(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A fault-injecting TCP relay on a free loopback port.
pub struct FaultRelay {
    addr: SocketAddr,
    upstream: SocketAddr,
    control: watch::Sender<Control>,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultRelay {
    /// Starts a relay to `upstream` in `Pass` mode; it accepts connections
    /// as soon as this returns.
    pub fn start(upstream: SocketAddr) -> FaultRelay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("binding the fault relay's listener: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("reading the fault relay's address: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("making the fault relay's listener non-blocking: {e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("building the fault relay's runtime: {e}"));

        let (control, control_rx) = watch::channel(Control {
            mode: RelayMode::Pass,
            mode_generation: 0,
            reset_generation: 0,
        });
        let shared = Arc::new(Shared::default());
        shared.listening.store(true, Ordering::SeqCst);
        let (shutdown, shutdown_rx) = oneshot::channel();

        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("fault-relay-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => {
                            eprintln!("fault relay {addr}: registering the listener: {e}");
                            return;
                        }
                    };
                    accept_loop(
                        listener,
                        addr,
                        upstream,
                        control_rx,
                        thread_shared,
                        shutdown_rx,
                    )
                    .await;
                });
            })
            .unwrap_or_else(|e| panic!("spawning the fault relay thread: {e}"));

        FaultRelay {
            addr,
            upstream,
            control,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the relay forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The current mode (`ResetNow` reads back as `Pass`).
    pub fn mode(&self) -> RelayMode {
        self.control.borrow().mode
    }

    /// Switches the relay's behaviour. Blocks until the relay thread has
    /// applied it where that is observable (resets done, listener closed or
    /// re-opened); other modes take effect on each connection's next chunk.
    pub fn set_mode(&self, mode: RelayMode) {
        let mut reset_target = None;
        self.control.send_modify(|control| {
            control.mode_generation += 1;
            if matches!(mode, RelayMode::ResetNow | RelayMode::AcceptAndReset) {
                control.reset_generation += 1;
                reset_target = Some(control.reset_generation);
            }
            control.mode = match mode {
                RelayMode::ResetNow => RelayMode::Pass,
                other => other,
            };
        });
        if let Some(target) = reset_target {
            wait::until(
                "the fault relay to reset its current connections",
                APPLY_TIMEOUT,
                || self.shared.connections().values().all(|&g| g >= target),
            );
        }
        let listening = mode != RelayMode::Refuse;
        wait::until(
            if listening {
                "the fault relay to listen again"
            } else {
                "the fault relay to close its listener"
            },
            APPLY_TIMEOUT,
            || self.shared.listening.load(Ordering::SeqCst) == listening,
        );
    }

    /// Connections accepted since the relay started.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes written to the upstream (client→upstream) since the relay
    /// started. Held (blackholed) bytes are not counted until sent.
    pub fn bytes_to_upstream(&self) -> u64 {
        self.shared.to_upstream.load(Ordering::SeqCst)
    }

    /// Bytes the relay has read from its clients (the proxy), including those
    /// it holds under `Blackhole`: what the proxy has written.
    pub fn bytes_from_client(&self) -> u64 {
        self.shared.from_client.load(Ordering::SeqCst)
    }

    /// Connections currently open (accepted and not yet fully closed).
    pub fn active_connections(&self) -> usize {
        self.shared.connections().len()
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // The thread may already be gone; nothing to tell it then.
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Never panic in Drop: we may already be unwinding.
            if thread.join().is_err() {
                eprintln!("fault relay {}: relay thread panicked", self.addr);
            }
        }
    }
}

/// Accepts connections (or refuses them by closing the listener) until
/// shut down.
async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut control: watch::Receiver<Control>,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut listener = Some(listener);
    let mut next_id = 0u64;
    loop {
        let refusing = control.borrow_and_update().mode == RelayMode::Refuse;
        if refusing && listener.is_some() {
            listener = None;
            shared.listening.store(false, Ordering::SeqCst);
        } else if !refusing && listener.is_none() {
            tokio::select! {
                _ = &mut shutdown => return,
                bound = rebind(addr) => listener = Some(bound),
            }
            shared.listening.store(true, Ordering::SeqCst);
        }

        let accept = async {
            match &listener {
                Some(listener) => listener.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            changed = control.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            accepted = accept => match accepted {
                Ok((client, _)) if control.borrow().mode == RelayMode::AcceptAndReset => {
                    shared.accepted.fetch_add(1, Ordering::SeqCst);
                    let _ = client.set_zero_linger();
                    drop(client);
                }
                Ok((client, _)) => {
                    next_id += 1;
                    let id = next_id;
                    shared.accepted.fetch_add(1, Ordering::SeqCst);
                    let reset_generation = control.borrow().reset_generation;
                    shared.connections().insert(id, reset_generation);
                    tokio::spawn(relay_connection(
                        id,
                        client,
                        upstream,
                        control.clone(),
                        Arc::clone(&shared),
                        reset_generation,
                    ));
                }
                Err(e) => {
                    // E.g. EMFILE: back off a little instead of spinning.
                    eprintln!("fault relay {addr}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// Binds `addr` again after `Refuse`, retrying while something else holds it.
async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut warned = false;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) => {
                if !warned {
                    eprintln!("fault relay: re-binding {addr} failed ({e}); retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// How a relayed connection came to an end.
#[derive(Debug)]
enum Ending {
    /// Both directions reached EOF and were shut down in turn.
    Finished,
    /// `CutReplyAfter` spent its budget: close both sides normally.
    Cut,
    /// `ResetNow`, `ResetInsteadOfReply`, or an I/O error on one side:
    /// reset both sides.
    Reset,
    /// The relay is shutting down.
    Shutdown,
}

/// Which way a direction of a connection carries data.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    ToUpstream,
    ToClient,
}

/// Relays one accepted connection until it ends, then deregisters it.
async fn relay_connection(
    id: u64,
    mut client: TcpStream,
    upstream_addr: SocketAddr,
    control: watch::Receiver<Control>,
    shared: Arc<Shared>,
    reset_generation: u64,
) {
    let ending =
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream_addr))
            .await
        {
            Ok(Ok(mut upstream)) => {
                // Small writes must leave at once (Slice, tiny replies).
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let ending = {
                    let (client_read, client_write) = client.split();
                    let (upstream_read, upstream_write) = upstream.split();
                    let to_upstream = forward(
                        client_read,
                        upstream_write,
                        Direction::ToUpstream,
                        control.clone(),
                        &shared,
                    );
                    let to_client = forward(
                        upstream_read,
                        client_write,
                        Direction::ToClient,
                        control.clone(),
                        &shared,
                    );
                    tokio::select! {
                        both = async { tokio::try_join!(to_upstream, to_client) } => match both {
                            Ok(_) => Ending::Finished,
                            Err(ending) => ending,
                        },
                        () = reset_requested(control, reset_generation) => Ending::Reset,
                    }
                };
                if matches!(ending, Ending::Reset) {
                    let _ = upstream.set_zero_linger();
                }
                drop(upstream);
                ending
            }
            // Upstream unreachable: the client sees a reset, as it would from a
            // dead server behind a load balancer.
            _ => Ending::Reset,
        };
    if matches!(ending, Ending::Reset) {
        let _ = client.set_zero_linger();
    }
    drop(client);
    // Deregister only once the sockets are closed: `set_mode(ResetNow)`
    // returns when every old connection is gone from the registry.
    shared.connections().remove(&id);
}

/// Resolves once a `ResetNow` newer than `generation` has been requested.
async fn reset_requested(mut control: watch::Receiver<Control>, generation: u64) {
    loop {
        if control.borrow_and_update().reset_generation != generation {
            return;
        }
        if control.changed().await.is_err() {
            // The relay is shutting down; the runtime will drop us.
            std::future::pending::<()>().await;
        }
    }
}

/// One direction of a connection: a reader that timestamps chunks as they
/// arrive, and a writer that applies the current mode to each chunk. The
/// queue between them lets `Delay` measure latency from arrival and lets
/// `Blackhole` hold data without stalling the reader.
async fn forward(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    direction: Direction,
    mut control: watch::Receiver<Control>,
    shared: &Shared,
) -> Result<(), Ending> {
    let (chunks_tx, mut chunks) = mpsc::unbounded_channel::<(Instant, Bytes)>();

    let reader = async move {
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            match from.read_buf(&mut buf).await {
                // EOF: dropping `chunks_tx` tells the writer to shut down
                // its side after the queued data.
                Ok(0) => return Ok(()),
                Ok(n) => {
                    if direction == Direction::ToUpstream {
                        shared.from_client.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    if chunks_tx.send((Instant::now(), buf.freeze())).is_err() {
                        return Ok(());
                    }
                }
                Err(_) => return Err(Ending::Reset),
            }
        }
    };

    let writer = async {
        // Remaining `CutReplyAfter` budget and the mode generation it
        // belongs to.
        let mut cut_budget: Option<(u64, usize)> = None;
        while let Some((arrived, mut data)) = chunks.recv().await {
            while !data.is_empty() {
                let now = control.borrow_and_update().clone();
                match now.mode {
                    RelayMode::Blackhole => {
                        if control.changed().await.is_err() {
                            return Err(Ending::Shutdown);
                        }
                    }
                    RelayMode::Delay(delay) if direction == Direction::ToClient => {
                        let due = arrived + delay;
                        if Instant::now() < due {
                            tokio::select! {
                                () = tokio::time::sleep_until(due) => {}
                                changed = control.changed() => {
                                    if changed.is_err() {
                                        return Err(Ending::Shutdown);
                                    }
                                    // Re-evaluate under the new mode.
                                    continue;
                                }
                            }
                        }
                        write(&mut to, &data, direction, shared).await?;
                        data.clear();
                    }
                    RelayMode::CutReplyAfter(n) if direction == Direction::ToClient => {
                        let remaining = match cut_budget {
                            Some((generation, left)) if generation == now.mode_generation => left,
                            _ => n,
                        };
                        let take = remaining.min(data.len());
                        write(&mut to, &data[..take], direction, shared).await?;
                        data.advance(take);
                        cut_budget = Some((now.mode_generation, remaining - take));
                        if !data.is_empty() {
                            return Err(Ending::Cut);
                        }
                    }
                    RelayMode::InjectReply(bytes) if direction == Direction::ToClient => {
                        let first = shared.spend(now.mode_generation);
                        write(
                            &mut to,
                            if first { bytes } else { &data },
                            direction,
                            shared,
                        )
                        .await?;
                        data.clear();
                    }
                    RelayMode::ResetInsteadOfReply if direction == Direction::ToClient => {
                        if shared.spend(now.mode_generation) {
                            return Err(Ending::Reset);
                        }
                        write(&mut to, &data, direction, shared).await?;
                        data.clear();
                    }
                    RelayMode::Slice(n) => {
                        let take = n.max(1).min(data.len());
                        write(&mut to, &data[..take], direction, shared).await?;
                        data.advance(take);
                        // Give the peer a chance to read this piece alone.
                        tokio::task::yield_now().await;
                    }
                    _ => {
                        write(&mut to, &data, direction, shared).await?;
                        data.clear();
                    }
                }
            }
        }
        // The other side sent EOF and everything before it went out:
        // pass the half-close on.
        to.shutdown().await.map_err(|_| Ending::Reset)
    };

    tokio::try_join!(reader, writer).map(|_| ())
}

/// Writes and flushes one piece, counting client→upstream bytes.
async fn write(
    to: &mut WriteHalf<'_>,
    data: &[u8],
    direction: Direction,
    shared: &Shared,
) -> Result<(), Ending> {
    let result: io::Result<()> = async {
        to.write_all(data).await?;
        to.flush().await
    }
    .await;
    result.map_err(|_| Ending::Reset)?;
    if direction == Direction::ToUpstream {
        shared
            .to_upstream
            .fetch_add(data.len() as u64, Ordering::SeqCst);
    }
    Ok(())
}
