//! A lane's outgoing bytes: small requests copied together, large ones
//! queued as they are.
//!
//! Copying a few dozen small requests into one buffer makes one contiguous
//! write (one iovec), which is cheaper for the kernel than many tiny ones.
//! Copying a 1 MiB value is not free, though: a request at least
//! [`SHARE_FROM`] long is queued by reference (the client's own buffer) and
//! goes out through a vectored write next to the copied ones.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

/// Requests this long or longer are not copied.
pub const SHARE_FROM: usize = 16 * 1024;

/// Bytes waiting to be written, in order.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Whole pieces ahead of `tail`, oldest first.
    queued: VecDeque<Bytes>,
    /// Small requests copied together, after everything in `queued`.
    tail: BytesMut,
    len: usize,
}

impl Outbox {
    pub fn with_capacity(capacity: usize) -> Outbox {
        Outbox {
            queued: VecDeque::new(),
            tail: BytesMut::with_capacity(capacity),
            len: 0,
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a request (or any bytes) to be written after what waits.
    pub fn push(&mut self, bytes: &Bytes) {
        if bytes.len() >= SHARE_FROM {
            if !self.tail.is_empty() {
                self.queued.push_back(self.tail.split().freeze());
            }
            self.queued.push_back(bytes.clone());
        } else {
            self.tail.extend_from_slice(bytes);
        }
        self.len += bytes.len();
    }

    /// Appends static bytes (a health-check PING).
    pub fn push_static(&mut self, bytes: &'static [u8]) {
        self.push(&Bytes::from_static(bytes));
    }
}

impl Buf for Outbox {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        match self.queued.front() {
            Some(front) => front,
            None => &self.tail,
        }
    }

    fn advance(&mut self, mut n: usize) {
        assert!(n <= self.len, "advance past the end of the outbox");
        self.len -= n;
        while n > 0 {
            match self.queued.front_mut() {
                Some(front) if n >= front.len() => {
                    n -= front.len();
                    self.queued.pop_front();
                }
                Some(front) => {
                    front.advance(n);
                    n = 0;
                }
                None => {
                    self.tail.advance(n);
                    n = 0;
                }
            }
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let pieces = self
            .queued
            .iter()
            .map(|b| &b[..])
            .chain(std::iter::once(&self.tail[..]))
            .filter(|p| !p.is_empty());
        let mut n = 0;
        for (slot, piece) in dst.iter_mut().zip(pieces) {
            *slot = IoSlice::new(piece);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(outbox: &mut Outbox, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while outbox.has_remaining() {
            let mut slices = [IoSlice::new(&[]); 4];
            let cnt = outbox.chunks_vectored(&mut slices);
            let mut take = 0;
            for s in &slices[..cnt] {
                let room = step - take;
                let part = &s[..s.len().min(room)];
                out.extend_from_slice(part);
                take += part.len();
                if take == step {
                    break;
                }
            }
            outbox.advance(take);
        }
        out
    }

    #[test]
    fn small_requests_share_one_buffer_and_large_ones_are_not_copied() {
        let mut outbox = Outbox::default();
        let big = Bytes::from(vec![7u8; SHARE_FROM]);
        outbox.push(&Bytes::from_static(b"a"));
        outbox.push(&Bytes::from_static(b"b"));
        outbox.push(&big);
        outbox.push(&Bytes::from_static(b"c"));
        assert_eq!(outbox.len(), SHARE_FROM + 3);
        let mut slices = [IoSlice::new(&[]); 8];
        let cnt = outbox.chunks_vectored(&mut slices);
        assert_eq!(cnt, 3);
        assert_eq!(&*slices[0], b"ab");
        // The large request is the caller's own allocation.
        assert_eq!(slices[1].as_ptr(), big.as_ptr());
        assert_eq!(&*slices[2], b"c");
    }

    #[test]
    fn partial_writes_keep_the_bytes_in_order() {
        let big = Bytes::from((0..SHARE_FROM + 5).map(|i| i as u8).collect::<Vec<_>>());
        let pieces = [
            Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"),
            big.clone(),
            Bytes::from_static(b"x"),
            big,
            Bytes::from_static(b"yz"),
        ];
        let all: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        for step in [1, 3, 333, 1 << 20] {
            let mut outbox = Outbox::default();
            // Part is written before the rest arrives.
            outbox.push(&pieces[0]);
            outbox.push(&pieces[1]);
            let mut written = drain_some(&mut outbox, 7);
            for piece in &pieces[2..] {
                outbox.push(piece);
            }
            assert_eq!(outbox.len(), all.len() - written.len());
            written.extend(drain(&mut outbox, step));
            assert_eq!(written, all, "step {step}");
            assert!(outbox.is_empty());
            assert_eq!(outbox.chunk(), b"");
        }
    }

    fn drain_some(outbox: &mut Outbox, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n && outbox.has_remaining() {
            let take = outbox.chunk().len().min(n - out.len());
            out.extend_from_slice(&outbox.chunk()[..take]);
            outbox.advance(take);
        }
        out
    }
}
