//! `RedisServer`: a real `redis-server` child process owned by one test.
//!
//! Every server listens on a free loopback port with its own temporary
//! directory, and is killed (and reaped) when dropped, also when the test
//! panics. Nothing here ever talks to a Redis the harness did not start.
//!
//! All methods are blocking and take `&self`, so a server can be shared
//! (e.g. in an `Arc`) and killed from anywhere in a test. Starting and
//! waiting block the calling thread: from a current-thread `#[tokio::test]`
//! that also pauses anything else on that runtime (such as a proxy under
//! test) for the duration of the call.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::client::{encode_command, parse_reply, Reply, TestClient};

/// How long a starting server may take to answer PING.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a slow dataset load may take before `wait_loaded` gives up.
pub const LOADED_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a server may take to exit after SIGTERM before it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between two readiness probes. Polling granularity, not a sync point.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Read timeout of one blocking probe; generous for SAVE / DEBUG POPULATE.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// The shared Redis on this machine: never ours, never touched.
const FORBIDDEN_PORT: u16 = 6379;
/// Attempts at finding a free port when another process grabs ours first.
const PORT_ATTEMPTS: usize = 5;

/// Finds `redis-server`: `$REDIS_SERVER_BIN`, else the first one on `PATH`.
pub fn redis_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("REDIS_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("redis-server"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "redis-server not found on PATH (set REDIS_SERVER_BIN or run: apt-get install -y redis-server)"
            )
        })
}

/// Options for a server, set before it starts.
#[derive(Clone, Debug, Default)]
pub struct RedisServerBuilder {
    password: Option<String>,
    /// Config overrides as `(name without --, values)`, in order.
    overrides: Vec<(String, Vec<String>)>,
    /// `(keys, key_load_delay_micros)` for `loading_dataset`.
    loading: Option<(u64, i64)>,
    /// Also listen on `redis.sock` in the server's temp dir.
    unix_socket: bool,
    /// Listen with TLS only (see `tls_only`).
    tls: Option<TlsOnly>,
}

/// A server that listens with TLS only (`port 0`, `tls-port`): its PKI
/// files, and how the harness itself connects to it.
#[derive(Clone, Debug)]
struct TlsOnly {
    /// `tls-*-file` options: server and client certificates, key, CA.
    files: Vec<(&'static str, String)>,
    client: std::sync::Arc<rustls::ClientConfig>,
}

impl RedisServerBuilder {
    /// Requires `password` (`requirepass`); `url()` and `direct()` use it.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_string());
        self
    }

    /// Sets one config option, replacing a default of the same name:
    /// `.arg("--maxmemory", "10mb")` (the leading `--` is optional).
    pub fn arg(self, name: &str, value: &str) -> Self {
        self.arg_values(name, &[value])
    }

    /// Sets a config option that takes several arguments, e.g.
    /// `.arg_values("replicaof", &["127.0.0.1", "7000"])`.
    pub fn arg_values(mut self, name: &str, values: &[&str]) -> Self {
        let name = name.trim_start_matches("--").to_string();
        let values = values.iter().map(|v| v.to_string()).collect();
        match self.overrides.iter_mut().find(|(n, _)| *n == name) {
            Some(existing) => existing.1 = values,
            None => self.overrides.push((name, values)),
        }
        self
    }

    /// Listens with TLS only, on the port the harness picks (`port 0`,
    /// `tls-port P`), with `pki`'s server certificate, requiring client
    /// certificates of its CA; it presents `pki`'s client certificate to
    /// other nodes (replication, the cluster bus). The harness's own
    /// connections (`command`, the readiness probes) speak TLS too, and
    /// `url()` is `rediss://`.
    pub fn tls_only(mut self, pki: &super::tls::Pki) -> Self {
        self.tls = Some(TlsOnly {
            files: vec![
                ("tls-cert-file", pki.arg("server.pem")),
                ("tls-key-file", pki.arg("server.key")),
                ("tls-ca-cert-file", pki.arg("ca.pem")),
                ("tls-client-cert-file", pki.arg("client.pem")),
                ("tls-client-key-file", pki.arg("client.key")),
            ],
            client: super::tls::client_config(
                &pki.path("ca.pem"),
                Some((&pki.path("client.pem"), &pki.path("client.key"))),
            ),
        });
        self
    }

    /// Also listens on a Unix socket, `redis.sock` in its temp dir (see
    /// `RedisServer::unix_socket`, `unix_url`).
    pub fn unix_socket(mut self) -> Self {
        self.unix_socket = true;
        self
    }

    /// After starting, fills the server with `keys` keys, saves them to an RDB
    /// and restarts it loading that RDB slowly (see
    /// `RedisServer::reload_slowly`). `start()` then returns while the server
    /// is still answering `-LOADING`.
    pub fn loading_dataset(mut self, keys: u64, key_load_delay_micros: i64) -> Self {
        self.loading = Some((keys, key_load_delay_micros));
        self
    }

    /// Starts the server and waits until it answers PING (or, with
    /// `loading_dataset`, until it answers at all).
    pub fn start(self) -> RedisServer {
        let bin = redis_server_bin();
        let fixed_port = self
            .overrides
            .iter()
            .find(|(name, _)| name == "port")
            .and_then(|(_, values)| values.first())
            .map(|p| {
                p.parse::<u16>()
                    .unwrap_or_else(|e| panic!("bad --port override {p:?}: {e}"))
            });

        let attempts = if fixed_port.is_some() {
            1
        } else {
            PORT_ATTEMPTS
        };
        let mut last_failure = String::new();
        for _ in 0..attempts {
            let port = fixed_port.unwrap_or_else(free_port);
            let dir = tempfile::Builder::new()
                .prefix("respool-redis-")
                .tempdir()
                .unwrap_or_else(|e| panic!("creating a temp dir for redis-server: {e}"));
            let server = RedisServer {
                child: Mutex::new(None),
                port,
                args: self.config_args(port, dir.path()),
                password: self.password.clone(),
                bin: bin.clone(),
                unix_socket: self.unix_socket.then(|| dir.path().join("redis.sock")),
                tls: self.tls.as_ref().map(|tls| tls.client.clone()),
                log_path: dir.path().join("redis.log"),
                stderr_path: dir.path().join("stderr.log"),
                dir,
            };
            server.spawn(&[]);
            match server
                .poll_ready(Ready::Pong, READY_TIMEOUT)
                .and_then(|()| server.answers_itself())
            {
                Ok(()) => {
                    if let Some((keys, delay)) = self.loading {
                        server.reload_slowly(keys, delay);
                    }
                    return server;
                }
                // Someone took the port between `free_port` and redis's own
                // bind: drop (kill, reap) this one and try a fresh port.
                Err(failure) if failure.port_in_use => last_failure = failure.message,
                Err(failure) => panic!("{}", failure.message),
            }
        }
        panic!("redis-server could not get a free port in {attempts} attempts: {last_failure}");
    }

    /// The full command line: defaults first, overrides replacing them.
    fn config_args(&self, port: u16, dir: &Path) -> Vec<String> {
        let mut config: Vec<(String, Vec<String>)> = vec![
            ("port".into(), vec![port.to_string()]),
            ("bind".into(), vec!["127.0.0.1".into()]),
            ("save".into(), vec![String::new()]),
            ("appendonly".into(), vec!["no".into()]),
            ("daemonize".into(), vec!["no".into()]),
            ("dir".into(), vec![dir.display().to_string()]),
            (
                "logfile".into(),
                vec![dir.join("redis.log").display().to_string()],
            ),
            // DEBUG POPULATE/SLEEP/RELOAD are handy for fault tests.
            ("enable-debug-command".into(), vec!["local".into()]),
        ];
        if let Some(password) = &self.password {
            config.push(("requirepass".into(), vec![password.clone()]));
        }
        if let Some(tls) = &self.tls {
            config[0].1 = vec!["0".into()];
            config.push(("tls-port".into(), vec![port.to_string()]));
            for (name, file) in &tls.files {
                config.push(((*name).into(), vec![file.clone()]));
            }
        }
        if self.unix_socket {
            let path = dir.join("redis.sock").display().to_string();
            config.push(("unixsocket".into(), vec![path]));
            config.push(("unixsocketperm".into(), vec!["700".into()]));
        }
        for (name, values) in &self.overrides {
            match config.iter_mut().find(|(n, _)| n == name) {
                Some(existing) => existing.1 = values.clone(),
                None => config.push((name.clone(), values.clone())),
            }
        }
        let mut args = Vec::new();
        for (name, values) in config {
            if name == "port" && values.first().map(String::as_str) == Some("6379") {
                panic!("refusing to start a test redis-server on port {FORBIDDEN_PORT}: it belongs to the shared Redis");
            }
            args.push(format!("--{name}"));
            args.extend(values);
        }
        args
    }
}

/// What `poll_ready` waits for.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Ready {
    /// PING answered with PONG.
    Pong,
    /// PING answered at all (PONG or `-LOADING`).
    Answering,
    /// PING answered with `-LOADING`.
    Loading,
}

/// Why a server did not become ready.
struct StartFailure {
    port_in_use: bool,
    message: String,
}

/// A `redis-server` child process on a loopback port.
pub struct RedisServer {
    /// `None` once killed or stopped; a `Mutex` so that every method can
    /// take `&self`.
    child: Mutex<Option<Child>>,
    port: u16,
    /// The command line, kept to restart the server identically.
    args: Vec<String>,
    password: Option<String>,
    /// Its Unix socket, if asked for.
    unix_socket: Option<PathBuf>,
    /// Listening with TLS only: how the harness connects.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    bin: PathBuf,
    log_path: PathBuf,
    stderr_path: PathBuf,
    /// The data dir, kept across restarts; removed after the process is
    /// gone (fields drop after `Drop::drop` has killed it).
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server with the default options.
    pub fn start() -> RedisServer {
        RedisServer::builder().start()
    }

    /// Options for a server; finish with `.start()`.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// Starts a read-only replica of `master` (authenticating to it if it has
    /// a password) and returns once it answers PING; it may still be syncing
    /// (see `wait_replica_synced`).
    pub fn replica_of(master: &RedisServer) -> RedisServer {
        let master_port = master.port.to_string();
        let mut builder = RedisServer::builder()
            .arg_values("replicaof", &["127.0.0.1", &master_port])
            .arg("replica-read-only", "yes");
        if let Some(password) = &master.password {
            builder = builder.arg("masterauth", password);
        }
        builder.start()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:P`, or `redis://:pw@127.0.0.1:P` with a password
    /// (`rediss://` for a server listening with TLS only).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(password) => format!("{scheme}://:{password}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Its Unix socket (started with `.unix_socket()`).
    pub fn unix_socket(&self) -> &Path {
        self.unix_socket
            .as_deref()
            .expect("the server was started without .unix_socket()")
    }

    /// `unix:///…/redis.sock`, with `?password=pw` when it has one.
    pub fn unix_url(&self) -> String {
        let path = self.unix_socket().display();
        match &self.password {
            Some(password) => format!("unix://{path}?password={password}"),
            None => format!("unix://{path}"),
        }
    }

    /// The process id, while the process runs (or has exited unreaped).
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// The data directory (kept across restarts).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of the server's log and stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for path in [&self.log_path, &self.stderr_path] {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Whether the process is still alive.
    pub fn is_running(&self) -> bool {
        let mut child = self.child();
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) => {
                *child = None;
                false
            }
            Some(Err(e)) => panic!("checking redis-server on port {}: {e}", self.port),
            None => false,
        }
    }

    /// SIGKILL and reap. A no-op when it is not running.
    pub fn kill(&self) {
        if let Some(mut child) = self.child().take() {
            // Fails only if it already exited; `wait` reaps it either way.
            let _ = child.kill();
            child.wait().unwrap_or_else(|e| {
                panic!("waiting for killed redis-server on port {}: {e}", self.port)
            });
        }
    }

    /// SIGTERM and wait for a clean exit (SIGKILL after 20 s, then panic).
    /// With the default `save ""` nothing is written on the way out.
    pub fn stop(&self) {
        let Some(mut child) = self.child().take() else {
            return;
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            // Already exited (or `kill` is missing): SIGKILL is harmless.
            let _ = child.kill();
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL_INTERVAL),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "redis-server on port {} did not exit within {STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                        self.port,
                        self.log_tail(20)
                    );
                }
                Err(e) => panic!("waiting for redis-server on port {}: {e}", self.port),
            }
        }
    }

    /// Stops the server if it runs, starts it again on the same port with
    /// the same data dir and arguments, and waits until it answers PING
    /// (any RDB in the dir is loaded first, at full speed).
    pub fn restart(&self) {
        self.restart_no_wait();
        self.wait_ready();
    }

    /// Like `restart`, but returns right after spawning the process, so a
    /// test can watch it come up (`wait_ready`, `wait_loading`...).
    pub fn restart_no_wait(&self) {
        self.stop();
        self.spawn(&[]);
    }

    /// Waits until the server answers PING with PONG (20 s deadline).
    pub fn wait_ready(&self) {
        self.wait_for(Ready::Pong, READY_TIMEOUT);
    }

    /// Waits until PING gets `-LOADING`. Panics if the server answers PONG
    /// first: its dataset loaded faster than the test expected.
    pub fn wait_loading(&self) {
        self.wait_for(Ready::Loading, READY_TIMEOUT);
    }

    /// Waits until the server answers PING with PONG, with a deadline long
    /// enough for a slow dataset load (90 s).
    pub fn wait_loaded(&self) {
        self.wait_for(Ready::Pong, LOADED_TIMEOUT);
    }

    /// Whether one PING right now gets `-LOADING`.
    pub fn is_loading(&self) -> bool {
        matches!(self.probe(&[b"PING"]), Ok(reply) if reply.error_code() == Some("LOADING"))
    }

    /// Produces a genuine `-LOADING` window: fills the server with `keys`
    /// keys (`DEBUG POPULATE`), `SAVE`s them to `dump.rdb` in its dir, then
    /// restarts it so that loading sleeps `key_load_delay_micros` µs per key
    /// (a negative value `-n` sleeps 1 µs with probability 1/n, Redis's own
    /// convention). Returns once the server answers at all; it is normally
    /// still loading then (see `wait_loading` / `wait_loaded`).
    ///
    /// The slow-load settings apply to this one start only: a later
    /// `restart()` loads the same RDB at full speed.
    pub fn reload_slowly(&self, keys: u64, key_load_delay_micros: i64) {
        self.wait_ready();
        self.command(&[
            b"DEBUG".as_slice(),
            b"POPULATE",
            keys.to_string().as_bytes(),
        ])
        .expect_ok();
        self.command(&[b"SAVE"]).expect_ok();
        self.stop();
        // `key-load-delay` is a hidden (DEBUG_CONFIG) option that the command
        // line accepts like any other. While loading, Redis only serves
        // clients every `loading-process-events-interval-bytes` of RDB read
        // (2 MiB by default): without lowering it, clients would hang for
        // seconds instead of promptly getting -LOADING.
        self.spawn(&[
            "--key-load-delay".to_string(),
            key_load_delay_micros.to_string(),
            "--loading-process-events-interval-bytes".to_string(),
            "1024".to_string(),
        ]);
        self.wait_for(Ready::Answering, READY_TIMEOUT);
    }

    /// Waits until this replica reports `master_link_status:up`.
    pub fn wait_replica_synced(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let info = self.command(&[b"INFO".as_slice(), b"replication"]);
            let text = info.as_str().unwrap_or_default();
            if text.contains("master_link_status:up") {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "replica on port {} not synced within {READY_TIMEOUT:?}; INFO replication:\n{text}",
                    self.port
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Runs one command on a fresh blocking connection (authenticated if
    /// needed) and returns the reply; panics if the server cannot be reached.
    pub fn command(&self, args: &[&[u8]]) -> Reply {
        self.probe(args).unwrap_or_else(|e| {
            panic!(
                "{} on redis-server port {}: {e}; log:\n{}",
                String::from_utf8_lossy(args.first().copied().unwrap_or_default()),
                self.port,
                self.log_tail(20)
            )
        })
    }

    /// `field` of `cmdstat_<command>` in INFO commandstats (0 if the
    /// command never ran).
    pub fn command_stat(&self, command: &str, field: &str) -> u64 {
        let info = self.command(&[b"INFO", b"commandstats"]);
        let text = info.as_str().unwrap_or_default().to_string();
        let prefix = format!("cmdstat_{command}:");
        let key = format!("{field}=");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|stats| {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&key))
                    .map(|n| n.parse().expect("a number in commandstats"))
            })
            .unwrap_or(0)
    }

    /// How many times `command` ran (`calls` in INFO commandstats).
    pub fn command_calls(&self, command: &str) -> u64 {
        self.command_stat(command, "calls")
    }

    /// `blocked_clients` in INFO clients: connections blocked in a command.
    pub fn blocked_clients(&self) -> u64 {
        let info = self.command(&[b"INFO".as_slice(), b"clients"]);
        let text = info.as_str().unwrap_or_default().to_string();
        text.lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no blocked_clients in INFO clients: {text}"))
    }

    /// The `CLIENT LIST` lines of every connection but the one asking.
    pub fn other_clients(&self) -> Vec<String> {
        let list = self.command(&[b"CLIENT".as_slice(), b"LIST"]);
        let text = list
            .as_str()
            .unwrap_or_else(|| panic!("CLIENT LIST answered {list}"))
            .to_string();
        text.lines()
            .filter(|line| !line.contains("cmd=client|list"))
            .map(str::to_string)
            .collect()
    }

    /// Connections (from `CLIENT LIST`, the asking one aside) that carry
    /// connection state: another database, subscriptions, a transaction,
    /// flags (blocked, tracking, CLIENT REPLY, …). Empty when nothing leaked
    /// from a proxy's sessions.
    pub fn connections_with_state(&self) -> Vec<String> {
        self.other_clients()
            .into_iter()
            .filter(|line| {
                let field = |name: &str| {
                    line.split(' ')
                        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                        .unwrap_or("")
                };
                field("db") != "0"
                    || field("sub") != "0"
                    || field("psub") != "0"
                    || !matches!(field("ssub"), "0" | "")
                    || field("multi") != "-1"
                    || field("flags") != "N"
            })
            .collect()
    }

    /// Waits until no connection carries state
    /// ([`connections_with_state`](Self::connections_with_state)).
    pub fn wait_until_no_connection_state(&self, context: &str) {
        let deadline = std::time::Instant::now() + super::wait::DEADLINE;
        let last = loop {
            let with_state = self.connections_with_state();
            if with_state.is_empty() {
                return;
            }
            if std::time::Instant::now() >= deadline {
                break with_state;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        panic!("{context}: upstream connections still carry state:\n{last:#?}");
    }

    /// A `TestClient` connected straight to this server, authenticated if
    /// it has a password.
    pub async fn direct(&self) -> TestClient {
        let mut client = TestClient::connect(self.addr())
            .await
            .unwrap_or_else(|e| panic!("connecting directly to redis-server: {e}"));
        if let Some(password) = &self.password {
            let reply = client.cmd(&["AUTH", password.as_str()]).await;
            if reply != Reply::Simple("OK".into()) {
                panic!("AUTH on redis-server port {} failed: {reply}", self.port);
            }
        }
        client
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        // A panic elsewhere must not stop Drop from killing the process.
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spawns the process with the stored arguments plus `extra`.
    fn spawn(&self, extra: &[String]) {
        let mut child = self.child();
        if child.is_some() {
            panic!("redis-server on port {} is already running", self.port);
        }
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", self.stderr_path.display()));
        let spawned = Command::new(&self.bin)
            .args(&self.args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.bin.display()));
        *child = Some(spawned);
    }

    /// Panics with the server's log unless `poll_ready` succeeds.
    fn wait_for(&self, ready: Ready, timeout: Duration) {
        if let Err(failure) = self.poll_ready(ready, timeout) {
            panic!("{}", failure.message);
        }
    }

    /// Probes the server until it is `ready`, it exits, or `timeout` passes.
    fn poll_ready(&self, ready: Ready, timeout: Duration) -> Result<(), StartFailure> {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            if !self.is_running() {
                let log = self.log_tail(20);
                return Err(StartFailure {
                    port_in_use: log.contains("Address already in use"),
                    message: format!(
                        "redis-server on port {} exited while waiting for {ready:?}; log:\n{log}",
                        self.port
                    ),
                });
            }
            match self.probe(&[b"PING"]) {
                Ok(reply) => {
                    let loading = reply.error_code() == Some("LOADING");
                    let pong = reply == Reply::Simple("PONG".into());
                    match ready {
                        Ready::Pong if pong => return Ok(()),
                        Ready::Answering if pong || loading => return Ok(()),
                        Ready::Loading if loading => return Ok(()),
                        Ready::Loading if pong => {
                            return Err(StartFailure {
                                port_in_use: false,
                                message: format!(
                                    "redis-server on port {} answered PONG before any -LOADING was seen: \
                                     the dataset loaded too fast (use more keys or a larger key-load-delay)",
                                    self.port
                                ),
                            })
                        }
                        _ => {}
                    }
                    last = reply.to_string();
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(StartFailure {
                    port_in_use: false,
                    message: format!(
                        "redis-server on port {} not {ready:?} within {timeout:?} (last PING: {last}); log:\n{}",
                        self.port,
                        self.log_tail(20)
                    ),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// One command on a fresh blocking connection. AUTH, when needed, is
    /// pipelined in front; an error reply to it is returned instead.
    /// The server answering on the port is this one, not another test's
    /// (another process may have bound the port first, while this one is
    /// still on its way to exiting with "Address already in use").
    fn answers_itself(&self) -> Result<(), StartFailure> {
        let pid = self.child().as_ref().map(Child::id);
        let info = self.probe(&[b"INFO", b"server"]);
        let answering = match &info {
            Ok(Reply::Bulk(text)) => String::from_utf8_lossy(text)
                .lines()
                .find_map(|l| {
                    l.strip_prefix("process_id:")
                        .map(|p| p.trim().parse::<u32>().ok())
                })
                .flatten(),
            _ => None,
        };
        if pid.is_some() && answering == pid {
            return Ok(());
        }
        Err(StartFailure {
            port_in_use: true,
            message: format!(
                "another redis-server (pid {answering:?}) answers on port {}, not this one (pid {pid:?})",
                self.port
            ),
        })
    }

    fn probe(&self, args: &[&[u8]]) -> io::Result<Reply> {
        let Some(tls) = &self.tls else {
            return command_at(self.addr(), self.password.as_deref(), args);
        };
        let tcp = connect(self.addr())?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("a server name");
        let session = rustls::ClientConnection::new(tls.clone(), name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        command_on(
            rustls::StreamOwned::new(session, tcp),
            self.password.as_deref(),
            args,
        )
    }
}

/// A blocking connection to `addr` whose reads and writes time out.
fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    Ok(stream)
}

/// Runs one command on a fresh blocking connection to `addr`, after AUTH
/// with `password` if given (an AUTH error is the reply then).
pub fn command_at(addr: SocketAddr, password: Option<&str>, args: &[&[u8]]) -> io::Result<Reply> {
    command_on(connect(addr)?, password, args)
}

/// Runs one command on `stream`, after AUTH with `password` if given.
fn command_on(
    mut stream: impl Read + Write,
    password: Option<&str>,
    args: &[&[u8]],
) -> io::Result<Reply> {
    let mut request = Vec::new();
    if let Some(password) = password {
        request.extend(encode_command(&[b"AUTH".as_slice(), password.as_bytes()]));
    }
    request.extend(encode_command(args));
    stream.write_all(&request)?;

    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let expected = if password.is_some() { 2 } else { 1 };
    while replies.len() < expected {
        match parse_reply(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? {
            Some((reply, used)) => {
                buf.drain(..used);
                replies.push(reply);
            }
            None => {
                let mut chunk = [0u8; 16 * 1024];
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before the reply",
                    ));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
    let last = replies.pop().unwrap_or(Reply::Null);
    match replies.pop() {
        Some(auth) if auth.is_error() => Ok(auth),
        _ => Ok(last),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Kill and reap before the temp dir goes away; never panic here
        // (we may already be unwinding from a failed assertion).
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port that was free a moment ago: bind port 0, note it, release it.
/// Callers retry when something else grabs it before they bind.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("binding 127.0.0.1:0 to find a free port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("reading the address of a bound listener: {e}"))
            .port();
        if port != FORBIDDEN_PORT {
            return port;
        }
    }
}
