//! respool in front of a real Redis Cluster (`--cluster`): three primaries
//! with a replica each, formed by `tests/support/cluster.rs`.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::client::encode_command;
use support::cluster::{slot_ranges, Cluster};
use support::{wait, Reply, TestClient, TestProxy};

/// The harness forms a cluster whose nodes agree on every slot, and its
/// helpers say where a key lives.
#[test]
fn the_harness_forms_a_cluster_of_three_primaries() {
    let cluster = Cluster::start();
    assert_eq!(cluster.nodes.len(), 6);
    assert_eq!(cluster.primaries().len(), 3);
    let ranges = slot_ranges(cluster.any());
    assert_eq!(
        ranges
            .iter()
            .map(|(a, b, _)| usize::from(b - a) + 1)
            .sum::<usize>(),
        16384
    );
    let slot = cluster.keyslot(b"somekey");
    assert_eq!(slot, 11058, "CLUSTER KEYSLOT somekey");
    let owner = cluster.owner(slot);
    assert_eq!(
        owner.command(&[b"SET", b"somekey", b"v"]),
        Reply::Simple("OK".into())
    );
    let other = cluster
        .primaries()
        .into_iter()
        .find(|p| p.port() != owner.port())
        .expect("another primary");
    assert_eq!(
        other.command(&[b"GET", b"somekey"]).error_code(),
        Some("MOVED")
    );
}

/// A proxy in front of `cluster`, its seeds every node, with `extra` flags.
async fn proxy(cluster: &Cluster, extra: &[&str]) -> TestProxy {
    let seeds = cluster.urls()[1..].join(",");
    let mut flags = vec!["--cluster", "--upstream", &seeds];
    flags.extend_from_slice(extra);
    // The first URL is the proxy's `--upstream` too: all of them are seeds.
    TestProxy::start(&cluster.urls()[0], &flags).await
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

/// What one of [`incr_get_clients`] did: its key, the INCRs acknowledged,
/// and every reply that was not the one expected.
type Counted = (String, i64, Vec<String>);

/// `clients` clients through `proxy`, each INCRing then GETting a key of
/// its own — half under the hash tag `moving`, half under `staying` — and
/// checking that each INCR answers one more than the last and each GET the
/// count so far, until `stop` (and at least 20 INCRs each).
async fn incr_get_clients(
    proxy: &TestProxy,
    clients: usize,
    moving: &str,
    staying: &str,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Counted>> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = proxy.client().await;
        let stop = stop.clone();
        let tag = if c % 2 == 0 { moving } else { staying };
        let key = format!("{{{tag}}}:{c}");
        tasks.push(tokio::spawn(async move {
            let mut acked = 0i64;
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) || acked < 20 {
                match client.cmd(&["INCR", &key]).await {
                    Reply::Int(n) if n == acked + 1 => acked = n,
                    other => errors.push(format!("INCR {key} after {acked}: {other:?}")),
                }
                match client.cmd(&["GET", &key]).await {
                    Reply::Bulk(v) if v == acked.to_string().as_bytes() => {}
                    other => errors.push(format!("GET {key} after {acked}: {other:?}")),
                }
                if errors.len() > 5 {
                    break;
                }
            }
            (key, acked, errors)
        }));
    }
    tasks
}

/// Waits for [`incr_get_clients`] to end, checks that each key holds its
/// client's count of acknowledged INCRs on the primary serving it now
/// (asked directly), and returns every unexpected reply they saw.
async fn settle_counted(
    cluster: &Cluster,
    tasks: Vec<tokio::task::JoinHandle<Counted>>,
) -> Vec<String> {
    let mut errors = Vec::new();
    for task in tasks {
        let (key, acked, seen) = task.await.unwrap();
        errors.extend(seen);
        let owner = cluster.owner(cluster.keyslot(key.as_bytes()));
        assert_eq!(
            owner.command(&[b"GET", key.as_bytes()]),
            Reply::Bulk(acked.to_string().into_bytes()),
            "{key} on :{}",
            owner.port()
        );
    }
    errors
}

/// Waits until the INCR counter `key`, read through `watcher`, has reached
/// `at_least`, and returns it: load tests poll it to know that their clients
/// are running before (and after) what they do under load.
async fn until_counted(watcher: &mut TestClient, key: &str, at_least: i64, what: &str) -> i64 {
    wait::until_ok(what, Duration::from_secs(30), async || {
        let reply = watcher.cmd(&["GET", key]).await;
        match reply
            .as_bytes()
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
        {
            Some(n) if n >= at_least => Ok(n),
            _ => Err(format!(
                "GET {key} answered {reply:?}, waiting for {at_least}"
            )),
        }
    })
    .await
}

/// 10 000 keys written through respool in one pipeline land on the primary
/// `CLUSTER KEYSLOT` names (asked of the nodes themselves), on no other, and
/// read back through respool. `DBSIZE` sums the primaries, `KEYS` gathers
/// them, `SCRIPT LOAD` and `FLUSHALL` reach every one.
#[tokio::test]
async fn ten_thousand_keys_land_where_cluster_keyslot_says() {
    const KEYS: usize = 10_000;
    let cluster = Cluster::start();
    let proxy = proxy(&cluster, &[]).await;
    let mut client = proxy.client().await;
    let key = |i: usize| format!("key:{i}");
    let mut pipeline = Vec::new();
    for i in 0..KEYS {
        pipeline.extend(encode_command(&["SET", &key(i), &format!("value:{i}")]));
    }
    client.send_raw(&pipeline).await.unwrap();
    for i in 0..KEYS {
        assert_eq!(client.read_reply().await.unwrap(), ok(), "SET {}", key(i));
    }
    // Where each key should be, as a node computes it.
    let mut direct = TestClient::connect(cluster.any().addr()).await.unwrap();
    let mut pipeline = Vec::new();
    for i in 0..KEYS {
        pipeline.extend(encode_command(&["CLUSTER", "KEYSLOT", &key(i)]));
    }
    direct.send_raw(&pipeline).await.unwrap();
    let mut slots = Vec::with_capacity(KEYS);
    for _ in 0..KEYS {
        slots.push(direct.read_reply().await.unwrap().as_int().expect("a slot") as u16);
    }
    let ranges = slot_ranges(cluster.any());
    let owner = |slot: u16| {
        ranges
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|(_, _, port)| *port)
            .expect("an owner")
    };
    let primaries = cluster.primaries();
    let mut total = 0;
    for primary in &primaries {
        let mine: Vec<usize> = (0..KEYS)
            .filter(|&i| owner(slots[i]) == primary.port())
            .collect();
        assert!(!mine.is_empty(), "no key on :{}", primary.port());
        let mut node = TestClient::connect(primary.addr()).await.unwrap();
        let mut pipeline = Vec::new();
        for &i in &mine {
            pipeline.extend(encode_command(&["GET", &key(i)]));
        }
        node.send_raw(&pipeline).await.unwrap();
        for &i in &mine {
            assert_eq!(
                node.read_reply().await.unwrap(),
                bulk(&format!("value:{i}")),
                "{} on :{}",
                key(i),
                primary.port()
            );
        }
        let dbsize = node.cmd(&["DBSIZE"]).await.as_int().unwrap() as usize;
        assert_eq!(
            dbsize,
            mine.len(),
            "keys on :{} besides its own",
            primary.port()
        );
        total += dbsize;
    }
    assert_eq!(total, KEYS);
    let mut pipeline = Vec::new();
    for i in 0..KEYS {
        pipeline.extend(encode_command(&["GET", &key(i)]));
    }
    client.send_raw(&pipeline).await.unwrap();
    for i in 0..KEYS {
        assert_eq!(
            client.read_reply().await.unwrap(),
            bulk(&format!("value:{i}"))
        );
    }
    // Commands for every primary, merged as Redis's tips say.
    assert_eq!(client.cmd(&["DBSIZE"]).await, Reply::Int(KEYS as i64));
    match client.cmd(&["KEYS", "key:1*"]).await {
        Reply::Array(found) => {
            let want = (0..KEYS).filter(|i| i.to_string().starts_with('1')).count();
            assert_eq!(found.len(), want);
        }
        other => panic!("KEYS: {other:?}"),
    }
    let sha = client
        .cmd(&["SCRIPT", "LOAD", "return redis.call('GET', KEYS[1])"])
        .await;
    let sha = sha.as_str().expect("a sha").to_string();
    for i in [0, 1, 2, 3, 4, 5] {
        assert_eq!(
            client.cmd(&["EVALSHA", &sha, "1", &key(i)]).await,
            bulk(&format!("value:{i}")),
            "the script is loaded on every primary"
        );
    }
    assert_eq!(client.cmd(&["FLUSHALL"]).await, ok());
    assert_eq!(client.cmd(&["DBSIZE"]).await, Reply::Int(0));
    for primary in &primaries {
        assert_eq!(primary.command(&[b"DBSIZE"]), Reply::Int(0));
    }
    let info = client.respool_counters().await;
    assert_eq!(info["cluster_slots_known"], "16384");
    assert_eq!(info["cluster_primaries"], "3");
    assert_eq!(info["cluster_moved"], "0", "{info:?}");
}

/// A pipeline mixing single-key commands on every primary, multi-key
/// commands within one slot, keyless commands and commands whose keys span
/// slots gets every reply in order: `MGET`, `MSET`, `DEL`, `UNLINK`,
/// `EXISTS` and `TOUCH` split by primary and merged in the client's key
/// order, the others (`RENAME`, `SMOVE`, `EVAL` with keys in two slots)
/// Redis's own `-CROSSSLOT`, exactly as a node gives it.
#[tokio::test]
async fn pipelines_across_primaries_reply_in_order_and_cross_slot_is_refused() {
    let cluster = Cluster::start();
    let proxy = proxy(&cluster, &[]).await;
    let mut client = proxy.client().await;
    let direct = cluster
        .owner(cluster.keyslot(b"a"))
        .command(&[b"MGET", b"a", b"b"]);
    assert_eq!(direct.error_code(), Some("CROSSSLOT"));
    let direct_arity = cluster.any().command(&[b"MSET", b"a", b"1", b"b"]);
    assert_eq!(direct_arity.error_code(), Some("CROSSSLOT"));
    let script: Vec<(Vec<&str>, Reply)> = vec![
        (vec!["SET", "a", "1"], ok()),
        (vec!["SET", "b", "2"], ok()),
        (vec!["MSET", "{u}x", "3", "{u}y", "4"], ok()),
        (vec!["PING"], Reply::Simple("PONG".into())),
        (vec!["SET", "c", "5"], ok()),
        (
            vec!["MGET", "{u}x", "{u}y"],
            Reply::Array(vec![bulk("3"), bulk("4")]),
        ),
        (vec!["GET", "a"], bulk("1")),
        (
            vec!["MGET", "a", "nokey", "b"],
            Reply::Array(vec![bulk("1"), Reply::Nil, bulk("2")]),
        ),
        (vec!["ECHO", "hi"], bulk("hi")),
        (vec!["INCR", "b"], Reply::Int(3)),
        (vec!["DEL", "a", "nokey"], Reply::Int(1)),
        (
            vec!["EVAL", "return redis.call('GET', KEYS[1])", "1", "c"],
            bulk("5"),
        ),
        (vec!["EVAL", "return 1", "2", "a", "b"], direct.clone()),
        (vec!["GET", "c"], bulk("5")),
        (vec!["RENAME", "{u}x", "{u}z"], ok()),
        (vec!["RENAME", "a", "b"], direct.clone()),
        (vec!["XADD", "{s}1", "*", "f", "v"], Reply::Nil),
        (vec!["GET", "b"], bulk("3")),
        (vec!["OBJECT", "ENCODING", "{u}y"], bulk("int")),
        (vec!["SPUBLISH", "chan", "m"], Reply::Int(0)),
        (vec!["PUBLISH", "chan", "m"], Reply::Int(0)),
        (vec!["GET", "{u}z"], bulk("3")),
        (vec!["MSET", "a", "7", "b", "8", "c", "9"], ok()),
        (vec!["GET", "a"], bulk("7")),
        (
            vec!["MGET", "c", "b", "a", "nokey", "{u}z"],
            Reply::Array(vec![bulk("9"), bulk("8"), bulk("7"), Reply::Nil, bulk("3")]),
        ),
        (vec!["EXISTS", "a", "b", "c", "nokey", "a"], Reply::Int(4)),
        (vec!["TOUCH", "a", "b", "c"], Reply::Int(3)),
        (vec!["MSET", "a", "1", "b"], direct_arity.clone()),
        (vec!["SMOVE", "a", "b", "m"], direct.clone()),
        (vec!["UNLINK", "a", "b"], Reply::Int(2)),
        (
            vec!["MGET", "a", "b", "c"],
            Reply::Array(vec![Reply::Nil, Reply::Nil, bulk("9")]),
        ),
    ];
    let mut pipeline = Vec::new();
    for (args, _) in &script {
        pipeline.extend(encode_command(args));
    }
    client.send_raw(&pipeline).await.unwrap();
    for (args, want) in &script {
        let got = client.read_reply().await.unwrap();
        if args[0] == "XADD" {
            assert!(got.as_bytes().is_some(), "XADD: {got:?}");
            continue;
        }
        assert_eq!(&got, want, "{args:?}");
    }
    // The keys went where their slots say.
    for key in ["c", "{u}y", "{u}z"] {
        let owner = cluster.owner(cluster.keyslot(key.as_bytes()));
        assert_eq!(
            owner.command(&[b"EXISTS", key.as_bytes()]),
            Reply::Int(1),
            "{key}"
        );
    }
}

/// What respool does not route in cluster mode yet is refused with a line
/// that says so, never sent to one node as if it were the whole cluster;
/// SELECT of another database is refused as the cluster refuses it.
#[tokio::test]
async fn commands_for_every_node_and_sessions_are_refused_clearly() {
    let cluster = Cluster::start();
    let proxy = proxy(&cluster, &[]).await;
    let mut client = proxy.client().await;
    for args in [
        vec!["WAIT", "1", "10"],
        vec!["MONITOR"],
        vec!["CLIENT", "TRACKING", "on"],
    ] {
        let reply = client.cmd(&args).await;
        let text = format!("{reply:?}");
        assert!(
            reply.error_code() == Some("ERR") && text.contains("not supported in cluster mode yet"),
            "{args:?}: {reply:?}"
        );
    }
    let select = client.cmd(&["SELECT", "1"]).await;
    let direct = cluster.any().command(&[b"SELECT", b"1"]);
    assert_eq!(select, direct);
    assert_eq!(client.cmd(&["SELECT", "0"]).await, ok());
    assert_eq!(client.cmd(&["EXEC"]).await.error_code(), Some("ERR"));
    assert_eq!(client.cmd(&["SET", "still", "works"]).await, ok());
    let cross = client.cmd(&["BLPOP", "a", "b", "1"]).await;
    assert_eq!(cross.error_code(), Some("CROSSSLOT"), "{cross:?}");
}

/// A blocking pop waits on the primary serving its key and is woken by a
/// push through respool; SUBSCRIBE hears a PUBLISH sent through respool
/// (the cluster's bus); SSUBSCRIBE hears an SPUBLISH of its shard.
#[tokio::test]
async fn blocking_commands_and_subscriptions_reach_the_right_node() {
    let cluster = Cluster::start();
    let proxy = proxy(&cluster, &[]).await;
    let mut pusher = proxy.client().await;
    for key in ["queue:a", "queue:b", "queue:c"] {
        let mut waiter = proxy.client().await;
        waiter.send(&["BLPOP", key, "10"]).await.unwrap();
        let owner = cluster.owner(cluster.keyslot(key.as_bytes()));
        wait::until(
            "the pop to block on its key's primary",
            Duration::from_secs(10),
            || owner.blocked_clients() == 1,
        );
        assert_eq!(pusher.cmd(&["RPUSH", key, "job"]).await, Reply::Int(1));
        assert_eq!(
            waiter.read_reply().await.unwrap(),
            Reply::Array(vec![bulk(key), bulk("job")])
        );
        // The session is over: the client is back on the lanes.
        assert_eq!(waiter.cmd(&["SET", key, "x"]).await, ok());
    }
    let mut subscriber = proxy.client().await;
    subscriber.send(&["SUBSCRIBE", "news"]).await.unwrap();
    assert_eq!(
        subscriber.read_reply().await.unwrap(),
        Reply::Array(vec![bulk("subscribe"), bulk("news"), Reply::Int(1)])
    );
    // The count is of the receivers on the node that took it, as in any
    // cluster; the message reaches every node's subscribers.
    assert!(pusher
        .cmd(&["PUBLISH", "news", "hello"])
        .await
        .as_int()
        .is_some());
    assert_eq!(
        subscriber.read_reply().await.unwrap(),
        Reply::Array(vec![bulk("message"), bulk("news"), bulk("hello")])
    );
    let mut sharded = proxy.client().await;
    sharded.send(&["SSUBSCRIBE", "orders"]).await.unwrap();
    assert_eq!(
        sharded.read_reply().await.unwrap(),
        Reply::Array(vec![bulk("ssubscribe"), bulk("orders"), Reply::Int(1)])
    );
    assert_eq!(
        pusher.cmd(&["SPUBLISH", "orders", "o1"]).await,
        Reply::Int(1)
    );
    assert_eq!(
        sharded.read_reply().await.unwrap(),
        Reply::Array(vec![bulk("smessage"), bulk("orders"), bulk("o1")])
    );
}

/// A shard channel whose slot moves to another primary (resharding) stays
/// subscribed: the subscriber, in RESP2 and in RESP3, keeps hearing the
/// channel's messages (published through respool, which sends them to the
/// new owner) and never sees the unsubscribe the old owner sent it. A
/// subscriber that also holds a channel of a slot that stays cannot follow
/// on one connection: it gets that unsubscribe, as from Redis, and keeps
/// hearing the other channel.
#[tokio::test]
async fn a_shard_subscription_follows_its_slot_to_the_new_primary() {
    let cluster = Cluster::start();
    let proxy = proxy(&cluster, &[]).await;
    let primaries = cluster.primaries();
    let (from, to) = (primaries[0], primaries[1]);
    let tag = key_on(&cluster, from.port(), "feed");
    let slot = cluster.keyslot(tag.as_bytes());
    let [resp2_ch, resp2_too, resp3_ch, mixed_ch] =
        ["2", "2b", "3", "m"].map(|s| format!("{{{tag}}}:{s}"));
    let stay = (0..)
        .map(|n| key_on(&cluster, from.port(), &format!("stay{n}")))
        .find(|k| cluster.keyslot(k.as_bytes()) != slot)
        .expect("a channel of another slot on the same primary");
    let subscribed = |kind: &str, ch: &str, n: i64| vec![bulk(kind), bulk(ch), Reply::Int(n)];
    let subscribers = |node: &support::RedisServer, ch: &str| match node.command(&[
        b"PUBSUB",
        b"SHARDNUMSUB",
        ch.as_bytes(),
    ]) {
        Reply::Array(items) => items[1].as_int().unwrap(),
        other => panic!("PUBSUB SHARDNUMSUB: {other:?}"),
    };

    // Two channels of the slot: Redis unsubscribes each, both follow.
    let mut resp2 = proxy.client().await;
    resp2
        .send(&["SSUBSCRIBE", &resp2_ch, &resp2_too])
        .await
        .unwrap();
    confirmed(&mut resp2, "ssubscribe", &[(&resp2_ch, 1), (&resp2_too, 2)]).await;
    let mut resp3 = proxy.client().await;
    assert!(matches!(resp3.cmd(&["HELLO", "3"]).await, Reply::Map(_)));
    resp3.send(&["SSUBSCRIBE", &resp3_ch]).await.unwrap();
    assert_eq!(
        resp3.read_reply().await.unwrap(),
        Reply::Push(subscribed("ssubscribe", &resp3_ch, 1))
    );
    let mut mixed = proxy.client().await;
    for (ch, n) in [(&mixed_ch, 1), (&stay, 2)] {
        mixed.send(&["SSUBSCRIBE", ch]).await.unwrap();
        confirmed(&mut mixed, "ssubscribe", &[(ch, n)]).await;
    }
    // And redis-py's PubSub, which would report a `sunsubscribe` it got.
    let py_ch = format!("{{{tag}}}:py");
    let mut py = std::process::Command::new("python3")
        .args([
            "-c",
            REDIS_PY_SHARD_SUBSCRIBER,
            &proxy.addr().port().to_string(),
            &py_ch,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with redis-py");
    let mut py_out = std::io::BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut py_out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready", "redis-py subscriber");
    for ch in [&resp2_ch, &resp3_ch, &mixed_ch, &py_ch] {
        assert_eq!(subscribers(from, ch), 1, "{ch} on :{}", from.port());
    }

    cluster.migrate_slot(slot, to);
    wait::until(
        "the followed subscriptions to be on the new primary",
        Duration::from_secs(10),
        || {
            [&resp2_ch, &resp2_too, &resp3_ch, &py_ch]
                .iter()
                .all(|ch| subscribers(to, ch) == 1)
        },
    );
    assert_eq!(subscribers(from, &resp2_ch), 0);
    assert_eq!(subscribers(to, &mixed_ch), 0);

    let mut publisher = proxy.client().await;
    for ch in [&resp2_ch, &resp2_too, &resp3_ch, &py_ch] {
        assert_eq!(
            publisher.cmd(&["SPUBLISH", ch, "after"]).await,
            Reply::Int(1)
        );
    }
    // The first frame either gets after the move is the message.
    let message = |ch: &str| vec![bulk("smessage"), bulk(ch), bulk("after")];
    for ch in [&resp2_ch, &resp2_too] {
        assert_eq!(resp2.read_reply().await.unwrap(), Reply::Array(message(ch)));
    }
    assert_eq!(
        resp3.read_reply().await.unwrap(),
        Reply::Push(message(&resp3_ch))
    );
    confirmed(&mut mixed, "sunsubscribe", &[(&mixed_ch, 1)]).await;
    assert_eq!(
        publisher.cmd(&["SPUBLISH", &stay, "after"]).await,
        Reply::Int(1)
    );
    assert_eq!(
        mixed.read_reply().await.unwrap(),
        Reply::Array(message(&stay))
    );
    assert_eq!(
        publisher.cmd(&["SPUBLISH", &py_ch, "stop"]).await,
        Reply::Int(1)
    );
    line.clear();
    std::io::BufRead::read_line(&mut py_out, &mut line).unwrap();
    assert_eq!(
        line.trim(),
        "smessage:after smessage:stop",
        "what redis-py's PubSub got after subscribing"
    );
    assert!(py.wait().unwrap().success());
    // The followed subscriber is an ordinary subscriber of its new node.
    resp2
        .send(&["SUNSUBSCRIBE", &resp2_ch, &resp2_too])
        .await
        .unwrap();
    confirmed(
        &mut resp2,
        "sunsubscribe",
        &[(&resp2_ch, 1), (&resp2_too, 0)],
    )
    .await;
    assert_eq!(resp2.cmd(&["SET", &tag, "v"]).await, ok());
    assert_eq!(to.command(&[b"GET", tag.as_bytes()]), bulk("v"));
}

/// Reads `client`'s RESP2 (un)subscribe confirmations of `kind`, one per
/// `(channel, subscriptions left)` in order.
async fn confirmed(client: &mut TestClient, kind: &str, expected: &[(&String, i64)]) {
    for &(channel, count) in expected {
        assert_eq!(
            client.read_reply().await.unwrap(),
            Reply::Array(vec![bulk(kind), bulk(channel), Reply::Int(count)]),
            "{kind} {channel}"
        );
    }
}

/// Clients on a Unix socket (`--listen unix:…`) in front of a cluster:
/// single-key commands and `MSET`/`MGET` split over every primary, each key
/// found on its own primary; a transaction; `CLUSTER SLOTS` answered as
/// one node owning every slot.
#[tokio::test]
async fn clients_on_a_unix_socket_reach_every_primary() {
    let cluster = Cluster::start_with(3, 0);
    let dir = tempfile::Builder::new()
        .prefix("respool-cluster-unix-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("respool.sock");
    let listen = format!("unix:{}", path.display());
    let proxy = proxy(&cluster, &["--listen", &listen]).await;
    let mut client = TestClient::connect_unix(&path).await.unwrap();
    let primaries = cluster.primaries();
    let keys: Vec<String> = primaries
        .iter()
        .map(|p| key_on(&cluster, p.port(), "unix"))
        .collect();
    for key in &keys {
        assert_eq!(client.cmd(&["SET", key, "one"]).await, ok());
    }
    let mut mset = vec!["MSET".to_string()];
    for (i, key) in keys.iter().enumerate() {
        mset.extend([key.clone(), format!("v{i}")]);
    }
    assert_eq!(client.cmd(&mset).await, ok());
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    assert_eq!(
        client.cmd(&mget).await,
        Reply::Array(vec![bulk("v0"), bulk("v1"), bulk("v2")])
    );
    for (i, (key, node)) in keys.iter().zip(&primaries).enumerate() {
        assert_eq!(
            node.command(&[b"GET", key.as_bytes()]),
            bulk(&format!("v{i}"))
        );
    }
    assert_eq!(client.cmd(&["MULTI"]).await, ok());
    assert_eq!(client.cmd(&["APPEND", &keys[2], "+"]).await, queued());
    assert_eq!(
        client.cmd(&["EXEC"]).await,
        Reply::Array(vec![Reply::Int(3)])
    );
    match client.cmd(&["CLUSTER", "SLOTS"]).await {
        Reply::Array(ranges) => assert_eq!(ranges.len(), 1, "{ranges:?}"),
        other => panic!("CLUSTER SLOTS: {other:?}"),
    }
    drop(proxy);
}

/// redis-py's PubSub subscribed to one shard channel through respool
/// (`python3 -c SCRIPT port channel`): prints `ready` once subscribed,
/// then every event it gets (type and data) until the message `stop`.
const REDIS_PY_SHARD_SUBSCRIBER: &str = r#"
import sys, redis
r = redis.Redis(port=int(sys.argv[1]))
p = r.pubsub()
p.ssubscribe(sys.argv[2])
first = p.get_sharded_message(timeout=10)
assert first and first["type"] == "ssubscribe", first
print("ready", flush=True)
events = []
while True:
    m = p.get_sharded_message(timeout=30)
    if m is None:
        events.append("timeout")
        break
    data = m["data"].decode() if isinstance(m["data"], bytes) else str(m["data"])
    events.append(m["type"] + ":" + data)
    if m["type"] == "smessage" and data == "stop":
        break
print(" ".join(events), flush=True)
"#;

/// A slot moved to another primary while 50 clients INCR and GET keys in
/// it (and in another slot) through respool: no client sees an error, every
/// GET returns the client's own count of acknowledged INCRs (so no INCR ran
/// twice, none was lost, and none overtook another), and afterwards the keys
/// are on the new owner with those counts. One more client pipelines INCRs
/// of one key across the move: its replies count up by one, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_under_load_costs_single_key_clients_nothing() {
    const CLIENTS: usize = 50;
    let cluster = Arc::new(Cluster::start());
    let proxy = proxy(&cluster, &["--hold-timeout", "20s", "--timeout", "20s"]).await;
    let hot = cluster.keyslot(b"{hot}");
    let from = cluster.owner(hot).port();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = incr_get_clients(&proxy, CLIENTS, "hot", "cold", &stop).await;
    // The pipelining client.
    let mut piper = proxy.client().await;
    let pipe_stop = stop.clone();
    let piper_task = tokio::spawn(async move {
        let mut next = 1i64;
        let mut errors = Vec::new();
        while !pipe_stop.load(Ordering::Relaxed) || next < 200 {
            let mut batch = Vec::new();
            for _ in 0..50 {
                batch.extend(encode_command(&["INCR", "{hot}:piped"]));
            }
            piper.send_raw(&batch).await.unwrap();
            for _ in 0..50 {
                match piper.read_reply().await {
                    Ok(Reply::Int(n)) if n == next => next += 1,
                    other => errors.push(format!("piped INCR, expecting {next}: {other:?}")),
                }
            }
            if !errors.is_empty() {
                break;
            }
        }
        (next - 1, errors)
    });
    // Let the load run before moving the slot, and after.
    let mut watcher = proxy.client().await;
    // Polled, not slept on: at least 100 piped INCRs before the move.
    until_counted(&mut watcher, "{hot}:piped", 100, "load before the move").await;
    let to = cluster
        .primaries()
        .into_iter()
        .map(|p| p.port())
        .find(|&p| p != from)
        .expect("another primary");
    let moving = cluster.clone();
    tokio::task::spawn_blocking(move || moving.migrate_slot(hot, moving.node(to)))
        .await
        .unwrap();
    let moved_before = support::counter(&watcher.respool_counters().await, "cluster_moved");
    stop.store(true, Ordering::Relaxed);
    let mut total_errors = settle_counted(&cluster, tasks).await;
    let (piped, errors) = piper_task.await.unwrap();
    total_errors.extend(errors);
    assert!(
        total_errors.is_empty(),
        "client-visible errors: {total_errors:#?}"
    );
    assert_eq!(cluster.owner(hot).port(), to);
    assert_eq!(
        cluster.node(to).command(&[b"GET", b"{hot}:piped"]),
        Reply::Bulk(piped.to_string().into_bytes())
    );
    let info = watcher.respool_counters().await;
    eprintln!(
        "cluster counters: moved={} ask={} redirected={}",
        info["cluster_moved"], info["cluster_ask"], info["cluster_redirected"]
    );
    assert!(
        moved_before > 0 || support::counter(&info, "cluster_ask") > 0,
        "{info:?}"
    );
    // respool learned the new owner: new requests go straight there.
    let moved = support::counter(&info, "cluster_moved");
    for _ in 0..20 {
        assert!(watcher
            .cmd(&["INCR", "{hot}:after"])
            .await
            .as_int()
            .is_some());
    }
    assert_eq!(
        support::counter(&watcher.respool_counters().await, "cluster_moved"),
        moved
    );
}

/// An operator's planned failover (`CLUSTER FAILOVER` on a replica) under
/// 20 INCR/GET clients: the replica takes its primary's slots, the old
/// primary (a replica now) answers `-MOVED` for what it held during the
/// switch, and respool follows the map. No client sees an error, and every
/// key ends at its client's count of acknowledged INCRs on the new primary
/// (a manual failover loses no write, and respool resends only what a
/// `-MOVED` says did not run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_failover_under_load_costs_clients_nothing() {
    const CLIENTS: usize = 20;
    let cluster = Arc::new(Cluster::start());
    let proxy = proxy(&cluster, &["--hold-timeout", "20s", "--timeout", "20s"]).await;
    let slot = cluster.keyslot(b"{planned}");
    let old = cluster.owner(slot).port();
    let replica = cluster
        .nodes
        .iter()
        .find(|n| {
            matches!(n.command(&[b"ROLE"]), Reply::Array(items)
                if items.first() == Some(&bulk("slave")) && items.get(2) == Some(&Reply::Int(i64::from(old))))
        })
        .expect("the primary's replica")
        .port();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = incr_get_clients(&proxy, CLIENTS, "planned", "elsewhere", &stop).await;
    let mut watcher = proxy.client().await;
    until_counted(&mut watcher, "{planned}:0", 20, "load before the failover").await;
    assert_eq!(
        cluster.node(replica).command(&[b"CLUSTER", b"FAILOVER"]),
        ok()
    );
    wait::until(
        "the replica to serve the slot",
        Duration::from_secs(30),
        || cluster.owner(slot).port() == replica,
    );
    // Load after the switch, through respool's new map.
    // (Already past 20: this reads the count now.)
    let before = until_counted(
        &mut watcher,
        "{planned}:0",
        20,
        "the count after the switch",
    )
    .await;
    until_counted(
        &mut watcher,
        "{planned}:0",
        before + 20,
        "load after the failover",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let errors = settle_counted(&cluster, tasks).await;
    assert!(errors.is_empty(), "client-visible errors: {errors:#?}");
    let info = watcher.respool_counters().await;
    eprintln!(
        "cluster counters: moved={} redirected={} refreshes={}",
        info["cluster_moved"], info["cluster_redirected"], info["cluster_refreshes"]
    );
    // Requests caught by the switch were redirected, not failed.
    assert!(support::counter(&info, "cluster_moved") > 0, "{info:?}");
    assert!(
        info.values().any(|v| v.contains(&format!(":{replica},"))),
        "respool routes to the new primary: {info:?}"
    );
}

/// Scaling out and back in under load: a fourth primary joins the cluster
/// (`CLUSTER MEET`) and a slot moves to it while 20 clients INCR and GET
/// through respool, which opens lanes to the new primary when its map names
/// it; then the slot moves back, respool drops the node from its map and
/// closes its connections to it, and the node is forgotten and stopped. No
/// client sees an error, and every GET is its client's count of
/// acknowledged INCRs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_added_then_removed_under_load_costs_clients_nothing() {
    const CLIENTS: usize = 20;
    let mut cluster = Cluster::start();
    let added = cluster.add_primary();
    let cluster = Arc::new(cluster);
    let proxy = proxy(&cluster, &["--hold-timeout", "20s", "--timeout", "20s"]).await;
    let mut watcher = proxy.client().await;
    let primaries = |info: &std::collections::HashMap<String, String>| {
        support::counter(info, "cluster_primaries")
    };
    assert_eq!(
        primaries(&watcher.respool_counters().await),
        3,
        "a primary with no slot is not routed to"
    );
    let hot = cluster.keyslot(b"{grow}");
    let from = cluster.owner(hot).port();

    let stop = Arc::new(AtomicBool::new(false));
    let tasks = incr_get_clients(&proxy, CLIENTS, "grow", "stay", &stop).await;
    // Out to the new primary, under load.
    let moving = cluster.clone();
    tokio::task::spawn_blocking(move || moving.migrate_slot(hot, moving.node(added)))
        .await
        .unwrap();
    wait::until_ok(
        "respool to route to the new primary",
        Duration::from_secs(30),
        async || {
            let info = watcher.respool_counters().await;
            match primaries(&info) {
                4 => Ok(()),
                _ => Err(format!("{info:?}")),
            }
        },
    )
    .await;
    // And back in: the slot first; then, as an operator would, the node
    // is stopped once respool no longer uses it (its connections to the
    // node closed), so that no request is in flight to it when it stops.
    let moving = cluster.clone();
    tokio::task::spawn_blocking(move || moving.migrate_slot(hot, moving.node(from)))
        .await
        .unwrap();
    wait::until_ok(
        &format!("respool to stop using :{added}"),
        Duration::from_secs(30),
        async || {
            let info = watcher.respool_counters().await;
            let named = info.values().any(|v| v.contains(&format!(":{added},")));
            if primaries(&info) == 3 && !named && cluster.node(added).other_clients().is_empty() {
                Ok(())
            } else {
                Err(format!("respool still uses :{added}: {info:?}"))
            }
        },
    )
    .await;
    let removing = cluster.clone();
    tokio::task::spawn_blocking(move || removing.remove_primary(added))
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let all_errors = settle_counted(&cluster, tasks).await;
    assert!(
        all_errors.is_empty(),
        "client-visible errors: {all_errors:#?}"
    );
    assert_eq!(watcher.cmd(&["INCR", "{grow}:after"]).await, Reply::Int(1));
}

/// A slot caught half-way through a migration that never finishes: keys
/// already moved are read and written on the importing node behind an
/// `ASKING` (its source answers `-ASK`), a new key is created there, keys
/// not moved yet stay on the source, and a pipeline over both kinds keeps
/// its order. Nothing waits for the migration to end (with a short
/// `--hold-timeout`, a request held until then would fail). `/metrics`
/// counts the redirections and shows the map.
#[tokio::test]
async fn a_slot_half_migrated_is_served_through_asking() {
    let cluster = Cluster::start();
    let metrics = format!("127.0.0.1:{}", support::redis::free_port());
    let proxy = proxy(
        &cluster,
        &["--hold-timeout", "2s", "--metrics-listen", &metrics],
    )
    .await;
    let mut client = proxy.client().await;
    let slot = cluster.keyslot(b"{ask}");
    let from = cluster.owner(slot).port();
    let to = cluster
        .primaries()
        .into_iter()
        .map(|p| p.port())
        .find(|&p| p != from)
        .expect("another primary");
    let keys: Vec<String> = (0..20).map(|i| format!("{{ask}}:{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(client.cmd(&["SET", key, &i.to_string()]).await, ok());
    }
    cluster.begin_migration(slot, cluster.node(to));
    let moved: Vec<Vec<u8>> = keys[..10].iter().map(|k| k.as_bytes().to_vec()).collect();
    cluster.move_keys(slot, cluster.node(to), &moved);
    assert_eq!(
        cluster
            .node(from)
            .command(&[b"GET", keys[0].as_bytes()])
            .error_code(),
        Some("ASK"),
        "the source redirects a moved key"
    );

    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            client.cmd(&["GET", key]).await,
            bulk(&i.to_string()),
            "{key}"
        );
    }
    assert_eq!(client.cmd(&["SET", "{ask}:new", "fresh"]).await, ok());
    assert_eq!(client.cmd(&["GET", "{ask}:new"]).await, bulk("fresh"));
    let count_on = |port: u16| {
        cluster
            .node(port)
            .command(&[b"CLUSTER", b"COUNTKEYSINSLOT", slot.to_string().as_bytes()])
            .as_int()
    };
    assert_eq!(count_on(to), Some(11), "10 moved keys and the new one");
    assert_eq!(count_on(from), Some(10), "the keys not moved yet");

    // A pipeline cycling through a moved key, a key of the third primary
    // and a key not moved: INCRs in order. The source's requests of each
    // read go to its lane as one run with gaps (the third primary's
    // requests between them), and its `-ASK`s take requests out of the
    // middle of that run.
    let third = cluster
        .primaries()
        .into_iter()
        .map(|p| p.port())
        .find(|&p| p != from && p != to)
        .expect("a third primary");
    let elsewhere = key_on(&cluster, third, "ask-elsewhere");
    let mut batch = Vec::new();
    for _ in 0..25 {
        batch.extend(encode_command(&["INCR", &keys[0]]));
        batch.extend(encode_command(&["INCR", &elsewhere]));
        batch.extend(encode_command(&["INCR", &keys[19]]));
    }
    client.send_raw(&batch).await.unwrap();
    for n in 1..=25 {
        for (key, value) in [(&keys[0], n), (&elsewhere, n), (&keys[19], 19 + n)] {
            assert_eq!(
                client.read_reply().await.unwrap(),
                Reply::Int(value),
                "{key}"
            );
        }
    }
    let info = client.respool_counters().await;
    assert!(support::counter(&info, "cluster_ask") >= 10, "{info:?}");
    // The same, and the map's shape, in the Prometheus exposition.
    let exposition = support::prometheus::scrape(metrics.parse().unwrap());
    let value = |series: &str| {
        support::prometheus::sample(&exposition, series)
            .unwrap_or_else(|| panic!("{series} in {exposition}"))
    };
    assert_eq!(value("respool_cluster_primaries"), 3.0);
    assert_eq!(value("respool_cluster_slots_known"), 16384.0);
    assert!(value("respool_cluster_ask_total") >= 10.0);
    assert!(value("respool_cluster_redirected_total") >= 10.0);
    let operations = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"),
    )
    .expect("docs/operations.md");
    let declared: Vec<String> = support::prometheus::declared_names(&exposition)
        .into_iter()
        .filter(|name| name.starts_with("respool_cluster_"))
        .collect();
    assert!(declared.len() >= 9, "{declared:?}");
    for name in declared {
        assert!(
            operations.contains(&name),
            "{name} is not documented in docs/operations.md"
        );
    }

    // The migration ends: everything is on the new owner, unchanged.
    let rest: Vec<Vec<u8>> = keys[10..].iter().map(|k| k.as_bytes().to_vec()).collect();
    cluster.move_keys(slot, cluster.node(to), &rest);
    cluster.end_migration(slot, cluster.node(to));
    assert_eq!(client.cmd(&["GET", &keys[0]]).await, bulk("25"));
    assert_eq!(client.cmd(&["GET", &keys[19]]).await, bulk("44"));
    assert_eq!(count_on(to), Some(21));
}

/// redis-py and the `redis` crate, as plain (non-cluster) clients, work
/// through respool against the cluster: strings, counters, hashes, lists,
/// multi-key commands (split across slots), pipelines across primaries,
/// expiry, and the cluster's own CROSSSLOT error; redis-py over RESP2 and
/// RESP3. redis-py's `RedisCluster` works too: `CLUSTER SLOTS` and the like
/// describe respool as one node owning every slot.
#[tokio::test]
async fn redis_py_and_the_redis_crate_work_through_respool_on_the_cluster() {
    let cluster = Cluster::start();
    let proxy = proxy(&cluster, &[]).await;
    let port = proxy.addr().port().to_string();
    for protocol in ["2", "3"] {
        let out = std::process::Command::new("python3")
            .args(["-c", REDIS_PY_SCENARIO, &port, protocol])
            .output()
            .expect("python3 (with redis-py: python3 -m pip install redis)");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
            "redis-py over RESP{protocol}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // redis-py's RedisCluster learns one node, respool, owning every slot.
    let out = std::process::Command::new("python3")
        .args(["-c", REDIS_PY_CLUSTER_SCENARIO, &port])
        .output()
        .expect("python3 with redis-py");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "redis-py RedisCluster:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut client = proxy.client().await;
    match client.cmd(&["CLUSTER", "SLOTS"]).await {
        Reply::Array(ranges) => assert_eq!(
            ranges,
            vec![Reply::Array(vec![
                Reply::Int(0),
                Reply::Int(16383),
                Reply::Array(vec![
                    bulk("127.0.0.1"),
                    Reply::Int(i64::from(proxy.addr().port())),
                    bulk(&format!("{:040x}", proxy.addr().port())),
                ]),
            ])]
        ),
        other => panic!("CLUSTER SLOTS: {other:?}"),
    }
    let info = client.cmd(&["CLUSTER", "INFO"]).await;
    assert!(format!("{info:?}").contains("cluster_state:ok"), "{info:?}");
    assert_eq!(
        client.cmd(&["CLUSTER", "KEYSLOT", "somekey"]).await,
        Reply::Int(11058)
    );
    let url = format!("redis://{}", proxy.addr());
    tokio::task::spawn_blocking(move || {
        use redis::Commands;
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_connection().unwrap();
        for i in 0..300 {
            let _: () = conn.set(format!("crate:{i}"), i).unwrap();
        }
        for i in 0..300 {
            let v: i64 = conn.get(format!("crate:{i}")).unwrap();
            assert_eq!(v, i);
        }
        let n: i64 = conn.incr("crate:counter", 5).unwrap();
        assert_eq!(n, 5);
        let _: () = conn.hset("crate:h", "f", "v").unwrap();
        let h: String = conn.hget("crate:h", "f").unwrap();
        assert_eq!(h, "v");
        let _: () = redis::cmd("MSET")
            .arg("{c}1")
            .arg("a")
            .arg("{c}2")
            .arg("b")
            .query(&mut conn)
            .unwrap();
        let both: Vec<String> = conn.mget(&["{c}1", "{c}2"]).unwrap();
        assert_eq!(both, ["a", "b"]);
        let mut pipe = redis::pipe();
        for i in 0..100 {
            pipe.cmd("INCR").arg(format!("crate:p{i}"));
        }
        let replies: Vec<i64> = pipe.query(&mut conn).unwrap();
        assert_eq!(replies, vec![1; 100]);
        let split: Vec<i64> = conn.mget(&["crate:1", "crate:2", "crate:3"]).unwrap();
        assert_eq!(split, [1, 2, 3]);
        let cross: redis::RedisResult<()> = conn.rename("crate:1", "crate:2");
        let e = cross.expect_err("keys in two slots");
        assert_eq!(e.code(), Some("CROSSSLOT"), "{e}");
    })
    .await
    .unwrap();
}

/// One key per primary of `cluster` (`ck:<n>`, the first `n` whose slot
/// the primary serves), with the primary's port.
fn a_key_on_every_primary(cluster: &Cluster) -> Vec<(String, u16)> {
    let ranges = slot_ranges(cluster.any());
    let primaries: Vec<u16> = cluster.primaries().iter().map(|p| p.port()).collect();
    let mut keys: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let key = format!("ck:{i}");
        let slot = cluster.keyslot(key.as_bytes());
        let (_, _, port) = *ranges
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .expect("an owner");
        if !keys.iter().any(|(_, p)| *p == port) {
            keys.push((key, port));
        }
        if keys.len() == primaries.len() {
            return keys;
        }
    }
    unreachable!("every primary serves slots")
}

/// Asserts that each of `keys` holds `value` on its primary, asked
/// directly (not through respool), and is on no other primary.
fn assert_on_their_primaries(cluster: &Cluster, keys: &[(String, u16)], value: &str) {
    for (key, port) in keys {
        assert_eq!(
            cluster.node(*port).command(&[b"GET", key.as_bytes()]),
            bulk(value),
            "{key} on its primary :{port}"
        );
        for other in cluster.primaries().iter().filter(|p| p.port() != *port) {
            assert_eq!(
                other.command(&[b"GET", key.as_bytes()]).error_code(),
                Some("MOVED"),
                "{key} on :{}",
                other.port()
            );
        }
    }
}

/// The `redis` crate's cluster clients (`redis::cluster::ClusterClient`,
/// sync and async) through respool: they learn respool as one node owning
/// every slot and send it everything — strings, counters, pipelines (the
/// sync client's across slots, the async one's within a slot, as it
/// insists), `MGET`/`MSET` over keys of several slots (the crate splits
/// them per slot) — and the keys land on the primaries that serve their
/// slots.
#[tokio::test]
async fn the_redis_crate_cluster_clients_work_through_respool() {
    let cluster = Cluster::start();
    let proxy = proxy(&cluster, &[]).await;
    let url = format!("redis://{}", proxy.addr());
    let spread = a_key_on_every_primary(&cluster);

    // The sync client.
    let (sync_url, keys) = (url.clone(), spread.clone());
    tokio::task::spawn_blocking(move || {
        use redis::Commands;
        let client = redis::cluster::ClusterClient::new(vec![sync_url]).unwrap();
        let mut conn = client.get_connection().unwrap();
        for i in 0..200 {
            let _: () = conn.set(format!("sync:{i}"), i).unwrap();
        }
        for i in 0..200 {
            let v: i64 = conn.get(format!("sync:{i}")).unwrap();
            assert_eq!(v, i, "sync:{i}");
        }
        assert_eq!(conn.incr::<_, _, i64>("sync:n", 7).unwrap(), 7);
        let mut pipe = redis::cluster::cluster_pipe();
        for i in 0..100 {
            pipe.cmd("INCR").arg(format!("sync:p{i}"));
            pipe.cmd("GET").arg(format!("sync:{i}"));
        }
        let replies: Vec<i64> = pipe.query(&mut conn).unwrap();
        let expected: Vec<i64> = (0..100).flat_map(|i| [1, i]).collect();
        assert_eq!(replies, expected);
        let got: Vec<Option<i64>> = conn
            .mget(&["sync:1", "sync:2", "sync:nokey", "sync:3"])
            .unwrap();
        assert_eq!(got, [Some(1), Some(2), None, Some(3)]);
        let pairs: Vec<(&str, &str)> = keys.iter().map(|(k, _)| (k.as_str(), "sync")).collect();
        let _: () = conn.mset(&pairs).unwrap();
        let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        let values: Vec<String> = conn.mget(&names).unwrap();
        assert_eq!(values, vec!["sync"; names.len()]);
    })
    .await
    .unwrap();
    assert_on_their_primaries(&cluster, &spread, "sync");

    // The async client.
    let client = redis::cluster::ClusterClient::new(vec![url]).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    {
        use redis::AsyncCommands;
        for i in 0..200 {
            let _: () = conn.set(format!("async:{i}"), i).await.unwrap();
        }
        for i in 0..200 {
            let v: i64 = conn.get(format!("async:{i}")).await.unwrap();
            assert_eq!(v, i, "async:{i}");
        }
        // The async client sends a pipeline to the node of its first key's
        // slot and refuses, itself, one whose keys span slots ("Received
        // crossed slots in pipeline"); over one slot it works.
        let mut pipe = redis::pipe();
        for i in 0..100 {
            pipe.cmd("INCR").arg(format!("{{async}}:p{i}"));
            pipe.cmd("INCRBY").arg("{async}:sum").arg(i);
        }
        let replies: Vec<i64> = pipe.query_async(&mut conn).await.unwrap();
        let expected: Vec<i64> = (0..100).flat_map(|i| [1, i * (i + 1) / 2]).collect();
        assert_eq!(replies, expected);
        let got: Vec<Option<i64>> = conn
            .mget(&["async:1", "async:2", "async:nokey", "async:3"])
            .await
            .unwrap();
        assert_eq!(got, [Some(1), Some(2), None, Some(3)]);
        let pairs: Vec<(&str, &str)> = spread.iter().map(|(k, _)| (k.as_str(), "async")).collect();
        let _: () = conn.mset(&pairs).await.unwrap();
        let names: Vec<&str> = spread.iter().map(|(k, _)| k.as_str()).collect();
        let values: Vec<String> = conn.mget(&names).await.unwrap();
        assert_eq!(values, vec!["async"; names.len()]);
    }
    assert_on_their_primaries(&cluster, &spread, "async");
}

/// `RESPOOL POOLS` in front of a cluster lists each primary's lane set
/// (role `primary`, the node's address, validated, holding connections)
/// besides the `anchor` set keyless commands use, on every event loop.
#[tokio::test]
async fn respool_pools_lists_every_primarys_lanes() {
    let cluster = Cluster::start();
    let proxy = proxy(&cluster, &["--user", "ops:ops-pw", "--admin-user", "ops"]).await;
    let mut ops = proxy.client().await;
    assert_eq!(ops.cmd(&["AUTH", "ops", "ops-pw"]).await, ok());
    for (key, _) in a_key_on_every_primary(&cluster) {
        assert_eq!(ops.cmd(&["SET", &key, "v"]).await, ok());
    }
    let mut primaries: Vec<String> = cluster
        .primaries()
        .iter()
        .map(|p| p.addr().to_string())
        .collect();
    primaries.sort();
    let field = |record: &[(String, Reply)], name: &str| {
        record
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in {record:?}"))
    };
    let text = |record: &[(String, Reply)], name: &str| {
        field(record, name)
            .as_str()
            .expect("a text field")
            .to_string()
    };
    let int = |record: &[(String, Reply)], name: &str| {
        field(record, name).as_int().expect("an integer field")
    };
    // Connections are validated in the background: wait until every
    // primary's lanes hold theirs.
    let pools = wait::until_ok(
        "every primary's lanes to connect",
        wait::DEADLINE,
        async || {
            let Reply::Array(records) = ops.cmd(&["RESPOOL", "POOLS"]).await else {
                panic!("RESPOOL POOLS is a list of records");
            };
            let pools: Vec<Vec<(String, Reply)>> = records
                .iter()
                .map(|r| match r {
                    Reply::Array(flat) => flat
                        .chunks(2)
                        .map(|kv| (kv[0].as_str().expect("a name").to_string(), kv[1].clone()))
                        .collect(),
                    other => panic!("not a record: {other:?}"),
                })
                .collect();
            if pools.iter().all(|p| {
                text(p, "state") == "validated"
                    && int(p, "waiters") == 0
                    && int(p, "lane_connections") >= 1
            }) {
                Ok(pools)
            } else {
                Err(format!("lanes still connecting: {pools:?}"))
            }
        },
    )
    .await;
    let mut loops: Vec<i64> = pools.iter().map(|p| int(p, "event_loop")).collect();
    loops.dedup();
    assert!(!loops.is_empty(), "{pools:?}");
    for event_loop in loops {
        let mine: Vec<_> = pools
            .iter()
            .filter(|p| int(p, "event_loop") == event_loop)
            .collect();
        let mut listed: Vec<String> = mine
            .iter()
            .filter(|p| text(p, "role") == "primary")
            .map(|p| text(p, "upstream"))
            .collect();
        listed.sort();
        assert_eq!(listed, primaries, "loop {event_loop}: {mine:?}");
        let anchors: Vec<_> = mine
            .iter()
            .filter(|p| text(p, "role") == "anchor")
            .collect();
        assert_eq!(anchors.len(), 1, "loop {event_loop}: {mine:?}");
        assert!(
            primaries.contains(&text(anchors[0], "upstream")),
            "the anchor follows a primary: {anchors:?}"
        );
        for pool in &mine {
            assert_eq!(text(pool, "identity"), "default", "{pool:?}");
            assert!(int(pool, "lanes") >= 1, "{pool:?}");
        }
    }
}

/// redis-py's cluster client through respool: `python3 -c SCRIPT port`
/// prints `ok`.
const REDIS_PY_CLUSTER_SCENARIO: &str = r#"
import sys
from redis.cluster import RedisCluster
rc = RedisCluster(host="127.0.0.1", port=int(sys.argv[1]), decode_responses=True)
nodes = rc.get_nodes()
assert len(nodes) == 1 and nodes[0].port == int(sys.argv[1]), nodes
for i in range(200):
    rc.set(f"rc:{i}", i)
assert [rc.get(f"rc:{i}") for i in range(200)] == [str(i) for i in range(200)]
assert rc.incr("rc:n") == 1
assert rc.mget_nonatomic("rc:1", "rc:2", "rc:3") == ["1", "2", "3"]
pipe = rc.pipeline()
for i in range(50):
    pipe.incr(f"rc:p:{i}")
assert pipe.execute() == [1] * 50
print("ok")
"#;

/// A web app's use of redis-py as a plain client: `python3 -c SCRIPT port
/// protocol` prints `ok`.
const REDIS_PY_SCENARIO: &str = r#"
import sys, redis
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), protocol=int(sys.argv[2]), decode_responses=True)
p = "py" + sys.argv[2]
for i in range(300):
    r.set(f"{p}:{i}", i)
assert [r.get(f"{p}:{i}") for i in range(300)] == [str(i) for i in range(300)]
assert r.incr(f"{p}:n") == 1 and r.incrby(f"{p}:n", 4) == 5
r.hset(f"{p}:h", mapping={"a": "1", "b": "2"})
assert r.hgetall(f"{p}:h") == {"a": "1", "b": "2"}
r.rpush(f"{p}:l", "x", "y")
assert r.lrange(f"{p}:l", 0, -1) == ["x", "y"]
r.mset({"{" + p + "}a": "1", "{" + p + "}b": "2"})
assert r.mget("{" + p + "}a", "{" + p + "}b") == ["1", "2"]
r.set(f"{p}:e", "v", ex=100)
assert 0 < r.ttl(f"{p}:e") <= 100
pipe = r.pipeline(transaction=False)
for i in range(100):
    pipe.incr(f"{p}:pipe:{i}")
    pipe.get(f"{p}:{i}")
assert pipe.execute() == [x for i in range(100) for x in (1, str(i))]
assert r.mget(f"{p}:1", f"{p}:2", f"{p}:nokey") == ["1", "2", None]
assert r.delete(f"{p}:1", f"{p}:2", f"{p}:nokey") == 2
try:
    r.rename(f"{p}:3", f"{p}:4")
    raise SystemExit("no CROSSSLOT")
except redis.ResponseError as e:
    assert str(e).startswith("Keys in request don't hash to the same slot"), str(e)
tx = r.pipeline(transaction=True)
tx.set("{" + p + "}t1", "a")
tx.incr("{" + p + "}t2")
tx.get("{" + p + "}t1")
assert tx.execute() == [True, 1, "a"]
def bump(pipe):
    v = int(pipe.get("{" + p + "}w") or 0)
    pipe.multi()
    pipe.set("{" + p + "}w", v + 1)
assert r.transaction(bump, "{" + p + "}w") == [True]
assert r.get("{" + p + "}w") == "1"
tx = r.pipeline(transaction=True)
for i in range(20):
    tx.set(f"{p}:x{i}", "1")
try:
    tx.execute()
    raise SystemExit("no error for a transaction across slots")
except redis.ResponseError as e:
    assert "slot" in str(e), str(e)
assert r.exists(*[f"{p}:x{i}" for i in range(20)]) == 0
assert r.ping()
print("ok")
"#;

/// `kill -9` of a primary while 50 clients INCR and GET through respool:
/// the cluster promotes its replica, respool learns it, the requests that
/// waited for the dead node go to the new primary, and every client is
/// served again. No reply is of the wrong kind or out of step: an INCR's
/// value is the client's last one plus one, plus at most the INCRs whose
/// connection was lost (reported as such, never resent), unless the
/// cluster itself lost acknowledged writes in the failover (asynchronous
/// replication), and a GET returns the value the client's INCR just got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_is_replaced_and_clients_are_served_again() {
    const CLIENTS: usize = 50;
    let cluster = Arc::new(Cluster::start());
    let proxy = proxy(&cluster, &["--hold-timeout", "30s", "--timeout", "30s"]).await;
    let victim_slot = cluster.keyslot(b"{victim}");
    let victim = cluster.owner(victim_slot).port();
    let phase = Arc::new(std::sync::atomic::AtomicU8::new(0)); // 0 load, 1 killed, 2 after
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = proxy.client().await;
        client.set_read_timeout(Duration::from_secs(60));
        let phase = phase.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("{{victim}}:{c}");
            let (mut last, mut unsure, mut after_ok) = (0i64, 0i64, 0);
            let mut problems = Vec::new();
            while after_ok < 20 {
                let reply = client.cmd(&["INCR", &key]).await;
                // The phase when the reply came: an error during the
                // failover may have been caused by it.
                let now = phase.load(Ordering::Relaxed);
                match reply {
                    Reply::Int(n) if n > last && n <= last + 1 + unsure => {
                        last = n;
                        unsure = 0;
                    }
                    // The cluster lost acknowledged writes in the failover.
                    Reply::Int(n) if now > 0 && n <= last => {
                        last = n;
                        unsure = 0;
                    }
                    Reply::Error(e) if now > 0 && e.contains("may or may not have executed") => {
                        unsure += 1;
                        continue;
                    }
                    Reply::Error(e) if now > 0 => {
                        // Not sent, so not run (unavailable while held).
                        if now == 2 {
                            problems.push(format!("INCR {key} after the failover: {e}"));
                        }
                        continue;
                    }
                    other => {
                        problems.push(format!("INCR {key} after {last}: {other:?}"));
                        break;
                    }
                }
                let reply = client.cmd(&["GET", &key]).await;
                let now = phase.load(Ordering::Relaxed);
                match reply {
                    Reply::Bulk(v) if v == last.to_string().as_bytes() => {}
                    Reply::Error(_) if now == 1 => continue,
                    other => {
                        problems.push(format!("GET {key} after {last}: {other:?}"));
                        break;
                    }
                }
                if now == 2 {
                    after_ok += 1;
                }
            }
            problems
        }));
    }
    let mut watcher = proxy.client().await;
    until_counted(&mut watcher, "{victim}:0", 10, "load before the kill").await;
    phase.store(1, Ordering::Relaxed);
    cluster.node(victim).kill();
    let waiting = cluster.clone();
    tokio::task::spawn_blocking(move || {
        wait::until(
            "the replica to be promoted",
            Duration::from_secs(60),
            || {
                waiting.nodes.iter().filter(|n| n.is_running()).all(|n| {
                    slot_ranges(n)
                        .iter()
                        .any(|(a, b, port)| (*a..=*b).contains(&victim_slot) && *port != victim)
                })
            },
        );
        waiting.wait_agree(3);
    })
    .await
    .unwrap();
    let promoted = cluster.owner(victim_slot).port();
    assert_ne!(promoted, victim, "the replica took over");
    phase.store(2, Ordering::Relaxed);
    let mut problems = Vec::new();
    for task in tasks {
        problems.extend(task.await.unwrap());
    }
    assert!(problems.is_empty(), "{problems:#?}");
    let info = watcher.respool_counters().await;
    assert!(
        info.values()
            .any(|v| v.contains(&format!("127.0.0.1:{promoted}"))),
        "respool's map names the promoted replica: {info:?}"
    );
}

/// A key of the primary on `port`: `{prefix}:<n>` for the first `n` that
/// hashes to a slot it serves.
fn key_on(cluster: &Cluster, port: u16, prefix: &str) -> String {
    (0..10_000)
        .map(|n| format!("{prefix}:{n}"))
        .find(|k| cluster.owner(cluster.keyslot(k.as_bytes())).port() == port)
        .unwrap_or_else(|| panic!("no key of prefix {prefix} on port {port}"))
}

fn queued() -> Reply {
    Reply::Simple("QUEUED".into())
}

/// MULTI/EXEC runs on the primary of the transaction's first key, whichever
/// it is (keyless commands before that key included), and the client is
/// back on the lanes after it; an empty transaction is `*0`; DISCARD
/// forgets; a transaction pipelined whole replies in order; commands Redis
/// refuses while queueing are refused before the first key too, and EXEC
/// then answers EXECABORT.
#[tokio::test]
async fn transactions_run_on_the_primary_of_their_first_key() {
    let cluster = Cluster::start();
    let proxy = proxy(&cluster, &[]).await;
    let mut client = proxy.client().await;
    for primary in cluster.primaries() {
        let key = key_on(&cluster, primary.port(), "tx");
        let counter = format!("{{{key}}}:n");
        assert_eq!(client.cmd(&["MULTI"]).await, ok());
        assert_eq!(client.cmd(&["PING"]).await, queued());
        assert_eq!(client.cmd(&["SET", &key, "v"]).await, queued());
        assert_eq!(client.cmd(&["INCR", &counter]).await, queued());
        assert_eq!(
            client.cmd(&["EXEC"]).await,
            Reply::Array(vec![Reply::Simple("PONG".into()), ok(), Reply::Int(1)])
        );
        assert_eq!(primary.command(&[b"GET", key.as_bytes()]), bulk("v"));
        // Back on the lanes: any node's keys again.
        for other in cluster.primaries() {
            let elsewhere = key_on(&cluster, other.port(), "after");
            assert_eq!(client.cmd(&["SET", &elsewhere, "x"]).await, ok());
        }
    }
    let id = client.cmd(&["CLIENT", "ID"]).await.as_int().expect("an id");
    assert_eq!(client.cmd(&["MULTI"]).await, ok());
    // Another client's CLIENT LIST shows the transaction before it has a
    // node.
    let list = proxy.client().await.cmd(&["CLIENT", "LIST"]).await;
    let line = list
        .as_str()
        .and_then(|text| text.lines().find(|l| l.starts_with(&format!("id={id} "))))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(line.contains(" flags=x "), "{list:?}");
    assert_eq!(client.cmd(&["EXEC"]).await, Reply::Array(vec![]));
    assert_eq!(client.cmd(&["MULTI"]).await, ok());
    assert_eq!(client.cmd(&["ECHO", "hi"]).await, queued());
    assert_eq!(client.cmd(&["EXEC"]).await, Reply::Array(vec![bulk("hi")]));
    assert_eq!(client.cmd(&["EXEC"]).await.error_code(), Some("ERR"));

    let primaries = cluster.primaries();
    let last = primaries.last().expect("a primary");
    let key = key_on(&cluster, last.port(), "discarded");
    assert_eq!(client.cmd(&["MULTI"]).await, ok());
    assert_eq!(client.cmd(&["SET", &key, "v"]).await, queued());
    assert_eq!(client.cmd(&["MULTI"]).await.error_code(), Some("ERR"));
    assert_eq!(client.cmd(&["DISCARD"]).await, ok());
    assert_eq!(last.command(&[b"EXISTS", key.as_bytes()]), Reply::Int(0));

    // A whole transaction in one write.
    let mut pipeline = Vec::new();
    for args in [
        vec!["MULTI"],
        vec!["SET", &key, "1"],
        vec!["INCR", &key],
        vec!["GET", &key],
        vec!["EXEC"],
        vec!["GET", &key],
    ] {
        pipeline.extend(encode_command(&args));
    }
    client.send_raw(&pipeline).await.unwrap();
    let mut replies = Vec::new();
    for _ in 0..6 {
        replies.push(client.read_reply().await.unwrap());
    }
    assert_eq!(
        replies,
        vec![
            ok(),
            queued(),
            queued(),
            queued(),
            Reply::Array(vec![ok(), Reply::Int(2), bulk("2")]),
            bulk("2"),
        ]
    );

    // Refused while queueing, before the first key: EXEC aborts.
    for refused in [vec!["NOSUCHCOMMAND", "x"], vec!["ECHO"]] {
        assert_eq!(client.cmd(&["MULTI"]).await, ok());
        let reply = client.cmd(&refused).await;
        assert_eq!(reply.error_code(), Some("ERR"), "{refused:?}: {reply:?}");
        assert_eq!(client.cmd(&["SET", &key, "never"]).await, queued());
        assert_eq!(client.cmd(&["EXEC"]).await.error_code(), Some("EXECABORT"));
        assert_eq!(last.command(&[b"GET", key.as_bytes()]), bulk("2"));
    }
}

/// A transaction whose keys are on two primaries gets an error for the
/// key of the other primary and EXECABORT, and nothing of it is written on
/// either node; keys of two slots of one primary get the node's own
/// CROSSSLOT at EXEC, and nothing is written either. A cross-slot command
/// inside the transaction is refused likewise.
#[tokio::test]
async fn a_transaction_across_slots_is_refused_and_writes_nothing() {
    let cluster = Cluster::start();
    let proxy = proxy(&cluster, &[]).await;
    let mut client = proxy.client().await;
    let primaries = cluster.primaries();
    let (first, second) = (primaries[0], primaries[1]);
    let a = key_on(&cluster, first.port(), "cross");
    let b = key_on(&cluster, second.port(), "cross");
    assert_eq!(client.cmd(&["MULTI"]).await, ok());
    assert_eq!(client.cmd(&["SET", &a, "1"]).await, queued());
    let refused = client.cmd(&["SET", &b, "1"]).await;
    assert_eq!(refused.error_code(), Some("CROSSSLOT"), "{refused:?}");
    let mset = client.cmd(&["MSET", &a, "2", &b, "2"]).await;
    assert_eq!(mset.error_code(), Some("CROSSSLOT"), "{mset:?}");
    let dbsize = client.cmd(&["DBSIZE"]).await;
    assert_eq!(dbsize.error_code(), Some("ERR"), "{dbsize:?}");
    assert_eq!(client.cmd(&["EXEC"]).await.error_code(), Some("EXECABORT"));
    assert_eq!(first.command(&[b"EXISTS", a.as_bytes()]), Reply::Int(0));
    assert_eq!(second.command(&[b"EXISTS", b.as_bytes()]), Reply::Int(0));

    // Same primary, another slot: the node's own verdict at EXEC.
    let c = (0..10_000)
        .map(|n| format!("cross:same:{n}"))
        .find(|k| {
            let slot = cluster.keyslot(k.as_bytes());
            cluster.owner(slot).port() == first.port() && slot != cluster.keyslot(a.as_bytes())
        })
        .expect("another slot of the same primary");
    assert_eq!(client.cmd(&["MULTI"]).await, ok());
    assert_eq!(client.cmd(&["SET", &a, "1"]).await, queued());
    assert_eq!(client.cmd(&["SET", &c, "1"]).await, queued());
    let exec = client.cmd(&["EXEC"]).await;
    assert_eq!(exec.error_code(), Some("CROSSSLOT"), "{exec:?}");
    assert_eq!(first.command(&[b"EXISTS", a.as_bytes()]), Reply::Int(0));
    assert_eq!(first.command(&[b"EXISTS", c.as_bytes()]), Reply::Int(0));
    // The session ended with the transaction: other nodes' keys again.
    assert_eq!(client.cmd(&["SET", &b, "after"]).await, ok());
    assert_eq!(second.command(&[b"GET", b.as_bytes()]), bulk("after"));
}

/// A transaction whose slot moves to another primary while it is open
/// gets the node's own redirection for the command queued after the move
/// and EXECABORT, and writes nothing on either primary; the client is
/// served by the new owner afterwards.
#[tokio::test]
async fn a_transaction_whose_slot_moves_mid_way_is_aborted_whole() {
    let cluster = Cluster::start();
    let proxy = proxy(&cluster, &[]).await;
    let mut client = proxy.client().await;
    let primaries = cluster.primaries();
    let (from, to) = (primaries[0], primaries[1]);
    let key = key_on(&cluster, from.port(), "moving");
    let slot = cluster.keyslot(key.as_bytes());
    assert_eq!(client.cmd(&["MULTI"]).await, ok());
    assert_eq!(client.cmd(&["SET", &key, "1"]).await, queued());
    cluster.migrate_slot(slot, to);
    let moved = client.cmd(&["INCR", &key]).await;
    assert!(
        matches!(moved.error_code(), Some("MOVED" | "CROSSSLOT")),
        "{moved:?}"
    );
    assert_eq!(client.cmd(&["EXEC"]).await.error_code(), Some("EXECABORT"));
    // Asked of each node directly: no key in the slot on either.
    let slot_s = slot.to_string();
    for node in [from, to] {
        assert_eq!(
            node.command(&[b"CLUSTER", b"COUNTKEYSINSLOT", slot_s.as_bytes()]),
            Reply::Int(0),
            "keys in slot {slot} on :{}",
            node.port()
        );
    }
    assert_eq!(client.cmd(&["SET", &key, "after"]).await, ok());
    assert_eq!(to.command(&[b"GET", key.as_bytes()]), bulk("after"));
}

/// WATCH pins the client to its key's primary: a write of that key by
/// another client through respool makes EXEC answer nil and run nothing;
/// without one, EXEC runs. A key of another primary is refused while the
/// WATCH lasts, and the client is back on the lanes after EXEC.
#[tokio::test]
async fn watch_pins_to_the_key_and_a_concurrent_write_voids_exec() {
    let cluster = Cluster::start();
    let proxy = proxy(&cluster, &[]).await;
    let mut client = proxy.client().await;
    let mut other = proxy.client().await;
    let primaries = cluster.primaries();
    let owner = primaries[2];
    let key = key_on(&cluster, owner.port(), "watched");
    let elsewhere = key_on(&cluster, primaries[0].port(), "watched");
    assert_eq!(client.cmd(&["SET", &key, "0"]).await, ok());

    assert_eq!(client.cmd(&["WATCH", &key]).await, ok());
    assert_eq!(client.cmd(&["GET", &key]).await, bulk("0"));
    let refused = client.cmd(&["GET", &elsewhere]).await;
    assert_eq!(refused.error_code(), Some("CROSSSLOT"), "{refused:?}");
    assert_eq!(other.cmd(&["SET", &key, "theirs"]).await, ok());
    assert_eq!(client.cmd(&["MULTI"]).await, ok());
    assert_eq!(client.cmd(&["SET", &key, "mine"]).await, queued());
    assert_eq!(client.cmd(&["EXEC"]).await, Reply::NilArray);
    assert_eq!(owner.command(&[b"GET", key.as_bytes()]), bulk("theirs"));

    assert_eq!(client.cmd(&["WATCH", &key]).await, ok());
    assert_eq!(client.cmd(&["MULTI"]).await, ok());
    assert_eq!(client.cmd(&["SET", &key, "mine"]).await, queued());
    assert_eq!(client.cmd(&["EXEC"]).await, Reply::Array(vec![ok()]));
    assert_eq!(owner.command(&[b"GET", key.as_bytes()]), bulk("mine"));
    assert_eq!(client.cmd(&["SET", &elsewhere, "x"]).await, ok());

    let cross = client.cmd(&["WATCH", &key, &elsewhere]).await;
    assert_eq!(cross.error_code(), Some("CROSSSLOT"), "{cross:?}");
}

/// SCAN walks every primary: 2 000 keys written across the cluster are
/// each returned, the iteration ends, MATCH and COUNT reach the nodes; a
/// cursor naming a primary the cluster does not have, or not a number, is
/// an error.
#[tokio::test]
async fn scan_returns_every_key_of_every_primary_once_and_ends() {
    const KEYS: usize = 2_000;
    let cluster = Cluster::start();
    let proxy = proxy(&cluster, &[]).await;
    let mut client = proxy.client().await;
    let written: std::collections::HashSet<String> =
        (0..KEYS).map(|i| format!("scan:{i}")).collect();
    let mut mset = vec!["MSET".to_string()];
    for k in &written {
        mset.push(k.clone());
        mset.push("v".into());
    }
    assert_eq!(client.cmd(&mset).await, ok());
    for primary in cluster.primaries() {
        let on_node = primary.command(&[b"DBSIZE"]).as_int().unwrap_or(0);
        assert!(on_node > 0, "keys on port {}", primary.port());
    }
    let mut seen = std::collections::HashSet::new();
    let mut returned = 0;
    let mut cursor = "0".to_string();
    for call in 0.. {
        assert!(call < 10 * KEYS, "SCAN did not end");
        let reply = client.cmd(&["SCAN", &cursor, "COUNT", "50"]).await;
        let Reply::Array(parts) = reply else {
            panic!("SCAN {cursor}: {reply:?}");
        };
        let [Reply::Bulk(next), Reply::Array(keys)] = &parts[..] else {
            panic!("SCAN {cursor}: {parts:?}");
        };
        for k in keys {
            returned += 1;
            seen.insert(String::from_utf8(k.as_bytes().unwrap().to_vec()).unwrap());
        }
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen, written);
    // A table that did not grow during the scan returns each key once.
    assert_eq!(returned, KEYS);

    let mut matched = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let reply = client
            .cmd(&["SCAN", &cursor, "MATCH", "scan:1?", "TYPE", "string"])
            .await;
        let Reply::Array(parts) = reply else {
            panic!("{reply:?}")
        };
        if let Reply::Array(keys) = &parts[1] {
            matched.extend(keys.iter().map(|k| k.as_str().unwrap().to_string()));
        }
        cursor = parts[0].as_str().unwrap().to_string();
        if cursor == "0" {
            break;
        }
    }
    matched.sort();
    let expected: Vec<String> = (10..20).map(|i| format!("scan:{i}")).collect();
    assert_eq!(matched, expected);

    for forged in [
        (5u64 << 50).to_string(),
        u64::MAX.to_string(),
        "abc".into(),
        "-1".into(),
    ] {
        let reply = client.cmd(&["SCAN", &forged]).await;
        assert_eq!(reply.error_code(), Some("ERR"), "{forged}: {reply:?}");
        assert!(format!("{reply:?}").contains("invalid cursor"), "{reply:?}");
    }
    let bare = client.cmd(&["SCAN"]).await;
    assert_eq!(bare, cluster.any().command(&[b"SCAN"]));
    assert_eq!(client.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
}

/// SCRIPT EXISTS is true only where every primary has the script; SCRIPT
/// KILL asks every primary and says so when none runs one.
#[tokio::test]
async fn script_exists_and_kill_ask_every_primary() {
    let cluster = Cluster::start();
    let proxy = proxy(&cluster, &[]).await;
    let mut client = proxy.client().await;
    let sha = client.cmd(&["SCRIPT", "LOAD", "return 1"]).await;
    let sha = sha.as_str().expect("a sha").to_string();
    let missing = "0".repeat(40);
    assert_eq!(
        client.cmd(&["SCRIPT", "EXISTS", &sha, &missing]).await,
        Reply::Array(vec![Reply::Int(1), Reply::Int(0)])
    );
    // Flushed on one primary only: no longer everywhere.
    let primaries = cluster.primaries();
    primaries[1].command(&[b"SCRIPT", b"FLUSH"]);
    assert_eq!(
        client.cmd(&["SCRIPT", "EXISTS", &sha]).await,
        Reply::Array(vec![Reply::Int(0)])
    );
    let kill = client.cmd(&["SCRIPT", "KILL"]).await;
    assert_eq!(kill.error_code(), Some("NOTBUSY"), "{kill:?}");
    let kill = client.cmd(&["FUNCTION", "KILL"]).await;
    assert_eq!(kill.error_code(), Some("NOTBUSY"), "{kill:?}");

    // A script spinning on one primary (not the anchor, by its key) is
    // stopped by a SCRIPT KILL sent through respool.
    assert_eq!(
        client
            .cmd(&["CONFIG", "SET", "busy-reply-threshold", "50"])
            .await,
        ok()
    );
    let mut runner = proxy.client().await;
    let key = key_on(&cluster, primaries[2].port(), "spin");
    runner
        .send(&["EVAL", "while true do end", "1", &key])
        .await
        .unwrap();
    wait::until_ok("a script to run", Duration::from_secs(20), async || {
        let reply = client.cmd(&["SCRIPT", "KILL"]).await;
        if reply == ok() {
            return Ok(());
        }
        assert_eq!(reply.error_code(), Some("NOTBUSY"), "{reply:?}");
        Err(format!(
            "no script ever ran: SCRIPT KILL answered {reply:?}"
        ))
    })
    .await;
    let stopped = runner.read_reply().await.unwrap();
    assert!(
        format!("{stopped:?}").contains("killed by user"),
        "{stopped:?}"
    );
    assert_eq!(runner.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
}
