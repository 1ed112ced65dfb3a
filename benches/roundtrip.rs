//! End-to-end round trips through an in-process respool to a real
//! redis-server, next to the same round trips sent to Redis directly, so the
//! report shows what the proxy adds.
//!
//! * `set_get` — one client sends `SET`, waits for `+OK`, sends `GET`, waits
//!   for the value: two round trips per iteration.
//! * `pipeline_100_get` — one client writes 100 `GET`s at once and reads the
//!   100 replies (ops/s).
//!
//! The bench starts its own `redis-server` (`$REDIS_SERVER_BIN`, else the one
//! on `PATH`) on a free loopback port with a temporary directory and no
//! persistence, and kills it at the end. Without `redis-server` it prints why
//! and measures nothing.
//!
//! Run: `cargo bench --bench roundtrip`.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const KEY: &str = "respool-bench:roundtrip";
const VALUE: &str = "abc";

/// A redis-server child process in its own temporary directory; killed and
/// reaped on drop.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start(bin: &Path) -> io::Result<RedisServer> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let child = Command::new(bin)
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn wait_ready(&self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut client) = RawClient::connect(self.addr()) {
                if client.call(&command(&["PING"]), b"+PONG\r\n").is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("redis-server did not answer PING on port {}", self.port),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$REDIS_SERVER_BIN`, else the first `redis-server` on `PATH`.
fn redis_server_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("REDIS_SERVER_BIN") {
        return Some(PathBuf::from(bin));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Encodes a command as a RESP array of bulk strings.
fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// A blocking raw-RESP client, like redis-benchmark: writes bytes, reads
/// exactly the expected reply bytes and checks them.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    fn connect(addr: SocketAddr) -> io::Result<RawClient> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(RawClient {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends `request` and reads a reply that must equal `expected`.
    fn call(&mut self, request: &[u8], expected: &[u8]) -> io::Result<()> {
        self.stream.write_all(request)?;
        self.buf.resize(expected.len(), 0);
        self.stream.read_exact(&mut self.buf)?;
        if self.buf != expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "expected {:?}, got {:?}",
                    String::from_utf8_lossy(expected),
                    String::from_utf8_lossy(&self.buf)
                ),
            ));
        }
        Ok(())
    }
}

/// The exchanges measured, built once.
struct Exchanges {
    set: Vec<u8>,
    get: Vec<u8>,
    get_reply: Vec<u8>,
    pipeline: Vec<u8>,
    pipeline_reply: Vec<u8>,
}

impl Exchanges {
    const PIPELINE: usize = 100;

    fn new() -> Exchanges {
        let get = command(&["GET", KEY]);
        let get_reply = format!("${}\r\n{VALUE}\r\n", VALUE.len()).into_bytes();
        Exchanges {
            set: command(&["SET", KEY, VALUE]),
            pipeline: get.repeat(Self::PIPELINE),
            pipeline_reply: get_reply.repeat(Self::PIPELINE),
            get,
            get_reply,
        }
    }

    fn set_get(&self, client: &mut RawClient) {
        client.call(&self.set, b"+OK\r\n").expect("SET");
        client.call(&self.get, &self.get_reply).expect("GET");
    }

    fn pipeline(&self, client: &mut RawClient) {
        client
            .call(&self.pipeline, &self.pipeline_reply)
            .expect("pipelined GETs");
    }
}

fn roundtrip(c: &mut Criterion) {
    let Some(bin) = redis_server_bin() else {
        eprintln!(
            "roundtrip bench skipped: redis-server not found on PATH \
             (set REDIS_SERVER_BIN or run: apt-get install -y redis-server)"
        );
        return;
    };
    let redis = match RedisServer::start(&bin) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "roundtrip bench skipped: cannot start {}: {e}",
                bin.display()
            );
            return;
        }
    };

    // The proxy runs on its own runtime threads; the client is a plain
    // blocking socket on the bench thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let url = format!("redis://{}", redis.addr());
    let config = respool::Config::parse_from_args([
        "respool",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &url,
    ])
    .expect("respool flags");
    let proxy = runtime
        .block_on(respool::Proxy::start(config))
        .expect("respool starts");

    let ex = Exchanges::new();
    let mut direct = RawClient::connect(redis.addr()).expect("connect to redis-server");
    let mut via_proxy = RawClient::connect(proxy.local_addr()).expect("connect to respool");
    // The first request also waits for the proxy's first validated upstream
    // connection; it must not be measured.
    ex.set_get(&mut direct);
    ex.set_get(&mut via_proxy);

    let mut group = c.benchmark_group("set_get");
    group.bench_function("direct", |b| b.iter(|| ex.set_get(&mut direct)));
    group.bench_function("respool", |b| b.iter(|| ex.set_get(&mut via_proxy)));
    group.finish();

    let mut group = c.benchmark_group("pipeline_100_get");
    group.throughput(Throughput::Elements(Exchanges::PIPELINE as u64));
    group.bench_function("direct", |b| b.iter(|| ex.pipeline(&mut direct)));
    group.bench_function("respool", |b| b.iter(|| ex.pipeline(&mut via_proxy)));
    group.finish();

    // Close the clients first so that shutdown has nothing to drain.
    drop((direct, via_proxy));
    runtime.block_on(proxy.shutdown());
    drop(redis);
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
