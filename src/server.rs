//! The listeners (TCP, TLS, a Unix socket): accept clients up to
//! `--max-clients`, give each a task and a lane, and shut down gracefully
//! (stop accepting, let in-flight replies drain up to a deadline, then close
//! upstream connections).
//!
//! A TCP listener always sets SO_REUSEPORT: the event loops of one process
//! share the address that way, and so can a new respool started while the
//! old one still runs, which is how a restart loses no client (see
//! docs/operations.md, "Zero-downtime restart").

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::roster::Roster;
use crate::config::Config;
use crate::error::ConnectError;
use crate::live::Live;
use crate::net::Stream;
use crate::pool::connection::configure_socket;
use crate::pool::{probe_upstream, PoolContext};
use crate::reload::Reloader;
use crate::router::Router;
use crate::slowlog::Slowlog;
use crate::stats::{LoopStats, ProcessStats};
use crate::unix_socket::UnixBinding;

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
    /// The Unix socket could not be bound (the message says why and what
    /// to do).
    #[error("{0}")]
    UnixSocket(String),
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
    /// The settings a reload can change.
    pub live: Arc<Live>,
    /// Re-reads the configuration (SIGHUP, an admin command); set by the
    /// binary, absent when embedded without a configuration source.
    pub reloader: std::sync::OnceLock<Arc<Reloader>>,
    /// Runs slower than `--slowlog-threshold` (`RESPOOL SLOWLOG`).
    pub slowlog: Arc<Slowlog>,
    /// `RESPOOL DRAIN` or a shutdown began: no new clients, each client
    /// closed once answered. See [`Process::paused_or_draining`].
    pub draining: CancellationToken,
    /// Every event loop's shared state, for `RESPOOL POOLS`.
    loops: std::sync::Mutex<Vec<std::sync::Weak<Shared>>>,
    /// An event loop serves `--metrics-listen` already (one per process).
    metrics_claimed: AtomicBool,
}

impl Process {
    /// What the loops of a process running `config` share.
    pub fn new(config: &Config) -> Arc<Process> {
        let roster = Roster::new(config.clients.max_reply_memory);
        Arc::new(Process {
            stats: ProcessStats::default(),
            slowlog: Arc::new(Slowlog::new(&config.admin, Arc::downgrade(&roster))),
            roster,
            live: Arc::new(Live::new(config)),
            reloader: std::sync::OnceLock::new(),
            draining: CancellationToken::new(),
            loops: std::sync::Mutex::default(),
            metrics_claimed: AtomicBool::new(false),
        })
    }

    /// True for the first loop to ask: the one that serves the metrics.
    fn claim_metrics(&self) -> bool {
        !self.metrics_claimed.swap(true, Ordering::AcqRel)
    }

    /// The event loops still running.
    pub fn loops(&self) -> Vec<Arc<Shared>> {
        let loops = self
            .loops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loops.iter().filter_map(std::sync::Weak::upgrade).collect()
    }

    /// Re-reads the configuration and applies it (SIGHUP's work, for
    /// `RESPOOL RELOAD`): the changes, each logged, or why nothing
    /// changed. It reads files (the config file, users file, certificates:
    /// small, local), so it blocks this event loop for that long.
    pub fn reload(&self) -> Result<Vec<crate::reload::Change>, crate::reload::ReloadError> {
        match self.reloader.get() {
            Some(reloader) => reloader.reload(),
            None => Err(crate::reload::ReloadError::NotAttached),
        }
    }

    /// `RESPOOL RELOAD`'s answer: one line per change, or why nothing
    /// changed.
    pub fn reload_config(&self) -> Result<String, String> {
        match self.reload() {
            Ok(changes) if changes.is_empty() => Ok("nothing changed".into()),
            Ok(changes) => Ok(changes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")),
            Err(e) => Err(format!("reload refused, nothing changed: {e}")),
        }
    }

    /// Whether the process should be taken out of a load balancer's
    /// rotation (what a `/readyz` endpoint reads): an admin `RESPOOL PAUSE`
    /// (or a client's `CLIENT PAUSE`) holds requests, or `RESPOOL DRAIN`
    /// has begun.
    pub fn paused_or_draining(&self) -> bool {
        self.draining.is_cancelled() || self.roster.is_paused()
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

/// A running proxy: one event loop's listeners, clients and lanes.
pub struct Proxy {
    local_addr: Option<SocketAddr>,
    unix_path: Option<Arc<str>>,
    process: Arc<Process>,
    /// Where `/metrics` is served, by this loop.
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    /// Stops `/metrics`, `/healthz` and `/readyz` once the proxy has
    /// stopped: during a drain (SIGTERM, `RESPOOL DRAIN`) they keep
    /// answering, so a load balancer sees `/readyz` turn 503.
    metrics_stop: CancellationToken,
}

impl Proxy {
    /// Binds the listener, starts the lanes and begins accepting clients.
    /// The upstream may be down: lanes keep reconnecting in the background,
    /// unless `--require-upstream` asks for a validated connection first.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let process = Process::new(&config);
        let unix = bind_unix(&config)?;
        Proxy::start_loop(config, process, None, unix).await
    }

    /// Starts one event loop of several ([`crate::EventLoops`]): they share
    /// the process's counters, each binds `shared_addr` with SO_REUSEPORT
    /// (the first one the `--listen` address), so the kernel spreads new
    /// connections across them, and all accept on the one Unix socket.
    pub(crate) async fn start_loop(
        config: Config,
        process: Arc<Process>,
        shared_addr: Option<SocketAddr>,
        unix: Option<Arc<UnixBinding>>,
    ) -> Result<Proxy, StartError> {
        // In cluster mode the first slot map is the proof (below).
        if config.require_upstream && config.cluster.is_none() {
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
        let mut listeners = Vec::with_capacity(2);
        let mut local_addr = None;
        if let Some(listen) = shared_addr.or(config.listener.tcp) {
            let bind_error = |source| StartError::Bind {
                addr: listen,
                source,
            };
            let listener = bind(listen).map_err(bind_error)?;
            local_addr = Some(listener.local_addr().map_err(bind_error)?);
            listeners.push(Listener::Tcp(listener));
        }
        if let Some(binding) = &unix {
            let listener = binding.listener().map_err(|e| {
                StartError::UnixSocket(format!("cannot listen on unix:{}: {e}", binding.path()))
            })?;
            listeners.push(Listener::Unix(listener, binding.path().clone()));
        }
        let unix_path = unix.as_ref().map(|b| b.path().clone());
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
        let cluster = config.cluster.as_ref().map(|_| {
            let link: Arc<crate::topology::cluster::ClusterLink> = Arc::default();
            let _ = stats.cluster.set(link.clone());
            link
        });
        let ctx = Arc::new(PoolContext {
            pool: config.pool.clone(),
            retry: process.live.retry.clone(),
            client_identity: false,
            expects_primary: config.pool.validate == crate::config::Validate::Write
                || config.topology.sentinel.is_some(),
            refresh: Arc::new(tokio::sync::Notify::new()),
            stats: stats.clone(),
            cluster,
            pinned_limit: process.live.register_pinned(config.pool.max_pinned),
            slowlog: process
                .slowlog
                .threshold()
                .is_some()
                .then(|| process.slowlog.clone()),
        });
        let router = Router::start(&config, ctx, &process.live);
        if let Some(map) = router.cluster() {
            // Clients that come before the first slot map could only be
            // told to retry: wait for it (within --hold-timeout).
            if !map.wait_known(config.retry.hold_timeout).await {
                let why = map.why_unknown();
                if config.require_upstream {
                    return Err(StartError::UpstreamUnavailable {
                        addr: config.upstream.node.addr().to_string(),
                        source: crate::error::ConnectError::Io(why),
                    });
                }
                tracing::warn!(reason = %why, "serving without a cluster slot map yet; requests get -CLUSTERDOWN until one is known");
            }
        }
        let tls = config.listener.tls.is_some();
        let shared = Arc::new(Shared {
            config,
            router,
            stats,
            process: process.clone(),
        });
        tokio::spawn(crate::client::roster::keep_time(Arc::downgrade(
            &shared.process.roster,
        )));
        shared
            .process
            .loops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::downgrade(&shared));
        let shutdown = CancellationToken::new();
        let metrics_stop = CancellationToken::new();
        let metrics_addr = metrics.map(|(listener, bound)| {
            let process = shared.process.clone();
            tokio::spawn(crate::ops::http::serve(
                listener,
                process,
                metrics_stop.clone(),
            ));
            tracing::info!(listen = %bound, "serving /metrics, /healthz and /readyz");
            bound
        });
        let task = tokio::spawn(serve(listeners, unix, shared, shutdown.clone()));
        match (&local_addr, &unix_path) {
            (Some(tcp), Some(path)) => {
                tracing::info!(listen = %tcp, unix = %path, tls, "respool accepting clients")
            }
            (Some(tcp), None) => tracing::info!(listen = %tcp, tls, "respool accepting clients"),
            (None, Some(path)) => tracing::info!(unix = %path, "respool accepting clients"),
            // Configuration asks for at least one listener.
            (None, None) => tracing::warn!("respool has no listener"),
        }
        Ok(Proxy {
            local_addr,
            process,
            unix_path,
            metrics_addr,
            shutdown,
            task,
            metrics_stop,
        })
    }

    /// The TCP address clients connect to (useful with port 0); `0.0.0.0:0`
    /// when respool listens on a Unix socket only.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The TCP address clients connect to, if respool listens on one.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The Unix socket clients connect to, if respool listens on one.
    pub fn unix_path(&self) -> Option<&str> {
        self.unix_path.as_deref()
    }

    /// Makes the configuration reloadable: `reloader` re-reads it on
    /// [`Reloader::reload`] and applies it to this proxy. The same reloader
    /// is what an admin command finds; the first one set stays.
    pub fn enable_reload(&self, reloader: Reloader) -> Arc<Reloader> {
        enable_reload(&self.process, reloader)
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
        self.metrics_stop.cancel();
    }
}

/// Attaches `reloader` to `process` (see [`Proxy::enable_reload`]).
pub(crate) fn enable_reload(process: &Arc<Process>, reloader: Reloader) -> Arc<Reloader> {
    process
        .reloader
        .get_or_init(|| Arc::new(reloader.attach(process.live.clone())))
        .clone()
}

/// The Unix socket `--listen unix:PATH` asks for, bound once per process.
pub(crate) fn bind_unix(config: &Config) -> Result<Option<Arc<UnixBinding>>, StartError> {
    config
        .listener
        .unix
        .as_ref()
        .map(|settings| {
            UnixBinding::bind(settings).map_err(|e| StartError::UnixSocket(e.to_string()))
        })
        .transpose()
}

/// Binds the client listener with SO_REUSEPORT: every event loop of the
/// process binds the same address and the kernel spreads new connections
/// across them; a new respool can bind it before the old one stops.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// A socket clients connect to.
enum Listener {
    Tcp(TcpListener),
    /// A Unix socket, and its path (`CLIENT LIST` shows it as the address).
    Unix(UnixListener, Arc<str>),
}

/// A connection just accepted, before any TLS handshake.
enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream, Arc<str>),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, peer)| Accepted::Tcp(s, peer)),
            Listener::Unix(l, path) => l
                .accept()
                .await
                .map(|(s, _)| Accepted::Unix(s, path.clone())),
        }
    }
}

/// Runs the listeners until shutdown, then drains the clients and closes the
/// upstream connections. The Unix socket file is removed as soon as nothing
/// accepts on it any more.
async fn serve(
    listeners: Vec<Listener>,
    unix: Option<Arc<UnixBinding>>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let clients = TaskTracker::new();
    let abort = CancellationToken::new();
    let refusing = Arc::new(AtomicUsize::new(0));
    let accepting = listeners
        .into_iter()
        .map(|listener| accept_loop(listener, &shared, &clients, &abort, &refusing, &shutdown));
    futures_util::future::join_all(accepting).await;
    drop(unix);
    drain(clients, abort, shared).await;
}

/// Accepts clients on one listener until shutdown.
async fn accept_loop(
    listener: Listener,
    shared: &Arc<Shared>,
    clients: &TaskTracker,
    abort: &CancellationToken,
    refusing: &Arc<AtomicUsize>,
    shutdown: &CancellationToken,
) {
    let settings = &shared.config.listener;
    let draining = shared.process.draining.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = draining.cancelled() => {
                // RESPOOL DRAIN: what a shutdown does, short of exiting.
                tracing::info!("RESPOOL DRAIN: no new clients; closing clients once their requests are answered");
                shutdown.cancel();
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Accepted::Tcp(stream, _) = &accepted {
            configure_socket(stream, settings.keepalive);
        }
        let connected = &shared.process.stats.connected_clients;
        let max_clients = shared.process.live.max_clients.load(Ordering::Relaxed);
        if connected.load(Ordering::Relaxed) >= max_clients {
            let peer = match &accepted {
                Accepted::Tcp(_, peer) => Some(*peer),
                Accepted::Unix(..) => None,
            };
            tracing::debug!(?peer, "refusing client: --max-clients reached");
            shared.stats.rejected_clients.add(1);
            let accepted = match accepted {
                Accepted::Unix(stream, path) => Err(Stream::Unix(stream, path)),
                Accepted::Tcp(stream, _) if settings.tls.is_none() => Err(Stream::Tcp(stream)),
                tls => Ok(tls),
            };
            match accepted {
                Err(plain) => {
                    clients.spawn(refuse(plain));
                }
                Ok(accepted) if refusing.load(Ordering::Relaxed) < MAX_TLS_REFUSALS => {
                    // A TLS client can only read the refusal after a handshake.
                    refusing.fetch_add(1, Ordering::Relaxed);
                    let guard = CountGuard(refusing.clone());
                    let (shared, abort) = (shared.clone(), abort.clone());
                    clients.spawn(async move {
                        let _guard = guard;
                        if let Some(stream) = handshake(accepted, &shared, &abort).await {
                            refuse(stream).await;
                        }
                    });
                }
                // The handshakes of refused clients are already using their
                // share: this one is closed without a word.
                Ok(_) => {}
            }
            continue;
        }
        connected.fetch_add(1, Ordering::Relaxed);
        let guard = ClientGuard(shared.clone());
        let (shared, shutdown, abort) = (shared.clone(), shutdown.clone(), abort.clone());
        clients.spawn(async move {
            let _guard = guard;
            let Some(stream) = handshake(accepted, &shared, &abort).await else {
                return;
            };
            crate::client::serve(stream, shared, shutdown, abort).await;
        });
    }
}

/// After the listeners stopped: lets the clients finish what is in flight
/// (idle ones close at once) up to `--shutdown-timeout`, closes the rest,
/// then the upstream connections.
async fn drain(clients: TaskTracker, abort: CancellationToken, shared: Arc<Shared>) {
    // Not ready for new clients from here on, however the loop ended.
    shared.process.draining.cancel();
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
/// A Unix socket is never TLS (configuration refuses the combination).
/// The TLS configuration is the current one (a reload may have rotated the
/// certificate): read once per handshake.
async fn handshake(
    accepted: Accepted,
    shared: &Shared,
    abort: &CancellationToken,
) -> Option<Stream> {
    let tcp = match accepted {
        Accepted::Unix(stream, path) => return Some(Stream::Unix(stream, path)),
        Accepted::Tcp(tcp, _) => tcp,
    };
    let Some(tls) = shared.process.live.listener_tls.load_full() else {
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
