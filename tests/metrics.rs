//! `--metrics-listen`: a real Prometheus server scrapes respool and its
//! query API returns what a known load did; `promtool` accepts the
//! exposition; `/readyz` follows the upstream down and back; a hostile
//! HTTP peer costs nothing; the example dashboard and scrape config are
//! built on metrics that exist.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::prometheus::{
    declared_names, http_get, http_raw, promtool, sample, scrape, Prometheus,
};
use support::redis::free_port;
use support::{wait, RedisServer, TestProxy};

/// A proxy in front of `redis` serving its metrics on a free port.
async fn proxy_with_metrics(redis: &RedisServer, extra: &[&str]) -> (TestProxy, SocketAddr) {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("a loopback address");
    let listen = metrics.to_string();
    let mut flags = vec!["--metrics-listen", listen.as_str()];
    flags.extend_from_slice(extra);
    let proxy = TestProxy::start(&redis.url(), &flags).await;
    (proxy, metrics)
}

#[tokio::test]
async fn prometheus_scrapes_what_a_known_load_did() {
    const GETS: usize = 11;
    const SETS: usize = 7;
    let redis = RedisServer::start();
    let (proxy, metrics) = proxy_with_metrics(&redis, &[]).await;
    let mut client = proxy.client().await;
    for i in 0..SETS {
        client
            .cmd(&["SET", &format!("k{i}"), "v"])
            .await
            .expect_ok();
    }
    for i in 0..GETS {
        let reply = client.cmd(&["GET", &format!("k{i}")]).await;
        assert!(!reply.is_error(), "{reply:?}");
    }
    // An unknown command: one request and one error, both as `other`.
    client
        .cmd(&["NOSUCHCOMMAND", "x"])
        .await
        .expect_error_code("ERR");

    // The exposition itself: promtool's parser and linter accept it.
    let exposition = scrape(metrics);
    let (ok, report) = promtool(&["check", "metrics"], exposition.as_bytes());
    assert!(ok, "promtool check metrics: {report}\n{exposition}");
    for name in declared_names(&exposition) {
        assert!(name.starts_with("respool_"), "{name}");
    }
    assert_eq!(
        sample(&exposition, r#"respool_requests_total{command="get"}"#),
        Some(GETS as f64),
        "{exposition}"
    );

    // A real Prometheus scrapes it and answers queries about it.
    let prometheus = Prometheus::start(&[metrics]);
    let expect = |query: &str, value: f64| {
        let mut last = None;
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait::until(
                &format!("{query} == {value}"),
                Duration::from_secs(60),
                || {
                    last = prometheus.value(query);
                    last == Some(value)
                },
            )
        }));
        if waited.is_err() {
            panic!(
                "{query}: last answer {last:?}, expected {value}\nprometheus log:\n{}",
                prometheus.log()
            );
        }
    };
    expect(r#"up{job="respool"}"#, 1.0);
    expect(r#"respool_requests_total{command="get"}"#, GETS as f64);
    expect(r#"respool_requests_total{command="set"}"#, SETS as f64);
    expect(r#"respool_requests_total{command="other"}"#, 1.0);
    expect(r#"respool_request_errors_total{command="other"}"#, 1.0);
    expect(r#"sum(respool_request_errors_total)"#, 1.0);
    // Each GET was a run of its own on the lane: one observation each.
    expect(
        r#"respool_request_duration_seconds_count{family="read"}"#,
        GETS as f64,
    );
    expect(
        r#"respool_upstream_duration_seconds_count{family="read"}"#,
        GETS as f64,
    );
    expect(
        r#"respool_request_duration_seconds_bucket{family="write",le="+Inf"}"#,
        (SETS + 1) as f64,
    );
    expect(r#"respool_clients_connected"#, 1.0);
    expect(r#"respool_ready"#, 1.0);
    expect(r#"sum(respool_pool_lanes_connected)"#, 1.0);
    expect(r#"count(respool_build_info{version!=""})"#, 1.0);
    // histogram_quantile works on the buckets (over the whole run: a rate
    // needs a change between two scrapes).
    let p99 = prometheus.value(
        r#"histogram_quantile(0.99, sum by (le) (respool_request_duration_seconds_bucket))"#,
    );
    assert!(p99.is_some_and(f64::is_finite), "p99 {p99:?}");
    drop(prometheus);
    proxy.shutdown().await;
}

#[tokio::test]
async fn readyz_follows_the_upstream_down_and_back() {
    let redis = RedisServer::start();
    let (proxy, metrics) = proxy_with_metrics(&redis, &[]).await;
    let status = |path: &str| http_get(metrics, path).map(|r| r.status);
    let generous = Duration::from_secs(30);

    wait::until("/readyz 200 with the upstream up", generous, || {
        status("/readyz") == Some(200)
    });
    assert_eq!(status("/healthz"), Some(200));

    redis.kill();
    wait::until("/readyz 503 with the upstream down", generous, || {
        status("/readyz") == Some(503)
    });
    let response = http_get(metrics, "/readyz").expect("/readyz answers");
    assert!(
        response.body.contains("no validated upstream connection"),
        "{response:?}"
    );
    // The process still serves: liveness does not follow the upstream.
    assert_eq!(status("/healthz"), Some(200));
    assert_eq!(
        sample(&scrape(metrics), "respool_ready"),
        Some(0.0),
        "respool_ready while the upstream is down"
    );

    redis.restart();
    wait::until("/readyz 200 with the upstream back", generous, || {
        status("/readyz") == Some(200)
    });
    let mut client = proxy.client().await;
    client.cmd(&["SET", "after", "1"]).await.expect_ok();
    let exposition = scrape(metrics);
    assert!(
        sample(&exposition, "respool_upstream_connections_broken_total").is_some_and(|n| n >= 1.0),
        "{exposition}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn readyz_is_not_ready_while_paused_or_draining() {
    let redis = RedisServer::start();
    let (proxy, metrics) =
        proxy_with_metrics(&redis, &["--user", "ops:ops-pw", "--admin-user", "ops"]).await;
    let readyz = || http_get(metrics, "/readyz").expect("/readyz answers");
    let generous = Duration::from_secs(30);
    wait::until("/readyz 200", generous, || readyz().status == 200);
    let mut ops = proxy.client().await;
    ops.cmd(&["AUTH", "ops", "ops-pw"]).await.expect_ok();

    ops.cmd(&["RESPOOL", "PAUSE", "WRITE", "60s"])
        .await
        .expect_ok();
    let paused = readyz();
    assert_eq!(paused.status, 503, "{paused:?}");
    assert!(paused.body.contains("paused"), "{paused:?}");
    ops.cmd(&["RESPOOL", "RESUME"]).await.expect_ok();
    assert_eq!(readyz().status, 200);

    ops.cmd(&["RESPOOL", "DRAIN"]).await.expect_ok();
    let draining = readyz();
    assert_eq!(draining.status, 503, "{draining:?}");
    assert!(draining.body.contains("draining"), "{draining:?}");
    // Liveness: the process still serves.
    assert_eq!(http_get(metrics, "/healthz").map(|r| r.status), Some(200));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_hostile_http_peer_costs_nothing() {
    let redis = RedisServer::start();
    let (proxy, metrics) = proxy_with_metrics(&redis, &[]).await;

    // Headers far over the limit: refused (431) or cut off, never served.
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(200_000)
    );
    if let Some(r) = http_raw(metrics, huge.as_bytes()) {
        assert!(r.status == 431 || r.status == 400, "{r:?}");
    }
    // Garbage instead of a request line.
    for garbage in [
        &b"\x00\xff\x16\x03\x01 not http at all\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"*1\r\n$4\r\nPING\r\n",
    ] {
        if let Some(r) = http_raw(metrics, garbage) {
            assert!(r.status >= 400, "{garbage:?}: {r:?}");
        }
    }
    // Other methods and paths.
    let post = http_raw(
        metrics,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .expect("POST answered");
    assert_eq!(post.status, 405, "{post:?}");
    assert_eq!(http_get(metrics, "/nope").map(|r| r.status), Some(404));
    // Many idle connections that never send a byte: beyond the cap they
    // are closed, and once they go the endpoint serves again.
    let idle: Vec<std::net::TcpStream> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect(metrics).ok())
        .collect();
    drop(idle);

    wait::until("/healthz after the abuse", Duration::from_secs(30), || {
        http_get(metrics, "/healthz").is_some_and(|r| r.status == 200)
    });
    assert!(scrape(metrics).contains("respool_build_info"));
    // The Redis port never noticed.
    let mut client = proxy.client().await;
    assert_eq!(client.cmd(&["PING"]).await.as_str(), Some("PONG"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_flag_is_refused_on_the_client_port() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let error = respool::Config::parse_from_args([
        "respool",
        "--listen",
        &listen,
        "--metrics-listen",
        &listen,
    ])
    .expect_err("the same address twice");
    assert!(error.to_string().contains("--metrics-listen"), "{error}");
}

/// Every metric is documented, and the example dashboard and scrape
/// config use only metrics that exist.
#[tokio::test]
async fn docs_and_examples_name_only_real_metrics() {
    let redis = RedisServer::start();
    let (proxy, metrics) = proxy_with_metrics(&redis, &[]).await;
    let mut client = proxy.client().await;
    client.cmd(&["SET", "k", "v"]).await.expect_ok();
    let exposition = scrape(metrics);
    let names = declared_names(&exposition);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));

    let operations =
        std::fs::read_to_string(root.join("docs/operations.md")).expect("docs/operations.md");
    for name in &names {
        assert!(
            operations.contains(&format!("`{name}`")),
            "{name} is not documented in docs/operations.md (Metrics and health)"
        );
    }

    // Series a query may name: the declared names, and a histogram's.
    let mut known = names.clone();
    for name in &names {
        for suffix in ["_bucket", "_sum", "_count"] {
            known.insert(format!("{name}{suffix}"));
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("examples/grafana-dashboard.json"))
            .expect("examples/grafana-dashboard.json"),
    )
    .expect("the dashboard is valid JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "{exprs:?}");
    for expr in &exprs {
        let used = metric_names_in(expr);
        assert!(!used.is_empty(), "{expr}");
        for name in used {
            assert!(known.contains(&name), "{name} (in {expr}) is not exposed");
        }
    }
    let (ok, report) = promtool(
        &[
            "check",
            "config",
            root.join("examples/prometheus.yml")
                .to_str()
                .expect("utf-8"),
        ],
        b"",
    );
    assert!(
        ok,
        "promtool check config examples/prometheus.yml: {report}"
    );
    proxy.shutdown().await;
}

/// Every `expr` string in a Grafana dashboard.
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

/// The `respool_…` identifiers in a PromQL expression.
fn metric_names_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("respool_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}
