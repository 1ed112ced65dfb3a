//! The proxy in normal operation: replies identical to Redis's own, local and
//! refused commands that never reach the upstream, large values, many
//! concurrent clients, deep pipelines, per-client ordering, client limits
//! and protocol errors (DESIGN.md invariants 1, 2 and 4).

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::client::encode_command;
use support::{counter, wait, FaultRelay, RedisServer, RelayMode, Reply, TestClient, TestProxy};

fn bulk(s: impl AsRef<[u8]>) -> Reply {
    Reply::Bulk(s.as_ref().to_vec())
}

fn simple(s: &str) -> Reply {
    Reply::Simple(s.into())
}

/// Sends `commands` in one write and reads one reply per command.
async fn pipeline(client: &mut TestClient, commands: &[Vec<Vec<u8>>]) -> Vec<Reply> {
    let mut out = Vec::new();
    for command in commands {
        out.extend(encode_command(command));
    }
    client
        .send_raw(&out)
        .await
        .unwrap_or_else(|e| panic!("writing a pipeline of {}: {e}", commands.len()));
    let mut replies = Vec::with_capacity(commands.len());
    for i in 0..commands.len() {
        match client.read_reply().await {
            Ok(reply) => replies.push(reply),
            Err(e) => panic!("reply {i} of a pipeline of {}: {e}", commands.len()),
        }
    }
    replies
}

fn args(parts: &[&str]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.as_bytes().to_vec()).collect()
}

#[tokio::test]
async fn commands_get_the_same_replies_as_from_redis_directly() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let binary = "a\r\nb\0c$3\r\n*1\r\n";
    let script: Vec<Vec<&str>> = vec![
        vec!["PING"],
        vec!["PING", "hello"],
        vec!["ECHO", "echo me"],
        vec!["ECHO", ""],
        vec!["SET", "s", "v1"],
        vec!["GET", "s"],
        vec!["GET", "missing"],
        vec!["SET", "s", "v2", "NX"],
        vec!["SET", "s", "v3", "XX", "GET"],
        vec!["SET", "bin", binary],
        vec!["GET", "bin"],
        vec!["SET", "empty", ""],
        vec!["GET", "empty"],
        vec!["APPEND", "s", "-tail"],
        vec!["STRLEN", "s"],
        vec!["GETRANGE", "s", "1", "4"],
        vec!["INCR", "n"],
        vec!["INCRBY", "n", "41"],
        vec!["DECR", "n"],
        vec!["INCRBYFLOAT", "f", "1.5"],
        vec!["INCR", "s"],
        vec!["MSET", "m1", "a", "m2", "b"],
        vec!["MGET", "m1", "missing", "m2", "bin"],
        vec!["EXISTS", "m1", "m2", "missing"],
        vec!["DEL", "m1", "missing"],
        vec!["HSET", "h", "f1", "x", "f2", "y"],
        vec!["HGET", "h", "f2"],
        vec!["HGETALL", "h"],
        vec!["HINCRBY", "h", "n", "5"],
        vec!["HLEN", "h"],
        vec!["LPUSH", "l", "c", "b", "a"],
        vec!["RPUSH", "l", "d"],
        vec!["LRANGE", "l", "0", "-1"],
        vec!["LPOP", "l"],
        vec!["LLEN", "l"],
        vec!["SADD", "set", "x", "y", "x"],
        vec!["SCARD", "set"],
        vec!["SISMEMBER", "set", "y"],
        vec!["ZADD", "z", "1", "one", "2.5", "two"],
        vec!["ZRANGE", "z", "0", "-1", "WITHSCORES"],
        vec!["ZSCORE", "z", "two"],
        vec!["TYPE", "z"],
        vec!["LPUSH", "s", "wrong type"],
        vec!["EXPIRE", "s", "1000"],
        vec!["PERSIST", "s"],
        vec!["TTL", "s"],
        vec!["GET"],
        vec!["NOSUCHCOMMAND", "arg1", "arg2"],
        vec![
            "DEL", "s", "bin", "empty", "n", "f", "m2", "h", "l", "set", "z",
        ],
    ];

    let mut via_proxy = proxy.client().await;
    let mut proxied = Vec::new();
    for command in &script {
        proxied.push(via_proxy.cmd(command).await);
    }

    // The same script straight to Redis, on the now empty keyspace.
    let mut direct = redis.direct().await;
    for (command, proxied) in script.iter().zip(&proxied) {
        let expected = direct.cmd(command).await;
        assert_eq!(
            proxied, &expected,
            "{command:?}: the proxy's reply differs from Redis's"
        );
    }

    // Spot checks, so that a proxy and a Redis that were both broken the
    // same way could not pass.
    assert_eq!(proxied[1], bulk("hello"));
    assert_eq!(proxied[10], bulk(binary));
    assert_eq!(
        proxied[22],
        Reply::Array(vec![bulk("a"), Reply::Nil, bulk("b"), bulk(binary)])
    );
    proxied[42].expect_error_code("WRONGTYPE");
    assert_eq!(
        proxied[47],
        Reply::Error(
            "ERR unknown command 'NOSUCHCOMMAND', with args beginning with: 'arg1' 'arg2' ".into()
        )
    );
}

#[tokio::test]
async fn local_and_denied_commands_never_reach_the_upstream() {
    let redis = RedisServer::start();
    let relay = FaultRelay::start(redis.addr());
    // One lane, no spare connection and no health checks: once the lane is
    // connected, every byte the relay carries to Redis is a client request.
    let proxy = TestProxy::behind_relay(&relay, &[]).await;
    let mut client = proxy.client().await;

    // PING and ECHO go upstream: exactly their bytes cross the relay.
    assert_eq!(client.cmd(&["PING"]).await, simple("PONG"));
    for command in [vec!["PING"], vec!["ECHO", "through"]] {
        let before = relay.bytes_to_upstream();
        let reply = client.cmd(&command).await;
        assert!(!reply.is_error(), "{command:?} answered {reply}");
        assert_eq!(
            relay.bytes_to_upstream() - before,
            encode_command(&command).len() as u64,
            "{command:?} did not go upstream as it was sent"
        );
    }

    // Without a transaction or WATCH there is nothing to end: answered as
    // Redis answers them, without a dedicated connection.
    let stateless_endings: Vec<(Vec<&str>, Reply)> = vec![
        (vec!["exec"], Reply::Error("ERR EXEC without MULTI".into())),
        (
            vec!["DISCARD"],
            Reply::Error("ERR DISCARD without MULTI".into()),
        ),
        (vec!["UNWATCH"], simple("OK")),
    ];
    let denied: Vec<(Vec<&str>, &str)> = vec![
        (vec!["SHUTDOWN", "NOSAVE"], "SHUTDOWN"),
        (vec!["SYNC"], "SYNC"),
        (vec!["PSYNC", "?", "-1"], "PSYNC"),
        (vec!["REPLCONF", "listening-port", "1"], "REPLCONF"),
        (vec!["DEBUG", "SLEEP", "10"], "DEBUG"),
    ];
    let local: Vec<(Vec<&str>, Reply)> = vec![
        (vec!["SELECT", "0"], simple("OK")),
        (vec!["CLIENT", "SETINFO", "LIB-NAME", "itest"], simple("OK")),
        (vec!["RESET"], simple("RESET")),
        (vec!["CLIENT", "SETNAME", "me"], simple("OK")),
        (vec!["CLIENT", "GETNAME"], Reply::Bulk(b"me".to_vec())),
        // respool's clients are not Redis's: these act on respool's.
        (
            vec!["CLIENT", "KILL", "127.0.0.1:1"],
            Reply::Error("ERR No such client".into()),
        ),
        (vec!["CLIENT", "KILL", "ID", "999999"], Reply::Int(0)),
        (vec!["CLIENT", "UNBLOCK", "999999"], Reply::Int(0)),
        (vec!["CLIENT", "PAUSE", "0"], simple("OK")),
        (vec!["CLIENT", "UNPAUSE"], simple("OK")),
    ];

    let before = relay.bytes_to_upstream();
    for (command, expected) in &stateless_endings {
        assert_eq!(&client.cmd(command).await, expected, "{command:?}");
    }
    for (command, name) in &denied {
        assert_eq!(
            client.cmd(command).await,
            Reply::Error(format!("ERR command '{name}' is disabled on this proxy")),
            "{command:?}"
        );
    }
    for (command, expected) in &local {
        assert_eq!(&client.cmd(command).await, expected, "{command:?}");
    }
    let hello = client.cmd(&["HELLO", "2"]).await;
    assert!(matches!(hello, Reply::Array(_)), "HELLO 2 answered {hello}");

    // A PING behind them all is the only thing that went upstream: had any
    // of them been forwarded (now or later), the count would be larger.
    assert_eq!(client.cmd(&["PING"]).await, simple("PONG"));
    assert_eq!(
        relay.bytes_to_upstream() - before,
        encode_command(&["PING"]).len() as u64,
        "a local, refused or denied command reached the upstream"
    );
    // And Redis is still up (SHUTDOWN, DEBUG SLEEP, CLIENT PAUSE never ran).
    assert!(redis.is_running());
    assert_eq!(redis.command(&[b"PING"]), simple("PONG"));
}

#[tokio::test]
async fn quit_replies_ok_and_closes_the_connection() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut client = proxy.client().await;
    client.cmd(&["SET", "q", "1"]).await.expect_ok();

    // Requests pipelined after QUIT are not executed.
    let mut out = encode_command(&["QUIT"]);
    out.extend(encode_command(&["SET", "q", "2"]));
    client.send_raw(&out).await.expect("write QUIT");
    assert_eq!(client.read_reply().await.expect("QUIT reply"), simple("OK"));
    match client.read_reply().await {
        Err(e) if e.is_closed() => {}
        other => panic!("expected the connection to close after QUIT, got {other:?}"),
    }
    assert_eq!(redis.command(&[b"GET", b"q"]), bulk("1"));

    // The proxy itself carries on.
    let mut other = proxy.client().await;
    assert_eq!(other.cmd(&["GET", "q"]).await, bulk("1"));
}

#[tokio::test]
async fn large_values_round_trip_byte_exact() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &["--timeout", "30s"]).await;
    let mut client = proxy.client().await;
    client.set_read_timeout(Duration::from_secs(60));

    for (key, len, seed) in [("one-mib", 1 << 20, 7), ("sixty-four-mib", 64 << 20, 11)] {
        let value = support::pattern(len, seed);
        client
            .cmd(&[b"SET".as_slice(), key.as_bytes(), &value])
            .await
            .expect_ok();
        assert_eq!(
            redis.command(&[b"STRLEN", key.as_bytes()]),
            Reply::Int(len as i64),
            "{key}: Redis holds a value of the wrong length"
        );
        let got = client.cmd(&["GET", key]).await;
        let Reply::Bulk(got) = got else {
            panic!("{key}: GET answered {got}");
        };
        assert_eq!(got.len(), value.len(), "{key}: wrong length back");
        assert!(got == value, "{key}: the value came back altered");
        // The connection is still in step after the big reply.
        assert_eq!(client.cmd(&["ECHO", key]).await, bulk(key));
    }
}

#[tokio::test]
async fn concurrent_clients_each_get_their_own_replies() {
    const CLIENTS: usize = 120;
    const ROUNDS: usize = 75; // 4 requests each: 300 requests per client
    let redis = RedisServer::start();
    let proxy = Arc::new(TestProxy::start(&redis.url(), &["--max-connections", "3"]).await);

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let proxy = Arc::clone(&proxy);
        tasks.push(tokio::spawn(async move {
            let mut client = proxy.client().await;
            let mut mismatches = Vec::new();
            for n in 0..ROUNDS {
                let key = format!("k:{c}:{n}");
                let value = format!("v:{c}:{n}:{}", "x".repeat(n % 7 * 10));
                let token = format!("echo:{c}:{n}");
                let commands = vec![
                    args(&["SET", &key, &value]),
                    args(&["INCR", &format!("counter:{c}")]),
                    args(&["GET", &key]),
                    args(&["ECHO", &token]),
                ];
                // Alternate pipelined rounds and one-at-a-time rounds.
                let replies = if n % 2 == 0 {
                    pipeline(&mut client, &commands).await
                } else {
                    let mut replies = Vec::new();
                    for command in &commands {
                        replies.push(client.cmd(command).await);
                    }
                    replies
                };
                let expected = [
                    simple("OK"),
                    Reply::Int(n as i64 + 1),
                    bulk(&value),
                    bulk(&token),
                ];
                for (i, (got, want)) in replies.iter().zip(&expected).enumerate() {
                    if got != want {
                        mismatches.push(format!(
                            "client {c} round {n} request {i}: got {got}, want {want}"
                        ));
                    }
                }
            }
            mismatches
        }));
    }
    let mut mismatches = Vec::new();
    for task in tasks {
        mismatches.extend(task.await.expect("client task panicked"));
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatched replies, first ones: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
    // Every INCR ran exactly once.
    for c in [0, CLIENTS / 2, CLIENTS - 1] {
        assert_eq!(
            redis.command(&[b"GET", format!("counter:{c}").as_bytes()]),
            bulk(ROUNDS.to_string())
        );
    }
}

#[tokio::test]
async fn ten_thousand_pipelined_commands_get_ten_thousand_replies_in_order() {
    const N: usize = 10_000;
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut client = proxy.client().await;

    // INCR and ECHO interleaved, all in one write: INCR must count 1..=N and
    // each ECHO must return its own token, in order.
    let mut out = Vec::new();
    for i in 0..N {
        out.extend(encode_command(&["INCR", "seq"]));
        out.extend(encode_command(&["ECHO", &format!("token-{i}")]));
    }
    client.send_raw(&out).await.expect("writing the pipeline");
    for i in 0..N {
        let incr = client
            .read_reply()
            .await
            .unwrap_or_else(|e| panic!("INCR reply {i}: {e}"));
        assert_eq!(incr, Reply::Int(i as i64 + 1), "INCR reply {i}");
        let echo = client
            .read_reply()
            .await
            .unwrap_or_else(|e| panic!("ECHO reply {i}: {e}"));
        assert_eq!(echo, bulk(format!("token-{i}")), "ECHO reply {i}");
    }
    assert_eq!(client.cmd(&["GET", "seq"]).await, bulk(N.to_string()));
}

/// A pipeline already read in full, from a client at its in-flight limit,
/// is decoded as replies free room — even though no more bytes will arrive
/// to wake the proxy. (With `--max-pending-per-client 1` every request
/// fills the limit; the proxy once waited for the socket after each reply
/// and hung after the first. The 10 000-request test above caught it about
/// one run in twenty.)
#[tokio::test]
async fn a_pipeline_read_in_full_is_served_past_the_in_flight_limit() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &["--max-pending-per-client", "1"]).await;
    let mut client = proxy.client().await;
    let out: Vec<u8> = (0..50)
        .flat_map(|i| encode_command(&["ECHO", &format!("e{i}")]))
        .collect();
    client.send_raw(&out).await.expect("writing the pipeline");
    for i in 0..50 {
        let reply = client
            .read_reply()
            .await
            .unwrap_or_else(|e| panic!("reply {i}: {e}"));
        assert_eq!(reply, bulk(format!("e{i}")), "reply {i}");
    }
}

#[tokio::test]
async fn a_client_reads_its_own_writes_in_a_pipeline() {
    let redis = RedisServer::start();
    // Several lanes, so that ordering cannot come from there being only one.
    let proxy = TestProxy::start(&redis.url(), &["--max-connections", "4"]).await;
    let mut client = proxy.client().await;

    let mut commands = Vec::new();
    let mut expected = Vec::new();
    for i in 0..1000 {
        let value = format!("value-{i}");
        commands.push(args(&["SET", "shared-key", &value]));
        expected.push(simple("OK"));
        commands.push(args(&["GET", "shared-key"]));
        expected.push(bulk(&value));
        commands.push(args(&["APPEND", "log", &format!("{i},")]));
        expected.push(Reply::Int(
            (0..=i).map(|j| format!("{j},").len()).sum::<usize>() as i64,
        ));
        if i % 100 == 99 {
            commands.push(args(&["DEL", "shared-key"]));
            expected.push(Reply::Int(1));
            commands.push(args(&["GET", "shared-key"]));
            expected.push(Reply::Nil);
        }
    }
    let replies = pipeline(&mut client, &commands).await;
    for (i, (got, want)) in replies.iter().zip(&expected).enumerate() {
        assert_eq!(
            got,
            want,
            "reply {i} to {:?}",
            String::from_utf8_lossy(&commands[i].concat())
        );
    }
}

#[tokio::test]
async fn max_clients_refuses_the_next_client_with_an_error() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &["--max-clients", "2"]).await;
    let mut first = proxy.client().await;
    let mut second = proxy.client().await;
    // Both are accepted and counted once they have been answered.
    assert_eq!(first.cmd(&["PING"]).await, simple("PONG"));
    assert_eq!(second.cmd(&["PING"]).await, simple("PONG"));

    let mut third = proxy.client().await;
    assert_eq!(
        third.read_reply().await.expect("the refusal"),
        Reply::Error("ERR max number of clients reached".into())
    );
    match third.read_reply().await {
        Err(e) if e.is_closed() => {}
        other => panic!("expected the refused connection to close, got {other:?}"),
    }
    // The accepted clients are unaffected.
    assert_eq!(first.cmd(&["ECHO", "1"]).await, bulk("1"));

    // A slot frees up once a client leaves (its task ends asynchronously,
    // so poll until a newcomer gets in).
    drop(first);
    wait::until_ok(
        "a client slot to free up after a client left",
        Duration::from_secs(20),
        async || {
            let mut newcomer = proxy.client().await;
            match newcomer.try_cmd(&["PING"]).await {
                Ok(reply) if reply == simple("PONG") => Ok(()),
                Ok(Reply::Error(e)) if e == "ERR max number of clients reached" => Err(e),
                Err(e) if e.is_closed() => Err("a newcomer's connection was closed".into()),
                other => panic!("unexpected answer to a newcomer: {other:?}"),
            }
        },
    )
    .await;
    assert_eq!(second.cmd(&["ECHO", "2"]).await, bulk("2"));
}

#[tokio::test]
async fn a_protocol_error_closes_only_that_client() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut bystander = proxy.client().await;
    bystander.cmd(&["SET", "b", "1"]).await.expect_ok();
    // A request half-sent by the bystander must survive too.
    bystander
        .send_raw(b"*2\r\n$3\r\nGET\r\n$1\r\nb\r")
        .await
        .expect("half a request");

    let mut offender = proxy.client().await;
    assert_eq!(offender.cmd(&["PING"]).await, simple("PONG"));
    offender.send_raw(b"*1\r\n*1\r\n").await.expect("bad bytes");
    assert_eq!(
        offender.read_reply().await.expect("the protocol error"),
        Reply::Error("ERR Protocol error: expected '$', got '*'".into())
    );
    match offender.read_reply().await {
        Err(e) if e.is_closed() => {}
        other => panic!("expected the connection to close after a protocol error, got {other:?}"),
    }

    // Other garbage: each costs only its own connection, never the process.
    let garbage: [&[u8]; 4] = [
        b"*2\r\n$3\r\nGET\r\n$-5\r\n",
        b"*1\r\n$3\r\nGETX\r\n",
        b"*99999999999999999999\r\n",
        b"*2\r\n$3\r\nGET\r\n:1\r\n",
    ];
    for bytes in garbage {
        let mut bad = proxy.client().await;
        bad.send_raw(bytes).await.expect("garbage");
        // Whatever the answer, the connection must end (error then close).
        let mut closed = false;
        for _ in 0..3 {
            match bad.read_reply().await {
                Ok(Reply::Error(_)) => {}
                Ok(other) => panic!("{bytes:?} answered {other}"),
                Err(e) if e.is_closed() => {
                    closed = true;
                    break;
                }
                Err(e) => panic!("{bytes:?}: {e}"),
            }
        }
        assert!(closed, "{bytes:?} did not close the connection");
    }

    bystander
        .send_raw(b"\n")
        .await
        .expect("rest of the request");
    assert_eq!(bystander.read_reply().await.expect("GET b"), bulk("1"));
    let mut newcomer = proxy.client().await;
    assert_eq!(newcomer.cmd(&["GET", "b"]).await, bulk("1"));
}

/// Requests for the shared lane travel as one run while they follow each
/// other in the client's input; anything else in the same read — an inline
/// command, an empty line, `*0`, a command respool answers itself, a refused
/// one, and finally a protocol error — ends the run there. Every request
/// before the bad bytes is answered, in order, before the error.
#[tokio::test]
async fn a_pipeline_mixing_inline_local_and_empty_commands_is_answered_in_order() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &["--deny-command", "FLUSHALL"]).await;
    let mut client = proxy.client().await;
    let mut input = Vec::new();
    input.extend(encode_command(&["SET", "mix", "1"]));
    input.extend(encode_command(&["INCR", "mix"]));
    input.extend(b"INCR mix\r\n");
    input.extend(b"\r\n");
    input.extend(encode_command(&["INCR", "mix"]));
    input.extend(b"*0\r\n");
    input.extend(encode_command(&["GET", "mix"]));
    input.extend(encode_command(&["CLIENT", "GETNAME"]));
    input.extend(encode_command(&["INCR", "mix"]));
    input.extend(encode_command(&["FLUSHALL"]));
    input.extend(encode_command(&["INCR", "mix"]));
    input.extend(b"ECHO inline\r\n");
    input.extend(encode_command(&["INCR", "mix"]));
    input.extend(b"*1\r\n*1\r\n");
    client.send_raw(&input).await.expect("the pipeline");
    let mut replies = Vec::new();
    for i in 0..12 {
        replies.push(
            client
                .read_reply()
                .await
                .unwrap_or_else(|e| panic!("reply {i}: {e}")),
        );
    }
    assert_eq!(
        replies,
        vec![
            simple("OK"),
            Reply::Int(2),
            Reply::Int(3),
            Reply::Int(4),
            bulk("4"),
            Reply::Nil,
            Reply::Int(5),
            Reply::Error("ERR command 'FLUSHALL' is disabled on this proxy".into()),
            Reply::Int(6),
            bulk("inline"),
            Reply::Int(7),
            Reply::Error("ERR Protocol error: expected '$', got '*'".into()),
        ]
    );
    match client.read_reply().await {
        Err(e) if e.is_closed() => {}
        other => panic!("expected the connection to close after a protocol error, got {other:?}"),
    }
    let mut check = proxy.client().await;
    assert_eq!(check.cmd(&["GET", "mix"]).await, bulk("7"));
}

/// With `--batch-writes` (the default), requests that arrive while the lane's
/// previous write is unanswered wait in respool and then leave together in
/// one write; with `off`, each goes out as it arrives. Either way every
/// client gets its own reply.
#[tokio::test]
async fn requests_behind_an_unanswered_write_leave_together() {
    const CLIENTS: usize = 20;
    const HELD: Duration = Duration::from_secs(2);
    let redis = RedisServer::start();
    for (batch_writes, expect_held) in [("on", true), ("off", false)] {
        let relay = FaultRelay::start(redis.addr());
        let proxy =
            TestProxy::behind_relay(&relay, &["--threads", "1", "--batch-writes", batch_writes])
                .await;
        let mut first = proxy.client().await;
        first.cmd(&["SET", "k", "v"]).await.expect_ok();
        let mut others = Vec::new();
        for _ in 0..CLIENTS {
            others.push(proxy.client().await);
        }

        // The lane's next write waits for its reply for HELD.
        relay.set_mode(RelayMode::Delay(HELD));
        let before = relay.bytes_to_upstream();
        first
            .send(&["GET", "k"])
            .await
            .expect("sending the first GET");
        let get = encode_command(&["GET", "k"]).len() as u64;
        support::wait::until_async(
            "the first GET reaches Redis",
            Duration::from_secs(10),
            || relay.bytes_to_upstream() >= before + get,
        )
        .await;
        for client in &mut others {
            client.send(&["GET", "k"]).await.expect("sending a GET");
        }
        let all = before + get * (CLIENTS as u64 + 1);
        if expect_held {
            // Nothing moves while the first reply is delayed. (A fixed
            // wait: it checks that something does *not* happen.)
            tokio::time::sleep(HELD / 4).await;
            assert_eq!(
                relay.bytes_to_upstream(),
                before + get,
                "--batch-writes on: requests went out behind an unanswered write"
            );
        } else {
            support::wait::until_async(
                "--batch-writes off: every GET reaches Redis while the first reply is held",
                HELD * 3 / 4,
                || relay.bytes_to_upstream() >= all,
            )
            .await;
        }
        assert_eq!(first.read_reply().await.expect("first reply"), bulk("v"));
        for (i, client) in others.iter_mut().enumerate() {
            assert_eq!(
                client.read_reply().await.expect("a held reply"),
                bulk("v"),
                "client {i}, --batch-writes {batch_writes}"
            );
        }
        assert_eq!(
            relay.bytes_to_upstream(),
            all,
            "--batch-writes {batch_writes}"
        );
        relay.set_mode(RelayMode::Pass);
    }
}

/// Ids of the connections Redis has (other than the one asking) with
/// `field` among their CLIENT LIST fields.
fn connection_ids(redis: &RedisServer, field: &str) -> Vec<String> {
    redis
        .other_clients()
        .iter()
        .filter(|l| l.split(' ').any(|f| f == field))
        .filter_map(|l| Some(l.split(' ').next()?.strip_prefix("id=")?.to_string()))
        .collect()
}

/// An idle lane PINGs Redis (`--health-check-interval`) and swallows the
/// PONG: the replies to the requests that follow are each client's own.
#[tokio::test]
async fn health_check_pings_on_an_idle_lane_leave_replies_aligned() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(
        &redis.url(),
        &[
            "--health-check-interval",
            "100ms",
            "--max-connections",
            "1",
            "--min-idle",
            "0",
        ],
    )
    .await;
    let mut client = proxy.client().await;
    client.cmd(&["SET", "hc", "0"]).await.expect_ok();
    let lane = connection_ids(&redis, "resp=2");
    assert_eq!(lane.len(), 1, "one lane connection");
    let before = redis.command_calls("ping");
    wait::until_async(
        "three health-check PINGs from the idle lane",
        wait::DEADLINE,
        || redis.command_calls("ping") >= before + 3,
    )
    .await;
    for round in 0..3 {
        let commands: Vec<Vec<Vec<u8>>> = (0..50).map(|_| args(&["INCR", "hc"])).collect();
        let replies = pipeline(&mut client, &commands).await;
        let expected: Vec<Reply> = (1..=50).map(|n| Reply::Int(round * 50 + n)).collect();
        assert_eq!(replies, expected, "round {round}");
        // Idle again long enough for another check before the next round.
        let now = redis.command_calls("ping");
        wait::until_async("a PING after the round", wait::DEADLINE, || {
            redis.command_calls("ping") > now
        })
        .await;
    }
    // Every PONG was taken as the good answer it is: the connection was
    // never dropped and replaced.
    assert_eq!(connection_ids(&redis, "resp=2"), lane);
}

/// Redis can push to a shared connection that never asked for it: another
/// connection's `CLIENT TRACKING ON REDIRECT <id>` sends invalidations there
/// (a RESP3 `>` frame on the RESP3 lane). The lane drops them; its clients'
/// replies stay aligned.
#[tokio::test]
async fn a_push_frame_on_a_shared_connection_is_dropped_and_replies_stay_aligned() {
    let redis = RedisServer::start();
    let proxy =
        TestProxy::start(&redis.url(), &["--max-connections", "1", "--min-idle", "0"]).await;
    let mut client = proxy.client().await;
    client.cmd(&["HELLO", "3"]).await;
    client.cmd(&["SET", "tracked", "v0"]).await.expect_ok();

    let mut direct = TestClient::connect(redis.addr())
        .await
        .expect("direct connection");
    let lanes = connection_ids(&redis, "resp=3");
    assert_eq!(lanes.len(), 1, "one RESP3 lane connection");
    direct
        .cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", &lanes[0]])
        .await
        .expect_ok();
    for n in 1..=20 {
        // Track the key, then change it: Redis pushes an invalidation to the
        // lane's connection, in between the replies it sends there.
        direct.cmd(&["GET", "tracked"]).await;
        let value = format!("v{n}");
        direct.cmd(&["SET", "tracked", &value]).await.expect_ok();
        let commands = vec![
            args(&["GET", "tracked"]),
            args(&["INCR", "pushes"]),
            args(&["GET", "tracked"]),
        ];
        let replies = pipeline(&mut client, &commands).await;
        assert_eq!(
            replies,
            vec![bulk(&value), Reply::Int(n), bulk(&value)],
            "round {n}"
        );
    }
    // The pushes were dropped, not taken for a broken connection: the lane
    // still has the connection the invalidations were redirected to.
    assert_eq!(connection_ids(&redis, "resp=3"), lanes);
}

/// With the default pool flags, the stateless commands of every client share
/// one upstream connection (`--max-connections 1`; the validated spare runs
/// nothing but validation), however many clients there are.
#[tokio::test]
async fn by_default_every_client_shares_one_upstream_connection() {
    const CLIENTS: usize = 40;
    let redis = RedisServer::start();
    let proxy = Arc::new(TestProxy::start(&redis.url(), &[]).await);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let proxy = Arc::clone(&proxy);
        tasks.push(tokio::spawn(async move {
            let mut client = proxy.client().await;
            let key = format!("shared:{c}");
            for n in 1..=25 {
                assert_eq!(client.cmd(&["INCRBY", &key, "2"]).await, Reply::Int(2 * n));
                assert_eq!(
                    client.cmd(&["STRLEN", &key]).await,
                    Reply::Int((2 * n).to_string().len() as i64)
                );
            }
        }));
    }
    for task in tasks {
        task.await.expect("a client task");
    }
    let carriers: Vec<String> = redis
        .other_clients()
        .into_iter()
        .filter(|line| line.contains(" cmd=incrby ") || line.contains(" cmd=strlen "))
        .collect();
    assert_eq!(
        carriers.len(),
        1,
        "connections that ran client commands: {carriers:#?}"
    );
    assert!(
        redis.other_clients().len() <= 2,
        "{:#?}",
        redis.other_clients()
    );
}

/// respool answers `INFO respool` itself, with counters of what it did;
/// every other INFO is Redis's.
#[tokio::test]
async fn info_respool_counts_what_the_proxy_did() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &["--max-clients", "2"]).await;
    let mut client = proxy.client().await;
    let before = client.respool_counters().await;

    // 100 SETs in one pipeline, then 20 GETs one at a time.
    let mut pipeline = Vec::new();
    for i in 0..100 {
        pipeline.extend(encode_command(&["SET", &format!("k{i}"), "v"]));
    }
    client
        .send_raw(&pipeline)
        .await
        .expect("sending the pipeline");
    for _ in 0..100 {
        client.read_reply().await.expect("a SET reply").expect_ok();
    }
    for i in 0..20 {
        assert_eq!(client.cmd(&["GET", &format!("k{i}")]).await, bulk("v"));
    }
    // A second client is let in, a third is turned away.
    let mut second = proxy.client().await;
    assert_eq!(second.cmd(&["PING"]).await, simple("PONG"));
    let mut third = proxy.client().await;
    assert_eq!(
        third.read_reply().await.expect("the refusal"),
        Reply::Error("ERR max number of clients reached".into())
    );

    let after = client.respool_counters().await;
    let delta = |field| counter(&after, field) - counter(&before, field);
    // The 120 commands, the PING and this INFO.
    assert_eq!(delta("requests"), 122, "{after:?}");
    assert_eq!(delta("lane_requests_written"), 121, "{after:?}");
    // The pipeline leaves in a few writes, not one per request.
    let writes = delta("lane_writes");
    assert!(
        (2..=60).contains(&writes),
        "{writes} writes for 121 requests"
    );
    assert_eq!(delta("rejected_clients"), 1, "{after:?}");
    assert!(
        counter(&after, "upstream_connections_validated") >= 1,
        "{after:?}"
    );
    assert_eq!(counter(&after, "upstream_connect_failures"), 0, "{after:?}");
    assert_eq!(counter(&after, "connected_clients"), 2, "{after:?}");
    let server = redis.command(&[b"INFO", b"server"]);
    let version = server
        .as_str()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("redis_version:")))
        .expect("Redis's version")
        .trim()
        .to_string();
    assert_eq!(after["upstream_version"], version);
    assert_eq!(after["upstream"], redis.addr().to_string());

    // Any other INFO goes to Redis.
    let info = client.cmd(&["INFO", "server"]).await;
    let text = info.as_str().expect("Redis's INFO").to_string();
    assert!(
        text.contains("redis_version:") && !text.contains("# Respool"),
        "{text}"
    );
}

/// A self-referencing Lua table: Redis converts it level by level until its
/// Lua stack runs out (7 995 levels in Redis 7.0, the innermost one
/// `-ERR reached lua stack limit`).
const SELF_REFERENCING_TABLE: &str = "local t = {} ; t[1] = t ; return t";
/// The deepest table Redis 7.0 returns in full: 7 995 nested arrays, the
/// innermost empty.
const DEEPEST_TABLE: &str =
    "local t = {} local c = t for i = 1, 7994 do local n = {} c[1] = n c = n end return t";

/// Sends `command` to both clients and asserts that their replies arrive as
/// the same bytes.
async fn same_raw_reply(via_proxy: &mut TestClient, direct: &mut TestClient, command: &[&str]) {
    via_proxy.send(command).await.expect("send via the proxy");
    direct.send(command).await.expect("send to Redis");
    let proxied = via_proxy
        .read_raw_reply()
        .await
        .expect("reply via the proxy");
    let expected = direct.read_raw_reply().await.expect("reply from Redis");
    let first_difference = proxied.iter().zip(&expected).position(|(a, b)| a != b);
    assert!(
        proxied == expected,
        "{command:?}: {} bytes via the proxy, {} from Redis, first difference at {first_difference:?}",
        proxied.len(),
        expected.len()
    );
}

/// How many one-element arrays a raw reply opens before anything else.
fn leading_levels(raw: &[u8]) -> usize {
    raw.chunks(4)
        .take_while(|header| *header == b"*1\r\n")
        .count()
}

/// Issue #18: Redis sends replies nested thousands of levels deep when a
/// Lua script returns a deep or self-referencing table, and one more level
/// when EXEC wraps it. respool forwards them byte for byte — on a shared
/// lane and in a pinned session, RESP2 and RESP3 — and the connections
/// carry on.
#[tokio::test]
async fn replies_as_deep_as_redis_sends_are_forwarded_byte_for_byte() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut check = redis.direct().await;
    for script in [SELF_REFERENCING_TABLE, DEEPEST_TABLE] {
        check.send(&["EVAL", script, "0"]).await.expect("send EVAL");
        let raw = check.read_raw_reply().await.expect("EVAL reply");
        // Far past the 128 levels respool used to refuse.
        assert!(
            leading_levels(&raw) > 7_000,
            "{script}: {} levels",
            leading_levels(&raw)
        );
    }
    let before = proxy.client().await.respool_counters().await;

    for protocol in ["2", "3"] {
        let mut via_proxy = proxy.client().await;
        let mut direct = redis.direct().await;
        if protocol == "3" {
            assert!(matches!(
                via_proxy.cmd(&["HELLO", "3"]).await,
                Reply::Map(_)
            ));
            assert!(matches!(direct.cmd(&["HELLO", "3"]).await, Reply::Map(_)));
        }
        // On the shared lane.
        for script in [SELF_REFERENCING_TABLE, DEEPEST_TABLE] {
            same_raw_reply(&mut via_proxy, &mut direct, &["EVAL", script, "0"]).await;
        }
        // In a pinned session: EXEC wraps both in one more level.
        for client in [&mut via_proxy, &mut direct] {
            client.cmd(&["MULTI"]).await.expect_ok();
            for script in [SELF_REFERENCING_TABLE, DEEPEST_TABLE] {
                assert_eq!(client.cmd(&["EVAL", script, "0"]).await, simple("QUEUED"));
            }
        }
        same_raw_reply(&mut via_proxy, &mut direct, &["EXEC"]).await;
        // The same client goes on, on the lane and pinned again.
        assert_eq!(via_proxy.cmd(&["ECHO", protocol]).await, bulk(protocol));
        via_proxy.cmd(&["MULTI"]).await.expect_ok();
        assert_eq!(via_proxy.cmd(&["ECHO", "pinned"]).await, simple("QUEUED"));
        assert_eq!(
            via_proxy.cmd(&["EXEC"]).await,
            Reply::Array(vec![bulk("pinned")])
        );
    }

    // No upstream connection was given up over these replies.
    let after = proxy.client().await.respool_counters().await;
    let delta = |field| counter(&after, field) - counter(&before, field);
    assert_eq!(delta("lane_connections_broken"), 0, "{after:?}");
    assert_eq!(delta("requests_failed"), 0, "{after:?}");
}
