//! Readiness (`/readyz`): respool is ready for clients while at least one
//! upstream connection has passed validation and serves a lane, and nothing
//! has taken it out of rotation. Liveness (`/healthz`) needs nothing: a
//! process that answers it is serving.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::server::Process;

/// What can take respool out of a load balancer's rotation besides its
/// upstream: the hooks for admin commands (PAUSE, DRAIN) and shutdown.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    /// Requests are being held (an admin PAUSE): new clients should go
    /// elsewhere until RESUME.
    paused: AtomicBool,
    /// respool is draining (an admin DRAIN, a restart): it finishes what it
    /// has, and wants no new clients.
    draining: AtomicBool,
}

impl Readiness {
    /// Marks respool paused (`true`) or resumed: `/readyz` answers 503
    /// while paused. The hook for the admin PAUSE / RESUME.
    #[allow(dead_code)] // until the admin commands call it
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Marks respool draining (`true`) or not: `/readyz` answers 503
    /// while draining.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }
}

/// Why respool is not ready, for the body of a 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotReady {
    /// No lane has a validated upstream connection.
    NoUpstream,
    /// See [`Readiness::set_paused`].
    Paused,
    /// See [`Readiness::set_draining`].
    Draining,
}

impl NotReady {
    /// The reason in a few words.
    pub fn reason(self) -> &'static str {
        match self {
            NotReady::NoUpstream => "no validated upstream connection",
            NotReady::Paused => "paused",
            NotReady::Draining => "draining",
        }
    }
}

/// Whether respool is ready for clients now, and if not, why.
pub(crate) fn ready(process: &Process) -> Result<(), NotReady> {
    if process.readiness.draining.load(Ordering::Relaxed) {
        return Err(NotReady::Draining);
    }
    if process.readiness.paused.load(Ordering::Relaxed) {
        return Err(NotReady::Paused);
    }
    let connected = process
        .stats
        .loops()
        .iter()
        .flat_map(|l| l.pool_snapshots())
        .any(|p| p.lanes_connected > 0);
    if connected {
        Ok(())
    } else {
        Err(NotReady::NoUpstream)
    }
}
