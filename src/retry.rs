//! Backoff policy and the rules for what may be retried.
//!
//! * Anything not yet written to a socket (connect failure, waiting for a
//!   connection) is always retried, until its checkout deadline.
//! * A reply of `-LOADING`, `-BUSY`, `-TRYAGAIN`, `-MASTERDOWN` or `-CLUSTERDOWN` means the
//!   command did not run: it is retried within the request deadline.
//! * After a connection is lost with the request already written, only
//!   read-only commands are retried (see [`crate::command`]); anything else
//!   fails with "may or may not have executed". Even writes that look
//!   idempotent (`SET k v`) are not resent: between the lost attempt and the
//!   resend another client may have written the key, and the resend would
//!   silently undo that. A write is never applied twice.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Exponential backoff with jitter, from the CLI's base and cap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackoffPolicy {
    /// First delay.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
}

impl BackoffPolicy {
    /// A fresh sequence of delays: base, 2·base, 4·base … up to cap, each
    /// scaled by a random factor in [0.5, 1] ("equal jitter") so that many
    /// lanes or proxies that failed together do not retry in lockstep, while
    /// no delay exceeds the cap.
    pub fn delays(&self) -> Backoff {
        Backoff {
            used: false,
            inner: ExponentialBuilder::new()
                .with_min_delay(self.base)
                .with_max_delay(self.cap)
                .with_factor(2.0)
                .without_max_times()
                .build(),
        }
    }
}

/// One sequence of backoff delays; an endless iterator, so `backon` can
/// drive a retry loop with it.
#[derive(Debug)]
pub(crate) struct Backoff {
    inner: <ExponentialBuilder as BackoffBuilder>::Backoff,
    /// A delay was taken from this sequence.
    used: bool,
}

impl Backoff {
    /// True once a delay has been taken from this sequence.
    pub fn used(&self) -> bool {
        self.used
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        self.used = true;
        let full = self.inner.next().unwrap_or(Duration::from_secs(1));
        full.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

/// True for an error reply that says the command did not run and may simply be
/// sent again later: `-LOADING`, `-BUSY`, `-TRYAGAIN`, `-MASTERDOWN`, `-CLUSTERDOWN`.
pub(crate) fn is_transient_error(frame: &[u8]) -> bool {
    let Some(rest) = frame.strip_prefix(b"-") else {
        return false;
    };
    let code_end = rest
        .iter()
        .position(|&b| b == b' ' || b == b'\r')
        .unwrap_or(rest.len());
    matches!(
        &rest[..code_end],
        b"LOADING" | b"BUSY" | b"TRYAGAIN" | b"MASTERDOWN" | b"CLUSTERDOWN"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_recognised_by_their_code() {
        assert!(is_transient_error(
            b"-LOADING Redis is loading the dataset in memory\r\n"
        ));
        assert!(is_transient_error(
            b"-BUSY Redis is busy running a script.\r\n"
        ));
        assert!(is_transient_error(
            b"-MASTERDOWN Link with MASTER is down\r\n"
        ));
        assert!(!is_transient_error(
            b"-BUSYKEY Target key name already exists.\r\n"
        ));
        assert!(!is_transient_error(b"-ERR unknown command\r\n"));
        assert!(!is_transient_error(b"+LOADING\r\n"));
    }

    #[test]
    fn delays_grow_to_the_cap_and_never_past_it() {
        let policy = BackoffPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(80),
        };
        let mut b = policy.delays();
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(5) && delays[0] <= Duration::from_millis(10));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(80)));
        assert!(delays[7] >= Duration::from_millis(40), "{delays:?}");
    }
}
