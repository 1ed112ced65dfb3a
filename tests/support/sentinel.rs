//! A real Sentinel deployment: one primary, its replicas and a few
//! Sentinels (`redis-server <conf> --sentinel`), each a child process on a
//! free loopback port with its own temp dir, stopped on drop.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;

use super::redis::{command_at, free_port, redis_server_bin, RedisServer};
use super::wait;
use super::Reply;

/// The master name the Sentinels monitor.
pub const MASTER: &str = "mymaster";

/// One Sentinel process.
pub struct Sentinel {
    child: Mutex<Option<Child>>,
    port: u16,
    /// Its TLS port, when it has one.
    tls_port: Option<u16>,
    conf: PathBuf,
    password: Option<String>,
    _dir: TempDir,
}

impl Sentinel {
    fn start(
        primary_port: u16,
        quorum: usize,
        password: Option<&str>,
        primary_password: Option<&str>,
        tls: Option<&TlsFiles>,
    ) -> Sentinel {
        let dir = tempfile::Builder::new()
            .prefix("respool-sentinel-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir for a sentinel: {e}"));
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let mut text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\n\
             sentinel monitor {MASTER} 127.0.0.1 {primary_port} {quorum}\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 10000\n\
             sentinel parallel-syncs {MASTER} 2\n",
            dir = dir.path().display()
        );
        if let Some(password) = password {
            text.push_str(&format!("requirepass {password}\n"));
        }
        if let Some(password) = primary_password {
            text.push_str(&format!("sentinel auth-pass {MASTER} {password}\n"));
        }
        let tls_port = tls.map(|tls| {
            let port = free_port();
            text.push_str(&format!(
                "tls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\n",
                tls.cert.display(),
                tls.key.display(),
                tls.ca.display()
            ));
            port
        });
        fs::write(&conf, text).unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        let sentinel = Sentinel {
            child: Mutex::new(None),
            port,
            tls_port,
            conf,
            password: password.map(str::to_owned),
            _dir: dir,
        };
        sentinel.spawn();
        sentinel
    }

    fn spawn(&self) {
        let child = Command::new(redis_server_bin())
            .arg(&self.conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting a sentinel: {e}"));
        *self.child.lock().unwrap() = Some(child);
        wait::until(
            "the sentinel to answer PING",
            Duration::from_secs(10),
            || matches!(self.command(&["PING"]), Some(Reply::Simple(s)) if s == "PONG"),
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<its TLS port>`.
    pub fn tls_addr(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port.expect("a sentinel with TLS"))
    }

    /// One command; `None` if the sentinel cannot be reached.
    pub fn command(&self, args: &[&str]) -> Option<Reply> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        command_at(addr, self.password.as_deref(), &args).ok()
    }

    /// Stops it (kill -9).
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the state it saved.
    pub fn restart(&self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// PEM files for a Sentinel's TLS port.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A primary, its replicas, and Sentinels watching them.
pub struct SentinelSetup {
    /// Every data node; the primary is the first at the start.
    pub servers: Vec<RedisServer>,
    pub sentinels: Vec<Sentinel>,
}

impl SentinelSetup {
    /// One primary with `replicas` replicas and `sentinels` Sentinels
    /// (quorum: a majority), ready: the replicas synced and every Sentinel
    /// knowing them all.
    pub fn start(replicas: usize, sentinels: usize) -> SentinelSetup {
        SentinelSetup::start_with(replicas, sentinels, None, None)
    }

    /// Like [`start`](Self::start), with a password on the data nodes
    /// and/or on the Sentinels.
    pub fn start_with(
        replicas: usize,
        sentinels: usize,
        data_password: Option<&str>,
        sentinel_password: Option<&str>,
    ) -> SentinelSetup {
        SentinelSetup::start_full(replicas, sentinels, data_password, sentinel_password, None)
    }

    /// Everything: passwords, and a TLS port on every Sentinel besides its
    /// plain one.
    pub fn start_full(
        replicas: usize,
        sentinels: usize,
        data_password: Option<&str>,
        sentinel_password: Option<&str>,
        tls: Option<&TlsFiles>,
    ) -> SentinelSetup {
        let mut builder = RedisServer::builder();
        if let Some(password) = data_password {
            builder = builder.password(password).arg("masterauth", password);
        }
        let primary = builder.start();
        let mut servers = vec![];
        let primary_port = primary.port();
        servers.push(primary);
        for _ in 0..replicas {
            let replica = RedisServer::replica_of(&servers[0]);
            replica.wait_replica_synced();
            servers.push(replica);
        }
        let quorum = sentinels / 2 + 1;
        let sentinels: Vec<Sentinel> = (0..sentinels)
            .map(|_| Sentinel::start(primary_port, quorum, sentinel_password, data_password, tls))
            .collect();
        let setup = SentinelSetup { servers, sentinels };
        for s in &setup.sentinels {
            wait::until(
                "every sentinel to know every replica and the other sentinels",
                Duration::from_secs(30),
                || {
                    let count = |args: &[&str]| match s.command(args) {
                        Some(Reply::Array(items)) => items.len(),
                        _ => 0,
                    };
                    count(&["SENTINEL", "REPLICAS", MASTER]) == replicas
                        && count(&["SENTINEL", "SENTINELS", MASTER]) == setup.sentinels.len() - 1
                },
            );
        }
        setup
    }

    /// `--sentinel a,b,c --sentinel-master mymaster`.
    pub fn flags(&self) -> Vec<String> {
        let list: Vec<String> = self.sentinels.iter().map(Sentinel::addr).collect();
        vec![
            "--sentinel".into(),
            list.join(","),
            "--sentinel-master".into(),
            MASTER.into(),
        ]
    }

    /// The primary's port as the first Sentinel that answers says.
    pub fn primary_port(&self) -> u16 {
        for s in &self.sentinels {
            if let Some(Reply::Array(items)) =
                s.command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER])
            {
                if let Some(Reply::Bulk(port)) = items.get(1) {
                    return String::from_utf8_lossy(port).parse().expect("a port");
                }
            }
        }
        panic!("no sentinel names a primary");
    }

    /// The data node on `port`.
    pub fn server(&self, port: u16) -> &RedisServer {
        self.servers
            .iter()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no server on port {port}"))
    }

    /// The primary now.
    pub fn primary(&self) -> &RedisServer {
        self.server(self.primary_port())
    }

    /// Forces a failover and waits until every Sentinel names another
    /// primary, which says it is one; its port.
    pub fn failover(&self) -> u16 {
        let before = self.primary_port();
        let reply = self.sentinels[0].command(&["SENTINEL", "FAILOVER", MASTER]);
        assert_eq!(reply, Some(Reply::Simple("OK".into())), "SENTINEL FAILOVER");
        self.wait_for_new_primary(before)
    }

    /// Waits until every reachable Sentinel names a primary other than
    /// `before`, and that server says it is a primary; its port.
    pub fn wait_for_new_primary(&self, before: u16) -> u16 {
        let mut after = before;
        wait::until(
            "the Sentinels to name a new primary",
            Duration::from_secs(60),
            || {
                after = self.primary_port();
                after != before
                    && self.sentinels.iter().all(|s| {
                        match s.command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]) {
                            Some(Reply::Array(items)) => {
                                items.get(1) == Some(&Reply::Bulk(after.to_string().into_bytes()))
                            }
                            _ => true,
                        }
                    })
                    && matches!(
                        self.server(after).command(&[b"ROLE"]),
                        Reply::Array(items) if items.first() == Some(&Reply::Bulk(b"master".to_vec()))
                    )
            },
        );
        after
    }
}
