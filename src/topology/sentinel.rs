//! Following the primary through Sentinel.
//!
//! Every Sentinel is asked `SENTINEL MASTER <name>`; respool takes the
//! address named in the newest configuration epoch (by most Sentinels, if
//! they disagree within it), checks with `ROLE` that the server there says
//! it is a primary, and only then moves the followed address — a wrong
//! answer never gets writes (the validation gate's write probe would refuse
//! a replica too). It asks again at once when a Sentinel publishes
//! `+switch-master` (each Sentinel is subscribed to on a connection of its
//! own, reconnected with backoff), when a lane sees `-READONLY` (a demoted
//! primary), and every few seconds in case an event was missed. The last
//! primary found is kept while no Sentinel answers.
//!
//! A failover is followed from its start: when the Sentinel leading it
//! publishes `+failover-state-select-slave`, the primary's address is
//! suspended, so nothing more is sent to the old primary (whatever it
//! acknowledged after the promotion would be lost when it rejoins as a
//! replica); requests are held (within `--hold-timeout`) until
//! `+switch-master` names the new primary, or an abort gives the old one
//! back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::role::{ask_role, parse_sentinel_master, switched_to, Role, SentinelView};
use crate::codec::{Request, Value};
use crate::config::{PoolSettings, SentinelSettings};
use crate::error::ConnectError;
use crate::pool::connection::UpstreamConn;
use crate::pool::endpoint::{Endpoint, FollowedAddr, Node};
use crate::retry::BackoffPolicy;

/// How often the Sentinels are asked when nothing prompts it.
const ASK_EVERY: Duration = Duration::from_secs(5);
/// How often while no primary is known.
const ASK_EVERY_UNKNOWN: Duration = Duration::from_millis(500);
/// Least time between two rounds of questions (a burst of events is one).
const ASK_AT_MOST_EVERY: Duration = Duration::from_millis(50);
/// A subscription that hears nothing this long is made again (a Sentinel
/// behind a dead link would otherwise be silent forever).
const SILENT_FOR: Duration = Duration::from_secs(30);
/// The events that may mean the primary moved or is in trouble.
const EVENTS: [&str; 11] = [
    "+switch-master",
    "+odown",
    "-odown",
    "+sdown",
    "-sdown",
    FAILOVER_STARTS,
    "+failover-end",
    "+failover-end-for-timeout",
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
];
/// Published by the Sentinel leading a failover before it promotes a replica.
const FAILOVER_STARTS: &str = "+failover-state-select-slave";
/// How long a failover may last before the old primary is taken back if
/// the Sentinels still name it (an abort they did not publish).
const FAILOVER_PATIENCE: Duration = Duration::from_secs(60);

/// What `INFO respool` shows of the Sentinels.
#[derive(Debug, Default)]
pub(crate) struct SentinelState {
    /// Configuration epoch of the primary followed.
    pub epoch: AtomicU64,
    /// Switches to another primary seen since start.
    pub failovers: AtomicU64,
    /// Sentinels that answered the last round.
    pub answering: AtomicU64,
    /// The last disagreement or failure, not to repeat it in the log.
    last_problem: Mutex<Option<String>>,
}

impl SentinelState {
    /// Logs `problem` at warn the first time, at debug while it repeats.
    fn report(&self, problem: String) {
        let mut last = self
            .last_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.as_deref() == Some(problem.as_str()) {
            tracing::debug!(problem = %problem, "sentinel");
        } else {
            tracing::warn!(problem = %problem, "sentinel");
            *last = Some(problem);
        }
    }

    fn clear(&self) {
        self.last_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// See the module docs.
pub(crate) struct Follower {
    pub settings: SentinelSettings,
    /// Where the primary is; moved here, read by every connect.
    pub primary: Arc<FollowedAddr>,
    /// The primary's endpoint: its identity checks `ROLE`, with its TLS.
    pub upstream: Endpoint,
    pub pool: PoolSettings,
    pub backoff: BackoffPolicy,
    /// Asks for a round of questions now.
    pub refresh: Arc<Notify>,
    pub state: Arc<SentinelState>,
    /// A failover under way: the primary it started from, and when.
    pub failover: Mutex<Option<(Arc<str>, std::time::Instant)>>,
}

/// What a Sentinel's event says.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A failover of the master begins: stop sending to the primary.
    FailoverStarts,
    /// The failover was given up: the old primary stays.
    FailoverAborted,
    /// Something about the master changed: ask again.
    Changed,
}

impl Follower {
    /// Follows the primary until the task is dropped.
    pub async fn run(self) {
        let this = Arc::new(self);
        let mut watchers = JoinSet::new();
        for sentinel in &this.settings.sentinels {
            let (this, sentinel) = (this.clone(), sentinel.clone());
            watchers.spawn(async move { this.watch(sentinel).await });
        }
        loop {
            match this.discover().await {
                Ok(found) => this.apply(found),
                Err(problem) => {
                    this.primary.explain_unknown(&problem);
                    this.state.report(problem);
                }
            }
            let wait = if this.primary.current().is_some() {
                ASK_EVERY
            } else {
                ASK_EVERY_UNKNOWN
            };
            tokio::select! {
                () = this.refresh.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
            tokio::time::sleep(ASK_AT_MOST_EVERY).await;
        }
    }

    /// Moves to what the Sentinels said, if it is somewhere else; during a
    /// failover, only to another primary than the one it started from
    /// (until [`FAILOVER_PATIENCE`] has passed).
    fn apply(&self, found: SentinelView) {
        let master = &*self.settings.master;
        let mut failover = self.failover.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((from, since)) = &*failover {
            if **from == *found.addr && since.elapsed() < FAILOVER_PATIENCE {
                tracing::debug!(master, primary = %found.addr, "failover under way; the Sentinels still name the old primary");
                return;
            }
        }
        let from = failover.take().map(|(from, _)| from);
        drop(failover);
        self.state.epoch.store(found.epoch, Ordering::Relaxed);
        self.state.clear();
        match (self.primary.set(&found.addr), from) {
            (None, _) => {}
            (Some(Some(before)), _) | (Some(None), Some(before)) if *before != *found.addr => {
                self.state.failovers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(master, from = %before, to = %found.addr, epoch = found.epoch, "primary switched; moving the lanes to the new primary");
            }
            (Some(_), Some(_)) => {
                tracing::warn!(master, primary = %found.addr, "the failover did not happen; back to the same primary")
            }
            (Some(_), None) => {
                tracing::info!(master, primary = %found.addr, epoch = found.epoch, "primary found through Sentinel")
            }
        }
    }

    /// A failover began: nothing more goes to the old primary.
    fn failover_starts(&self) {
        let mut failover = self.failover.lock().unwrap_or_else(PoisonError::into_inner);
        if failover.is_some() {
            return;
        }
        let why = format!(
            "failover of master '{}' under way; requests wait for the new primary",
            self.settings.master
        );
        if let Some(from) = self.primary.suspend(&why) {
            tracing::warn!(master = %self.settings.master, from = %from, "failover started (Sentinel); holding requests until the new primary is known");
            *failover = Some((from, std::time::Instant::now()));
        }
    }

    /// One round of questions: every Sentinel at once, then the `ROLE` of
    /// the answer.
    async fn discover(&self) -> Result<SentinelView, String> {
        let asks = self
            .settings
            .sentinels
            .iter()
            .map(|s| async move { (s.clone(), self.ask(s).await) });
        let answers = futures_util::future::join_all(asks).await;
        let (views, failures): (Vec<_>, Vec<_>) = answers.into_iter().partition(|(_, r)| r.is_ok());
        self.state
            .answering
            .store(views.len() as u64, Ordering::Relaxed);
        let views: Vec<(Arc<str>, SentinelView)> = views
            .into_iter()
            .filter_map(|(s, r)| Some((s, r.ok()?)))
            .collect();
        if views.is_empty() {
            let why: Vec<String> = failures
                .into_iter()
                .filter_map(|(s, r)| Some(format!("{s}: {}", r.err()?)))
                .collect();
            return Err(format!(
                "no Sentinel answered for master '{}' ({})",
                self.settings.master,
                why.join("; ")
            ));
        }
        let chosen = choose(&views, self.primary.current().as_deref());
        if views.iter().any(|(_, v)| v.addr != chosen.addr) {
            let said: Vec<String> = views
                .iter()
                .map(|(s, v)| format!("{s} says {} (epoch {})", v.addr, v.epoch))
                .collect();
            self.state.report(format!(
                "Sentinels disagree about master '{}': {}; following {} (newest epoch, then most Sentinels)",
                self.settings.master,
                said.join(", "),
                chosen.addr
            ));
        }
        self.check_is_primary(&chosen.addr).await?;
        Ok(chosen)
    }

    /// What one Sentinel says about the master.
    async fn ask(&self, sentinel: &str) -> Result<SentinelView, String> {
        let mut conn = self
            .connect_sentinel(sentinel)
            .await
            .map_err(|e| e.to_string())?;
        let ask = Request::from_args(&["SENTINEL", "MASTER", &self.settings.master]);
        let replies = conn
            .exchange(&[ask], "SENTINEL MASTER", self.pool.connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let reply = replies.first().map(|r| &r[..]).unwrap_or_default();
        parse_sentinel_master(reply).ok_or_else(|| {
            let shown = String::from_utf8_lossy(&reply[..reply.len().min(120)]);
            format!(
                "SENTINEL MASTER {} answered {}",
                self.settings.master,
                shown.trim_end()
            )
        })
    }

    /// Checks that the server at `addr` says it is a primary.
    async fn check_is_primary(&self, addr: &str) -> Result<(), String> {
        let endpoint = Endpoint {
            node: node_at(addr, &self.upstream.node),
            ..self.upstream.clone()
        };
        let not_checked = |e: ConnectError| {
            format!("Sentinel names {addr} as primary, but it could not be checked: {e}")
        };
        let mut conn = UpstreamConn::open_logged_in(&endpoint, &self.pool)
            .await
            .map_err(not_checked)?;
        match ask_role(&mut conn, self.pool.connect_timeout)
            .await
            .map_err(not_checked)?
        {
            Some(Role::Primary(_)) => Ok(()),
            Some(Role::Replica { .. }) => Err(format!(
                "Sentinel names {addr} as primary, but it says it is a replica; keeping the primary followed until they agree"
            )),
            other => Err(format!("Sentinel names {addr} as primary, but its ROLE is {other:?}")),
        }
    }

    async fn connect_sentinel(&self, sentinel: &str) -> Result<UpstreamConn, ConnectError> {
        let mut node = Node::fixed(sentinel.into(), self.settings.tls.clone());
        node.tls_name_from_addr = true;
        let endpoint = Endpoint {
            node,
            identity: self.settings.identity.clone(),
            db: 0,
            probe_slot: None,
        };
        UpstreamConn::open_logged_in(&endpoint, &self.pool).await
    }

    /// Listens to one Sentinel's events, reconnecting with backoff.
    async fn watch(&self, sentinel: Arc<str>) {
        let mut backoff = self.backoff.delays();
        loop {
            match self.listen(&sentinel).await {
                Ok(()) => backoff = self.backoff.delays(),
                Err(e) => {
                    tracing::debug!(sentinel = %sentinel, error = %e, "sentinel subscription lost")
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Subscribes to the events and asks for a round of questions on each
    /// that concerns the master; `Ok` after a long silence (to subscribe
    /// afresh), an error when the connection fails.
    async fn listen(&self, sentinel: &str) -> Result<(), ConnectError> {
        let mut conn = self.connect_sentinel(sentinel).await?;
        let mut subscribe = vec!["SUBSCRIBE"];
        subscribe.extend(EVENTS);
        let request = Request::from_args(&subscribe);
        conn.exchange_raw(
            request.raw(),
            EVENTS.len(),
            "SUBSCRIBE",
            self.pool.connect_timeout,
        )
        .await?;
        // Whatever happened while not subscribed is asked about now.
        self.refresh.notify_one();
        loop {
            let frame = match tokio::time::timeout(SILENT_FOR, conn.next_frame()).await {
                Err(_) => return Ok(()),
                Ok(frame) => frame?,
            };
            match self.event(&frame) {
                Some(Event::FailoverStarts) => self.failover_starts(),
                Some(Event::FailoverAborted) => {
                    self.failover
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                    self.refresh.notify_one();
                }
                Some(Event::Changed) => self.refresh.notify_one(),
                None => {}
            }
        }
    }

    /// What a `message` on one of the events says about this master.
    fn event(&self, frame: &[u8]) -> Option<Event> {
        let mut items = Value::of_frame(frame).ok()?.elements()?;
        let (kind, channel, payload) = (items.next()?, items.next()?, items.next()?);
        if kind.bytes() != Some(b"message") {
            return None;
        }
        let (channel, payload) = (channel.bytes()?, payload.bytes()?);
        let master = &*self.settings.master;
        if channel == b"+switch-master" {
            return switched_to(payload, master).map(|_| Event::Changed);
        }
        // `master <name> <ip> <port>`, or `slave <addr> <ip> <port> @ <name> …`.
        let words: Vec<&[u8]> = payload.split(|&b| b == b' ').collect();
        let about_master =
            words.get(1) == Some(&master.as_bytes()) || words.get(5) == Some(&master.as_bytes());
        if !about_master {
            None
        } else if channel == FAILOVER_STARTS.as_bytes() {
            Some(Event::FailoverStarts)
        } else if channel.starts_with(b"-failover-abort") {
            Some(Event::FailoverAborted)
        } else {
            Some(Event::Changed)
        }
    }
}

/// The primary's endpoint as of now, for `--require-upstream`:
/// `--upstream`'s, or the one the Sentinels name (asked up to `--retries`
/// more times with backoff).
pub(crate) async fn primary_now(config: &crate::config::Config) -> Result<Endpoint, ConnectError> {
    let Some(settings) = &config.topology.sentinel else {
        return Ok(config.upstream.clone());
    };
    let mut like = config.upstream.node.clone();
    like.tls_name_from_addr = config.topology.discovered_tls_name;
    let follower = Follower {
        settings: settings.clone(),
        primary: Arc::new(FollowedAddr::unknown("", "")),
        upstream: Endpoint {
            node: like.clone(),
            ..config.upstream.clone()
        },
        pool: config.pool.clone(),
        backoff: config.retry.backoff,
        refresh: Arc::new(Notify::new()),
        state: Arc::new(SentinelState::default()),
        failover: Mutex::new(None),
    };
    let mut delays = config.retry.backoff.delays();
    let mut tries = 0;
    loop {
        match follower.discover().await {
            Ok(found) => {
                return Ok(Endpoint {
                    node: node_at(&found.addr, &like),
                    ..config.upstream.clone()
                })
            }
            Err(e) if tries >= config.retry.retries => return Err(ConnectError::Io(e.into())),
            Err(e) => tracing::warn!(error = %e, "primary not found yet"),
        }
        tries += 1;
        tokio::time::sleep(delays.next_delay()).await;
    }
}

/// The newest epoch's answer, by most Sentinels; on a tie, the primary
/// already followed if it is among them, else the first.
fn choose(views: &[(Arc<str>, SentinelView)], current: Option<&str>) -> SentinelView {
    let newest = views.iter().map(|(_, v)| v.epoch).max().unwrap_or(0);
    let mut counts: Vec<(&SentinelView, usize)> = Vec::new();
    for (_, view) in views.iter().filter(|(_, v)| v.epoch == newest) {
        match counts.iter_mut().find(|(v, _)| v.addr == view.addr) {
            Some((_, n)) => *n += 1,
            None => counts.push((view, 1)),
        }
    }
    let most = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let tied: Vec<&SentinelView> = counts
        .iter()
        .filter(|(_, n)| *n == most)
        .map(|(v, _)| *v)
        .collect();
    tied.iter()
        .find(|v| Some(v.addr.as_str()) == current)
        .or(tied.first())
        .map(|v| (*v).clone())
        .unwrap_or_else(|| views[0].1.clone())
}

/// A node at `addr` with the TLS of `like` (the certificate naming the
/// new address's host unless a name was configured).
pub(super) fn node_at(addr: &str, like: &Node) -> Node {
    let mut node = Node::fixed(addr.into(), like.tls.clone());
    node.tls_name_from_addr = like.tls_name_from_addr;
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(addr: &str, epoch: u64) -> (Arc<str>, SentinelView) {
        (
            "s".into(),
            SentinelView {
                addr: addr.into(),
                epoch,
            },
        )
    }

    #[test]
    fn the_newest_epoch_wins_then_the_majority() {
        let views = [view("a:1", 3), view("b:1", 4), view("a:1", 3)];
        assert_eq!(choose(&views, None).addr, "b:1");
        let views = [view("a:1", 4), view("b:1", 4), view("b:1", 4)];
        assert_eq!(choose(&views, Some("a:1")).addr, "b:1");
        let views = [view("a:1", 4), view("b:1", 4)];
        assert_eq!(
            choose(&views, Some("b:1")).addr,
            "b:1",
            "a tie keeps the current one"
        );
        assert_eq!(choose(&views, None).addr, "a:1");
    }
}
