//! Client authentication to respool (`--requirepass`, `--user`) and
//! `--deny-command`: answered as Redis answers, enforced before anything
//! reaches the upstream, with the small pre-auth request limits Redis has.

mod support;

use support::client::encode_command;
use support::{FaultRelay, RedisServer, Reply, TestClient, TestProxy};

fn bulk(s: impl AsRef<[u8]>) -> Reply {
    Reply::Bulk(s.as_ref().to_vec())
}

fn simple(s: &str) -> Reply {
    Reply::Simple(s.into())
}

fn noauth() -> Reply {
    Reply::Error("NOAUTH Authentication required.".into())
}

fn wrongpass() -> Reply {
    Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
}

/// A proxy behind a relay: once warmed up, every byte the relay carries is a
/// client request.
async fn proxy_behind_relay(redis: &RedisServer, extra: &[&str]) -> (FaultRelay, TestProxy) {
    let relay = FaultRelay::start(redis.addr());
    let proxy = TestProxy::behind_relay(&relay, extra).await;
    (relay, proxy)
}

/// Connects, authenticates with `auth`, and makes sure the lane is up.
async fn warmed_up_client(proxy: &TestProxy, auth: &[&str]) -> TestClient {
    let mut client = proxy.client().await;
    client.cmd(auth).await.expect_ok();
    assert_eq!(client.cmd(&["PING"]).await, simple("PONG"));
    client
}

#[tokio::test]
async fn requirepass_refuses_everything_before_auth_and_forwards_nothing() {
    let redis = RedisServer::start();
    let (relay, proxy) = proxy_behind_relay(&redis, &["--requirepass", "s3cret"]).await;
    let mut warm = warmed_up_client(&proxy, &["AUTH", "s3cret"]).await;
    warm.cmd(&["SET", "k", "v"]).await.expect_ok();
    let before = relay.bytes_to_upstream();

    let mut client = proxy.client().await;
    for command in [
        vec!["GET", "k"],
        vec!["PING"],
        vec!["SELECT", "1"],
        vec!["MULTI"],
        vec!["SUBSCRIBE", "ch"],
        vec!["CLIENT", "ID"],
        vec!["SET", "a", "1", "b", "2", "c", "3", "d", "4"], // 10 arguments: allowed size
    ] {
        assert_eq!(
            client.cmd(&command).await,
            noauth(),
            "{command:?} before AUTH"
        );
    }
    // As Redis words a refused EXEC.
    assert_eq!(
        client.cmd(&["EXEC"]).await,
        Reply::Error(
            "EXECABORT Transaction discarded because of: NOAUTH Authentication required.".into()
        )
    );
    assert_eq!(client.cmd(&["AUTH", "wrong"]).await, wrongpass());
    assert_eq!(client.cmd(&["AUTH", "default", "wrong"]).await, wrongpass());
    assert_eq!(client.cmd(&["AUTH", "nobody", "s3cret"]).await, wrongpass());
    let hello = client.cmd(&["HELLO", "3"]).await;
    hello.expect_error_code("NOAUTH");
    assert_eq!(
        client
            .cmd(&["HELLO", "3", "AUTH", "default", "wrong"])
            .await,
        wrongpass()
    );
    assert_eq!(
        relay.bytes_to_upstream(),
        before,
        "something was forwarded upstream before the client authenticated"
    );

    client.cmd(&["AUTH", "s3cret"]).await.expect_ok();
    assert_eq!(client.cmd(&["GET", "k"]).await, bulk("v"));
    assert!(relay.bytes_to_upstream() > before);
    // After authenticating, big requests are fine.
    let big = "x".repeat(100 * 1024);
    client.cmd(&["SET", "big", &big]).await.expect_ok();
    assert_eq!(
        client.cmd(&["STRLEN", "big"]).await,
        Reply::Int(big.len() as i64)
    );

    // RESET logs the client out again.
    assert_eq!(client.cmd(&["RESET"]).await, simple("RESET"));
    assert_eq!(client.cmd(&["GET", "k"]).await, noauth());
    client.cmd(&["AUTH", "default", "s3cret"]).await.expect_ok();
    assert_eq!(client.cmd(&["GET", "k"]).await, bulk("v"));
}

#[tokio::test]
async fn named_users_authenticate_with_auth_and_hello() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(
        &redis.url(),
        &["--user", "alice:wonder", "--user", "bob:builder"],
    )
    .await;

    let mut alice = proxy.client().await;
    assert_eq!(alice.cmd(&["GET", "k"]).await, noauth());
    assert_eq!(alice.cmd(&["AUTH", "alice", "builder"]).await, wrongpass());
    assert_eq!(alice.cmd(&["AUTH", "default", "wonder"]).await, wrongpass());
    alice.cmd(&["AUTH", "alice", "wonder"]).await.expect_ok();
    alice.cmd(&["SET", "k", "alice"]).await.expect_ok();

    // HELLO 3 AUTH authenticates and switches to RESP3 in one go.
    let mut bob = proxy.client().await;
    let hello = bob
        .cmd(&[
            "HELLO", "3", "AUTH", "bob", "builder", "SETNAME", "bobs-app",
        ])
        .await;
    let Reply::Map(fields) = &hello else {
        panic!("HELLO 3 AUTH answered {hello}");
    };
    assert!(
        fields.contains(&(bulk("proto"), Reply::Int(3))),
        "HELLO 3 AUTH: {hello}"
    );
    assert_eq!(bob.cmd(&["GET", "k"]).await, bulk("alice"));
    assert_eq!(bob.cmd(&["GET", "missing"]).await, Reply::Null);
    assert_eq!(bob.cmd(&["CLIENT", "GETNAME"]).await, bulk("bobs-app"));
    // Authenticated clients can use sessions.
    bob.cmd(&["MULTI"]).await.expect_ok();
    assert_eq!(bob.cmd(&["GET", "k"]).await, simple("QUEUED"));
    assert_eq!(bob.cmd(&["EXEC"]).await, Reply::Array(vec![bulk("alice")]));
}

#[tokio::test]
async fn oversized_requests_before_auth_close_the_connection_unforwarded() {
    let redis = RedisServer::start();
    let (relay, proxy) = proxy_behind_relay(&redis, &["--requirepass", "pw"]).await;
    let _warm = warmed_up_client(&proxy, &["AUTH", "pw"]).await;
    let before = relay.bytes_to_upstream();

    // Eleven arguments: more than Redis accepts from an unauthenticated client.
    let mut client = proxy.client().await;
    let eleven: Vec<String> = std::iter::once("MSET".to_string())
        .chain((0..10).map(|i| format!("a{i}")))
        .collect();
    assert_eq!(
        client.cmd(&eleven).await,
        Reply::Error("ERR Protocol error: unauthenticated multibulk length".into())
    );
    let after = client.read_reply().await;
    assert!(
        matches!(&after, Err(e) if e.is_closed()),
        "the connection must close after the protocol error, got {after:?}"
    );

    // A bulk string over 16 KiB.
    let mut client = proxy.client().await;
    let big = "p".repeat(16 * 1024 + 1);
    assert_eq!(
        client.cmd(&["AUTH", big.as_str()]).await,
        Reply::Error("ERR Protocol error: unauthenticated bulk length".into())
    );
    let after = client.read_reply().await;
    assert!(
        matches!(&after, Err(e) if e.is_closed()),
        "the connection must close after the protocol error, got {after:?}"
    );
    assert_eq!(
        relay.bytes_to_upstream(),
        before,
        "pre-auth bytes went upstream"
    );

    // Others are unaffected.
    let mut other = proxy.client().await;
    other.cmd(&["AUTH", "pw"]).await.expect_ok();
    other.cmd(&eleven).await.expect_ok();
}

#[tokio::test]
async fn denied_commands_are_refused_without_a_byte_upstream() {
    let redis = RedisServer::start();
    let (relay, proxy) = proxy_behind_relay(
        &redis,
        &["--deny-command", "FLUSHALL", "--deny-command", "CONFIG|SET"],
    )
    .await;
    let mut client = proxy.client().await;
    client.cmd(&["SET", "k", "v"]).await.expect_ok();

    let before = relay.bytes_to_upstream();
    for (command, name) in [
        (vec!["FLUSHALL"], "FLUSHALL"),
        (vec!["flushall", "ASYNC"], "FLUSHALL"),
        (vec!["CONFIG", "SET", "maxmemory", "1"], "CONFIG"),
        (vec!["config", "set", "maxmemory", "1"], "CONFIG"),
    ] {
        assert_eq!(
            client.cmd(&command).await,
            Reply::Error(format!("ERR command '{name}' is disabled on this proxy")),
            "{command:?}"
        );
    }
    assert_eq!(
        relay.bytes_to_upstream(),
        before,
        "a denied command went upstream"
    );

    // Other subcommands still go through, and nothing was flushed.
    let config_get = ["CONFIG", "GET", "maxmemory"];
    let reply = client.cmd(&config_get).await;
    assert_eq!(reply, Reply::Array(vec![bulk("maxmemory"), bulk("0")]));
    assert_eq!(
        relay.bytes_to_upstream() - before,
        encode_command(&config_get).len() as u64
    );
    assert_eq!(client.cmd(&["GET", "k"]).await, bulk("v"));
    assert_eq!(
        redis.command(&[b"CONFIG".as_slice(), b"GET", b"maxmemory"]),
        Reply::Array(vec![bulk("maxmemory"), bulk("0")])
    );
}

/// Redis fails a whole transaction when it refused to queue one of its
/// commands; a command respool refuses inside MULTI does the same: EXEC
/// answers EXECABORT and nothing of the transaction runs.
#[tokio::test]
async fn a_denied_command_inside_multi_aborts_the_transaction() {
    let redis = RedisServer::start();
    let (_relay, proxy) = proxy_behind_relay(&redis, &["--deny-command", "FLUSHALL"]).await;
    let mut client = proxy.client().await;
    client.cmd(&["SET", "k", "before"]).await.expect_ok();

    client.cmd(&["MULTI"]).await.expect_ok();
    assert_eq!(
        client.cmd(&["SET", "k", "inside"]).await,
        Reply::Simple("QUEUED".into())
    );
    assert_eq!(
        client.cmd(&["FLUSHALL"]).await,
        Reply::Error("ERR command 'FLUSHALL' is disabled on this proxy".into())
    );
    assert_eq!(
        client.cmd(&["EXEC"]).await,
        Reply::Error("EXECABORT Transaction discarded because of previous errors.".into())
    );
    // Nothing ran, and the client is out of the transaction.
    assert_eq!(client.cmd(&["GET", "k"]).await, bulk("before"));
    assert_eq!(redis.command(&[b"GET".as_slice(), b"k"]), bulk("before"));
    assert_eq!(
        client.cmd(&["EXEC"]).await,
        Reply::Error("ERR EXEC without MULTI".into())
    );

    // A transaction after it runs normally.
    client.cmd(&["MULTI"]).await.expect_ok();
    assert_eq!(
        client.cmd(&["SET", "k", "after"]).await,
        Reply::Simple("QUEUED".into())
    );
    assert_eq!(
        client.cmd(&["EXEC"]).await,
        Reply::Array(vec![Reply::Simple("OK".into())])
    );
    assert_eq!(client.cmd(&["GET", "k"]).await, bulk("after"));
}
