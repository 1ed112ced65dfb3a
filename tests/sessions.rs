//! Pinned sessions: transactions, WATCH, blocking commands, SELECT and
//! CLIENT REPLY run on a dedicated upstream connection for as long as their
//! state lives, reply exactly as Redis does, never hold up other clients, and
//! leave nothing behind on the connection when they end, however they end.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::client::encode_command;
use support::{wait, Leave, RedisServer, Reply, TestClient, TestProxy};

fn bulk(s: impl AsRef<[u8]>) -> Reply {
    Reply::Bulk(s.as_ref().to_vec())
}

fn simple(s: &str) -> Reply {
    Reply::Simple(s.into())
}

fn queued() -> Reply {
    simple("QUEUED")
}

/// Runs `script` (client index, command) one command at a time and returns
/// every reply.
async fn run_script(clients: &mut [TestClient], script: &[(usize, Vec<&str>)]) -> Vec<Reply> {
    let mut replies = Vec::new();
    for (who, command) in script {
        replies.push(clients[*who].cmd(command).await);
    }
    replies
}

#[tokio::test]
async fn transactions_reply_exactly_as_redis_does() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let script: Vec<(usize, Vec<&str>)> = vec![
        (0, vec!["SET", "k", "1"]),
        (0, vec!["SET", "s", "text"]),
        // Commit, with a runtime error inside the EXEC array.
        (0, vec!["MULTI"]),
        (0, vec!["INCR", "k"]),
        (0, vec!["LPUSH", "s", "x"]),
        (0, vec!["GET", "s"]),
        (0, vec!["HSET", "h", "f", "v"]),
        (0, vec!["EXEC"]),
        // DISCARD.
        (0, vec!["MULTI"]),
        (0, vec!["SET", "k", "100"]),
        (0, vec!["DISCARD"]),
        (0, vec!["GET", "k"]),
        // WATCH with a conflicting write from another client.
        (0, vec!["WATCH", "k"]),
        (1, vec!["SET", "k", "theirs"]),
        (0, vec!["MULTI"]),
        (0, vec!["SET", "k", "mine"]),
        (0, vec!["EXEC"]),
        (0, vec!["GET", "k"]),
        // WATCH without a conflict (the other client writes another key).
        (0, vec!["WATCH", "k", "other"]),
        (1, vec!["SET", "unrelated", "x"]),
        (0, vec!["MULTI"]),
        (0, vec!["INCR", "counter"]),
        (0, vec!["EXEC"]),
        // WATCH then UNWATCH: the conflict no longer matters.
        (0, vec!["WATCH", "k"]),
        (0, vec!["UNWATCH"]),
        (1, vec!["SET", "k", "again"]),
        (0, vec!["MULTI"]),
        (0, vec!["GET", "k"]),
        (0, vec!["EXEC"]),
        // Queue-time errors abort the transaction.
        (0, vec!["MULTI"]),
        (0, vec!["SET", "a"]),
        (0, vec!["SET", "a", "1"]),
        (0, vec!["EXEC"]),
        (0, vec!["GET", "a"]),
        (0, vec!["MULTI"]),
        (0, vec!["NOSUCHCOMMAND", "x"]),
        (0, vec!["EXEC"]),
        // Nested MULTI is an error that does not end the transaction.
        (0, vec!["MULTI"]),
        (0, vec!["MULTI"]),
        (0, vec!["WATCH", "k"]),
        (0, vec!["PING"]),
        (0, vec!["EXEC"]),
        // Nothing left: these are answered as outside a transaction.
        (0, vec!["EXEC"]),
        (0, vec!["DISCARD"]),
        (0, vec!["PING"]),
        (1, vec!["GET", "counter"]),
    ];

    let mut via_proxy = vec![proxy.client().await, proxy.client().await];
    let proxied = run_script(&mut via_proxy, &script).await;

    redis.command(&[b"FLUSHALL"]).expect_ok();
    let mut direct = vec![redis.direct().await, redis.direct().await];
    let expected = run_script(&mut direct, &script).await;
    for (i, ((who, command), (got, want))) in
        script.iter().zip(proxied.iter().zip(&expected)).enumerate()
    {
        assert_eq!(
            got, want,
            "step {i}, client {who}, {command:?}: the proxy's reply differs from Redis's"
        );
    }

    // Spot checks, so that a proxy and a Redis broken the same way cannot pass.
    assert_eq!(
        proxied[7],
        Reply::Array(vec![
            Reply::Int(2),
            Reply::Error(
                "WRONGTYPE Operation against a key holding the wrong kind of value".into()
            ),
            bulk("text"),
            Reply::Int(1),
        ])
    );
    assert_eq!(proxied[11], bulk("2"));
    assert_eq!(
        proxied[16],
        Reply::NilArray,
        "a WATCH conflict must abort EXEC"
    );
    assert_eq!(proxied[17], bulk("theirs"));
    assert_eq!(proxied[22], Reply::Array(vec![Reply::Int(1)]));
    assert_eq!(proxied[28], Reply::Array(vec![bulk("again")]));
    proxied[32].expect_error_code("EXECABORT");
    assert!(proxied[33].is_nil(), "an aborted SET was applied");
    proxied[36].expect_error_code("EXECABORT");
    assert_eq!(proxied[41], Reply::Array(vec![simple("PONG")]));
    assert_eq!(proxied[42], Reply::Error("ERR EXEC without MULTI".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_runs_atomically_while_twenty_clients_write_the_same_key() {
    const WRITERS: usize = 20;
    const QUEUED: usize = 50;
    let redis = RedisServer::start();
    let proxy = Arc::new(TestProxy::start(&redis.url(), &["--max-connections", "2"]).await);

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (proxy, stop, writes) = (proxy.clone(), stop.clone(), writes.clone());
        writers.push(tokio::spawn(async move {
            let mut client = proxy.client().await;
            let mut mine = 0u64;
            while !stop.load(Ordering::SeqCst) {
                // A writer's INCR must never be taken into the transaction.
                let reply = client.cmd(&["INCR", "c"]).await;
                assert!(
                    matches!(reply, Reply::Int(_)),
                    "writer {w}: INCR answered {reply}"
                );
                mine += 1;
                writes.fetch_add(1, Ordering::SeqCst);
            }
            mine
        }));
    }

    let mut tx = proxy.client().await;
    tx.cmd(&["MULTI"]).await.expect_ok();
    for _ in 0..QUEUED {
        assert_eq!(tx.cmd(&["INCR", "c"]).await, queued());
    }
    // The writers are busy on the key while the transaction was queued and
    // while it executes.
    let before = writes.load(Ordering::SeqCst);
    wait::until_async("the writers to make progress", wait::DEADLINE, || {
        writes.load(Ordering::SeqCst) >= before + 200
    })
    .await;
    let exec = tx.cmd(&["EXEC"]).await;
    let after_exec = writes.load(Ordering::SeqCst);
    wait::until_async(
        "the writers to make progress after EXEC",
        wait::DEADLINE,
        || writes.load(Ordering::SeqCst) >= after_exec + 200,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut total_writes = 0;
    for writer in writers {
        total_writes += writer.await.expect("writer task panicked");
    }

    let Reply::Array(items) = exec else {
        panic!("EXEC answered {exec}");
    };
    assert_eq!(items.len(), QUEUED);
    let first = items[0]
        .as_int()
        .unwrap_or_else(|| panic!("EXEC item 0 is {}", items[0]));
    for (i, item) in items.iter().enumerate() {
        assert_eq!(
            item,
            &Reply::Int(first + i as i64),
            "EXEC item {i}: another client's write ran inside the transaction"
        );
    }
    assert_eq!(
        redis.command(&[b"GET", b"c"]),
        bulk((total_writes + QUEUED as u64).to_string()),
        "every INCR ran exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_pop_holds_up_nobody_and_gets_the_value_pushed_by_another_client() {
    const CLIENTS: usize = 50;
    const ROUNDS: usize = 40;
    let redis = RedisServer::start();
    let proxy = Arc::new(TestProxy::start(&redis.url(), &["--max-connections", "2"]).await);

    // A BLPOP with a timeout that runs out: nil array, as from Redis.
    let mut popper = proxy.client().await;
    assert_eq!(
        popper.cmd(&["BRPOP", "nothing", "0.05"]).await,
        Reply::NilArray
    );

    popper
        .send(&["BLPOP", "queue", "0"])
        .await
        .expect("sending BLPOP");
    wait::until("the BLPOP to block in Redis", wait::DEADLINE, || {
        redis.blocked_clients() == 1
    });

    // Fifty clients, each with its own counter, get through many round trips
    // through the shared lanes while the BLPOP stays blocked.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = proxy.client().await;
            for n in 1..=ROUNDS {
                let key = format!("counter:{c}");
                assert_eq!(
                    client.cmd(&["INCR", &key]).await,
                    Reply::Int(n as i64),
                    "client {c} round {n}"
                );
                assert_eq!(
                    client.cmd(&["GET", &key]).await,
                    bulk(n.to_string()),
                    "client {c} round {n}"
                );
            }
        }));
    }
    for task in tasks {
        task.await.expect("a fast client failed");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "{CLIENTS} clients x {ROUNDS} rounds took {elapsed:?} while a BLPOP was blocked"
    );
    assert_eq!(
        redis.blocked_clients(),
        1,
        "the BLPOP stopped blocking early"
    );

    // Nothing was answered to the popper yet.
    match popper.read_reply_within(Duration::from_millis(1)).await {
        Err(e) if e.is_timeout() => {}
        other => panic!("the BLPOP was answered before any push: {other:?}"),
    }

    let mut pusher = proxy.client().await;
    assert_eq!(
        pusher.cmd(&["RPUSH", "queue", "first", "second"]).await,
        Reply::Int(2)
    );
    assert_eq!(
        popper.read_reply().await.expect("BLPOP reply"),
        Reply::Array(vec![bulk("queue"), bulk("first")])
    );
    // The popper is back to normal and the other value is still there.
    assert_eq!(
        popper.cmd(&["LRANGE", "queue", "0", "-1"]).await,
        Reply::Array(vec![bulk("second")])
    );
    redis.wait_until_no_connection_state("after the BLPOP");
}

#[tokio::test]
async fn select_isolates_a_client_until_it_selects_the_default_db_again() {
    let redis = RedisServer::start();
    // One dedicated connection: a session that were not released after
    // `SELECT 0` would make the third client wait and fail.
    let proxy = TestProxy::start(
        &redis.url(),
        &["--max-pinned", "1", "--checkout-timeout", "5s"],
    )
    .await;
    let mut a = proxy.client().await;
    let mut b = proxy.client().await;

    a.cmd(&["SELECT", "2"]).await.expect_ok();
    a.cmd(&["SET", "k", "in-db-2"]).await.expect_ok();
    // Pipelined with the SELECT: still in db 2.
    let mut pipeline = encode_command(&["GET", "k"]);
    pipeline.extend(encode_command(&["SELECT", "2"]));
    pipeline.extend(encode_command(&["GET", "k"]));
    a.send_raw(&pipeline).await.expect("pipeline");
    for want in [bulk("in-db-2"), simple("OK"), bulk("in-db-2")] {
        assert_eq!(a.read_reply().await.expect("pipelined reply"), want);
    }

    assert!(b.cmd(&["GET", "k"]).await.is_nil(), "db 2 leaked into db 0");
    b.cmd(&["SET", "k", "in-db-0"]).await.expect_ok();
    assert_eq!(a.cmd(&["GET", "k"]).await, bulk("in-db-2"));

    a.cmd(&["SELECT", "0"]).await.expect_ok();
    assert_eq!(a.cmd(&["GET", "k"]).await, bulk("in-db-0"));

    // The dedicated connection is free again: another client can use it.
    let mut c = proxy.client().await;
    c.cmd(&["SELECT", "3"]).await.expect_ok();
    assert!(c.cmd(&["GET", "k"]).await.is_nil());
    c.cmd(&["SELECT", "0"]).await.expect_ok();

    let mut direct = redis.direct().await;
    direct.cmd(&["SELECT", "2"]).await.expect_ok();
    assert_eq!(direct.cmd(&["GET", "k"]).await, bulk("in-db-2"));
    drop(direct);
    redis.wait_until_no_connection_state("after SELECT 0");
}

/// A client that hangs up while its blocking command waits for a dedicated
/// connection leaves the queue: when the connection frees up, its command
/// does not run for nobody, and the next client gets the connection.
#[tokio::test]
async fn a_client_that_hangs_up_while_waiting_for_a_dedicated_connection_leaves_the_queue() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(
        &redis.url(),
        &["--max-pinned", "1", "--checkout-timeout", "30s"],
    )
    .await;
    // `a` blocks on the only dedicated connection.
    let mut a = proxy.client().await;
    a.send(&["BLPOP", "qa", "0"]).await.expect("BLPOP qa");
    wait::until("a's BLPOP to block", wait::DEADLINE, || {
        redis.blocked_clients() == 1
    });
    // `b` asks for one too, and hangs up while it waits.
    let mut b = proxy.client().await;
    b.send(&["BLPOP", "qb", "0"]).await.expect("BLPOP qb");
    drop(b);
    // Free `a`'s connection: it goes back to the pool.
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["LPUSH", "qa", "x"]).await, Reply::Int(1));
    assert_eq!(
        a.read_reply().await.expect("a's BLPOP reply"),
        Reply::Array(vec![bulk("qa"), bulk("x")])
    );
    // Had `b` kept its place in the queue, the connection would have gone to
    // it first, and its BLPOP would have run (and blocked) upstream.
    assert!(c.cmd(&["BLPOP", "qc", "0.01"]).await.is_nil());
    assert_eq!(
        redis.command_calls("blpop"),
        2,
        "a's and c's BLPOP, not b's"
    );
    assert_eq!(redis.blocked_clients(), 0);
}

/// A client that respool has stopped reading, and whose blocking command
/// waits with no deadline, is still noticed when it hangs up: its
/// dedicated connection is closed (which unblocks Redis) and its slot
/// freed. respool stops reading after a protocol error or QUIT, and while
/// `--max-pending-per-client` requests are in flight. Before, such a client
/// held its task, its slot and the dedicated connection until the command
/// ended: forever for `BLPOP key 0`, so a few connections could take every
/// dedicated connection for good.
#[tokio::test]
async fn a_client_no_longer_read_that_hangs_up_during_a_blocking_command_frees_its_connection() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(
        &redis.url(),
        &[
            "--max-pinned",
            "1",
            "--checkout-timeout",
            "30s",
            "--max-pending-per-client",
            "8",
        ],
    )
    .await;
    let blpop = encode_command(&["BLPOP", "never-pushed", "0"]);
    let garbage = b"*1\r\n$x\r\n".to_vec();
    let quit = encode_command(&["QUIT"]);
    let full_pipeline = encode_command(&["PING"]).repeat(20);
    for (why, rest, hang_up) in [
        ("a protocol error", &garbage, Leave::Close),
        ("QUIT", &quit, Leave::Close),
        ("a full pipeline", &full_pipeline, Leave::Close),
        ("a protocol error", &garbage, Leave::Reset),
        ("a full pipeline", &full_pipeline, Leave::Reset),
    ] {
        let context = format!("BLPOP, then {why}, then {hang_up:?}");
        let mut client = proxy.client().await;
        let mut sent = blpop.clone();
        sent.extend_from_slice(rest);
        client.send_raw(&sent).await.expect("send");
        wait::until(
            &format!("{context}: the BLPOP to block"),
            wait::DEADLINE,
            || redis.blocked_clients() == 1,
        );
        client.leave(hang_up);
        wait::until(
            &format!("{context}: the dedicated connection to close"),
            wait::DEADLINE,
            || redis.blocked_clients() == 0,
        );
        let mut next = proxy.client().await;
        // The only dedicated connection is free for the next client.
        assert!(
            next.cmd(&["BLPOP", "other", "0.01"]).await.is_nil(),
            "{context}"
        );
        let counters = next.respool_counters().await;
        assert_eq!(counters["connected_clients"], "1", "{context}");
    }
}

/// What a client is doing when it disconnects.
#[derive(Debug, Clone, Copy)]
enum Midway {
    Transaction,
    Watch,
    Block,
    Subscribe,
    ReplyOff,
    OtherDb,
}

async fn leave_midway(proxy: &TestProxy, redis: &RedisServer, midway: Midway) {
    let mut client = proxy.client().await;
    match midway {
        Midway::Transaction => {
            client.cmd(&["SELECT", "5"]).await.expect_ok();
            client.cmd(&["MULTI"]).await.expect_ok();
            assert_eq!(client.cmd(&["SET", "left", "x"]).await, queued());
        }
        Midway::Watch => {
            client.cmd(&["WATCH", "k0"]).await.expect_ok();
        }
        Midway::Block => {
            client
                .send(&["BLPOP", "blocked-list", "0"])
                .await
                .expect("BLPOP");
            wait::until("the BLPOP to block", wait::DEADLINE, || {
                redis.blocked_clients() == 1
            });
        }
        Midway::Subscribe => {
            let reply = client.cmd(&["SUBSCRIBE", "news"]).await;
            assert_eq!(
                reply,
                Reply::Array(vec![bulk("subscribe"), bulk("news"), Reply::Int(1)])
            );
            let reply = client.cmd(&["PSUBSCRIBE", "n*"]).await;
            assert_eq!(
                reply,
                Reply::Array(vec![bulk("psubscribe"), bulk("n*"), Reply::Int(2)])
            );
        }
        Midway::ReplyOff => {
            client
                .send(&["CLIENT", "REPLY", "OFF"])
                .await
                .expect("CLIENT REPLY OFF");
            client.send(&["SET", "silent", "1"]).await.expect("SET");
            wait::until("the silent SET to run", wait::DEADLINE, || {
                redis.command(&[b"GET", b"silent"]) == bulk("1")
            });
        }
        Midway::OtherDb => {
            client.cmd(&["SELECT", "7"]).await.expect_ok();
            client.cmd(&["SET", "k0", "db7"]).await.expect_ok();
        }
    }
    drop(client);
}

#[tokio::test]
async fn a_client_leaving_mid_session_leaves_no_state_on_the_connection() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(
        &redis.url(),
        &["--max-pinned", "1", "--checkout-timeout", "10s"],
    )
    .await;
    let mut setup = proxy.client().await;
    setup.cmd(&["SET", "k0", "db0"]).await.expect_ok();

    for midway in [
        Midway::Transaction,
        Midway::Watch,
        Midway::Block,
        Midway::Subscribe,
        Midway::ReplyOff,
        Midway::OtherDb,
    ] {
        leave_midway(&proxy, &redis, midway).await;

        // The next client gets the only dedicated connection (reset or new).
        let mut next = proxy.client().await;
        // A WATCH left behind would abort this transaction.
        setup.cmd(&["SET", "k0", "db0"]).await.expect_ok();
        assert_eq!(
            next.cmd(&["MULTI"]).await,
            simple("OK"),
            "after {midway:?}: MULTI on the dedicated connection"
        );
        assert_eq!(next.cmd(&["GET", "k0"]).await, queued(), "after {midway:?}");
        assert_eq!(
            next.cmd(&["PUBLISH", "news", "hello"]).await,
            queued(),
            "after {midway:?}"
        );
        assert_eq!(
            next.cmd(&["EXEC"]).await,
            Reply::Array(vec![bulk("db0"), Reply::Int(0)]),
            "after {midway:?}: wrong db, a leftover WATCH or a subscriber left"
        );
        // Nothing arrives out of band afterwards either.
        assert_eq!(
            next.cmd(&["PING"]).await,
            simple("PONG"),
            "after {midway:?}"
        );
        redis.wait_until_no_connection_state(&format!("after {midway:?}"));
    }

    // The queued SET of the abandoned transaction never ran; the blocked
    // pop took nothing.
    let mut direct = redis.direct().await;
    direct.cmd(&["SELECT", "5"]).await.expect_ok();
    assert!(direct.cmd(&["GET", "left"]).await.is_nil());
    direct.cmd(&["SELECT", "0"]).await.expect_ok();
    assert_eq!(
        setup.cmd(&["RPUSH", "blocked-list", "v"]).await,
        Reply::Int(1)
    );
    assert_eq!(setup.cmd(&["LLEN", "blocked-list"]).await, Reply::Int(1));
}

/// xorshift64*: deterministic, dependency-free randomness for the leak test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Prints the seed when the test fails, so the run can be repeated with
/// `RESPOOL_TEST_SEED`.
struct SeedReport(u64);

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "randomized session test failed; repeat with RESPOOL_TEST_SEED={}",
                self.0
            );
        }
    }
}

/// One short random session on a fresh client; panics (with the seed in the
/// message) when a reply is not what Redis must answer.
async fn random_session(proxy: Arc<TestProxy>, id: u64, seed: u64) {
    let mut rng = Rng((seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
    let mut client = proxy.client().await;
    let key = format!("key:{id}");
    let ops = 1 + rng.below(4);
    let ctx = |what: &str| format!("seed {seed}, session {id}: {what}");
    for _ in 0..ops {
        match rng.below(8) {
            0 => {
                let db = 1 + rng.below(15);
                client.cmd(&["SELECT", &db.to_string()]).await.expect_ok();
                let value = format!("db{db}");
                client
                    .cmd(&["SET", &format!("sel:{id}"), &value])
                    .await
                    .expect_ok();
                assert_eq!(
                    client.cmd(&["GET", &format!("sel:{id}")]).await,
                    bulk(&value),
                    "{}",
                    ctx("GET after SELECT")
                );
                if rng.chance(50) {
                    client.cmd(&["SELECT", "0"]).await.expect_ok();
                    assert!(
                        client.cmd(&["GET", &format!("sel:{id}")]).await.is_nil(),
                        "{}",
                        ctx("key of another db visible in db 0")
                    );
                }
            }
            1 => {
                client.cmd(&["MULTI"]).await.expect_ok();
                let n = 1 + rng.below(4);
                for _ in 0..n {
                    assert_eq!(
                        client.cmd(&["INCR", &key]).await,
                        queued(),
                        "{}",
                        ctx("INCR in MULTI")
                    );
                }
                match rng.below(3) {
                    0 => {
                        let exec = client.cmd(&["EXEC"]).await;
                        let Reply::Array(items) = &exec else {
                            panic!("{}", ctx(&format!("EXEC answered {exec}")));
                        };
                        assert_eq!(items.len() as u64, n, "{}", ctx("EXEC length"));
                    }
                    1 => assert_eq!(client.cmd(&["DISCARD"]).await, simple("OK")),
                    _ => return, // disconnect mid-transaction
                }
            }
            2 => {
                client.cmd(&["WATCH", "hot"]).await.expect_ok();
                if rng.chance(60) {
                    return; // disconnect while watching
                }
                client.cmd(&["UNWATCH"]).await.expect_ok();
            }
            3 => {
                let channel = format!("ch{}", rng.below(3));
                assert_eq!(
                    client.cmd(&["SUBSCRIBE", &channel]).await,
                    Reply::Array(vec![bulk("subscribe"), bulk(&channel), Reply::Int(1)]),
                    "{}",
                    ctx("SUBSCRIBE")
                );
                if rng.chance(50) {
                    return; // disconnect while subscribed
                }
                assert_eq!(
                    client.cmd(&["UNSUBSCRIBE"]).await,
                    Reply::Array(vec![bulk("unsubscribe"), bulk(&channel), Reply::Int(0)]),
                    "{}",
                    ctx("UNSUBSCRIBE")
                );
            }
            4 => {
                client
                    .send(&["CLIENT", "REPLY", "OFF"])
                    .await
                    .expect("CLIENT REPLY OFF");
                client.send(&["SET", &key, "quiet"]).await.expect("SET");
                if rng.chance(40) {
                    return; // disconnect with replies off
                }
                assert_eq!(
                    client.cmd(&["CLIENT", "REPLY", "ON"]).await,
                    simple("OK"),
                    "{}",
                    ctx("CLIENT REPLY ON")
                );
                assert_eq!(
                    client.cmd(&["GET", &key]).await,
                    bulk("quiet"),
                    "{}",
                    ctx("GET after CLIENT REPLY ON")
                );
            }
            5 => {
                if rng.chance(50) {
                    assert_eq!(
                        client.cmd(&["BLPOP", &format!("empty:{id}"), "0.02"]).await,
                        Reply::NilArray,
                        "{}",
                        ctx("BLPOP timing out")
                    );
                } else {
                    client
                        .send(&["BLPOP", &format!("empty:{id}"), "0"])
                        .await
                        .expect("BLPOP");
                    return; // disconnect, maybe while blocked
                }
            }
            6 => {
                // RESET ends whatever the client had.
                client.cmd(&["SELECT", "9"]).await.expect_ok();
                client.cmd(&["MULTI"]).await.expect_ok();
                assert_eq!(client.cmd(&["RESET"]).await, simple("RESET"));
                assert!(
                    client.cmd(&["GET", "sel:none"]).await.is_nil(),
                    "{}",
                    ctx("GET after RESET")
                );
            }
            _ => {
                client.cmd(&["SET", &key, "plain"]).await.expect_ok();
                assert_eq!(client.cmd(&["GET", &key]).await, bulk("plain"));
            }
        }
    }
    if rng.chance(30) {
        assert_eq!(client.cmd(&["QUIT"]).await, simple("OK"));
    }
}

/// Holds every dedicated connection at once and checks that each is clean:
/// not in a transaction, in db 0, no WATCH, not subscribed, replying.
async fn probe_dedicated_connections(
    proxy: &TestProxy,
    redis: &RedisServer,
    pinned: usize,
    context: &str,
) {
    let mut writer = proxy.client().await;
    // Invalidates any WATCH on `hot` left on a dedicated connection.
    writer.cmd(&["SET", "hot", "probe"]).await.expect_ok();
    let mut probes = Vec::new();
    for p in 0..pinned {
        let mut probe = proxy.client().await;
        let multi = probe.cmd(&["MULTI"]).await;
        assert_eq!(multi, simple("OK"), "{context}: probe {p}: MULTI");
        probes.push(probe);
    }
    // All dedicated connections are held now.
    for (p, probe) in probes.iter_mut().enumerate() {
        assert_eq!(probe.cmd(&["GET", "probe"]).await, queued(), "{context}");
        let exec = probe.cmd(&["EXEC"]).await;
        let Reply::Array(items) = &exec else {
            panic!("{context}: probe {p}: EXEC answered {exec} (a WATCH left behind?)");
        };
        assert_eq!(items[0], bulk("db0"), "{context}: probe {p}: not in db 0");
        assert_eq!(probe.cmd(&["PING"]).await, simple("PONG"), "{context}");
    }
    drop(probes);
    redis.wait_until_no_connection_state(context);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sessions_never_leak_state_to_the_next_client() {
    const SESSIONS: u64 = 200;
    const PINNED: usize = 2;
    let seed = std::env::var("RESPOOL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let _report = SeedReport(seed);
    eprintln!("RESPOOL_TEST_SEED={seed}");
    let mut rng = Rng(seed | 1);

    let redis = RedisServer::start();
    let proxy = Arc::new(
        TestProxy::start(
            &redis.url(),
            &["--max-pinned", "2", "--checkout-timeout", "10s"],
        )
        .await,
    );
    let mut setup = proxy.client().await;
    setup.cmd(&["SET", "probe", "db0"]).await.expect_ok();

    let mut next_id = 0;
    while next_id < SESSIONS {
        // One to three sessions at once: with two dedicated connections the
        // third waits for one to come back.
        let concurrent = (1 + rng.below(3)).min(SESSIONS - next_id);
        let mut tasks = Vec::new();
        for _ in 0..concurrent {
            tasks.push(tokio::spawn(random_session(proxy.clone(), next_id, seed)));
            next_id += 1;
        }
        for task in tasks {
            if let Err(e) = task.await {
                panic!("seed {seed}: a session failed: {e}");
            }
        }
        probe_dedicated_connections(
            &proxy,
            &redis,
            PINNED,
            &format!("seed {seed}, after session {}", next_id - 1),
        )
        .await;
    }
    // The shared lanes still work and see db 0.
    assert_eq!(setup.cmd(&["GET", "probe"]).await, bulk("db0"));
}

#[tokio::test]
async fn inside_a_transaction_stateful_commands_are_only_queued() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    // Inside MULTI, Redis answers +QUEUED once for each of these; nothing
    // blocks. (SUBSCRIBE and CLIENT REPLY are refused there: see
    // `subscribe_and_client_reply_are_refused_inside_a_transaction` in
    // pubsub.rs.)
    let script: Vec<Vec<&str>> = vec![
        vec!["MULTI"],
        vec!["BLPOP", "q", "0"],
        vec!["XREAD", "BLOCK", "0", "STREAMS", "s", "$"],
        vec!["SELECT", "3"],
        vec!["DISCARD"],
        vec!["PING"],
        vec!["SET", "k", "v"],
        vec!["GET", "k"],
    ];
    let mut expected = Vec::new();
    let mut direct = redis.direct().await;
    for command in &script {
        expected.push(direct.cmd(command).await);
    }
    assert_eq!(expected[1], queued());
    let mut client = proxy.client().await;
    for (command, want) in script.iter().zip(&expected) {
        let got = client
            .try_cmd(command)
            .await
            .unwrap_or_else(|e| panic!("{command:?} inside MULTI: {e}"));
        assert_eq!(
            &got, want,
            "{command:?}: the proxy's reply differs from Redis's"
        );
    }
}

/// Redis queues AUTH, HELLO, CLIENT ID/GETNAME/SETNAME and INFO inside MULTI
/// and runs them at EXEC. respool answers those itself, so it cannot put their
/// results into EXEC's array: it refuses them while queueing instead, and
/// Redis's rule for a refused command applies (EXECABORT, nothing runs). A
/// client library counting replies never sees one too few.
#[tokio::test]
async fn commands_respool_answers_itself_are_refused_inside_a_transaction() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut client = proxy.client().await;
    let commands: [&[&str]; 6] = [
        &["CLIENT", "SETNAME", "inside"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "ID"],
        &["HELLO", "3"],
        &["AUTH", "secret-password"],
        &["INFO", "respool"],
    ];
    for (i, command) in commands.iter().enumerate() {
        client.cmd(&["MULTI"]).await.expect_ok();
        let value = format!("v{i}");
        assert_eq!(client.cmd(&["SET", "k", &value]).await, queued());
        let refused = client.cmd(command).await;
        refused.expect_error_code("ERR");
        let text = format!("{refused:?}");
        assert!(
            text.contains("cannot be queued in a transaction"),
            "{command:?}: {text}"
        );
        if command[0] == "INFO" {
            assert!(text.contains("INFO RESPOOL cannot"), "{text}");
        }
        assert!(
            !text.contains("secret"),
            "an AUTH argument was echoed: {text}"
        );
        assert_eq!(
            client.cmd(&["EXEC"]).await,
            Reply::Error("EXECABORT Transaction discarded because of previous errors.".into()),
            "{command:?} inside MULTI"
        );
        assert_eq!(
            client.cmd(&["GET", "k"]).await,
            Reply::Nil,
            "{command:?}: the aborted SET ran"
        );
    }
    // None of them took effect, and the client is out of the transaction.
    assert_eq!(client.cmd(&["CLIENT", "GETNAME"]).await, Reply::Nil);
    assert_eq!(client.cmd(&["PING"]).await, simple("PONG"));
    assert_eq!(
        client.cmd(&["EXEC"]).await,
        Reply::Error("ERR EXEC without MULTI".into())
    );
    // QUIT is not queued, by Redis either: it answers and closes at once.
    client.cmd(&["MULTI"]).await.expect_ok();
    client.cmd(&["QUIT"]).await.expect_ok();
    let after = client.read_reply().await;
    assert!(
        matches!(&after, Err(e) if e.is_closed()),
        "after QUIT: {after:?}"
    );
}

#[tokio::test]
async fn monitor_streams_what_redis_runs_and_reset_ends_it() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut monitor = proxy.client().await;
    monitor.cmd(&["MONITOR"]).await.expect_ok();
    let mut other = proxy.client().await;
    other.cmd(&["SET", "mon:k", "v"]).await.expect_ok();
    // The stream shows the command as Redis ran it (on respool's connection).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let line = monitor.read_reply().await.expect("a monitor line");
        if line
            .as_str()
            .is_some_and(|l| l.contains(r#""SET" "mon:k" "v""#))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never saw the SET");
    }
    // RESET ends it; the client is an ordinary one again.
    monitor.send(&["RESET"]).await.expect("sent");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while monitor.read_reply().await.expect("a reply") != Reply::Simple("RESET".into()) {
        assert!(std::time::Instant::now() < deadline, "RESET never answered");
    }
    assert_eq!(monitor.cmd(&["GET", "mon:k"]).await, bulk("v"));
    redis.wait_until_no_connection_state("after MONITOR and RESET");

    // Inside MULTI, Redis would refuse it at EXEC: refused when queued.
    monitor.cmd(&["MULTI"]).await.expect_ok();
    monitor.cmd(&["MONITOR"]).await.expect_error_code("ERR");
    monitor.cmd(&["EXEC"]).await.expect_error_code("EXECABORT");
}
