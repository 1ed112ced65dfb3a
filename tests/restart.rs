//! Zero-downtime restart, with the built binary, as an operator does it
//! (docs/operations.md, "Zero-downtime restart"): respool A serves a port
//! under load; respool B starts on the same port (SO_REUSEPORT); A gets
//! SIGTERM, stops accepting, answers what it has read, closes its clients
//! and exits; the clients reconnect and land on B.
//!
//! Clients resend a request only when its connection closed *before* the
//! reply came. That is safe exactly when respool never closes a connection
//! with a request it has read but not answered, which is what these tests
//! check: every acknowledged INCR is counted, and the counter on Redis
//! must equal the count — none lost, none applied twice — with no error
//! reply and no failed connect.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::client::{encode_command, ReadError};
use support::process::ProxyProcess;
use support::{wait, RedisServer, Reply, TestClient};

/// How long the old respool may take to drain and exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Flags both respools run with: two event loops each, like a production
/// box, and a drain deadline far beyond what an INCR needs.
const FLAGS: &[&str] = &["--threads", "2", "--shutdown-timeout", "30s"];

/// A loopback port kept for this test: bound with SO_REUSEPORT (never
/// listening), so the respools, which bind with it too, can share it, and
/// no other process can take it between the two starts.
fn reserve_addr() -> (socket2::Socket, SocketAddr) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    socket.bind(&any.into()).expect("bind");
    let addr = socket
        .local_addr()
        .expect("local address")
        .as_socket()
        .expect("an IP address");
    (socket, addr)
}

/// Where the load clients connect.
#[derive(Clone)]
enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Target {
    async fn connect(&self) -> std::io::Result<TestClient> {
        match self {
            Target::Tcp(addr) => TestClient::connect(*addr).await,
            Target::Unix(path) => TestClient::connect_unix(path).await,
        }
    }
}

/// What one load client did.
#[derive(Default)]
struct Tally {
    acked: AtomicU64,
    /// Connections that closed before a request's reply came.
    resent: AtomicU64,
    /// Error replies, timeouts and failed connects: all must stay empty.
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().expect("lock").push(what);
    }
}

/// How a load client sends.
#[derive(Clone, Copy)]
struct Mode {
    /// A new connection for each batch.
    churn: bool,
    /// INCRs sent in one write before reading their replies.
    depth: usize,
}

/// INCRs `key` until `stop`, `mode.depth` at a time, on a connection kept
/// open (or a new one per batch with `mode.churn`). The requests of a batch
/// whose connection closes before their replies came are resent on a new
/// connection: they did not run.
async fn incr_loop(
    target: Target,
    key: &'static str,
    mode: Mode,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut conn: Option<TestClient> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut owed = mode.depth;
        while owed > 0 {
            let client = match conn.as_mut() {
                Some(client) => client,
                None => match target.connect().await {
                    Ok(client) => conn.insert(client),
                    // Queued in the old respool's listener when it closed
                    // (the kernel resets those; see docs/operations.md,
                    // "Zero-downtime restart"): no request was sent.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        tally.resent.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(e) => {
                        tally.fail(format!("connect: {e}"));
                        return;
                    }
                },
            };
            let batch = encode_command(&["INCR", key]).repeat(owed);
            // A write into a connection the peer closed fails; what it
            // answered before closing is still there to read.
            let _ = client.send_raw(&batch).await;
            while owed > 0 {
                match client.read_reply().await {
                    Ok(Reply::Int(_)) => {
                        tally.acked.fetch_add(1, Ordering::Relaxed);
                        owed -= 1;
                    }
                    Ok(other) => {
                        tally.fail(format!("reply: {other}"));
                        return;
                    }
                    // Closed or reset before any of the next reply came:
                    // the rest did not run (respool answers what it has
                    // read); resend them.
                    Err(ReadError::Closed { buffered: 0 } | ReadError::Reset(_)) => {
                        tally.resent.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                        break;
                    }
                    Err(ReadError::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::BrokenPipe
                                | std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::ConnectionAborted
                        ) =>
                    {
                        tally.resent.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                        break;
                    }
                    // A timeout or a reply cut short: the request may have run.
                    Err(e) => {
                        tally.fail(format!("INCR: {e}"));
                        return;
                    }
                }
            }
        }
        if mode.churn {
            conn = None;
        }
    }
}

fn counter(redis: &RedisServer, key: &str) -> u64 {
    match redis.command(&[b"GET", key.as_bytes()]) {
        Reply::Nil => 0,
        Reply::Bulk(v) => String::from_utf8_lossy(&v).parse().expect("a number"),
        other => panic!("GET {key}: {other}"),
    }
}

/// Starts B on A's address, SIGTERMs A and waits for it to exit cleanly.
fn restart(a: ProxyProcess, addr: SocketAddr, url: &str, flags: &[String]) -> ProxyProcess {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let b = ProxyProcess::start_on(addr, url, &flags);
    a.terminate();
    let status = a.wait_exit(EXIT_TIMEOUT);
    assert!(
        status.success(),
        "the old respool exited with {status}: {}",
        a.log()
    );
    let log = a.log();
    assert!(log.contains("respool stopped"), "{log}");
    assert!(
        !log.contains("shutdown deadline passed"),
        "nothing was cut short: {log}"
    );
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_on_the_same_port_loses_and_doubles_no_request() {
    let (_reserved, addr) = reserve_addr();
    restart_under_load(addr, Target::Tcp(addr), &[]).await;
}

/// The same over a Unix socket: the new respool takes the path over
/// (`--unix-takeover`: bound under a temporary name, renamed over it), the
/// old one leaves the new file in place when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_on_the_same_unix_socket_loses_and_doubles_no_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("respool.sock");
    let listen = format!("unix:{}", path.display());
    let (_reserved, addr) = reserve_addr();
    restart_under_load(
        addr,
        Target::Unix(path.clone()),
        &["--listen", &listen, "--unix-takeover"],
    )
    .await;
    assert!(
        !path.exists(),
        "the new respool removed its socket when it stopped"
    );
}

/// Runs A on `addr` (and whatever `extra` adds), loads `target`, restarts
/// onto B, checks the count; then stops B gracefully.
async fn restart_under_load(addr: SocketAddr, target: Target, extra: &[&str]) {
    let redis = RedisServer::start();
    let url = redis.url();
    let flags: Vec<String> = FLAGS.iter().chain(extra).map(|f| f.to_string()).collect();
    let flags_ref: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = ProxyProcess::start_on(addr, &url, &flags_ref);

    let stop = Arc::new(AtomicBool::new(false));
    let mut tallies = Vec::new();
    let mut tasks = Vec::new();
    // Four clients on long-lived connections, two of them pipelining 16
    // requests at a time; two opening a connection per request.
    let one = |churn| Mode { churn, depth: 1 };
    let modes = [
        one(false),
        one(false),
        Mode {
            churn: false,
            depth: 16,
        },
        Mode {
            churn: false,
            depth: 16,
        },
        one(true),
        one(true),
    ];
    for mode in modes {
        let tally = Arc::new(Tally::default());
        tallies.push((mode.churn, tally.clone()));
        tasks.push(tokio::spawn(incr_loop(
            target.clone(),
            "restart:n",
            mode,
            stop.clone(),
            tally,
        )));
    }
    let acked = || {
        tallies
            .iter()
            .map(|(_, t)| t.acked.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let failures = || {
        tallies
            .iter()
            .flat_map(|(_, t)| t.failures.lock().expect("lock").clone())
            .collect::<Vec<_>>()
    };
    wait::until_async("load through the first respool", wait::DEADLINE, || {
        assert_eq!(failures(), Vec::<String>::new());
        tallies
            .iter()
            .all(|(_, t)| t.acked.load(Ordering::Relaxed) >= 50)
    })
    .await;

    let url_b = url.clone();
    let b = tokio::task::spawn_blocking(move || restart(a, addr, &url_b, &flags))
        .await
        .expect("restart");

    // Every client carries on, through the new respool.
    let after: Vec<u64> = tallies
        .iter()
        .map(|(_, t)| t.acked.load(Ordering::Relaxed))
        .collect();
    wait::until_async("load through the new respool", wait::DEADLINE, || {
        assert_eq!(failures(), Vec::<String>::new());
        tallies
            .iter()
            .zip(&after)
            .all(|((_, t), before)| t.acked.load(Ordering::Relaxed) >= before + 50)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("load task");
    }

    assert_eq!(failures(), Vec::<String>::new(), "no client saw a failure");
    for (churn, tally) in &tallies {
        if !churn {
            assert!(
                tally.resent.load(Ordering::Relaxed) >= 1,
                "a long-lived connection to the old respool was closed and reopened"
            );
        }
    }
    let total = acked();
    let resent: u64 = tallies
        .iter()
        .map(|(_, t)| t.resent.load(Ordering::Relaxed))
        .sum();
    eprintln!("{total} INCRs acknowledged, {resent} resent after a close");
    assert_eq!(
        counter(&redis, "restart:n"),
        total,
        "every acknowledged INCR ran exactly once ({} resent)",
        tallies
            .iter()
            .map(|(_, t)| t.resent.load(Ordering::Relaxed))
            .sum::<u64>()
    );
    b.terminate();
    assert!(b.wait_exit(EXIT_TIMEOUT).success(), "{}", b.log());
}

/// redis-py clients, configured to retry on connection errors, as a web app
/// does: `python3 - HOST PORT KEY STOPFILE` INCRs from four threads until
/// STOPFILE exists, then prints `acked failures`.
const PY_LOAD: &str = r#"
import os, sys, threading, traceback
import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError
from redis.retry import Retry

host, port, key, stopfile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
lock = threading.Lock()
acked = [0]
failures = []

def run():
    r = redis.Redis(host=host, port=port, socket_timeout=30, socket_connect_timeout=5,
                    retry=Retry(ExponentialBackoff(cap=0.05, base=0.001), 10),
                    retry_on_error=[ConnectionError])
    while not os.path.exists(stopfile):
        try:
            r.incr(key)
            with lock:
                acked[0] += 1
        except Exception as e:
            with lock:
                failures.append("%r %s\n%s" % (e, e, traceback.format_exc()))
            return

threads = [threading.Thread(target=run) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(acked[0], len(failures))
for f in failures: print(f)
"#;

#[test]
fn redis_py_clients_see_no_error_across_a_restart() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (_reserved, addr) = reserve_addr();
    let a = ProxyProcess::start_on(addr, &url, FLAGS);
    let dir = tempfile::tempdir().expect("temp dir");
    let stopfile = dir.path().join("stop");
    let mut python = spawn_python(addr, "restart:py", &stopfile.display().to_string());

    wait::until(
        "redis-py load through the first respool",
        wait::DEADLINE,
        || {
            assert_running(&mut python);
            counter(&redis, "restart:py") >= 200
        },
    );
    let flags: Vec<String> = FLAGS.iter().map(|f| f.to_string()).collect();
    let b = restart(a, addr, &url, &flags);
    let at_exit = counter(&redis, "restart:py");
    wait::until(
        "redis-py load through the new respool",
        wait::DEADLINE,
        || {
            assert_running(&mut python);
            counter(&redis, "restart:py") >= at_exit + 200
        },
    );
    std::fs::write(&stopfile, b"").expect("stop file");
    let out = python.wait_with_output().expect("python3 output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "redis-py load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut fields = stdout.split_whitespace();
    let acked: u64 = fields.next().and_then(|n| n.parse().ok()).expect(&stdout);
    let failed: u64 = fields.next().and_then(|n| n.parse().ok()).expect(&stdout);
    assert_eq!(failed, 0, "redis-py saw failures: {stdout}");
    eprintln!("redis-py: {acked} INCRs acknowledged");
    assert_eq!(
        counter(&redis, "restart:py"),
        acked,
        "none lost, none doubled"
    );
    drop(b);
}

fn spawn_python(addr: SocketAddr, key: &str, stopfile: &str) -> Child {
    let mut child = Command::new("python3")
        .args([
            "-",
            &addr.ip().to_string(),
            &addr.port().to_string(),
            key,
            stopfile,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with redis-py (python3 -m pip install redis)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(PY_LOAD.as_bytes())
        .expect("script");
    child
}

fn assert_running(python: &mut Child) {
    if let Ok(Some(status)) = python.try_wait() {
        let mut err = String::new();
        if let Some(mut stderr) = python.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
        }
        panic!("the redis-py load exited early with {status}: {err}");
    }
}
