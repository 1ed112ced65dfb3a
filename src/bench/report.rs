//! Turning measurements into the table a person reads or the JSON a script
//! reads.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::driver::{LoadResult, LoadSpec, MAX_EXAMPLES};
use super::workload::RequestPlan;
use crate::codec::Value;

/// Bytes of a value shown in a report before it is cut short.
const SHOWN_BYTES: usize = 48;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest request.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl LatencySummary {
    /// Reads the percentiles off a histogram recorded in microseconds.
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        LatencySummary {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    }
}

/// The outcome of one load run against one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Endpoint that was loaded.
    pub target: String,
    /// Workload name.
    pub workload: &'static str,
    /// Client connections.
    pub clients: u32,
    /// Requests per batch.
    pub pipeline: u32,
    /// Bytes per value.
    pub value_size: usize,
    /// Distinct keys.
    pub keyspace: u64,
    /// Replies received.
    pub requests: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// Replies per second.
    pub ops_per_sec: f64,
    /// Latency percentiles, microseconds.
    pub latency_us: LatencySummary,
    /// Replies of the wrong type or content.
    pub wrong_replies: u64,
    /// Error replies.
    pub error_replies: u64,
    /// Connections that failed mid-run.
    pub connection_errors: u64,
    /// First wrong replies.
    pub wrong_examples: Vec<String>,
    /// First error replies.
    pub error_examples: Vec<String>,
    /// First connection failures.
    pub connection_error_examples: Vec<String>,
}

impl LoadReport {
    /// Summarises `result`, measured with `spec`.
    pub fn new(spec: &LoadSpec, plan: &RequestPlan, result: LoadResult) -> Self {
        let requests = result.replies();
        let seconds = result.elapsed.as_secs_f64();
        let tally = result.tally;
        LoadReport {
            target: spec.target.clone(),
            workload: plan.workload().name(),
            clients: spec.clients,
            pipeline: spec.pipeline,
            value_size: plan.value_size(),
            keyspace: plan.keyspace(),
            requests,
            seconds,
            ops_per_sec: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            latency_us: LatencySummary::from_histogram(&result.latency),
            wrong_replies: tally.wrong,
            error_replies: tally.errors,
            connection_errors: tally.connection_errors,
            wrong_examples: tally.wrong_examples,
            error_examples: tally.error_examples,
            connection_error_examples: tally.connection_error_examples,
        }
    }

    /// True when every reply was correct and no connection failed.
    pub fn is_clean(&self) -> bool {
        self.failures() == 0
    }

    /// Wrong replies, error replies and failed connections, together.
    pub fn failures(&self) -> u64 {
        self.wrong_replies + self.error_replies + self.connection_errors
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_us;
        // Writing to a String cannot fail.
        let _ = writeln!(out, "target       {}", self.target);
        let _ = writeln!(
            out,
            "workload     {} · {} clients · pipeline {} · {}-byte values · {} keys",
            self.workload, self.clients, self.pipeline, self.value_size, self.keyspace
        );
        let _ = writeln!(
            out,
            "requests     {} in {:.3} s",
            self.requests, self.seconds
        );
        let _ = writeln!(out, "throughput   {:.0} ops/s", self.ops_per_sec);
        let _ = writeln!(
            out,
            "latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            format_micros(l.p50),
            format_micros(l.p90),
            format_micros(l.p99),
            format_micros(l.p999),
            format_micros(l.max)
        );
        let _ = writeln!(
            out,
            "replies      {} correct · {} wrong · {} errors · {} connection failures",
            self.requests - self.wrong_replies - self.error_replies,
            self.wrong_replies,
            self.error_replies,
            self.connection_errors
        );
        for (title, examples) in [
            ("wrong reply", &self.wrong_examples),
            ("error reply", &self.error_examples),
            ("connection failure", &self.connection_error_examples),
        ] {
            for example in examples {
                let _ = writeln!(out, "  {title}: {example}");
            }
        }
        out
    }
}

/// A latency for people: `87 µs`, `1.25 ms`, `2.50 s`.
pub fn format_micros(micros: u64) -> String {
    if micros < 1_000 {
        format!("{micros} µs")
    } else if micros < 1_000_000 {
        format!("{:.2} ms", micros as f64 / 1e3)
    } else {
        format!("{:.2} s", micros as f64 / 1e6)
    }
}

/// Bytes as a quoted, escaped string, cut after `SHOWN_BYTES`.
pub fn printable(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(SHOWN_BYTES)];
    let mut out = format!("\"{}\"", shown.escape_ascii());
    if bytes.len() > SHOWN_BYTES {
        let _ = write!(out, "… ({} bytes)", bytes.len());
    }
    out
}

/// A reply as it would look on the wire, for reports.
pub fn reply_summary(reply: &Value<'_>) -> String {
    match reply {
        Value::Simple(s) => format!("+{}", String::from_utf8_lossy(s)),
        Value::Error(e) => format!("-{}", String::from_utf8_lossy(e)),
        Value::Integer(i) => format!(":{}", String::from_utf8_lossy(i)),
        Value::Bulk(b) => format!("bulk {}", printable(b)),
        Value::Null => "nil".to_owned(),
        other => match other.elements() {
            Some(items) => format!("an aggregate of {}", items.len()),
            None => format!("{other:?}"),
        },
    }
}

/// The first [`MAX_EXAMPLES`] failures over several runs, one per line,
/// each prefixed with the run's target.
pub fn failure_examples<'a>(runs: impl Iterator<Item = &'a LoadReport>) -> String {
    let examples = runs.flat_map(|run| {
        run.wrong_examples
            .iter()
            .chain(&run.error_examples)
            .chain(&run.connection_error_examples)
            .map(move |example| (&run.target, example))
    });
    let mut out = String::new();
    for (target, example) in examples.take(MAX_EXAMPLES) {
        let _ = writeln!(out, "  {target}: {example}");
    }
    out
}

/// Median of `values` (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Median throughput and tail latency of one side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SideMedian {
    /// Median of the rounds' ops/s.
    pub ops_per_sec: f64,
    /// Median of the rounds' p99, microseconds.
    pub p99_us: f64,
}

impl SideMedian {
    /// Medians over `runs`.
    pub fn of(runs: &[&LoadReport]) -> Self {
        let ops: Vec<f64> = runs.iter().map(|r| r.ops_per_sec).collect();
        let p99: Vec<f64> = runs.iter().map(|r| r.latency_us.p99 as f64).collect();
        SideMedian {
            ops_per_sec: median(&ops),
            p99_us: median(&p99),
        }
    }
}

/// `--compare`: interleaved rounds against target (A) and each compare
/// endpoint (B, C, …).
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// Every endpoint: `--target` first, then each `--compare`.
    pub endpoints: Vec<String>,
    /// Every round, in the order run: one run per endpoint, in the order of
    /// `endpoints`.
    pub rounds: Vec<Vec<LoadReport>>,
    /// Medians over the rounds, per endpoint.
    pub medians: Vec<SideMedian>,
    /// Each endpoint's median divided by the target's (the target's own is
    /// 1): ops/s > 1 means faster than the target, p99 > 1 a higher tail.
    pub ratios_to_target: Vec<SideMedian>,
}

/// The label of endpoint `i` in tables: A, B, C, …
fn side_label(i: usize) -> char {
    char::from(b'A' + (i % 26) as u8)
}

impl CompareReport {
    /// Summarises `rounds` run against `endpoints` (each round holds one
    /// run per endpoint, in their order).
    pub fn new(endpoints: Vec<String>, rounds: Vec<Vec<LoadReport>>) -> Self {
        let medians: Vec<SideMedian> = (0..endpoints.len())
            .map(|i| {
                SideMedian::of(
                    &rounds
                        .iter()
                        .filter_map(|round| round.get(i))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let ratios_to_target = match medians.first() {
            Some(a) => medians
                .iter()
                .map(|m| SideMedian {
                    ops_per_sec: m.ops_per_sec / a.ops_per_sec,
                    p99_us: m.p99_us / a.p99_us,
                })
                .collect(),
            None => Vec::new(),
        };
        CompareReport {
            endpoints,
            rounds,
            medians,
            ratios_to_target,
        }
    }

    /// Every run, in order.
    pub fn runs(&self) -> impl Iterator<Item = &LoadReport> {
        self.rounds.iter().flatten()
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let flag = if i == 0 { "--target " } else { "--compare" };
            let _ = writeln!(out, "{} = {flag} {endpoint}", side_label(i));
        }
        let _ = write!(out, "{:<8}", "round");
        for i in 0..self.endpoints.len() {
            let label = side_label(i);
            let _ = write!(
                out,
                "{:>14}{:>12}",
                format!("{label} ops/s"),
                format!("{label} p99")
            );
        }
        let _ = writeln!(out, "{:>8}", "failed");
        for (n, round) in self.rounds.iter().enumerate() {
            let _ = write!(out, "{:<8}", n + 1);
            for run in round {
                let _ = write!(
                    out,
                    "{:>14.0}{:>12}",
                    run.ops_per_sec,
                    format_micros(run.latency_us.p99)
                );
            }
            let failed: u64 = round.iter().map(LoadReport::failures).sum();
            let _ = writeln!(out, "{failed:>8}");
        }
        let _ = write!(out, "{:<8}", "median");
        for m in &self.medians {
            let _ = write!(
                out,
                "{:>14.0}{:>12}",
                m.ops_per_sec,
                format_micros(m.p99_us as u64)
            );
        }
        out.push('\n');
        for (i, r) in self.ratios_to_target.iter().enumerate().skip(1) {
            let _ = writeln!(
                out,
                "{}/A     ops/s ×{:.3}   p99 ×{:.3}   (ops/s > 1: {0} faster; p99 > 1: {0} slower tail)",
                side_label(i),
                r.ops_per_sec,
                r.p99_us
            );
        }
        out.push_str(&failure_examples(self.runs()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ops: f64, p99: u64) -> LoadReport {
        let mut histogram = super::super::driver::new_histogram();
        for micros in 1..=1000 {
            histogram.record(micros).unwrap();
        }
        LoadReport {
            target: "127.0.0.1:1".into(),
            workload: "set",
            clients: 2,
            pipeline: 4,
            value_size: 3,
            keyspace: 10,
            requests: 1000,
            seconds: 0.5,
            ops_per_sec: ops,
            latency_us: LatencySummary {
                p99,
                ..LatencySummary::from_histogram(&histogram)
            },
            wrong_replies: 1,
            error_replies: 0,
            connection_errors: 0,
            wrong_examples: vec!["client 0: GET k → expected nil, got :1".into()],
            error_examples: vec![],
            connection_error_examples: vec![],
        }
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut histogram = super::super::driver::new_histogram();
        for micros in 1..=1000 {
            histogram.record(micros).unwrap();
        }
        let summary = LatencySummary::from_histogram(&histogram);
        assert_eq!(summary.p50, 500);
        assert_eq!(summary.p90, 900);
        assert_eq!(summary.p99, 990);
        assert_eq!(summary.p999, 999);
        assert_eq!(summary.max, 1000);
        assert!((summary.mean - 500.5).abs() < 0.5);
    }

    #[test]
    fn latencies_are_formatted_for_people() {
        assert_eq!(format_micros(87), "87 µs");
        assert_eq!(format_micros(1_250), "1.25 ms");
        assert_eq!(format_micros(2_500_000), "2.50 s");
        assert_eq!(printable(b"a\r\n"), "\"a\\r\\n\"");
        assert!(printable(&[b'x'; 100]).ends_with("… (100 bytes)"));
    }

    #[test]
    fn table_shows_numbers_and_wrong_replies() {
        let table = report(2000.0, 990).table();
        assert!(table.contains("throughput   2000 ops/s"), "{table}");
        assert!(table.contains("p99 990 µs"), "{table}");
        assert!(table.contains("999 correct · 1 wrong"), "{table}");
        assert!(table.contains("wrong reply: client 0: GET k"), "{table}");
    }

    #[test]
    fn json_is_one_object_with_the_numbers() {
        let json: serde_json::Value = serde_json::to_value(report(2000.0, 990)).unwrap();
        assert_eq!(json["ops_per_sec"], 2000.0);
        assert_eq!(json["latency_us"]["p99"], 990);
        assert_eq!(json["wrong_replies"], 1);
    }

    #[test]
    fn compare_ratios_are_each_side_over_a_of_the_medians() {
        let rounds = [
            (100.0, 10, 150.0, 5, 50.0),
            (300.0, 30, 100.0, 50, 150.0),
            (200.0, 20, 300.0, 40, 100.0),
        ]
        .into_iter()
        .map(|(a_ops, a_p99, b_ops, b_p99, c_ops)| {
            vec![
                report(a_ops, a_p99),
                report(b_ops, b_p99),
                report(c_ops, a_p99),
            ]
        })
        .collect();
        let compare = CompareReport::new(vec!["a".into(), "b".into(), "c".into()], rounds);
        assert_eq!(
            compare.medians[0],
            SideMedian {
                ops_per_sec: 200.0,
                p99_us: 20.0
            }
        );
        assert_eq!(
            compare.medians[1],
            SideMedian {
                ops_per_sec: 150.0,
                p99_us: 40.0
            }
        );
        assert_eq!(compare.ratios_to_target[0].ops_per_sec, 1.0);
        assert_eq!(compare.ratios_to_target[1].ops_per_sec, 0.75);
        assert_eq!(compare.ratios_to_target[1].p99_us, 2.0);
        assert_eq!(compare.ratios_to_target[2].ops_per_sec, 0.5);
        let table = compare.table();
        assert!(
            table.contains("B/A     ops/s ×0.750   p99 ×2.000"),
            "{table}"
        );
        assert!(
            table.contains("C/A     ops/s ×0.500   p99 ×1.000"),
            "{table}"
        );
        assert!(table.contains("C = --compare c"), "{table}");
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
