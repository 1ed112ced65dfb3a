//! What a validated upstream connection is made for: an [`Endpoint`] is a
//! node (address and TLS), an identity (the user it authenticates as) and a
//! database. Every lane set serves one endpoint; two clients share lanes
//! exactly when they need the same endpoint.
//!
//! A node's address is fixed (`--upstream`, a replica) or *followed*: the
//! primary Sentinel names, which moves on failover. Each move starts a new
//! generation; connections remember the generation they were made for, and
//! those of an older one are retired (lanes reconnect, pooled connections
//! are dropped, pinned sessions end), so every request after a switch goes
//! to the new primary.
//!
//! The RESP protocol is not part of the endpoint: a lane set keeps shared
//! lanes per protocol, and a pinned connection switches protocol for the
//! session it serves, so `--max-pinned` stays one budget per endpoint.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use crate::config::Secret;
use crate::error::ConnectError;
use crate::tls::UpstreamTls;

/// An upstream node.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    location: Location,
    /// TLS (`rediss://`), or plain TCP.
    pub tls: Option<UpstreamTls>,
    /// The certificate name checked is the current address's host, not the
    /// one in `tls` (a followed primary, a discovered replica, without
    /// `--upstream-tls-server-name`).
    pub tls_name_from_addr: bool,
}

#[derive(Debug, Clone)]
enum Location {
    Fixed(Arc<str>),
    Followed(Arc<FollowedAddr>),
}

impl Node {
    /// A node at a fixed `host:port`.
    pub fn fixed(addr: Arc<str>, tls: Option<UpstreamTls>) -> Node {
        Node {
            location: Location::Fixed(addr),
            tls,
            tls_name_from_addr: false,
        }
    }

    /// The node `followed` says, wherever that is at the time.
    pub fn followed(
        followed: Arc<FollowedAddr>,
        tls: Option<UpstreamTls>,
        tls_name_from_addr: bool,
    ) -> Node {
        Node {
            location: Location::Followed(followed),
            tls,
            tls_name_from_addr,
        }
    }

    /// The address to connect to now, and its generation; an error while
    /// a followed node's address is not known.
    pub fn locate(&self) -> Result<(Arc<str>, u64), ConnectError> {
        match &self.location {
            Location::Fixed(addr) => Ok((addr.clone(), 0)),
            Location::Followed(f) => f.locate(),
        }
    }

    /// Like [`locate`](Self::locate), but a followed node whose address is
    /// not known yet (respool just started) is waited for, up to `within`.
    pub async fn locate_within(
        &self,
        within: std::time::Duration,
    ) -> Result<(Arc<str>, u64), ConnectError> {
        if let Location::Followed(f) = &self.location {
            let known = async {
                loop {
                    let notified = f.known.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if f.current().is_some() {
                        return;
                    }
                    notified.await;
                }
            };
            let _ = tokio::time::timeout(within, known).await;
        }
        self.locate()
    }

    /// The address as messages show it: the current one, or what is
    /// followed while none is known.
    pub fn addr(&self) -> Arc<str> {
        match &self.location {
            Location::Fixed(addr) => addr.clone(),
            Location::Followed(f) => f.shown(),
        }
    }

    /// Whether a connection made for `generation` still goes to this node.
    #[inline]
    pub fn is_current(&self, generation: u64) -> bool {
        match &self.location {
            Location::Fixed(_) => true,
            Location::Followed(f) => f.generation() == generation,
        }
    }

    /// The address this node follows, if it moves.
    pub fn following(&self) -> Option<&Arc<FollowedAddr>> {
        match &self.location {
            Location::Fixed(_) => None,
            Location::Followed(f) => Some(f),
        }
    }
}

/// An address that moves (the primary of a Sentinel-monitored master): set
/// by whoever follows it, read by every connect.
#[derive(Debug)]
pub(crate) struct FollowedAddr {
    /// What is followed, for messages while no address is known.
    label: Arc<str>,
    /// The current address, or why there is none.
    current: RwLock<Current>,
    generation: AtomicU64,
    /// Woken when an address is set.
    known: tokio::sync::Notify,
}

#[derive(Debug)]
struct Current {
    addr: Result<Arc<str>, Arc<str>>,
    /// When the address last changed.
    since: Instant,
}

impl FollowedAddr {
    /// Nothing known yet: connects fail with `why` until [`set`](Self::set).
    pub fn unknown(label: &str, why: &str) -> FollowedAddr {
        FollowedAddr {
            label: label.into(),
            current: RwLock::new(Current {
                addr: Err(why.into()),
                since: Instant::now(),
            }),
            generation: AtomicU64::new(0),
            known: tokio::sync::Notify::new(),
        }
    }

    /// Moves to `addr` (a new generation) if it is not the current one;
    /// the address it moved from, `None` if it did not move. `Some(None)`:
    /// there was no address before.
    pub fn set(&self, addr: &str) -> Option<Option<Arc<str>>> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.addr.as_deref().is_ok_and(|a| a == addr) {
            return None;
        }
        let before = current.addr.as_ref().ok().cloned();
        current.addr = Ok(addr.into());
        current.since = Instant::now();
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(current);
        self.known.notify_waiters();
        Some(before)
    }

    /// Forgets the address (a failover has begun): connections made for it
    /// are retired, and new ones wait for the next [`set`](Self::set),
    /// failing with `why` meanwhile. The address it had, if any.
    pub fn suspend(&self, why: &str) -> Option<Arc<str>> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let before = current.addr.as_ref().ok().cloned();
        current.addr = Err(why.into());
        current.since = Instant::now();
        self.generation.fetch_add(1, Ordering::AcqRel);
        before
    }

    /// While no address is known, says why (what the last attempt to find
    /// one ran into), for the errors of requests that wait for it.
    pub fn explain_unknown(&self, why: &str) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.addr.is_err() {
            current.addr = Err(why.into());
        }
    }

    /// The current address, if one is known.
    pub fn current(&self) -> Option<Arc<str>> {
        self.read().addr.as_ref().ok().cloned()
    }

    /// When the address last changed.
    pub fn since(&self) -> Instant {
        self.read().since
    }

    /// How many times the address has changed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn locate(&self) -> Result<(Arc<str>, u64), ConnectError> {
        let current = self.read();
        // Read under the lock, so that address and generation agree.
        let generation = self.generation();
        match &current.addr {
            Ok(addr) => Ok((addr.clone(), generation)),
            Err(why) => Err(ConnectError::Io(why.clone())),
        }
    }

    fn shown(&self) -> Arc<str> {
        self.current().unwrap_or_else(|| self.label.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Who an upstream connection authenticates as: no one (the `default` user
/// without AUTH), a password (the `default` user), or a user and password.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    /// ACL user name; `None` is Redis's `default` user.
    pub username: Option<Arc<str>>,
    /// Password; `None` sends no AUTH at all.
    pub password: Option<Secret>,
}

impl Identity {
    /// The user name, as logs and `INFO` show it.
    pub fn user(&self) -> &str {
        self.username.as_deref().unwrap_or("default")
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("user", &self.user())
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Everything a validated connection is made for.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub node: Node,
    pub identity: Identity,
    /// Database selected on every connection.
    pub db: u32,
    /// A Redis Cluster node's: a slot it serves, kept current by the slot
    /// map, which the write probe's key must hash to (a cluster refuses a
    /// key of another node's slot even inside MULTI).
    pub probe_slot: Option<Arc<std::sync::atomic::AtomicU16>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_followed_node_moves_by_generations() {
        let followed = Arc::new(FollowedAddr::unknown("mymaster", "no primary known yet"));
        let node = Node::followed(followed.clone(), None, false);
        assert!(node.locate().is_err());
        assert_eq!(&*node.addr(), "mymaster");
        assert_eq!(followed.set("10.0.0.1:6379"), Some(None));
        let (addr, generation) = node.locate().expect("an address");
        assert_eq!(&*addr, "10.0.0.1:6379");
        assert!(node.is_current(generation));
        assert_eq!(followed.set("10.0.0.1:6379"), None, "not a move");
        assert_eq!(
            followed.set("10.0.0.2:6379"),
            Some(Some("10.0.0.1:6379".into()))
        );
        assert!(!node.is_current(generation));
        assert!(Node::fixed("h:1".into(), None).is_current(generation));
    }

    #[test]
    fn identities_compare_by_user_and_password_and_never_print_it() {
        let alice = |pw: &str| Identity {
            username: Some("alice".into()),
            password: Some(Secret::new(pw)),
        };
        assert_eq!(alice("a"), alice("a"));
        assert_ne!(alice("a"), alice("b"));
        assert_ne!(alice("a"), Identity::default());
        let shown = format!("{:?}", alice("hunter2"));
        assert!(
            !shown.contains("hunter2") && shown.contains("alice"),
            "{shown}"
        );
        assert_eq!(Identity::default().user(), "default");
    }
}
