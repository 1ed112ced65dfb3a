//! Every client of the process, as `CLIENT LIST`, `CLIENT KILL`, `CLIENT
//! UNBLOCK`, `CLIENT TRACKING … REDIRECT` and `CLIENT PAUSE` see them: ids,
//! names and addresses are respool's own, so these commands are answered in
//! respool's terms, not Redis's (whose clients are respool's connections).
//!
//! A client publishes what others may ask about it (its name, user,
//! protocol, pinned connection and session state) when that changes, never
//! per request; nothing here is on the request path but one atomic load for
//! the pause.

use crate::net::PeerAddr;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::inbox::ReplySender;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Roster {
    members: Mutex<BTreeMap<u64, Arc<Member>>>,
    /// Reply bytes held for every client, against `--max-reply-memory`.
    pub memory: Arc<ReplyMemory>,
    /// `CLIENT PAUSE` in force: checked before any request goes upstream.
    paused: AtomicBool,
    pause: Mutex<Option<Pause>>,
    /// Woken by `CLIENT UNPAUSE`.
    unpaused: Notify,
    /// Seconds since `clock_base`, kept by [`keep_time`]: what a client
    /// stamps its activity with, for `RESPOOL CLIENTS` (a load and a store
    /// per read, where a clock read would show at pipeline 1).
    clock: Arc<AtomicU64>,
    clock_base: Instant,
}

/// Keeps `roster`'s coarse clock (one tick a second) until the roster is
/// gone.
pub(crate) async fn keep_time(roster: Weak<Roster>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(roster) = roster.upgrade() else {
            return;
        };
        roster
            .clock
            .store(roster.clock_base.elapsed().as_secs(), Ordering::Relaxed);
    }
}

/// Reply bytes held for every client of the process — received from the
/// upstream, not yet written to the client — against `--max-reply-memory`.
/// Past it, the client holding the most is disconnected, as Redis's
/// `maxmemory-clients` evicts the biggest client; the next one only if the
/// total stays over the budget even without what the clients already
/// chosen hold (their memory is freed when their tasks end, which on a
/// busy machine may take a while, while the others keep receiving).
#[derive(Debug)]
pub(crate) struct ReplyMemory {
    held: AtomicUsize,
    limit: Option<usize>,
    /// Reply bytes of the clients chosen and not gone yet (as they held
    /// when chosen).
    dying: AtomicUsize,
    /// Held while a victim is chosen: one at a time.
    choosing: std::sync::Mutex<()>,
    evictions: AtomicU64,
    /// Where the biggest client is found.
    roster: Weak<Roster>,
}

impl ReplyMemory {
    /// Memory counted nowhere else, with no limit: for the replies respool
    /// asks for on its own account.
    pub fn detached() -> ReplyMemory {
        ReplyMemory::of(None, Weak::new())
    }

    fn of(limit: Option<usize>, roster: Weak<Roster>) -> ReplyMemory {
        ReplyMemory {
            held: AtomicUsize::new(0),
            limit,
            dying: AtomicUsize::new(0),
            choosing: std::sync::Mutex::new(()),
            evictions: AtomicU64::new(0),
            roster,
        }
    }

    /// Bytes held now, for every client.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Clients disconnected to keep within the budget.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// A client holds `n` more bytes.
    #[inline]
    pub fn added(&self, n: usize) {
        let total = self.held.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        if self.limit.is_some_and(|limit| total > limit) {
            self.evict_biggest(total);
        }
    }

    /// A client holds `n` fewer bytes.
    #[inline]
    pub fn released(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }

    /// A client chosen to free memory has gone; it held `bytes` when
    /// chosen.
    pub fn victim_gone(&self, bytes: usize) {
        self.dying.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Over budget: disconnects the client holding the most, unless the
    /// clients already on their way out will bring the total back within
    /// it.
    #[cold]
    fn evict_biggest(&self, total: usize) {
        let Some(limit) = self.limit else { return };
        if total.saturating_sub(self.dying.load(Ordering::Acquire)) <= limit {
            return;
        }
        let Ok(_choosing) = self.choosing.try_lock() else {
            // Another thread is choosing one now.
            return;
        };
        let victim = self.roster.upgrade().and_then(|roster| {
            roster
                .all()
                .into_iter()
                .filter(|m| !m.replies.is_doomed())
                .max_by_key(|m| m.replies.held())
                .filter(|m| m.replies.held() > 0)
        });
        let Some(victim) = victim else { return };
        let bytes = victim.replies.held();
        // Counted before the client is marked, so that its leaving (which
        // takes `bytes` off again) can never come first.
        self.dying.fetch_add(bytes, Ordering::AcqRel);
        if victim.replies.doom(bytes) {
            self.evictions.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                client = victim.id,
                addr = ?victim.addr,
                held_bytes = bytes,
                total_bytes = total,
                "reply memory (--max-reply-memory) exceeded; disconnecting the client holding the most"
            );
            victim.kill.cancel();
        } else {
            self.dying.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

/// A `CLIENT PAUSE` in force.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pause {
    pub until: Instant,
    /// `WRITE`: only writes wait; `ALL` (the default): everything.
    pub writes_only: bool,
}

/// One client, as others see it.
#[derive(Debug)]
pub(crate) struct Member {
    pub id: u64,
    addr: Option<PeerAddr>,
    laddr: Option<PeerAddr>,
    fd: i32,
    created: Instant,
    /// Cancelled by `CLIENT KILL`: the client closes at once.
    kill: CancellationToken,
    /// Its replies' budget: what it holds (`omem`, `--max-reply-memory`).
    replies: ReplySender,
    state: Mutex<Published>,
    /// Requests in flight (not answered or not written yet), as of the
    /// client's last turn.
    pending: AtomicUsize,
    /// The roster's coarse clock when the client last sent something.
    last_active: AtomicU64,
    clock: Arc<AtomicU64>,
}

/// What a client publishes about itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct Published {
    pub name: Option<Bytes>,
    /// The user its commands run as.
    pub user: Arc<str>,
    pub resp: u8,
    pub db: u32,
    /// The upstream's id of its pinned connection, while it has one (and
    /// the connection's `CLIENT ID` was allowed at validation).
    pub pinned_upstream_id: Option<u64>,
    /// Subscriptions: channels, patterns, shard channels.
    pub subscriptions: [usize; 3],
    /// In a transaction.
    pub multi: bool,
    /// Waiting on a blocking command.
    pub blocked: bool,
}

/// What `CLIENT KILL` matches (its filter form).
#[derive(Debug, Default)]
pub(crate) struct KillFilter {
    pub id: Option<u64>,
    pub addr: Option<String>,
    pub laddr: Option<String>,
    pub user: Option<String>,
    /// `TYPE pubsub`; `TYPE normal` matches the others; master/replica none.
    pub kind: Option<ClientKind>,
    pub max_age: Option<Duration>,
    /// Spares the caller (the default).
    pub skip_me: bool,
}

/// A `CLIENT KILL TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientKind {
    Normal,
    Pubsub,
    /// `master`, `replica`, `slave`: none of respool's clients is one.
    Replication,
}

/// Where a client is, and how it is reached: what [`Roster::join`] needs.
pub(crate) struct Joining {
    pub id: u64,
    pub addr: Option<PeerAddr>,
    pub laddr: Option<PeerAddr>,
    pub fd: i32,
    pub kill: CancellationToken,
    pub replies: ReplySender,
}

impl Roster {
    /// A roster whose clients hold at most `max_reply_memory` reply bytes
    /// together (`None`: unlimited).
    pub fn new(max_reply_memory: Option<usize>) -> Arc<Roster> {
        Arc::new_cyclic(|roster| Roster {
            members: Mutex::default(),
            memory: Arc::new(ReplyMemory::of(max_reply_memory, roster.clone())),
            paused: AtomicBool::new(false),
            pause: Mutex::default(),
            unpaused: Notify::new(),
            clock: Arc::default(),
            clock_base: Instant::now(),
        })
    }

    /// Enters a new client; [`Roster::leave`] takes it off.
    pub fn join(&self, joining: Joining, state: Published) -> Arc<Member> {
        let Joining {
            id,
            addr,
            laddr,
            fd,
            kill,
            replies,
        } = joining;
        let member = Arc::new(Member {
            id,
            addr,
            laddr,
            fd,
            created: Instant::now(),
            kill,
            replies,
            state: Mutex::new(state),
            pending: AtomicUsize::new(0),
            last_active: AtomicU64::new(self.clock.load(Ordering::Relaxed)),
            clock: self.clock.clone(),
        });
        self.lock().insert(id, member.clone());
        member
    }

    /// Takes a client off the roster.
    pub fn leave(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Member>>> {
        // Nothing panics while holding it; a poisoned map is intact.
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A client by id.
    pub fn get(&self, id: u64) -> Option<Arc<Member>> {
        self.lock().get(&id).cloned()
    }

    /// Every client, by id.
    pub fn all(&self) -> Vec<Arc<Member>> {
        self.lock().values().cloned().collect()
    }

    /// Kills the clients `filter` matches, except `caller` when asked to
    /// skip it; how many matched, and whether the caller is among them.
    pub fn kill(&self, filter: &KillFilter, caller: u64) -> (usize, bool) {
        let now = Instant::now();
        let mut killed = 0;
        let mut me = false;
        for member in self.all() {
            if !member.matches(filter, now) || (filter.skip_me && member.id == caller) {
                continue;
            }
            killed += 1;
            if member.id == caller {
                // Told first, then closed, as Redis closes after its reply.
                me = true;
            } else {
                member.kill.cancel();
            }
        }
        (killed, me)
    }

    /// Whether a user name is one some client runs as.
    pub fn knows_user(&self, user: &str) -> bool {
        self.all().iter().any(|m| &*m.published().user == user)
    }

    /// `CLIENT PAUSE`: requests wait until `pause.until` (or `CLIENT
    /// UNPAUSE`); a later pause extends, never shortens, one in force.
    pub fn pause(&self, pause: Pause) {
        let mut current = self.pause.lock().unwrap_or_else(PoisonError::into_inner);
        let merged = match *current {
            Some(old) if old.until > pause.until => Pause {
                until: old.until,
                writes_only: old.writes_only && pause.writes_only,
            },
            Some(old) => Pause {
                until: pause.until,
                writes_only: old.writes_only && pause.writes_only,
            },
            None => pause,
        };
        *current = Some(merged);
        self.paused.store(true, Ordering::Release);
    }

    /// `CLIENT UNPAUSE`.
    pub fn unpause(&self) {
        *self.pause.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.paused.store(false, Ordering::Release);
        self.unpaused.notify_waiters();
    }

    /// Whether a pause is in force.
    pub fn is_paused(&self) -> bool {
        self.current_pause().is_some()
    }

    /// The pause in force, if any.
    pub fn current_pause(&self) -> Option<Pause> {
        if !self.paused.load(Ordering::Acquire) {
            return None;
        }
        let _ = self.pause_ending(true);
        *self.pause.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a request must wait (`write`: it is not read-only); until
    /// when, if so.
    #[inline]
    pub fn paused_for(&self, write: bool) -> Option<Instant> {
        if !self.paused.load(Ordering::Acquire) {
            return None;
        }
        self.pause_ending(write)
    }

    fn pause_ending(&self, write: bool) -> Option<Instant> {
        let mut current = self.pause.lock().unwrap_or_else(PoisonError::into_inner);
        match *current {
            Some(pause) if pause.until <= Instant::now() => {
                *current = None;
                self.paused.store(false, Ordering::Release);
                None
            }
            Some(pause) if write || !pause.writes_only => Some(pause.until),
            _ => None,
        }
    }

    /// Resolves when the pause in force ends or is lifted.
    pub fn pause_over(
        self: &Arc<Self>,
        until: Instant,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let roster = self.clone();
        async move {
            let unpaused = roster.unpaused.notified();
            tokio::pin!(unpaused);
            unpaused.as_mut().enable();
            if roster.paused.load(Ordering::Acquire) {
                let _ = tokio::time::timeout_at(until.into(), unpaused).await;
            }
        }
    }
}

impl Member {
    /// The client's address.
    pub fn addr(&self) -> Option<PeerAddr> {
        self.addr.clone()
    }

    /// How long the client has been connected.
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// The client sent something.
    #[inline]
    pub fn active(&self) {
        let now = self.clock.load(Ordering::Relaxed);
        self.last_active.store(now, Ordering::Relaxed);
    }

    /// Seconds since the client last sent something (to the second).
    pub fn idle_secs(&self) -> u64 {
        self.clock
            .load(Ordering::Relaxed)
            .saturating_sub(self.last_active.load(Ordering::Relaxed))
    }

    /// Notes the client's requests in flight.
    #[inline]
    pub fn set_pending(&self, n: usize) {
        self.pending.store(n, Ordering::Relaxed);
    }

    /// The client's requests in flight, as of its last turn.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// What the client published last.
    pub fn published(&self) -> Published {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes what the client publishes.
    pub fn publish(&self, change: impl FnOnce(&mut Published)) {
        change(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn matches(&self, f: &KillFilter, now: Instant) -> bool {
        let state = self.published();
        let kind = if state.subscriptions.iter().any(|&n| n > 0) {
            ClientKind::Pubsub
        } else {
            ClientKind::Normal
        };
        f.id.is_none_or(|id| id == self.id)
            && f.addr
                .as_deref()
                .is_none_or(|a| self.addr.as_ref().is_some_and(|s| s.to_string() == a))
            && f.laddr
                .as_deref()
                .is_none_or(|a| self.laddr.as_ref().is_some_and(|s| s.to_string() == a))
            && f.user.as_deref().is_none_or(|u| *state.user == *u)
            && f.kind.is_none_or(|k| k == kind)
            && f.max_age
                .is_none_or(|age| now.duration_since(self.created) >= age)
    }

    /// The client's `CLIENT LIST` line (without the newline), in Redis's
    /// format. `current`: the command being run, when the client asks about
    /// itself (`cmd`, `qbuf`).
    pub fn line(&self, current: Option<(&str, usize)>) -> String {
        let held_reply_bytes = self.replies.held();
        let s = self.published();
        let mut flags = String::new();
        if s.subscriptions.iter().any(|&n| n > 0) {
            flags.push('P');
        }
        if s.multi {
            flags.push('x');
        }
        if s.blocked {
            flags.push('b');
        }
        // Redis marks its `unixsocket` clients so.
        if matches!(self.addr, Some(PeerAddr::Unix(_))) {
            flags.push('U');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        let addr = |a: &Option<PeerAddr>| {
            a.as_ref()
                .map_or_else(|| "?:0".to_string(), |a| a.to_string())
        };
        let name = s
            .name
            .as_ref()
            .map_or_else(String::new, |n| String::from_utf8_lossy(n).into_owned());
        let (cmd, qbuf) = current.unwrap_or(("NULL", 0));
        let mut line = String::with_capacity(256);
        let _ = write!(
            line,
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={} db={} sub={} psub={} ssub={} multi={} qbuf={} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem={} tot-mem={} events=r cmd={} user={} redir=-1 resp={}",
            self.id,
            addr(&self.addr),
            addr(&self.laddr),
            self.fd,
            name,
            self.created.elapsed().as_secs(),
            if current.is_some() { 0 } else { self.idle_secs() },
            flags,
            s.db,
            s.subscriptions[0],
            s.subscriptions[1],
            s.subscriptions[2],
            if s.multi { 0 } else { -1 },
            qbuf,
            held_reply_bytes,
            held_reply_bytes,
            cmd,
            s.user,
            s.resp,
        );
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::inbox::ReplyInbox;

    fn published(user: &str) -> Published {
        Published {
            user: user.into(),
            resp: 2,
            ..Published::default()
        }
    }

    /// A client `id` of `roster`, and its inbox.
    fn join(roster: &Roster, id: u64, user: &str) -> (Arc<Member>, ReplyInbox) {
        let inbox = ReplyInbox::new(None, roster.memory.clone());
        let joining = Joining {
            id,
            addr: None,
            laddr: None,
            fd: 5,
            kill: CancellationToken::new(),
            replies: inbox.sender(),
        };
        (roster.join(joining, published(user)), inbox)
    }

    #[test]
    fn kill_matches_filters_and_spares_the_caller_when_asked() {
        let roster = Roster::new(None);
        let (a, _a) = join(&roster, 1, "default");
        let (b, _b) = join(&roster, 2, "alice");
        let by_user = KillFilter {
            user: Some("alice".into()),
            skip_me: true,
            ..KillFilter::default()
        };
        assert_eq!(roster.kill(&by_user, 1), (1, false));
        assert!(b.kill.is_cancelled() && !a.kill.is_cancelled());
        let everyone = KillFilter {
            skip_me: false,
            ..KillFilter::default()
        };
        assert_eq!(roster.kill(&everyone, 1), (2, true));
        assert!(
            !a.kill.is_cancelled(),
            "the caller is told first, then closes itself"
        );
        roster.leave(2);
        assert_eq!(roster.all().len(), 1);
    }

    #[test]
    fn a_line_is_in_redis_format() {
        let roster = Roster::new(None);
        let (m, _inbox) = join(&roster, 7, "default");
        m.publish(|s| s.name = Some(Bytes::from_static(b"app")));
        let line = m.line(Some(("client|list", 26)));
        assert!(line.starts_with("id=7 addr="), "{line}");
        assert!(line.contains(" name=app age="), "{line}");
        assert!(
            line.contains(" flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=26 "),
            "{line}"
        );
        assert!(
            line.ends_with(" cmd=client|list user=default redir=-1 resp=2"),
            "{line}"
        );
    }

    #[test]
    fn past_the_budget_the_client_holding_the_most_goes_one_at_a_time() {
        let roster = Roster::new(Some(100));
        let (small, small_inbox) = join(&roster, 1, "default");
        let (big, big_inbox) = join(&roster, 2, "default");
        small.replies.send(0, 1, Bytes::from(vec![b'x'; 30]));
        big.replies.send(0, 1, Bytes::from(vec![b'x'; 60]));
        assert!(!big.kill.is_cancelled());
        // Past 100 bytes: the biggest goes, and what arrives for it is dropped.
        small.replies.send(1, 1, Bytes::from(vec![b'x'; 20]));
        assert!(big.kill.is_cancelled() && !small.kill.is_cancelled());
        assert_eq!(roster.memory.evictions(), 1);
        big.replies.send(1, 1, Bytes::from(vec![b'x'; 50]));
        assert_eq!(big.replies.held(), 60, "dropped, not counted");
        // Still over, but the first one is on its way out: no second one.
        small.replies.send(2, 1, Bytes::from(vec![b'x'; 10]));
        assert!(!small.kill.is_cancelled());
        drop(big_inbox);
        assert_eq!(roster.memory.held(), 60, "freed with the client");
        drop(small_inbox);
        assert_eq!(roster.memory.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_writes_or_everything_until_it_ends() {
        let roster = Roster::new(None);
        assert_eq!(roster.paused_for(true), None);
        let until = Instant::now() + Duration::from_secs(10);
        roster.pause(Pause {
            until,
            writes_only: true,
        });
        assert_eq!(roster.paused_for(false), None, "reads pass a WRITE pause");
        assert_eq!(roster.paused_for(true), Some(until));
        let over = roster.pause_over(until);
        roster.unpause();
        tokio::time::timeout(Duration::from_secs(1), over)
            .await
            .expect("UNPAUSE ends the wait");
        assert_eq!(roster.paused_for(true), None);
    }
}
