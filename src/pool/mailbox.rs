//! A many-to-one queue whose receiver takes everything waiting at once.
//!
//! Lanes deliver replies to clients through one of these per client. It
//! replaces a tokio `mpsc` channel there because the hand-over runs once per
//! request at pipeline 1, and the channel's general machinery (a linked list
//! of 32-slot blocks, a permit count, a sender count) costs more than the
//! job needs: a mutex-guarded `Vec` whose contents the receiver swaps for
//! its own empty one, and a waker woken only when the queue stops being
//! empty. An idle client's mailbox also holds no block of slots.
//!
//! The mailbox is meant to be embedded in a struct the caller shares (so one
//! allocation carries it along with whatever else the parties share).

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

#[derive(Debug)]
pub struct Mailbox<T> {
    queue: Mutex<Queue<T>>,
    /// The receiver's task, woken when the queue goes from empty to not.
    receiver: AtomicWaker,
}

#[derive(Debug)]
struct Queue<T> {
    items: Vec<T>,
    /// The receiver is gone: items are refused rather than kept.
    closed: bool,
    /// The senders are gone: nothing more will come.
    hung_up: bool,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            queue: Mutex::new(Queue {
                items: Vec::new(),
                closed: false,
                hung_up: false,
            }),
            receiver: AtomicWaker::new(),
        }
    }
}

impl<T> Mailbox<T> {
    /// Queues `item`; gives it back if the receiver has closed the mailbox.
    pub fn send(&self, item: T) -> Result<(), T> {
        let mut queue = self.lock();
        if queue.closed {
            return Err(item);
        }
        queue.items.push(item);
        let first = queue.items.len() == 1;
        drop(queue);
        // The receiver takes everything it finds, so only the first item
        // after it looked needs to wake it.
        if first {
            self.receiver.wake();
        }
        Ok(())
    }

    /// Moves everything waiting to the end of `into` (pass an empty `Vec`
    /// kept for the purpose: its allocation is swapped in, not copied into),
    /// or registers the receiver's waker when nothing waits. Ready with
    /// `false` when nothing waits and the senders have [hung up](Self::hang_up).
    pub fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<T>) -> Poll<bool> {
        // Registered before looking: an item queued after the look wakes us.
        self.receiver.register(cx.waker());
        let mut queue = self.lock();
        if Self::take_from(&mut queue, into) {
            Poll::Ready(true)
        } else if queue.hung_up {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    }

    /// Moves everything waiting to the end of `into`; false if nothing was.
    #[cfg(test)]
    pub fn try_take(&self, into: &mut Vec<T>) -> bool {
        Self::take_from(&mut self.lock(), into)
    }

    fn take_from(queue: &mut Queue<T>, into: &mut Vec<T>) -> bool {
        if queue.items.is_empty() {
            return false;
        }
        if into.is_empty() {
            std::mem::swap(&mut queue.items, into);
        } else {
            into.append(&mut queue.items);
        }
        true
    }

    /// The senders are done: once what waits is taken, the receiver is told
    /// that nothing more will come.
    pub fn hang_up(&self) {
        self.lock().hung_up = true;
        self.receiver.wake();
    }

    /// The receiver is going away: drops what waits, refuses what comes.
    pub fn close(&self) {
        let mut queue = self.lock();
        queue.closed = true;
        let items = std::mem::take(&mut queue.items);
        drop(queue);
        drop(items);
    }

    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // Nothing panics while holding the lock; a poisoned queue is intact.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<CountingWaker>, Waker) {
        let count = Arc::new(CountingWaker::default());
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn takes_everything_in_order_and_wakes_once_per_empty_to_not() {
        let mailbox = Mailbox::default();
        let (wakes, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        assert_eq!(mailbox.poll_take(&mut cx, &mut got), Poll::Pending);
        for i in 0..5 {
            mailbox.send(i).unwrap();
        }
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "only the first item wakes"
        );
        assert_eq!(mailbox.poll_take(&mut cx, &mut got), Poll::Ready(true));
        assert_eq!(got, [0, 1, 2, 3, 4]);
        got.clear();
        assert_eq!(mailbox.poll_take(&mut cx, &mut got), Poll::Pending);
        mailbox.send(5).unwrap();
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            2,
            "empty again: the next item wakes"
        );
        // Taking into a Vec that still holds something appends.
        got.push(4);
        assert!(mailbox.try_take(&mut got));
        assert_eq!(got, [4, 5]);
        assert!(!mailbox.try_take(&mut got));
    }

    #[test]
    fn after_a_hang_up_what_waits_is_still_taken_then_the_end_is_reported() {
        let mailbox = Mailbox::default();
        let (wakes, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        assert_eq!(mailbox.poll_take(&mut cx, &mut got), Poll::Pending);
        mailbox.send(1).unwrap();
        mailbox.hang_up();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the receiver was woken");
        assert_eq!(mailbox.poll_take(&mut cx, &mut got), Poll::Ready(true));
        assert_eq!(got, [1]);
        assert_eq!(mailbox.poll_take(&mut cx, &mut got), Poll::Ready(false));
        // A hang-up on an empty, waiting mailbox wakes the receiver too.
        let quiet = Mailbox::<u8>::default();
        assert_eq!(quiet.poll_take(&mut cx, &mut Vec::new()), Poll::Pending);
        quiet.hang_up();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert_eq!(
            quiet.poll_take(&mut cx, &mut Vec::new()),
            Poll::Ready(false)
        );
    }

    #[test]
    fn a_closed_mailbox_drops_what_waits_and_refuses_more() {
        let mailbox = Mailbox::default();
        let item = Arc::new(());
        mailbox.send(item.clone()).unwrap();
        assert_eq!(Arc::strong_count(&item), 2);
        mailbox.close();
        assert_eq!(Arc::strong_count(&item), 1, "the waiting item was dropped");
        let refused = mailbox.send(item.clone()).expect_err("closed");
        assert!(Arc::ptr_eq(&refused, &item));
        assert!(!mailbox.try_take(&mut Vec::new()));
    }

    #[test]
    fn items_sent_from_other_threads_all_arrive_once() {
        let mailbox = Arc::new(Mailbox::default());
        let senders: Vec<_> = (0..4u32)
            .map(|t| {
                let mailbox = mailbox.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        mailbox.send(t * 10_000 + i).unwrap();
                    }
                })
            })
            .collect();
        let (_, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut all = Vec::new();
        let mut batch = Vec::new();
        while all.len() < 40_000 {
            if mailbox.poll_take(&mut cx, &mut batch).is_ready() {
                all.append(&mut batch);
            } else {
                std::thread::yield_now();
            }
        }
        for s in senders {
            s.join().unwrap();
        }
        assert!(!mailbox.try_take(&mut batch), "nothing arrives twice");
        // Each sender's items arrive in the order it sent them.
        for t in 0..4u32 {
            let mine: Vec<u32> = all.iter().copied().filter(|v| v / 10_000 == t).collect();
            assert_eq!(mine, (t * 10_000..(t + 1) * 10_000).collect::<Vec<_>>());
        }
    }
}
