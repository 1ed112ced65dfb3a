//! A real Prometheus server for one test: started on a free loopback port
//! with a temporary config and storage directory, scraping the targets it
//! is given every 200 ms, and queried over its HTTP API. Dropping it kills
//! the process. Also a minimal HTTP/1 GET for the tests' own requests, and
//! `promtool`.
//!
//! The binaries come from `PATH` (Debian's `prometheus` package) or
//! `PROMETHEUS_BIN` / `PROMTOOL_BIN`; a missing one fails the test with the
//! install command, never skips it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::redis::free_port;
use super::wait;

/// `name` from `$ENV` or `PATH`; panics naming the package otherwise.
fn binary(name: &str, env: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` not found on PATH (nor {env} set): install it with \
             `apt-get install -y prometheus` (.ci/run does)"
        )
    })
}

/// A response: status code and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// Sends `request` (a whole HTTP/1 request, `Connection: close`) to `addr`
/// and reads the response to the end. `None` if the connection failed or
/// closed without a status line.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> Option<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    // A peer that closes early may refuse part of what we write: the
    // response (or its absence) is what the test looks at.
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Some(HttpResponse { status, body })
}

/// `GET path` on `addr`; `None` if nothing answered.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<HttpResponse> {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// The exposition respool's `/metrics` on `metrics` serves now; panics
/// if it does not answer 200.
pub fn scrape(metrics: SocketAddr) -> String {
    let response = http_get(metrics, "/metrics").expect("/metrics answers");
    assert_eq!(response.status, 200, "{}", response.body);
    response.body
}

/// The metric names an exposition declares (`# TYPE name kind`).
pub fn declared_names(exposition: &str) -> std::collections::BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The value of the exposition's line for exactly `series` (name and
/// labels as written), if there is one.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Runs `promtool` with `args` and `stdin`; its exit status and output.
pub fn promtool(args: &[&str], stdin: &[u8]) -> (bool, String) {
    let mut child = Command::new(binary("promtool", "PROMTOOL_BIN"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting promtool: {e}"));
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin)
            .unwrap_or_else(|e| panic!("writing to promtool: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for promtool: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A running Prometheus server.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`)
    /// as job `respool` every 200 ms, and waits until it is ready.
    pub fn start(targets: &[SocketAddr]) -> Prometheus {
        let bin = binary("prometheus", "PROMETHEUS_BIN");
        let dir = tempfile::Builder::new()
            .prefix("respool-prometheus-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir for prometheus: {e}"));
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\n\
             scrape_configs:\n  - job_name: respool\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)
            .unwrap_or_else(|e| panic!("writing the prometheus config: {e}"));
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .unwrap_or_else(|e| panic!("a loopback address: {e}"));
        let log = std::fs::File::create(dir.path().join("prometheus.log"))
            .unwrap_or_else(|e| panic!("creating the prometheus log: {e}"));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cloning the prometheus log handle: {e}"));
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut prometheus = Prometheus { child, addr, dir };
        wait::until("prometheus to be ready", Duration::from_secs(60), || {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!(
                    "prometheus exited ({status}) during start-up; log:\n{}",
                    prometheus.log()
                );
            }
            http_get(addr, "/-/ready").is_some_and(|r| r.status == 200)
        });
        prometheus
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The instant vector of `query`, as (labels, value) pairs; `None` if
    /// the API did not answer with success.
    pub fn query(&self, query: &str) -> Option<Vec<(serde_json::Value, f64)>> {
        let encoded =
            percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC);
        let response = http_get(self.addr, &format!("/api/v1/query?query={encoded}"))?;
        if response.status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&response.body).ok()?;
        if json["status"] != "success" {
            return None;
        }
        let series = json["data"]["result"].as_array()?;
        series
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str()?.parse::<f64>().ok()?;
                Some((s["metric"].clone(), value))
            })
            .collect()
    }

    /// The single value of `query`, if it has exactly one series.
    pub fn value(&self, query: &str) -> Option<f64> {
        match self.query(query)?.as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
