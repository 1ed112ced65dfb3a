//! Live reload: the respool binary, started with `--config`, gets SIGHUP
//! after its file changed, while clients keep running GET/SET through it.
//! Passwords, `--max-pinned`, the log level and the client TLS certificate
//! change without a client error beyond those the change implies; a
//! setting that needs a restart is reported and left; an invalid file
//! changes nothing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::client::{encode_command, parse_reply};
use support::cluster::Cluster;
use support::redis::free_port;
use support::{wait, ProxyProcess, RedisServer, Reply, TestClient};

/// Writes the config file (replacing it, as an operator's editor would).
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("writing the config file");
    std::fs::rename(&tmp, path).expect("replacing the config file");
}

/// Reloads `text`, whose `--upstream` logs in as `someone:pw`: another
/// upstream, which the reload must leave alone (a restart), naming no
/// password in the log.
fn another_login_needs_a_restart(proxy: &ProxyProcess, file: &Path, text: &str) {
    write_config(file, text);
    sighup(proxy, "upstream changed");
    assert!(
        proxy.log().contains("needs a restart, left unchanged"),
        "{}",
        proxy.log()
    );
    assert!(!proxy.log().contains("someone:pw"), "a password in the log");
}

/// Sends SIGHUP to the proxy and waits until its log has one more
/// "reloading" line and then `expect`.
fn sighup(proxy: &ProxyProcess, expect: &str) {
    let before = proxy.log().matches(expect).count();
    let status = Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -HUP failed");
    wait::until(
        &format!("the log to say {expect:?}"),
        wait::DEADLINE,
        || proxy.log().matches(expect).count() > before,
    );
}

/// Clients running SET/GET through respool until stopped, each checking
/// every reply; unexpected replies are collected, not panicked on.
struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(addr: std::net::SocketAddr, clients: usize, auth: [&str; 2]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for id in 0..clients {
            let mut client = TestClient::connect(addr).await.expect("connect");
            client.cmd(&["AUTH", auth[0], auth[1]]).await.expect_ok();
            let (stop, ops, errors) = (stop.clone(), ops.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let (key, value) = (format!("load:{id}"), format!("v{n}"));
                    let set = client.cmd(&["SET", key.as_str(), value.as_str()]).await;
                    let got = client.cmd(&["GET", key.as_str()]).await;
                    if !matches!(&set, Reply::Simple(s) if s == "OK")
                        || got.as_str() != Some(value.as_str())
                    {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("client {id}: SET {set}, GET {got}"));
                        return;
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        Load {
            stop,
            ops,
            errors,
            tasks,
        }
    }

    /// Waits until the clients have completed `more` further round trips.
    async fn progresses(&self, more: u64) {
        let target = self.ops.load(Ordering::Relaxed) + more;
        let errors = self.errors.clone();
        wait::until_async("the load to progress", wait::DEADLINE, || {
            let failed = errors.lock().unwrap();
            assert!(failed.is_empty(), "load clients failed: {failed:?}");
            self.ops.load(Ordering::Relaxed) >= target
        })
        .await;
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load task");
        }
        let errors = self.errors.lock().unwrap();
        assert!(errors.is_empty(), "load clients failed: {errors:?}");
        self.ops.load(Ordering::Relaxed)
    }
}

/// A new client's AUTH reply.
async fn login(addr: std::net::SocketAddr, user: &str, password: &str) -> (TestClient, Reply) {
    let mut client = TestClient::connect(addr).await.expect("connect");
    let reply = client.cmd(&["AUTH", user, password]).await;
    (client, reply)
}

fn config(password: &str, max_pinned: u32, timeout: &str, log_level: &str) -> String {
    format!(
        "threads = 1\nuser = [\"app:{password}\"]\nmax-pinned = {max_pinned}\n\
         checkout-timeout = \"1s\"\ntimeout = \"{timeout}\"\nlog-level = \"{log_level}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_passwords_pinned_sessions_and_log_level() {
    let redis = RedisServer::start();
    let dir = TempDir::new().expect("temp dir");
    let file = dir.path().join("respool.toml");
    write_config(&file, &config("pw-one", 4, "5s", "info"));
    let file_arg = file.display().to_string();
    let proxy = ProxyProcess::start(&redis.url(), &["--config", &file_arg]);
    let addr = proxy.addr();
    let load = Load::start(addr, 4, ["app", "pw-one"]).await;
    load.progresses(200).await;

    // A password change: new logins need the new password, sessions that
    // logged in with the old one carry on. --timeout changes too;
    // --max-connections needs a restart.
    let (mut early, reply) = login(addr, "app", "pw-one").await;
    reply.expect_ok();
    let with_lanes = format!("{}max-connections = 2\n", config("pw-two", 4, "6s", "info"));
    write_config(&file, &with_lanes);
    sighup(&proxy, "reload: user changed");
    let log = proxy.log();
    assert!(
        log.contains("reload: timeout changed (\"5s\" -> \"6s\")\n")
            || log.contains("reload: timeout changed (\"5s\" -> \"6s\")\r\n"),
        "{log}"
    );
    assert!(
        log.contains("max-connections changed (1 -> 2): needs a restart, left unchanged"),
        "{log}"
    );
    login(addr, "app", "pw-one")
        .await
        .1
        .expect_error_code("WRONGPASS");
    login(addr, "app", "pw-two").await.1.expect_ok();
    assert_eq!(early.cmd(&["PING"]).await.as_str(), Some("PONG"));
    // A new login on an old connection is checked against the new password.
    early
        .cmd(&["AUTH", "app", "pw-one"])
        .await
        .expect_error_code("WRONGPASS");
    load.progresses(200).await;

    // Shrink --max-pinned to one: a second transaction waits for the
    // first's connection and, past --checkout-timeout, is refused.
    write_config(&file, &config("pw-two", 1, "6s", "info"));
    sighup(&proxy, "reload: max-pinned changed (4 -> 1)");
    let (mut first, _) = login(addr, "app", "pw-two").await;
    let (mut second, _) = login(addr, "app", "pw-two").await;
    first.cmd(&["MULTI"]).await.expect_ok();
    let refused = second.cmd(&["MULTI"]).await;
    assert!(
        refused.is_error() && format!("{refused}").contains("--max-pinned"),
        "{refused}"
    );
    load.progresses(200).await;

    // Grow it to three: two more transactions run beside the first.
    write_config(&file, &config("pw-two", 3, "6s", "info"));
    sighup(&proxy, "reload: max-pinned changed (1 -> 3)");
    let (mut third, _) = login(addr, "app", "pw-two").await;
    second.cmd(&["MULTI"]).await.expect_ok();
    third.cmd(&["MULTI"]).await.expect_ok();
    for (client, key) in [(&mut first, "t1"), (&mut second, "t2"), (&mut third, "t3")] {
        assert_eq!(
            client.cmd(&["SET", key, "x"]).await.as_str(),
            Some("QUEUED")
        );
        let exec = client.cmd(&["EXEC"]).await;
        assert!(!exec.is_error(), "EXEC: {exec}");
    }
    load.progresses(200).await;

    // The log level: a debug line appears only after the reload.
    let mut bad = TestClient::connect(addr).await.expect("connect");
    bad.send_raw(b"*1\r\n$x\r\n").await.expect("send");
    let _ = bad.read_reply().await;
    assert!(!proxy.log().contains("client protocol error"));
    write_config(&file, &config("pw-two", 3, "6s", "respool=debug"));
    sighup(&proxy, "reload: log-level changed");
    let mut bad = TestClient::connect(addr).await.expect("connect");
    bad.send_raw(b"*1\r\n$x\r\n").await.expect("send");
    let _ = bad.read_reply().await;
    wait::until_async("a debug line", wait::DEADLINE, || {
        proxy.log().contains("client protocol error")
    })
    .await;

    // An invalid file changes nothing, not even its valid parts.
    let broken = format!(
        "{}max-clients = \"lots\"\n",
        config("pw-three", 1, "6s", "info")
    );
    write_config(&file, &broken);
    sighup(&proxy, "reload refused, nothing changed");
    login(addr, "app", "pw-three")
        .await
        .1
        .expect_error_code("WRONGPASS");
    login(addr, "app", "pw-two").await.1.expect_ok();
    let log = proxy.log();
    assert!(
        log.contains("'max-clients'") && log.contains(":7:"),
        "{log}"
    );

    let ops = load.finish().await;
    assert!(ops >= 1000, "{ops}");
    let log = proxy.log();
    for secret in ["pw-one", "pw-two", "pw-three"] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
}

/// A CA and server certificates it signs for 127.0.0.1, as PEM files.
struct Pki {
    dir: TempDir,
    ca: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "reload test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        let dir = TempDir::new().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("ca.pem");
        Pki {
            dir,
            ca: Issuer::new(params, key),
        }
    }

    /// Issues a server certificate named `name` into cert.pem / key.pem
    /// (replacing them); returns its DER.
    fn issue(&self, name: &str) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["127.0.0.1".into()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("cert");
        write_config(&self.path("cert.pem"), &cert.pem());
        write_config(&self.path("key.pem"), &key.serialize_pem());
        cert.der().to_vec()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A RESP client over TLS trusting the test CA.
struct TlsClient {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    buf: BytesMut,
}

impl TlsClient {
    async fn connect(addr: std::net::SocketAddr, ca: &Path) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
            roots.add(cert.expect("CA cert")).expect("adding the CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from("127.0.0.1").expect("server name");
        let stream = connector.connect(name, tcp).await.expect("TLS handshake");
        TlsClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// The certificate the server presented.
    fn server_cert(&self) -> Vec<u8> {
        let certs = self.stream.get_ref().1.peer_certificates().expect("certs");
        certs[0].as_ref().to_vec()
    }

    async fn cmd(&mut self, args: &[&str]) -> Reply {
        self.stream
            .write_all(&encode_command(args))
            .await
            .expect("write");
        let read = async {
            loop {
                if let Some((reply, used)) = parse_reply(&self.buf).expect("RESP") {
                    self.buf.advance(used);
                    return reply;
                }
                self.buf.reserve(16 * 1024);
                let n = self.stream.read_buf(&mut self.buf).await.expect("read");
                assert!(n > 0, "connection closed");
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("a reply within 20s")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_tls_certificate_serves_new_handshakes_and_keeps_clients() {
    let redis = RedisServer::start();
    let pki = Pki::new();
    let first = pki.issue("first");
    let file = pki.path("respool.toml");
    write_config(
        &file,
        &format!(
            "tls-cert = {:?}\ntls-key = {:?}\n",
            pki.path("cert.pem").display().to_string(),
            pki.path("key.pem").display().to_string()
        ),
    );
    let file_arg = file.display().to_string();
    let proxy = ProxyProcess::start(&redis.url(), &["--config", &file_arg]);
    let ca = pki.path("ca.pem");
    let mut connected = TlsClient::connect(proxy.addr(), &ca).await;
    assert_eq!(connected.server_cert(), first);
    assert_eq!(connected.cmd(&["SET", "k", "1"]).await.as_str(), Some("OK"));

    // Replaced in place, as certificate renewal tools do.
    let second = pki.issue("second");
    assert_ne!(first, second);
    sighup(&proxy, "reload: tls-cert changed");
    let mut fresh = TlsClient::connect(proxy.addr(), &ca).await;
    assert_eq!(
        fresh.server_cert(),
        second,
        "a new handshake got the old certificate"
    );
    assert_eq!(fresh.cmd(&["GET", "k"]).await.as_str(), Some("1"));
    // The client connected before the rotation carries on.
    for n in 0..100 {
        let v = n.to_string();
        assert_eq!(connected.cmd(&["SET", "k", &v]).await.as_str(), Some("OK"));
        assert_eq!(
            connected.cmd(&["GET", "k"]).await.as_str(),
            Some(v.as_str())
        );
    }

    // The same files read again: nothing changed.
    sighup(&proxy, "configuration reloaded: nothing changed");

    // A broken key file changes nothing: new handshakes still work.
    std::fs::write(pki.path("key.pem"), "not a key").expect("key.pem");
    sighup(&proxy, "reload refused, nothing changed");
    let mut after = TlsClient::connect(proxy.addr(), &ca).await;
    assert_eq!(after.server_cert(), second);
    assert_eq!(after.cmd(&["PING"]).await.as_str(), Some("PONG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_file_the_deny_list_and_max_clients_change_live() {
    let redis = RedisServer::start();
    let dir = TempDir::new().expect("temp dir");
    let users = dir.path().join("users.txt");
    write_config(&users, "app:one\n");
    let file = dir.path().join("respool.toml");
    let settings = |deny: &str, max_clients: u32| {
        format!(
            "users-file = {:?}\ndeny-command = [\"{deny}\"]\nmax-clients = {max_clients}\n",
            users.display().to_string()
        )
    };
    write_config(&file, &settings("KEYS", 100));
    let file_arg = file.display().to_string();
    let proxy = ProxyProcess::start(&redis.url(), &["--config", &file_arg]);
    let addr = proxy.addr();
    let (mut before, reply) = login(addr, "app", "one").await;
    reply.expect_ok();
    assert!(before.cmd(&["KEYS", "*"]).await.is_error());

    // The users file changes in place (same path), the deny list and the
    // client limit in the config file.
    write_config(&users, "app:two\n");
    write_config(&file, &settings("FLUSHALL", 2));
    sighup(&proxy, "reload: users-file changed (its contents)");
    assert!(proxy.log().contains("reload: deny-command changed"));
    login(addr, "app", "one")
        .await
        .1
        .expect_error_code("WRONGPASS");
    let (mut after, reply) = login(addr, "app", "two").await;
    reply.expect_ok();
    // A client that logs in after the reload has the new deny list; one
    // logged in before keeps the list it started with.
    assert!(!after.cmd(&["KEYS", "*"]).await.is_error());
    assert!(after.cmd(&["FLUSHALL"]).await.is_error());
    assert!(before.cmd(&["KEYS", "*"]).await.is_error());
    assert_eq!(before.cmd(&["PING"]).await.as_str(), Some("PONG"));

    // Two clients are connected: a third is over the new limit (once the
    // refused logins above have been counted out).
    wait::until_ok("a third client to be refused", wait::DEADLINE, async || {
        let mut third = TestClient::connect(addr).await.expect("connect");
        match third.try_cmd(&["PING"]).await {
            Ok(r) if format!("{r}").contains("max number of clients reached") => Ok(()),
            other => Err(format!("a third client is still served: {other:?}")),
        }
    })
    .await;
    assert_eq!(after.cmd(&["PING"]).await.as_str(), Some("PONG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respool_reload_from_the_admin_console_applies_the_file() {
    let redis = RedisServer::start();
    let dir = TempDir::new().expect("temp dir");
    let file = dir.path().join("respool.toml");
    let settings = |app_password: &str, max_clients: u32, bad: &str| {
        format!(
            "user = [\"ops:ops-pw\", \"app:{app_password}\"]\nadmin-user = \"ops\"\n\
             max-clients = {max_clients}\n{bad}"
        )
    };
    write_config(&file, &settings("one", 100, ""));
    let file_arg = file.display().to_string();
    let proxy = ProxyProcess::start(&redis.url(), &["--config", &file_arg]);
    let addr = proxy.addr();
    let (mut ops, reply) = login(addr, "ops", "ops-pw").await;
    reply.expect_ok();
    let (mut app, reply) = login(addr, "app", "one").await;
    reply.expect_ok();
    // Only the admin may reload.
    app.cmd(&["RESPOOL", "RELOAD"])
        .await
        .expect_error_code("NOPERM");

    write_config(&file, &settings("two", 50, ""));
    let report = ops.cmd(&["RESPOOL", "RELOAD"]).await;
    let text = report.as_str().expect("a report of the changes").to_owned();
    assert!(text.contains("user changed"), "{text}");
    assert!(text.contains("max-clients changed"), "{text}");
    assert!(
        !text.contains("one") && !text.contains("two"),
        "a password shown: {text}"
    );
    login(addr, "app", "one")
        .await
        .1
        .expect_error_code("WRONGPASS");
    login(addr, "app", "two").await.1.expect_ok();
    assert_eq!(app.cmd(&["PING"]).await.as_str(), Some("PONG"));

    // Nothing changed: said so. An invalid file: refused, nothing applied.
    let same = ops.cmd(&["RESPOOL", "RELOAD"]).await;
    assert_eq!(same.as_str(), Some("nothing changed"), "{same}");
    write_config(&file, &settings("three", 40, "max-conections = 2\n"));
    let refused = ops.cmd(&["RESPOOL", "RELOAD"]).await;
    let Reply::Error(why) = &refused else {
        panic!("expected a refusal, got {refused}");
    };
    assert!(
        why.contains("nothing changed") && why.contains("max-conections"),
        "{why}"
    );
    login(addr, "app", "two").await.1.expect_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_upstream_to_a_new_address() {
    let old = RedisServer::start();
    let new = RedisServer::start();
    let dir = TempDir::new().expect("temp dir");
    let file = dir.path().join("respool.toml");
    write_config(&file, &format!("upstream = \"{}\"\n", old.url()));
    let file_arg = file.display().to_string();
    let proxy = ProxyProcess::start("", &["--config", &file_arg]);
    let addr = proxy.addr();

    // Writers that must see no error across the move.
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for id in 0..3 {
        let mut client = TestClient::connect(addr).await.expect("connect");
        let (stop, errors) = (stop.clone(), errors.clone());
        writers.push(tokio::spawn(async move {
            let key = format!("writer:{id}");
            while !stop.load(Ordering::Relaxed) {
                let reply = client.cmd(&["SET", key.as_str(), "v"]).await;
                if !matches!(&reply, Reply::Simple(s) if s == "OK") {
                    errors.lock().unwrap().push(format!("{key}: {reply}"));
                    return;
                }
            }
        }));
    }
    let mut session = TestClient::connect(addr).await.expect("connect");
    session.cmd(&["MULTI"]).await.expect_ok();
    wait::until("the writers to reach the old Redis", wait::DEADLINE, || {
        old.command(&[b"EXISTS", b"writer:2"]) == Reply::Int(1)
    });

    // Another address, the same login: applied live.
    write_config(&file, &format!("upstream = \"{}\"\n", new.url()));
    sighup(&proxy, "reload: upstream changed");
    wait::until("the writers to reach the new Redis", wait::DEADLINE, || {
        new.command(&[b"EXISTS", b"writer:2"]) == Reply::Int(1)
    });
    // The old Redis is left: no connection of respool's stays on it.
    wait::until("respool to leave the old Redis", wait::DEADLINE, || {
        let clients = old.command(&[b"CLIENT", b"LIST"]);
        let listed = clients.as_str().map_or(0, |l| l.lines().count());
        // Only the CLIENT LIST's own connection.
        listed == 1
    });
    // The transaction was on the old Redis: it is gone, and said so.
    let exec = session.cmd(&["EXEC"]).await;
    let Reply::Error(why) = &exec else {
        panic!("EXEC after the move answered {exec}");
    };
    assert!(why.contains("primary moved"), "{why}");

    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer task");
    }
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "writers failed across the move: {errors:?}"
    );

    // Another login is another upstream: a restart, not a move.
    let elsewhere = new.url().replace("redis://", "redis://someone:pw@");
    another_login_needs_a_restart(&proxy, &file, &format!("upstream = \"{elsewhere}\"\n"));
}

/// In front of a cluster, `--upstream` names the seed nodes: a reload
/// with the same login replaces them, and the next discovery of the slot
/// map asks the new ones. Another login needs a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_gives_a_cluster_new_seeds() {
    let cluster = Cluster::start();
    // Nothing listens there: no slot map until the seeds change.
    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    let dir = TempDir::new().expect("temp dir");
    let file = dir.path().join("respool.toml");
    let settings = |seeds: &[String]| {
        let quoted: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
        format!(
            "cluster = true\nhold-timeout = \"1s\"\nupstream = [{}]\n",
            quoted.join(", ")
        )
    };
    write_config(&file, &settings(std::slice::from_ref(&nowhere)));
    let file_arg = file.display().to_string();
    let proxy = ProxyProcess::start("", &["--config", &file_arg]);
    let mut client = TestClient::connect(proxy.addr()).await.expect("connect");
    client
        .cmd(&["SET", "seeded", "v"])
        .await
        .expect_error_code("CLUSTERDOWN");

    write_config(&file, &settings(&cluster.urls()));
    sighup(&proxy, "reload: upstream changed");
    wait::until_ok(
        "a slot map from the new seeds",
        wait::DEADLINE,
        async || {
            let reply = client.cmd(&["SET", "seeded", "v"]).await;
            if reply == Reply::Simple("OK".into()) {
                Ok(())
            } else {
                Err(format!(
                    "no slot map from the new seeds: {reply}\n{}",
                    proxy.log()
                ))
            }
        },
    )
    .await;
    let owner = cluster.owner(cluster.keyslot(b"seeded"));
    assert_eq!(
        owner.command(&[b"GET", b"seeded"]),
        Reply::Bulk(b"v".to_vec())
    );

    // Another login is another cluster: a restart, not new seeds.
    let elsewhere: Vec<String> = cluster
        .urls()
        .iter()
        .map(|u| u.replace("redis://", "redis://someone:pw@"))
        .collect();
    another_login_needs_a_restart(&proxy, &file, &settings(&elsewhere));
    assert_eq!(
        client.cmd(&["GET", "seeded"]).await,
        Reply::Bulk(b"v".to_vec())
    );
}
