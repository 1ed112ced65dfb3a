//! Tests of the test harness itself (`tests/support`): if these fail, no
//! other integration test can be trusted.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::client::{encode_command, parse_reply, raw_reply_len};
use support::{wait, FaultRelay, ReadError, RedisServer, RelayMode, Reply, TestClient};

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

fn pong() -> Reply {
    Reply::Simple("PONG".into())
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn connect(addr: std::net::SocketAddr) -> TestClient {
    TestClient::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("test client: {e}"))
}

// ---------------------------------------------------------------- RedisServer

#[test]
fn kill_and_restart_keep_port_and_data_dir() {
    let server = RedisServer::start();
    let port = server.port();
    let dir = server.dir().to_path_buf();
    let first_pid = server.pid().expect("a freshly started server has a pid");

    server.command(&[b"SET", b"k", b"v"]).expect_ok();
    // Persist explicitly: the harness runs with `save ""`.
    server.command(&[b"SAVE"]).expect_ok();

    server.kill();
    assert!(!server.is_running(), "server still running after kill()");
    assert!(
        !process_exists(first_pid),
        "killed server {first_pid} was not reaped"
    );
    assert!(
        std::net::TcpStream::connect(server.addr()).is_err(),
        "port {port} still accepts connections after kill()"
    );

    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(server.dir(), dir);
    assert_ne!(
        server.pid(),
        Some(first_pid),
        "restart() did not start a new process"
    );
    assert_eq!(
        server.command(&[b"GET", b"k"]),
        bulk("v"),
        "data saved in the dir did not survive the restart"
    );

    server.stop();
    assert!(!server.is_running(), "server still running after stop()");
    server.restart_no_wait();
    server.wait_ready();
    assert_eq!(server.command(&[b"PING"]), pong());
}

#[test]
fn dropping_a_server_kills_and_reaps_it_even_on_panic() {
    let server = RedisServer::start();
    let pid = server.pid().expect("pid of a running server");
    drop(server);
    assert!(!process_exists(pid), "dropped server {pid} is still around");

    let mut pid_seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let server = RedisServer::start();
        pid_seen = server.pid();
        panic!("deliberate test panic while a server runs");
    }));
    assert!(result.is_err());
    let pid = pid_seen.expect("the panicking closure recorded a pid");
    assert!(
        !process_exists(pid),
        "server {pid} outlived a panicking test"
    );
}

#[tokio::test]
async fn password_is_required_and_used_by_url_and_direct() {
    let server = RedisServer::builder().password("s3cret").start();
    assert_eq!(
        server.url(),
        format!("redis://:s3cret@127.0.0.1:{}", server.port())
    );

    let mut anonymous = connect(server.addr()).await;
    anonymous
        .cmd(&["GET", "x"])
        .await
        .expect_error_code("NOAUTH");

    let mut client = server.direct().await;
    client.cmd(&["SET", "x", "1"]).await.expect_ok();
    assert_eq!(client.cmd(&["GET", "x"]).await, bulk("1"));
}

#[test]
fn builder_args_override_defaults() {
    let server = RedisServer::builder()
        .arg("--maxmemory", "12345678")
        .start();
    let reply = server.command(&[b"CONFIG", b"GET", b"maxmemory"]);
    assert_eq!(
        reply,
        Reply::Array(vec![bulk("maxmemory"), bulk("12345678")])
    );
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
}

#[tokio::test]
async fn loading_dataset_yields_loading_then_normal_replies() {
    const KEYS: u64 = 20_000;
    // Password too: probes and clients must authenticate while loading.
    let server = RedisServer::builder()
        .password("pw")
        .loading_dataset(KEYS, 100)
        .start();
    server.wait_loading();

    // A client of our own sees the genuine error, not just the helper.
    let mut client = server.direct().await;
    client
        .cmd(&["GET", "key:1"])
        .await
        .expect_error_code("LOADING");
    assert!(server.is_loading());

    server.wait_loaded();
    assert!(!server.is_loading());
    assert_eq!(client.cmd(&["GET", "key:1"]).await, bulk("value:1"));
    assert_eq!(
        client.cmd(&["DBSIZE"]).await,
        Reply::Int(KEYS as i64),
        "the whole dataset should be loaded"
    );
}

#[tokio::test]
async fn replica_rejects_writes_with_readonly() {
    let master = RedisServer::builder().password("m").start();
    let replica = RedisServer::replica_of(&master);
    replica.wait_replica_synced();

    let mut on_replica = replica.direct().await;
    on_replica
        .cmd(&["SET", "k", "v"])
        .await
        .expect_error_code("READONLY");

    let mut on_master = master.direct().await;
    on_master
        .cmd(&["SET", "k", "from-master"])
        .await
        .expect_ok();
    wait::until_ok("the write to replicate", wait::DEADLINE, async || {
        let reply = on_replica.cmd(&["GET", "k"]).await;
        if reply == bulk("from-master") {
            Ok(())
        } else {
            Err(format!(
                "write never replicated; last GET on the replica: {reply}"
            ))
        }
    })
    .await;
}

// ------------------------------------------------------------------ TestClient

#[tokio::test]
async fn ten_thousand_pipelined_pings_get_ten_thousand_pongs() {
    const N: usize = 10_000;
    let server = RedisServer::start();
    let mut client = server.direct().await;

    let one = encode_command(&["PING"]);
    let pipeline: Vec<u8> = one.iter().copied().cycle().take(one.len() * N).collect();
    client
        .send_raw(&pipeline)
        .await
        .unwrap_or_else(|e| panic!("sending the pipeline: {e}"));
    for i in 0..N {
        match client.read_reply().await {
            Ok(reply) if reply == pong() => {}
            other => panic!("reply {i} of {N}: expected PONG, got {other:?}"),
        }
    }
    // Nothing extra queued behind the last reply.
    let extra = client.read_reply_within(Duration::from_millis(100)).await;
    assert!(
        matches!(extra, Err(ReadError::Timeout { buffered: 0, .. })),
        "unexpected data after {N} replies: {extra:?}"
    );
}

#[tokio::test]
async fn resp3_replies_parse() {
    let server = RedisServer::start();
    let mut client = server.direct().await;
    let hello = client.cmd(&["HELLO", "3"]).await;
    let Reply::Map(fields) = &hello else {
        panic!("HELLO 3 should return a map, got {hello}");
    };
    assert!(fields.contains(&(bulk("proto"), Reply::Int(3))), "{hello}");

    assert_eq!(client.cmd(&["GET", "missing"]).await, Reply::Null);
    client.cmd(&["SADD", "s", "a"]).await;
    assert_eq!(
        client.cmd(&["SMEMBERS", "s"]).await,
        Reply::Set(vec![bulk("a")])
    );
    client.cmd(&["ZADD", "z", "1.5", "m"]).await;
    assert_eq!(
        client.cmd(&["ZSCORE", "z", "m"]).await,
        Reply::Double("1.5".into())
    );
}

#[test]
fn parser_handles_every_type_and_every_split_point() {
    let wire: &[u8] = b"+OK\r\n-ERR bad\r\n:-7\r\n$3\r\nfoo\r\n$-1\r\n*-1\r\n*2\r\n:1\r\n$0\r\n\r\n\
        _\r\n,3.25\r\n#t\r\n(12345678901234567890\r\n=8\r\ntxt:some\r\n%1\r\n+k\r\n:1\r\n\
        ~1\r\n+m\r\n>2\r\n+message\r\n$1\r\nx\r\n!5\r\nOOPS!\r\n|1\r\n+ttl\r\n:3\r\n+after-attr\r\n";
    let expected = vec![
        Reply::Simple("OK".into()),
        Reply::Error("ERR bad".into()),
        Reply::Int(-7),
        bulk("foo"),
        Reply::Nil,
        Reply::NilArray,
        Reply::Array(vec![Reply::Int(1), bulk("")]),
        Reply::Null,
        Reply::Double("3.25".into()),
        Reply::Bool(true),
        Reply::BigNumber("12345678901234567890".into()),
        Reply::Verbatim("txt".into(), b"some".to_vec()),
        Reply::Map(vec![(Reply::Simple("k".into()), Reply::Int(1))]),
        Reply::Set(vec![Reply::Simple("m".into())]),
        Reply::Push(vec![Reply::Simple("message".into()), bulk("x")]),
        Reply::Error("OOPS!".into()),
        Reply::Simple("after-attr".into()),
    ];

    let mut rest = wire;
    for want in &expected {
        // Every strict prefix of a reply is "incomplete", never an error.
        let (got, used) = parse_reply(rest)
            .unwrap_or_else(|e| panic!("parsing {want}: {e}"))
            .unwrap_or_else(|| panic!("parsing {want}: reported incomplete"));
        assert_eq!(&got, want);
        for cut in 0..used {
            assert_eq!(
                parse_reply(&rest[..cut]),
                Ok(None),
                "prefix of {cut} bytes of {want}"
            );
        }
        // The raw framer finds the same reply, and nothing in a prefix.
        assert_eq!(raw_reply_len(rest), Ok(Some(used)), "{want}");
        for cut in 0..used {
            assert_eq!(
                raw_reply_len(&rest[..cut]),
                Ok(None),
                "{cut} bytes of {want}"
            );
        }
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
    assert!(parse_reply(b"?what\r\n").is_err());
    assert!(raw_reply_len(b"?what\r\n").is_err());
}

#[test]
fn raw_framer_finds_replies_of_any_depth() {
    // 100 000 levels: far deeper than the typed parser goes.
    let deep = [b"*1\r\n".repeat(100_000), b":1\r\n".to_vec()].concat();
    let wire = [&deep[..], b"+next\r\n"].concat();
    assert_eq!(raw_reply_len(&wire), Ok(Some(deep.len())));
    assert_eq!(raw_reply_len(&deep[..deep.len() - 1]), Ok(None));
    assert!(
        parse_reply(&deep).is_err(),
        "the typed parser has a depth cap"
    );
}

// ------------------------------------------------------------------ FaultRelay

#[tokio::test]
async fn relay_pass_forwards_and_counts() {
    let server = RedisServer::start();
    let relay = FaultRelay::start(server.addr());
    assert_eq!(relay.bytes_to_upstream(), 0);

    let mut client = connect(relay.addr()).await;
    assert_eq!(client.cmd(&["PING"]).await, pong());
    assert_eq!(relay.connections_accepted(), 1);
    assert_eq!(relay.active_connections(), 1);
    let ping_len = encode_command(&["PING"]).len() as u64;
    assert_eq!(relay.bytes_to_upstream(), ping_len);

    client.cmd(&["SET", "k", "v"]).await.expect_ok();
    assert_eq!(
        relay.bytes_to_upstream(),
        ping_len + encode_command(&["SET", "k", "v"]).len() as u64
    );

    drop(client);
    wait::until_async("the relayed connection to close", wait::DEADLINE, || {
        relay.active_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn relay_blackhole_makes_reads_time_out_then_delivers_intact() {
    let server = RedisServer::start();
    let relay = FaultRelay::start(server.addr());
    let mut client = connect(relay.addr()).await;
    assert_eq!(client.cmd(&["PING"]).await, pong());
    let sent_before = relay.bytes_to_upstream();

    relay.set_mode(RelayMode::Blackhole);
    client
        .send(&["ECHO", "held"])
        .await
        .unwrap_or_else(|e| panic!("sending ECHO: {e}"));
    let reply = client.read_reply_within(Duration::from_millis(300)).await;
    assert!(
        matches!(reply, Err(ReadError::Timeout { .. })),
        "blackholed read should time out, got {reply:?}"
    );
    assert_eq!(
        relay.bytes_to_upstream(),
        sent_before,
        "blackhole forwarded data"
    );
    assert_eq!(
        relay.active_connections(),
        1,
        "blackhole closed the connection"
    );

    relay.set_mode(RelayMode::Pass);
    assert_eq!(client.read_reply().await.ok(), Some(bulk("held")));
}

#[tokio::test]
async fn relay_cut_reply_after_truncates_a_bulk_reply() {
    let server = RedisServer::start();
    server.command(&[b"SET", b"k", b"hello"]).expect_ok();
    let relay = FaultRelay::start(server.addr());
    let mut client = connect(relay.addr()).await;

    relay.set_mode(RelayMode::CutReplyAfter(3));
    client
        .send(&["GET", "k"])
        .await
        .unwrap_or_else(|e| panic!("sending GET: {e}"));
    match client.read_reply().await {
        // "$5\r" arrived, then the connection was closed.
        Err(ReadError::Closed { buffered: 3 }) => {}
        other => panic!("expected EOF after 3 bytes of \"$5\\r\\nhello\\r\\n\", got {other:?}"),
    }
}

#[tokio::test]
async fn relay_reset_now_resets_current_connections_only() {
    let server = RedisServer::start();
    let relay = FaultRelay::start(server.addr());
    let mut client = connect(relay.addr()).await;
    assert_eq!(client.cmd(&["PING"]).await, pong());

    relay.set_mode(RelayMode::ResetNow);
    assert_eq!(relay.active_connections(), 0);
    assert_eq!(relay.mode(), RelayMode::Pass);
    match client.read_reply().await {
        Err(ReadError::Reset(_)) => {}
        other => panic!("expected a connection reset, got {other:?}"),
    }

    let mut fresh = connect(relay.addr()).await;
    assert_eq!(fresh.cmd(&["PING"]).await, pong());
}

#[tokio::test]
async fn relay_reset_instead_of_reply_loses_one_reply_after_its_request_ran() {
    let server = RedisServer::start();
    let relay = FaultRelay::start(server.addr());
    let mut bystander = connect(relay.addr()).await;
    assert_eq!(bystander.cmd(&["PING"]).await, pong());
    let mut client = connect(relay.addr()).await;
    assert_eq!(client.cmd(&["PING"]).await, pong());

    relay.set_mode(RelayMode::ResetInsteadOfReply);
    client
        .send(&["SET", "k", "ran"])
        .await
        .unwrap_or_else(|e| panic!("sending SET: {e}"));
    match client.read_reply().await {
        Err(ReadError::Reset(_)) => {}
        other => panic!("expected a connection reset instead of the reply, got {other:?}"),
    }
    // The request reached Redis and ran; only its connection was lost.
    assert_eq!(server.command(&[b"GET", b"k"]), bulk("ran"));
    wait::until_async("the reset connection to be gone", wait::DEADLINE, || {
        relay.active_connections() == 1
    })
    .await;

    // Once per set_mode: the other connection, and new ones, pass.
    assert_eq!(bystander.cmd(&["ECHO", "still"]).await, bulk("still"));
    let mut fresh = connect(relay.addr()).await;
    assert_eq!(fresh.cmd(&["GET", "k"]).await, bulk("ran"));

    // Setting the mode again arms it again.
    relay.set_mode(RelayMode::ResetInsteadOfReply);
    match bystander.try_cmd(&["PING"]).await {
        Err(ReadError::Reset(_)) => {}
        other => panic!("expected a second reset after re-arming, got {other:?}"),
    }
    assert_eq!(fresh.cmd(&["PING"]).await, pong());
}

#[tokio::test]
async fn relay_accept_and_reset_counts_attempts_and_resets_them() {
    let server = RedisServer::start();
    let relay = FaultRelay::start(server.addr());
    let mut old = connect(relay.addr()).await;
    assert_eq!(old.cmd(&["PING"]).await, pong());

    relay.set_mode(RelayMode::AcceptAndReset);
    assert_eq!(relay.active_connections(), 0);
    assert!(old.read_reply().await.is_err_and(|e| e.is_closed()));
    let accepted = relay.connections_accepted();
    for _ in 0..3 {
        // The reset may arrive before connect() even returns.
        let Ok(mut attempt) = tokio::net::TcpStream::connect(relay.addr()).await else {
            continue;
        };
        let mut buf = [0u8; 16];
        match tokio::io::AsyncReadExt::read(&mut attempt, &mut buf).await {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("expected the connection to be reset, read {n} bytes"),
        }
    }
    wait::until_async("3 attempts to be counted", wait::DEADLINE, || {
        relay.connections_accepted() == accepted + 3
    })
    .await;

    relay.set_mode(RelayMode::Pass);
    let mut fresh = connect(relay.addr()).await;
    assert_eq!(fresh.cmd(&["PING"]).await, pong());
}

#[tokio::test]
async fn relay_refuse_closes_the_port_until_mode_changes() {
    let server = RedisServer::start();
    let relay = FaultRelay::start(server.addr());

    relay.set_mode(RelayMode::Refuse);
    match TestClient::connect(relay.addr()).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("connected to a relay in Refuse mode"),
    }

    relay.set_mode(RelayMode::Pass);
    let mut client = connect(relay.addr()).await;
    assert_eq!(client.cmd(&["PING"]).await, pong());
}

#[tokio::test]
async fn relay_delay_adds_latency_to_replies_only() {
    const DELAY: Duration = Duration::from_secs(1);
    let server = RedisServer::start();
    let relay = FaultRelay::start(server.addr());
    let mut client = connect(relay.addr()).await;

    relay.set_mode(RelayMode::Delay(DELAY));
    client
        .send(&["PING"])
        .await
        .unwrap_or_else(|e| panic!("sending PING: {e}"));
    // The request goes up at once...
    let ping_len = encode_command(&["PING"]).len() as u64;
    wait::until_async("PING to reach the upstream", wait::DEADLINE, || {
        relay.bytes_to_upstream() == ping_len
    })
    .await;
    let forwarded = Instant::now();
    // ...and the reply is held back. Half the delay as the bound: polling
    // may notice the forwarding late on a loaded machine.
    assert_eq!(client.read_reply().await.ok(), Some(pong()));
    let elapsed = forwarded.elapsed();
    assert!(
        elapsed >= DELAY / 2,
        "reply came back {elapsed:?} after the request went up; expected about {DELAY:?}"
    );
}

#[tokio::test]
async fn relay_slice_delivers_replies_intact() {
    let server = RedisServer::start();
    let value = "v".repeat(1000);
    server
        .command(&[b"SET", b"big", value.as_bytes()])
        .expect_ok();
    let relay = FaultRelay::start(server.addr());
    relay.set_mode(RelayMode::Slice(3));

    let mut client = connect(relay.addr()).await;
    assert_eq!(client.cmd(&["GET", "big"]).await, bulk(&value));
    assert_eq!(client.cmd(&["PING"]).await, pong());
}

#[test]
fn relay_works_from_sync_code_and_stops_on_drop() {
    let server = RedisServer::start();
    let relay = FaultRelay::start(server.addr());
    let addr = relay.addr();
    // A blocking probe through the relay, no tokio runtime on this thread.
    let mut stream = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connecting to the relay: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("setting a read timeout: {e}"));
    use std::io::{Read, Write};
    stream
        .write_all(&encode_command(&["PING"]))
        .unwrap_or_else(|e| panic!("writing PING: {e}"));
    let mut buf = [0u8; 7];
    stream
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("reading PONG: {e}"));
    assert_eq!(&buf, b"+PONG\r\n");

    drop(relay);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "relay still accepts after drop"
    );
}
