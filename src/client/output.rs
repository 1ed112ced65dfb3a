//! What a client is owed: a slot per request in arrival order, filled as
//! replies are resolved (locally, by a lane, by the pinned session), and
//! the bytes of the resolved prefix waiting for the socket.
//!
//! Whatever prefix of the slots is filled moves to the output and is
//! written, so replies leave in request order no matter the order in which
//! they were resolved. Every reply byte held counts against the client's
//! budget (`--client-output-limit`) until the socket takes it.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use std::sync::Arc;

use super::inbox::{Delivery, OutputBudget, ReplyInbox, ReplySender};
use super::roster::ReplyMemory;
use crate::net::Stream;

/// Replies up to this size are copied into the output buffer; larger ones are
/// written from their own buffer to avoid copying megabytes.
const COPY_LIMIT: usize = 16 * 1024;

/// See the module docs.
pub(super) struct Output {
    /// Where lanes deliver this client's replies.
    inbox: ReplyInbox,
    /// Deliveries taken from `inbox`, kept for its allocation.
    arrived: Vec<Delivery>,
    /// Replies in request order; `None` until resolved.
    pending: VecDeque<Option<Bytes>>,
    /// Sequence number of `pending[0]`.
    base_seq: u64,
    /// Slots waiting on the shared lane.
    shared_pending: usize,
    /// Resolved replies waiting to be written: small ones coalesced into
    /// `small`, large ones queued as their own buffers.
    out: VecDeque<Bytes>,
    small: BytesMut,
    /// The stream took bytes since it was last flushed (TLS keeps records).
    unflushed: bool,
}

impl Output {
    pub fn new(client: u64, limit: Option<usize>, memory: Arc<ReplyMemory>) -> Output {
        Output {
            inbox: ReplyInbox::for_client(client, limit, memory),
            arrived: Vec::new(),
            pending: VecDeque::new(),
            base_seq: 0,
            shared_pending: 0,
            out: VecDeque::new(),
            small: BytesMut::new(),
            unflushed: false,
        }
    }

    /// Where a request's replies are to go.
    pub fn sender(&self) -> ReplySender {
        self.inbox.sender()
    }

    /// The client's output budget.
    pub fn budget(&self) -> &OutputBudget {
        self.inbox.budget()
    }

    /// Takes what the lanes delivered into the slots; ready when there was
    /// something. Taking the deliveries leaves the waker registered, and
    /// the mailbox empty: the next delivery wakes the task.
    #[inline]
    pub fn poll_deliveries(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.inbox.poll_take(cx, &mut self.arrived).is_pending() {
            return Poll::Pending;
        }
        let mut arrived = std::mem::take(&mut self.arrived);
        for d in arrived.drain(..) {
            self.resolve_delivery(d);
        }
        self.arrived = arrived;
        Poll::Ready(())
    }

    /// The sequence number the next request gets.
    pub fn next_seq(&self) -> u64 {
        self.base_seq + self.pending.len() as u64
    }

    /// Whether request `seq` has its reply (written out, or waiting to be).
    pub fn is_answered(&self, seq: u64) -> bool {
        match seq.checked_sub(self.base_seq) {
            None => true,
            Some(i) => self.pending.get(i as usize).is_some_and(Option::is_some),
        }
    }

    /// Requests whose replies are not all written out yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Slots waiting on the shared lane.
    pub fn shared_pending(&self) -> usize {
        self.shared_pending
    }

    /// Opens the slot of a request whose reply comes later (from the
    /// session); its sequence number.
    pub fn open_slot(&mut self) -> u64 {
        let seq = self.next_seq();
        self.pending.push_back(None);
        seq
    }

    /// Opens the slot of a request for the shared lane.
    pub fn open_shared_slot(&mut self) -> u64 {
        self.shared_pending += 1;
        self.open_slot()
    }

    /// A request answered at once.
    pub fn push_ready(&mut self, reply: Bytes) {
        self.budget().add(reply.len());
        self.pending.push_back(Some(reply));
    }

    /// Answers `count` shared requests from `seq` on with `error` each (the
    /// lane refused them).
    pub fn fail_shared(&mut self, seq: u64, count: u32, error: &Bytes) {
        for seq in seq..seq + u64::from(count) {
            self.budget().add(error.len());
            self.resolve(seq, error.clone());
        }
        self.shared_pending -= count as usize;
    }

    /// Answers every slot still waiting with `error`; false if none was.
    pub fn fail_waiting(&mut self, error: &Bytes) -> bool {
        let mut any = false;
        for slot in self.pending.iter_mut().filter(|s| s.is_none()) {
            self.inbox.budget().add(error.len());
            *slot = Some(error.clone());
            any = true;
        }
        any
    }

    /// A delivery from the lane: the replies to `d.count` requests, back to
    /// back. The first slot takes all the bytes, the others an empty reply,
    /// so they are written out together in one piece.
    fn resolve_delivery(&mut self, d: Delivery) {
        if d.count == 0 {
            // Answers nothing (lanes never send one; a slot must not be
            // filled by it).
            self.budget().release(d.reply.len());
            return;
        }
        self.shared_pending = self.shared_pending.saturating_sub(d.count as usize);
        self.resolve(d.seq, d.reply);
        for seq in d.seq + 1..d.seq + u64::from(d.count) {
            self.resolve(seq, Bytes::new());
        }
    }

    /// Fills the slot of request `seq` with a reply already counted in the
    /// budget (uncounted again if there is no such slot).
    pub fn resolve(&mut self, seq: u64, reply: Bytes) {
        let slot = seq
            .checked_sub(self.base_seq)
            .and_then(|index| self.pending.get_mut(index as usize));
        match slot {
            Some(slot @ None) => *slot = Some(reply),
            _ => self.budget().release(reply.len()),
        }
    }

    /// Moves the resolved prefix of the slots to the output.
    pub fn collect_ready(&mut self) {
        while let Some(Some(_)) = self.pending.front() {
            let Some(Some(reply)) = self.pending.pop_front() else {
                break;
            };
            self.base_seq += 1;
            self.push_out(reply);
        }
    }

    /// Queues bytes for the socket ahead of the replies still waiting (a
    /// pub/sub message), counted in the budget.
    pub fn push_out_of_band(&mut self, frame: Bytes) {
        self.budget().add(frame.len());
        self.push_out(frame);
    }

    fn push_out(&mut self, reply: Bytes) {
        if reply.len() <= COPY_LIMIT {
            self.small.extend_from_slice(&reply);
        } else {
            if !self.small.is_empty() {
                self.out.push_back(self.small.split().freeze());
            }
            self.out.push_back(reply);
        }
    }

    /// Bytes wait for the socket (or a TLS flush).
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty() || !self.small.is_empty() || self.unflushed
    }

    /// Nothing is owed: no slot open, nothing to write.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && !self.wants_write()
    }

    /// Drops everything owed (a connection closed without a word).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.out.clear();
        self.small.clear();
    }

    /// Writes as much as the socket takes now, then flushes; ready when the
    /// socket took something (or a flush finished), pending (with the
    /// waker registered) when it takes nothing more. What the socket takes
    /// is counted in `sent`.
    pub fn poll_write(
        &mut self,
        stream: &mut Stream,
        cx: &mut Context<'_>,
        sent: &crate::stats::Counter,
    ) -> Poll<io::Result<()>> {
        let mut wrote = false;
        loop {
            let chunk: &[u8] = match self.out.front() {
                Some(b) => b,
                None if !self.small.is_empty() => &self.small,
                None => break,
            };
            match stream.poll_send(cx, chunk) {
                Poll::Ready(Ok(n)) => {
                    sent.add(n as u64);
                    self.budget().release(n);
                    wrote = true;
                    self.unflushed = stream.buffers_writes();
                    if let Some(front) = self.out.front_mut() {
                        front.advance(n);
                        if front.is_empty() {
                            self.out.pop_front();
                        }
                    } else {
                        self.small.advance(n);
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if wrote => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.small.capacity() > 64 * 1024 {
            self.small = BytesMut::new();
        }
        if self.unflushed {
            match Pin::new(stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if !wrote => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        if wrote {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}
