//! The proxy's shutdown and abort signals, as seen from one client's loop.
//!
//! The loop polls them once per poll of its task, about twice per request at
//! pipeline 1. Polling a `CancellationToken`'s future costs two mutex round
//! trips each time (about 10 % of the loop's instructions at pipeline 1), so
//! the tokens' futures are polled with a waker of our own and only again
//! after they have woken it; a poll in between costs one atomic load.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// What a signal asks of the client.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// Close now (the shutdown deadline passed).
    Abort,
    /// Stop reading requests; answer those in flight (once).
    Shutdown,
}

pub(super) struct StopSignals {
    abort: Pin<Box<WaitForCancellationFutureOwned>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    shutdown_seen: bool,
    woken: Arc<Woken>,
    /// The futures have been polled (with our waker) at least once.
    armed: bool,
    /// The task waker last put in `woken.task`.
    registered: Option<Waker>,
}

/// Our waker: notes that a token fired, then wakes the client's task.
#[derive(Default)]
struct Woken {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl StopSignals {
    pub(super) fn new(shutdown: CancellationToken, abort: CancellationToken) -> StopSignals {
        StopSignals {
            abort: Box::pin(abort.cancelled_owned()),
            shutdown: Box::pin(shutdown.cancelled_owned()),
            shutdown_seen: false,
            woken: Arc::default(),
            armed: false,
            registered: None,
        }
    }

    /// Whether the shutdown signal has been seen.
    pub(super) fn shutdown_seen(&self) -> bool {
        self.shutdown_seen
    }

    /// Ready with the signal that fired; each fires at most once.
    pub(super) fn poll_stop(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        // Until a token fires, the task's waker registered last time is still
        // in `woken.task` (only a wake takes it out), so a turn costs one
        // load and a pointer comparison.
        let same_task = self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if self.armed && same_task && !self.woken.fired.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        self.woken.task.register(cx.waker());
        if !same_task {
            self.registered = Some(cx.waker().clone());
        }
        if self.armed && !self.woken.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        self.armed = true;
        let waker = Waker::from(self.woken.clone());
        let mut ours = Context::from_waker(&waker);
        if self.abort.as_mut().poll(&mut ours).is_ready() {
            return Poll::Ready(Stop::Abort);
        }
        if !self.shutdown_seen && self.shutdown.as_mut().poll(&mut ours).is_ready() {
            self.shutdown_seen = true;
            return Poll::Ready(Stop::Shutdown);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test]
    async fn each_signal_wakes_the_waiting_client_once() {
        let (shutdown, abort) = (CancellationToken::new(), CancellationToken::new());
        let mut stop = StopSignals::new(shutdown.clone(), abort.clone());
        let waiting = tokio::spawn(async move {
            let first = poll_fn(|cx| stop.poll_stop(cx)).await;
            let second = poll_fn(|cx| stop.poll_stop(cx)).await;
            (first, second)
        });
        tokio::task::yield_now().await;
        shutdown.cancel();
        tokio::task::yield_now().await;
        abort.cancel();
        let (first, second) = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("woken by the signals")
            .expect("task");
        assert_eq!((first, second), (Stop::Shutdown, Stop::Abort));
    }

    #[test]
    fn a_signal_that_fired_before_the_first_poll_is_seen() {
        let (shutdown, abort) = (CancellationToken::new(), CancellationToken::new());
        abort.cancel();
        let mut stop = StopSignals::new(shutdown, abort);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert_eq!(stop.poll_stop(&mut cx), Poll::Ready(Stop::Abort));
    }

    #[test]
    fn without_a_wake_the_futures_are_not_polled_again() {
        let (shutdown, abort) = (CancellationToken::new(), CancellationToken::new());
        let mut stop = StopSignals::new(shutdown.clone(), abort);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert_eq!(stop.poll_stop(&mut cx), Poll::Pending);
        assert!(stop.armed);
        assert!(!stop.woken.fired.load(Ordering::Acquire));
        shutdown.cancel();
        // The token woke our waker, so the next poll looks.
        assert!(stop.woken.fired.load(Ordering::Acquire));
        assert_eq!(stop.poll_stop(&mut cx), Poll::Ready(Stop::Shutdown));
        assert_eq!(stop.poll_stop(&mut cx), Poll::Pending);
    }

    #[test]
    fn a_poll_from_another_task_moves_the_registration_to_it() {
        #[derive(Default)]
        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let (shutdown, abort) = (CancellationToken::new(), CancellationToken::new());
        let mut stop = StopSignals::new(shutdown.clone(), abort);
        let (first, second) = (Arc::new(Flag::default()), Arc::new(Flag::default()));
        let first_waker = Waker::from(first.clone());
        let second_waker = Waker::from(second.clone());
        assert_eq!(
            stop.poll_stop(&mut Context::from_waker(&first_waker)),
            Poll::Pending
        );
        assert_eq!(
            stop.poll_stop(&mut Context::from_waker(&second_waker)),
            Poll::Pending
        );
        shutdown.cancel();
        assert!(
            second.0.load(Ordering::SeqCst),
            "the latest poller is woken"
        );
        assert!(!first.0.load(Ordering::SeqCst));
    }
}
