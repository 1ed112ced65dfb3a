//! A client's runs for the primaries of a cluster, gathered across one read.
//!
//! In front of a cluster a pipeline's requests go to several primaries,
//! interleaved. The run being collected at the front of the read buffer
//! ([`super::input`]) ends where the primary changes; rather than going to
//! its lane at once, it waits here, and the later runs of the same read for
//! the same primary join it. They all go to their lanes when the run would
//! have gone anyway: the read is used up, or a request comes that is not a
//! plain shared one. So each primary's lane takes one message per read, as
//! one upstream's does, instead of one per change of primary.
//!
//! A joined run's requests keep their order, and fill the client's slots
//! with gaps between them (the other primaries' requests): the lane
//! delivers their replies piece by piece at each gap
//! ([`crate::pool::lane::LaneRequest::slots`]). Requests for different
//! primaries run on different nodes, where nothing ever ordered them.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

use super::input::Run;
use super::routing::Target;

/// Runs waiting for their lanes, one entry per target; entries (and their
/// piece lists) are kept from read to read for their allocations.
#[derive(Default)]
pub(super) struct NodeRuns {
    waiting: Vec<Waiting>,
    /// Entries in use: `waiting[..used]`.
    used: usize,
}

/// One target's runs of the read so far.
pub(super) struct Waiting {
    target: Target,
    /// The slot of the first request.
    seq: u64,
    /// Bit `j`: a request fills slot `seq + j`.
    mask: u64,
    count: u32,
    retry_safe: u64,
    /// The runs' bytes, each as it left the read buffer.
    pieces: Vec<Bytes>,
}

/// What goes to a lane: a run of one target's requests.
pub(super) struct Gathered {
    pub target: Target,
    pub seq: u64,
    pub count: u32,
    pub retry_safe: u64,
    pub raw: Bytes,
    /// As [`crate::pool::lane::LaneRequest::slots`] gives them (0:
    /// consecutive).
    pub slots: u64,
}

/// The lowest `n` bits (`n` ≤ 64).
fn low_bits(n: u32) -> u64 {
    u64::MAX >> (64 - n.clamp(1, 64))
}

/// Size of the per-thread buffer joined runs are copied into.
const ARENA: usize = 64 * 1024;

thread_local! {
    /// Where joined runs are copied: one allocation serves many, and is
    /// reused in place once the lanes have written (and dropped) them all.
    static JOINED: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `pieces` back to back, in one buffer.
fn join(pieces: &[Bytes]) -> Bytes {
    let len: usize = pieces.iter().map(Bytes::len).sum();
    JOINED.with(|arena| {
        let mut arena = arena.borrow_mut();
        if arena.capacity() - arena.len() < len {
            // A fresh block (or the old one, once every run copied into
            // it has been written and dropped).
            arena.reserve(len.max(ARENA));
        }
        for piece in pieces {
            arena.extend_from_slice(piece);
        }
        arena.split().freeze()
    })
}

impl Waiting {
    fn start(&mut self, target: Target, run: Run, raw: Bytes) {
        self.target = target;
        self.seq = run.seq;
        self.mask = low_bits(run.count);
        self.count = run.count;
        self.retry_safe = run.retry_safe;
        self.pieces.clear();
        self.pieces.push(raw);
    }

    /// Whether `run` (later than everything here) can join: every slot of
    /// the result within 64 of the first, so that one mask describes them.
    fn takes(&self, run: &Run) -> bool {
        run.seq + u64::from(run.count) - self.seq <= 64
    }

    fn join(&mut self, run: Run, raw: Bytes) {
        self.mask |= low_bits(run.count) << (run.seq - self.seq);
        self.retry_safe |= run.retry_safe << self.count;
        self.count += run.count;
        self.pieces.push(raw);
    }

    fn gathered(&mut self) -> Gathered {
        let raw = match &self.pieces[..] {
            [one] => one.clone(),
            pieces => join(pieces),
        };
        self.pieces.clear();
        Gathered {
            target: self.target,
            seq: self.seq,
            count: self.count,
            retry_safe: self.retry_safe,
            raw,
            slots: if self.mask == low_bits(self.count) {
                0
            } else {
                self.mask
            },
        }
    }
}

impl NodeRuns {
    /// Nothing waits (always so for one upstream).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Keeps `run` (its bytes `raw`) for `target`, after that target's
    /// earlier runs of the read; returns those if the new one cannot join
    /// them (they must go to the lane first).
    pub fn stash(&mut self, target: Target, run: Run, raw: Bytes) -> Option<Gathered> {
        let used = &mut self.waiting[..self.used];
        if let Some(waiting) = used.iter_mut().find(|w| w.target == target) {
            if waiting.takes(&run) {
                waiting.join(run, raw);
                return None;
            }
            let full = waiting.gathered();
            waiting.start(target, run, raw);
            return Some(full);
        }
        if self.used == self.waiting.len() {
            self.waiting.push(Waiting {
                target,
                seq: 0,
                mask: 0,
                count: 0,
                retry_safe: 0,
                pieces: Vec::new(),
            });
        }
        self.waiting[self.used].start(target, run, raw);
        self.used += 1;
        None
    }

    /// Everything waiting, to hand to the lanes, in the order the targets
    /// first came.
    pub fn take_all(&mut self) -> impl Iterator<Item = Gathered> + '_ {
        let used = std::mem::take(&mut self.used);
        self.waiting[..used].iter_mut().map(Waiting::gathered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seq: u64, count: u32, retry_safe: u64, raw: &'static [u8]) -> (Run, Bytes) {
        let run = Run {
            seq,
            len: raw.len(),
            count,
            retry_safe,
        };
        (run, Bytes::from_static(raw))
    }

    #[test]
    fn a_primary_s_runs_of_one_read_join_with_gaps_between_their_slots() {
        let mut runs = NodeRuns::default();
        let (a, b) = (Target::Node(0), Target::Node(1));
        for (target, (r, raw)) in [
            (a, run(10, 2, 0b01, b"A1A2")),
            (b, run(12, 1, 0b1, b"B3")),
            (a, run(13, 1, 0b1, b"A4")),
            (b, run(14, 2, 0b00, b"B5B6")),
        ] {
            assert!(runs.stash(target, r, raw).is_none());
        }
        let parts: Vec<_> = runs
            .take_all()
            .map(|g| (g.target, g.seq, g.count, g.retry_safe, (g.raw, g.slots)))
            .collect();
        assert!(runs.is_empty());
        assert_eq!(
            parts,
            vec![
                // Slots 10, 11 and 13.
                (a, 10, 3, 0b101, (Bytes::from_static(b"A1A2A4"), 0b1011)),
                // Slots 12, 14, 15.
                (b, 12, 3, 0b001, (Bytes::from_static(b"B3B5B6"), 0b1101)),
            ]
        );
    }

    #[test]
    fn consecutive_slots_say_so_and_a_far_run_sends_the_waiting_one_first() {
        let mut runs = NodeRuns::default();
        let a = Target::Node(0);
        let (r, raw) = run(0, 2, 0, b"xy");
        assert!(runs.stash(a, r, raw).is_none());
        let (r, raw) = run(2, 1, 0, b"z");
        assert!(runs.stash(a, r, raw).is_none());
        // Slot 64 is too far from slot 0 for one mask.
        let (r, raw) = run(64, 1, 1, b"w");
        let first = runs.stash(a, r, raw).expect("the waiting run goes first");
        assert_eq!((first.seq, first.count), (0, 3));
        assert_eq!((first.raw, first.slots), (Bytes::from_static(b"xyz"), 0));
        let rest: Vec<_> = runs.take_all().map(|w| (w.seq, w.count)).collect();
        assert_eq!(rest, vec![(64, 1)]);
    }
}
