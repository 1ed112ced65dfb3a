//! `TestProxy`: a respool proxy started in-process for one test.
//!
//! The proxy runs on its own thread with its own multi-threaded tokio
//! runtime, so it keeps serving while the test blocks its own thread (killing
//! or restarting a `RedisServer`, `FaultRelay::set_mode`, `wait::until`), and
//! it behaves as it would in production, independent of the test's runtime
//! flavour. Dropping a `TestProxy` stops it abruptly (runtime dropped, every
//! socket closed); `shutdown().await` stops it gracefully instead.
//!
//! Set `RESPOOL_TEST_LOG=debug` (any tracing filter) to see the proxy's logs
//! in a failing test's output.

use std::net::SocketAddr;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::sync::oneshot;

use super::client::TestClient;

/// How long `shutdown()` waits for a graceful shutdown before panicking.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the test tells the proxy thread.
enum Stop {
    /// `Proxy::shutdown` (drain in-flight requests), then report back.
    Graceful(oneshot::Sender<()>),
}

/// A running proxy.
pub struct TestProxy {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<Stop>>,
    thread: Option<JoinHandle<()>>,
}

impl TestProxy {
    /// A proxy with one lane, no spare connection and no health checks
    /// behind `relay`, with `extra` flags appended: once its lane is up,
    /// every byte the relay carries to Redis is a client request, and the
    /// relay's next upstream→client chunk is the reply to the next one.
    pub async fn behind_relay(relay: &super::relay::FaultRelay, extra: &[&str]) -> TestProxy {
        let mut flags = vec![
            "--max-connections",
            "1",
            "--min-idle",
            "0",
            "--health-check-interval",
            "0s",
        ];
        flags.extend_from_slice(extra);
        Self::start(&format!("redis://{}", relay.addr()), &flags).await
    }

    /// Starts a proxy on `127.0.0.1:0` in front of `upstream_url`, with
    /// `extra` flags appended (`&["--max-connections", "2"]`). Panics if the
    /// flags are invalid or the proxy does not start.
    pub async fn start(upstream_url: &str, extra: &[&str]) -> TestProxy {
        Self::try_start(upstream_url, extra)
            .await
            .unwrap_or_else(|e| panic!("starting the proxy in front of {upstream_url}: {e}"))
    }

    /// Like `start`, but returns `Proxy::start`'s error (rendered) instead of
    /// panicking, for tests of start-up failures.
    pub async fn try_start(upstream_url: &str, extra: &[&str]) -> Result<TestProxy, String> {
        init_logging();
        let mut args = vec![
            "respool".to_string(),
            "--listen".to_string(),
            "127.0.0.1:0".to_string(),
            "--upstream".to_string(),
            upstream_url.to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let config = respool::Config::parse_from_args(&args)
            .unwrap_or_else(|e| panic!("invalid proxy flags {args:?}: {e}"));

        let (started_tx, started_rx) = oneshot::channel::<Result<SocketAddr, String>>();
        let (stop_tx, stop_rx) = oneshot::channel::<Stop>();
        let thread = thread::Builder::new()
            .name("respool-under-test".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started_tx.send(Err(format!("building the proxy runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let proxy = match respool::Proxy::start(config).await {
                        Ok(proxy) => proxy,
                        Err(e) => {
                            let _ = started_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    if started_tx.send(Ok(proxy.local_addr())).is_err() {
                        return;
                    }
                    // A dropped sender (the TestProxy was dropped) means
                    // "stop now": leaving block_on drops the runtime, which
                    // cancels every task and closes every socket.
                    if let Ok(Stop::Graceful(done)) = stop_rx.await {
                        proxy.shutdown().await;
                        let _ = done.send(());
                    }
                });
            })
            .unwrap_or_else(|e| panic!("spawning the proxy thread: {e}"));

        let started = started_rx
            .await
            .unwrap_or_else(|_| Err("the proxy thread exited without reporting".to_string()));
        match started {
            Ok(addr) => Ok(TestProxy {
                addr,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Err(e) => {
                let _ = thread.join();
                Err(e)
            }
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new raw RESP client connected to the proxy.
    pub async fn client(&self) -> TestClient {
        TestClient::connect(self.addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to the proxy: {e}"))
    }

    /// Shuts the proxy down gracefully (`Proxy::shutdown`) and waits until it
    /// has stopped.
    pub async fn shutdown(mut self) {
        let (done_tx, done_rx) = oneshot::channel();
        if let Some(stop) = self.stop.take() {
            if stop.send(Stop::Graceful(done_tx)).is_err() {
                panic!("the proxy thread is gone before shutdown()");
            }
        }
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, done_rx).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("the proxy thread exited during a graceful shutdown"),
            Err(_) => panic!("graceful shutdown took longer than {SHUTDOWN_TIMEOUT:?}"),
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        // Dropping the sender makes the proxy thread leave block_on and drop
        // its runtime. Never panic here: we may be unwinding already.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("the proxy thread panicked");
            }
        }
    }
}

/// Installs a log subscriber once per test binary when `RESPOOL_TEST_LOG`
/// is set; the test harness captures its output per test.
fn init_logging() {
    if let Ok(filter) = std::env::var("RESPOOL_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
