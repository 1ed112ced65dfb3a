//! What the proxy has done, for `INFO respool`: counters kept per event
//! loop and summed when asked, so that counting never makes two loops'
//! threads share a cache line.
//!
//! The counters are the ones the Tuning advice rests on: how many requests
//! each write to Redis carries (write batching, `--max-connections`), how
//! often a dedicated connection was waited for in vain (`--max-pinned`),
//! how many clients the limit turned away (`--max-clients`), and how often
//! an upstream connection failed to connect or validate.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

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

/// The counters of one event loop.
#[derive(Debug, Default)]
pub(crate) struct LoopStats {
    /// Requests read from clients (every command, whatever its route).
    pub requests: Counter,
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
    /// See [`LoopStats::requests`].
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

    /// Seconds since the registry was made (the proxy's start).
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The sums over every loop.
    pub fn totals(&self) -> Totals {
        let loops = self.loops.lock().unwrap_or_else(PoisonError::into_inner);
        let mut t = Totals::default();
        for s in loops.iter() {
            t.requests += s.requests.get();
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
        a.requests.add(3);
        b.requests.add(4);
        b.lane_writes.add(2);
        b.lane_requests_written.add(7);
        let t = registry.totals();
        assert_eq!(t.requests, 7);
        assert_eq!(t.lane_writes, 2);
        assert_eq!(t.lane_requests_written, 7);
        assert_eq!(t.rejected_clients, 0);
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
