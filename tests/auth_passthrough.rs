//! AUTH passthrough (no `--requirepass`, no `--user`): a client's AUTH is
//! checked by the upstream, the reply is Redis's own, and the client's
//! commands then run as that user — its ACL key patterns and command
//! categories apply through respool as they do directly.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{wait, RedisServer, Reply, TestClient, TestProxy};

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

/// A Redis with two ACL users, each confined to keys of its own name.
fn redis_with_users() -> RedisServer {
    let redis = RedisServer::start();
    for (user, password) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
        let reply = redis.command(&[
            b"ACL",
            b"SETUSER",
            user.as_bytes(),
            b"on",
            format!(">{password}").as_bytes(),
            format!("~{user}:*").as_bytes(),
            b"+@all",
        ]);
        assert_eq!(reply, ok(), "ACL SETUSER {user}");
    }
    redis
}

/// The same commands directly and through respool give the same replies.
async fn same_replies(direct: &mut TestClient, proxied: &mut TestClient, commands: &[&[&str]]) {
    for command in commands {
        let want = direct.cmd(command).await;
        let got = proxied.cmd(command).await;
        assert_eq!(got, want, "{command:?}");
    }
}

#[tokio::test]
async fn acl_users_get_their_own_permissions_and_errors() {
    let redis = redis_with_users();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut direct = redis.direct().await;
    let mut proxied = proxy.client().await;
    same_replies(
        &mut direct,
        &mut proxied,
        &[
            &["AUTH", "alice", "alice-pw"],
            &["SET", "alice:k", "1"],
            &["SET", "bob:k", "1"],
            &["GET", "bob:k"],
            &["FLUSHALL"],
            &["ACL", "WHOAMI"],
            &["AUTH", "bob", "bob-pw"],
            &["SET", "bob:k", "2"],
            &["GET", "alice:k"],
            &["ACL", "WHOAMI"],
            // A wrong password leaves the client as it was (bob).
            &["AUTH", "alice", "wrong"],
            &["ACL", "WHOAMI"],
            &["GET", "bob:k"],
            // No password for the default user: Redis's own words.
            &["AUTH", "just-a-password"],
            &["AUTH", "nobody", "pw"],
            &["AUTH"],
        ],
    )
    .await;

    // Pipelined across a switch of users: what was sent before the AUTH
    // runs as the old user, what comes after as the new one.
    let mut direct = redis.direct().await;
    let mut proxied = proxy.client().await;
    let script: &[&[&str]] = &[
        &["AUTH", "alice", "alice-pw"],
        &["SET", "alice:p", "1"],
        &["AUTH", "bob", "bob-pw"],
        &["SET", "alice:p", "2"],
        &["SET", "bob:p", "3"],
        &["RESET"],
        &["GET", "alice:p"],
        &["HELLO", "3", "AUTH", "alice", "alice-pw"],
        &["GET", "alice:p"],
        &["GET", "bob:p"],
    ];
    for client in [&mut direct, &mut proxied] {
        let mut raw = Vec::new();
        for command in script {
            raw.extend(support::client::encode_command(command));
        }
        client.send_raw(&raw).await.expect("sent");
    }
    for command in script {
        let want = direct.read_reply().await.expect("direct reply");
        let got = proxied.read_reply().await.expect("proxied reply");
        if command[0] == "HELLO" {
            // The HELLO reply carries each connection's own id.
            assert!(
                matches!((&want, &got), (Reply::Map(_), Reply::Map(_))),
                "{want} / {got}"
            );
        } else {
            assert_eq!(got, want, "{command:?}");
        }
    }
    // alice's and bob's lanes stay; those of the refused logins close.
    wait_for_identities(&mut proxied, 2).await;
}

/// Waits until `INFO respool` counts `n` identities with lanes open.
async fn wait_for_identities(client: &mut TestClient, n: usize) {
    let what = format!("identities to come to {n}");
    wait::until_ok(&what, Duration::from_secs(20), async || {
        let counters = client.respool_counters().await;
        if counters["identities"] == n.to_string() {
            Ok(())
        } else {
            Err(format!("identities never came to {n}: {counters:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn redis_py_keeps_its_password_in_the_url() {
    let redis = RedisServer::builder().password("sekret").start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let url = |password: &str| format!("redis://:{password}@{}/0", proxy.addr());
    let script = r#"
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
print(r.ping())
r.set("py:pw", "v")
print(r.get("py:pw"))
try:
    redis.Redis.from_url(sys.argv[2]).ping()
    print("wrong password accepted")
except redis.exceptions.AuthenticationError as e:
    print("refused:", e)
"#;
    let out = python(script, &[url("sekret"), url("wrong")]);
    assert_eq!(
        out,
        "True\nb'v'\nrefused: invalid username-password pair or user is disabled.\n"
    );

    // The app's credentials are respool's own: it shares respool's lanes
    // (the wrong password's close once refused).
    let mut client = proxy.client().await;
    assert_eq!(client.cmd(&["AUTH", "sekret"]).await, ok());
    wait_for_identities(&mut client, 0).await;
    // A client that never authenticates uses respool's identity, as before.
    let mut anonymous = proxy.client().await;
    assert_eq!(anonymous.cmd(&["GET", "py:pw"]).await, bulk("v"));
}

#[tokio::test]
async fn a_changed_password_fails_that_identity_only() {
    let redis = redis_with_users();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut alice = proxy.client().await;
    assert_eq!(alice.cmd(&["AUTH", "alice", "alice-pw"]).await, ok());
    assert_eq!(alice.cmd(&["SET", "alice:k", "1"]).await, ok());
    let mut bob = proxy.client().await;
    assert_eq!(bob.cmd(&["AUTH", "bob", "bob-pw"]).await, ok());

    let reply = redis.command(&[b"ACL", b"SETUSER", b"alice", b"resetpass", b">new-pw"]);
    assert_eq!(reply, ok());
    // The old password is refused even though alice's lanes are open: the
    // AUTH itself goes to Redis.
    let mut late = proxy.client().await;
    late.cmd(&["AUTH", "alice", "alice-pw"])
        .await
        .expect_error_code("WRONGPASS");
    // The new one works, over lanes of its own.
    assert_eq!(late.cmd(&["AUTH", "alice", "new-pw"]).await, ok());
    assert_eq!(late.cmd(&["GET", "alice:k"]).await, bulk("1"));
    // bob is unaffected.
    assert_eq!(bob.cmd(&["SET", "bob:k", "2"]).await, ok());
}

#[tokio::test]
async fn config_set_requirepass_through_respool_and_back_leaves_it_serving() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut admin = proxy.client().await;
    assert_eq!(
        admin.cmd(&["CONFIG", "SET", "requirepass", "temp"]).await,
        ok()
    );
    // What Redis says to a login now, through respool too.
    let mut other = proxy.client().await;
    assert_eq!(other.cmd(&["AUTH", "temp"]).await, ok());
    assert_eq!(other.cmd(&["SET", "k", "v"]).await, ok());
    assert_eq!(other.cmd(&["CONFIG", "SET", "requirepass", ""]).await, ok());
    // respool's own lanes kept serving throughout.
    assert_eq!(admin.cmd(&["GET", "k"]).await, bulk("v"));
    let mut fresh = proxy.client().await;
    assert_eq!(fresh.cmd(&["GET", "k"]).await, bulk("v"));
}

#[tokio::test]
async fn identities_are_bounded_and_closed_when_unused() {
    let redis = redis_with_users();
    let proxy = TestProxy::start(
        &redis.url(),
        &["--max-identities", "1", "--identity-idle-timeout", "1s"],
    )
    .await;
    let mut alice = proxy.client().await;
    assert_eq!(alice.cmd(&["AUTH", "alice", "alice-pw"]).await, ok());
    // alice's lanes are in use: bob cannot have lanes of his own.
    let mut bob = proxy.client().await;
    let refused = bob.cmd(&["AUTH", "bob", "bob-pw"]).await;
    assert!(
        refused.to_string().contains("--max-identities"),
        "{refused}"
    );
    // Once alice has gone, bob's login makes room.
    drop(alice);
    wait::until_ok("bob to get lanes", Duration::from_secs(20), async || {
        let mut bob = proxy.client().await;
        let reply = bob.cmd(&["AUTH", "bob", "bob-pw"]).await;
        if reply == ok() {
            Ok(())
        } else {
            Err(format!("bob never got lanes: AUTH answered {reply}"))
        }
    })
    .await;
    // And unused lanes close after --identity-idle-timeout.
    let mut watcher = proxy.client().await;
    wait_for_identities(&mut watcher, 0).await;
}

/// Runs a python3 script (on stdin) with `args`; its stdout.
fn python(script: &str, args: &[String]) -> String {
    let mut child = Command::new("python3")
        .arg("-")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (and redis-py: python3 -m pip install redis)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script written");
    let out = child.wait_with_output().expect("python3 finished");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[tokio::test]
async fn a_login_on_a_pinned_session_carries_over_and_is_undone_on_release() {
    let redis = redis_with_users();
    let proxy = TestProxy::start(&redis.url(), &["--max-pinned", "1"]).await;
    let mut client = proxy.client().await;
    // WATCH pins a connection; the AUTH runs on it.
    assert_eq!(client.cmd(&["WATCH", "x"]).await, ok());
    assert_eq!(client.cmd(&["AUTH", "bob", "bob-pw"]).await, ok());
    assert_eq!(client.cmd(&["ACL", "WHOAMI"]).await, bulk("bob"));
    assert_eq!(client.cmd(&["SET", "bob:k", "1"]).await, ok());
    // The session ends; the client stays bob on shared lanes.
    assert_eq!(client.cmd(&["UNWATCH"]).await, ok());
    assert_eq!(client.cmd(&["ACL", "WHOAMI"]).await, bulk("bob"));
    client
        .cmd(&["GET", "alice:k"])
        .await
        .expect_error_code("NOPERM");
    // The one dedicated connection went back as respool's own identity:
    // another client pinned on it is not bob.
    let mut other = proxy.client().await;
    assert_eq!(other.cmd(&["WATCH", "y"]).await, ok());
    assert_eq!(other.cmd(&["ACL", "WHOAMI"]).await, bulk("default"));
    assert_eq!(other.cmd(&["GET", "alice:k"]).await, Reply::Nil);
}
