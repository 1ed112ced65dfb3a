//! The validation gate and `-LOADING` handling against real failures: a wrong
//! password, a read-only replica, a server loading its dataset, and the write
//! probe that proves writes without writing (DESIGN.md "upstream handshake",
//! invariant 6).

mod support;

use std::time::{Duration, Instant};

use support::{wait, RedisServer, Reply, TestClient, TestProxy};

fn bulk(s: impl AsRef<[u8]>) -> Reply {
    Reply::Bulk(s.as_ref().to_vec())
}

/// Sends `command` and returns the reply with how long it took.
async fn timed(client: &mut TestClient, command: &[&str]) -> (Reply, Duration) {
    let started = Instant::now();
    let reply = client.cmd(command).await;
    (reply, started.elapsed())
}

/// Asserts that `reply` is the proxy's "upstream unavailable" error and that
/// its cause contains `cause`.
#[track_caller]
fn assert_unavailable(reply: &Reply, cause: &str) {
    let Reply::Error(text) = reply else {
        panic!("expected an 'upstream unavailable' error, got {reply}");
    };
    assert!(
        text.starts_with("ERR upstream ")
            && text.contains(" unavailable: ")
            && text.contains(cause),
        "expected an 'upstream unavailable' error mentioning {cause:?}, got {text:?}"
    );
}

#[tokio::test]
async fn a_wrong_or_missing_password_fails_requests_promptly_and_clearly() {
    let redis = RedisServer::builder().password("right").start();
    let plain_url = format!("redis://127.0.0.1:{}", redis.port());
    let fast = ["--checkout-timeout", "1s", "--backoff-cap", "200ms"];

    let wrong = TestProxy::start(
        &plain_url,
        &[&fast[..], &["--upstream-password", "wrong"]].concat(),
    )
    .await;
    let mut client = wrong.client().await;
    let (reply, took) = timed(&mut client, &["GET", "k"]).await;
    assert_unavailable(&reply, "AUTH rejected: WRONGPASS");
    assert!(
        !reply.to_string().contains("wrong"),
        "the password leaked into {reply}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");

    let missing = TestProxy::start(&plain_url, &fast).await;
    let mut client = missing.client().await;
    let (reply, took) = timed(&mut client, &["GET", "k"]).await;
    assert_unavailable(&reply, "NOAUTH");
    assert!(took < Duration::from_secs(4), "took {took:?}");

    // The right password (from the URL) works.
    let right = TestProxy::start(&redis.url(), &fast).await;
    let mut client = right.client().await;
    client.cmd(&["SET", "k", "v"]).await.expect_ok();
    assert_eq!(client.cmd(&["GET", "k"]).await, bulk("v"));
}

#[tokio::test]
async fn a_read_only_replica_fails_write_validation_but_serves_reads_with_ping_validation() {
    let master = RedisServer::start();
    let replica = RedisServer::replica_of(&master);
    replica.wait_replica_synced();
    master
        .command(&[b"SET", b"replicated", b"from-master"])
        .expect_ok();
    wait::until_async("the key to reach the replica", wait::DEADLINE, || {
        replica.command(&[b"GET", b"replicated"]) == bulk("from-master")
    })
    .await;
    let fast = ["--checkout-timeout", "1s", "--backoff-cap", "200ms"];

    let write_checked = TestProxy::start(
        &replica.url(),
        &[&fast[..], &["--validate", "write"]].concat(),
    )
    .await;
    let mut client = write_checked.client().await;
    let (reply, took) = timed(&mut client, &["GET", "replicated"]).await;
    assert_unavailable(&reply, "probe SET rejected: READONLY");
    assert!(took < Duration::from_secs(4), "took {took:?}");

    let ping_checked = TestProxy::start(
        &replica.url(),
        &[&fast[..], &["--validate", "ping"]].concat(),
    )
    .await;
    let mut client = ping_checked.client().await;
    assert_eq!(
        client.cmd(&["GET", "replicated"]).await,
        bulk("from-master")
    );
    // A write gets the replica's own error, exactly as Redis words it.
    let direct = replica.command(&[b"SET", b"x", b"1"]);
    direct.expect_error_code("READONLY");
    assert_eq!(client.cmd(&["SET", "x", "1"]).await, direct);
}

#[tokio::test]
async fn validation_reports_loading_then_requests_succeed_once_loaded() {
    // At least 3 s of loading (30 000 keys, 100 µs each), against a
    // checkout timeout of 0.5 s.
    let redis = RedisServer::builder().loading_dataset(30_000, 100).start();
    redis.wait_loading();
    let proxy = TestProxy::start(
        &redis.url(),
        &["--checkout-timeout", "500ms", "--backoff-cap", "100ms"],
    )
    .await;
    let mut client = proxy.client().await;
    // A request's error after --checkout-timeout names the last failed
    // attempt: wait until there was one (on a loaded machine the first may
    // take longer than the timeout, and an error then has no cause to name).
    wait::until_ok(
        "a first validation attempt to fail",
        wait::DEADLINE,
        async || {
            let info = client.respool_counters().await;
            match support::counter(&info, "upstream_connect_failures") {
                0 => Err(format!("{info:?}")),
                _ => Ok(()),
            }
        },
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut loading_errors = 0;
    loop {
        let (reply, took) = timed(&mut client, &["GET", "key:7"]).await;
        if reply == bulk("value:7") {
            break;
        }
        // The LOADING error itself shows it did not wait for the load to
        // end; the bound, 20× the checkout timeout, that it did not wait
        // without one (generous: a loaded 2-core machine once took 4 s).
        assert_unavailable(&reply, "PING rejected: LOADING");
        assert!(
            took < Duration::from_secs(10),
            "a request waited {took:?} with --checkout-timeout 500ms"
        );
        loading_errors += 1;
        assert!(
            Instant::now() < deadline,
            "still failing when the dataset should have loaded"
        );
    }
    assert!(
        loading_errors > 0,
        "no LOADING error seen although loading lasts seconds"
    );
    assert!(!redis.is_loading(), "served while Redis was still loading");
    assert_eq!(client.cmd(&["DBSIZE"]).await, Reply::Int(30_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_replies_are_held_within_the_hold_window() {
    let redis = std::sync::Arc::new(RedisServer::start());
    redis
        .command(&[b"DEBUG", b"POPULATE", b"30000"])
        .expect_ok();
    // Connections validated now stay open across the reload below, so the
    // proxy sees genuine -LOADING replies to requests, not failed
    // validations.
    let retry = [
        "--retries",
        "100",
        "--backoff-base",
        "20ms",
        "--backoff-cap",
        "100ms",
        "--max-connections",
        "1",
    ];
    let patient = TestProxy::start(
        &redis.url(),
        &[&retry[..], &["--hold-timeout", "60s"]].concat(),
    )
    .await;
    let hasty = TestProxy::start(
        &redis.url(),
        &[&retry[..], &["--hold-timeout", "1s"]].concat(),
    )
    .await;
    let mut patient_client = patient.client().await;
    let mut hasty_client = hasty.client().await;
    patient_client.set_read_timeout(Duration::from_secs(90));
    assert_eq!(patient_client.cmd(&["GET", "key:1"]).await, bulk("value:1"));
    assert_eq!(hasty_client.cmd(&["GET", "key:1"]).await, bulk("value:1"));

    // Reload in place, slowly (at least 3 s): connections stay open and get
    // -LOADING meanwhile.
    redis
        .command(&[b"CONFIG", b"SET", b"key-load-delay", b"100"])
        .expect_ok();
    redis
        .command(&[
            b"CONFIG",
            b"SET",
            b"loading-process-events-interval-bytes",
            b"1024",
        ])
        .expect_ok();
    let reloading = {
        let redis = std::sync::Arc::clone(&redis);
        tokio::task::spawn_blocking(move || redis.command(&[b"DEBUG", b"RELOAD"]))
    };
    wait::until_async("Redis to start reloading", wait::DEADLINE, || {
        redis.is_loading()
    })
    .await;
    let rejected_before = redis.command_stat("get", "rejected_calls");

    // A hold window shorter than the load: Redis's own -LOADING error, once
    // the window runs out, about 1 s later.
    let (reply, took) = timed(&mut hasty_client, &["GET", "key:2"]).await;
    assert_eq!(
        reply,
        Reply::Error("LOADING Redis is loading the dataset in memory".into())
    );
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(4),
        "the LOADING error came after {took:?} with --hold-timeout 1s"
    );

    // A hold window longer than the load: held until served, no error.
    let (reply, took) = timed(&mut patient_client, &["GET", "key:3"]).await;
    assert_eq!(reply, bulk("value:3"), "after {took:?}");
    reloading.await.expect("DEBUG RELOAD").expect_ok();
    assert!(
        redis.command_stat("get", "rejected_calls") > rejected_before,
        "Redis never answered the proxy's GET with -LOADING: nothing was retried"
    );
    assert_eq!(hasty_client.cmd(&["GET", "key:4"]).await, bulk("value:4"));
}

/// `rdb_changes_since_last_save`: every write Redis made since its start
/// (these servers never save).
fn writes_so_far(redis: &RedisServer) -> u64 {
    let Reply::Bulk(info) = redis.command(&[b"INFO", b"persistence"]) else {
        panic!("INFO persistence is not a bulk string");
    };
    let info = String::from_utf8_lossy(&info).into_owned();
    info.lines()
        .find_map(|l| l.strip_prefix("rdb_changes_since_last_save:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("rdb_changes_since_last_save in INFO persistence")
}

#[tokio::test]
async fn the_write_probe_proves_writes_without_writing() {
    let redis = RedisServer::start();
    // Sees every key any connection changes: RESP3 tracking in BCAST mode.
    let mut observer = redis.direct().await;
    assert!(matches!(observer.cmd(&["HELLO", "3"]).await, Reply::Map(_)));
    assert_eq!(
        observer.cmd(&["CLIENT", "TRACKING", "on", "BCAST"]).await,
        Reply::Simple("OK".into())
    );

    let mut validated = 0;
    for _ in 0..3 {
        // Two lanes plus two spares: four validated connections per start.
        let proxy =
            TestProxy::start(&redis.url(), &["--max-connections", "2", "--min-idle", "2"]).await;
        let mut clients = Vec::new();
        for _ in 0..4 {
            let mut client = proxy.client().await;
            assert_eq!(client.cmd(&["GET", "k"]).await, Reply::Nil);
            clients.push(client);
        }
        validated += 4;
        wait::until_async(
            "all four connections to be validated",
            wait::DEADLINE,
            || redis.command_stat("discard", "calls") >= validated,
        )
        .await;
        proxy.shutdown().await;
    }

    // Every probe was refused nothing, and none of them ran.
    assert_eq!(redis.command_stat("multi", "calls"), validated);
    assert_eq!(redis.command_stat("set", "calls"), 0, "a probe SET ran");
    assert_eq!(writes_so_far(&redis), 0, "validation wrote to the dataset");
    assert_eq!(redis.command(&[b"DBSIZE"]), Reply::Int(0));
    // The observer saw no key change; a real write shows that it would have.
    assert_eq!(
        redis.command(&[b"SET", b"canary", b"1"]),
        Reply::Simple("OK".into())
    );
    let push = observer
        .read_reply_within(wait::DEADLINE)
        .await
        .expect("an invalidation push");
    assert_eq!(
        push,
        Reply::Push(vec![
            Reply::Bulk(b"invalidate".to_vec()),
            Reply::Array(vec![Reply::Bulk(b"canary".to_vec())])
        ]),
        "the first key change the observer saw was not the test's own"
    );
}

#[tokio::test]
async fn the_write_probe_names_a_key_under_the_probe_prefix_for_acls() {
    let redis = RedisServer::start();
    let reply = redis.command(&[
        b"ACL", b"SETUSER", b"app", b"on", b">app-pw", b"~app:*", b"+@all",
    ]);
    assert_eq!(reply, Reply::Simple("OK".into()));
    let url = format!("redis://app:app-pw@127.0.0.1:{}", redis.port());
    let fast = ["--checkout-timeout", "1s", "--backoff-cap", "200ms"];

    let outside = TestProxy::start(&url, &fast).await;
    let mut client = outside.client().await;
    let reply = client.cmd(&["GET", "app:k"]).await;
    assert_unavailable(&reply, "probe SET rejected: NOPERM");
    outside.shutdown().await;

    let inside = TestProxy::start(
        &url,
        &[&fast[..], &["--probe-prefix", "app:probe"]].concat(),
    )
    .await;
    let mut client = inside.client().await;
    assert_eq!(client.cmd(&["GET", "app:k"]).await, Reply::Nil);
    assert_eq!(redis.command(&[b"KEYS", b"*"]), Reply::Array(vec![]));
}

/// The validation's `INFO server` (for HELLO's `version`) never fails the
/// gate: with an ACL that forbids it, connections still validate, and HELLO
/// is answered at once, with the version it could not learn as `unknown`,
/// instead of waiting for a version that never comes.
#[tokio::test]
async fn hello_is_answered_when_an_acl_forbids_info() {
    let redis = RedisServer::builder()
        .arg_values(
            "user",
            &["app", "on", ">app-secret", "~*", "&*", "+@all", "-info"],
        )
        .start();
    let url = format!("redis://app:app-secret@127.0.0.1:{}", redis.port());
    let proxy = TestProxy::start(&url, &["--hold-timeout", "60s"]).await;
    let mut client = proxy.client().await;
    let started = Instant::now();
    let hello = client.cmd(&["HELLO", "3"]).await;
    let Reply::Map(fields) = &hello else {
        panic!("HELLO 3 answered {hello}");
    };
    assert!(
        fields.contains(&(
            Reply::Bulk(b"version".to_vec()),
            Reply::Bulk(b"unknown".to_vec())
        )),
        "{hello}"
    );
    assert!(
        fields.contains(&(Reply::Bulk(b"proto".to_vec()), Reply::Int(3))),
        "{hello}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "HELLO took {:?}",
        started.elapsed()
    );
    client.cmd(&["SET", "acl:k", "v"]).await.expect_ok();
    let info = client.cmd(&["INFO", "server"]).await;
    assert!(info.is_error(), "the ACL should forbid INFO: {info}");
}
