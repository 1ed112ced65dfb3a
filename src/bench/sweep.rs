//! `--sweep FLAG=V1,V2,…`: start a respool per value, benchmark it, chart it.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use serde::Serialize;

use super::args::SweepSpec;
use super::driver::{run_load, LoadSpec};
use super::report::{failure_examples, format_micros, LoadReport};
use super::svg::{self, Chart, Series};
use super::BenchError;
use crate::EventLoops;

/// Stops a launched proxy and waits until it has shut down.
pub type Shutdown = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A proxy started for one sweep point.
pub struct LaunchedProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// How to stop it.
    pub shutdown: Shutdown,
}

/// Starts a respool with extra flags, e.g. `["--max-connections", "4"]`.
///
/// The seam between the sweep and the proxy: [`InProcessRespool`] is the
/// real one, tests plug in their own.
pub trait ProxyLauncher {
    /// Starts a proxy listening on a free local port.
    fn launch(
        &self,
        extra_flags: &[String],
    ) -> impl Future<Output = Result<LaunchedProxy, BenchError>> + Send;
}

/// Launches respool in this process, in front of `upstream`.
#[derive(Debug, Clone)]
pub struct InProcessRespool {
    /// Upstream Redis URL (`--upstream`).
    pub upstream: String,
}

impl ProxyLauncher for InProcessRespool {
    async fn launch(&self, extra_flags: &[String]) -> Result<LaunchedProxy, BenchError> {
        let mut argv: Vec<String> = [
            "respool",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &self.upstream,
        ]
        .map(String::from)
        .to_vec();
        argv.extend_from_slice(extra_flags);
        let config =
            crate::Config::parse_from_args(&argv).map_err(|e| BenchError::Launch(e.to_string()))?;
        // The event loops the binary would run with these flags: several run
        // on threads of their own (so `--sweep threads=1,2,4` compares them);
        // one runs in this runtime, as the binary runs it on its own.
        let threads = config.event_loops();
        if threads > 1 {
            let loops = tokio::task::spawn_blocking(move || EventLoops::start(config, threads))
                .await
                .map_err(|e| BenchError::Launch(e.to_string()))?
                .map_err(BenchError::Launch)?;
            return Ok(LaunchedProxy {
                addr: loops.local_addr(),
                shutdown: Box::new(move || {
                    Box::pin(async move {
                        let _ = tokio::task::spawn_blocking(move || loops.stop()).await;
                    })
                }),
            });
        }
        let proxy = crate::Proxy::start(config)
            .await
            .map_err(|e| BenchError::Launch(e.to_string()))?;
        let addr = proxy.local_addr();
        Ok(LaunchedProxy {
            addr,
            shutdown: Box::new(move || Box::pin(proxy.shutdown())),
        })
    }
}

/// One benchmarked value of the swept flag.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    /// The flag's value.
    pub value: String,
    /// The run against the proxy started with it.
    pub report: LoadReport,
}

/// All points of a sweep and where its chart went.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// The swept flag, without dashes.
    pub flag: String,
    /// One point per value, in the order given.
    pub points: Vec<SweepPoint>,
    /// Where the SVG chart was written.
    pub svg: PathBuf,
}

/// Benchmarks one proxy per value of `spec`, using `load` (whose target is
/// replaced by each proxy's address) and writes the chart to `svg_path`.
pub async fn run_sweep(
    spec: &SweepSpec,
    launcher: &impl ProxyLauncher,
    load: &LoadSpec,
    svg_path: &Path,
) -> Result<SweepReport, BenchError> {
    let mut points = Vec::with_capacity(spec.values.len());
    for value in &spec.values {
        let proxy = launcher
            .launch(&[format!("--{}", spec.flag), value.clone()])
            .await?;
        let mut point_load = load.clone();
        point_load.target = proxy.addr.to_string();
        // Shut the proxy down whether or not the run succeeded.
        let result = run_load(point_load.clone()).await;
        (proxy.shutdown)().await;
        let mut report = LoadReport::new(&point_load, &load.plan, result?);
        report.target = format!("respool --{} {value} ({})", spec.flag, proxy.addr);
        points.push(SweepPoint {
            value: value.clone(),
            report,
        });
    }
    let report = SweepReport {
        flag: spec.flag.clone(),
        points,
        svg: svg_path.to_owned(),
    };
    std::fs::write(svg_path, report.svg()).map_err(|source| BenchError::WriteSvg {
        path: svg_path.to_owned(),
        source,
    })?;
    Ok(report)
}

impl SweepReport {
    /// The chart: throughput on the left axis, p99 in ms on the right.
    pub fn svg(&self) -> String {
        let categories: Vec<String> = self.points.iter().map(|p| p.value.clone()).collect();
        let ops: Vec<f64> = self.points.iter().map(|p| p.report.ops_per_sec).collect();
        let p99_ms: Vec<f64> = self
            .points
            .iter()
            .map(|p| p.report.latency_us.p99 as f64 / 1e3)
            .collect();
        let workload = self.points.first().map(|p| p.report.workload).unwrap_or("");
        let title = format!(
            "respool bench {workload}: throughput and p99 by --{}",
            self.flag
        );
        svg::render(&Chart {
            title: &title,
            x_title: &format!("--{}", self.flag),
            categories: &categories,
            left: Series {
                name: "throughput (ops/s)",
                color: "#1f77b4",
                values: &ops,
            },
            right: Series {
                name: "p99 latency (ms)",
                color: "#d62728",
                values: &p99_ms,
            },
        })
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<18}{:>14}{:>12}{:>12}{:>12}{:>8}",
            format!("--{}", self.flag),
            "ops/s",
            "p50",
            "p99",
            "max",
            "failed"
        );
        for point in &self.points {
            let r = &point.report;
            let _ = writeln!(
                out,
                "{:<18}{:>14.0}{:>12}{:>12}{:>12}{:>8}",
                point.value,
                r.ops_per_sec,
                format_micros(r.latency_us.p50),
                format_micros(r.latency_us.p99),
                format_micros(r.latency_us.max),
                r.failures()
            );
        }
        out.push_str(&failure_examples(self.points.iter().map(|p| &p.report)));
        let _ = writeln!(out, "chart written to {}", self.svg.display());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::args::Workload;
    use crate::bench::driver::tests::{fake_server, spec};
    use crate::bench::driver::StopAfter;
    use std::sync::{Arc, Mutex};

    /// "Launches" by handing out an already running fake server, and
    /// remembers the flags and shutdowns it saw.
    struct FakeLauncher {
        addr: SocketAddr,
        launched: Arc<Mutex<Vec<Vec<String>>>>,
        stopped: Arc<Mutex<usize>>,
    }

    impl ProxyLauncher for FakeLauncher {
        async fn launch(&self, extra_flags: &[String]) -> Result<LaunchedProxy, BenchError> {
            self.launched.lock().unwrap().push(extra_flags.to_vec());
            let stopped = self.stopped.clone();
            Ok(LaunchedProxy {
                addr: self.addr,
                shutdown: Box::new(move || {
                    Box::pin(async move {
                        *stopped.lock().unwrap() += 1;
                    })
                }),
            })
        }
    }

    #[tokio::test]
    async fn sweep_runs_one_proxy_per_value_and_writes_the_chart() {
        let addr = fake_server(b"+OK\r\n", None).await.parse().unwrap();
        let launcher = FakeLauncher {
            addr,
            launched: Arc::default(),
            stopped: Arc::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        let svg_path = dir.path().join("sweep.svg");
        let sweep: SweepSpec = "max-connections=1,2,4".parse().unwrap();
        let load = spec("unused", Workload::Set, StopAfter::Requests(40));
        let report = run_sweep(&sweep, &launcher, &load, &svg_path)
            .await
            .unwrap();

        assert_eq!(
            *launcher.launched.lock().unwrap(),
            [
                ["--max-connections", "1"],
                ["--max-connections", "2"],
                ["--max-connections", "4"]
            ]
        );
        assert_eq!(*launcher.stopped.lock().unwrap(), 3);
        assert!(report
            .points
            .iter()
            .all(|p| p.report.requests == 40 && p.report.is_clean()));
        let svg = std::fs::read_to_string(&svg_path).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(report.table().contains("--max-connections"));
    }

    #[tokio::test]
    async fn the_real_launcher_keeps_the_password_out_of_errors() {
        let launcher = InProcessRespool {
            upstream: "redis://user:secret@127.0.0.1:1".into(),
        };
        let Err(error) = launcher
            .launch(&["--max-connections".into(), "0".into()])
            .await
        else {
            panic!("--max-connections 0 must be refused");
        };
        assert!(error.to_string().contains("max-connections"), "{error}");
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    /// `--sweep threads=…` compares event loop counts, so the launcher must
    /// start as many loops as the flag says, as the binary does.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_real_launcher_runs_the_event_loops_threads_asks_for() {
        let loop_threads = || {
            let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .filter(|n| {
                    n.strip_prefix("respool-")
                        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect();
            names.sort();
            names
        };
        let launcher = InProcessRespool {
            upstream: "redis://127.0.0.1:1".into(),
        };
        let proxy = launcher
            .launch(&["--threads".into(), "3".into()])
            .await
            .expect("three loops start even with the upstream down");
        assert_eq!(loop_threads(), ["respool-0", "respool-1", "respool-2"]);
        for _ in 0..6 {
            let connected = tokio::net::TcpStream::connect(proxy.addr).await;
            assert!(connected.is_ok(), "{connected:?}");
        }
        (proxy.shutdown)().await;
        assert!(
            loop_threads().is_empty(),
            "loops left running: {:?}",
            loop_threads()
        );
    }

    #[tokio::test]
    async fn the_real_launcher_starts_a_listening_proxy() {
        let launcher = InProcessRespool {
            upstream: "redis://127.0.0.1:1".into(),
        };
        let proxy = launcher
            .launch(&[])
            .await
            .expect("proxy starts even with the upstream down");
        let connected = tokio::net::TcpStream::connect(proxy.addr).await;
        assert!(connected.is_ok(), "{connected:?}");
        (proxy.shutdown)().await;
    }
}
