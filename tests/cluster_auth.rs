//! Every auth mode and TLS in front of a real Redis Cluster (`--cluster`):
//! AUTH passthrough (a client's AUTH checked by the cluster, its commands
//! run as that user on every primary, redirections included), respool's
//! own client users (`--requirepass`, `--user`), and a cluster whose nodes
//! speak TLS only, reached with `rediss://` seeds by TLS clients.

mod support;

use std::time::Duration;

use support::client::encode_command;
use support::cluster::Cluster;
use support::tls::{Pki, TlsClient};
use support::{wait, RedisServer, Reply, TestProxy};

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

/// A proxy in front of `cluster`, its seeds every node, with `extra` flags.
async fn proxy(cluster: &Cluster, extra: &[&str]) -> TestProxy {
    let seeds = cluster.urls()[1..].join(",");
    let mut flags = vec!["--cluster", "--upstream", &seeds];
    flags.extend_from_slice(extra);
    TestProxy::start(&cluster.urls()[0], &flags).await
}

/// `ACL SETUSER user on >password <rules…>` on `nodes`: ACLs are per node
/// in Redis Cluster.
fn set_user(nodes: &[&RedisServer], user: &str, password: &str, rules: &[&str]) {
    let password = format!(">{password}");
    let mut args: Vec<&[u8]> = vec![b"ACL", b"SETUSER", user.as_bytes(), b"on"];
    args.push(password.as_bytes());
    args.extend(rules.iter().map(|r| r.as_bytes()));
    for node in nodes {
        assert_eq!(
            node.command(&args),
            ok(),
            "ACL SETUSER {user} on :{}",
            node.port()
        );
    }
}

/// Two users on every node, each confined to the keys of its own name.
fn alice_and_bob(cluster: &Cluster) {
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().collect();
    set_user(&nodes, "alice", "alice-pw", &["~alice:*", "+@all"]);
    set_user(&nodes, "bob", "bob-pw", &["~bob:*", "+@all"]);
}

/// Keys `<prefix><n>`, one served by each primary, in primary order.
fn key_per_primary(cluster: &Cluster, prefix: &str) -> Vec<String> {
    let primaries: Vec<u16> = cluster.primaries().iter().map(|p| p.port()).collect();
    let mut keys: Vec<Option<String>> = vec![None; primaries.len()];
    for n in 0.. {
        let key = format!("{prefix}{n}");
        let owner = cluster.owner(cluster.keyslot(key.as_bytes())).port();
        if let Some(i) = primaries.iter().position(|&p| p == owner) {
            keys[i].get_or_insert(key);
        }
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    keys.into_iter().flatten().collect()
}

/// The users the connections to `node` (other than the one asking) are
/// logged in as.
fn users_connected(node: &RedisServer) -> Vec<String> {
    node.other_clients()
        .iter()
        .filter_map(|line| {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix("user="))
                .map(str::to_string)
        })
        .collect()
}

/// Sessions and commands for every primary run as the logged-in user too:
/// a transaction and a WATCH on each primary (with the user's lane set on
/// that primary as the session's origin), and SCRIPT KILL, which asks every
/// primary on a connection of its own, gets the nodes' `NOPERM` for a user
/// without it where respool's own identity would get `NOTBUSY`.
#[tokio::test]
async fn transactions_and_kills_run_as_the_logged_in_user() {
    let cluster = Cluster::start();
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().collect();
    set_user(
        &nodes,
        "carol",
        "carol-pw",
        &["~carol:*", "+@all", "-script|kill"],
    );
    let proxy = proxy(&cluster, &[]).await;
    let mut client = proxy.client().await;
    assert_eq!(
        client.cmd(&["SCRIPT", "KILL"]).await.error_code(),
        Some("NOTBUSY"),
        "respool's own identity may kill"
    );
    assert_eq!(client.cmd(&["AUTH", "carol", "carol-pw"]).await, ok());
    for key in key_per_primary(&cluster, "carol:t") {
        assert_eq!(client.cmd(&["MULTI"]).await, ok());
        assert_eq!(
            client.cmd(&["SET", &key, "1"]).await,
            Reply::Simple("QUEUED".into())
        );
        assert_eq!(
            client.cmd(&["INCR", &key]).await,
            Reply::Simple("QUEUED".into())
        );
        assert_eq!(
            client.cmd(&["EXEC"]).await,
            Reply::Array(vec![ok(), Reply::Int(2)]),
            "MULTI/EXEC of {key}"
        );
        assert_eq!(client.cmd(&["WATCH", &key]).await, ok());
        assert_eq!(client.cmd(&["GET", &key]).await, bulk("2"));
        assert_eq!(client.cmd(&["MULTI"]).await, ok());
        assert_eq!(
            client.cmd(&["INCR", &key]).await,
            Reply::Simple("QUEUED".into())
        );
        assert_eq!(
            client.cmd(&["EXEC"]).await,
            Reply::Array(vec![Reply::Int(3)]),
            "WATCH {key}"
        );
        let owner = cluster.owner(cluster.keyslot(key.as_bytes()));
        assert_eq!(owner.command(&[b"GET", key.as_bytes()]), bulk("3"));
        assert!(
            users_connected(owner).iter().any(|u| u == "carol"),
            "carol's connection on :{}",
            owner.port()
        );
    }
    let kill = client.cmd(&["SCRIPT", "KILL"]).await;
    assert_eq!(kill.error_code(), Some("NOPERM"), "{kill}");
}

/// Each ACL user, logged in through respool, writes and reads its keys on
/// all three primaries (checked on the nodes themselves, which see
/// connections of that user) and gets the nodes' own `NOPERM` for the other
/// user's keys — on single-key commands, split multi-key commands and
/// blocking commands alike. A wrong password gets the cluster's own
/// `WRONGPASS` and leaves the client who it was; a client logs in as
/// another user mid-connection and from then on acts as that user.
#[tokio::test]
async fn acl_users_act_as_themselves_on_every_primary() {
    let cluster = Cluster::start();
    alice_and_bob(&cluster);
    let proxy = proxy(&cluster, &[]).await;
    let mut client = proxy.client().await;
    // Redis's own words for a wrong password, asked of a node.
    let wrongpass = {
        let mut direct = cluster.any().direct().await;
        direct.cmd(&["AUTH", "alice", "wrong"]).await
    };
    assert_eq!(wrongpass.error_code(), Some("WRONGPASS"), "{wrongpass}");
    assert_eq!(client.cmd(&["AUTH", "alice", "wrong"]).await, wrongpass);
    assert_eq!(client.cmd(&["ACL", "WHOAMI"]).await, bulk("default"));

    for (user, other) in [("alice", "bob"), ("bob", "alice")] {
        // The second turn logs in as bob on a connection logged in as alice.
        let password = format!("{user}-pw");
        assert_eq!(client.cmd(&["AUTH", user, &password]).await, ok());
        assert_eq!(client.cmd(&["ACL", "WHOAMI"]).await, bulk(user));
        let mine = key_per_primary(&cluster, &format!("{user}:k"));
        let theirs = key_per_primary(&cluster, &format!("{other}:k"));
        for key in &mine {
            assert_eq!(client.cmd(&["SET", key, user]).await, ok(), "SET {key}");
            assert_eq!(client.cmd(&["GET", key]).await, bulk(user), "GET {key}");
            let owner = cluster.owner(cluster.keyslot(key.as_bytes()));
            assert_eq!(
                owner.command(&[b"GET", key.as_bytes()]),
                bulk(user),
                "{key} on its primary :{}",
                owner.port()
            );
        }
        for key in &theirs {
            let reply = client.cmd(&["SET", key, user]).await;
            assert_eq!(reply.error_code(), Some("NOPERM"), "SET {key}: {reply}");
            let reply = client.cmd(&["BLPOP", key, "0.01"]).await;
            assert_eq!(reply.error_code(), Some("NOPERM"), "BLPOP {key}: {reply}");
        }
        // Split across the three primaries, each part run as the user.
        let mget: Vec<&str> = std::iter::once("MGET")
            .chain(mine.iter().map(String::as_str))
            .collect();
        assert_eq!(
            client.cmd(&mget).await,
            Reply::Array(vec![bulk(user), bulk(user), bulk(user)])
        );
        let del: Vec<&str> = ["DEL", &mine[0], &theirs[1]].to_vec();
        let reply = client.cmd(&del).await;
        assert_eq!(
            reply.error_code(),
            Some("NOPERM"),
            "DEL across users: {reply}"
        );
        assert_eq!(
            client
                .cmd(&["BLPOP", &format!("{user}:list"), "0.01"])
                .await,
            Reply::NilArray
        );
        // A wrong password now leaves the client logged in as `user`.
        assert_eq!(client.cmd(&["AUTH", other, "wrong"]).await, wrongpass);
        assert_eq!(client.cmd(&["ACL", "WHOAMI"]).await, bulk(user));
        // Every primary served the user over connections of its own.
        for primary in cluster.primaries() {
            let users = users_connected(primary);
            assert!(
                users.iter().any(|u| u == user),
                "no connection as {user} on :{}: {users:?}",
                primary.port()
            );
        }
    }
    // HELLO 3 with AUTH logs in too, and the RESP3 lanes are the user's.
    let mut resp3 = proxy.client().await;
    let hello = resp3
        .cmd(&["HELLO", "3", "AUTH", "alice", "alice-pw"])
        .await;
    assert!(matches!(hello, Reply::Map(_)), "HELLO 3 AUTH: {hello}");
    for (mine, theirs) in key_per_primary(&cluster, "alice:r3")
        .iter()
        .zip(key_per_primary(&cluster, "bob:r3").iter())
    {
        assert_eq!(resp3.cmd(&["SET", mine, "3"]).await, ok());
        assert_eq!(resp3.cmd(&["GET", mine]).await, bulk("3"));
        let reply = resp3.cmd(&["GET", theirs]).await;
        assert_eq!(reply.error_code(), Some("NOPERM"), "GET {theirs}: {reply}");
    }
    // RESET logs out: back to respool's own identity (the default user).
    assert_eq!(client.cmd(&["RESET"]).await, Reply::Simple("RESET".into()));
    assert_eq!(client.cmd(&["ACL", "WHOAMI"]).await, bulk("default"));
    let theirs = key_per_primary(&cluster, "alice:k");
    assert_eq!(
        client.cmd(&["GET", &theirs[2]]).await,
        bulk("alice"),
        "the default user reads everything"
    );
}

/// A request answered `-MOVED` goes on to the new owner's lanes of the
/// same identity, never respool's own: on the node the slot moved to,
/// alice may only touch `other:*` keys, so her write of another key there
/// gets that node's `NOPERM` (respool's own identity, the default user,
/// would have written it), and her write of an `other:*` key lands there.
#[tokio::test]
async fn a_redirected_request_keeps_its_identity() {
    let cluster = Cluster::start();
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().collect();
    set_user(&nodes, "alice", "alice-pw", &["~*", "+@all"]);
    // The slot map is not asked for again unless a node says it moved.
    let proxy = proxy(&cluster, &["--cluster-refresh-interval", "1h"]).await;
    let mut client = proxy.client().await;
    assert_eq!(client.cmd(&["AUTH", "alice", "alice-pw"]).await, ok());

    // Two slots of the same primary, and another primary to move them to.
    let primaries = cluster.primaries();
    let (from, to) = (primaries[0], primaries[1]);
    let mut keys = (0..)
        .map(|n| format!("{{tag{n}}}"))
        .filter(|tag| cluster.owner(cluster.keyslot(tag.as_bytes())).port() == from.port());
    let (forbidden, allowed) = (
        format!("k:{}", keys.next().expect("a tag")),
        format!("other:{}", keys.next().expect("a tag")),
    );
    // alice's lanes to every primary are up, by the map respool has now.
    assert_eq!(client.cmd(&["SET", &forbidden, "before"]).await, ok());
    for key in [&forbidden, &allowed] {
        cluster.migrate_slot(cluster.keyslot(key.as_bytes()), to);
    }
    // On the new owner (and its replica), alice may only touch other:*.
    let on_target: Vec<&RedisServer> = cluster
        .nodes
        .iter()
        .filter(|n| {
            n.port() == to.port()
                || matches!(n.command(&[b"ROLE"]), Reply::Array(items)
                    if items.get(2) == Some(&Reply::Int(i64::from(to.port()))))
        })
        .collect();
    assert_eq!(on_target.len(), 2, "the new owner and its replica");
    set_user(&on_target, "alice", "alice-pw", &["resetkeys", "~other:*"]);
    let before = client.respool_counters().await;

    // Both go to the old owner by respool's map, which answers -MOVED.
    let mut pipeline = encode_command(&["SET", &forbidden, "after"]);
    pipeline.extend(encode_command(&["SET", &allowed, "after"]));
    client.send_raw(&pipeline).await.expect("sending");
    let first = client.read_reply().await.expect("a reply");
    let second = client.read_reply().await.expect("a reply");
    assert_eq!(
        first.error_code(),
        Some("NOPERM"),
        "alice's redirected write ran as another user: {first}"
    );
    assert_eq!(second, ok());
    assert_eq!(to.command(&[b"GET", allowed.as_bytes()]), bulk("after"));
    assert_eq!(to.command(&[b"GET", forbidden.as_bytes()]), bulk("before"));
    let after = client.respool_counters().await;
    let redirected = |c: &std::collections::HashMap<String, String>| -> u64 {
        c["cluster_redirected"].parse().expect("a count")
    };
    assert!(
        redirected(&after) > redirected(&before),
        "no request was redirected: {after:?}"
    );
    // The node the slots moved to denied alice, by name.
    let log = format!("{:?}", to.command(&[b"ACL", b"LOG"]));
    assert!(log.contains("alice"), "ACL LOG on :{}: {log}", to.port());
}

/// With respool's own client users (`--requirepass`, `--user`) clients log
/// into respool, and the cluster sees respool's identity (`--upstream`'s
/// user) on every primary.
#[tokio::test]
async fn respools_own_users_reach_every_primary() {
    let cluster = Cluster::start();
    let proxy = proxy(
        &cluster,
        &["--requirepass", "door", "--user", "carol:carol-pw"],
    )
    .await;
    let mut client = proxy.client().await;
    client.cmd(&["GET", "k"]).await.expect_error_code("NOAUTH");
    client
        .cmd(&["AUTH", "carol", "wrong"])
        .await
        .expect_error_code("WRONGPASS");
    client.cmd(&["GET", "k"]).await.expect_error_code("NOAUTH");
    assert_eq!(client.cmd(&["AUTH", "carol", "carol-pw"]).await, ok());
    let keys = key_per_primary(&cluster, "carol:");
    for key in &keys {
        assert_eq!(client.cmd(&["SET", key, "c"]).await, ok());
        let owner = cluster.owner(cluster.keyslot(key.as_bytes()));
        assert_eq!(owner.command(&[b"GET", key.as_bytes()]), bulk("c"));
    }
    let mut other = proxy.client().await;
    assert_eq!(other.cmd(&["AUTH", "door"]).await, ok());
    let mget: Vec<&str> = std::iter::once("MGET")
        .chain(keys.iter().map(String::as_str))
        .collect();
    assert_eq!(
        other.cmd(&mget).await,
        Reply::Array(vec![bulk("c"), bulk("c"), bulk("c")])
    );
    for primary in cluster.primaries() {
        let users = users_connected(primary);
        assert!(
            !users.is_empty() && users.iter().all(|u| u == "default"),
            "respool's own identity only on :{}: {users:?}",
            primary.port()
        );
    }
}

/// An identity's lanes on every primary close once no client uses it for
/// `--identity-idle-timeout`, and `--max-identities` bounds the identities
/// open at once, in cluster mode as with one upstream.
#[tokio::test]
async fn identities_are_bounded_and_their_lanes_on_every_primary_close_when_idle() {
    let cluster = Cluster::start();
    alice_and_bob(&cluster);
    let proxy = proxy(
        &cluster,
        // One event loop: INFO respool shows the loop of the client asking.
        &[
            "--max-identities",
            "1",
            "--identity-idle-timeout",
            "1s",
            "--threads",
            "1",
        ],
    )
    .await;
    let mut alice = proxy.client().await;
    assert_eq!(alice.cmd(&["AUTH", "alice", "alice-pw"]).await, ok());
    for key in key_per_primary(&cluster, "alice:") {
        assert_eq!(alice.cmd(&["SET", &key, "a"]).await, ok());
    }
    let mut bob = proxy.client().await;
    let reply = bob.cmd(&["AUTH", "bob", "bob-pw"]).await;
    assert!(
        reply.is_error(),
        "a second identity beyond --max-identities 1: {reply}"
    );
    assert_eq!(bob.cmd(&["ACL", "WHOAMI"]).await, bulk("default"));
    // Each primary holds a lane set of alice's; bob got none.
    let info = alice.cmd(&["INFO", "respool"]).await;
    let info = info.as_str().expect("INFO text").to_string();
    let per_node: Vec<&str> = info
        .lines()
        .filter(|l| l.starts_with("cluster_node"))
        .collect();
    assert_eq!(per_node.len(), 3, "{info}");
    assert!(
        per_node.iter().all(|l| l.ends_with(",identities=1")),
        "{per_node:?}"
    );
    drop(alice);
    let alice_gone = || {
        cluster
            .primaries()
            .iter()
            .all(|p| !users_connected(p).iter().any(|u| u == "alice"))
    };
    wait::until_async(
        "alice's connections to every primary to close",
        Duration::from_secs(30),
        alice_gone,
    )
    .await;
    // respool forgot alice's lane sets on every primary, not only their
    // connections.
    let info = bob.cmd(&["INFO", "respool"]).await;
    let info = info.as_str().expect("INFO text").to_string();
    assert_eq!(
        info.lines()
            .filter(|l| l.starts_with("cluster_node") && l.ends_with(",identities=0"))
            .count(),
        3,
        "{info}"
    );
    // The identity's slot is free again.
    assert_eq!(bob.cmd(&["AUTH", "bob", "bob-pw"]).await, ok());
    for key in key_per_primary(&cluster, "bob:") {
        assert_eq!(bob.cmd(&["SET", &key, "b"]).await, ok());
    }
}

/// A user missing on one primary (ACLs are per node) is served by the
/// others, and its requests for that primary fail within
/// `--hold-timeout` with an error that names the node's refusal — no hang,
/// and never respool's own identity in its place.
#[tokio::test]
async fn a_user_one_primary_does_not_know_gets_that_nodes_refusal_in_time() {
    let cluster = Cluster::start();
    // The anchor (where logins are checked) serves slot 0; the user is
    // missing on the primary serving slot 16383, and on its replica.
    let stranger = cluster.owner(16383);
    assert_ne!(stranger.port(), cluster.owner(0).port());
    let knows: Vec<&RedisServer> = cluster
        .nodes
        .iter()
        .filter(|n| {
            n.port() != stranger.port()
                && !matches!(n.command(&[b"ROLE"]), Reply::Array(items)
                    if items.get(2) == Some(&Reply::Int(i64::from(stranger.port()))))
        })
        .collect();
    assert_eq!(knows.len(), 4, "two primaries and their replicas");
    set_user(&knows, "alice", "alice-pw", &["~*", "+@all"]);
    let proxy = proxy(&cluster, &["--hold-timeout", "1s"]).await;
    let mut client = proxy.client().await;
    assert_eq!(client.cmd(&["AUTH", "alice", "alice-pw"]).await, ok());
    for key in key_per_primary(&cluster, "k") {
        let owner = cluster.owner(cluster.keyslot(key.as_bytes()));
        let reply = client.cmd(&["SET", &key, "v"]).await;
        if owner.port() == stranger.port() {
            let text = format!("{reply}");
            assert!(
                reply.is_error() && text.contains("WRONGPASS"),
                "SET {key} on the primary without alice: {reply}"
            );
            assert_eq!(owner.command(&[b"EXISTS", key.as_bytes()]), Reply::Int(0));
        } else {
            assert_eq!(reply, ok(), "SET {key}");
        }
    }
}

/// redis-py, given a URL with a user and password, logs in through respool
/// on the cluster and acts as that user on every primary.
#[tokio::test]
async fn redis_py_from_url_with_a_password_works_through_respool_on_the_cluster() {
    let cluster = Cluster::start();
    alice_and_bob(&cluster);
    let proxy = proxy(&cluster, &[]).await;
    let url = format!("redis://alice:alice-pw@{}/0", proxy.addr());
    let keys = key_per_primary(&cluster, "alice:py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(REDIS_PY_AS_ALICE)
            .arg(url)
            .args(keys)
            .output()
            .expect("python3 (with redis-py: python3 -m pip install redis)")
    })
    .await
    .expect("python3 ran");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "redis-py:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for key in key_per_primary(&cluster, "alice:py") {
        let owner = cluster.owner(cluster.keyslot(key.as_bytes()));
        assert_eq!(owner.command(&[b"GET", key.as_bytes()]), bulk(&key));
    }
}

/// A cluster whose nodes listen and talk to each other with TLS only
/// (`port 0`), reached with `rediss://` seeds: respool finds each primary's
/// `tls-port` in `CLUSTER SHARDS`, and a TLS client of respool's TLS
/// listener writes keys that land on all three primaries (checked on the
/// nodes), reads them back, and logs in as an ACL user (AUTH passthrough)
/// over TLS on both sides.
#[tokio::test]
async fn a_tls_only_cluster_serves_tls_clients_through_rediss_seeds() {
    let pki = Pki::generate();
    let cluster = Cluster::start_tls(&pki);
    assert!(cluster.urls().iter().all(|u| u.starts_with("rediss://")));
    alice_and_bob(&cluster);
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("client.pem"),
        pki.arg("client.key"),
    );
    let (server_cert, server_key) = (pki.arg("server.pem"), pki.arg("server.key"));
    let proxy = proxy(
        &cluster,
        &[
            "--upstream-ca",
            &ca,
            "--upstream-cert",
            &cert,
            "--upstream-key",
            &key,
            "--tls-cert",
            &server_cert,
            "--tls-key",
            &server_key,
        ],
    )
    .await;
    let mut client = TlsClient::connect(proxy.addr(), &pki.path("ca.pem"), None)
        .await
        .expect("a TLS connection to respool");
    let cmd = |reply: Result<Reply, String>| reply.expect("a reply over TLS");

    let keys = key_per_primary(&cluster, "tls:");
    let mut pipeline = Vec::new();
    for key in &keys {
        pipeline.extend(encode_command(&["SET", key, key]));
    }
    client.send_raw(&pipeline).await.expect("sending");
    for key in &keys {
        assert_eq!(cmd(client.read_reply().await), ok(), "SET {key}");
        let owner = cluster.owner(cluster.keyslot(key.as_bytes()));
        assert_eq!(owner.command(&[b"GET", key.as_bytes()]), bulk(key));
    }
    let mget: Vec<&str> = std::iter::once("MGET")
        .chain(keys.iter().map(String::as_str))
        .collect();
    assert_eq!(
        cmd(client.cmd(&mget).await),
        Reply::Array(keys.iter().map(|k| bulk(k)).collect())
    );
    // respool's lanes go to the primaries' TLS ports (the only ones).
    let info = cmd(client.cmd(&["INFO", "respool"]).await);
    let info = info.as_str().expect("INFO text").to_string();
    for primary in cluster.primaries() {
        let line = format!("addr=127.0.0.1:{},", primary.port());
        assert!(info.contains(&line), "{line} in INFO respool:\n{info}");
    }

    assert_eq!(cmd(client.cmd(&["AUTH", "alice", "alice-pw"]).await), ok());
    for key in key_per_primary(&cluster, "alice:tls") {
        assert_eq!(cmd(client.cmd(&["SET", &key, "a"]).await), ok());
        assert_eq!(cmd(client.cmd(&["GET", &key]).await), bulk("a"));
    }
    for key in key_per_primary(&cluster, "bob:tls") {
        let reply = cmd(client.cmd(&["SET", &key, "a"]).await);
        assert_eq!(reply.error_code(), Some("NOPERM"), "SET {key}: {reply}");
    }
}

const REDIS_PY_AS_ALICE: &str = r#"
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
assert r.acl_whoami() in ("alice", b"alice"), r.acl_whoami()
keys = sys.argv[2:]
for k in keys:
    assert r.set(k, k)
assert r.mget(keys) == [k.encode() for k in keys], r.mget(keys)
try:
    r.set("bob:py", "x")
    raise SystemExit("alice wrote bob:py")
except redis.exceptions.NoPermissionError:
    pass
bad = redis.Redis.from_url(sys.argv[1].replace("alice-pw", "wrong"))
try:
    bad.ping()
    raise SystemExit("a wrong password was accepted")
except redis.exceptions.AuthenticationError:
    pass
print("ok")
"#;
