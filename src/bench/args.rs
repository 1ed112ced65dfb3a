//! Command-line flags of `respool bench`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Flags of `respool bench`: what to load, how hard, and how to report it.
#[derive(Args, Debug, Clone)]
#[command(about = "Drive load against a RESP endpoint and verify every reply")]
pub struct BenchArgs {
    /// RESP endpoint to load: host:port, or redis://host:port, or
    /// rediss://host:port for TLS. Under --compare this is target A.
    #[arg(long, default_value = "127.0.0.1:6380", env = "RESPOOL_BENCH_TARGET")]
    pub target: String,

    /// Concurrent client connections; each keeps one pipeline batch in flight.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,

    /// Requests per batch: a batch is written in one write and all its replies
    /// are read before the next batch is sent.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pipeline: u32,

    /// Total requests to send (split evenly over the clients). Default when
    /// neither --requests nor --duration is given: 100000.
    #[arg(long, conflicts_with = "duration")]
    pub requests: Option<u64>,

    /// Run for this long instead of a request count, e.g. `250ms`, `2s`, `1m`.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Command mix to send.
    #[arg(long, value_enum, default_value_t = Workload::Set)]
    pub workload: Workload,

    /// Fraction of GETs in the `mixed` workload (the rest are SETs).
    #[arg(long, default_value_t = 0.8, value_parser = parse_ratio)]
    pub read_ratio: f64,

    /// Size in bytes of every value written (SET, LPUSH). Values are derived
    /// from the key, so a GET or LPOP reply can be verified exactly.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=(64 << 20)))]
    pub value_size: u32,

    /// Number of distinct keys; each request picks one uniformly at random.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000_000))]
    pub keyspace: u64,

    /// Prefix of every key the benchmark touches. Keys under it that were
    /// written with another --value-size show up as wrong replies, so give
    /// each concurrent or differently-sized run its own prefix.
    #[arg(long, default_value = "bench:")]
    pub key_prefix: String,

    /// Password sent with AUTH on every connection before the load starts.
    #[arg(long, env = "RESPOOL_BENCH_PASSWORD", hide_env_values = true)]
    pub password: Option<Password>,

    /// Print one JSON object on stdout instead of the human-readable table.
    #[arg(long)]
    pub json: bool,

    /// Load-generator threads. 1 (the default) runs every client on one
    /// current-thread runtime, like redis-benchmark, leaving the other cores
    /// to the proxy and Redis under test.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,

    /// How long each connection (and its AUTH) may take before the run is
    /// abandoned.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Seed of the random key choice; the same seed replays the same keys.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,

    /// Connect with TLS to every target: to a respool started with
    /// --tls-cert, or a Redis tls-port. (A rediss:// target uses TLS
    /// without it.)
    #[arg(long, conflicts_with = "sweep")]
    pub tls: bool,

    /// CA certificates (PEM) a TLS target's certificate must chain to,
    /// instead of the system's trust store.
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Client certificate chain (PEM), for TLS targets that require one
    /// (respool's --tls-ca, Redis's tls-auth-clients).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// The name a TLS target's certificate must carry (also sent as SNI),
    /// when it is not the target's host.
    #[arg(long)]
    pub tls_server_name: Option<String>,

    /// FOR TESTS ONLY: accept any certificate from a TLS target.
    #[arg(long, conflicts_with = "tls_ca")]
    pub tls_insecure: bool,

    /// Endpoint to compare with --target (A); repeatable (B, C, …). All are
    /// run in interleaved rounds A B C A B C …; the report gives each one's
    /// median and its ratios to A: ops/s ratio > 1 means it is faster than
    /// A, p99 ratio > 1 means it has the higher tail latency.
    #[arg(long)]
    pub compare: Vec<String>,

    /// Rounds per target under --compare.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,

    /// Sweep a respool flag over values, e.g. `max-connections=1,2,4,8,16`:
    /// for each value an in-process respool is started in front of
    /// --upstream and benchmarked. --target is ignored.
    #[arg(long, requires = "upstream", conflicts_with = "compare")]
    pub sweep: Option<SweepSpec>,

    /// Upstream Redis URL for the in-process respool started by --sweep.
    #[arg(long)]
    pub upstream: Option<String>,

    /// Where --sweep writes its chart of throughput and p99 per value.
    #[arg(long, default_value = "respool-sweep.svg")]
    pub svg: std::path::PathBuf,
}

/// Command mix sent by every client.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// `SET key value`; expects `+OK`.
    Set,
    /// `GET key`; expects nil or exactly the value this benchmark writes.
    Get,
    /// GET with probability --read-ratio, SET otherwise.
    Mixed,
    /// `INCR` of a counter key owned by the client; expects each reply to be
    /// exactly one more than the previous one.
    Incr,
    /// `LPUSH key value` then `LPOP key` on the same key; expects a length
    /// and then the value this benchmark pushes to that key (or nil).
    LpushLpop,
}

impl Workload {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Set => "set",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
            Workload::Incr => "incr",
            Workload::LpushLpop => "lpush-lpop",
        }
    }
}

/// A password that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The secret itself, for the AUTH command only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl FromStr for Password {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Password(s.to_owned()))
    }
}

/// `--sweep FLAG=V1,V2,…`: a respool flag (without its leading dashes) and
/// the values to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepSpec {
    /// Flag name, e.g. `max-connections`.
    pub flag: String,
    /// Values passed to the flag, one benchmark each.
    pub values: Vec<String>,
}

impl FromStr for SweepSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (flag, values) = s.split_once('=').ok_or_else(|| {
            format!("expected FLAG=V1,V2,… (e.g. max-connections=1,2,4), got `{s}`")
        })?;
        let flag = flag.trim().trim_start_matches("--");
        if flag.is_empty() || !flag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!("`{flag}` is not a flag name"));
        }
        let values: Vec<String> = values
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        if values.is_empty() {
            return Err("no values to sweep".to_owned());
        }
        Ok(SweepSpec {
            flag: flag.to_owned(),
            values,
        })
    }
}

/// Parses a duration with the proxy's own parser (`250ms`, `2s`, `1.5s`,
/// `1m`), refusing zero: a benchmark of no time measures nothing.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let duration = crate::config::parse_duration(s)?;
    if duration.is_zero() {
        return Err("duration must be greater than zero".to_owned());
    }
    Ok(duration)
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let ratio: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("{ratio} is not between 0 and 1"))
    }
}

/// `respool bench`'s flags as a command of their own, for tests in this
/// crate (`Cli::try_parse_from(["bench", …])`).
#[cfg(test)]
#[derive(clap::Parser)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub bench: BenchArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn sweep_spec_parses_flag_and_values() {
        let spec: SweepSpec = "max-connections=1,2, 4".parse().unwrap();
        assert_eq!(spec.flag, "max-connections");
        assert_eq!(spec.values, ["1", "2", "4"]);
        assert!("max-connections".parse::<SweepSpec>().is_err());
        assert!("max connections=1".parse::<SweepSpec>().is_err());
        assert!("max-connections=".parse::<SweepSpec>().is_err());
    }

    #[test]
    fn defaults_match_the_spec() {
        let cli = Cli::try_parse_from(["bench"]).unwrap();
        let args = cli.bench;
        assert_eq!(args.target, "127.0.0.1:6380");
        assert_eq!(args.clients, 50);
        assert_eq!(args.pipeline, 1);
        assert_eq!(args.value_size, 3);
        assert_eq!(args.keyspace, 100_000);
        assert_eq!(args.key_prefix, "bench:");
        assert_eq!(args.rounds, 3);
        assert_eq!(args.workload, Workload::Set);
        assert!(Cli::try_parse_from(["bench", "--requests", "5", "--duration", "1s"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--sweep", "max-connections=1"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--read-ratio", "1.5"]).is_err());
    }

    #[test]
    fn tls_flags_that_clap_refuses() {
        assert!(!Cli::try_parse_from(["bench"]).unwrap().bench.tls);
        assert!(Cli::try_parse_from(["bench", "--tls", "--tls-ca", "ca.pem"]).is_ok());
        // TLS flags without a TLS target are refused by `measure`, which
        // knows whether a rediss:// target asks for TLS.
        assert!(Cli::try_parse_from(["bench", "--tls-ca", "ca.pem"]).is_ok());
        for flags in [
            &["--tls", "--tls-cert", "c.pem"][..],
            &["--tls", "--tls-insecure", "--tls-ca", "ca.pem"],
            &[
                "--tls",
                "--sweep",
                "max-connections=1",
                "--upstream",
                "redis://h:1",
            ],
        ] {
            let args = [&["bench"][..], flags].concat();
            assert!(Cli::try_parse_from(&args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn password_is_redacted_in_debug() {
        let cli = Cli::try_parse_from(["bench", "--password", "hunter2"]).unwrap();
        let shown = format!("{:?}", cli.bench);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(cli.bench.password.unwrap().expose(), "hunter2");
    }
}
