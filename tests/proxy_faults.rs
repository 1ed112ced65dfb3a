//! The proxy under upstream faults: a killed and restarted Redis, an upstream
//! that is down at start, a blackholed connection, connections reset or cut
//! after a request was written, and a graceful shutdown with requests in
//! flight (DESIGN.md invariants 1, 3 and 6).

mod support;

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::client::encode_command;
use support::{counter, wait, FaultRelay, RedisServer, RelayMode, Reply, TestClient, TestProxy};

/// The error for a write whose connection was lost after it was sent.
const AMBIGUOUS: &str = "ERR upstream connection lost; the command may or may not have executed";

/// Flags for a proxy whose upstream replies get cut: `--validate ping` keeps
/// the probe's GET out of GET call counts; long deadlines and a short backoff
/// let resends wait for the relay to pass again, then go out at once.
const CUT_THEN_RETRY: &[&str] = &[
    "--validate",
    "ping",
    "--timeout",
    "15s",
    "--checkout-timeout",
    "10s",
    "--backoff-cap",
    "100ms",
];

/// Waits until the proxy opens a new connection through `relay` (more than
/// `accepted`: the cut connection is gone), then switches the relay to
/// `mode`.
async fn once_reconnecting_set(relay: &FaultRelay, accepted: u64, mode: RelayMode) {
    wait::until_async(
        "the proxy to reconnect after the cut",
        Duration::from_secs(20),
        || relay.connections_accepted() > accepted,
    )
    .await;
    relay.set_mode(mode);
}

fn bulk(s: impl AsRef<[u8]>) -> Reply {
    Reply::Bulk(s.as_ref().to_vec())
}

/// Whether `reply` is one of the proxy's own upstream-failure errors.
fn is_upstream_error(reply: &Reply) -> bool {
    matches!(reply, Reply::Error(e) if e.starts_with("ERR upstream "))
}

/// A loopback port nothing listens on (bound a moment ago, then released).
fn unused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding port 0");
    let port = listener.local_addr().expect("local addr").port();
    assert_ne!(port, 6379);
    port
}

/// Sends commands until one gets a non-error reply, allowing only the
/// proxy's upstream-failure errors meanwhile; returns that reply.
async fn until_served(client: &mut TestClient, command: &[&str], within: Duration) -> Reply {
    wait::until_ok(&format!("{command:?} to be served"), within, async || {
        let reply = client.cmd(command).await;
        if !reply.is_error() {
            return Ok(reply);
        }
        assert!(is_upstream_error(&reply), "{command:?} answered {reply}");
        Err(format!("{command:?} still failing: {reply}"))
    })
    .await
}

/// Waits until the proxy has validated at least `count` upstream
/// connections (`INFO respool`), and returns how many it has.
async fn until_validated(client: &mut TestClient, count: u64) -> u64 {
    let what = format!("{count} validated upstream connections");
    wait::until_ok(&what, wait::DEADLINE, async || {
        let validated = counter(
            &client.respool_counters().await,
            "upstream_connections_validated",
        );
        if validated >= count {
            Ok(validated)
        } else {
            Err(format!("{validated} upstream connections validated"))
        }
    })
    .await
}

/// What one load-generating client saw.
#[derive(Default)]
struct LoadStats {
    /// Rounds in which every request succeeded.
    ok_rounds: AtomicU64,
    /// Error replies (all of them upstream-failure errors, or a mismatch is
    /// recorded).
    errors: AtomicU64,
    /// Slowest round, in milliseconds.
    slowest_ms: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_and_restarted_mid_load() {
    const CLIENTS: usize = 16;
    let redis = RedisServer::start();
    let proxy = Arc::new(
        TestProxy::start(
            &redis.url(),
            &[
                "--timeout",
                "2s",
                "--checkout-timeout",
                "1s",
                "--backoff-cap",
                "200ms",
            ],
        )
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mismatches = Arc::new(Mutex::new(Vec::<String>::new()));
    let stats: Vec<Arc<LoadStats>> = (0..CLIENTS).map(|_| Arc::default()).collect();

    let mut tasks = Vec::new();
    for (c, stats) in stats.iter().enumerate() {
        let (proxy, stop, mismatches, stats) = (
            Arc::clone(&proxy),
            Arc::clone(&stop),
            Arc::clone(&mismatches),
            Arc::clone(stats),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = proxy.client().await;
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let key = format!("load:{c}");
                let value = format!("value:{c}:{n}");
                let token = format!("token:{c}:{n}");
                let mut out = encode_command(&["SET", &key, &value]);
                out.extend(encode_command(&["GET", &key]));
                out.extend(encode_command(&["ECHO", &token]));
                let started = Instant::now();
                client.send_raw(&out).await.expect("client write");
                let mut replies = Vec::new();
                for i in 0..3 {
                    match client.read_reply().await {
                        Ok(reply) => replies.push(reply),
                        Err(e) => panic!("client {c} round {n} reply {i}: {e}"),
                    }
                }
                stats
                    .slowest_ms
                    .fetch_max(started.elapsed().as_millis() as u64, Ordering::SeqCst);
                let errors = replies.iter().filter(|r| r.is_error()).count() as u64;
                stats.errors.fetch_add(errors, Ordering::SeqCst);
                // SET: OK or an upstream error. GET: our own value, nil (the
                // SET may not have run, or ran on the server that was then
                // killed) or an upstream error; never someone else's value.
                // ECHO: our own token or an upstream error.
                let fine = [
                    replies[0] == Reply::Simple("OK".into()),
                    replies[1] == bulk(&value) || replies[1] == Reply::Nil,
                    replies[2] == bulk(&token),
                ];
                for (i, reply) in replies.iter().enumerate() {
                    if !fine[i] && !is_upstream_error(reply) {
                        mismatches
                            .lock()
                            .unwrap()
                            .push(format!("client {c} round {n} reply {i}: {reply}"));
                    }
                }
                if errors == 0 {
                    stats.ok_rounds.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }

    let all_reach = |what: &str, counter: fn(&LoadStats) -> u64, at_least: Vec<u64>| {
        let stats = stats.clone();
        let what = what.to_string();
        async move {
            wait::until_async(&what, Duration::from_secs(30), || {
                stats
                    .iter()
                    .zip(&at_least)
                    .all(|(s, &min)| counter(s) >= min)
            })
            .await
        }
    };
    let ok_rounds = |s: &LoadStats| s.ok_rounds.load(Ordering::SeqCst);
    let errors = |s: &LoadStats| s.errors.load(Ordering::SeqCst);

    all_reach("every client to be served", ok_rounds, vec![5; CLIENTS]).await;
    redis.kill();
    all_reach(
        "every client to get an error while Redis is down",
        errors,
        vec![1; CLIENTS],
    )
    .await;
    redis.restart();
    let served: Vec<u64> = stats.iter().map(|s| ok_rounds(s) + 5).collect();
    all_reach(
        "every client to be served again after the restart",
        ok_rounds,
        served,
    )
    .await;

    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("client task panicked");
    }
    let mismatches = mismatches.lock().unwrap();
    assert!(
        mismatches.is_empty(),
        "{} mismatched replies: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
    // --timeout 2s (--checkout-timeout 1s is shorter) bounds every request;
    // allow 4 s more for a loaded machine.
    let slowest = stats
        .iter()
        .map(|s| s.slowest_ms.load(Ordering::SeqCst))
        .max()
        .unwrap_or(0);
    assert!(
        slowest < 6_000,
        "a round took {slowest} ms despite --timeout 2s"
    );
}

#[tokio::test]
async fn upstream_down_at_start_then_served_once_it_comes_up() {
    let port = unused_port();
    let url = format!("redis://127.0.0.1:{port}");
    let proxy = TestProxy::start(
        &url,
        &["--checkout-timeout", "1s", "--backoff-cap", "200ms"],
    )
    .await;
    let mut client = proxy.client().await;

    let started = Instant::now();
    let reply = client.cmd(&["SET", "k", "v"]).await;
    let took = started.elapsed();
    let Reply::Error(text) = &reply else {
        panic!("SET with no upstream answered {reply}");
    };
    let prefix = format!("ERR upstream 127.0.0.1:{port} unavailable: connection refused (retried ");
    assert!(
        text.starts_with(&prefix) && text.ends_with(')'),
        "unexpected error: {text}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "the error came after {took:?}, expected about --checkout-timeout 1s"
    );

    // Redis appears on that port: the same proxy serves requests.
    let redis = RedisServer::builder()
        .arg("port", &port.to_string())
        .start();
    until_served(&mut client, &["SET", "k", "v"], Duration::from_secs(20))
        .await
        .expect_ok();
    assert_eq!(client.cmd(&["GET", "k"]).await, bulk("v"));
    assert_eq!(redis.command(&[b"GET", b"k"]), bulk("v"));
}

/// HELLO's reply carries the server's version, which respool learns when it
/// validates a connection. Before the first one it waits for it, as a command
/// would wait for the upstream, instead of answering with a made-up version.
#[tokio::test]
async fn hello_waits_for_the_first_validated_connection_to_report_the_version() {
    let port = unused_port();
    let url = format!("redis://127.0.0.1:{port}");
    let flags = ["--backoff-cap", "100ms", "--checkout-timeout", "500ms"];

    // Redis never comes: HELLO fails after --hold-timeout, saying why, and
    // changes nothing (the client still speaks RESP2).
    let proxy = TestProxy::start(&url, &[&flags[..], &["--hold-timeout", "500ms"]].concat()).await;
    let mut client = proxy.client().await;
    let started = Instant::now();
    let reply = client.cmd(&["HELLO", "3"]).await;
    assert_eq!(
        reply,
        Reply::Error(format!("ERR upstream 127.0.0.1:{port} unavailable: no connection validated within 500ms (HELLO answers with the server's version; retry once Redis is up)")),
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "HELLO failed after {:?}, before --hold-timeout",
        started.elapsed()
    );
    // A HELLO that would fail anyway is answered at once.
    client
        .cmd(&["HELLO", "4"])
        .await
        .expect_error_code("NOPROTO");
    proxy.shutdown().await;

    // Redis comes up while HELLO waits: the reply carries its version.
    let proxy = TestProxy::start(&url, &[&flags[..], &["--hold-timeout", "60s"]].concat()).await;
    let mut client = proxy.client().await;
    client.send(&["HELLO", "3"]).await.unwrap();
    let early = client.read_reply_within(Duration::from_millis(300)).await;
    assert!(
        matches!(early, Err(support::client::ReadError::Timeout { .. })),
        "HELLO was answered with no upstream: {early:?}"
    );
    let redis = RedisServer::builder()
        .arg("port", &port.to_string())
        .start();
    let hello = client
        .read_reply_within(Duration::from_secs(30))
        .await
        .expect("HELLO answered once Redis is up");
    let Reply::Map(fields) = &hello else {
        panic!("HELLO 3 answered {hello}");
    };
    let info = redis.command(&[b"INFO", b"server"]);
    let info =
        String::from_utf8_lossy(info.as_bytes().expect("INFO is a bulk string")).into_owned();
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .expect("INFO names the version")
        .trim()
        .to_string();
    assert!(
        fields.contains(&(
            Reply::Bulk(b"version".to_vec()),
            Reply::Bulk(version.clone().into_bytes())
        )),
        "HELLO should report version {version}: {hello}"
    );
    assert!(
        fields.contains(&(Reply::Bulk(b"proto".to_vec()), Reply::Int(3))),
        "{hello}"
    );
}

/// A client that hangs up while its HELLO waits for the first validated
/// connection is gone at once: it does not keep its `--max-clients` slot
/// until `--hold-timeout` ends the wait.
#[tokio::test]
async fn a_client_that_hangs_up_while_hello_waits_frees_its_slot() {
    let port = unused_port();
    let url = format!("redis://127.0.0.1:{port}");
    let proxy = TestProxy::start(
        &url,
        &[
            "--backoff-cap",
            "100ms",
            "--max-clients",
            "1",
            "--hold-timeout",
            "120s",
        ],
    )
    .await;
    let mut waiting = proxy.client().await;
    waiting.send(&["HELLO", "3"]).await.unwrap();
    let early = waiting.read_reply_within(Duration::from_millis(300)).await;
    assert!(
        matches!(early, Err(support::client::ReadError::Timeout { .. })),
        "HELLO was answered with no upstream: {early:?}"
    );
    drop(waiting);

    // Without the watch, the slot would stay taken for the 120 s wait.
    // (CLIENT ID is answered by respool itself, with Redis still down.)
    wait::until_ok(
        "the slot of a client that hung up during HELLO to be freed",
        Duration::from_secs(30),
        async || {
            let mut newcomer = proxy.client().await;
            match newcomer.try_cmd(&["CLIENT", "ID"]).await {
                Ok(Reply::Int(_)) => Ok(()),
                Ok(Reply::Error(e)) if e == "ERR max number of clients reached" => Err(e),
                Err(e) if e.is_closed() => Err("a newcomer's connection was closed".into()),
                other => panic!("unexpected answer to a newcomer: {other:?}"),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn require_upstream_refuses_to_start_without_an_upstream() {
    let port = unused_port();
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    let error = match TestProxy::try_start(
        &url,
        &[
            "--require-upstream",
            "--retries",
            "2",
            "--backoff-base",
            "10ms",
        ],
    )
    .await
    {
        Ok(proxy) => panic!(
            "the proxy started on {} with its upstream down",
            proxy.addr()
        ),
        Err(e) => e,
    };
    assert_eq!(
        error,
        format!("upstream 127.0.0.1:{port} unavailable at start: connection refused")
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // With the upstream up, the same flags start a working proxy.
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &["--require-upstream"]).await;
    let mut client = proxy.client().await;
    assert_eq!(client.cmd(&["ECHO", "up"]).await, bulk("up"));
}

#[tokio::test]
async fn blackholed_upstream_times_out_then_recovers_on_a_new_connection() {
    let redis = RedisServer::start();
    let relay = FaultRelay::start(redis.addr());
    let proxy = TestProxy::start(
        &format!("redis://{}", relay.addr()),
        &[
            "--timeout",
            "1s",
            "--max-connections",
            "1",
            "--backoff-cap",
            "200ms",
        ],
    )
    .await;
    let mut client = proxy.client().await;
    client.cmd(&["SET", "k", "before"]).await.expect_ok();
    let accepted = relay.connections_accepted();

    relay.set_mode(RelayMode::Blackhole);
    let started = Instant::now();
    let reply = client.cmd(&["GET", "k"]).await;
    let took = started.elapsed();
    assert_eq!(
        reply,
        Reply::Error(format!(
            "ERR upstream {} timed out after 1.0s; the command may or may not have executed",
            relay.addr()
        ))
    );
    assert!(
        took >= Duration::from_millis(800) && took <= Duration::from_secs(3),
        "the timeout error came after {took:?}, expected about 1 s"
    );

    relay.set_mode(RelayMode::Pass);
    assert_eq!(
        until_served(&mut client, &["GET", "k"], Duration::from_secs(20)).await,
        bulk("before")
    );
    client.cmd(&["SET", "k", "after"]).await.expect_ok();
    assert_eq!(redis.command(&[b"GET", b"k"]), bulk("after"));
    assert!(
        relay.connections_accepted() > accepted,
        "the timed-out connection was reused instead of replaced"
    );
}

#[tokio::test]
async fn a_write_lost_after_sending_is_reported_and_never_resent_while_a_read_is_retried() {
    let redis = RedisServer::start();
    let relay = FaultRelay::start(redis.addr());
    let proxy = TestProxy::behind_relay(&relay, CUT_THEN_RETRY).await;
    let mut client = proxy.client().await;
    assert_eq!(client.cmd(&["INCR", "counter"]).await, Reply::Int(1));
    client.cmd(&["SET", "k", "value"]).await.expect_ok();

    // The INCR reaches Redis and runs; its reply is cut off.
    let before = client.respool_counters().await;
    relay.set_mode(RelayMode::CutReplyAfter(0));
    assert_eq!(
        client.cmd(&["INCR", "counter"]).await,
        Reply::Error(AMBIGUOUS.into())
    );
    relay.set_mode(RelayMode::Pass);
    // INFO respool counts it: one request failed, a shared connection broke.
    let after = client.respool_counters().await;
    let delta = |field| counter(&after, field) - counter(&before, field);
    assert_eq!(delta("requests_failed"), 1, "{after:?}");
    assert_eq!(delta("requests_resent"), 0, "{after:?}");
    assert!(delta("lane_connections_broken") >= 1, "{after:?}");
    assert_eq!(redis.command(&[b"GET", b"counter"]), bulk("2"));
    assert_eq!(
        client.cmd(&["INCR", "counter"]).await,
        Reply::Int(3),
        "after the lost INCR, the next one must be the third to run"
    );

    // A GET whose reply is cut is sent again on a new connection and the
    // client sees only the value.
    let gets = redis.command_calls("get");
    let before = client.respool_counters().await;
    let accepted = relay.connections_accepted();
    relay.set_mode(RelayMode::CutReplyAfter(0));
    client.send(&["GET", "k"]).await.expect("send GET");
    // The lane reconnecting proves the GET's connection was cut; the retry
    // then waits (validation fails under the cut) until the relay passes.
    once_reconnecting_set(&relay, accepted, RelayMode::Pass).await;
    assert_eq!(client.read_reply().await.expect("GET reply"), bulk("value"));
    assert_eq!(
        redis.command_calls("get") - gets,
        2,
        "the GET should have run exactly twice upstream (cut, then retried)"
    );
    let after = client.respool_counters().await;
    let delta = |field| counter(&after, field) - counter(&before, field);
    assert_eq!(delta("requests_resent"), 1, "{after:?}");
    assert_eq!(delta("requests_failed"), 0, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incrs_in_flight_during_resets_are_never_applied_twice() {
    const CLIENTS: usize = 4;
    const BATCH: usize = 50;
    const RESETS: usize = 5;
    let redis = RedisServer::start();
    let relay = Arc::new(FaultRelay::start(redis.addr()));
    let proxy = Arc::new(
        TestProxy::start(
            &format!("redis://{}", relay.addr()),
            &["--max-connections", "2", "--backoff-cap", "100ms"],
        )
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let replies_seen = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (proxy, stop, replies_seen) = (
            Arc::clone(&proxy),
            Arc::clone(&stop),
            Arc::clone(&replies_seen),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = proxy.client().await;
            let mut replies = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let out: Vec<u8> = (0..BATCH)
                    .flat_map(|_| encode_command(&["INCR", "counter"]))
                    .collect();
                client.send_raw(&out).await.expect("client write");
                for i in 0..BATCH {
                    match client.read_reply().await {
                        Ok(reply) => replies.push(reply),
                        Err(e) => panic!("client {c} reply {i}: {e}"),
                    }
                    replies_seen.fetch_add(1, Ordering::SeqCst);
                }
            }
            replies
        }));
    }

    for round in 0..RESETS {
        let seen = replies_seen.load(Ordering::SeqCst);
        wait::until_async(
            &format!("INCR replies to flow before reset {round}"),
            Duration::from_secs(20),
            || replies_seen.load(Ordering::SeqCst) >= seen + 200,
        )
        .await;
        let relay = Arc::clone(&relay);
        tokio::task::spawn_blocking(move || relay.set_mode(RelayMode::ResetNow))
            .await
            .expect("reset");
    }
    let seen = replies_seen.load(Ordering::SeqCst);
    wait::until_async(
        "INCR replies to flow after the last reset",
        Duration::from_secs(20),
        || replies_seen.load(Ordering::SeqCst) >= seen + 200,
    )
    .await;
    stop.store(true, Ordering::SeqCst);

    let mut successes = HashSet::new();
    let (mut ambiguous, mut not_run) = (0u64, 0u64);
    for task in tasks {
        for reply in task.await.expect("client task panicked") {
            match reply {
                Reply::Int(n) => assert!(successes.insert(n), "two INCRs both returned {n}"),
                Reply::Error(e) if e == AMBIGUOUS || e.contains("may or may not") => ambiguous += 1,
                Reply::Error(e) if e.starts_with("ERR upstream ") => not_run += 1,
                other => panic!("unexpected INCR reply {other}"),
            }
        }
    }
    let final_count: u64 = redis
        .command(&[b"GET", b"counter"])
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("the counter");
    let successes_n = successes.len() as u64;
    eprintln!(
        "counter {final_count}: {successes_n} INCRs succeeded, {ambiguous} ambiguous, {not_run} not run"
    );
    assert!(
        final_count >= successes_n && final_count <= successes_n + ambiguous,
        "counter {final_count}, {successes_n} INCRs succeeded, {ambiguous} ambiguous, {not_run} not run"
    );
    let highest = successes.iter().copied().max().unwrap_or(0) as u64;
    assert!(
        highest <= final_count,
        "an INCR returned {highest} but the counter is {final_count}"
    );
    assert!(
        ambiguous > 0 || not_run > 0,
        "{RESETS} resets under load produced no error at all: were the connections reset?"
    );
}

#[tokio::test]
async fn graceful_shutdown_delivers_replies_in_flight() {
    const N: usize = 100;
    let redis = RedisServer::start();
    let relay = FaultRelay::start(redis.addr());
    let proxy = TestProxy::behind_relay(&relay, &[]).await;
    let addr = proxy.addr();
    let mut client = proxy.client().await;
    assert_eq!(client.cmd(&["INCR", "n"]).await, Reply::Int(1));

    // Replies held back for a while, so that they are still in flight when
    // the shutdown begins.
    relay.set_mode(RelayMode::Delay(Duration::from_millis(500)));
    let mut out = Vec::new();
    for i in 0..N {
        out.extend(encode_command(&["INCR", "n"]));
        out.extend(encode_command(&["ECHO", &i.to_string()]));
    }
    let before = relay.bytes_to_upstream();
    client.send_raw(&out).await.expect("pipeline");
    wait::until_async(
        "the pipeline to reach Redis",
        Duration::from_secs(20),
        || relay.bytes_to_upstream() >= before + out.len() as u64,
    )
    .await;

    proxy.shutdown().await;
    for i in 0..N {
        assert_eq!(
            client.read_reply().await.expect("INCR reply"),
            Reply::Int(i as i64 + 2),
            "INCR {i}"
        );
        assert_eq!(
            client.read_reply().await.expect("ECHO reply"),
            bulk(i.to_string()),
            "ECHO {i}"
        );
    }
    match client.read_reply().await {
        Err(e) if e.is_closed() => {}
        other => panic!("expected the connection to close after shutdown, got {other:?}"),
    }
    assert!(
        TestClient::connect(addr).await.is_err(),
        "the proxy still accepts connections after shutdown"
    );
}

#[tokio::test]
async fn a_reply_cut_mid_way_is_never_delivered_in_part() {
    let redis = RedisServer::start();
    let relay = FaultRelay::start(redis.addr());
    let proxy = TestProxy::behind_relay(
        &relay,
        &[
            "--validate",
            "write",
            "--timeout",
            "15s",
            "--checkout-timeout",
            "10s",
            "--backoff-cap",
            "100ms",
        ],
    )
    .await;
    let mut client = proxy.client().await;
    let value: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    client
        .cmd(&[b"SET".as_slice(), b"big", &value])
        .await
        .expect_ok();

    // The first 50 bytes of the 1 MB reply arrive, then the connection
    // closes: the proxy must drop the partial reply and, GET being safe to
    // resend, fetch it again in full. 50 bytes also cut the validation
    // replies (PONG, OK, the probe value, DEL's 1: 55 bytes), so the retry
    // waits for the relay to pass again instead of being cut repeatedly.
    let accepted = relay.connections_accepted();
    relay.set_mode(RelayMode::CutReplyAfter(50));
    client.send(&["GET", "big"]).await.expect("send GET");
    once_reconnecting_set(&relay, accepted, RelayMode::Pass).await;
    let reply = client.read_reply().await.expect("GET reply");
    match &reply {
        Reply::Bulk(got) => assert!(
            *got == value,
            "GET big came back altered ({} bytes)",
            got.len()
        ),
        other => panic!("GET big answered {other}"),
    }
    assert_eq!(client.cmd(&["ECHO", "next"]).await, bulk("next"));
}

#[tokio::test]
async fn replies_arriving_in_tiny_pieces_are_reassembled_in_order() {
    let redis = RedisServer::start();
    let relay = FaultRelay::start(redis.addr());
    let proxy = TestProxy::start(&format!("redis://{}", relay.addr()), &[]).await;
    let mut client = proxy.client().await;
    client.cmd(&["RPUSH", "list", "a", "bb", "ccc"]).await;

    relay.set_mode(RelayMode::Slice(3));
    let commands: Vec<Vec<&str>> = vec![
        vec!["SET", "k", "some value"],
        vec!["GET", "k"],
        vec!["LRANGE", "list", "0", "-1"],
        vec!["GET", "missing"],
        vec!["INCR", "k"],
        vec!["ECHO", "done"],
    ];
    let mut out = Vec::new();
    for command in &commands {
        out.extend(encode_command(command));
    }
    client.send_raw(&out).await.expect("pipeline");
    let expected = [
        Reply::Simple("OK".into()),
        bulk("some value"),
        Reply::Array(vec![bulk("a"), bulk("bb"), bulk("ccc")]),
        Reply::Nil,
        Reply::Error("ERR value is not an integer or out of range".into()),
        bulk("done"),
    ];
    for (command, want) in commands.iter().zip(&expected) {
        assert_eq!(
            &client.read_reply().await.expect("a reply"),
            want,
            "{command:?}"
        );
    }
}

/// A pipeline crosses into the lane as one run of requests. When the
/// connection breaks after part of the run was answered, each request of the
/// rest is settled on its own: the answered one is not repeated, the write is
/// reported as in doubt (never resent), and the reads are resent — in order.
#[tokio::test]
async fn a_pipeline_cut_after_its_first_reply_is_settled_request_by_request() {
    let redis = RedisServer::start();
    let relay = FaultRelay::start(redis.addr());
    let proxy = TestProxy::behind_relay(&relay, CUT_THEN_RETRY).await;
    let mut client = proxy.client().await;
    client.cmd(&["SET", "k", "value"]).await.expect_ok();
    let gets = redis.command_calls("get");

    // 4 bytes: the first reply (":1\r\n") passes, then both sides are
    // closed. New connections cannot validate either (PONG is 7 bytes), so
    // the resends wait until the relay passes again.
    let accepted = relay.connections_accepted();
    relay.set_mode(RelayMode::CutReplyAfter(4));
    let pipeline: Vec<u8> = [
        encode_command(&["INCR", "a"]),
        encode_command(&["GET", "k"]),
        encode_command(&["INCR", "b"]),
        encode_command(&["GET", "k"]),
    ]
    .concat();
    client.send_raw(&pipeline).await.expect("send the pipeline");
    once_reconnecting_set(&relay, accepted, RelayMode::Pass).await;
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(client.read_reply().await.expect("a reply"));
    }
    assert_eq!(
        replies,
        vec![
            Reply::Int(1),
            bulk("value"),
            Reply::Error(AMBIGUOUS.into()),
            bulk("value"),
        ]
    );
    assert_eq!(redis.command(&[b"GET", b"a"]), bulk("1"), "INCR a ran once");
    assert_eq!(redis.command(&[b"GET", b"b"]), bulk("1"), "INCR b ran once");
    // Two GETs, both resent once (plus the two GETs just made here).
    assert_eq!(redis.command_calls("get") - gets, 4 + 2);
    assert_eq!(client.cmd(&["ECHO", "next"]).await, bulk("next"));
}

/// A `-LOADING` reply in the middle of a pipelined run: the replies before it
/// are delivered, the request it answered is held and resent, and the replies
/// after it still reach the right requests — in order.
#[tokio::test]
async fn a_loading_reply_inside_a_pipeline_holds_only_its_request() {
    let redis = RedisServer::start();
    let relay = FaultRelay::start(redis.addr());
    let proxy = TestProxy::behind_relay(&relay, &["--backoff-cap", "100ms"]).await;
    let mut client = proxy.client().await;
    client.cmd(&["SET", "k", "value"]).await.expect_ok();
    let gets = redis.command_calls("get");
    let before = client.respool_counters().await;

    // Redis answers the three GETs in one write; the relay swaps that chunk
    // for three replies of which the second says LOADING.
    relay.set_mode(RelayMode::InjectReply(
        b"$5\r\nfirst\r\n-LOADING Redis is loading the dataset in memory\r\n$5\r\nthird\r\n",
    ));
    let pipeline: Vec<u8> = [
        encode_command(&["GET", "k"]),
        encode_command(&["GET", "k"]),
        encode_command(&["GET", "k"]),
    ]
    .concat();
    client.send_raw(&pipeline).await.expect("send the pipeline");
    let mut replies = Vec::new();
    for _ in 0..3 {
        replies.push(client.read_reply().await.expect("a reply"));
    }
    assert_eq!(replies, vec![bulk("first"), bulk("value"), bulk("third")]);
    assert_eq!(
        redis.command_calls("get") - gets,
        4,
        "three GETs and one resend of the held one"
    );
    let after = client.respool_counters().await;
    let delta = |field| counter(&after, field) - counter(&before, field);
    assert_eq!(delta("requests_held"), 1, "{after:?}");
    assert_eq!(delta("requests_failed"), 0, "{after:?}");
    assert_eq!(client.cmd(&["ECHO", "next"]).await, bulk("next"));
}

/// A `-LOADING` reply for a write whose client's next request then ran
/// (loading ended between the two): resending the held write would run it
/// after the later one — here, `SET k one` would undo `SET k two`. The held
/// write gets Redis's own answer instead, as it would without respool.
#[tokio::test]
async fn a_held_write_overtaken_by_its_clients_next_request_is_not_resent() {
    let redis = RedisServer::start();
    let relay = FaultRelay::start(redis.addr());
    let proxy = TestProxy::behind_relay(&relay, &["--backoff-cap", "100ms"]).await;
    let mut client = proxy.client().await;
    client.cmd(&["PING"]).await;
    let sets = redis.command_calls("set");

    // Redis runs both SETs and answers them in one write; the relay swaps
    // that chunk for LOADING followed by OK.
    relay.set_mode(RelayMode::InjectReply(
        b"-LOADING Redis is loading the dataset in memory\r\n+OK\r\n",
    ));
    let pipeline: Vec<u8> = [
        encode_command(&["SET", "k", "one"]),
        encode_command(&["SET", "k", "two"]),
    ]
    .concat();
    client.send_raw(&pipeline).await.expect("send the pipeline");
    let mut replies = Vec::new();
    for _ in 0..2 {
        replies.push(client.read_reply().await.expect("a reply"));
    }
    assert_eq!(
        replies,
        vec![
            Reply::Error("LOADING Redis is loading the dataset in memory".into()),
            Reply::Simple("OK".into()),
        ]
    );
    assert_eq!(
        redis.command_calls("set") - sets,
        2,
        "no resend of the held SET"
    );
    assert_eq!(
        redis.command(&[b"GET", b"k"]),
        bulk("two"),
        "the client's last write stands"
    );
    assert_eq!(client.cmd(&["ECHO", "next"]).await, bulk("next"));
}

/// A read that was written, lost with its connection, and could not be
/// resent before its `--hold-timeout` ran out (the upstream stays
/// unreachable) is answered with the outage — not with a reply timeout that
/// never happened.
#[tokio::test]
async fn a_read_that_cannot_be_resent_in_time_reports_the_outage() {
    let redis = RedisServer::start();
    let relay = FaultRelay::start(redis.addr());
    let proxy = TestProxy::behind_relay(
        &relay,
        &[
            "--validate",
            "ping",
            "--timeout",
            "15s",
            "--hold-timeout",
            "1s",
            "--backoff-cap",
            "100ms",
        ],
    )
    .await;
    let mut client = proxy.client().await;
    client.cmd(&["SET", "k", "value"]).await.expect_ok();

    let accepted = relay.connections_accepted();
    relay.set_mode(RelayMode::CutReplyAfter(0));
    client.send(&["GET", "k"]).await.expect("send GET");
    // Down for good: every connection, the one just opened included, is
    // reset.
    once_reconnecting_set(&relay, accepted, RelayMode::AcceptAndReset).await;
    let reply = client.read_reply().await.expect("GET reply");
    let Reply::Error(text) = &reply else {
        panic!("GET answered {reply} while the upstream was unreachable");
    };
    let expected = format!("ERR upstream {} unavailable: ", relay.addr());
    assert!(
        text.starts_with(&expected) && text.contains("retried"),
        "GET answered {text:?}"
    );
    relay.set_mode(RelayMode::Pass);
    assert_eq!(client.cmd(&["GET", "k"]).await, bulk("value"));
}

/// Issue #18: isolated connection losses, each after the connection served
/// requests again, must each cost about the same — the backoff starts again
/// from `--backoff-base` once a connection has served, and the validated
/// `--min-idle` spare takes over at once. Each reset costs the GET one extra
/// round trip (it is resent), not a backoff that grows from one reset to the
/// next: with the delay doubling from 50 ms towards the 2 s cap, the tenth
/// would wait at least a second.
#[tokio::test]
async fn isolated_resets_each_cost_a_resend_not_a_growing_backoff() {
    const RESETS: usize = 10;
    let redis = RedisServer::start();
    redis.command(&[b"SET", b"k", b"value"]).expect_ok();
    let relay = FaultRelay::start(redis.addr());
    let proxy = TestProxy::start(
        &format!("redis://{}", relay.addr()),
        &[
            "--max-connections",
            "1",
            "--min-idle",
            "1",
            "--health-check-interval",
            "0s",
            // Validation's probe would be a GET: keep GET calls the client's.
            "--validate",
            "ping",
            "--backoff-base",
            "50ms",
            "--backoff-cap",
            "2s",
            // Long enough that a growing backoff shows as latency, not as
            // an error.
            "--checkout-timeout",
            "10s",
            "--hold-timeout",
            "10s",
        ],
    )
    .await;
    let mut client = proxy.client().await;
    let before = client.respool_counters().await;
    let gets = redis.command_calls("get");

    let mut latencies = Vec::with_capacity(RESETS);
    for round in 1..=RESETS {
        // The lane's connection serves again between two resets.
        for _ in 0..3 {
            assert_eq!(client.cmd(&["GET", "k"]).await, bulk("value"));
        }
        // The spare is validated and idle (validated so far: the lane's
        // first connection, its spare, one more spare per reset), so the
        // relay's next reply is the GET's, not a validation reply.
        let validated = until_validated(&mut client, 1 + round as u64).await;
        assert_eq!(validated, 1 + round as u64, "connections validated");
        wait::until_async(
            "the relay to carry the lane's connection and the spare only",
            wait::DEADLINE,
            || relay.active_connections() == 2,
        )
        .await;

        relay.set_mode(RelayMode::ResetInsteadOfReply);
        let started = Instant::now();
        let reply = client.cmd(&["GET", "k"]).await;
        latencies.push(started.elapsed());
        assert_eq!(reply, bulk("value"), "the GET of reset {round}");
    }
    eprintln!("GET latency at each reset: {latencies:?}");

    let after = client.respool_counters().await;
    let delta = |field| counter(&after, field) - counter(&before, field);
    assert_eq!(delta("requests_resent"), RESETS as u64, "{after:?}");
    assert_eq!(delta("requests_failed"), 0, "{after:?}");
    assert_eq!(delta("lane_connections_broken"), RESETS as u64, "{after:?}");
    // Every reset GET ran twice upstream: lost, then resent.
    assert_eq!(redis.command_calls("get") - gets, (RESETS * (3 + 2)) as u64);

    // Without waiting: a reset costs a resend over the spare, not even the
    // first backoff delay (25 to 50 ms with its jitter). The fastest of ten
    // shows it even on a loaded machine.
    let fastest = latencies.iter().min().copied().unwrap_or_default();
    assert!(
        fastest < Duration::from_millis(25),
        "every reset cost a backoff delay or more; the fastest {fastest:?}, all: {latencies:?}"
    );

    // Generous: the tenth reset may cost up to three times the second, or
    // half a second more. A backoff still doubling from 50 ms would make it
    // ≥ 1 s against ≤ 100 ms for the second.
    let (second, tenth) = (latencies[1], latencies[RESETS - 1]);
    let bound = (second * 3).max(second + Duration::from_millis(500));
    assert!(
        tenth <= bound,
        "the tenth reset cost {tenth:?}, the second {second:?} (bound {bound:?}); all: {latencies:?}"
    );
}
