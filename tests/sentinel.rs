//! High availability against real processes: a primary, replicas and three
//! Sentinels (`redis-server --sentinel`) on free ports. respool follows
//! forced and real failovers, refuses to keep writing to a demoted primary,
//! reads from replicas within their lag and after a client's own writes,
//! and keeps serving when Sentinels are down.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::sentinel::{SentinelSetup, TlsFiles};
use support::{wait, RedisServer, Reply, TestClient, TestProxy};

/// Held by every test here: each runs a deployment of several processes and
/// times failovers, which two at once on two cores would blur.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

/// Starts respool on the deployment with `extra` flags.
async fn proxy_for(setup: &SentinelSetup, extra: &[&str]) -> TestProxy {
    let mut flags: Vec<String> = setup.flags();
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // --upstream's host is not used with Sentinels; the port is closed.
    TestProxy::start("redis://127.0.0.1:1", &flags).await
}

/// What `INFO respool` says, field by field.
async fn info(client: &mut TestClient) -> HashMap<String, String> {
    let reply = client.cmd(&["INFO", "respool"]).await;
    let text = reply.as_str().unwrap_or_default().to_string();
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Waits until `INFO respool` satisfies `condition`.
async fn until_info(
    client: &mut TestClient,
    what: &str,
    timeout: Duration,
    condition: impl Fn(&HashMap<String, String>) -> bool,
) {
    wait::until_ok(what, timeout, async || {
        let info = info(client).await;
        if condition(&info) {
            Ok(())
        } else {
            Err(format!("INFO respool: {info:?}"))
        }
    })
    .await;
}

/// What 50 clients that INCR their own key and read it back saw.
#[derive(Default)]
struct Tally {
    acked: u64,
    /// Errors saying the write may or may not have run.
    maybe: u64,
    /// Any other error, with its text.
    other: Vec<String>,
    /// The longest an INCR took (held through the failover).
    longest: Duration,
}

/// Runs 50 clients, each INCRing `ctr:<i>` and reading it back, until
/// `stop`; every GET must return what the INCR before it said.
async fn incr_load(
    proxy: &TestProxy,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = proxy.client().await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("ctr:{i}");
            let mut tally = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let reply = client.cmd(&["INCR", &key]).await;
                tally.longest = tally.longest.max(started.elapsed());
                match reply {
                    Reply::Int(n) => {
                        tally.acked += 1;
                        let got = client.cmd(&["GET", &key]).await;
                        assert_eq!(
                            got,
                            Reply::Bulk(n.to_string().into_bytes()),
                            "GET after INCR of {key}"
                        );
                    }
                    Reply::Error(e) if e.contains("may or may not have executed") => {
                        tally.maybe += 1
                    }
                    other => tally.other.push(other.to_string()),
                }
            }
            tally
        }));
    }
    tasks
}

/// Every client's key on `server` holds its acknowledged INCRs, plus at
/// most those whose outcome it was told is unknown.
fn assert_counted_once(server: &RedisServer, tallies: &[Tally]) {
    for (i, t) in tallies.iter().enumerate() {
        let key = format!("ctr:{i}");
        let value = match server.command(&[b"GET", key.as_bytes()]) {
            Reply::Bulk(v) => String::from_utf8_lossy(&v)
                .parse::<u64>()
                .expect("a number"),
            Reply::Nil => 0,
            other => panic!("GET {key}: {other}"),
        };
        assert!(
            value >= t.acked && value <= t.acked + t.maybe,
            "{key} is {value}: {} INCRs acknowledged, {} of unknown outcome",
            t.acked,
            t.maybe
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_under_load_keeps_every_acknowledged_write_once() {
    let _serial = SERIAL.lock().await;
    let setup = SentinelSetup::start(2, 3);
    let proxy = proxy_for(&setup, &["--hold-timeout", "20s"]).await;
    let mut probe = proxy.client().await;
    assert_eq!(probe.cmd(&["SET", "before", "1"]).await, ok());
    let before = setup.primary_port();

    let stop = Arc::new(AtomicBool::new(false));
    let tasks = incr_load(&proxy, stop.clone()).await;
    wait::until_async("the load to be under way", wait::DEADLINE, || {
        setup.primary().command_stat("incr", "calls") > 1000
    })
    .await;
    let new_port = tokio::task::block_in_place(|| setup.failover());
    assert_ne!(new_port, before);

    // Writes go to the new primary within a second of the Sentinels naming it.
    let named = Instant::now();
    assert_eq!(probe.cmd(&["SET", "after", "1"]).await, ok());
    let took = named.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "first write after the switch took {took:?}"
    );
    assert_eq!(
        setup.server(new_port).command(&[b"GET", b"after"]),
        Reply::Bulk(b"1".to_vec())
    );
    wait::until_async("the load to run on the new primary", wait::DEADLINE, || {
        setup.server(new_port).command_stat("incr", "calls") > 1000
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut tallies = Vec::new();
    for task in tasks {
        tallies.push(task.await.expect("a load task"));
    }
    let other: Vec<&String> = tallies.iter().flat_map(|t| &t.other).collect();
    assert!(
        other.is_empty(),
        "errors other than for writes in flight: {other:?}"
    );
    let maybe: u64 = tallies.iter().map(|t| t.maybe).sum();
    let acked: u64 = tallies.iter().map(|t| t.acked).sum();
    let longest = tallies.iter().map(|t| t.longest).max().unwrap_or_default();
    println!("failover under load: {acked} INCRs acknowledged, {maybe} of unknown outcome, longest INCR {longest:?}");
    assert!(
        maybe <= 50,
        "{maybe} writes of unknown outcome: more than those in flight at the switch"
    );
    assert_counted_once(setup.server(new_port), &tallies);

    let info = info(&mut probe).await;
    assert_eq!(info["failovers"], "1");
    assert_eq!(
        info["primary_epoch"].parse::<u64>().ok().map(|e| e >= 1),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_followed_to_the_promoted_replica() {
    let _serial = SERIAL.lock().await;
    let setup = SentinelSetup::start(2, 3);
    let proxy = proxy_for(&setup, &["--hold-timeout", "30s"]).await;
    let mut client = proxy.client().await;
    assert_eq!(client.cmd(&["SET", "k", "before"]).await, ok());
    let before = setup.primary_port();
    tokio::task::block_in_place(|| {
        // Both replicas have the write before the primary dies.
        let acked = setup.server(before).command(&[b"WAIT", b"2", b"5000"]);
        assert_eq!(acked, Reply::Int(2));
        setup.server(before).kill();
    });
    // Held until the Sentinels have promoted a replica, then served there.
    let started = Instant::now();
    let reply = client.cmd(&["SET", "k", "after"]).await;
    assert_eq!(reply, ok(), "after {:?}", started.elapsed());
    let after = tokio::task::block_in_place(|| setup.wait_for_new_primary(before));
    assert_eq!(
        setup.server(after).command(&[b"GET", b"k"]),
        Reply::Bulk(b"after".to_vec())
    );
    println!(
        "kill -9 of the primary: a write waited {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_the_old_primary_ends_with_a_clear_error() {
    let _serial = SERIAL.lock().await;
    let setup = SentinelSetup::start(1, 3);
    let proxy = proxy_for(&setup, &["--hold-timeout", "20s"]).await;
    let mut blocked = proxy.client().await;
    blocked.send(&["BLPOP", "never", "0"]).await.expect("sent");
    let mut other = proxy.client().await;
    wait::until_async("the BLPOP to block", wait::DEADLINE, || {
        setup.primary().blocked_clients() == 1
    })
    .await;
    tokio::task::block_in_place(|| setup.failover());
    let reply = blocked
        .read_reply_within(Duration::from_secs(10))
        .await
        .expect("a reply");
    let Reply::Error(text) = reply else {
        panic!("expected an error, got {reply}");
    };
    assert!(
        text.contains("primary moved") && text.contains("failover") && text.contains("reconnect"),
        "{text}"
    );
    // Everyone else carries on.
    assert_eq!(other.cmd(&["SET", "k", "v"]).await, ok());
}

#[tokio::test]
async fn a_primary_demoted_without_sentinel_is_not_written_to() {
    let _serial = SERIAL.lock().await;
    let primary = RedisServer::start();
    let other = RedisServer::start();
    let proxy = TestProxy::start(&primary.url(), &["--hold-timeout", "1s"]).await;
    let mut client = proxy.client().await;
    assert_eq!(client.cmd(&["SET", "k", "1"]).await, ok());

    let port = other.port().to_string();
    primary.command(&[b"REPLICAOF", b"127.0.0.1", port.as_bytes()]);
    primary.wait_replica_synced();
    // INCR, not SET: the write probe's queued SET counts as a rejected SET.
    let rejected = || primary.command_stat("incr", "rejected_calls");
    let reply = client.cmd(&["SET", "k", "2"]).await;
    let Reply::Error(text) = &reply else {
        panic!("a write to a demoted primary answered {reply}");
    };
    assert!(text.contains("READONLY"), "{text}");
    // It is not written to again: the lane's next connection fails the
    // write probe, and what waits is answered without reaching it.
    let refused_before = rejected();
    for _ in 0..10 {
        client.send(&["INCR", "n"]).await.expect("sent");
    }
    for _ in 0..10 {
        let reply = client.read_reply().await.expect("a reply");
        let Reply::Error(text) = &reply else {
            panic!("a write to a demoted primary answered {reply}");
        };
        assert!(text.contains("READONLY"), "{text}");
    }
    assert_eq!(
        rejected(),
        refused_before,
        "writes still reached the demoted primary"
    );
    assert_eq!(
        primary.command(&[b"GET", b"k"]),
        Reply::Nil,
        "a write landed"
    );
    assert_eq!(
        primary.command(&[b"GET", b"n"]),
        Reply::Nil,
        "a write landed"
    );

    primary.command(&[b"REPLICAOF", b"NO", b"ONE"]);
    wait::until_ok(
        "writes to be served again",
        wait::DEADLINE,
        async || match client.cmd(&["SET", "k", "3"]).await {
            reply if reply == ok() => Ok(()),
            reply => Err(format!("writes not served again: SET answered {reply}")),
        },
    )
    .await;
    assert_eq!(primary.command(&[b"GET", b"k"]), Reply::Bulk(b"3".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_and_a_clients_own_writes_are_read_back() {
    let _serial = SERIAL.lock().await;
    let setup = SentinelSetup::start(2, 3);
    let proxy = proxy_for(&setup, &["--read-from", "replica"]).await;
    let mut client = proxy.client().await;
    until_info(
        &mut client,
        "both replicas to be usable",
        wait::DEADLINE,
        |info| {
            ["replica0", "replica1"]
                .iter()
                .all(|r| info.get(*r).is_some_and(|v| v.contains("state=ok")))
        },
    )
    .await;
    assert_eq!(client.cmd(&["SET", "shared", "x"]).await, ok());
    let primary = setup.primary();
    // Other clients read it from the replicas once they have it.
    assert_eq!(primary.command(&[b"WAIT", b"2", b"5000"]), Reply::Int(2));
    let gets = |s: &RedisServer| s.command_stat("get", "calls");
    let primary_gets = gets(primary);

    // Reads from many clients land on the replicas.
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(proxy.client().await);
    }
    for _ in 0..50 {
        for reader in &mut readers {
            let got = reader.cmd(&["GET", "shared"]).await;
            assert_eq!(got, Reply::Bulk(b"x".to_vec()));
        }
    }
    let replica_gets: u64 = setup
        .servers
        .iter()
        .filter(|s| s.port() != primary.port())
        .map(gets)
        .sum();
    assert!(
        replica_gets >= 200,
        "only {replica_gets} GETs reached the replicas"
    );
    assert_eq!(gets(primary), primary_gets, "reads reached the primary");

    // A client reads its own writes, every time.
    for i in 0..200 {
        let value = format!("v{i}");
        assert_eq!(client.cmd(&["SET", "mine", &value]).await, ok());
        assert_eq!(
            client.cmd(&["GET", "mine"]).await,
            Reply::Bulk(value.into_bytes())
        );
    }
    // Writes went to the primary.
    assert_eq!(
        primary.command(&[b"GET", b"mine"]),
        Reply::Bulk(b"v199".to_vec())
    );
    let info = info(&mut client).await;
    assert_eq!(info["read_from"], "replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_answering_is_skipped() {
    let _serial = SERIAL.lock().await;
    let setup = SentinelSetup::start(2, 3);
    let proxy = proxy_for(
        &setup,
        &["--read-from", "replica", "--max-replica-lag", "500ms"],
    )
    .await;
    let mut client = proxy.client().await;
    until_info(
        &mut client,
        "both replicas to be usable",
        wait::DEADLINE,
        |info| info.values().filter(|v| v.contains("state=ok")).count() == 2,
    )
    .await;
    let primary_port = setup.primary_port();
    let replicas: Vec<&RedisServer> = setup
        .servers
        .iter()
        .filter(|s| s.port() != primary_port)
        .collect();
    let (stalled, healthy) = (replicas[0], replicas[1]);

    // DEBUG SLEEP blocks the replica (and its replication) for 4 s.
    let stalled_port = stalled.port();
    let sleeper = std::thread::spawn(move || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], stalled_port));
        support::redis::command_at(addr, None, &[b"DEBUG", b"SLEEP", b"4"])
    });
    let stalled_addr = format!("addr=127.0.0.1:{stalled_port},state=");
    until_info(
        &mut client,
        "the stalled replica to be taken out",
        Duration::from_secs(3),
        |info| {
            info.values()
                .any(|v| v.starts_with(&stalled_addr) && !v.contains("state=ok"))
        },
    )
    .await;
    let healthy_before = healthy.command_stat("get", "calls");
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(client.cmd(&["GET", "k"]).await, Reply::Nil);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "reads waited for the stalled replica"
    );
    assert!(healthy.command_stat("get", "calls") >= healthy_before + 100);
    sleeper.join().expect("the sleeper").expect("DEBUG SLEEP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_auth_and_sentinels_down() {
    let _serial = SERIAL.lock().await;
    let setup = SentinelSetup::start_with(1, 3, Some("data-pw"), Some("sentinel-pw"));
    // One Sentinel is down before respool starts.
    setup.sentinels[0].kill();
    let proxy = proxy_for(
        &setup,
        &[
            "--sentinel-password",
            "sentinel-pw",
            "--upstream-password",
            "data-pw",
        ],
    )
    .await;
    let mut client = proxy.client().await;
    assert_eq!(client.cmd(&["SET", "k", "v"]).await, ok());
    assert_eq!(
        setup.primary().command(&[b"GET", b"k"]),
        Reply::Bulk(b"v".to_vec())
    );

    // Every Sentinel down: the last primary known is kept.
    for s in &setup.sentinels {
        s.kill();
    }
    until_info(
        &mut client,
        "no Sentinel answering",
        Duration::from_secs(20),
        |info| info.get("sentinels_answering").map(String::as_str) == Some("0"),
    )
    .await;
    assert_eq!(client.cmd(&["SET", "k", "w"]).await, ok());
    assert_eq!(client.cmd(&["GET", "k"]).await, Reply::Bulk(b"w".to_vec()));
}

/// A CA and a certificate for 127.0.0.1 signed by it, as PEM files.
fn pki(dir: &std::path::Path) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".into()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("cert");
    let files = TlsFiles {
        cert: dir.join("sentinel.pem"),
        key: dir.join("sentinel.key"),
        ca: dir.join("ca.pem"),
    };
    std::fs::write(&files.cert, cert.pem()).expect("cert file");
    std::fs::write(&files.key, key.serialize_pem()).expect("key file");
    std::fs::write(&files.ca, ca_cert.pem()).expect("CA file");
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_over_tls() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = pki(dir.path());
    let setup = SentinelSetup::start_full(1, 1, None, None, Some(&tls));
    let (sentinel, ca) = (setup.sentinels[0].tls_addr(), tls.ca.display().to_string());
    let flags = [
        "--sentinel",
        &sentinel,
        "--sentinel-master",
        support::sentinel::MASTER,
        "--sentinel-tls",
        "--upstream-ca",
        &ca,
    ];
    let proxy = TestProxy::start("redis://127.0.0.1:1", &flags).await;
    let mut client = proxy.client().await;
    assert_eq!(client.cmd(&["SET", "k", "v"]).await, ok());
    assert_eq!(
        setup.primary().command(&[b"GET", b"k"]),
        Reply::Bulk(b"v".to_vec())
    );
    assert_eq!(info(&mut client).await["sentinels_answering"], "1");
}

#[tokio::test]
async fn a_wrong_sentinel_password_is_a_clear_error() {
    let _serial = SERIAL.lock().await;
    let setup = SentinelSetup::start_with(0, 1, None, Some("sentinel-pw"));
    let proxy = proxy_for(
        &setup,
        &["--sentinel-password", "wrong", "--hold-timeout", "1s"],
    )
    .await;
    let mut client = proxy.client().await;
    let reply = client.cmd(&["GET", "k"]).await;
    let Reply::Error(text) = &reply else {
        panic!("expected an error, got {reply}");
    };
    assert!(
        text.contains("no Sentinel answered") || text.contains("no primary known yet"),
        "{text}"
    );
    assert!(!text.contains("wrong"), "the password leaked: {text}");
}
