//! Where lanes deliver a client's replies: one mailbox per client, and the
//! budget of reply bytes held for it (`--client-output-limit`, and its share
//! of the process's `--max-reply-memory`), in one allocation the client
//! shares with every lane that answers it.
//!
//! A lane answers a run of requests with one [`Delivery`]: the replies, back
//! to back as Redis sent them, taken out of the lane's read buffer without a
//! copy. The client's task takes every delivery waiting at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::roster::ReplyMemory;
use crate::pool::mailbox::Mailbox;

/// The final answers to one or more consecutive requests: upstream replies
/// or error lines.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// Sequence number of the first request answered.
    pub seq: u64,
    /// How many requests `reply` answers, in order.
    pub count: u32,
    /// `count` RESP replies back to back, to send to the client as they are.
    pub reply: Bytes,
}

/// What a client shares with the lanes that answer it.
#[derive(Debug)]
struct ReplyBox {
    mailbox: Mailbox<Delivery>,
    budget: OutputBudget,
    /// The client's id (0 for replies respool asks for on its own
    /// account), for the slowlog to name it.
    client: u64,
}

/// A client's end of its `ReplyBox`: it takes the deliveries, and closes
/// the mailbox when dropped, so that replies arriving for a client that has
/// gone are dropped rather than kept.
#[derive(Debug)]
pub(crate) struct ReplyInbox(Arc<ReplyBox>);

impl ReplyInbox {
    /// An inbox whose replies count against a budget of `limit` bytes
    /// (`None`: unlimited) and against the process's `memory`.
    pub fn new(limit: Option<usize>, memory: Arc<ReplyMemory>) -> ReplyInbox {
        ReplyInbox::for_client(0, limit, memory)
    }

    /// The inbox of client `client`, as [`ReplyInbox::new`].
    pub fn for_client(client: u64, limit: Option<usize>, memory: Arc<ReplyMemory>) -> ReplyInbox {
        ReplyInbox(Arc::new(ReplyBox {
            mailbox: Mailbox::default(),
            budget: OutputBudget::new(limit, memory),
            client,
        }))
    }

    /// Where a request's replies are to go (a reference-count increment,
    /// not an allocation, per request).
    pub fn sender(&self) -> ReplySender {
        ReplySender(self.0.clone())
    }

    /// The client's output budget.
    pub fn budget(&self) -> &OutputBudget {
        &self.0.budget
    }

    /// Moves every delivery waiting to `into`, or registers for the next.
    pub fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<Delivery>) -> Poll<()> {
        // Nobody hangs up a client's mailbox: the client itself holds a
        // sender, and counts what it is owed.
        self.0.mailbox.poll_take(cx, into).map(|_| ())
    }

    /// Moves every delivery waiting to `into`; false if there was none.
    #[cfg(test)]
    pub fn try_take(&self, into: &mut Vec<Delivery>) -> bool {
        self.0.mailbox.try_take(into)
    }
}

impl Drop for ReplyInbox {
    fn drop(&mut self) {
        self.0.mailbox.close();
        // What it held is freed with it (what still arrives is dropped).
        self.0.budget.close();
    }
}

/// Where the replies to a request go: cloned into each request.
#[derive(Debug, Clone)]
pub(crate) struct ReplySender(Arc<ReplyBox>);

impl ReplySender {
    /// The id of the client the replies go to (0: respool itself).
    pub fn client_id(&self) -> u64 {
        self.0.client
    }

    /// Counts the reply against the client's budget, then delivers it — or,
    /// past the limit, an empty reply instead: the client is about to be
    /// disconnected, and the lane may run ahead of it by many replies, so
    /// they must not pile up in its inbox. The empty delivery still wakes it.
    pub fn send(&self, seq: u64, count: u32, reply: Bytes) {
        let reply = if self.0.budget.add(reply.len()) {
            // Not held after all.
            self.0.budget.release(reply.len());
            Bytes::new()
        } else {
            reply
        };
        let len = reply.len();
        if self.0.mailbox.send(Delivery { seq, count, reply }).is_err() {
            // The client has gone away and no longer wants its reply.
            self.0.budget.release(len);
        }
    }

    /// Reply bytes held for the client now.
    pub fn held(&self) -> usize {
        self.0.budget.held()
    }

    /// The client is being disconnected for the replies it did not read
    /// (`--client-output-limit`, `--max-reply-memory`): as Redis drops such
    /// a client's unread commands, its requests not sent yet need not be.
    pub fn abandoned(&self) -> bool {
        self.0.budget.exceeded()
    }

    /// Marks the client as the one `--max-reply-memory` disconnects: what
    /// arrives for it is dropped from now on. False if it was already, or
    /// has gone.
    pub fn doom(&self, bytes: usize) -> bool {
        self.0.budget.doom(bytes)
    }

    /// Whether `--max-reply-memory` has chosen the client already.
    pub fn is_doomed(&self) -> bool {
        self.0.budget.held.load(Ordering::Relaxed) & DOOMED != 0
    }

    /// Whether both send to the same client.
    pub fn same_client(&self, other: &ReplySender) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Reply bytes held for one client — delivered to it and not yet written to
/// its socket — against `--client-output-limit`, and counted in the
/// process's [`ReplyMemory`]. Shared by the client and the lanes that
/// deliver to it, so that it is counted before a reply is queued.
#[derive(Debug)]
pub(crate) struct OutputBudget {
    /// Bytes held, and two flags in the top bits: [`CLOSED`] once the
    /// client has gone (then nothing more is counted, here or in the
    /// process's total), [`DOOMED`] once `--max-reply-memory` chose it. One
    /// atomic for all three, so that a client chosen as it leaves is seen
    /// either way by both.
    held: AtomicUsize,
    limit: Option<usize>,
    /// The limit was passed once (or the process's budget chose this
    /// client): the client must go, even if writing to it brings the count
    /// back down — replies may have been dropped for it.
    exceeded: AtomicBool,
    memory: Arc<ReplyMemory>,
    /// What the client held when `--max-reply-memory` chose it (counted in
    /// the process's bytes of clients on their way out until it goes).
    doomed_bytes: AtomicUsize,
}

/// The bit of [`OutputBudget::held`] that says the client has gone.
const CLOSED: usize = 1 << (usize::BITS - 1);
/// The bit of [`OutputBudget::held`] that says `--max-reply-memory` chose
/// the client.
const DOOMED: usize = 1 << (usize::BITS - 2);
/// The bits of [`OutputBudget::held`] that count bytes.
const BYTES: usize = DOOMED - 1;

impl OutputBudget {
    /// A budget of `limit` bytes (`None`: unlimited) within `memory`.
    fn new(limit: Option<usize>, memory: Arc<ReplyMemory>) -> Self {
        OutputBudget {
            held: AtomicUsize::new(0),
            limit,
            exceeded: AtomicBool::new(false),
            memory,
            doomed_bytes: AtomicUsize::new(0),
        }
    }

    /// Counts `n` more bytes; true once the reply should be dropped: the
    /// client's limit has been passed, the process's budget chose it, or it
    /// has gone.
    pub fn add(&self, n: usize) -> bool {
        let Ok(before) = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                (h & CLOSED == 0).then(|| (h & !BYTES) | (h & BYTES).saturating_add(n).min(BYTES))
            })
        else {
            return true;
        };
        let held = (before & BYTES).saturating_add(n);
        if self.limit.is_some_and(|limit| held > limit) {
            self.exceeded.store(true, Ordering::Relaxed);
        }
        self.memory.added(n);
        self.exceeded()
    }

    /// `n` bytes were written to the client (or dropped).
    pub fn release(&self, n: usize) {
        let released = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                (h & CLOSED == 0).then(|| (h & !BYTES) | (h & BYTES).saturating_sub(n))
            });
        if released.is_ok() {
            self.memory.released(n);
        }
    }

    /// The client has gone: what it held leaves the process's total.
    fn close(&self) {
        let before = self.held.swap(CLOSED, Ordering::Relaxed);
        if before & CLOSED == 0 {
            self.memory.released(before & BYTES);
            if before & DOOMED != 0 {
                self.memory
                    .victim_gone(self.doomed_bytes.load(Ordering::Acquire));
            }
        }
    }

    /// See [`ReplySender::doom`].
    fn doom(&self, bytes: usize) -> bool {
        // Set before the mark that makes `close` read it; only one thread
        // chooses at a time (`ReplyMemory::choosing`).
        self.doomed_bytes.store(bytes, Ordering::Release);
        let doomed = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                (h & (CLOSED | DOOMED) == 0).then_some(h | DOOMED)
            })
            .is_ok();
        if doomed {
            self.exceeded.store(true, Ordering::Relaxed);
        }
        doomed
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed) & BYTES
    }

    /// Whether the limit has been passed (it stays passed).
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Arc<ReplyMemory> {
        Arc::new(ReplyMemory::detached())
    }

    #[test]
    fn replies_past_the_limit_are_dropped_but_still_wake_the_client() {
        let inbox = ReplyInbox::new(Some(10), memory());
        let sender = inbox.sender();
        sender.send(0, 1, Bytes::from_static(b"+OK\r\n"));
        assert!(!inbox.budget().exceeded());
        sender.send(1, 1, Bytes::from_static(b"$8\r\n12345678\r\n"));
        assert!(inbox.budget().exceeded());
        let mut got = Vec::new();
        assert!(inbox.try_take(&mut got));
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0].reply[..], b"+OK\r\n");
        assert!(got[1].reply.is_empty(), "dropped, not queued");
        // Writing brings the count down; the verdict stays.
        inbox.budget().release(5);
        assert!(inbox.budget().exceeded());
    }

    #[test]
    fn a_gone_client_refuses_deliveries() {
        let memory = memory();
        let inbox = ReplyInbox::new(None, memory.clone());
        let sender = inbox.sender();
        assert!(sender.same_client(&inbox.sender()));
        assert!(!sender.same_client(&ReplyInbox::new(None, memory.clone()).sender()));
        sender.send(0, 1, Bytes::from_static(b"+OK\r\n"));
        assert_eq!(memory.held(), 5);
        drop(inbox);
        assert_eq!(memory.held(), 0, "what the client held is freed with it");
        // Dropped on the floor: no panic, nothing kept or counted.
        sender.send(1, 1, Bytes::from_static(b"+OK\r\n"));
        assert_eq!(memory.held(), 0);
        assert_eq!(sender.held(), 0);
    }
}
