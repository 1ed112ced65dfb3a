//! Taking a connection out of a bb8 pool, with the reason when none comes.
//!
//! bb8 hands connect errors to its error sink, not to the waiting `get`,
//! which would only report a timeout: the [`UpstreamManager`] publishes each
//! failure on a watch channel, and a checkout that gives up says why.

use std::time::Duration;

use bb8::{Pool, PooledConnection, RunError};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::manager::UpstreamManager;
use crate::error::ConnectError;

/// How often a checkout that is still waiting asks the pool again. bb8 does
/// not wake a waiter when a connection attempt fails, and starts a new
/// attempt only for a waiter that arrives while none is pending. On a
/// multi-thread runtime an attempt can fail between our look at `failures`
/// and bb8's count of pending attempts, and the waiter then slept until
/// bb8's own timeout (seen in a test as a 10 s stall after the upstream was
/// back). Asking again re-evaluates; it never starts a second attempt while
/// one is pending.
const CHECKOUT_REPOLL: Duration = Duration::from_millis(100);

/// How long a checkout waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Until the first connection attempt that fails, then report it: a
    /// lane retries with a backoff of its own, holding its requests.
    UntilAnAttemptFails,
    /// The whole checkout deadline, while bb8 keeps trying: a client that
    /// needs a dedicated connection waits out a short outage.
    Deadline,
}

/// Checks out a connection within `wait`; the last connect error (or a
/// checkout timeout) when none comes.
pub(crate) async fn checkout(
    pool: Pool<UpstreamManager>,
    mut failures: watch::Receiver<Option<ConnectError>>,
    wait: Duration,
    until: Wait,
) -> Result<PooledConnection<'static, UpstreamManager>, ConnectError> {
    failures.mark_unchanged();
    let last = |f: &watch::Receiver<Option<ConnectError>>| {
        f.borrow()
            .clone()
            .unwrap_or(ConnectError::CheckoutTimeout(wait))
    };
    let deadline = Instant::now() + wait;
    let fail_fast = until == Wait::UntilAnAttemptFails;
    loop {
        let ask_again = (Instant::now() + CHECKOUT_REPOLL).min(deadline);
        tokio::select! {
            r = pool.get_owned() => return r.map_err(|e| match e {
                RunError::User(e) => e,
                RunError::TimedOut => last(&failures),
            }),
            changed = failures.changed(), if fail_fast => return match changed {
                Ok(()) => Err(last(&failures)),
                Err(_) => Err(ConnectError::CheckoutTimeout(wait)),
            },
            () = sleep_until(ask_again) => {
                if ask_again >= deadline {
                    return Err(last(&failures));
                }
            }
        }
    }
}
