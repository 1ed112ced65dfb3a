//! Per-client limits (DESIGN.md invariant 5): a client that does not read its
//! replies is disconnected before respool's memory passes
//! `--client-output-limit`, and `--client-idle-timeout` closes quiet clients
//! but not subscribed or blocked ones.

mod support;

use std::time::{Duration, Instant};

use support::client::encode_command;
use support::{counter, ProxyProcess, RedisServer, Reply, TestClient, TestProxy};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_disconnected_before_memory_passes_the_limit() {
    const LIMIT: u64 = 32 * MIB;
    const VALUE: usize = MIB as usize;
    const REQUESTS: usize = 300; // 300 MiB of replies if nothing stopped them
    let redis = RedisServer::start();
    let proxy = ProxyProcess::start(
        &redis.url(),
        &[
            "--client-output-limit",
            &LIMIT.to_string(),
            "--log-level",
            "info",
            "--timeout",
            "30s",
        ],
    );
    let value = support::pattern(VALUE, 5);
    let mut reader = TestClient::connect(proxy.addr()).await.expect("connect");
    reader.set_read_timeout(Duration::from_secs(30));
    reader
        .cmd(&[b"SET".as_slice(), b"bigkey", &value])
        .await
        .expect_ok();
    // Warm up: big replies through a client that reads them, so that the
    // baseline includes the buffers any big reply needs.
    for _ in 0..5 {
        assert!(reader.cmd(&["GET", "bigkey"]).await == Reply::Bulk(value.clone()));
    }
    let baseline = proxy.status_bytes("VmHWM");

    // The attacker pipelines GET bigkey and never reads.
    let mut attacker = TestClient::connect(proxy.addr()).await.expect("connect");
    let mut burst = Vec::new();
    for _ in 0..REQUESTS {
        burst.extend(encode_command(&["GET", "bigkey"]));
    }
    attacker
        .send_raw(&burst)
        .await
        .expect("the attacker's burst");

    // Meanwhile another client keeps working, big replies included.
    let started = Instant::now();
    let mut rounds = 0;
    while !proxy.log().contains("client output limit") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the attacker was not disconnected within 30 s; peak RSS {} MiB over a {} MiB baseline",
            proxy.status_bytes("VmHWM") / MIB,
            baseline / MIB
        );
        rounds += 1;
        let token = format!("still-here-{rounds}");
        assert_eq!(
            reader.cmd(&["ECHO", &token]).await,
            Reply::Bulk(token.into_bytes())
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(reader.cmd(&["GET", "bigkey"]).await == Reply::Bulk(value.clone()));

    // The attacker gets whole, correct replies up to what its socket
    // buffers held, then the connection ends.
    let mut received = 0;
    let ending = loop {
        match attacker.read_reply().await {
            Ok(reply) => {
                assert!(
                    reply == Reply::Bulk(value.clone()),
                    "reply {received} is wrong"
                );
                received += 1;
            }
            Err(e) => break e,
        }
    };
    assert!(
        ending.is_closed(),
        "the attacker's connection did not end: {ending}"
    );
    assert!(
        received < REQUESTS,
        "the attacker got all {received} replies"
    );

    let peak = proxy.status_bytes("VmHWM");
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "limit {} MiB: baseline peak RSS {:.1} MiB, peak during the attack {:.1} MiB (+{:.1} MiB); attacker got {received} of {REQUESTS} replies",
        LIMIT / MIB,
        baseline as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        grown as f64 / MIB as f64,
    );
    assert!(
        grown <= LIMIT + LIMIT / 10,
        "peak RSS grew by {} KiB, more than the {} KiB limit + 10 %",
        grown / 1024,
        LIMIT / 1024
    );
    let log = proxy.log();
    let line = log
        .lines()
        .find(|l| l.contains("client output limit"))
        .unwrap_or_default();
    assert!(
        line.contains("INFO") && line.contains("127.0.0.1:"),
        "{line}"
    );
}

/// `--max-reply-memory`: 20 clients that never read, each asking for
/// 200 MiB of replies, with no per-client limit. respool stays within the
/// process's budget (+10 %), disconnecting the client holding the most
/// each time it would pass it, while a client that reads is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_clients_together_stay_within_the_reply_memory_budget() {
    const BUDGET: u64 = 64 * MIB;
    const VALUE: usize = MIB as usize;
    const ATTACKERS: usize = 20;
    const REQUESTS: usize = 200; // 200 MiB each if nothing stopped them
    let redis = RedisServer::start();
    let proxy = ProxyProcess::start(
        &redis.url(),
        &[
            "--max-reply-memory",
            &BUDGET.to_string(),
            "--client-output-limit",
            "0",
            "--log-level",
            "info",
            // The reader's requests queue behind the attackers' in the
            // lane: served late, but served.
            "--timeout",
            "60s",
            "--hold-timeout",
            "60s",
        ],
    );
    let value = support::pattern(VALUE, 9);
    let mut reader = TestClient::connect(proxy.addr()).await.expect("connect");
    reader.set_read_timeout(Duration::from_secs(60));
    reader
        .cmd(&[b"SET".as_slice(), b"bigkey", &value])
        .await
        .expect_ok();
    for _ in 0..5 {
        assert!(reader.cmd(&["GET", "bigkey"]).await == Reply::Bulk(value.clone()));
    }
    let baseline = proxy.status_bytes("VmHWM");

    let mut burst = Vec::new();
    for _ in 0..REQUESTS {
        burst.extend(encode_command(&["GET", "bigkey"]));
    }
    let mut attackers = Vec::new();
    for _ in 0..ATTACKERS {
        let mut attacker = TestClient::connect(proxy.addr()).await.expect("connect");
        attacker.send_raw(&burst).await.expect("the burst");
        attackers.push(attacker);
    }

    // The reader is served throughout, until the attackers are gone (or
    // what is left of them fits the budget).
    let started = Instant::now();
    let mut rounds = 0;
    loop {
        let info = reader.respool_counters().await;
        let evicted = counter(&info, "reply_memory_evictions");
        let held = counter(&info, "reply_memory");
        if evicted > 0 && held < BUDGET / 2 {
            eprintln!("{evicted} clients disconnected; {held} reply bytes held");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the attackers were never dealt with: {info:?}"
        );
        rounds += 1;
        let token = format!("still-here-{rounds}");
        assert_eq!(
            reader.cmd(&["ECHO", &token]).await,
            Reply::Bulk(token.into_bytes())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reader.cmd(&["GET", "bigkey"]).await == Reply::Bulk(value.clone()));
    let peak = proxy.status_bytes("VmHWM");
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "budget {} MiB: baseline peak RSS {:.1} MiB, peak {:.1} MiB (+{:.1} MiB)",
        BUDGET / MIB,
        baseline as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        grown as f64 / MIB as f64,
    );
    assert!(
        grown <= BUDGET + BUDGET / 10,
        "peak RSS grew by {} KiB, more than the {} KiB budget + 10 %",
        grown / 1024,
        BUDGET / 1024
    );
    assert!(
        proxy
            .log()
            .contains("reply memory (--max-reply-memory) exceeded"),
        "no eviction was logged"
    );
}

#[tokio::test]
async fn idle_clients_are_closed_but_subscribed_blocked_and_active_ones_are_not() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &["--client-idle-timeout", "1s"]).await;
    let quiet_for = Duration::from_millis(2500);

    let mut idle = proxy.client().await;
    assert_eq!(idle.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    let idle_since = Instant::now();

    let mut subscriber = proxy.client().await;
    subscriber
        .send(&["SUBSCRIBE", "news"])
        .await
        .expect("SUBSCRIBE");
    assert!(matches!(subscriber.read_reply().await, Ok(Reply::Array(_))));

    let mut blocked = proxy.client().await;
    blocked.send(&["BLPOP", "queue", "0"]).await.expect("BLPOP");

    // An active client: a command every 300 ms, never idle for 1 s.
    let mut active = proxy.client().await;
    let started = Instant::now();
    while started.elapsed() < quiet_for {
        assert_eq!(active.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The idle client was closed, silently, about a second after its reply.
    match idle.read_reply_within(Duration::from_secs(5)).await {
        Err(e) if e.is_closed() => {}
        other => panic!("the idle client was not closed: {other:?}"),
    }
    let closed_after = idle_since.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed after {closed_after:?}"
    );

    // The subscriber and the blocked client are still there and served.
    let mut publisher = proxy.client().await;
    assert_eq!(
        publisher.cmd(&["PUBLISH", "news", "hello"]).await,
        Reply::Int(1)
    );
    assert_eq!(
        subscriber.read_reply().await.expect("the message"),
        Reply::Array(vec![
            Reply::Bulk(b"message".to_vec()),
            Reply::Bulk(b"news".to_vec()),
            Reply::Bulk(b"hello".to_vec()),
        ])
    );
    assert_eq!(
        publisher.cmd(&["RPUSH", "queue", "job"]).await,
        Reply::Int(1)
    );
    assert_eq!(
        blocked.read_reply().await.expect("the BLPOP reply"),
        Reply::Array(vec![
            Reply::Bulk(b"queue".to_vec()),
            Reply::Bulk(b"job".to_vec())
        ])
    );
    assert_eq!(active.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
}

/// With several event loops (`--threads 2`, each with its own listener on the
/// same port), `--max-clients` is still one limit for the process, wherever
/// the kernel hands each connection.
#[tokio::test]
async fn max_clients_is_one_limit_across_event_loops() {
    let redis = RedisServer::start();
    let proxy = ProxyProcess::start(&redis.url(), &["--threads", "2", "--max-clients", "4"]);
    let mut served = Vec::new();
    let mut refused = 0;
    // One at a time, each answered before the next connects, so the count
    // is exact; 12 connections reach both loops all but surely.
    for _ in 0..12 {
        let mut client = TestClient::connect(proxy.addr()).await.expect("connect");
        match client.try_cmd(&["PING"]).await {
            Ok(Reply::Simple(s)) if s == "PONG" => served.push(client),
            Ok(Reply::Error(e)) if e == "ERR max number of clients reached" => refused += 1,
            other => panic!("unexpected answer: {other:?}"),
        }
    }
    assert_eq!((served.len(), refused), (4, 8));
    for client in &mut served {
        assert_eq!(
            client.cmd(&["ECHO", "still"]).await,
            Reply::Bulk(b"still".to_vec())
        );
    }
    // INFO respool sums both loops' counters, wherever each client landed:
    // 4 PINGs, 4 ECHOs and this INFO; 8 refusals.
    let info = served[0].respool_counters().await;
    assert_eq!(counter(&info, "event_loops"), 2, "{info:?}");
    assert_eq!(counter(&info, "requests"), 9, "{info:?}");
    assert_eq!(counter(&info, "rejected_clients"), 8, "{info:?}");
    assert_eq!(counter(&info, "connected_clients"), 4, "{info:?}");
}

/// `--max-connections` counts upstream connections for the whole process:
/// with two event loops and the default of 2, each loop has one lane, so
/// Redis sees two shared connections, not four.
#[tokio::test]
async fn max_connections_is_a_total_across_event_loops() {
    let redis = RedisServer::start();
    let proxy = ProxyProcess::start(
        &redis.url(),
        &[
            "--threads",
            "2",
            "--max-connections",
            "2",
            "--min-idle",
            "0",
        ],
    );
    // Clients on both loops (the kernel spreads 12 connections), each served.
    let mut clients = Vec::new();
    for i in 0..12 {
        let mut client = TestClient::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            client.cmd(&["ECHO", &i.to_string()]).await,
            Reply::Bulk(i.to_string().into_bytes())
        );
        clients.push(client);
    }
    let upstream_connections = || redis.other_clients().len();
    support::wait::until_async(
        "both loops' lanes to be connected",
        Duration::from_secs(20),
        || upstream_connections() >= 2,
    )
    .await;
    // More requests on every client: no loop opens a second lane.
    for client in &mut clients {
        assert_eq!(client.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    }
    assert_eq!(upstream_connections(), 2);
}
