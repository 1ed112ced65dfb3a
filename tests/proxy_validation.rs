//! The validation gate and `-LOADING` handling against real failures: a wrong
//! password, a read-only replica, a server loading its dataset, and the probe
//! keys that validation writes (DESIGN.md "upstream handshake", invariant 6).

mod support;

use std::collections::HashSet;
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

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut loading_errors = 0;
    loop {
        let (reply, took) = timed(&mut client, &["GET", "key:7"]).await;
        if reply == bulk("value:7") {
            break;
        }
        assert_unavailable(&reply, "PING rejected: LOADING");
        assert!(
            took < Duration::from_secs(4),
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

#[tokio::test]
async fn probe_keys_are_never_left_behind() {
    let redis = RedisServer::start();
    let mut validated = 0;
    for round in 0..5 {
        // Two lanes plus two spares: four validated connections per start.
        let proxy =
            TestProxy::start(&redis.url(), &["--max-connections", "2", "--min-idle", "2"]).await;
        let mut clients = Vec::new();
        for c in 0..4 {
            let mut client = proxy.client().await;
            assert_eq!(
                client.cmd(&["INCR", &format!("round:{round}:{c}")]).await,
                Reply::Int(1)
            );
            clients.push(client);
        }
        validated += 4;
        // Stop only once every validation has finished (its DEL ran): a
        // probe cut short mid-way is the TTL's job, not this test's.
        wait::until_async(
            "all four connections to be validated",
            wait::DEADLINE,
            || redis.command_stat("del", "calls") >= validated,
        )
        .await;
        proxy.shutdown().await;
    }

    assert_eq!(
        redis.command(&[b"KEYS", b"respool:probe*"]),
        Reply::Array(vec![]),
        "probe keys left behind"
    );
    // Validation did write and delete a probe on every connection: one SET
    // (the clients never SET) and one DEL each.
    let sets = redis.command_stat("set", "calls");
    let dels = redis.command_stat("del", "calls");
    assert_eq!(sets, dels, "{sets} probe SETs but {dels} probe DELs");
    assert!(
        sets >= validated,
        "only {sets} probes for {validated} connections"
    );
}

#[tokio::test]
async fn probe_keys_are_unique_and_use_the_configured_prefix() {
    let redis = RedisServer::start();
    let mut monitor = redis.direct().await;
    assert_eq!(monitor.cmd(&["MONITOR"]).await, Reply::Simple("OK".into()));

    let proxy = TestProxy::start(
        &redis.url(),
        &[
            "--max-connections",
            "3",
            "--min-idle",
            "1",
            "--probe-prefix",
            "itest:probe",
        ],
    )
    .await;
    let mut client = proxy.client().await;
    assert_eq!(client.cmd(&["PING"]).await, Reply::Simple("PONG".into()));

    // MONITOR lines look like `+1700000000.123456 [0 127.0.0.1:5555] "SET" "key" ...`.
    let pid = std::process::id();
    let mut set_keys = Vec::new();
    let mut del_keys = HashSet::new();
    while set_keys.len() < 4 || del_keys.len() < 4 {
        let line = monitor.read_reply().await.expect("a MONITOR line");
        let line = line.as_str().unwrap_or_default().to_string();
        let words: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        match words.first().copied() {
            Some("SET") => set_keys.push(words[1].to_string()),
            Some("DEL") => {
                del_keys.insert(words[1].to_string());
            }
            _ => {}
        }
    }
    let unique: HashSet<&String> = set_keys.iter().collect();
    for key in &set_keys {
        assert!(del_keys.contains(key), "probe {key} was never deleted");
    }
    assert_eq!(
        unique.len(),
        set_keys.len(),
        "probe keys reused: {set_keys:?}"
    );
    for key in &set_keys {
        let parts: Vec<&str> = key.split(':').collect();
        assert!(
            parts.len() == 5
                && parts[0] == "itest"
                && parts[1] == "probe"
                && parts[2] == pid.to_string()
                && parts[3].parse::<u64>().is_ok()
                && parts[4].len() == 16
                && parts[4].chars().all(|c| c.is_ascii_hexdigit()),
            "probe key {key:?} is not itest:probe:<pid>:<n>:<16 hex digits>"
        );
    }
    drop(client);
    proxy.shutdown().await;
    assert_eq!(
        redis.command(&[b"KEYS", b"itest:probe*"]),
        Reply::Array(vec![])
    );
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
