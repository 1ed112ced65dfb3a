//! Helpers shared by the fuzz targets (included with `#[path]`).
#![allow(dead_code)]

use bytes::BytesMut;
use respool::codec::{ProtocolError, RequestLimits};
use tokio_util::codec::Decoder;

/// Limits small enough that the fuzzer reaches every limit check with short
/// inputs.
pub const SMALL_LIMITS: RequestLimits = RequestLimits {
    max_bulk_len: 16,
    max_args: 4,
    unauthenticated: false,
};

/// Nesting cap small enough for the fuzzer to hit it often.
pub const SMALL_DEPTH: usize = 3;

/// What feeding a byte stream to a decoder produced: every item, how it
/// ended, and what was left unconsumed in the buffer.
#[derive(Debug)]
pub struct Outcome<T> {
    pub items: Vec<T>,
    pub error: Option<ProtocolError>,
    pub rest: BytesMut,
}

/// Feeds `input` to `decoder` in pieces ending at each of `cuts` (sorted,
/// each ≤ input.len()) and then at the end, draining items after each piece.
/// Stops at the first error, as the proxy does (it closes the connection).
pub fn feed<D>(decoder: &mut D, input: &[u8], cuts: &[usize]) -> Outcome<D::Item>
where
    D: Decoder<Error = ProtocolError>,
{
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&input.len())) {
        buf.extend_from_slice(&input[from..to]);
        from = to;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        items,
                        error: Some(e),
                        rest: buf,
                    }
                }
            }
        }
    }
    Outcome {
        items,
        error: None,
        rest: buf,
    }
}

/// Errors about a line that had no CRLF within the length cap: whether one
/// fires can depend on how the input was split (the cap is checked on what
/// has arrived), so split equivalence compares only error-ness for them.
pub fn is_length_cap(e: &ProtocolError) -> bool {
    matches!(
        e,
        ProtocolError::MultibulkCountTooLong
            | ProtocolError::BulkCountTooLong
            | ProtocolError::InlineTooLong
    )
}
