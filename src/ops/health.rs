//! Readiness (`/readyz`): respool is ready for clients while at least one
//! upstream connection has passed validation and serves a lane, and nothing
//! has taken it out of rotation. Liveness (`/healthz`) needs nothing: a
//! process that answers it is serving.

use crate::server::Process;

/// Why respool is not ready, for the body of a 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotReady {
    /// No lane has a validated upstream connection.
    NoUpstream,
    /// Requests are held (`RESPOOL PAUSE`, a client's `CLIENT PAUSE`):
    /// new clients should go elsewhere until they are released.
    Paused,
    /// `RESPOOL DRAIN` or a shutdown has begun: respool finishes what it
    /// has and wants no new clients.
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
    if process.draining.is_cancelled() {
        return Err(NotReady::Draining);
    }
    if process.roster.is_paused() {
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
