//! The listener: accepts clients up to `--max-clients`, gives each a task and
//! a lane, and shuts down gracefully (stop accepting, let in-flight replies
//! drain up to a deadline, then close upstream connections).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::roster::Roster;
use crate::config::Config;
use crate::error::ConnectError;
use crate::net::Stream;
use crate::ops::health::Readiness;
use crate::pool::connection::configure_socket;
use crate::pool::{probe_upstream, PoolContext};
use crate::router::Router;
use crate::stats::{LoopStats, ProcessStats};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// `--require-upstream` was given and the upstream did not validate.
    #[error("upstream {addr} unavailable at start: {source}")]
    UpstreamUnavailable {
        /// The upstream address.
        addr: String,
        /// The last connect or validation error.
        source: ConnectError,
    },
}

/// What the event loops of one process share.
#[derive(Debug)]
pub(crate) struct Process {
    /// Every loop's counters, and the clients connected.
    pub stats: ProcessStats,
    /// Every client, for CLIENT LIST, KILL, UNBLOCK and PAUSE, and the reply
    /// memory they hold together.
    pub roster: Arc<Roster>,
    /// What takes respool out of rotation (`/readyz`) besides its upstream.
    pub readiness: Readiness,
    /// An event loop serves `--metrics-listen` already (one per process).
    metrics_claimed: AtomicBool,
}

impl Process {
    /// What the loops of a process running `config` share.
    pub fn new(config: &Config) -> Arc<Process> {
        Arc::new(Process {
            stats: ProcessStats::default(),
            roster: Roster::new(config.clients.max_reply_memory),
            readiness: Readiness::default(),
            metrics_claimed: AtomicBool::new(false),
        })
    }

    /// True for the first loop to ask: the one that serves the metrics.
    fn claim_metrics(&self) -> bool {
        !self.metrics_claimed.swap(true, Ordering::AcqRel)
    }
}

/// What every client task of one event loop shares.
pub(crate) struct Shared {
    pub config: Config,
    pub router: Router,
    /// This event loop's counters.
    pub stats: Arc<LoopStats>,
    /// What the process's event loops share.
    pub process: Arc<Process>,
}

/// A running proxy: one event loop's listener, clients and lanes.
pub struct Proxy {
    local_addr: SocketAddr,
    /// Where `/metrics` is served, by this loop.
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Binds the listener, starts the lanes and begins accepting clients.
    /// The upstream may be down: lanes keep reconnecting in the background,
    /// unless `--require-upstream` asks for a validated connection first.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let process = Process::new(&config);
        Proxy::start_loop(config, process, None).await
    }

    /// Starts one event loop of several ([`crate::EventLoops`]): they share
    /// the process's counters, and each binds `shared_addr` with
    /// SO_REUSEPORT (the first one `--listen`), so the kernel spreads new
    /// connections across them.
    pub(crate) async fn start_loop(
        config: Config,
        process: Arc<Process>,
        shared_addr: Option<SocketAddr>,
    ) -> Result<Proxy, StartError> {
        if config.require_upstream {
            let primary = crate::topology::sentinel::primary_now(&config)
                .await
                .map_err(|source| StartError::UpstreamUnavailable {
                    addr: config.upstream.node.addr().to_string(),
                    source,
                })?;
            probe_upstream(&primary, &config.pool, &config.retry)
                .await
                .map_err(|source| StartError::UpstreamUnavailable {
                    addr: primary.node.addr().to_string(),
                    source,
                })?;
        }
        let listen = shared_addr.unwrap_or(config.listener.listen);
        let bind_error = |source| StartError::Bind {
            addr: listen,
            source,
        };
        let listener = bind(listen, shared_addr.is_some()).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let metrics = match config.metrics_listen {
            Some(addr) if process.claim_metrics() => {
                let bind_error = |source| StartError::Bind { addr, source };
                let listener = crate::ops::http::bind(addr).await.map_err(bind_error)?;
                let bound = listener.local_addr().map_err(bind_error)?;
                Some((listener, bound))
            }
            _ => None,
        };
        if let Some(tls) = &config.upstream.node.tls {
            if tls.insecure {
                tracing::warn!(upstream = %config.upstream.node.addr(), "--upstream-tls-insecure: the upstream's TLS certificate is NOT verified; use this for tests only");
            }
        }
        let stats = process.stats.register();
        let ctx = Arc::new(PoolContext {
            pool: config.pool.clone(),
            retry: config.retry,
            client_identity: false,
            expects_primary: config.pool.validate == crate::config::Validate::Write
                || config.topology.sentinel.is_some(),
            refresh: Arc::new(tokio::sync::Notify::new()),
            stats: stats.clone(),
        });
        let router = Router::start(&config, ctx);
        let tls = config.listener.tls.is_some();
        let shared = Arc::new(Shared {
            config,
            router,
            stats,
            process,
        });
        let shutdown = CancellationToken::new();
        let metrics_addr = metrics.map(|(listener, bound)| {
            let process = shared.process.clone();
            tokio::spawn(crate::ops::http::serve(listener, process, shutdown.clone()));
            tracing::info!(listen = %bound, "serving /metrics, /healthz and /readyz");
            bound
        });
        let task = tokio::spawn(accept_loop(listener, shared, shutdown.clone()));
        tracing::info!(listen = %local_addr, tls, "respool accepting clients");
        Ok(Proxy {
            local_addr,
            metrics_addr,
            shutdown,
            task,
        })
    }

    /// The address clients connect to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served
    /// (`--metrics-listen`, with port 0 resolved), if this proxy serves them.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Shuts down gracefully and waits until it is done: stop accepting,
    /// let in-flight requests finish up to `--shutdown-timeout`, then close
    /// clients and upstream connections.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Binds the client listener. With `reuse_port` (one listener per thread,
/// `--threads` > 1) every thread binds the same address with SO_REUSEPORT and
/// the kernel spreads new connections across them.
fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let clients = TaskTracker::new();
    let abort = CancellationToken::new();
    let settings = &shared.config.listener;
    let refusing = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        configure_socket(&stream, settings.keepalive);
        let connected = &shared.process.stats.connected_clients;
        if connected.load(Ordering::Relaxed) >= settings.max_clients {
            tracing::debug!(%peer, "refusing client: --max-clients reached");
            shared.stats.rejected_clients.add(1);
            if settings.tls.is_none() {
                clients.spawn(refuse(Stream::Tcp(stream)));
            } else if refusing.load(Ordering::Relaxed) < MAX_TLS_REFUSALS {
                // A TLS client can only read the refusal after a handshake.
                refusing.fetch_add(1, Ordering::Relaxed);
                let guard = CountGuard(refusing.clone());
                let (shared, abort) = (shared.clone(), abort.clone());
                clients.spawn(async move {
                    let _guard = guard;
                    if let Some(stream) = handshake(stream, &shared.config, &abort).await {
                        refuse(stream).await;
                    }
                });
            }
            // Else the handshakes of refused clients are already using
            // their share: this one is closed without a word.
            continue;
        }
        connected.fetch_add(1, Ordering::Relaxed);
        let guard = ClientGuard(shared.clone());
        let (shared, shutdown, abort) = (shared.clone(), shutdown.clone(), abort.clone());
        clients.spawn(async move {
            let _guard = guard;
            let Some(stream) = handshake(stream, &shared.config, &abort).await else {
                return;
            };
            crate::client::serve(stream, shared, shutdown, abort).await;
        });
    }
    drop(listener);
    shared.process.readiness.set_draining(true);
    tracing::info!(
        clients = shared
            .process
            .stats
            .connected_clients
            .load(Ordering::Relaxed),
        "shutting down: no new clients; draining in-flight requests"
    );
    clients.close();
    let deadline = shared.config.listener.shutdown_timeout;
    if tokio::time::timeout(deadline, clients.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline passed; closing remaining clients");
        abort.cancel();
        clients.wait().await;
    }
    match Arc::into_inner(shared) {
        Some(shared) => shared.router.close(deadline).await,
        None => tracing::warn!("upstream connections still referenced at shutdown; dropping them"),
    }
    tracing::info!("respool stopped");
}

/// Wraps a client's socket: as is, or after a TLS handshake (with a
/// deadline, so a client that never finishes it does not hold its slot).
async fn handshake(tcp: TcpStream, config: &Config, abort: &CancellationToken) -> Option<Stream> {
    let Some(tls) = &config.listener.tls else {
        return Some(Stream::Tcp(tcp));
    };
    let peer = tcp.peer_addr().ok();
    let accept = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(tcp));
    let result = tokio::select! {
        _ = abort.cancelled() => return None,
        result = accept => result,
    };
    match result {
        Ok(Ok(stream)) => Some(Stream::from(stream)),
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "client TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(?peer, timeout = ?tls.handshake_timeout, "client TLS handshake timed out");
            None
        }
    }
}

/// Refused TLS clients whose handshakes may run at once. Beyond them a
/// refused client is closed without a word: handshakes cost CPU, and a
/// flood of connections at the limit must not buy more of it.
const MAX_TLS_REFUSALS: usize = 64;

/// Tells a client over the limit why it is turned away, as Redis does, and
/// closes its connection.
async fn refuse(mut stream: Stream) {
    // The line fits any socket buffer: this does not wait on the client.
    let _ = stream
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
    let _ = stream.shutdown().await;
}

/// Decrements a count when the task holding it ends, however it ends.
struct CountGuard(Arc<AtomicUsize>);

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client's place in `--max-clients`, given back when its task ends.
struct ClientGuard(Arc<Shared>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0
            .process
            .stats
            .connected_clients
            .fetch_sub(1, Ordering::Relaxed);
    }
}
