//! TLS on both sides against real processes: a `redis-server` started with
//! `--tls-port` and certificates this test generates (rcgen), respool
//! connecting to it with `rediss://`, and TLS clients (tokio-rustls)
//! connecting to respool's TLS listener.

mod support;

use std::time::Duration;

use support::client::encode_command;
use support::tls::{Pki, TlsClient};
use support::{RedisServer, Reply, TestProxy};

/// Fail fast when the upstream is unusable.
const FAST: [&str; 4] = ["--checkout-timeout", "1s", "--backoff-cap", "200ms"];

/// A redis-server that also listens with TLS (client certificates required,
/// Redis's default); returns it and the `rediss://` URL of its TLS port.
fn tls_redis(pki: &Pki) -> (RedisServer, String) {
    let tls_port = support::redis::free_port();
    let redis = RedisServer::builder()
        .arg("tls-port", &tls_port.to_string())
        .arg("tls-cert-file", &pki.arg("server.pem"))
        .arg("tls-key-file", &pki.arg("server.key"))
        .arg("tls-ca-cert-file", &pki.arg("ca.pem"))
        .start();
    (redis, format!("rediss://127.0.0.1:{tls_port}"))
}

/// respool with a TLS listener (the test PKI's server certificate) in front
/// of `redis`, with `extra` flags.
async fn tls_proxy(pki: &Pki, redis: &RedisServer, extra: &[&str]) -> TestProxy {
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server.key"));
    let tls = ["--tls-cert", &cert, "--tls-key", &key];
    TestProxy::start(&redis.url(), &[&tls[..], extra].concat()).await
}

/// The error a client's GET gets when respool cannot use its upstream.
async fn upstream_error(client: &mut support::TestClient) -> String {
    match client.cmd(&["GET", "k"]).await {
        Reply::Error(text) => text,
        other => panic!("expected an error, got {other}"),
    }
}

fn bulk(s: impl AsRef<[u8]>) -> Reply {
    Reply::Bulk(s.as_ref().to_vec())
}

#[tokio::test]
async fn a_rediss_upstream_is_verified_and_serves_plain_clients() {
    let pki = Pki::generate();
    let (_redis, url) = tls_redis(&pki);
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("client.pem"),
        pki.arg("client.key"),
    );
    let proxy = TestProxy::start(
        &url,
        &[
            "--upstream-ca",
            &ca,
            "--upstream-cert",
            &cert,
            "--upstream-key",
            &key,
        ],
    )
    .await;
    let mut client = proxy.client().await;
    client.cmd(&["SET", "tls:k", "v"]).await.expect_ok();
    assert_eq!(client.cmd(&["GET", "tls:k"]).await, bulk("v"));

    // A large value through a shared lane: many TLS records both ways.
    let big = vec![b'x'; 1 << 20];
    client
        .cmd(&[&b"SET"[..], b"tls:big", &big])
        .await
        .expect_ok();
    assert_eq!(client.cmd(&["GET", "tls:big"]).await, bulk(&big));

    // A pinned session (MULTI/EXEC) rides a TLS connection too.
    client.cmd(&["MULTI"]).await.expect_ok();
    assert_eq!(
        client.cmd(&["INCR", "tls:n"]).await,
        Reply::Simple("QUEUED".into())
    );
    assert_eq!(
        client.cmd(&["EXEC"]).await,
        Reply::Array(vec![Reply::Int(1)])
    );
    assert_eq!(client.cmd(&["GET", "tls:big"]).await, bulk(&big));

    // Without verification (tests only), the same server is reachable.
    let insecure = TestProxy::start(
        &url,
        &[
            "--upstream-tls-insecure",
            "--upstream-cert",
            &cert,
            "--upstream-key",
            &key,
        ],
    )
    .await;
    let mut client = insecure.client().await;
    assert_eq!(client.cmd(&["GET", "tls:k"]).await, bulk("v"));
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_is_reported_to_clients() {
    let pki = Pki::generate();
    let (_redis, url) = tls_redis(&pki);
    let (cert, key) = (pki.arg("client.pem"), pki.arg("client.key"));
    let wrong_ca = pki.arg("other-ca.pem");
    let proxy = TestProxy::start(
        &url,
        &[
            &FAST[..],
            &[
                "--upstream-ca",
                &wrong_ca,
                "--upstream-cert",
                &cert,
                "--upstream-key",
                &key,
            ],
        ]
        .concat(),
    )
    .await;
    let mut client = proxy.client().await;
    let text = upstream_error(&mut client).await;
    assert!(
        text.starts_with(&format!(
            "ERR upstream {} unavailable: ",
            &url["rediss://".len()..]
        )) && text.contains("TLS handshake failed")
            && text.contains("certificate"),
        "{text}"
    );
}

/// `--upstream-tls-server-name` is the name the upstream's certificate is
/// checked against (and the SNI sent) instead of the URL's host: the test
/// certificate names 127.0.0.1 and localhost, so `localhost` is served and
/// `cache.example` is refused although the URL's 127.0.0.1 would pass.
#[tokio::test]
async fn the_upstream_tls_server_name_replaces_the_urls_host() {
    let pki = Pki::generate();
    let (_redis, url) = tls_redis(&pki);
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("client.pem"),
        pki.arg("client.key"),
    );
    let base = [
        &FAST[..],
        &[
            "--upstream-ca",
            &ca,
            "--upstream-cert",
            &cert,
            "--upstream-key",
            &key,
        ],
    ]
    .concat();
    let named = |name| [&base[..], &["--upstream-tls-server-name", name]].concat();

    let proxy = TestProxy::start(&url, &named("localhost")).await;
    let mut client = proxy.client().await;
    client.cmd(&["SET", "k", "v"]).await.expect_ok();
    assert_eq!(client.cmd(&["GET", "k"]).await, bulk("v"));
    proxy.shutdown().await;

    let proxy = TestProxy::start(&url, &named("cache.example")).await;
    let mut client = proxy.client().await;
    let text = upstream_error(&mut client).await;
    assert!(
        text.contains("TLS handshake failed")
            && text.contains("not valid for name \"cache.example\""),
        "{text}"
    );
}

/// Without `--upstream-ca`, a `rediss://` upstream is verified against the
/// system's trust store, which `SSL_CERT_FILE` replaces (as for OpenSSL):
/// served when the store holds the upstream's CA, refused with the reason
/// when it does not, and a start-up error when there is no store at all.
#[tokio::test]
async fn without_upstream_ca_the_system_trust_store_decides() {
    let pki = Pki::generate();
    let (_redis, url) = tls_redis(&pki);
    let (cert, key) = (pki.arg("client.pem"), pki.arg("client.key"));
    let flags = [
        &FAST[..],
        &["--upstream-cert", &cert, "--upstream-key", &key],
    ]
    .concat();
    let store = |file: &str| {
        [
            ("SSL_CERT_FILE", file.to_string()),
            ("SSL_CERT_DIR", String::new()),
        ]
    };

    let trusted = store(&pki.arg("ca.pem"));
    let env: Vec<(&str, &str)> = trusted.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let proxy = support::ProxyProcess::start_with_env(&url, &flags, &env);
    let mut client = support::TestClient::connect(proxy.addr())
        .await
        .expect("connecting to respool");
    client
        .cmd(&["SET", "k", "through the system store"])
        .await
        .expect_ok();
    assert_eq!(
        client.cmd(&["GET", "k"]).await,
        bulk("through the system store")
    );
    drop(proxy);

    let untrusted = store(&pki.arg("other-ca.pem"));
    let env: Vec<(&str, &str)> = untrusted.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let proxy = support::ProxyProcess::start_with_env(&url, &flags, &env);
    let mut client = support::TestClient::connect(proxy.addr())
        .await
        .expect("connecting to respool");
    let text = upstream_error(&mut client).await;
    assert!(
        text.contains("TLS handshake failed") && text.contains("UnknownIssuer"),
        "{text}"
    );
    drop(proxy);

    let missing = pki.path("no-such-bundle.pem").display().to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_respool"))
        .args(["--listen", "127.0.0.1:0", "--upstream", &url])
        .args(&flags)
        .env("SSL_CERT_FILE", &missing)
        .env("SSL_CERT_DIR", "")
        .output()
        .expect("running respool");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("system's trust store") && stderr.contains("--upstream-ca"),
        "{stderr}"
    );
}

#[tokio::test]
async fn tls_clients_are_served_with_large_values_and_pipelines() {
    let pki = Pki::generate();
    let redis = RedisServer::start();
    let proxy = tls_proxy(&pki, &redis, &[]).await;
    let mut client = TlsClient::connect(proxy.addr(), &pki.path("ca.pem"), None)
        .await
        .expect("TLS handshake with respool");

    assert_eq!(
        client.cmd(&["SET", "k", "v"]).await,
        Ok(Reply::Simple("OK".into()))
    );
    assert_eq!(client.cmd(&["GET", "k"]).await, Ok(bulk("v")));

    let big = vec![b'y'; 1 << 20];
    assert_eq!(
        client.cmd(&[&b"SET"[..], b"big", &big]).await,
        Ok(Reply::Simple("OK".into()))
    );
    assert_eq!(client.cmd(&["GET", "big"]).await, Ok(bulk(&big)));

    // 1000 requests in one write; 1000 replies, in order.
    let mut pipeline = Vec::new();
    for i in 0..1000 {
        pipeline.extend(encode_command(&["INCR", "counter"]));
        if i % 100 == 0 {
            pipeline.extend(encode_command(&["GET", "big"]));
        }
    }
    client
        .send_raw(&pipeline)
        .await
        .expect("sending the pipeline");
    for i in 0..1000 {
        assert_eq!(
            client.read_reply().await,
            Ok(Reply::Int(i + 1)),
            "reply {i}"
        );
        if i % 100 == 0 {
            assert_eq!(client.read_reply().await, Ok(bulk(&big)), "big reply {i}");
        }
    }
    // A plain-TCP client gets nothing useful from a TLS port.
    let mut plain = proxy.client().await;
    plain.send_raw(b"*1\r\n$4\r\nPING\r\n").await.ok();
    assert!(plain
        .read_reply_within(Duration::from_secs(5))
        .await
        .is_err());
}

/// Over the `--max-clients` limit, a TLS client is told so over TLS (a
/// plain-text error would only break its handshake), and the connection
/// ends with a close_notify, as it does after QUIT.
#[tokio::test]
async fn tls_clients_are_refused_and_closed_in_tls() {
    let pki = Pki::generate();
    let redis = RedisServer::start();
    let proxy = tls_proxy(&pki, &redis, &["--max-clients", "1"]).await;
    let ca = pki.path("ca.pem");
    let mut admitted = TlsClient::connect(proxy.addr(), &ca, None)
        .await
        .expect("TLS handshake");
    assert_eq!(
        admitted.cmd(&["PING"]).await,
        Ok(Reply::Simple("PONG".into()))
    );

    let mut refused = TlsClient::connect(proxy.addr(), &ca, None)
        .await
        .expect("a refused client still completes its handshake");
    assert_eq!(
        refused.read_reply().await,
        Ok(Reply::Error("ERR max number of clients reached".into()))
    );
    // A clean end of stream: without close_notify, tokio-rustls reports an
    // unexpected EOF instead.
    assert_eq!(refused.read_reply().await, Err("connection closed".into()));

    assert_eq!(
        admitted.cmd(&["QUIT"]).await,
        Ok(Reply::Simple("OK".into()))
    );
    assert_eq!(admitted.read_reply().await, Err("connection closed".into()));
}

/// `respool bench` drives load through a TLS listener (`--tls`, or a
/// `rediss://` target) and checks every reply; an endpoint whose
/// certificate it does not trust is a connection error that says why, not
/// a run.
#[tokio::test]
async fn respool_bench_loads_a_tls_endpoint() {
    let pki = Pki::generate();
    let redis = RedisServer::start();
    let proxy = tls_proxy(&pki, &redis, &[]).await;
    let tls_target = format!("rediss://{}", proxy.addr());
    let plain_target = format!("redis://{}", redis.addr());
    let untrusted = pki.arg("other-ca.pem");
    // Run on a blocking thread: the proxy serves on this test's runtime.
    let bench = move |args: Vec<String>| {
        let untrusted = untrusted.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_respool"))
                .args(["bench", "--json"])
                .args(["--clients", "4", "--pipeline", "8", "--requests", "2000"])
                .args(["--workload", "mixed", "--key-prefix", "tlsbench:"])
                .args(args)
                .env("SSL_CERT_FILE", untrusted)
                .env("SSL_CERT_DIR", "")
                .output()
                .expect("running respool bench")
        })
    };
    let report = |output: std::process::Output| -> serde_json::Value {
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(&stdout).expect("JSON report")
    };
    let ca = pki.arg("ca.pem");

    // --tls: the target is spoken to over TLS.
    let output = bench(vec![
        "--target".into(),
        proxy.addr().to_string(),
        "--tls".into(),
        "--tls-ca".into(),
        ca.clone(),
    ])
    .await
    .expect("bench thread");
    let single = report(output);
    assert_eq!(single["passed"], true, "{single}");
    assert_eq!(single["requests"], 2000, "{single}");
    assert_eq!(single["wrong_replies"], 0, "{single}");
    assert_eq!(single["connection_errors"], 0, "{single}");
    let Reply::Array(keys) = redis.command(&[b"KEYS", b"tlsbench:*"]) else {
        panic!("KEYS answered no array");
    };
    assert!(!keys.is_empty(), "the benchmark's SETs reached Redis");

    // A rediss:// target is TLS and a redis:// one is not, in one run:
    // Redis direct in plain TCP against respool over TLS.
    let output = bench(vec![
        "--target".into(),
        plain_target,
        "--compare".into(),
        tls_target.clone(),
        "--rounds".into(),
        "1".into(),
        "--tls-ca".into(),
        ca,
    ])
    .await
    .expect("bench thread");
    let compare = report(output);
    assert_eq!(compare["mode"], "compare", "{compare}");
    assert_eq!(compare["passed"], true, "{compare}");

    // The system's store (here the unrelated CA) does not vouch for it.
    let output = bench(vec!["--target".into(), tls_target])
        .await
        .expect("bench thread");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("TLS handshake failed") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
}

/// A TLS client that hangs up while its blocking command waits for a
/// dedicated connection leaves the queue, whether it says goodbye with a
/// close_notify or just closes the socket: its command never runs.
#[tokio::test]
async fn a_tls_client_that_hangs_up_while_waiting_for_a_dedicated_connection_leaves_the_queue() {
    let pki = Pki::generate();
    let redis = RedisServer::start();
    let proxy = tls_proxy(
        &pki,
        &redis,
        &["--max-pinned", "1", "--checkout-timeout", "30s"],
    )
    .await;
    let ca = pki.path("ca.pem");
    let connect = || TlsClient::connect(proxy.addr(), &ca, None);
    // `a` blocks on the only dedicated connection.
    let mut a = connect().await.expect("TLS handshake");
    a.send_raw(&encode_command(&["BLPOP", "qa", "0"]))
        .await
        .expect("BLPOP qa");
    support::wait::until("a's BLPOP to block", support::wait::DEADLINE, || {
        redis.blocked_clients() == 1
    });
    // `b` and `c` ask for one too, and hang up while they wait: `b` with a
    // close_notify, `c` by closing its socket.
    let mut b = connect().await.expect("TLS handshake");
    b.send_raw(&encode_command(&["BLPOP", "qb", "0"]))
        .await
        .expect("BLPOP qb");
    b.shutdown().await.expect("close_notify");
    let mut c = connect().await.expect("TLS handshake");
    c.send_raw(&encode_command(&["BLPOP", "qc", "0"]))
        .await
        .expect("BLPOP qc");
    drop(c);

    // Free `a`'s connection: it goes back to the pool.
    let mut d = connect().await.expect("TLS handshake");
    assert_eq!(d.cmd(&["LPUSH", "qa", "x"]).await, Ok(Reply::Int(1)));
    assert_eq!(
        a.read_reply().await,
        Ok(Reply::Array(vec![bulk("qa"), bulk("x")]))
    );
    // Had `b` or `c` kept its place in the queue, the connection would have
    // gone to it first, its BLPOP would have blocked upstream, and `d`'s
    // would wait for the checkout far longer than the read allows.
    assert_eq!(d.cmd(&["BLPOP", "qd", "0.01"]).await, Ok(Reply::NilArray));
    assert_eq!(
        redis.command_calls("blpop"),
        2,
        "a's and d's BLPOP, not b's or c's"
    );
    assert_eq!(redis.blocked_clients(), 0);
}

/// A TLS client that respool no longer reads (after QUIT) is still noticed
/// when it hangs up while its blocking command waits, with or without a
/// close_notify: its dedicated connection is closed, which unblocks Redis.
#[tokio::test]
async fn a_tls_client_no_longer_read_that_hangs_up_during_a_blocking_command_frees_its_connection()
{
    let pki = Pki::generate();
    let redis = RedisServer::start();
    let proxy = tls_proxy(
        &pki,
        &redis,
        &["--max-pinned", "1", "--checkout-timeout", "30s"],
    )
    .await;
    let ca = pki.path("ca.pem");
    let mut blpop_then_quit = encode_command(&["BLPOP", "never-pushed", "0"]);
    blpop_then_quit.extend_from_slice(&encode_command(&["QUIT"]));
    for close_notify in [true, false] {
        let mut client = TlsClient::connect(proxy.addr(), &ca, None)
            .await
            .expect("TLS handshake");
        client
            .send_raw(&blpop_then_quit)
            .await
            .expect("BLPOP, QUIT");
        support::wait::until("the BLPOP to block", support::wait::DEADLINE, || {
            redis.blocked_clients() == 1
        });
        if close_notify {
            client.shutdown().await.expect("close_notify");
        }
        drop(client);
        support::wait::until(
            &format!("the dedicated connection to close (close_notify: {close_notify})"),
            support::wait::DEADLINE,
            || redis.blocked_clients() == 0,
        );
    }
    let mut next = TlsClient::connect(proxy.addr(), &ca, None)
        .await
        .expect("TLS handshake");
    assert_eq!(
        next.cmd(&["BLPOP", "other", "0.01"]).await,
        Ok(Reply::NilArray)
    );
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_get_in() {
    let pki = Pki::generate();
    let redis = RedisServer::start();
    let proxy = tls_proxy(&pki, &redis, &["--tls-ca", &pki.arg("ca.pem")]).await;

    // TLS 1.3 clients finish their side of the handshake before the server
    // checks their certificate: the refusal shows on the first read.
    let refused = match TlsClient::connect(proxy.addr(), &pki.path("ca.pem"), None).await {
        Err(_) => true,
        Ok(mut client) => client.cmd(&["PING"]).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    let mut client = TlsClient::connect(
        proxy.addr(),
        &pki.path("ca.pem"),
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
    )
    .await
    .expect("TLS handshake with a client certificate");
    assert_eq!(
        client.cmd(&["PING"]).await,
        Ok(Reply::Simple("PONG".into()))
    );
}

/// A `rediss://` lane and a pinned session over TLS wake on readiness, not
/// on a timer: 2 000 sequential round trips each. Before respool's streams
/// went through tokio-rustls, a lost wake-up left every request waiting for
/// the lane's periodic tick, 10 requests per second: these took 200 s each.
/// The bound is 50 times looser than a healthy run needs on a loaded
/// machine, and still 4 times tighter than the broken one.
#[tokio::test]
async fn sequential_requests_over_a_rediss_upstream_do_not_wait_for_a_timer() {
    let pki = Pki::generate();
    let (_redis, url) = tls_redis(&pki);
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("client.pem"),
        pki.arg("client.key"),
    );
    let flags = [
        "--upstream-ca",
        &ca,
        "--upstream-cert",
        &cert,
        "--upstream-key",
        &key,
    ];
    let proxy = TestProxy::start(&url, &flags).await;
    let mut client = proxy.client().await;
    client.cmd(&["SET", "tls:seq", "v"]).await.expect_ok();

    let started = std::time::Instant::now();
    for _ in 0..2000 {
        assert_eq!(client.cmd(&["GET", "tls:seq"]).await, bulk("v"));
    }
    let shared = started.elapsed();

    // The same inside a transaction: a pinned TLS connection.
    client.cmd(&["MULTI"]).await.expect_ok();
    let started = std::time::Instant::now();
    for _ in 0..2000 {
        assert_eq!(
            client.cmd(&["GET", "tls:seq"]).await,
            Reply::Simple("QUEUED".into())
        );
    }
    let pinned = started.elapsed();
    let Reply::Array(replies) = client.cmd(&["EXEC"]).await else {
        panic!("EXEC answers an array");
    };
    assert_eq!(replies.len(), 2000);

    let bound = std::time::Duration::from_secs(50);
    assert!(
        shared < bound,
        "2 000 GETs over a rediss:// lane took {shared:?}"
    );
    assert!(
        pinned < bound,
        "2 000 commands over a pinned rediss:// connection took {pinned:?}"
    );
}
