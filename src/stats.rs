//! What the proxy has done, for `INFO respool` and `/metrics`: counters
//! (and latency histograms, per-command counts) kept per event loop and
//! summed when asked, so that counting never makes two loops' threads
//! share a cache line.
//!
//! The counters are the ones the Tuning advice rests on: how many requests
//! each write to Redis carries (write batching, `--max-connections`), how
//! often a dedicated connection was waited for in vain (`--max-pinned`),
//! how many clients the limit turned away (`--max-clients`), and how often
//! an upstream connection failed to connect or validate.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::error::ConnectError;
use crate::ops::commands::COMMAND_IDS;

/// A count that one event loop's thread adds to and any thread reads.
///
/// Adding is a plain load and store, not an atomic read-modify-write: only
/// the loop's own thread writes it (its tasks never run in parallel), so no
/// add is lost, and the hot path pays no locked instruction. A reader on
/// another thread sees a value at most a moment old.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only from the thread of the loop that owns the counter.
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Takes `n` off (a gauge). Only from the thread of the loop that owns
    /// the counter.
    pub fn sub(&self, n: u64) {
        self.add(n.wrapping_neg());
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Buckets of a [`Histogram`]: upper bounds of 16 µs × 2^i for i in
/// 0..=19 (16 µs … 8.4 s), and one for anything longer.
pub(crate) const BUCKETS: usize = 21;

/// The upper bound of bucket `i` in seconds (`None`: the last, unbounded).
pub(crate) fn bucket_bound(i: usize) -> Option<f64> {
    (i + 1 < BUCKETS).then(|| (16u64 << i) as f64 / 1e6)
}

/// A latency histogram that one event loop's thread records into, like a
/// [`Counter`]: fixed power-of-two buckets, so that recording is a shift
/// and two adds, with no lock and no search.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Observations per bucket (not cumulative).
    buckets: [Counter; BUCKETS],
    /// Their sum, in microseconds.
    sum_micros: Counter,
}

impl Histogram {
    /// Records `n` observations of `d` (a run of `n` requests answered
    /// together took `d` each).
    #[inline]
    pub fn record_n(&self, d: Duration, n: u64) {
        // Not `as_micros`: its u128 arithmetic costs more than the rest.
        // Wrapping is safe: a latency would have to exceed 500 000 years.
        let micros = d
            .as_secs()
            .wrapping_mul(1_000_000)
            .wrapping_add(u64::from(d.subsec_micros()));
        let i = (64 - (micros.saturating_sub(1) >> 4).leading_zeros()) as usize;
        self.buckets[i.min(BUCKETS - 1)].add(n);
        self.sum_micros.add(micros.wrapping_mul(n));
    }

    /// Adds this histogram's counts to `into`.
    pub fn add_to(&self, into: &mut HistogramTotals) {
        for (total, b) in into.buckets.iter_mut().zip(&self.buckets) {
            *total += b.get();
        }
        into.sum_micros += self.sum_micros.get();
    }
}

/// A histogram summed over event loops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistogramTotals {
    /// Observations per bucket (not cumulative).
    pub buckets: [u64; BUCKETS],
    /// Their sum, in microseconds.
    pub sum_micros: u64,
}

/// Counters per command id ([`crate::ops::commands`]): 256 of them, so
/// that an id taken as a byte needs no bounds check.
#[derive(Debug)]
pub(crate) struct PerCommand([Counter; 256]);

const _: () = assert!(COMMAND_IDS <= 256);

impl Default for PerCommand {
    fn default() -> PerCommand {
        PerCommand(std::array::from_fn(|_| Counter::default()))
    }
}

impl PerCommand {
    /// Adds one for command `id`.
    #[inline]
    pub fn add(&self, id: u16) {
        // Ids are below 256 (asserted above).
        self.0[usize::from(id as u8)].add(1);
    }

    /// Adds one for the command `name` (any case); for names longer than
    /// 8 bytes on the request path (the rest go by word, see
    /// `Client::count_command`).
    #[inline(never)]
    pub fn count(&self, name: &[u8]) {
        self.add(crate::ops::commands::command_id(name));
    }

    /// The sum over every command.
    pub fn total(&self) -> u64 {
        self.0[..COMMAND_IDS].iter().map(Counter::get).sum()
    }

    /// Adds the counts to `into` (one entry per id).
    pub fn add_to(&self, into: &mut [u64]) {
        for (total, c) in into.iter_mut().zip(self.0.iter()) {
            *total += c.get();
        }
    }
}

/// Request families for latency: a run of read-only requests, or one with
/// a write in it.
pub(crate) const FAMILIES: [&str; 2] = ["read", "write"];

/// Why requests were answered with an error by respool (see
/// [`LoopStats::requests_failed`]), as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailCause {
    /// The upstream was unavailable (or kept answering `-LOADING`, …) for
    /// the whole hold window.
    Unavailable,
    /// No reply within `--timeout`.
    Timeout,
    /// The connection was lost after the request was written, and the
    /// request may not be resent.
    LostAfterWrite,
    /// A read-only request lost its connection more than `--retries` times.
    RetriesExhausted,
    /// The upstream's reply stream was malformed.
    BadReply,
    /// A request held after `-LOADING` (…) was overtaken by a later request
    /// of its client that ran, and got its transient error as Redis gave it.
    Overtaken,
    /// respool was shutting down.
    ShuttingDown,
}

impl FailCause {
    /// Label values, by `FailCause as usize`.
    pub const LABELS: [&'static str; 7] = [
        "unavailable",
        "timeout",
        "lost_after_write",
        "retries_exhausted",
        "bad_reply",
        "overtaken",
        "shutting_down",
    ];
}

/// Steps of connecting and validating an upstream connection, as metric
/// labels ([`connect_step`]).
pub(crate) const CONNECT_STEPS: [&str; 9] = [
    "connect",
    "tls",
    "auth",
    "select",
    "ping",
    "probe",
    "info",
    "client_id",
    "other",
];

/// The step of [`CONNECT_STEPS`] at which a connection attempt failed.
pub(crate) fn connect_step(e: &ConnectError) -> usize {
    let step = match e {
        ConnectError::Refused | ConnectError::ConnectTimeout(_) | ConnectError::Io(_) => return 0,
        ConnectError::Tls(_) => return 1,
        ConnectError::CheckoutTimeout(_) => return 8,
        ConnectError::Rejected { step, .. }
        | ConnectError::Unexpected { step, .. }
        | ConnectError::StepTimeout { step, .. } => *step,
    };
    match step {
        "AUTH" | "HELLO 3" => 2,
        "SELECT" => 3,
        "PING" => 4,
        s if s.starts_with("probe") => 5,
        "INFO server" => 6,
        "CLIENT ID" => 7,
        _ => 8,
    }
}

/// What a scrape reads of one lane set's pools: kept by the lane set and
/// shared with its lanes, listed weakly in [`LoopStats::pools`].
pub(crate) trait PoolProbe: Send + Sync + std::fmt::Debug {
    /// The pool's figures now.
    fn snapshot(&self) -> PoolSnapshot;
}

/// One lane set's pools, at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct PoolSnapshot {
    /// The upstream node's `host:port`.
    pub upstream: Arc<str>,
    /// The identity its connections log in as.
    pub identity: Arc<str>,
    /// Shared lanes (`--max-connections`) of every protocol.
    pub lanes: u64,
    /// Lanes with a validated connection now.
    pub lanes_connected: u64,
    /// Validated connections idle in the lanes' pool (`--min-idle` spares).
    pub idle_spares: u64,
    /// Dedicated connections checked out by pinned sessions now.
    pub pinned_in_use: u64,
    /// Dedicated connections at most (`--max-pinned`, this loop's share).
    pub pinned_max: u64,
    /// Checkouts waiting for a connection now.
    pub waiters: u64,
}

/// The counters of one event loop.
#[derive(Debug, Default)]
pub(crate) struct LoopStats {
    /// Clients turned away by `--max-clients`.
    pub rejected_clients: Counter,
    /// Writes to Redis on the shared lanes.
    pub lane_writes: Counter,
    /// Requests those writes carried.
    pub lane_requests_written: Counter,
    /// Requests held after a transient error (`-LOADING`, `-BUSY`, …) to
    /// be resent after a backoff, each time one was.
    pub requests_held: Counter,
    /// Read-only requests resent after their connection broke with them
    /// written.
    pub requests_resent: Counter,
    /// Requests answered with an error because of the upstream: unavailable
    /// past `--hold-timeout`, no reply within `--timeout`, connection lost
    /// after the write, retries used up, still a transient error when the
    /// hold ended, or shutting down.
    pub requests_failed: Counter,
    /// Shared connections that broke (lost, timed out, bad reply).
    pub lane_connections_broken: Counter,
    /// Upstream connections that passed validation.
    pub upstream_connections: Counter,
    /// Upstream connection attempts that failed (connect, TLS or validation).
    pub upstream_connect_failures: Counter,
    /// Dedicated connections handed to clients.
    pub pinned_checkouts: Counter,
    /// Clients that waited `--checkout-timeout` for a dedicated connection in
    /// vain.
    pub pinned_checkout_failures: Counter,
    /// Client logins (AUTH passed through) the upstream accepted.
    pub logins: Counter,
    /// Identities with lanes open now, besides respool's own (a gauge).
    pub identities: Counter,
    /// Client logins refused (by the upstream, or unchecked in time).
    pub login_refusals: Counter,
    /// Requests read from clients (every command, whatever its route), by
    /// command id ([`crate::ops::commands`]).
    pub commands: PerCommand,
    /// Error replies by command id: Redis's on shared lanes, and respool's
    /// refusals (NOAUTH, a denied command).
    pub command_errors: PerCommand,
    /// [`LoopStats::requests_failed`] by [`FailCause`].
    pub failed_by_cause: [Counter; 7],
    /// Time on a shared lane by family ([`FAMILIES`]): from the lane taking
    /// a run of requests to handing its replies back.
    pub lane_latency: [Histogram; 2],
    /// The upstream round trip by family: from the write of a run to its
    /// last reply.
    pub upstream_latency: [Histogram; 2],
    /// How long checkouts waited: `[lanes, pinned]`.
    pub checkout_wait: [Histogram; 2],
    /// [`LoopStats::upstream_connect_failures`] by step ([`CONNECT_STEPS`]).
    pub connect_failures_by_step: [Counter; 9],
    /// Backoff delays a lane waited before connecting again.
    pub backoff_waits: Counter,
    /// Bytes read from clients.
    pub client_bytes_in: Counter,
    /// Bytes written to clients.
    pub client_bytes_out: Counter,
    /// Bytes read from Redis on shared lanes.
    pub upstream_bytes_in: Counter,
    /// Bytes written to Redis on shared lanes.
    pub upstream_bytes_out: Counter,
    /// The lane sets of the loop, for their pool gauges.
    pub pools: Mutex<Vec<Weak<dyn PoolProbe>>>,
    /// With `--cluster`: the loop's slot map and redirection counters.
    pub cluster: std::sync::OnceLock<Arc<crate::topology::cluster::ClusterLink>>,
}

impl LoopStats {
    /// Lists a lane set's pools for the scrapes, until it is dropped.
    pub fn add_pool(&self, probe: &Arc<dyn PoolProbe>) {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(probe));
    }

    /// Snapshots of the loop's lane sets' pools.
    pub fn pool_snapshots(&self) -> Vec<PoolSnapshot> {
        let pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools
            .iter()
            .filter_map(Weak::upgrade)
            .map(|p| p.snapshot())
            .collect()
    }
}

/// What the whole process counts: every event loop's counters, for the
/// process-wide sums, and the clients connected now, counted against
/// `--max-clients` by every loop alike.
#[derive(Debug)]
pub(crate) struct ProcessStats {
    started: Instant,
    loops: Mutex<Vec<Arc<LoopStats>>>,
    /// Clients connected now.
    pub connected_clients: AtomicUsize,
}

impl Default for ProcessStats {
    fn default() -> ProcessStats {
        ProcessStats {
            started: Instant::now(),
            loops: Mutex::default(),
            connected_clients: AtomicUsize::new(0),
        }
    }
}

/// The process-wide figures, summed over the event loops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Requests read from clients: the sum of [`LoopStats::commands`].
    pub requests: u64,
    /// See [`LoopStats::rejected_clients`].
    pub rejected_clients: u64,
    /// See [`LoopStats::lane_writes`].
    pub lane_writes: u64,
    /// See [`LoopStats::lane_requests_written`].
    pub lane_requests_written: u64,
    /// See [`LoopStats::requests_held`].
    pub requests_held: u64,
    /// See [`LoopStats::requests_resent`].
    pub requests_resent: u64,
    /// See [`LoopStats::requests_failed`].
    pub requests_failed: u64,
    /// See [`LoopStats::lane_connections_broken`].
    pub lane_connections_broken: u64,
    /// See [`LoopStats::upstream_connections`].
    pub upstream_connections: u64,
    /// See [`LoopStats::upstream_connect_failures`].
    pub upstream_connect_failures: u64,
    /// See [`LoopStats::pinned_checkouts`].
    pub pinned_checkouts: u64,
    /// See [`LoopStats::pinned_checkout_failures`].
    pub pinned_checkout_failures: u64,
    /// See [`LoopStats::logins`].
    pub logins: u64,
    /// See [`LoopStats::identities`].
    pub identities: u64,
    /// See [`LoopStats::login_refusals`].
    pub login_refusals: u64,
}

impl ProcessStats {
    /// Counters for a new event loop, counted in the sums from now on.
    pub fn register(&self) -> Arc<LoopStats> {
        let stats = Arc::new(LoopStats::default());
        self.loops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(stats.clone());
        stats
    }

    /// Every loop's counters, for `/metrics` to read.
    pub fn loops(&self) -> Vec<Arc<LoopStats>> {
        self.loops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Seconds since the registry was made (the proxy's start).
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The sums over every loop.
    pub fn totals(&self) -> Totals {
        let loops = self.loops.lock().unwrap_or_else(PoisonError::into_inner);
        let mut t = Totals::default();
        for s in loops.iter() {
            t.requests += s.commands.total();
            t.rejected_clients += s.rejected_clients.get();
            t.lane_writes += s.lane_writes.get();
            t.lane_requests_written += s.lane_requests_written.get();
            t.requests_held += s.requests_held.get();
            t.requests_resent += s.requests_resent.get();
            t.requests_failed += s.requests_failed.get();
            t.lane_connections_broken += s.lane_connections_broken.get();
            t.upstream_connections += s.upstream_connections.get();
            t.upstream_connect_failures += s.upstream_connect_failures.get();
            t.pinned_checkouts += s.pinned_checkouts.get();
            t.pinned_checkout_failures += s.pinned_checkout_failures.get();
            t.logins += s.logins.get();
            t.identities += s.identities.get();
            t.login_refusals += s.login_refusals.get();
        }
        t
    }
}

/// What `INFO respool` shows besides the counters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    /// The upstream's `host:port`.
    pub upstream: &'a str,
    /// Its version, once a connection has been validated.
    pub upstream_version: Option<&'a str>,
    /// Event loops running.
    pub event_loops: usize,
    /// Clients connected now.
    pub connected_clients: usize,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Reply bytes held for every client now (`--max-reply-memory`).
    pub reply_memory: usize,
    /// Clients disconnected to keep within `--max-reply-memory`.
    pub reply_memory_evictions: u64,
}

/// The body of `INFO respool`: a `# Respool` section in Redis's INFO
/// format (`field:value` lines, CRLF).
pub(crate) fn render(ctx: Context<'_>, t: Totals) -> String {
    let mut out = String::with_capacity(768);
    // Writing to a String cannot fail.
    let mut line = |name: &str, value: &dyn std::fmt::Display| {
        let _ = write!(out, "{name}:{value}\r\n");
    };
    line("respool_version", &env!("CARGO_PKG_VERSION"));
    line("uptime_in_seconds", &ctx.uptime_secs);
    line("event_loops", &ctx.event_loops);
    line("upstream", &ctx.upstream);
    line(
        "upstream_version",
        &ctx.upstream_version.unwrap_or("unknown"),
    );
    line("connected_clients", &ctx.connected_clients);
    line("reply_memory", &ctx.reply_memory);
    line("reply_memory_evictions", &ctx.reply_memory_evictions);
    line("rejected_clients", &t.rejected_clients);
    line("requests", &t.requests);
    line("lane_writes", &t.lane_writes);
    line("lane_requests_written", &t.lane_requests_written);
    let per_write = if t.lane_writes == 0 {
        0.0
    } else {
        t.lane_requests_written as f64 / t.lane_writes as f64
    };
    line("requests_per_lane_write", &format_args!("{per_write:.2}"));
    line("requests_held", &t.requests_held);
    line("requests_resent", &t.requests_resent);
    line("requests_failed", &t.requests_failed);
    line("lane_connections_broken", &t.lane_connections_broken);
    line("upstream_connections_validated", &t.upstream_connections);
    line("upstream_connect_failures", &t.upstream_connect_failures);
    line("pinned_checkouts", &t.pinned_checkouts);
    line("pinned_checkout_failures", &t.pinned_checkout_failures);
    line("identities", &t.identities);
    line("logins", &t.logins);
    line("login_refusals", &t.login_refusals);
    format!("# Respool\r\n{out}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_every_loop() {
        let registry = ProcessStats::default();
        let a = registry.register();
        let b = registry.register();
        a.commands.add(crate::ops::commands::command_id(b"GET"));
        a.commands.add(crate::ops::commands::command_id(b"SET"));
        a.commands.add(crate::ops::commands::OTHER);
        for _ in 0..4 {
            b.commands.add(crate::ops::commands::command_id(b"get"));
        }
        b.lane_writes.add(2);
        b.lane_requests_written.add(7);
        let t = registry.totals();
        assert_eq!(t.requests, 7);
        assert_eq!(t.lane_writes, 2);
        assert_eq!(t.lane_requests_written, 7);
        assert_eq!(t.rejected_clients, 0);
    }

    #[test]
    fn histogram_buckets_are_powers_of_two_from_16_micros() {
        let h = Histogram::default();
        let micros = |n| Duration::from_micros(n);
        // Upper bounds are inclusive, as Prometheus' `le`.
        for (d, bucket) in [
            (micros(0), 0),
            (micros(16), 0),
            (micros(17), 1),
            (micros(32), 1),
            (micros(33), 2),
            (micros(16 << 19), 19),
            (micros((16 << 19) + 1), 20),
            (Duration::from_secs(3600), 20),
            (Duration::from_secs(1_000_000), 20),
        ] {
            let mut before = HistogramTotals::default();
            h.add_to(&mut before);
            h.record_n(d, 2);
            let mut after = HistogramTotals::default();
            h.add_to(&mut after);
            assert_eq!(after.buckets[bucket] - before.buckets[bucket], 2, "{d:?}");
        }
        assert_eq!(bucket_bound(0), Some(16e-6));
        assert_eq!(bucket_bound(19), Some(8.388608));
        assert_eq!(bucket_bound(20), None);
    }

    #[test]
    fn connect_failures_name_their_step() {
        let rejected = |step| ConnectError::Rejected {
            step,
            reply: "ERR".into(),
        };
        assert_eq!(
            CONNECT_STEPS[connect_step(&ConnectError::Refused)],
            "connect"
        );
        assert_eq!(
            CONNECT_STEPS[connect_step(&ConnectError::Tls("x".into()))],
            "tls"
        );
        assert_eq!(CONNECT_STEPS[connect_step(&rejected("AUTH"))], "auth");
        assert_eq!(CONNECT_STEPS[connect_step(&rejected("HELLO 3"))], "auth");
        assert_eq!(CONNECT_STEPS[connect_step(&rejected("probe SET"))], "probe");
        assert_eq!(CONNECT_STEPS[connect_step(&rejected("PING"))], "ping");
        assert_eq!(CONNECT_STEPS[connect_step(&rejected("what"))], "other");
    }

    #[test]
    fn the_section_is_in_info_format() {
        let ctx = Context {
            upstream: "127.0.0.1:6379",
            upstream_version: Some("7.0.15"),
            event_loops: 1,
            connected_clients: 2,
            uptime_secs: 5,
            reply_memory: 0,
            reply_memory_evictions: 0,
        };
        let t = Totals {
            lane_writes: 4,
            lane_requests_written: 10,
            ..Totals::default()
        };
        let text = render(ctx, t);
        assert!(text.starts_with("# Respool\r\n"), "{text}");
        assert!(text.ends_with("\r\n"), "{text}");
        assert!(text.contains("\r\nupstream_version:7.0.15\r\n"), "{text}");
        assert!(
            text.contains("\r\nrequests_per_lane_write:2.50\r\n"),
            "{text}"
        );
        for line in text.lines().skip(1) {
            let (name, value) = line.split_once(':').expect("field:value");
            assert!(!name.is_empty() && !value.is_empty(), "{line}");
        }
    }
}
