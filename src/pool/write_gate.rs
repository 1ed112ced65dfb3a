//! When a lane writes: at once, or after its previous write was answered.
//!
//! A lane that writes every request the moment it arrives sends Redis one
//! small write per client wake-up. Redis then reads, runs and replies to a
//! handful of commands at a time, and every step costs a system call and a
//! wake-up on both sides. Holding new requests while an earlier write is
//! still unanswered lets the requests of many clients pile up and leave in
//! one write, at the moment Redis has just finished the previous batch: it
//! is Nagle's algorithm with Redis's replies as the acknowledgement. Nothing
//! waits when the lane is idle, so a lone client pays no delay; under load a
//! request waits at most for the batch ahead of it, which Redis, being
//! single-threaded per connection, would have run first anyway.

use std::collections::VecDeque;

/// Queued runs at which the gate opens even with a write unanswered: the
/// batch is already large, and Redis should not sit idle while the lane
/// waits for the previous one.
pub const OPEN_AT_QUEUED_RUNS: usize = 64;

/// Tracks the lane's writes that are not fully answered yet.
#[derive(Debug)]
pub struct WriteGate {
    enabled: bool,
    /// Byte offset (in the lane's output stream) of the end of each write
    /// batch with replies outstanding, oldest first.
    unanswered: VecDeque<u64>,
}

impl WriteGate {
    /// `enabled: false` always lets requests through (`--batch-writes off`).
    pub fn new(enabled: bool) -> WriteGate {
        WriteGate {
            enabled,
            unanswered: VecDeque::new(),
        }
    }

    /// Forgets the batches answered in full, given the end offset of the
    /// oldest request still waiting for its reply (`None`: all answered).
    pub fn answered_up_to(&mut self, oldest_unanswered_end: Option<u64>) {
        while let Some(&end) = self.unanswered.front() {
            if oldest_unanswered_end.is_some_and(|oldest| oldest <= end) {
                break;
            }
            self.unanswered.pop_front();
        }
    }

    /// Whether queued requests may go into the write buffer now.
    pub fn open(&self, queued_runs: usize) -> bool {
        !self.enabled || self.unanswered.is_empty() || queued_runs >= OPEN_AT_QUEUED_RUNS
    }

    /// Records a batch of new bytes moved into the write buffer, ending at
    /// `end` (past the end of the previous batch).
    pub fn wrote(&mut self, end: u64) {
        if self.enabled {
            debug_assert!(self.unanswered.back().is_none_or(|&last| last < end));
            self.unanswered.push_back(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_lane_writes_at_once() {
        let gate = WriteGate::new(true);
        assert!(gate.open(1));
    }

    #[test]
    fn requests_wait_until_the_previous_batch_is_answered() {
        let mut gate = WriteGate::new(true);
        gate.wrote(100);
        assert!(!gate.open(1));
        // The first of its requests answered; one ending at 100 is not.
        gate.answered_up_to(Some(100));
        assert!(!gate.open(1));
        gate.answered_up_to(None);
        assert!(gate.open(1));
    }

    #[test]
    fn only_the_oldest_batch_holds_the_gate() {
        let mut gate = WriteGate::new(true);
        gate.wrote(100);
        gate.wrote(250);
        // Everything up to 100 answered: the batch ending at 250 remains.
        gate.answered_up_to(Some(180));
        assert!(!gate.open(1));
        gate.answered_up_to(Some(300));
        assert!(gate.open(1));
    }

    #[test]
    fn a_large_backlog_opens_the_gate() {
        let mut gate = WriteGate::new(true);
        gate.wrote(100);
        assert!(!gate.open(OPEN_AT_QUEUED_RUNS - 1));
        assert!(gate.open(OPEN_AT_QUEUED_RUNS));
    }

    #[test]
    fn disabled_it_never_holds() {
        let mut gate = WriteGate::new(false);
        gate.wrote(100);
        assert!(gate.open(1));
    }
}
