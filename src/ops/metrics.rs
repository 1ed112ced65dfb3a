//! The Prometheus exposition: one collector that, at each scrape, sums the
//! event loops' counters ([`crate::stats::LoopStats`]), reads the gauges
//! (clients, reply memory, each lane set's pools) and writes them with
//! `prometheus-client`'s encoder. Nothing is recorded for `/metrics` alone:
//! `INFO respool` and the scrape read the same counters.
//!
//! Every name starts with `respool_`; the labels are bounded: command
//! names from [`super::commands`] (unknown ones are `other`), fixed causes
//! and steps, and one series per upstream node × identity.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::commands::{command_name, COMMAND_IDS};
use crate::server::Process;
use crate::stats::{
    bucket_bound, FailCause, HistogramTotals, LoopStats, PoolSnapshot, BUCKETS, CONNECT_STEPS,
    FAMILIES,
};

/// Distinct identities `respool_clients_by_identity` shows; the rest are
/// summed as `other`, so that many users cannot grow the scrape unbounded.
const MAX_IDENTITY_LABELS: usize = 100;

/// A registry with respool's collector, ready to encode.
pub(crate) fn registry(process: Arc<Process>) -> Registry {
    let mut registry = Registry::with_prefix("respool");
    registry.register_collector(Box::new(ProcessCollector { process }));
    registry
}

/// Encodes `registry` in the Prometheus text format (0.0.4).
pub(crate) fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(32 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

/// The content type of [`render`]'s output.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Reads the process's counters at scrape time.
#[derive(Debug)]
struct ProcessCollector {
    process: Arc<Process>,
}

/// The loops' counters, summed once per scrape.
#[derive(Default)]
struct Sums {
    commands: Vec<u64>,
    command_errors: Vec<u64>,
    failed_by_cause: [u64; FailCause::LABELS.len()],
    connect_failures_by_step: [u64; CONNECT_STEPS.len()],
    lane_latency: [HistogramTotals; 2],
    upstream_latency: [HistogramTotals; 2],
    checkout_wait: [HistogramTotals; 2],
    backoff_waits: u64,
    client_bytes_in: u64,
    client_bytes_out: u64,
    upstream_bytes_in: u64,
    upstream_bytes_out: u64,
    /// Pools by (upstream, identity), summed over loops.
    pools: BTreeMap<(Arc<str>, Arc<str>), PoolSnapshot>,
    /// With `--cluster`.
    cluster: Option<ClusterSums>,
}

/// The loops' cluster counters, summed; the map's shape as the first
/// loop sees it (every loop asks the same cluster).
#[derive(Default)]
struct ClusterSums {
    moved: u64,
    ask: u64,
    redirected: u64,
    refreshes: u64,
    refresh_failures: u64,
    epoch: u64,
    /// `(primaries, slots with a primary, map version)`.
    shape: Option<(usize, usize, u64)>,
}

impl Sums {
    fn of(loops: &[Arc<LoopStats>]) -> Sums {
        let mut s = Sums {
            commands: vec![0; COMMAND_IDS],
            command_errors: vec![0; COMMAND_IDS],
            ..Sums::default()
        };
        for l in loops {
            l.commands.add_to(&mut s.commands);
            l.command_errors.add_to(&mut s.command_errors);
            for (t, c) in s.failed_by_cause.iter_mut().zip(&l.failed_by_cause) {
                *t += c.get();
            }
            for (t, c) in s
                .connect_failures_by_step
                .iter_mut()
                .zip(&l.connect_failures_by_step)
            {
                *t += c.get();
            }
            for i in 0..2 {
                l.lane_latency[i].add_to(&mut s.lane_latency[i]);
                l.upstream_latency[i].add_to(&mut s.upstream_latency[i]);
                l.checkout_wait[i].add_to(&mut s.checkout_wait[i]);
            }
            s.backoff_waits += l.backoff_waits.get();
            s.client_bytes_in += l.client_bytes_in.get();
            s.client_bytes_out += l.client_bytes_out.get();
            s.upstream_bytes_in += l.upstream_bytes_in.get();
            s.upstream_bytes_out += l.upstream_bytes_out.get();
            if let Some(link) = l.cluster.get() {
                let c = s.cluster.get_or_insert_with(ClusterSums::default);
                let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
                let st = &link.stats;
                c.moved += load(&st.moved);
                c.ask += load(&st.ask);
                c.redirected += load(&st.redirected);
                c.refreshes += load(&st.refreshes);
                c.refresh_failures += load(&st.refresh_failures);
                c.epoch = c.epoch.max(load(&st.epoch));
                if c.shape.is_none() {
                    c.shape = link.shape();
                }
            }
            for p in l.pool_snapshots() {
                let sum = s
                    .pools
                    .entry((p.upstream.clone(), p.identity.clone()))
                    .or_default();
                sum.lanes += p.lanes;
                sum.lanes_connected += p.lanes_connected;
                sum.idle_spares += p.idle_spares;
                sum.pinned_in_use += p.pinned_in_use;
                sum.pinned_max += p.pinned_max;
                sum.waiters += p.waiters;
            }
        }
        s
    }
}

/// Writes one metric after another into the scrape.
struct Out<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl Out<'_> {
    fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        let mut m = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        m.encode_counter::<NoLabelSet, _, u64>(&value, None)
    }

    fn gauge(&mut self, name: &str, help: &str, value: i64) -> std::fmt::Result {
        let mut m = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        m.encode_gauge(&value)
    }

    /// A counter with one series per label set.
    fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, u64)>,
    ) -> std::fmt::Result {
        let mut m = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in series {
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }

    /// A gauge with one series per label set.
    fn gauges<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, i64)>,
    ) -> std::fmt::Result {
        let mut m = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in series {
            m.encode_family(&labels)?.encode_gauge(&value)?;
        }
        Ok(())
    }

    /// A histogram (in seconds) with one series per label set.
    fn histograms<'h, L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, &'h HistogramTotals)>,
    ) -> std::fmt::Result {
        let mut m = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in series {
            let buckets: [(f64, u64); BUCKETS] =
                std::array::from_fn(|i| (bucket_bound(i).unwrap_or(f64::INFINITY), h.buckets[i]));
            let count = h.buckets.iter().sum();
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                h.sum_micros as f64 / 1e6,
                count,
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let process = &self.process;
        let loops = process.stats.loops();
        let t = process.stats.totals();
        let s = Sums::of(&loops);
        let mut out = Out { encoder };
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);

        // The process.
        let build = out.encoder.encode_descriptor(
            "build",
            "respool's version (always 1).",
            None,
            MetricType::Info,
        )?;
        prometheus_client::metrics::info::Info::new([("version", env!("CARGO_PKG_VERSION"))])
            .encode(build)?;
        out.gauge(
            "uptime_seconds",
            "Seconds since respool started.",
            gauge(process.stats.uptime_secs()),
        )?;
        out.gauge(
            "event_loops",
            "Event loops running (--threads).",
            loops.len() as i64,
        )?;
        out.gauge(
            "ready",
            "1 while /readyz answers 200 (a validated upstream connection, not paused or draining).",
            i64::from(super::health::ready(process).is_ok()),
        )?;

        // Clients.
        let connected = process
            .stats
            .connected_clients
            .load(std::sync::atomic::Ordering::Relaxed);
        out.gauge(
            "clients_connected",
            "Clients connected now.",
            connected as i64,
        )?;
        out.counter(
            "clients_refused",
            "Clients turned away by --max-clients.",
            t.rejected_clients,
        )?;
        let by_identity = clients_by_identity(process);
        out.gauges(
            "clients_by_identity",
            "Clients connected now, by the identity their commands run as.",
            by_identity
                .iter()
                .map(|(user, n)| ([("identity", user.as_str())], *n)),
        )?;
        let memory = &process.roster.memory;
        out.gauge(
            "reply_memory_bytes",
            "Reply bytes held for clients now (--max-reply-memory).",
            memory.held() as i64,
        )?;
        out.counter(
            "reply_memory_evictions",
            "Clients disconnected to keep within --max-reply-memory.",
            memory.evictions(),
        )?;
        out.counter(
            "client_received_bytes",
            "Bytes read from clients.",
            s.client_bytes_in,
        )?;
        out.counter(
            "client_sent_bytes",
            "Bytes written to clients.",
            s.client_bytes_out,
        )?;

        // Requests.
        let names: Vec<[(&'static str, &str); 1]> = (0..COMMAND_IDS)
            .map(|id| [("command", command_name(id))])
            .collect();
        out.counters(
            "requests",
            "Requests read from clients, by command (unknown commands are 'other').",
            names
                .iter()
                .zip(&s.commands)
                .filter(|(_, n)| **n > 0)
                .map(|(l, n)| (&l[..], *n)),
        )?;
        out.counters(
            "request_errors",
            "Error replies by command: Redis's on shared lanes, and respool's refusals (NOAUTH, denied).",
            names
                .iter()
                .zip(&s.command_errors)
                .filter(|(_, n)| **n > 0)
                .map(|(l, n)| (&l[..], *n)),
        )?;
        let causes: Vec<[(&'static str, &str); 1]> =
            FailCause::LABELS.iter().map(|c| [("cause", *c)]).collect();
        out.counters(
            "requests_failed",
            "Requests respool answered with an error because of the upstream, by cause.",
            causes
                .iter()
                .zip(&s.failed_by_cause)
                .map(|(l, n)| (&l[..], *n)),
        )?;
        out.counter(
            "requests_held",
            "Requests held after a transient error (-LOADING, -BUSY, ...) to be resent after a backoff.",
            t.requests_held,
        )?;
        out.counter(
            "requests_resent",
            "Read-only requests resent after their connection broke with them written.",
            t.requests_resent,
        )?;
        let families: Vec<[(&'static str, &str); 1]> =
            FAMILIES.iter().map(|f| [("family", *f)]).collect();
        out.histograms(
            "request_duration_seconds",
            "Time on a shared lane per request, by family (read: a run of read-only commands): from the lane taking it to its reply handed back.",
            families
                .iter()
                .zip(&s.lane_latency)
                .map(|(l, h)| (&l[..], h)),
        )?;
        out.histograms(
            "upstream_duration_seconds",
            "The upstream round trip alone per request, by family: from the write to Redis to the reply.",
            families
                .iter()
                .zip(&s.upstream_latency)
                .map(|(l, h)| (&l[..], h)),
        )?;

        // Upstream connections.
        out.counter(
            "lane_writes",
            "Writes to Redis on the shared lanes.",
            t.lane_writes,
        )?;
        out.counter(
            "lane_requests_written",
            "Requests those writes carried.",
            t.lane_requests_written,
        )?;
        out.counter(
            "upstream_connections_validated",
            "Upstream connections that passed validation.",
            t.upstream_connections,
        )?;
        let steps: Vec<[(&'static str, &str); 1]> =
            CONNECT_STEPS.iter().map(|c| [("step", *c)]).collect();
        out.counters(
            "upstream_connect_failures",
            "Upstream connection attempts that failed, by the step that failed.",
            steps
                .iter()
                .zip(&s.connect_failures_by_step)
                .map(|(l, n)| (&l[..], *n)),
        )?;
        out.counter(
            "upstream_connections_broken",
            "Shared-lane connections that broke (lost, timed out, bad reply) and were replaced.",
            t.lane_connections_broken,
        )?;
        out.counter(
            "backoff_waits",
            "Backoff delays a lane waited before reconnecting.",
            s.backoff_waits,
        )?;
        out.counter(
            "upstream_received_bytes",
            "Bytes read from Redis on the shared lanes.",
            s.upstream_bytes_in,
        )?;
        out.counter(
            "upstream_sent_bytes",
            "Bytes written to Redis on the shared lanes.",
            s.upstream_bytes_out,
        )?;
        out.counter(
            "pinned_checkouts",
            "Dedicated connections handed to clients.",
            t.pinned_checkouts,
        )?;
        out.counter(
            "pinned_checkout_failures",
            "Clients that waited --checkout-timeout for a dedicated connection in vain.",
            t.pinned_checkout_failures,
        )?;
        out.gauge(
            "identities",
            "Identities with lanes open now, besides respool's own (AUTH passthrough).",
            gauge(t.identities),
        )?;
        out.counter(
            "logins",
            "Client logins (AUTH passed through) the upstream accepted.",
            t.logins,
        )?;
        out.counter(
            "login_refusals",
            "Client logins refused by the upstream, or unchecked in time.",
            t.login_refusals,
        )?;
        let pools: Vec<([(&'static str, &str); 2], &PoolSnapshot)> = s
            .pools
            .iter()
            .map(|((upstream, identity), p)| {
                (
                    [
                        ("upstream", upstream.as_ref()),
                        ("identity", identity.as_ref()),
                    ],
                    p,
                )
            })
            .collect();
        let pool_gauge =
            |f: fn(&PoolSnapshot) -> u64| pools.iter().map(move |(l, p)| (&l[..], gauge(f(p))));
        out.gauges(
            "pool_lanes",
            "Shared lanes (--max-connections, every protocol), by upstream node and identity.",
            pool_gauge(|p| p.lanes),
        )?;
        out.gauges(
            "pool_lanes_connected",
            "Shared lanes serving over a validated connection now.",
            pool_gauge(|p| p.lanes_connected),
        )?;
        out.gauges(
            "pool_idle_spares",
            "Validated spare connections idle in the lanes' pool (--min-idle).",
            pool_gauge(|p| p.idle_spares),
        )?;
        out.gauges(
            "pool_pinned_in_use",
            "Dedicated connections held by pinned sessions now.",
            pool_gauge(|p| p.pinned_in_use),
        )?;
        out.gauges(
            "pool_pinned_max",
            "Dedicated connections at most (--max-pinned).",
            pool_gauge(|p| p.pinned_max),
        )?;
        out.gauges(
            "pool_waiters",
            "Checkouts waiting for a connection now.",
            pool_gauge(|p| p.waiters),
        )?;
        if let Some(c) = &s.cluster {
            let (primaries, slots, version) = c.shape.unwrap_or_default();
            out.gauge(
                "cluster_primaries",
                "Primaries in the cluster's slot map (--cluster).",
                primaries as i64,
            )?;
            out.gauge(
                "cluster_slots_known",
                "Hash slots the slot map names a primary for (16384 when the cluster is whole).",
                slots as i64,
            )?;
            out.gauge(
                "cluster_map_version",
                "Times the slot map changed since start, as the first event loop saw it.",
                gauge(version),
            )?;
            out.gauge(
                "cluster_epoch",
                "The cluster's cluster_current_epoch, as the node last asked said.",
                gauge(c.epoch),
            )?;
            out.counter(
                "cluster_refreshes",
                "Slot-map refreshes done (periodic, after -MOVED, after a node's connection failed).",
                c.refreshes,
            )?;
            out.counter(
                "cluster_refresh_failures",
                "Slot-map refreshes in which no node answered.",
                c.refresh_failures,
            )?;
            out.counter(
                "cluster_moved",
                "-MOVED replies the lanes saw (a slot moved; the request was sent to its new owner).",
                c.moved,
            )?;
            out.counter(
                "cluster_ask",
                "-ASK replies the lanes saw (a slot being migrated; the request was sent behind ASKING).",
                c.ask,
            )?;
            out.counter(
                "cluster_redirected",
                "Requests a lane sent on to another primary's lane after -MOVED or -ASK.",
                c.redirected,
            )?;
        }
        let kinds = [[("pool", "lanes")], [("pool", "pinned")]];
        out.histograms(
            "checkout_wait_seconds",
            "How long checkouts waited for a connection: a lane (re)connecting, a pinned session starting.",
            kinds
                .iter()
                .zip(&s.checkout_wait)
                .map(|(l, h)| (&l[..], h)),
        )?;
        Ok(())
    }
}

/// Clients connected now by identity, at most [`MAX_IDENTITY_LABELS`]
/// of them by name (the most clients first), the rest as `other`.
fn clients_by_identity(process: &Process) -> Vec<(String, i64)> {
    let mut counts: BTreeMap<Arc<str>, i64> = BTreeMap::new();
    for member in process.roster.all() {
        *counts.entry(member.published().user.clone()).or_default() += 1;
    }
    let mut counts: Vec<(String, i64)> = counts
        .into_iter()
        .map(|(user, n)| (user.to_string(), n))
        .collect();
    if counts.len() > MAX_IDENTITY_LABELS {
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        let other: i64 = counts.drain(MAX_IDENTITY_LABELS..).map(|(_, n)| n).sum();
        counts.push(("other".into(), other));
    }
    counts
}
