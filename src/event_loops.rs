//! `--threads N`: N independent event loops, each a single-threaded runtime
//! on a thread of its own, with its own listener on the shared address
//! (SO_REUSEPORT: the kernel spreads connections), its own lanes and pools.
//! A Unix socket is bound once, and every loop accepts on it.
//! Nothing is shared on the request path, so no wake-up ever crosses threads.
//! The binary runs them this way, and so does `respool bench --sweep`.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio_util::sync::CancellationToken;

use crate::server::{bind_unix, Process};
use crate::unix_socket::UnixBinding;
use crate::{Config, Proxy};

/// Running event loops; [`EventLoops::stop`] shuts them down.
pub struct EventLoops {
    addr: Option<SocketAddr>,
    process: Arc<Process>,
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

/// What a loop reports once it listens: its address, or why it could not.
type Started = Result<Option<SocketAddr>, String>;

impl EventLoops {
    /// Starts `count` loops, each with its share of the pool sizes
    /// (`--max-connections`, `--min-idle` and `--max-pinned` are totals for
    /// the process), and returns once every one accepts clients; it blocks
    /// the calling thread meanwhile. If one cannot start, those already
    /// started are stopped again.
    pub fn start(config: Config, count: usize) -> Result<EventLoops, String> {
        let count = count.max(1);
        let process = Process::new(&config);
        let unix = bind_unix(&config).map_err(|e| e.to_string())?;
        let (started_tx, started_rx) = mpsc::channel::<Started>();
        let mut loops = EventLoops {
            addr: config.listen_addr(),
            process: process.clone(),
            stop: CancellationToken::new(),
            threads: Vec::with_capacity(count),
        };
        for index in 0..count {
            let share = config.loop_share(index, count);
            let spawned = spawn_loop(
                index,
                share,
                process.clone(),
                loops.addr,
                unix.clone(),
                loops.stop.clone(),
                started_tx.clone(),
            );
            match spawned {
                Ok(handle) => loops.threads.push(handle),
                Err(e) => {
                    loops.stop();
                    return Err(format!("cannot start thread {index}: {e}"));
                }
            }
            if index == 0 {
                // The other loops bind the address the first one got (port 0
                // becomes a real port), so that all share one address.
                match started_rx.recv() {
                    Ok(Ok(addr)) => loops.addr = addr,
                    Ok(Err(e)) => {
                        loops.stop();
                        return Err(e);
                    }
                    Err(_) => {
                        loops.stop();
                        return Err("the first event loop ended during start-up".into());
                    }
                }
            }
        }
        drop(started_tx);
        for _ in 1..count {
            let failed = match started_rx.recv() {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => e,
                Err(_) => "an event loop ended during start-up".into(),
            };
            loops.stop();
            return Err(failed);
        }
        Ok(loops)
    }

    /// Makes the configuration reloadable for every loop (see
    /// [`Proxy::enable_reload`]).
    pub fn enable_reload(&self, reloader: crate::reload::Reloader) -> Arc<crate::reload::Reloader> {
        crate::server::enable_reload(&self.process, reloader)
    }

    /// The TCP address the loops share; `0.0.0.0:0` when they listen on a
    /// Unix socket only.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Shuts every loop down gracefully (each as [`Proxy::shutdown`] does)
    /// and waits for their threads; it blocks the calling thread.
    pub fn stop(self) {
        self.stop.cancel();
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The runtime of one event loop: single-threaded, with I/O and timers. The
/// binary also waits for signals and runs `respool bench` on one.
pub fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// One event loop on a thread of its own: a proxy that runs until `stop`.
fn spawn_loop(
    index: usize,
    config: Config,
    process: Arc<Process>,
    addr: Option<SocketAddr>,
    unix: Option<Arc<UnixBinding>>,
    stop: CancellationToken,
    started: mpsc::Sender<Started>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("respool-{index}"))
        .spawn(move || {
            let runtime = match current_thread_runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started.send(Err(format!("cannot start the async runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let proxy = match Proxy::start_loop(config, process, addr, unix).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = started.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = started.send(Ok(proxy.tcp_addr()));
                stop.cancelled().await;
                proxy.shutdown().await;
            });
        })
}
