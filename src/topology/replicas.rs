//! Reads from replicas (`--read-from`): which replicas there are, how far
//! behind the primary each one is, and which a read may go to.
//!
//! Every `--replica-check-interval`, one task asks the primary for its
//! `ROLE` (its replication offset and its replicas) and notes the offset
//! with the time, then asks each replica for its `ROLE` (its link and the
//! offset it has processed). A replica has *caught up to* the time of the
//! newest primary sample its offset has reached: everything the primary
//! had acknowledged by then, the replica has applied. A replica is usable
//! while its link is up and it has caught up to within `--max-replica-lag`
//! of now; one that does not answer a check in time is not.
//!
//! Read-your-writes: a client whose write was answered at `t` may read from
//! a replica only once that replica has caught up to `t` or later (the
//! primary's offset at a sample taken after `t` covers the write). A client
//! whose write is still unanswered reads from the primary.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::Notify;

use super::role::{ask_role, Role};
use super::sentinel::node_at;
use crate::config::{PoolSettings, ReplicaSettings};
use crate::pool::connection::UpstreamConn;
use crate::pool::endpoint::Endpoint;
use crate::pool::lane::LaneHandle;
use crate::pool::{LaneSet, PoolContext};

/// Primary samples kept, at most (a bound on memory whatever the flags).
const MAX_SAMPLES: usize = 4096;

/// A replica's state as the last check found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum State {
    /// Not checked yet, or its link to the primary is down (syncing).
    Syncing = 0,
    Usable = 1,
    /// Further behind than `--max-replica-lag`.
    Lagging = 2,
    /// Did not answer its check.
    Down = 3,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Syncing => "syncing",
            State::Usable => "ok",
            State::Lagging => "lagging",
            State::Down => "down",
        }
    }

    fn of(v: u8) -> State {
        match v {
            1 => State::Usable,
            2 => State::Lagging,
            3 => State::Down,
            _ => State::Syncing,
        }
    }
}

/// One replica: its lanes, and what the last check said.
pub(crate) struct Replica {
    pub addr: Arc<str>,
    lanes: LaneSet,
    state: AtomicU8,
    /// Microseconds after the set's clock base the replica has caught up
    /// to, plus one; 0: not known.
    caught_up_to: AtomicU64,
    /// Reads it was sent.
    reads: AtomicU64,
    /// No longer a replica of the primary.
    gone: AtomicBool,
}

impl Replica {
    /// A shared lane of this replica for a client speaking `protocol`.
    pub fn lane(&self, protocol: u8) -> LaneHandle {
        self.lanes.lane(protocol)
    }

    /// Counts a read sent to it.
    pub fn count_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }
}

/// See the module docs.
pub(crate) struct ReplicaSet {
    pub settings: ReplicaSettings,
    replicas: RwLock<Vec<Arc<Replica>>>,
    next: AtomicUsize,
    base: Instant,
    /// Reads that could have gone to a replica but went to the primary.
    pub reads_on_primary: AtomicU64,
}

impl ReplicaSet {
    pub fn new(settings: ReplicaSettings) -> ReplicaSet {
        ReplicaSet {
            settings,
            replicas: RwLock::default(),
            next: AtomicUsize::new(0),
            base: Instant::now(),
            reads_on_primary: AtomicU64::new(0),
        }
    }

    fn encode(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_micros() as u64 + 1
    }

    /// Whether `replica` may serve a read of a client whose last write was
    /// answered at `written` (if it wrote).
    pub fn serves(&self, replica: &Replica, written: Option<Instant>) -> bool {
        if replica.gone.load(Ordering::Relaxed)
            || State::of(replica.state.load(Ordering::Relaxed)) != State::Usable
        {
            return false;
        }
        written.is_none_or(|w| replica.caught_up_to.load(Ordering::Relaxed) >= self.encode(w))
    }

    /// A usable replica for a client whose last write was answered at
    /// `written`, taken in turn among those that are.
    pub fn choose(&self, written: Option<Instant>) -> Option<Arc<Replica>> {
        let replicas = self.replicas.read().unwrap_or_else(PoisonError::into_inner);
        let n = replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &replicas[(start + i) % n])
            .find(|r| self.serves(r, written))
            .cloned()
    }

    /// What `RESPOOL POOLS` shows of each replica's lanes.
    pub fn pool_views(&self) -> Vec<crate::pool::PoolView> {
        let replicas = self.replicas.read().unwrap_or_else(PoisonError::into_inner);
        replicas.iter().map(|r| r.lanes.view("replica")).collect()
    }

    /// `INFO respool` lines about the replicas.
    pub fn render(&self, out: &mut String) {
        let replicas = self.replicas.read().unwrap_or_else(PoisonError::into_inner);
        let now = self.encode(Instant::now());
        let _ = write!(out, "replicas:{}\r\n", replicas.len());
        for (i, r) in replicas.iter().enumerate() {
            let caught = r.caught_up_to.load(Ordering::Relaxed);
            let lag = if caught == 0 {
                "unknown".to_string()
            } else {
                (now.saturating_sub(caught) / 1000).to_string()
            };
            let _ = write!(
                out,
                "replica{i}:addr={},state={},lag_ms={lag},reads={}\r\n",
                r.addr,
                State::of(r.state.load(Ordering::Relaxed)).name(),
                r.reads.load(Ordering::Relaxed)
            );
        }
        let _ = write!(
            out,
            "reads_on_primary:{}\r\n",
            self.reads_on_primary.load(Ordering::Relaxed)
        );
    }
}

/// Keeps a [`ReplicaSet`] in step with the primary's replicas and their lag.
pub(crate) struct Checker {
    pub set: Arc<ReplicaSet>,
    /// The primary's endpoint (its node may be a followed one).
    pub primary: Endpoint,
    /// How replica lane sets are built (no write probe: replicas refuse
    /// writes).
    pub replica_ctx: Arc<PoolContext>,
    pub pool: PoolSettings,
    /// Asked when the primary turns out to be a replica (demoted).
    pub refresh: Arc<Notify>,
}

/// The checker's own connections and the primary's offset history.
#[derive(Default)]
struct Probes {
    primary: Option<UpstreamConn>,
    replicas: HashMap<Arc<str>, UpstreamConn>,
    /// (time, primary offset), oldest first.
    samples: VecDeque<(Instant, u64)>,
    /// The primary generation the samples belong to.
    generation: u64,
}

impl Checker {
    /// Checks until the task is dropped.
    pub async fn run(self) {
        let mut probes = Probes::default();
        let mut tick = tokio::time::interval(self.set.settings.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.check(&mut probes).await;
        }
    }

    async fn check(&self, probes: &mut Probes) {
        let now = Instant::now();
        if let Some((offset, listed)) = self.primary_role(probes).await {
            probes.samples.push_back((now, offset));
            self.sync(&listed);
        }
        let keep = self.set.settings.max_lag + self.set.settings.check_interval * 4;
        while probes.samples.len() > MAX_SAMPLES
            || probes
                .samples
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > keep)
        {
            probes.samples.pop_front();
        }
        let replicas: Vec<Arc<Replica>> = self
            .set
            .replicas
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut conns: Vec<(Arc<Replica>, Option<UpstreamConn>)> = replicas
            .into_iter()
            .map(|r| {
                let conn = probes.replicas.remove(&r.addr);
                (r, conn)
            })
            .collect();
        let wait = self
            .set
            .settings
            .check_interval
            .max(Duration::from_millis(200));
        let checks = conns
            .iter_mut()
            .map(|(r, conn)| self.replica_offset(r, conn, wait));
        let offsets = join_all(checks).await;
        probes.replicas.clear();
        for ((replica, conn), offset) in conns.into_iter().zip(offsets) {
            let state = match offset {
                None => State::Down,
                Some(None) => State::Syncing,
                Some(Some(offset)) => {
                    let samples = &probes.samples;
                    let reached = samples.partition_point(|(_, o)| *o <= offset);
                    if reached > 0 {
                        let at = samples[reached - 1].0;
                        replica
                            .caught_up_to
                            .store(self.set.encode(at), Ordering::Relaxed);
                    }
                    let caught = replica.caught_up_to.load(Ordering::Relaxed);
                    let lag_limit = self
                        .set
                        .encode(now)
                        .saturating_sub(self.set.settings.max_lag.as_micros() as u64);
                    if caught != 0 && caught >= lag_limit {
                        State::Usable
                    } else {
                        State::Lagging
                    }
                }
            };
            let before = State::of(replica.state.swap(state as u8, Ordering::Relaxed));
            if before != state {
                tracing::info!(replica = %replica.addr, from = before.name(), to = state.name(), "replica state changed");
            }
            if let Some(conn) = conn {
                probes.replicas.insert(replica.addr.clone(), conn);
            }
        }
    }

    /// The primary's offset and replicas; `None` when it cannot say (down,
    /// or not a primary any more: then the primary is looked for again).
    async fn primary_role(&self, probes: &mut Probes) -> Option<(u64, Vec<String>)> {
        let node = &self.primary.node;
        let stale = probes
            .primary
            .as_ref()
            .is_some_and(|c| c.broken || !node.is_current(c.generation));
        if stale {
            probes.primary = None;
        }
        if probes.primary.is_none() {
            let conn = UpstreamConn::open_logged_in(&self.primary, &self.pool)
                .await
                .ok()?;
            if conn.generation != probes.generation {
                // Another primary: its offsets are another history.
                probes.samples.clear();
                probes.generation = conn.generation;
            }
            probes.primary = Some(conn);
        }
        let conn = probes.primary.as_mut()?;
        match ask_role(conn, self.pool.connect_timeout).await.ok()? {
            Some(Role::Primary(p)) => Some((p.offset, p.replicas)),
            Some(Role::Replica { .. }) => {
                self.refresh.notify_one();
                probes.primary = None;
                None
            }
            _ => None,
        }
    }

    /// Adds the replicas the primary lists and drops those it no longer does.
    fn sync(&self, listed: &[String]) {
        let mut replicas = self
            .set
            .replicas
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        replicas.retain(|r| {
            let keep = listed.iter().any(|l| **l == *r.addr);
            if !keep {
                r.gone.store(true, Ordering::Relaxed);
                tracing::info!(replica = %r.addr, "replica left; reads no longer go to it");
            }
            keep
        });
        for addr in listed {
            if replicas.iter().any(|r| *r.addr == **addr) {
                continue;
            }
            tracing::info!(replica = %addr, "replica found");
            let endpoint = Endpoint {
                node: node_at(addr, &self.primary.node),
                ..self.primary.clone()
            };
            replicas.push(Arc::new(Replica {
                addr: addr.as_str().into(),
                lanes: LaneSet::open(endpoint, self.replica_ctx.clone()),
                state: AtomicU8::new(State::Syncing as u8),
                caught_up_to: AtomicU64::new(0),
                reads: AtomicU64::new(0),
                gone: AtomicBool::new(false),
            }));
        }
    }

    /// A replica's processed offset: `None` if it did not answer within
    /// `wait`, `Some(None)` if its link to the primary is down.
    async fn replica_offset(
        &self,
        replica: &Replica,
        conn: &mut Option<UpstreamConn>,
        wait: Duration,
    ) -> Option<Option<u64>> {
        let endpoint = Endpoint {
            node: node_at(&replica.addr, &self.primary.node),
            ..self.primary.clone()
        };
        let ask = async {
            if conn.as_ref().is_none_or(|c| c.broken) {
                *conn = Some(
                    UpstreamConn::open_logged_in(&endpoint, &self.pool)
                        .await
                        .ok()?,
                );
            }
            let c = conn.as_mut()?;
            match ask_role(c, wait).await.ok()? {
                Some(Role::Replica { connected, offset }) => Some(connected.then_some(offset)),
                _ => None,
            }
        };
        let answer = tokio::time::timeout(wait, ask).await.ok().flatten();
        if answer.is_none() {
            // A connection that timed out mid-exchange is in doubt.
            *conn = None;
        }
        answer
    }
}
