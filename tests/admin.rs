//! The admin console (`RESPOOL …` for `--admin-user`) and the slowlog,
//! against a real Redis: who may run it, what POOLS / CLIENTS / STATS /
//! CONFIG show (and that CONFIG shows no secret), PAUSE and RESUME under
//! load (held, none lost, none doubled, each client's order kept), PAUSE
//! WRITE, a pause that ends by itself, DRAIN, and SLOWLOG.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::wait::{until_async, until_ok, DEADLINE};
use support::{RedisServer, Reply, TestClient, TestProxy};

const ADMIN: &[&str] = &[
    "--user",
    "app:app-pw",
    "--user",
    "ops:ops-pw",
    "--admin-user",
    "ops",
];

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

async fn login(proxy: &TestProxy, user: &str, password: &str) -> TestClient {
    let mut client = proxy.client().await;
    assert_eq!(client.cmd(&["AUTH", user, password]).await, ok());
    client
}

async fn admin(proxy: &TestProxy) -> TestClient {
    login(proxy, "ops", "ops-pw").await
}

/// A record: a RESP3 map, or a RESP2 flat array of names and values.
fn record(reply: &Reply) -> HashMap<String, Reply> {
    match reply {
        Reply::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| (k.as_str().expect("a field name").to_string(), v.clone()))
            .collect(),
        Reply::Array(flat) => {
            assert_eq!(flat.len() % 2, 0, "{reply}");
            flat.chunks(2)
                .map(|kv| {
                    (
                        kv[0].as_str().expect("a field name").to_string(),
                        kv[1].clone(),
                    )
                })
                .collect()
        }
        other => panic!("not a record: {other}"),
    }
}

fn records(reply: &Reply) -> Vec<HashMap<String, Reply>> {
    match reply {
        Reply::Array(items) => items.iter().map(record).collect(),
        other => panic!("not a list of records: {other}"),
    }
}

fn text(fields: &HashMap<String, Reply>, name: &str) -> String {
    fields
        .get(name)
        .and_then(Reply::as_str)
        .unwrap_or_else(|| panic!("no text field {name} in {fields:?}"))
        .to_string()
}

fn int(fields: &HashMap<String, Reply>, name: &str) -> i64 {
    fields
        .get(name)
        .and_then(Reply::as_int)
        .unwrap_or_else(|| panic!("no integer field {name} in {fields:?}"))
}

#[tokio::test]
async fn only_the_admin_user_may_run_respool_commands() {
    let redis = RedisServer::start();
    let noperm = "NOPERM this user has no permissions to run the 'respool' command";

    let proxy = TestProxy::start(&redis.url(), ADMIN).await;
    let mut app = login(&proxy, "app", "app-pw").await;
    assert_eq!(
        app.cmd(&["RESPOOL", "POOLS"]).await,
        Reply::Error(noperm.into())
    );
    let mut ops = admin(&proxy).await;
    assert!(matches!(
        ops.cmd(&["RESPOOL", "HELP"]).await,
        Reply::Array(_)
    ));
    // Logged out, the admin is nobody special.
    assert_eq!(ops.cmd(&["RESET"]).await, Reply::Simple("RESET".into()));
    assert_eq!(ops.cmd(&["AUTH", "app", "app-pw"]).await, ok());
    assert_eq!(
        ops.cmd(&["RESPOOL", "STATS"]).await,
        Reply::Error(noperm.into())
    );
    // HELLO … AUTH logs the admin in too.
    assert!(matches!(
        ops.cmd(&["HELLO", "3", "AUTH", "ops", "ops-pw"]).await,
        Reply::Map(_)
    ));
    assert!(matches!(
        ops.cmd(&["RESPOOL", "STATS"]).await,
        Reply::Map(_)
    ));
    assert!(ops
        .cmd(&["RESPOOL", "NOSUCH"])
        .await
        .to_string()
        .contains("unknown subcommand"));
    proxy.shutdown().await;

    // Without --admin-user nobody may, whatever it authenticated as.
    let open = TestProxy::start(&redis.url(), &[]).await;
    let mut anyone = open.client().await;
    assert_eq!(
        anyone.cmd(&["RESPOOL", "POOLS"]).await,
        Reply::Error(noperm.into())
    );
    open.shutdown().await;
}

#[tokio::test]
async fn the_admin_sees_pools_clients_stats_and_config_without_secrets() {
    let redis = RedisServer::builder().password("upstream-secret").start();
    let url = format!("redis://:upstream-secret@{}", redis.addr());
    let proxy = TestProxy::start(&url, ADMIN).await;
    let mut app = login(&proxy, "app", "app-pw").await;
    assert_eq!(app.cmd(&["CLIENT", "SETNAME", "billing"]).await, ok());
    assert_eq!(app.cmd(&["SET", "k", "v"]).await, ok());

    for protocol in ["2", "3"] {
        let mut ops = proxy.client().await;
        assert!(!ops
            .cmd(&["HELLO", protocol, "AUTH", "ops", "ops-pw"])
            .await
            .is_error());

        // HELLO 3 starts the RESP3 lanes: their checkouts count as waiters
        // until they hold their connections.
        let pools = until_ok("the checkouts to stop waiting", DEADLINE, async || {
            let pools = records(&ops.cmd(&["RESPOOL", "POOLS"]).await);
            if pools.iter().all(|p| int(p, "waiters") == 0) {
                Ok(pools)
            } else {
                Err(format!("checkouts still waiting: {pools:?}"))
            }
        })
        .await;
        assert_eq!(pools.len(), 1, "{pools:?}");
        let pool = &pools[0];
        assert_eq!(text(pool, "upstream"), redis.addr().to_string());
        assert_eq!(text(pool, "identity"), "default");
        assert_eq!(text(pool, "role"), "primary");
        assert_eq!(text(pool, "state"), "validated");
        assert!(int(pool, "lanes") >= 1, "{pool:?}");
        assert_eq!(int(pool, "pinned_max"), 64);
        assert_eq!(int(pool, "pinned_in_use"), 0);
        assert_eq!(int(pool, "waiters"), 0);

        let clients = records(&ops.cmd(&["RESPOOL", "CLIENTS"]).await);
        let billing = clients
            .iter()
            .find(|c| c.get("name").and_then(Reply::as_str) == Some("billing"))
            .unwrap_or_else(|| panic!("the app client is listed: {clients:?}"));
        assert_eq!(text(billing, "addr"), app.local_addr().to_string());
        assert_eq!(text(billing, "state"), "normal");
        assert_eq!(int(billing, "pending"), 0);
        assert!(int(billing, "age") >= 0 && int(billing, "idle") >= 0);
        assert!(clients.len() >= 2, "the admin itself is a client too");

        let stats = record(&ops.cmd(&["RESPOOL", "STATS"]).await);
        assert!(int(&stats, "requests") >= 2, "{stats:?}");
        assert_eq!(text(&stats, "pause"), "none");
        assert_eq!(int(&stats, "paused_or_draining"), 0);

        let config_reply = ops.cmd(&["RESPOOL", "CONFIG"]).await;
        let shown = format!("{config_reply}");
        for secret in ["upstream-secret", "app-pw", "ops-pw"] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
        let config = record(&config_reply);
        assert_eq!(text(&config, "admin-user"), "ops");
        assert_eq!(text(&config, "user"), "app,ops");
        assert_eq!(text(&config, "upstream-password"), "(set)");
        assert_eq!(
            text(&config, "upstream"),
            format!("redis://{}/0", redis.addr())
        );
        assert_eq!(text(&config, "slowlog-threshold"), "10ms");
    }
    // Embedded without a configuration source to re-read (the binary has
    // one: tests/reload.rs).
    let mut ops = admin(&proxy).await;
    let refused = ops.cmd(&["RESPOOL", "RELOAD"]).await;
    let Reply::Error(why) = &refused else {
        panic!("expected a refusal, got {refused}");
    };
    assert!(why.contains("reloading is not enabled"), "{why}");
    proxy.shutdown().await;
}

/// What one load client did: INCRs acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

/// `clients` clients, each INCRing its own key and a shared total in a
/// pipeline of two, checking that its own key's replies count 1, 2, 3, …
/// (so none of its INCRs was lost, doubled or reordered).
async fn start_load(proxy: &TestProxy, clients: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut client = login(proxy, "app", "app-pw").await;
        let (stop, acked) = (stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            client.set_read_timeout(Duration::from_secs(60));
            let own = format!("own:{i}");
            let mut done = 0u64;
            while !stop.load(Ordering::Relaxed) {
                client.send(&["INCR", own.as_str()]).await.expect("sent");
                client.send(&["INCR", "total"]).await.expect("sent");
                let mine = client.read_reply().await.expect("INCR own");
                assert_eq!(mine, Reply::Int(done as i64 + 1), "client {i}'s order");
                assert!(matches!(
                    client.read_reply().await.expect("INCR total"),
                    Reply::Int(_)
                ));
                done += 1;
                acked.fetch_add(1, Ordering::Relaxed);
            }
            done
        }));
    }
    Load { stop, acked, tasks }
}

fn redis_int(redis: &RedisServer, key: &str) -> i64 {
    match redis.command(&[b"GET", key.as_bytes()]) {
        Reply::Bulk(v) => String::from_utf8(v).unwrap().parse().unwrap(),
        Reply::Nil => 0,
        other => panic!("GET {key}: {other}"),
    }
}

#[tokio::test]
async fn pause_holds_requests_under_load_and_resume_releases_them_all_in_order() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), ADMIN).await;
    let mut ops = admin(&proxy).await;
    let load = start_load(&proxy, 8).await;
    let acked = load.acked.clone();
    until_async("the load to run", DEADLINE, || {
        acked.load(Ordering::Relaxed) > 200
    })
    .await;

    assert_eq!(ops.cmd(&["RESPOOL", "PAUSE", "60s"]).await, ok());
    let stats = record(&ops.cmd(&["RESPOOL", "STATS"]).await);
    assert_eq!(text(&stats, "pause"), "all");
    assert_eq!(int(&stats, "paused_or_draining"), 1);
    // What was in flight finishes; then the counter stands still.
    let mut last = redis_int(&redis, "total");
    let settled = Instant::now() + DEADLINE;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = redis_int(&redis, "total");
        if now == last {
            break;
        }
        assert!(Instant::now() < settled, "the counter never stopped");
        last = now;
    }
    let acked_while_paused = load.acked.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        redis_int(&redis, "total"),
        last,
        "requests ran while paused"
    );
    assert_eq!(
        load.acked.load(Ordering::Relaxed),
        acked_while_paused,
        "replies arrived while paused"
    );

    assert_eq!(ops.cmd(&["RESPOOL", "RESUME"]).await, ok());
    let acked = load.acked.clone();
    until_async("the load to run again", DEADLINE, || {
        acked.load(Ordering::Relaxed) > acked_while_paused + 100
    })
    .await;
    load.stop.store(true, Ordering::Relaxed);
    let mut per_client = Vec::new();
    for task in load.tasks {
        per_client.push(task.await.expect("a load client failed"));
    }
    // Every acknowledged INCR counted once, on the client's key and the total.
    for (i, done) in per_client.iter().enumerate() {
        assert_eq!(redis_int(&redis, &format!("own:{i}")), *done as i64);
    }
    assert_eq!(
        redis_int(&redis, "total"),
        per_client.iter().sum::<u64>() as i64
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn pause_write_lets_reads_through_and_a_pause_ends_by_itself() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), ADMIN).await;
    let mut ops = admin(&proxy).await;
    let mut app = login(&proxy, "app", "app-pw").await;
    assert_eq!(app.cmd(&["SET", "k", "0"]).await, ok());

    assert_eq!(ops.cmd(&["RESPOOL", "PAUSE", "WRITE", "60000"]).await, ok());
    assert_eq!(
        text(&record(&ops.cmd(&["RESPOOL", "STATS"]).await), "pause"),
        "write"
    );
    assert_eq!(app.cmd(&["GET", "k"]).await, Reply::Bulk(b"0".to_vec()));
    app.send(&["INCR", "k"]).await.expect("sent");
    app.send(&["GET", "k"]).await.expect("sent");
    assert!(
        app.read_reply_within(Duration::from_millis(300))
            .await
            .is_err_and(|e| e.is_timeout()),
        "the write was not held"
    );
    assert_eq!(redis_int(&redis, "k"), 0);
    assert_eq!(ops.cmd(&["RESPOOL", "RESUME"]).await, ok());
    assert_eq!(app.read_reply().await.expect("INCR"), Reply::Int(1));
    assert_eq!(
        app.read_reply().await.expect("GET"),
        Reply::Bulk(b"1".to_vec())
    );

    // The timeout releases what was held, as if RESUMEd.
    assert_eq!(ops.cmd(&["RESPOOL", "PAUSE", "300"]).await, ok());
    let held = Instant::now();
    assert_eq!(app.cmd(&["INCR", "k"]).await, Reply::Int(2));
    assert!(
        held.elapsed() >= Duration::from_millis(250),
        "released after {:?}",
        held.elapsed()
    );
    assert_eq!(
        text(&record(&ops.cmd(&["RESPOOL", "STATS"]).await), "pause"),
        "none"
    );
    ops.cmd(&["RESPOOL", "PAUSE", "soon"])
        .await
        .expect_error_code("ERR");
    proxy.shutdown().await;
}

#[tokio::test]
async fn drain_stops_accepting_answers_what_is_in_flight_and_closes_clients() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), ADMIN).await;
    let mut ops = admin(&proxy).await;
    let mut idle = login(&proxy, "app", "app-pw").await;
    let mut busy = login(&proxy, "app", "app-pw").await;
    assert_eq!(busy.cmd(&["DEL", "list"]).await, Reply::Int(0));

    // A request in flight when the drain starts: a blocking pop that a
    // push after the drain ends.
    busy.send(&["BLPOP", "list", "30"]).await.expect("sent");
    until_async("the pop to block", DEADLINE, || {
        redis.blocked_clients() == 1
    })
    .await;
    assert_eq!(ops.cmd(&["RESPOOL", "DRAIN"]).await, ok());

    // No new clients.
    let addr = proxy.addr();
    until_ok(
        "DRAIN to refuse new clients",
        DEADLINE,
        async || match TestClient::connect(addr).await {
            Err(_) => Ok(()),
            Ok(_) => Err("still accepting clients after DRAIN".to_string()),
        },
    )
    .await;
    // The idle client is closed.
    assert!(idle
        .read_reply_within(DEADLINE)
        .await
        .is_err_and(|e| e.is_closed()));
    // The one in flight gets its reply, then is closed.
    redis.command(&[b"RPUSH", b"list", b"x"]);
    assert_eq!(
        busy.read_reply().await.expect("the pop's reply"),
        Reply::Array(vec![
            Reply::Bulk(b"list".to_vec()),
            Reply::Bulk(b"x".to_vec())
        ])
    );
    assert!(busy
        .read_reply_within(DEADLINE)
        .await
        .is_err_and(|e| e.is_closed()));
    proxy.shutdown().await;
}

/// A script that keeps Redis busy for `ms` milliseconds.
fn busy_script(ms: u32) -> String {
    format!(
        "local t = redis.call('TIME') local start = t[1] * 1000000 + t[2] \
         while true do local n = redis.call('TIME') \
         if n[1] * 1000000 + n[2] - start >= {} then break end end return 1",
        ms * 1000
    )
}

/// The slowlog's entries for `command`.
async fn slow_entries(ops: &mut TestClient, command: &str) -> Vec<Vec<Reply>> {
    let name = Reply::Bulk(command.as_bytes().to_vec());
    match ops.cmd(&["RESPOOL", "SLOWLOG", "GET", "-1"]).await {
        Reply::Array(entries) => entries
            .into_iter()
            .map(|e| match e {
                Reply::Array(fields) => fields,
                other => panic!("an entry: {other}"),
            })
            .filter(|e| matches!(&e[3], Reply::Array(argv) if argv[0] == name))
            .collect(),
        other => panic!("SLOWLOG GET: {other}"),
    }
}

async fn slow_evals(ops: &mut TestClient) -> Vec<Vec<Reply>> {
    slow_entries(ops, "EVAL").await
}

#[tokio::test]
async fn a_request_waiting_in_respool_behind_a_slow_one_is_recorded_as_queued() {
    // Redis answers -BUSY to others 20 ms into a script: how the test
    // knows the script is running.
    let redis = RedisServer::builder()
        .arg("busy-reply-threshold", "20")
        .start();
    let mut flags = ADMIN.to_vec();
    flags.extend(["--slowlog-threshold", "30ms", "--max-connections", "1"]);
    let proxy = TestProxy::start(&redis.url(), &flags).await;
    let mut ops = admin(&proxy).await;
    let mut slow = login(&proxy, "app", "app-pw").await;
    let mut waiting = login(&proxy, "app", "app-pw").await;
    assert_eq!(waiting.cmd(&["SET", "k", "v"]).await, ok());

    let script = busy_script(300);
    slow.send(&["EVAL", script.as_str(), "0"])
        .await
        .expect("sent");
    until_async("the script to run", DEADLINE, || {
        redis.command(&[b"PING"]).error_code() == Some("BUSY")
    })
    .await;
    // The lane's write is unanswered: the GET waits in respool for it
    // (--batch-writes), then takes no time at Redis.
    assert_eq!(waiting.cmd(&["GET", "k"]).await, Reply::Bulk(b"v".to_vec()));
    assert_eq!(slow.read_reply().await.expect("EVAL"), Reply::Int(1));

    let gets = slow_entries(&mut ops, "GET").await;
    assert_eq!(gets.len(), 1, "{gets:?}");
    let (queued, at_redis) = (gets[0][6].as_int().unwrap(), gets[0][7].as_int().unwrap());
    assert!(
        queued >= 20_000 && queued > at_redis,
        "queued {queued} µs, at Redis {at_redis} µs"
    );
    let evals = slow_evals(&mut ops).await;
    assert!(evals[0][7].as_int().unwrap() >= 290_000, "{evals:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_slowlog_records_slow_requests_with_time_queued_and_at_redis() {
    let redis = RedisServer::start();
    let mut flags = ADMIN.to_vec();
    flags.extend(["--slowlog-threshold", "30ms"]);
    let proxy = TestProxy::start(&redis.url(), &flags).await;
    let mut ops = admin(&proxy).await;
    let mut app = login(&proxy, "app", "app-pw").await;
    assert_eq!(app.cmd(&["CLIENT", "SETNAME", "reports"]).await, ok());
    let script = busy_script(60);
    assert_eq!(
        app.cmd(&["EVAL", script.as_str(), "0"]).await,
        Reply::Int(1)
    );

    let entries = slow_evals(&mut ops).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    let (total, queued, at_redis) = (
        e[2].as_int().unwrap(),
        e[6].as_int().unwrap(),
        e[7].as_int().unwrap(),
    );
    assert!(at_redis >= 55_000, "at Redis {at_redis} µs");
    // Each counted in whole microseconds, so the parts may lose one.
    assert!((total - (queued + at_redis)).abs() <= 1, "{e:?}");
    // Redis's fields first: arguments hidden by default, the client's
    // address and name; then respool's.
    assert_eq!(
        e[3],
        Reply::Array(vec![
            Reply::Bulk(b"EVAL".to_vec()),
            Reply::Bulk(b"(2 arguments hidden: --slowlog-args is off)".to_vec())
        ])
    );
    assert_eq!(e[4].as_str().unwrap(), app.local_addr().to_string());
    assert_eq!(e[5].as_str(), Some("reports"));
    assert!(e[8].as_int().unwrap() > 0, "the client id");
    assert_eq!(e[9].as_str(), Some("default"));
    assert_eq!(e[10].as_str().unwrap(), redis.addr().to_string());
    assert_eq!(e[11], Reply::Int(1));
    assert!(!format!("{e:?}").contains("redis.call"));

    let len = ops
        .cmd(&["RESPOOL", "SLOWLOG", "LEN"])
        .await
        .as_int()
        .unwrap();
    assert!(len >= 1);
    assert_eq!(ops.cmd(&["RESPOOL", "SLOWLOG", "RESET"]).await, ok());
    assert_eq!(ops.cmd(&["RESPOOL", "SLOWLOG", "LEN"]).await, Reply::Int(0));
    // Fast requests are not recorded.
    assert_eq!(app.cmd(&["SET", "k", "v"]).await, ok());
    assert!(slow_evals(&mut ops).await.is_empty());
    proxy.shutdown().await;

    // With --slowlog-args, the arguments too, truncated like Redis's.
    flags.push("--slowlog-args");
    let proxy = TestProxy::start(&redis.url(), &flags).await;
    let mut ops = admin(&proxy).await;
    let mut app = login(&proxy, "app", "app-pw").await;
    assert_eq!(
        app.cmd(&["EVAL", script.as_str(), "0"]).await,
        Reply::Int(1)
    );
    let entries = slow_evals(&mut ops).await;
    let Reply::Array(argv) = &entries[0][3] else {
        panic!("{entries:?}")
    };
    let shown = argv[1].as_bytes().unwrap();
    assert!(shown.starts_with(&script.as_bytes()[..128]), "{argv:?}");
    assert!(
        shown.ends_with(format!("... ({} more bytes)", script.len() - 128).as_bytes()),
        "{argv:?}"
    );
    assert_eq!(argv[2], Reply::Bulk(b"0".to_vec()));
    proxy.shutdown().await;
}
