//! Unix sockets on both sides of respool, as a sidecar runs it: clients on
//! `--listen unix:PATH`, Redis on `--upstream unix:///…/redis.sock`. Shared
//! lanes, pinned sessions (MULTI/EXEC, BLPOP), AUTH passthrough, the `redis`
//! crate and redis-py all go over the sockets; the socket file gets its
//! `--unix-permissions`, a stale one is replaced, a live one refused (or
//! taken over with `--unix-takeover`), and the file goes at shutdown.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{RedisServer, Reply, TestClient, TestProxy};

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

/// A fresh directory for respool's socket, and the socket's path in it.
fn socket_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("respool-unix-")
        .tempdir()
        .expect("temp dir");
    let path = dir.path().join("respool.sock");
    (dir, path)
}

fn unix_listen(path: &Path) -> String {
    format!("unix:{}", path.display())
}

#[tokio::test]
async fn both_sides_over_unix_sockets_shared_lanes_and_pinned_sessions() {
    let redis = RedisServer::builder().unix_socket().start();
    let (_dir, path) = socket_dir();
    let listen = unix_listen(&path);
    let proxy = TestProxy::start(
        &redis.unix_url(),
        &["--listen", &listen, "--unix-permissions", "0600"],
    )
    .await;
    let mode = std::fs::metadata(&path)
        .expect("socket file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "--unix-permissions applied");

    let mut c = TestClient::connect_unix(&path).await.expect("connect");
    assert_eq!(c.cmd(&["SET", "u:k", "v"]).await, ok());
    assert_eq!(c.cmd(&["GET", "u:k"]).await, bulk("v"));
    assert_eq!(c.cmd(&["INCR", "u:n"]).await, Reply::Int(1));

    // A transaction: a pinned session, over the Unix upstream.
    assert_eq!(c.cmd(&["MULTI"]).await, ok());
    assert_eq!(
        c.cmd(&["INCR", "u:n"]).await,
        Reply::Simple("QUEUED".into())
    );
    assert_eq!(c.cmd(&["GET", "u:k"]).await, Reply::Simple("QUEUED".into()));
    assert_eq!(
        c.cmd(&["EXEC"]).await,
        Reply::Array(vec![Reply::Int(2), bulk("v")])
    );

    // A blocking pop woken by another client (over TCP: both listeners at once).
    c.send(&["BLPOP", "u:list", "20"]).await.expect("send");
    support::wait::until_async(
        "the BLPOP to block upstream",
        support::wait::DEADLINE,
        || redis.blocked_clients() == 1,
    )
    .await;
    let mut tcp = proxy.client().await;
    assert_eq!(tcp.cmd(&["RPUSH", "u:list", "x"]).await, Reply::Int(1));
    assert_eq!(
        c.read_reply().await.expect("BLPOP reply"),
        Reply::Array(vec![bulk("u:list"), bulk("x")])
    );
    assert_eq!(c.cmd(&["GET", "u:k"]).await, bulk("v"), "shared lane again");

    // CLIENT LIST shows a Unix client as Redis does: the socket's path, `U`.
    let list = c.cmd(&["CLIENT", "LIST"]).await;
    let list = list.as_str().expect("CLIENT LIST text").to_string();
    let expected = format!("addr={}:0 laddr={}:0 ", path.display(), path.display());
    let unix_line = list
        .lines()
        .find(|l| l.contains(&expected))
        .unwrap_or_else(|| panic!("no {expected} in {list}"));
    assert!(unix_line.contains(" flags=U "), "{unix_line}");
    assert!(
        list.lines().any(|l| l.contains(" flags=N ")),
        "the TCP client: {list}"
    );

    // And Redis saw respool come in over its Unix socket.
    let upstream = redis.other_clients();
    let redis_sock = format!("addr={}:0", redis.unix_socket().display());
    assert!(
        !upstream.is_empty() && upstream.iter().all(|l| l.contains(&redis_sock)),
        "respool's upstream connections use the Unix socket: {upstream:?}"
    );

    drop(c);
    drop(tcp);
    proxy.shutdown().await;
    assert!(!path.exists(), "the socket file is removed at shutdown");
}

#[tokio::test]
async fn a_unix_upstream_url_carries_the_database_and_password() {
    let redis = RedisServer::builder()
        .password("s3cret")
        .unix_socket()
        .start();
    let url = format!(
        "redis+unix://{}?db=3&pass=s3cret",
        redis.unix_socket().display()
    );
    let proxy = TestProxy::start(&url, &["--requirepass", "front"]).await;
    let mut c = proxy.client().await;
    assert_eq!(c.cmd(&["AUTH", "front"]).await, ok());
    assert_eq!(c.cmd(&["SET", "in:db3", "1"]).await, ok());
    let mut direct = redis.direct().await;
    assert_eq!(direct.cmd(&["SELECT", "3"]).await, ok());
    assert_eq!(direct.cmd(&["GET", "in:db3"]).await, bulk("1"));
}

#[tokio::test]
async fn auth_passthrough_over_unix_sockets() {
    let redis = RedisServer::builder().unix_socket().start();
    let args: [&[u8]; 7] = [
        b"ACL",
        b"SETUSER",
        b"alice",
        b"on",
        b">alice-pw",
        b"~alice:*",
        b"+@all",
    ];
    let reply = redis.command(&args);
    assert_eq!(reply, ok());
    let (_dir, path) = socket_dir();
    let listen = unix_listen(&path);
    let proxy = TestProxy::start(&redis.unix_url(), &["--listen", &listen]).await;
    let mut c = TestClient::connect_unix(&path).await.expect("connect");
    assert_eq!(c.cmd(&["AUTH", "alice", "alice-pw"]).await, ok());
    assert_eq!(c.cmd(&["SET", "alice:k", "1"]).await, ok());
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]).await, bulk("alice"));
    c.cmd(&["SET", "bob:k", "1"])
        .await
        .expect_error_code("NOPERM");
    c.cmd(&["AUTH", "alice", "wrong"])
        .await
        .expect_error_code("WRONGPASS");
    drop(proxy);
}

#[tokio::test]
async fn stale_socket_files_are_replaced_live_ones_refused_or_taken_over() {
    let redis = RedisServer::start();
    let (dir, path) = socket_dir();
    let listen = unix_listen(&path);

    // A socket file left behind by a process that died.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let first = TestProxy::start(&redis.url(), &["--listen", &listen]).await;
    let mut c = TestClient::connect_unix(&path).await.expect("connect");
    assert_eq!(c.cmd(&["SET", "k", "first"]).await, ok());

    // A live one: refused, saying what to do.
    let e = TestProxy::try_start(&redis.url(), &["--listen", &listen])
        .await
        .err()
        .expect("a second respool on a live socket is refused");
    assert!(
        e.contains("running process") && e.contains("--unix-takeover"),
        "{e}"
    );
    assert_eq!(
        c.cmd(&["GET", "k"]).await,
        bulk("first"),
        "the live one is untouched"
    );

    // Taken over: new clients reach the new respool; the old one's clients
    // carry on until it stops, and its shutdown leaves the new file alone.
    let second = TestProxy::start(&redis.url(), &["--listen", &listen, "--unix-takeover"]).await;
    let mut d = TestClient::connect_unix(&path).await.expect("connect");
    let listed = d.cmd(&["CLIENT", "LIST"]).await;
    assert_eq!(
        listed.as_str().expect("text").lines().count(),
        1,
        "the new respool has only this client: {listed}"
    );
    assert_eq!(c.cmd(&["GET", "k"]).await, bulk("first"));
    drop(c);
    first.shutdown().await;
    assert!(
        path.exists(),
        "the old respool left the new socket in place"
    );
    let mut e = TestClient::connect_unix(&path)
        .await
        .expect("connect after the old one stopped");
    assert_eq!(e.cmd(&["GET", "k"]).await, bulk("first"));
    drop((d, e));
    second.shutdown().await;
    assert!(!path.exists());

    // Something that is not a socket is never replaced.
    std::fs::write(&path, b"not a socket").expect("write");
    let e = TestProxy::try_start(&redis.url(), &["--listen", &listen])
        .await
        .err()
        .expect("a regular file at the path is refused");
    assert!(e.contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&path).expect("read"), b"not a socket");
    drop(dir);
}

#[tokio::test]
async fn the_redis_crate_over_unix_sockets() {
    let redis = RedisServer::builder().unix_socket().start();
    let (_dir, path) = socket_dir();
    let listen = unix_listen(&path);
    let proxy = TestProxy::start(&redis.unix_url(), &["--listen", &listen]).await;
    let url = format!("redis+unix://{}", path.display());
    let outcome = tokio::task::spawn_blocking(move || -> redis::RedisResult<_> {
        use redis::Commands;
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_connection()?;
        let () = conn.set("crate:k", "v")?;
        let got: String = conn.get("crate:k")?;
        let (a, b): (i64, i64) = redis::pipe()
            .atomic()
            .incr("crate:n", 1)
            .incr("crate:n", 2)
            .query(&mut conn)?;
        let () = conn.rpush("crate:l", "x")?;
        let popped: Option<(String, String)> = conn.blpop("crate:l", 5.0)?;
        Ok((got, a, b, popped))
    })
    .await
    .expect("task");
    assert_eq!(
        outcome.expect("redis crate over the Unix socket"),
        ("v".to_string(), 1, 3, Some(("crate:l".into(), "x".into())))
    );
    drop(proxy);
}

/// redis-py through the Unix listener: `redis.Redis(unix_socket_path=…)`
/// and a `unix://` URL, plain commands, a transaction and a blocking pop.
#[tokio::test]
async fn redis_py_over_unix_sockets() {
    let redis = RedisServer::builder().unix_socket().start();
    let (_dir, path) = socket_dir();
    let listen = unix_listen(&path);
    let proxy = TestProxy::start(&redis.unix_url(), &["--listen", &listen]).await;
    let script = r#"
import sys
import redis
r = redis.Redis(unix_socket_path=sys.argv[1], socket_timeout=10)
print(r.set("py:k", "v"), r.get("py:k"))
p = r.pipeline(transaction=True)
p.incr("py:n"); p.incr("py:n")
print(p.execute())
r.rpush("py:l", "x")
print(r.blpop(["py:l"], timeout=5))
u = redis.Redis.from_url("unix://" + sys.argv[1] + "?db=0")
print(u.ping())
"#;
    let path_arg = path.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("python3")
            .args(["-", &path_arg])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 (with redis-py: python3 -m pip install redis)");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("script");
        child.wait_with_output().expect("python3 output")
    })
    .await
    .expect("task");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis-py failed: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "True b'v'\n[1, 2]\n(b'py:l', b'x')\nTrue\n"
    );
    drop(proxy);
}
