//! What a client sends: its read buffer, the request decoder, and the run
//! of shared requests being collected at the front of the buffer.
//!
//! Consecutive requests for the shared lane stay in the read buffer, back
//! to back as they arrived, and go to the lane as one *run* (one hand-over
//! for a whole pipeline) once the input is used up or something else comes
//! between them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use super::buffers;
use crate::codec::{Decoded, ProtocolError, RequestDecoder, RequestLimits};
use crate::net::Stream;
use crate::pool::lane::MAX_RUN;

/// Consecutive requests for the shared lane, collected while decoding.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    /// Sequence number of the first.
    pub seq: u64,
    /// Their bytes: the front of the read buffer.
    pub len: usize,
    pub count: u32,
    /// Bit `i`: request `i` may be resent after a connection loss.
    pub retry_safe: u64,
}

/// See the module docs.
pub(super) struct Input {
    decoder: RequestDecoder,
    /// Bytes read and not yet decoded (the run among them); no buffer at
    /// all while the client is quiet (see [`Input::release_idle_buffer`]).
    buf: BytesMut,
    /// The last read filled the buffer: more is likely waiting, read bigger.
    last_read_filled: bool,
    /// Since when the decoder has been waiting for the rest of a request the
    /// client started (`--request-read-timeout`).
    partial_since: Option<Instant>,
    run: Option<Run>,
    read_buffer_size: usize,
}

impl Input {
    pub fn new(limits: RequestLimits, read_buffer_size: usize) -> Input {
        Input {
            decoder: RequestDecoder::new(limits),
            buf: BytesMut::new(),
            last_read_filled: false,
            partial_since: None,
            run: None,
            read_buffer_size,
        }
    }

    /// Reads what the socket has into the buffer; `Ok(0)` is EOF.
    pub fn poll_read(
        &mut self,
        stream: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            self.buf = buffers::take();
        }
        let spare = self.buf.capacity() - self.buf.len();
        if spare < 512 || (self.last_read_filled && spare < self.read_buffer_size / 2) {
            // Grow to the configured size only for clients whose reads fill
            // the buffer (pipelines, large values).
            self.buf.reserve(self.read_buffer_size);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let read = poll_read_buf(Pin::new(stream), cx, &mut self.buf);
        if let Poll::Ready(Ok(n)) = read {
            self.last_read_filled = n == spare;
        }
        read
    }

    /// Decodes the next request after the run being collected (which stays
    /// in the buffer). `Ok(None)` when the buffer holds no whole request.
    #[inline]
    pub fn decode(&mut self) -> Result<Option<Decoded>, ProtocolError> {
        let start = self.run_len();
        let decoded = self.decoder.decode_at(&mut self.buf, start)?;
        match &decoded {
            Some(Decoded::Request(_) | Decoded::Inline { .. }) => self.partial_since = None,
            Some(Decoded::Nothing { .. }) => {}
            None => {
                if self.decoder.in_progress(&self.buf[start..]) {
                    self.partial_since.get_or_insert_with(Instant::now);
                }
            }
        }
        Ok(decoded)
    }

    /// The bytes after the run, where the last decoded request starts.
    pub fn after_run(&self) -> &[u8] {
        &self.buf[self.run_len()..]
    }

    /// The buffer, for splitting a decoded request off its front (only
    /// with no run collected).
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        debug_assert!(self.run.is_none());
        &mut self.buf
    }

    fn run_len(&self) -> usize {
        self.run.as_ref().map_or(0, |run| run.len)
    }

    /// Adds the request of `len` bytes right after the run to it (it is
    /// request `seq`); `false` when the run is full and must be handed over
    /// first.
    #[inline]
    pub fn extend_run(&mut self, seq: u64, len: usize, retry_safe: bool) -> bool {
        let safe = u64::from(retry_safe);
        match &mut self.run {
            Some(run) if run.count >= MAX_RUN => false,
            Some(run) => {
                debug_assert_eq!(run.seq + u64::from(run.count), seq);
                run.len += len;
                run.retry_safe |= safe << run.count;
                run.count += 1;
                true
            }
            None => {
                self.run = Some(Run {
                    seq,
                    len,
                    count: 1,
                    retry_safe: safe,
                });
                true
            }
        }
    }

    /// Takes the collected run off the front of the buffer, as one piece.
    #[inline]
    pub fn take_run(&mut self) -> Option<(Run, Bytes)> {
        let run = self.run.take()?;
        Some((run, self.buf.split_to(run.len).freeze()))
    }

    /// Drops the first `n` bytes (after the run is handed over).
    pub fn skip(&mut self, n: usize) {
        use bytes::Buf;
        self.buf.advance(n);
    }

    /// Drops everything not yet decoded (the run must be handed over).
    pub fn discard(&mut self) {
        debug_assert!(self.run.is_none());
        self.buf.clear();
        self.partial_since = None;
    }

    /// Raises or lowers the limits (authentication changes them).
    pub fn set_limits(&mut self, limits: RequestLimits) {
        self.decoder.set_limits(limits);
    }

    /// When a request the client started must be complete.
    pub fn partial_since(&self) -> Option<Instant> {
        self.partial_since
    }

    /// An idle client keeps no read buffer: once everything read is decoded
    /// *and answered* (`answered`), the buffer goes back to the thread's
    /// pool. Not sooner: requests in flight still share its memory, and a
    /// buffer handed on in that state could not be reused in place — the
    /// next client to take it would allocate a new one (and a new shared
    /// header), once per request for clients that do not pipeline.
    pub fn release_idle_buffer(&mut self, answered: bool) {
        if answered && self.buf.is_empty() && self.buf.capacity() > 0 {
            buffers::give_back(std::mem::take(&mut self.buf));
        }
    }
}
