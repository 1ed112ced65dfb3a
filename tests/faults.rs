//! Behaviour under faults, at the figures issue #5 asks for: an upstream
//! killed under 200 clients, a blackholed upstream, connections reset under
//! 100 000 pipelined INCRs, a dataset loading slowly, a reconnect storm that
//! must not happen, and secrets that must never be logged (DESIGN.md
//! invariants 1, 3, 6 and 7).
//!
//! Each test prints what it measured (`cargo test --test faults --
//! --nocapture`). The tests take their timing figures one at a time: the
//! `SERIAL` lock keeps them from sharing the machine's two cores with each
//! other.

mod support;

use std::collections::HashSet;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::client::encode_command;
use support::{wait, FaultRelay, RedisServer, RelayMode, Reply, TestClient, TestProxy};

/// Held by every test in this file, so that their latency figures are not
/// skewed by each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bulk(s: impl AsRef<[u8]>) -> Reply {
    Reply::Bulk(s.as_ref().to_vec())
}

/// What an error reply from the proxy says about the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// It did not run ("unavailable", "not executed").
    NotRun,
    /// It may or may not have run ("may or may not have executed", or a read
    /// given up after repeated connection losses).
    Maybe,
}

/// Classifies one of the proxy's own upstream-failure errors; `None` for any
/// other reply.
fn failure(reply: &Reply) -> Option<Failure> {
    let Reply::Error(text) = reply else {
        return None;
    };
    if !text.starts_with("ERR upstream ") {
        return None;
    }
    if text.contains("may or may not have executed") || text.contains("; giving up") {
        Some(Failure::Maybe)
    } else if text.contains(" unavailable: ") || text.contains("it was not executed") {
        Some(Failure::NotRun)
    } else {
        None
    }
}

/// Runs a blocking harness call (kill, restart, relay mode) off the test's
/// runtime, so that client tasks keep running meanwhile.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking harness call panicked")
}

// ---------------------------------------------------------------------------
// 1. Upstream killed for 2 s under 200 clients.
// ---------------------------------------------------------------------------

/// What one client of `upstream_killed_for_2s_under_200_clients` saw.
#[derive(Default)]
struct ClientTally {
    /// Rounds (SET, GET, INCR) answered without any error.
    ok_rounds: AtomicU64,
    /// Error replies, by kind.
    not_run: AtomicU64,
    maybe: AtomicU64,
    /// Slowest single request, send to reply, in ms.
    slowest_ms: AtomicU64,
    /// The last INCR result and how many INCRs failed ambiguously since,
    /// for the final check against Redis.
    last_incr: AtomicU64,
    maybe_incrs_since: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_for_2s_under_200_clients() {
    const CLIENTS: usize = 200;
    const RECOVERY_ROUNDS: u64 = 5;
    const TIMEOUT: Duration = Duration::from_secs(2);
    let _serial = SERIAL.lock().await;
    // `appendfsync always`: every write acknowledged to a client survives the
    // SIGKILL, so the counters and values can be checked exactly across it.
    let redis = Arc::new(
        RedisServer::builder()
            .arg("appendonly", "yes")
            .arg("appendfsync", "always")
            .start(),
    );
    let proxy = Arc::new(
        TestProxy::start(
            &redis.url(),
            &[
                "--timeout",
                "2s",
                "--checkout-timeout",
                "3s",
                "--backoff-base",
                "50ms",
                "--backoff-cap",
                "200ms",
            ],
        )
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mismatches = Arc::new(Mutex::new(Vec::<String>::new()));
    let tallies: Vec<Arc<ClientTally>> = (0..CLIENTS).map(|_| Arc::default()).collect();

    let mut tasks = Vec::new();
    for (c, tally) in tallies.iter().enumerate() {
        let (proxy, stop, mismatches, tally) = (
            Arc::clone(&proxy),
            Arc::clone(&stop),
            Arc::clone(&mismatches),
            Arc::clone(tally),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = proxy.client().await;
            let key = format!("kill:{c}:value");
            let counter = format!("kill:{c}:counter");
            // Values GET may return: one after a SET that succeeded, more
            // after SETs whose outcome is unknown.
            let mut possible: HashSet<Option<Vec<u8>>> = HashSet::from([None]);
            let mismatch = |what: String| mismatches.lock().unwrap().push(what);
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let value = format!("value:{c}:{n}");
                let mut out = encode_command(&["SET", &key, &value]);
                out.extend(encode_command(&["GET", &key]));
                out.extend(encode_command(&["INCR", &counter]));
                let sent = Instant::now();
                client.send_raw(&out).await.expect("client write");
                let mut errors = 0;
                for i in 0..3 {
                    let reply = match client.read_reply().await {
                        Ok(reply) => reply,
                        Err(e) => panic!("client {c} round {n} reply {i}: {e}"),
                    };
                    tally
                        .slowest_ms
                        .fetch_max(sent.elapsed().as_millis() as u64, Ordering::SeqCst);
                    let failed = failure(&reply);
                    match failed {
                        Some(Failure::NotRun) => tally.not_run.fetch_add(1, Ordering::SeqCst),
                        Some(Failure::Maybe) => tally.maybe.fetch_add(1, Ordering::SeqCst),
                        None => 0,
                    };
                    errors += failed.is_some() as u32;
                    match (i, failed, &reply) {
                        (0, None, r) if *r == Reply::Simple("OK".into()) => {
                            possible = HashSet::from([Some(value.clone().into_bytes())]);
                        }
                        (0, Some(Failure::Maybe), _) => {
                            possible.insert(Some(value.clone().into_bytes()));
                        }
                        (1, None, Reply::Bulk(got)) if possible.contains(&Some(got.clone())) => {
                            possible = HashSet::from([Some(got.clone())]);
                        }
                        (1, None, Reply::Nil) if possible.contains(&None) => {
                            possible = HashSet::from([None]);
                        }
                        (2, None, Reply::Int(got)) => {
                            let last = tally.last_incr.load(Ordering::SeqCst) as i64;
                            let slack = tally.maybe_incrs_since.load(Ordering::SeqCst) as i64;
                            if *got <= last || *got > last + 1 + slack {
                                mismatch(format!(
                                    "client {c} round {n}: INCR returned {got} after {last} with {slack} ambiguous INCRs between"
                                ));
                            }
                            tally.last_incr.store(*got as u64, Ordering::SeqCst);
                            tally.maybe_incrs_since.store(0, Ordering::SeqCst);
                        }
                        (2, Some(Failure::Maybe), _) => {
                            tally.maybe_incrs_since.fetch_add(1, Ordering::SeqCst);
                        }
                        (_, Some(_), _) => {}
                        (i, None, reply) => mismatch(format!(
                            "client {c} round {n} reply {i}: {reply} (GET could be {possible:?})"
                        )),
                    }
                }
                if errors == 0 {
                    tally.ok_rounds.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }

    let ok_rounds = |t: &ClientTally| t.ok_rounds.load(Ordering::SeqCst);
    wait::until_async("every client to be served", Duration::from_secs(60), || {
        tallies.iter().all(|t| ok_rounds(t) >= 3)
    })
    .await;

    let r = Arc::clone(&redis);
    blocking(move || r.kill()).await;
    let killed = Instant::now();
    // The fault itself lasts 2 s: this sleep is its length, not a wait for
    // something to happen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = Arc::clone(&redis);
    blocking(move || r.restart()).await;
    let up = Instant::now();
    let down_for = up - killed;
    let targets: Vec<u64> = tallies
        .iter()
        .map(|t| ok_rounds(t) + RECOVERY_ROUNDS)
        .collect();
    wait::until_async(
        "every client to complete 5 round trips after the restart",
        Duration::from_secs(60),
        || {
            tallies
                .iter()
                .zip(&targets)
                .all(|(t, &n)| ok_rounds(t) >= n)
        },
    )
    .await;
    let recovery = up.elapsed();

    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("client task panicked");
    }
    let sum = |f: fn(&ClientTally) -> &AtomicU64| -> u64 {
        tallies.iter().map(|t| f(t).load(Ordering::SeqCst)).sum()
    };
    let (not_run, maybe) = (sum(|t| &t.not_run), sum(|t| &t.maybe));
    let rounds = sum(|t| &t.ok_rounds);
    let slowest = Duration::from_millis(
        tallies
            .iter()
            .map(|t| t.slowest_ms.load(Ordering::SeqCst))
            .max()
            .unwrap_or(0),
    );
    eprintln!(
        "upstream down {down_for:?}: {rounds} clean rounds, {not_run} not-run errors, {maybe} \
         may-have-run errors, slowest request {slowest:?}, all {CLIENTS} clients recovered \
         ({RECOVERY_ROUNDS} clean rounds each) {recovery:?} after Redis answered again"
    );

    let mismatches = mismatches.lock().unwrap();
    assert!(
        mismatches.is_empty(),
        "{} mismatched replies: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
    // The outage must have been felt: as errors, or (requests held unsent
    // until Redis was back, which write batching makes likely for all of
    // them) as requests that took most of the outage.
    assert!(
        not_run + maybe > 0 || slowest >= Duration::from_secs(1),
        "Redis was down for {down_for:?} and no client noticed: no error, slowest request {slowest:?}"
    );
    assert!(
        slowest <= TIMEOUT + Duration::from_secs(1),
        "a request took {slowest:?} with --timeout {TIMEOUT:?}"
    );
    // Every acknowledged INCR survived the kill, and no INCR ran twice.
    for (c, tally) in tallies.iter().enumerate() {
        let counter = format!("kill:{c}:counter");
        let stored: u64 = redis
            .command(&[b"GET", counter.as_bytes()])
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("a counter");
        let last = tally.last_incr.load(Ordering::SeqCst);
        let slack = tally.maybe_incrs_since.load(Ordering::SeqCst);
        assert!(
            stored >= last && stored <= last + slack,
            "client {c}: counter {stored}, last INCR returned {last}, {slack} ambiguous since"
        );
    }
}

// ---------------------------------------------------------------------------
// 2. Blackholed upstream.
// ---------------------------------------------------------------------------

/// A proxy with one lane behind a fresh relay (`flags` appended), and two
/// clients it has served once each, so that the lane is up before a fault.
async fn two_served_clients(
    redis: &RedisServer,
    flags: &[&str],
) -> (FaultRelay, TestProxy, TestClient, TestClient) {
    let relay = FaultRelay::start(redis.addr());
    let proxy = TestProxy::behind_relay(&relay, flags).await;
    let mut a = proxy.client().await;
    let mut b = proxy.client().await;
    assert_eq!(a.cmd(&["ECHO", "a-before"]).await, bulk("a-before"));
    assert_eq!(b.cmd(&["ECHO", "b-before"]).await, bulk("b-before"));
    (relay, proxy, a, b)
}

#[tokio::test]
async fn blackholed_requests_fail_at_the_timeout_and_late_replies_reach_nobody() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    // One connection, no spare, no health-check PINGs: every request of both
    // clients shares the one connection that gets blackholed. Without write
    // batching both requests go out on it at once; with it, the second would
    // wait behind the first (see the next test).
    let (relay, _proxy, mut a, mut b) = two_served_clients(
        &redis,
        &[
            "--timeout",
            "2s",
            "--backoff-cap",
            "200ms",
            "--batch-writes",
            "off",
        ],
    )
    .await;
    let accepted = relay.connections_accepted();
    assert_eq!(relay.active_connections(), 1);

    relay.set_mode(RelayMode::Blackhole);
    let sent_at_upstream = relay.bytes_to_upstream();
    let started = Instant::now();
    // A's read may be resent on another connection, B's write may not; both
    // are on the blackholed connection when its deadline passes.
    a.send(&["ECHO", "stale-a"]).await.expect("send");
    b.send(&["SET", "late", "stale-b"]).await.expect("send");
    let (reply_a, reply_b) = tokio::join!(
        async {
            let r = a.read_reply().await.expect("A's reply");
            (r, started.elapsed())
        },
        async {
            let r = b.read_reply().await.expect("B's reply");
            (r, started.elapsed())
        }
    );
    eprintln!(
        "blackholed: A's ECHO failed after {:?}, B's SET after {:?} (--timeout {TIMEOUT:?})",
        reply_a.1, reply_b.1
    );
    assert_eq!(
        reply_a.0,
        Reply::Error(format!(
            "ERR upstream {} timed out after 2.0s; the command may or may not have executed",
            relay.addr()
        ))
    );
    assert_eq!(failure(&reply_b.0), Some(Failure::Maybe), "{}", reply_b.0);
    // ±10 %, plus 300 ms of scheduling slack on a loaded machine.
    let (low, high) = (
        TIMEOUT.mul_f64(0.9),
        TIMEOUT.mul_f64(1.1) + Duration::from_millis(300),
    );
    for (who, took) in [("A", reply_a.1), ("B", reply_b.1)] {
        assert!(
            took >= low && took <= high,
            "{who}'s error came after {took:?}, expected {low:?}..{high:?}"
        );
    }

    // The timed-out connection is given up: the proxy opens another one.
    wait::until_async(
        "the proxy to open a new upstream connection",
        Duration::from_secs(20),
        || relay.connections_accepted() > accepted,
    )
    .await;

    // The held requests now reach Redis and their replies come back to the
    // proxy's side of the old connection, which nobody reads any more.
    relay.set_mode(RelayMode::Pass);
    wait::until_async("the held SET to run late", Duration::from_secs(20), || {
        redis.command(&[b"GET", b"late"]) == bulk("stale-b")
    })
    .await;
    assert!(relay.bytes_to_upstream() > sent_at_upstream);
    // Only the lane's live connection remains: the old one was closed by the
    // proxy (the relay keeps a connection only while both ends are open).
    wait::until_async(
        "the old connection to be closed",
        Duration::from_secs(20),
        || relay.active_connections() == 1,
    )
    .await;

    // Each client gets its own replies, never the late "stale-a" / "+OK".
    for round in 0..5 {
        let (ta, tb) = (format!("a-after-{round}"), format!("b-after-{round}"));
        a.send(&["ECHO", &ta]).await.expect("send");
        b.send(&["ECHO", &tb]).await.expect("send");
        let got_a = a.read_reply().await.expect("A's reply");
        let got_b = b.read_reply().await.expect("B's reply");
        if failure(&got_a) == Some(Failure::NotRun) || failure(&got_b) == Some(Failure::NotRun) {
            // Still reconnecting; nothing ran. Try again.
            continue;
        }
        assert_eq!(got_a, bulk(&ta), "A, round {round}");
        assert_eq!(got_b, bulk(&tb), "B, round {round}");
    }
    assert_eq!(a.cmd(&["GET", "late"]).await, bulk("stale-b"));
    assert_eq!(b.cmd(&["ECHO", "b-last"]).await, bulk("b-last"));
}

/// With write batching (the default), a request that arrives while the
/// lane's write is unanswered waits in respool. If that write then times out
/// on a blackholed connection, the waiting request was never sent: it is not
/// reported "may or may not have executed", and it never runs late.
#[tokio::test]
async fn a_request_waiting_behind_a_blackholed_write_is_never_sent_on_it() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let (relay, _proxy, mut a, mut b) = two_served_clients(
        &redis,
        &[
            "--timeout",
            "2s",
            "--hold-timeout",
            "3s",
            "--backoff-cap",
            "200ms",
        ],
    )
    .await;

    relay.set_mode(RelayMode::Blackhole);
    let before = relay.bytes_from_client();
    a.send(&["INCR", "written"]).await.expect("send");
    let incr = encode_command(&["INCR", "written"]).len() as u64;
    wait::until_async(
        "the proxy to write A's INCR",
        Duration::from_secs(10),
        || relay.bytes_from_client() >= before + incr,
    )
    .await;
    b.send(&["SET", "waiting", "never"]).await.expect("send");

    let reply_a = a.read_reply().await.expect("A's reply");
    assert_eq!(failure(&reply_a), Some(Failure::Maybe), "{reply_a}");
    let reply_b = b.read_reply().await.expect("B's reply");
    assert_eq!(failure(&reply_b), Some(Failure::NotRun), "{reply_b}");

    // The blackholed INCR runs late once traffic flows; the SET never does.
    relay.set_mode(RelayMode::Pass);
    wait::until_async("the held INCR to run late", Duration::from_secs(20), || {
        redis.command(&[b"GET", b"written"]) == bulk("1")
    })
    .await;
    // And the proxy serves both clients again.
    for client in [&mut a, &mut b] {
        wait::until_ok(
            "the proxy to recover",
            Duration::from_secs(20),
            async || {
                let reply = client.cmd(&["ECHO", "after"]).await;
                if reply == bulk("after") {
                    return Ok(());
                }
                // Still reconnecting: nothing ran; ask again.
                assert_eq!(failure(&reply), Some(Failure::NotRun), "{reply}");
                Err(format!("the proxy did not recover: {reply}"))
            },
        )
        .await;
    }
    // Had the SET gone out on the blackholed connection, it would have
    // followed the INCR to Redis by now.
    assert_eq!(
        redis.command(&[b"GET", b"waiting"]),
        Reply::Nil,
        "the waiting SET went out on the blackholed connection"
    );
}

// ---------------------------------------------------------------------------
// 3. Connections reset while writes are in flight.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_during_100k_pipelined_incrs_apply_none_twice_and_gets_are_retried() {
    const INCR_CLIENTS: usize = 8;
    const BATCH: usize = 250;
    const INCRS: usize = 100_000;
    const GET_CLIENTS: usize = 2;
    const GET_BATCH: usize = 50;
    const RESET_EVERY: Duration = Duration::from_millis(50);
    const RESET_FOR: Duration = Duration::from_secs(2);
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    redis
        .command(&[b"SET", b"fixed", b"the-fixed-value"])
        .expect_ok();
    let relay = Arc::new(FaultRelay::start(redis.addr()));
    // Deadlines and retries generous enough that a GET survives every reset
    // of the burst; `--validate ping` keeps probe GETs out of the GET count.
    let proxy = Arc::new(
        TestProxy::start(
            &format!("redis://{}", relay.addr()),
            &[
                "--max-connections",
                "2",
                "--validate",
                "ping",
                "--timeout",
                "20s",
                "--checkout-timeout",
                "20s",
                "--retries",
                "1000",
                "--backoff-base",
                "5ms",
                "--backoff-cap",
                "50ms",
            ],
        )
        .await,
    );
    let gets_before = redis.command_calls("get");
    let incrs_done = Arc::new(AtomicBool::new(false));
    let replies_seen = Arc::new(AtomicU64::new(0));
    // GETs handed to the proxy so far (counted before each batch is sent):
    // more GETs run upstream than this proves that one was resent.
    let gets_handed = Arc::new(AtomicU64::new(0));

    let mut incr_tasks = Vec::new();
    for c in 0..INCR_CLIENTS {
        let (proxy, replies_seen) = (Arc::clone(&proxy), Arc::clone(&replies_seen));
        incr_tasks.push(tokio::spawn(async move {
            let mut client = proxy.client().await;
            client.set_read_timeout(Duration::from_secs(60));
            let batch: Vec<u8> = (0..BATCH)
                .flat_map(|_| encode_command(&["INCR", "counter"]))
                .collect();
            let mut replies = Vec::with_capacity(INCRS / INCR_CLIENTS);
            for _ in 0..INCRS / INCR_CLIENTS / BATCH {
                client.send_raw(&batch).await.expect("client write");
                for i in 0..BATCH {
                    match client.read_reply().await {
                        Ok(reply) => replies.push(reply),
                        Err(e) => panic!("INCR client {c} reply {i}: {e}"),
                    }
                    replies_seen.fetch_add(1, Ordering::SeqCst);
                }
            }
            replies
        }));
    }
    let mut get_tasks = Vec::new();
    for c in 0..GET_CLIENTS {
        let (proxy, incrs_done) = (Arc::clone(&proxy), Arc::clone(&incrs_done));
        let gets_handed = Arc::clone(&gets_handed);
        get_tasks.push(tokio::spawn(async move {
            let mut client = proxy.client().await;
            client.set_read_timeout(Duration::from_secs(60));
            let batch: Vec<u8> = (0..GET_BATCH)
                .flat_map(|_| encode_command(&["GET", "fixed"]))
                .collect();
            let mut sent = 0u64;
            while !incrs_done.load(Ordering::SeqCst) {
                gets_handed.fetch_add(GET_BATCH as u64, Ordering::SeqCst);
                client.send_raw(&batch).await.expect("client write");
                sent += GET_BATCH as u64;
                for i in 0..GET_BATCH {
                    match client.read_reply().await {
                        Ok(reply) => assert_eq!(
                            reply,
                            bulk("the-fixed-value"),
                            "GET client {c} reply {i}: a GET in flight during a reset must be retried"
                        ),
                        Err(e) => panic!("GET client {c} reply {i}: {e}"),
                    }
                }
            }
            sent
        }));
    }

    wait::until_async("INCR replies to flow", Duration::from_secs(30), || {
        replies_seen.load(Ordering::SeqCst) >= 1_000
    })
    .await;
    let resets_started = Instant::now();
    let seen_at_start = replies_seen.load(Ordering::SeqCst);
    let mut resets = 0u32;
    while resets_started.elapsed() < RESET_FOR && replies_seen.load(Ordering::SeqCst) < INCRS as u64
    {
        let relay = Arc::clone(&relay);
        blocking(move || relay.set_mode(RelayMode::ResetNow)).await;
        resets += 1;
        tokio::time::sleep(RESET_EVERY).await;
    }
    let seen_during_resets = replies_seen.load(Ordering::SeqCst) - seen_at_start;

    let started = Instant::now();
    let mut all = Vec::new();
    for task in incr_tasks {
        all.extend(task.await.expect("INCR client panicked"));
    }
    // Whether a reset caught a GET between write and reply is chance (the
    // GET clients have far fewer requests in flight than the INCR clients):
    // keep resetting, with the GETs still flowing, until one was resent.
    let more_resets = Instant::now();
    while redis.command_calls("get") - gets_before <= gets_handed.load(Ordering::SeqCst)
        && more_resets.elapsed() < Duration::from_secs(20)
    {
        let relay = Arc::clone(&relay);
        blocking(move || relay.set_mode(RelayMode::ResetNow)).await;
        resets += 1;
        tokio::time::sleep(RESET_EVERY).await;
    }
    incrs_done.store(true, Ordering::SeqCst);
    let mut gets_sent = 0;
    for task in get_tasks {
        gets_sent += task.await.expect("GET client panicked");
    }
    let finish = started.elapsed();

    let mut successes = HashSet::new();
    let (mut maybe, mut not_run) = (0u64, 0u64);
    for reply in &all {
        match (reply, failure(reply)) {
            (Reply::Int(n), _) => assert!(successes.insert(*n), "two INCRs both returned {n}"),
            (_, Some(Failure::Maybe)) => maybe += 1,
            (_, Some(Failure::NotRun)) => not_run += 1,
            (other, None) => panic!("unexpected INCR reply {other}"),
        }
    }
    assert_eq!(all.len(), INCRS, "every INCR gets exactly one reply");
    let gets_run = redis.command_calls("get") - gets_before;
    let counter: u64 = redis
        .command(&[b"GET", b"counter"])
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("the counter");
    let ok = successes.len() as u64;
    eprintln!(
        "{resets} resets every {RESET_EVERY:?} ({seen_during_resets} replies meanwhile); {INCRS} INCRs: \
         {ok} succeeded, {maybe} may have run, {not_run} not run; counter {counter}; \
         {gets_sent} GETs all answered with the value, {} run twice upstream; tail {finish:?}",
        gets_run.saturating_sub(gets_sent)
    );
    assert!(
        ok <= counter && counter <= ok + maybe,
        "counter {counter}, {ok} INCRs succeeded, {maybe} ambiguous"
    );
    let highest = successes.iter().copied().max().unwrap_or(0) as u64;
    assert!(
        highest <= counter,
        "an INCR returned {highest}, counter {counter}"
    );
    assert!(
        maybe > 0,
        "{resets} resets under pipelined load left no INCR in doubt: did they hit traffic?"
    );
    assert!(
        gets_run > gets_sent,
        "no GET ran twice upstream ({gets_run} run, {gets_sent} sent): none was retried after a reset"
    );
}

// ---------------------------------------------------------------------------
// 4. Redis loading its dataset.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_dataset_load_only_delays_requests_when_the_deadlines_cover_it() {
    const CLIENTS: usize = 20;
    const KEYS: u64 = 20_000;
    let _serial = SERIAL.lock().await;
    let redis = Arc::new(RedisServer::start());
    redis
        .command(&[b"DEBUG", b"POPULATE", KEYS.to_string().as_bytes()])
        .expect_ok();
    let proxy = Arc::new(
        TestProxy::start(
            &redis.url(),
            &[
                "--timeout",
                "30s",
                "--checkout-timeout",
                "30s",
                "--backoff-base",
                "20ms",
                "--backoff-cap",
                "200ms",
            ],
        )
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rounds: Vec<Arc<AtomicU64>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let slowest_ms = Arc::new(AtomicU64::new(0));

    // Reads only: the restart loses writes made after the SAVE, and a write
    // in flight when Redis stops may or may not have run (an error the
    // client must see); neither is what this test is about.
    let mut tasks = Vec::new();
    for (c, done) in rounds.iter().enumerate() {
        let (proxy, stop, done, slowest_ms) = (
            Arc::clone(&proxy),
            Arc::clone(&stop),
            Arc::clone(done),
            Arc::clone(&slowest_ms),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = proxy.client().await;
            client.set_read_timeout(Duration::from_secs(60));
            let mut n = c as u64;
            while !stop.load(Ordering::SeqCst) {
                // Different keys every round, so every reply names its request.
                let (i, j) = (n % KEYS, (n * 7 + 3) % KEYS);
                let (ki, kj) = (format!("key:{i}"), format!("key:{j}"));
                let mut out = encode_command(&["GET", &ki]);
                out.extend(encode_command(&["MGET", &kj, &ki]));
                out.extend(encode_command(&["STRLEN", &kj]));
                let sent = Instant::now();
                client.send_raw(&out).await.expect("client write");
                let expected = [
                    bulk(format!("value:{i}")),
                    Reply::Array(vec![bulk(format!("value:{j}")), bulk(format!("value:{i}"))]),
                    Reply::Int(format!("value:{j}").len() as i64),
                ];
                for (r, want) in expected.iter().enumerate() {
                    let got = client
                        .read_reply()
                        .await
                        .unwrap_or_else(|e| panic!("client {c} round {n} reply {r}: {e}"));
                    assert_eq!(&got, want, "client {c} round {n} reply {r}");
                }
                slowest_ms.fetch_max(sent.elapsed().as_millis() as u64, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                n += CLIENTS as u64;
            }
        }));
    }
    let count = |r: &Arc<AtomicU64>| r.load(Ordering::SeqCst);
    wait::until_async("every client to be served", Duration::from_secs(30), || {
        rounds.iter().all(|r| count(r) >= 3)
    })
    .await;

    // About 2 s of loading (100 µs per key), well inside the 30 s deadlines.
    let r = Arc::clone(&redis);
    let restarted = Instant::now();
    blocking(move || {
        r.reload_slowly(KEYS, 100);
        r.wait_loading();
    })
    .await;
    let r = Arc::clone(&redis);
    blocking(move || r.wait_loaded()).await;
    let loaded_after = restarted.elapsed();
    let targets: Vec<u64> = rounds.iter().map(|r| count(r) + 3).collect();
    wait::until_async(
        "every client to be served after the load",
        Duration::from_secs(60),
        || rounds.iter().zip(&targets).all(|(r, &n)| count(r) >= n),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await
            .expect("client task panicked (an error reply or a wrong one)");
    }
    let slowest = Duration::from_millis(slowest_ms.load(Ordering::SeqCst));
    let total: u64 = rounds.iter().map(count).sum();
    eprintln!(
        "stop + slow load took {loaded_after:?}; {total} rounds of 3 reads, no error; slowest round {slowest:?}"
    );
    assert!(
        slowest >= Duration::from_millis(500),
        "no round was held by the load (slowest {slowest:?}): did the clients run across it?"
    );
}

/// The same promise when the load happens under live connections (`DEBUG
/// RELOAD` here; a replica's full resync in production): Redis answers the
/// requests already on those connections `-LOADING`, and the lane holds and
/// resends them for as long as the hold window (`--hold-timeout`, here taken
/// from `--checkout-timeout`) lasts — not a fixed number of times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_under_live_connections_is_held_until_the_deadline() {
    let _serial = SERIAL.lock().await;
    let redis = Arc::new(RedisServer::start());
    redis
        .command(&[b"DEBUG", b"POPULATE", b"30000"])
        .expect_ok();
    let proxy = TestProxy::start(
        &redis.url(),
        &["--timeout", "30s", "--checkout-timeout", "30s"],
    )
    .await;
    let mut client = proxy.client().await;
    client.set_read_timeout(Duration::from_secs(60));
    assert_eq!(client.cmd(&["GET", "key:1"]).await, bulk("value:1"));
    // At least 3 s of loading, in place: the proxy's connections stay open.
    for (name, value) in [
        (&b"key-load-delay"[..], &b"100"[..]),
        (b"loading-process-events-interval-bytes", b"1024"),
    ] {
        redis.command(&[b"CONFIG", b"SET", name, value]).expect_ok();
    }
    let r = Arc::clone(&redis);
    let reload = tokio::task::spawn_blocking(move || r.command(&[b"DEBUG", b"RELOAD"]));
    wait::until_async("Redis to start reloading", wait::DEADLINE, || {
        redis.is_loading()
    })
    .await;
    let started = Instant::now();
    let reply = client.cmd(&["GET", "key:2"]).await;
    assert_eq!(
        reply,
        bulk("value:2"),
        "after {:?}, with --timeout 30s",
        started.elapsed()
    );
    reload.await.expect("DEBUG RELOAD").expect_ok();
}

// ---------------------------------------------------------------------------
// 5. No reconnect storm.
// ---------------------------------------------------------------------------

/// The most connection attempts one reconnecting task can make in `window`
/// when every delay comes out at its smallest: exponential from `base`, capped
/// at `cap`, each scaled by the jitter floor of 0.5 (see `respool::retry`).
fn max_attempts(window: Duration, base: Duration, cap: Duration) -> u64 {
    let (mut attempts, mut elapsed, mut delay) = (1, Duration::ZERO, base);
    loop {
        elapsed += delay.min(cap) / 2;
        if elapsed > window {
            return attempts;
        }
        attempts += 1;
        delay *= 2;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_retried_with_backoff_not_stormed() {
    const CLIENTS: usize = 100;
    const LANES: u64 = 4;
    const MIN_IDLE: u64 = 1;
    const OUTAGE: Duration = Duration::from_secs(3);
    const BASE: Duration = Duration::from_millis(50);
    const CAP: Duration = Duration::from_secs(1);
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let relay = Arc::new(FaultRelay::start(redis.addr()));
    let proxy = Arc::new(
        TestProxy::start(
            &format!("redis://{}", relay.addr()),
            &[
                "--max-connections",
                &LANES.to_string(),
                "--min-idle",
                &MIN_IDLE.to_string(),
                "--backoff-base",
                "50ms",
                "--backoff-cap",
                "1s",
                "--checkout-timeout",
                "1s",
                "--timeout",
                "2s",
            ],
        )
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let served: Vec<Arc<AtomicU64>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let failed: Vec<Arc<AtomicU64>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let wrong = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (proxy, stop, served, failed, wrong) = (
            Arc::clone(&proxy),
            Arc::clone(&stop),
            Arc::clone(&served[c]),
            Arc::clone(&failed[c]),
            Arc::clone(&wrong),
        );
        let unavailable = format!("ERR upstream {} unavailable: ", relay.addr());
        tasks.push(tokio::spawn(async move {
            let mut client = proxy.client().await;
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let token = format!("storm:{c}:{n}");
                let reply = client
                    .try_cmd(&["ECHO", &token])
                    .await
                    .unwrap_or_else(|e| panic!("client {c} request {n}: {e}"));
                match &reply {
                    r if *r == bulk(&token) => served.fetch_add(1, Ordering::SeqCst),
                    // The clear error of a request that never got a
                    // connection, or (in flight at the switch) one that may
                    // have run.
                    Reply::Error(text)
                        if text.starts_with(&unavailable)
                            || failure(&reply) == Some(Failure::Maybe) =>
                    {
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                    other => {
                        wrong.lock().unwrap().push(format!("client {c}: {other}"));
                        0
                    }
                };
            }
        }));
    }
    let all_reach = |counters: &[Arc<AtomicU64>], min: u64| {
        counters.iter().all(|x| x.load(Ordering::SeqCst) >= min)
    };
    wait::until_async("every client to be served", Duration::from_secs(30), || {
        all_reach(&served, 1)
    })
    .await;

    let before = relay.connections_accepted();
    let r = Arc::clone(&relay);
    blocking(move || r.set_mode(RelayMode::AcceptAndReset)).await;
    let down = Instant::now();
    // The outage lasts 3 s, and at least until every client has had its error.
    tokio::time::sleep(OUTAGE).await;
    wait::until_async(
        "every client to get an error during the outage",
        Duration::from_secs(30),
        || all_reach(&failed, 1),
    )
    .await;
    let attempts = relay.connections_accepted() - before;
    let window = down.elapsed();
    let r = Arc::clone(&relay);
    blocking(move || r.set_mode(RelayMode::Pass)).await;
    let up = Instant::now();
    let targets: Vec<u64> = served
        .iter()
        .map(|s| s.load(Ordering::SeqCst) + 1)
        .collect();
    wait::until_async(
        "every client to be served again",
        Duration::from_secs(30),
        || {
            served
                .iter()
                .zip(&targets)
                .all(|(s, &n)| s.load(Ordering::SeqCst) >= n)
        },
    )
    .await;
    let recovery = up.elapsed();
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("client task panicked");
    }

    // Each lane reconnects with its own backoff; the pool may also be
    // topping up its idle spare.
    let bound = (LANES + MIN_IDLE) * max_attempts(window, BASE, CAP);
    let errors: u64 = failed.iter().map(|f| f.load(Ordering::SeqCst)).sum();
    let rate = attempts as f64 / window.as_secs_f64();
    eprintln!(
        "{CLIENTS} clients, upstream down {window:?}: {attempts} connection attempts \
         ({rate:.1}/s, bound {bound}), {errors} errors to clients, recovered in {recovery:?}"
    );
    let wrong = wrong.lock().unwrap();
    assert!(
        wrong.is_empty(),
        "unexpected replies: {:#?}",
        &wrong[..wrong.len().min(10)]
    );
    assert!(attempts > 0, "the proxy never tried to reconnect");
    assert!(
        attempts <= bound,
        "{attempts} connection attempts in {window:?}: more than backoff allows ({bound})"
    );
}

// ---------------------------------------------------------------------------
// 6. Secrets never logged (issue #5 item 7).
// ---------------------------------------------------------------------------

const UPSTREAM_PW: &str = "S3cr3tPa55";
const WRONG_UPSTREAM_PW: &str = "WrongUpstreamPw789";
const CLIENT_PW: &str = "ClientSecret123";
const ALICE_PW: &str = "AlicePw456";
const WRONG_CLIENT_PW: &str = "WrongClientPw000";
/// Every secret the test hands the proxy, right or wrong.
const SECRETS: [&str; 5] = [
    UPSTREAM_PW,
    WRONG_UPSTREAM_PW,
    CLIENT_PW,
    ALICE_PW,
    WRONG_CLIENT_PW,
];

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        if let Some(at) = text.find(secret) {
            let from = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let to = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!(
                "{what} contains the secret {secret:?}:\n{}",
                &text[from..to]
            );
        }
    }
}

/// A loopback port nothing listens on (bound a moment ago, then released).
fn unused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding port 0");
    let port = listener.local_addr().expect("local addr").port();
    assert_ne!(port, 6379);
    port
}

/// The `respool` binary running as a child process, its output in files.
struct ProxyProcess {
    child: Child,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
}

impl ProxyProcess {
    fn spawn(dir: &Path, name: &str, args: &[String]) -> ProxyProcess {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let file = |p: &Path| std::fs::File::create(p).expect("creating a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_respool"))
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file(&stdout))
            .stderr(file(&stderr))
            .spawn()
            .expect("spawning respool");
        ProxyProcess {
            child,
            stdout,
            stderr,
        }
    }

    /// Everything the process wrote so far, stdout then stderr.
    fn output(&self) -> String {
        let read = |p: &Path| {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(p) {
                let _ = f.read_to_string(&mut text);
            }
            text
        };
        read(&self.stdout) + &read(&self.stderr)
    }

    /// Waits for the "accepting clients" log line and returns the port in it.
    fn wait_listening(&mut self) -> std::net::SocketAddr {
        let deadline = Instant::now() + wait::DEADLINE;
        loop {
            let output = self.output();
            let port = output
                .lines()
                .filter(|l| l.contains("accepting clients"))
                .find_map(|l| {
                    let rest = &l[l.rfind("127.0.0.1:")? + "127.0.0.1:".len()..];
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse::<u16>().ok()
                });
            if let Some(port) = port {
                return std::net::SocketAddr::from(([127, 0, 0, 1], port));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("respool exited ({status}) before listening:\n{output}");
            }
            assert!(
                Instant::now() < deadline,
                "respool not listening after {:?}:\n{output}",
                wait::DEADLINE
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait for the exit (SIGKILL after 20 s), return all output.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output()
    }

    /// Waits for the process to exit by itself (start-up failures).
    fn wait_exit(mut self) -> String {
        let deadline = Instant::now() + wait::DEADLINE;
        while matches!(self.child.try_wait(), Ok(None)) {
            assert!(
                Instant::now() < deadline,
                "respool did not exit:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.output()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `commands` in order on one connection and returns every reply.
async fn replies(addr: std::net::SocketAddr, commands: &[&[&str]]) -> Vec<Reply> {
    let mut client = TestClient::connect(addr)
        .await
        .expect("connecting to respool");
    let mut out = Vec::new();
    for command in commands {
        out.push(client.cmd(command).await);
    }
    out
}

#[tokio::test]
async fn secrets_never_reach_logs_debug_output_or_error_replies() {
    let _serial = SERIAL.lock().await;
    // An ACL user the proxy logs in as; the default user stays open for the
    // harness's own probes.
    let redis = RedisServer::builder()
        .arg_values(
            "user",
            &["app", "on", &format!(">{UPSTREAM_PW}"), "~*", "&*", "+@all"],
        )
        .start();
    let dir = tempfile::tempdir().expect("a temp dir");
    let good_url = format!("redis://app:{UPSTREAM_PW}@127.0.0.1:{}", redis.port());
    let wrong_url = format!("redis://app:{WRONG_UPSTREAM_PW}@127.0.0.1:{}", redis.port());
    let down_url = format!("redis://app:{UPSTREAM_PW}@127.0.0.1:{}", unused_port());
    let client_auth = [
        "--requirepass".to_string(),
        CLIENT_PW.to_string(),
        "--user".to_string(),
        format!("alice:{ALICE_PW}"),
    ];
    let args = |url: &str, format: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            url,
            "--log-level",
            "trace",
            "--log-format",
            format,
            "--checkout-timeout",
            "500ms",
            "--backoff-cap",
            "100ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(client_auth.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // `Debug` of the validated configuration, however the secrets came in.
    for extra in [&[][..], &["--upstream-password", UPSTREAM_PW][..]] {
        let mut full = vec!["respool".to_string()];
        full.extend(args(&good_url, "text", extra));
        let config = respool::Config::parse_from_args(&full).expect("valid flags");
        assert_no_secret("Config's Debug output", &format!("{config:?}"));
        assert_no_secret("Config's pretty Debug output", &format!("{config:#?}"));
    }

    let mut all_replies = Vec::new();
    for format in ["text", "json"] {
        let mut good = ProxyProcess::spawn(
            dir.path(),
            &format!("good-{format}"),
            &args(&good_url, format, &[]),
        );
        let mut wrong = ProxyProcess::spawn(
            dir.path(),
            &format!("wrong-{format}"),
            &args(&wrong_url, format, &[]),
        );
        let mut down = ProxyProcess::spawn(
            dir.path(),
            &format!("down-{format}"),
            &args(&down_url, format, &[]),
        );
        let (good_addr, wrong_addr, down_addr) = (
            good.wait_listening(),
            wrong.wait_listening(),
            down.wait_listening(),
        );

        let good_replies = replies(
            good_addr,
            &[
                &["GET", "k"],
                &["AUTH", WRONG_CLIENT_PW],
                &["AUTH", CLIENT_PW],
                &["SET", "k", "v"],
                &["GET", "k"],
                &["AUTH", "alice", WRONG_CLIENT_PW],
                &["AUTH", "nobody", ALICE_PW],
                &["AUTH", "alice", ALICE_PW],
                &["HELLO", "2", "AUTH", "alice", WRONG_CLIENT_PW],
                &["HELLO", "2", "AUTH", "alice", ALICE_PW],
                &["MULTI"],
                &["INCR", "n"],
                &["EXEC"],
                &["AUTH", "a", "b", "c"],
            ],
        )
        .await;
        assert_eq!(good_replies[0].error_code(), Some("NOAUTH"));
        assert_eq!(good_replies[1].error_code(), Some("WRONGPASS"));
        good_replies[2].expect_ok();
        assert_eq!(good_replies[4], bulk("v"), "the upstream login works");
        assert_eq!(good_replies[5].error_code(), Some("WRONGPASS"));
        good_replies[7].expect_ok();
        assert!(
            matches!(&good_replies[12], Reply::Array(r) if matches!(r[..], [Reply::Int(_)])),
            "EXEC on a pinned, logged-in connection answered {}",
            good_replies[12]
        );

        // The error a request gets after --checkout-timeout names the last
        // failure: wait until each proxy has had one (a loaded machine may
        // take longer than the timeout for the first attempt).
        for (process, cause) in [(&wrong, "WRONGPASS"), (&down, "connection refused")] {
            wait::until("the upstream's failure in the log", wait::DEADLINE, || {
                process
                    .output()
                    .to_lowercase()
                    .contains(&cause.to_lowercase())
            });
        }
        let failing = [&["AUTH", CLIENT_PW][..], &["GET", "k"], &["SET", "k", "v"]];
        let wrong_replies = replies(wrong_addr, &failing).await;
        let down_replies = replies(down_addr, &failing).await;
        for (what, got, cause) in [
            ("wrong password", &wrong_replies, "WRONGPASS"),
            ("upstream down", &down_replies, "connection refused"),
        ] {
            got[0].expect_ok();
            for reply in &got[1..] {
                assert!(
                    failure(reply) == Some(Failure::NotRun) && reply.to_string().contains(cause),
                    "{what}: expected an 'unavailable: …{cause}' error, got {reply}"
                );
            }
        }
        all_replies.extend(
            good_replies
                .into_iter()
                .chain(wrong_replies)
                .chain(down_replies),
        );

        for (name, process, expect) in [
            ("good", good, "upstream connection validated"),
            ("wrong", wrong, "WRONGPASS"),
            ("down", down, "refused"),
        ] {
            let output = process.stop();
            assert!(
                output.contains(expect) && output.contains("TRACE"),
                "{name}/{format}: the trace log lacks {expect:?}, so it proves nothing:\n{output}"
            );
            assert_no_secret(&format!("the {format} log of the {name} proxy"), &output);
        }
    }
    // AUTH passthrough (no client users of respool's own): the clients'
    // passwords go to the upstream and never into a log line.
    let passthrough: Vec<String> = args(&good_url, "json", &[])
        .into_iter()
        .filter(|arg| !client_auth.contains(arg))
        .collect();
    let mut process = ProxyProcess::spawn(dir.path(), "passthrough", &passthrough);
    let addr = process.wait_listening();
    let replies = replies(
        addr,
        &[
            &["AUTH", "app", WRONG_CLIENT_PW],
            &["AUTH", WRONG_CLIENT_PW],
            &["AUTH", "app", UPSTREAM_PW],
            &["SET", "k", "v"],
            &["HELLO", "3", "AUTH", "app", WRONG_UPSTREAM_PW],
        ],
    )
    .await;
    assert_eq!(replies[0].error_code(), Some("WRONGPASS"), "{}", replies[0]);
    // The default user has no password here: Redis says so.
    assert_eq!(replies[1].error_code(), Some("ERR"), "{}", replies[1]);
    replies[2].expect_ok();
    replies[3].expect_ok();
    assert_eq!(replies[4].error_code(), Some("WRONGPASS"), "{}", replies[4]);
    let output = process.stop();
    assert!(
        output.contains("a client's login was refused") && output.contains("TRACE"),
        "the passthrough trace log proves nothing:\n{output}"
    );
    assert_no_secret("the log of the passthrough proxy", &output);
    all_replies.extend(replies);
    for reply in &all_replies {
        assert_no_secret("a reply to a client", &reply.to_string());
    }

    // Start-up failures: an upstream that rejects the login, and flags that
    // do not validate, with secrets among them.
    let refused = ProxyProcess::spawn(
        dir.path(),
        "require-upstream",
        &args(
            &wrong_url,
            "text",
            &[
                "--require-upstream",
                "--retries",
                "1",
                "--backoff-base",
                "10ms",
            ],
        ),
    )
    .wait_exit();
    assert!(refused.contains("WRONGPASS"), "{refused}");
    assert_no_secret("the start-up failure output", &refused);
    for bad in [
        &["--user", &format!("default:{CLIENT_PW}")][..],
        &["--backoff-base", "2s"],
        &["--upstream-password", UPSTREAM_PW, "--timeout", "0s"],
    ] {
        let output =
            ProxyProcess::spawn(dir.path(), "bad-flags", &args(&good_url, "json", bad)).wait_exit();
        assert!(output.contains("error"), "{output}");
        assert_no_secret("a flag validation error", &output);
    }
}
