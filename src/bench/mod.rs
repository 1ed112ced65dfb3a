//! `respool bench`: a load generator for any RESP endpoint that checks every
//! reply it gets.
//!
//! - `args` — the flags ([`BenchArgs`]).
//! - `workload` — which commands are sent, encoded from byte templates,
//!   and what each reply must be.
//! - replies are read with the crate's own [`crate::codec::Value`].
//! - `driver` — client tasks: one connection each, one write per pipeline
//!   batch, exactly one checked reply per request, latency into an HDR
//!   histogram.
//! - `report` — tables and JSON for a run and for `--compare`.
//! - `sweep` / `svg` — `--sweep`: one in-process respool per flag value,
//!   and a chart of the results.
//!
//! A run [passes](BenchOutcome::passed) only if every reply was correct:
//! wrong replies, error replies and dropped connections are all counted,
//! reported with examples, and fail the run.

mod args;
mod driver;
mod report;
mod svg;
mod sweep;
mod workload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use crate::tls::{UpstreamTls, UpstreamTrust};
pub use args::{BenchArgs, Workload};
use driver::{run_load, LoadSpec, StopAfter};
use report::{CompareReport, LoadReport};
use sweep::{InProcessRespool, SweepReport};
use workload::RequestPlan;

/// Requests sent when neither `--requests` nor `--duration` is given.
const DEFAULT_REQUESTS: u64 = 100_000;

/// Why a benchmark could not run (as opposed to a run that found wrong
/// replies, which is a [`BenchOutcome`] that did not pass).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A client could not connect to the endpoint.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// The endpoint.
        target: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The endpoint refused the password.
    #[error("AUTH against {target} was refused: {reply}")]
    Auth {
        /// The endpoint.
        target: String,
        /// The reply to AUTH.
        reply: String,
    },
    /// The TLS settings could not be loaded (a file, a name).
    #[error("TLS setup for {target}: {reason}")]
    Tls {
        /// The endpoint.
        target: String,
        /// What is wrong.
        reason: String,
    },
    /// The load generator's own runtime or thread failed.
    #[error("load generator failure: {0}")]
    Runtime(std::io::Error),
    /// A `--sweep` proxy could not be started.
    #[error("cannot start respool for the sweep: {0}")]
    Launch(String),
    /// The sweep chart could not be written.
    #[error("cannot write {}: {source}", path.display())]
    WriteSvg {
        /// Where it was going.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// `--json` output could not be encoded.
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// What a benchmark measured, whichever mode it ran in.
#[derive(Debug, Clone)]
pub enum BenchOutcome {
    /// One run against `--target`.
    Single(LoadReport),
    /// `--compare`: interleaved rounds against several endpoints.
    Compare(CompareReport),
    /// `--sweep`: one run per flag value.
    Sweep(SweepReport),
}

impl BenchOutcome {
    /// Every run, in the order it ran.
    pub fn runs(&self) -> Vec<&LoadReport> {
        match self {
            BenchOutcome::Single(report) => vec![report],
            BenchOutcome::Compare(compare) => compare.runs().collect(),
            BenchOutcome::Sweep(sweep) => sweep.points.iter().map(|p| &p.report).collect(),
        }
    }

    /// True when every reply of every run was correct and no connection
    /// failed; the binary should exit non-zero otherwise.
    pub fn passed(&self) -> bool {
        self.runs().iter().all(|r| r.is_clean())
    }

    /// The human-readable report.
    pub fn table(&self) -> String {
        let mut out = match self {
            BenchOutcome::Single(report) => report.table(),
            BenchOutcome::Compare(compare) => compare.table(),
            BenchOutcome::Sweep(sweep) => sweep.table(),
        };
        if !self.passed() {
            out.push_str(
                "FAILED: some replies were wrong, errors, or lost connections (see above)\n",
            );
        }
        out
    }

    /// One JSON object; `mode` says which of the three shapes it is and
    /// `passed` whether every reply was correct.
    pub fn json(&self) -> Result<String, BenchError> {
        let (mode, mut value) = match self {
            BenchOutcome::Single(report) => ("single", serde_json::to_value(report)?),
            BenchOutcome::Compare(compare) => ("compare", serde_json::to_value(compare)?),
            BenchOutcome::Sweep(sweep) => ("sweep", serde_json::to_value(sweep)?),
        };
        if let serde_json::Value::Object(fields) = &mut value {
            fields.insert("mode".into(), mode.into());
            fields.insert("passed".into(), self.passed().into());
        }
        Ok(serde_json::to_string(&value)?)
    }
}

/// Runs `respool bench` and prints its report on stdout (a table, or one
/// JSON object with `--json`). Returns the outcome so the caller can set the
/// exit code from [`BenchOutcome::passed`].
pub async fn run(args: BenchArgs) -> Result<BenchOutcome, BenchError> {
    let outcome = measure(&args).await?;
    if args.json {
        println!("{}", outcome.json()?);
    } else {
        print!("{}", outcome.table());
    }
    Ok(outcome)
}

/// Runs the benchmark `args` describe, printing nothing but progress.
async fn measure(args: &BenchArgs) -> Result<BenchOutcome, BenchError> {
    check_tls_flags(args)?;
    let mut load = load_spec(args, &args.target);
    load.tls = tls_for(args, &args.target)?;
    if let Some(spec) = &args.sweep {
        let launcher = InProcessRespool {
            upstream: args.upstream.clone().unwrap_or_default(),
        };
        let report = sweep::run_sweep(spec, &launcher, &load, &args.svg).await?;
        return Ok(BenchOutcome::Sweep(report));
    }
    if !args.compare.is_empty() {
        let mut sides = vec![load];
        for compare in &args.compare {
            sides.push(LoadSpec {
                target: compare.clone(),
                tls: tls_for(args, compare)?,
                ..sides[0].clone()
            });
        }
        let mut rounds = Vec::with_capacity(args.rounds as usize);
        for _ in 0..args.rounds {
            let mut round = Vec::with_capacity(sides.len());
            for side in &sides {
                round.push(LoadReport::new(
                    side,
                    &side.plan,
                    run_load(side.clone()).await?,
                ));
            }
            rounds.push(round);
        }
        let endpoints = sides.into_iter().map(|side| side.target).collect();
        return Ok(BenchOutcome::Compare(CompareReport::new(endpoints, rounds)));
    }
    let result = run_load(load.clone()).await?;
    Ok(BenchOutcome::Single(LoadReport::new(
        &load, &load.plan, result,
    )))
}

/// The load described by `args`, aimed at `target`.
fn load_spec(args: &BenchArgs, target: &str) -> LoadSpec {
    let stop = match (args.requests, args.duration) {
        (_, Some(duration)) => StopAfter::Elapsed(duration),
        (Some(requests), None) => StopAfter::Requests(requests),
        (None, None) => StopAfter::Requests(DEFAULT_REQUESTS),
    };
    LoadSpec {
        target: target.to_owned(),
        clients: args.clients,
        pipeline: args.pipeline,
        stop,
        plan: Arc::new(RequestPlan::new(
            args.workload,
            args.read_ratio,
            args.keyspace,
            args.value_size as usize,
            &args.key_prefix,
        )),
        password: args.password.clone(),
        threads: args.threads,
        connect_timeout: args.connect_timeout,
        progress: std::io::stderr().is_terminal(),
        seed: args.seed,
        tls: None,
    }
}

/// A target's `host:port` and whether it is spoken to over TLS: `host:port`
/// and `redis://host:port` are plain (TLS with `--tls`), `rediss://host:port`
/// is TLS. Anything after the port (a database, credentials) is refused:
/// `--password` is the way to authenticate.
fn endpoint(target: &str) -> Result<(&str, bool), String> {
    if target.contains('@') {
        // Not echoed: what comes before the `@` may be a password.
        return Err(
            "credentials in the target are not accepted: give host:port and authenticate with --password".into(),
        );
    }
    let (addr, tls) = match target.split_once("://") {
        None => (target, false),
        Some(("redis", addr)) => (addr, false),
        Some(("rediss", addr)) => (addr, true),
        Some((scheme, _)) => {
            return Err(format!(
            "'{target}': use host:port, redis://host:port or rediss://host:port, not {scheme}://"
        ))
        }
    };
    if addr.contains('/') || !addr.contains(':') {
        return Err(format!(
            "'{target}': give host:port only (authenticate with --password)"
        ));
    }
    Ok((addr, tls))
}

/// [`endpoint`], with a refusal as the error `measure` reports.
fn checked_endpoint(target: &str) -> Result<(&str, bool), BenchError> {
    endpoint(target).map_err(|reason| BenchError::Tls {
        target: redacted(target),
        reason,
    })
}

/// `target` for an error message, without whatever precedes an `@`.
fn redacted(target: &str) -> String {
    match (target.split_once("://"), target.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
        (None, Some((_, host))) => format!("…@{host}"),
        _ => target.to_owned(),
    }
}

/// TLS flags without a TLS target are an error rather than silently ignored.
fn check_tls_flags(args: &BenchArgs) -> Result<(), BenchError> {
    let given = args.tls_ca.is_some()
        || args.tls_cert.is_some()
        || args.tls_server_name.is_some()
        || args.tls_insecure;
    let targets = std::iter::once(&args.target).chain(&args.compare);
    let mut any_tls = args.tls;
    for target in targets {
        let (_, tls) = checked_endpoint(target)?;
        any_tls |= tls;
    }
    if given && !any_tls && args.sweep.is_none() {
        return Err(BenchError::Tls {
            target: args.target.clone(),
            reason: "--tls-ca, --tls-cert, --tls-server-name and --tls-insecure apply to TLS targets only: add --tls, or name the target rediss://host:port".into(),
        });
    }
    Ok(())
}

/// The host part of a `host:port` address, without the port or IPv6
/// brackets: the name a TLS certificate must carry.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The TLS client settings for `target` when it is spoken to over TLS
/// (`--tls`, or a `rediss://` target; `None` otherwise): its certificate
/// must name its host, or `--tls-server-name`.
fn tls_for(args: &BenchArgs, target: &str) -> Result<Option<UpstreamTls>, BenchError> {
    let (addr, url_tls) = checked_endpoint(target)?;
    if !(args.tls || url_tls) {
        return Ok(None);
    }
    let name = args.tls_server_name.as_deref().unwrap_or(host_of(addr));
    let trust = match (&args.tls_ca, args.tls_insecure) {
        (Some(ca), _) => UpstreamTrust::Ca(ca),
        (None, true) => UpstreamTrust::Insecure,
        (None, false) => UpstreamTrust::System,
    };
    let client_cert = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
    UpstreamTls::load(name, trust, client_cert)
        .map(Some)
        .map_err(|reason| BenchError::Tls {
            target: target.to_owned(),
            reason,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use args::Cli;
    use clap::Parser;

    fn args(flags: &[&str]) -> BenchArgs {
        Cli::try_parse_from([&["bench"][..], flags].concat())
            .unwrap()
            .bench
    }

    #[test]
    fn targets_are_host_port_or_redis_urls() {
        assert_eq!(endpoint("127.0.0.1:6380"), Ok(("127.0.0.1:6380", false)));
        assert_eq!(endpoint("redis://cache:6379"), Ok(("cache:6379", false)));
        assert_eq!(endpoint("rediss://cache:6380"), Ok(("cache:6380", true)));
        assert_eq!(endpoint("rediss://[::1]:6380"), Ok(("[::1]:6380", true)));
        for bad in [
            "http://cache:6379",
            "redis://user:secret@cache:6379",
            "redis://cache:6379/2",
            "cache",
        ] {
            let error = endpoint(bad).unwrap_err();
            assert!(!error.contains("secret"), "{error}");
        }
        let e = check_tls_flags(&args(&["--target", "redis://u:secret@h:1"])).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("h:1"), "{e}");
    }

    #[test]
    fn tls_flags_need_a_tls_target() {
        let plain = args(&["--tls-ca", "ca.pem"]);
        let e = check_tls_flags(&plain).unwrap_err().to_string();
        assert!(e.contains("apply to TLS targets only"), "{e}");
        assert!(check_tls_flags(&args(&["--tls", "--tls-ca", "ca.pem"])).is_ok());
        assert!(check_tls_flags(&args(&["--target", "rediss://h:1", "--tls-insecure"])).is_ok());
        let mixed = [
            "--target",
            "redis://h:1",
            "--compare",
            "rediss://h:2",
            "--tls-ca",
            "ca.pem",
        ];
        assert!(check_tls_flags(&args(&mixed)).is_ok());
        assert!(check_tls_flags(&args(&["--target", "ftp://h:1"])).is_err());
    }
}
