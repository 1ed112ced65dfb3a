//! The timers a client waits on, each kept from turn to turn of its loop:
//! re-armed when its deadline moves, not rebuilt on every turn.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{sleep_until, Duration, Instant, Sleep};

/// How often a client that is not being read, and waits on a blocking
/// command, is asked whether it hung up: one `poll(2)` per interval per
/// such client, a hung-up client's slot and dedicated connection held this
/// long at most.
pub(super) const HANG_UP_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// What the client's deadlines are for.
#[derive(Default)]
pub(super) struct Deadlines {
    /// The pinned session's next reply (`--timeout`).
    pub session: Deadline,
    /// A request the client started must be complete (`--request-read-timeout`).
    pub request: Deadline,
    /// A quiet client is closed (`--client-idle-timeout`).
    pub idle: Deadline,
    /// The next hang-up check of a client that is not being read.
    pub hang_up: Deadline,
    /// When that check is due, while one is.
    pub hang_up_at: Option<Instant>,
}

impl Deadlines {
    /// When to ask whether the client has hung up: only while `unbounded`
    /// (it is not being read and waits on a reply with no deadline), every
    /// [`HANG_UP_CHECK_INTERVAL`].
    #[inline]
    pub fn hang_up_check(&mut self, unbounded: bool) -> Option<Instant> {
        if !unbounded {
            self.hang_up_at = None;
            return None;
        }
        Some(
            *self
                .hang_up_at
                .get_or_insert_with(|| Instant::now() + HANG_UP_CHECK_INTERVAL),
        )
    }
}

/// One timer.
#[derive(Default)]
pub(super) struct Deadline(Option<Pin<Box<Sleep>>>);

impl Deadline {
    /// Ready once `at` has passed; pending without a deadline (a timer left
    /// from an earlier one may still wake the task once, harmlessly).
    #[inline(always)]
    pub fn poll(&mut self, cx: &mut Context<'_>, at: Option<Instant>) -> Poll<()> {
        // Inlined, so that an unarmed deadline (the usual case, three per
        // turn) costs a test, not a call. Always: a plain `#[inline]` was
        // dropped once the client's loop grew, at 190 instructions per
        // request.
        match at {
            None => Poll::Pending,
            Some(at) => self.poll_at(cx, at),
        }
    }

    fn poll_at(&mut self, cx: &mut Context<'_>, at: Instant) -> Poll<()> {
        let sleep = self.0.get_or_insert_with(|| Box::pin(sleep_until(at)));
        if sleep.deadline() != at {
            sleep.as_mut().reset(at);
        }
        sleep.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_once_passed_and_follows_when_moved() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut deadline = Deadline::default();
        let start = Instant::now();
        let (early, late) = (
            start + Duration::from_secs(2),
            start + Duration::from_secs(5),
        );
        assert!(deadline.poll(&mut cx, Some(late)).is_pending());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(deadline.poll(&mut cx, Some(late)).is_pending());
        assert!(
            deadline.poll(&mut cx, Some(early)).is_ready(),
            "moved earlier: passed"
        );
        assert!(
            deadline.poll(&mut cx, Some(late)).is_pending(),
            "moved later again"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(deadline.poll(&mut cx, Some(late)).is_ready());
        assert!(
            deadline.poll(&mut cx, None).is_pending(),
            "no deadline, never ready"
        );
    }

    #[test]
    fn hang_up_checks_run_only_while_unbounded() {
        let mut d = Deadlines::default();
        assert_eq!(d.hang_up_check(false), None);
        let first = d.hang_up_check(true).expect("due");
        assert_eq!(d.hang_up_check(true), Some(first), "kept, not pushed back");
        assert_eq!(d.hang_up_check(false), None);
        assert!(d.hang_up_at.is_none());
    }
}
