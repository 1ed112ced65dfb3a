//! HELLO and RESP3 through respool: HELLO is answered locally with the
//! upstream's version, a RESP3 client gets RESP3 replies on the shared lanes
//! and in pinned sessions alike, and HELLO 2 brings RESP2 back.

mod support;

use support::client::encode_command;
use support::{RedisServer, Reply, TestClient, TestProxy};

fn bulk(s: impl AsRef<[u8]>) -> Reply {
    Reply::Bulk(s.as_ref().to_vec())
}

fn simple(s: &str) -> Reply {
    Reply::Simple(s.into())
}

/// HELLO's fields as (name, value) pairs, from a RESP3 map or a RESP2 flat
/// array.
fn hello_fields(reply: &Reply) -> Vec<(String, Reply)> {
    match reply {
        Reply::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v.clone()))
            .collect(),
        Reply::Array(items) => items
            .chunks(2)
            .map(|kv| {
                (
                    kv[0].as_str().unwrap_or_default().to_string(),
                    kv[1].clone(),
                )
            })
            .collect(),
        other => panic!("HELLO answered {other}"),
    }
}

fn field(fields: &[(String, Reply)], name: &str) -> Reply {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("HELLO reply has no {name}: {fields:?}"))
}

/// HELLO's reply with the connection id taken out (it differs by design).
fn without_id(reply: &Reply) -> Vec<(String, Reply)> {
    let mut fields = hello_fields(reply);
    fields.retain(|(k, _)| k != "id");
    fields
}

async fn run(client: &mut TestClient, script: &[Vec<&str>]) -> Vec<Reply> {
    let mut replies = Vec::new();
    for command in script {
        replies.push(client.cmd(command).await);
    }
    replies
}

#[tokio::test]
async fn hello_3_switches_to_resp3_replies_and_hello_2_switches_back() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut client = proxy.client().await;
    let mut direct = redis.direct().await;
    // The version in HELLO's reply is learned when the first upstream
    // connection is validated; a PING waits for one. (A HELLO sent before
    // any validation answers version "unknown": see the report.)
    assert_eq!(client.cmd(&["PING"]).await, simple("PONG"));

    // HELLO is never an unknown command, with or without a version.
    let hello = client.cmd(&["HELLO"]).await;
    assert_eq!(field(&hello_fields(&hello), "proto"), Reply::Int(2));
    let hello3 = client.cmd(&["HELLO", "3"]).await;
    assert!(matches!(hello3, Reply::Map(_)), "HELLO 3 answered {hello3}");
    let direct_hello3 = direct.cmd(&["HELLO", "3"]).await;
    assert_eq!(without_id(&hello3), without_id(&direct_hello3));
    assert_eq!(field(&hello_fields(&hello3), "proto"), Reply::Int(3));
    assert_eq!(
        client.cmd(&["HELLO", "4"]).await,
        direct.cmd(&["HELLO", "4"]).await
    );

    let script: Vec<Vec<&str>> = vec![
        vec!["HSET", "h", "a", "1", "b", "2"],
        vec!["HGETALL", "h"],
        vec!["GET", "missing"],
        vec!["ZADD", "z", "1.5", "m"],
        vec!["ZSCORE", "z", "m"],
        vec!["ZRANGE", "z", "0", "-1", "WITHSCORES"],
        vec!["SADD", "s", "x"],
        vec!["SMEMBERS", "s"],
        vec!["LPOP", "missing"],
        vec!["EXISTS", "h"],
        // A pinned session of a RESP3 client speaks RESP3 too.
        vec!["MULTI"],
        vec!["HGETALL", "h"],
        vec!["GET", "missing"],
        vec!["EXEC"],
        vec!["SELECT", "1"],
        vec!["GET", "missing"],
        vec!["HGETALL", "h"],
        vec!["SELECT", "0"],
        vec!["HGETALL", "h"],
    ];
    let proxied = run(&mut client, &script).await;
    redis.command(&[b"FLUSHALL"]).expect_ok();
    let expected = run(&mut direct, &script).await;
    for (command, (got, want)) in script.iter().zip(proxied.iter().zip(&expected)) {
        assert_eq!(
            got, want,
            "{command:?}: the proxy's reply differs from Redis's"
        );
    }
    let map = Reply::Map(vec![(bulk("a"), bulk("1")), (bulk("b"), bulk("2"))]);
    assert_eq!(proxied[1], map);
    assert_eq!(proxied[2], Reply::Null);
    assert_eq!(proxied[4], Reply::Double("1.5".into()));
    assert_eq!(proxied[7], Reply::Set(vec![bulk("x")]));
    assert_eq!(proxied[13], Reply::Array(vec![map.clone(), Reply::Null]));
    assert_eq!(proxied[15], Reply::Null);

    // Back to RESP2, on the shared lanes and in sessions.
    let hello2 = client.cmd(&["HELLO", "2"]).await;
    assert!(
        matches!(hello2, Reply::Array(_)),
        "HELLO 2 answered {hello2}"
    );
    assert_eq!(field(&hello_fields(&hello2), "proto"), Reply::Int(2));
    let flat = Reply::Array(vec![bulk("a"), bulk("1"), bulk("b"), bulk("2")]);
    assert_eq!(client.cmd(&["HGETALL", "h"]).await, flat);
    assert_eq!(client.cmd(&["GET", "missing"]).await, Reply::Nil);
    client.cmd(&["MULTI"]).await.expect_ok();
    client.cmd(&["HGETALL", "h"]).await;
    assert_eq!(client.cmd(&["EXEC"]).await, Reply::Array(vec![flat]));
}

#[tokio::test]
async fn hello_in_a_pipeline_changes_the_protocol_exactly_where_it_stands() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut client = proxy.client().await;
    client.cmd(&["HSET", "h", "f", "v"]).await;

    let commands: Vec<Vec<&str>> = vec![
        vec!["HGETALL", "h"],
        vec!["GET", "missing"],
        vec!["HELLO", "3"],
        vec!["HGETALL", "h"],
        vec!["GET", "missing"],
        vec!["MULTI"],
        vec!["GET", "missing"],
        vec!["EXEC"],
        vec!["HELLO", "2"],
        vec!["GET", "missing"],
    ];
    let mut out = Vec::new();
    for command in &commands {
        out.extend(encode_command(command));
    }
    client.send_raw(&out).await.unwrap();
    let mut replies = Vec::new();
    for command in &commands {
        replies.push(
            client
                .read_reply()
                .await
                .unwrap_or_else(|e| panic!("{command:?}: {e}")),
        );
    }
    assert_eq!(replies[0], Reply::Array(vec![bulk("f"), bulk("v")]));
    assert_eq!(replies[1], Reply::Nil);
    assert!(matches!(replies[2], Reply::Map(_)), "{}", replies[2]);
    assert_eq!(replies[3], Reply::Map(vec![(bulk("f"), bulk("v"))]));
    assert_eq!(replies[4], Reply::Null);
    assert_eq!(replies[5], simple("OK"));
    assert_eq!(replies[6], simple("QUEUED"));
    assert_eq!(replies[7], Reply::Array(vec![Reply::Null]));
    assert!(matches!(replies[8], Reply::Array(_)), "{}", replies[8]);
    assert_eq!(replies[9], Reply::Nil);
}
