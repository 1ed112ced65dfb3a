//! RESP framing.
//!
//! * [`request`] decodes client requests — RESP arrays of bulk strings, or
//!   inline commands — into [`Request`]s that keep their raw bytes, so they are
//!   forwarded verbatim. Limits are checked before anything is buffered for a
//!   frame, and nesting is refused outright: a client request is flat.
//! * [`reply`] splits upstream replies (RESP2 and RESP3) into whole frames as
//!   raw `Bytes`, without re-encoding, with a nesting-depth cap.
//!
//! * [`Value`] reads a delimited reply frame as typed values, for what
//!   respool says to Redis on its own account, for `respool bench` and for
//!   the tests: one reply parser for all of them.
//!
//! Both decoders implement `tokio_util::codec::Decoder` and remember how far
//! they scanned a partial frame, so framing stays linear in the bytes received
//! however finely the input is split.

use bytes::BytesMut;

mod inline;
pub mod reply;
pub mod request;
mod value;

pub use reply::{ReplyDecoder, ReplyKind};
pub use request::{
    first_request_len, Decoded, Request, RequestDecoder, RequestLimits, RequestRef, RequestSpan,
};
pub use value::{Elements, Value};

/// Why a byte stream is not valid RESP. The texts match Redis's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// `*<n>` with n not a number or out of range.
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    /// More than 10 arguments before the client authenticated.
    #[error("unauthenticated multibulk length")]
    UnauthenticatedMultibulk,
    /// A bulk string over 16 KiB before the client authenticated.
    #[error("unauthenticated bulk length")]
    UnauthenticatedBulk,
    /// `$<n>` with n not a number or out of range.
    #[error("invalid bulk length")]
    InvalidBulkLength,
    /// Something other than `$` where a bulk string must start.
    #[error("expected '$', got '{0}'")]
    ExpectedBulk(char),
    /// A `*` count line without CRLF in the first 64 KiB.
    #[error("too big mbulk count string")]
    MultibulkCountTooLong,
    /// A `$` length line without CRLF in the first 64 KiB.
    #[error("too big bulk count string")]
    BulkCountTooLong,
    /// An inline command without a newline in the first 64 KiB.
    #[error("too big inline request")]
    InlineTooLong,
    /// Inline command with an unterminated quote.
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A bulk string not followed by CRLF.
    #[error("expected CRLF after bulk string")]
    MissingCrlf,
    /// The peer looks like an HTTP client (Redis closes these silently).
    #[error("HTTP request on a Redis port")]
    Http,
    /// Upstream reply: unknown type byte.
    #[error("unknown reply type byte 0x{0:02x}")]
    UnknownType(u8),
    /// Upstream reply: aggregates nested deeper than the cap.
    #[error("reply nested deeper than {0} levels")]
    TooDeep(usize),
    /// Upstream reply: a header line that is not valid.
    #[error("malformed reply header")]
    BadHeader,
    /// The socket failed while reading (only when used through `Framed`).
    #[error("{0}")]
    Io(String),
}

impl From<std::io::Error> for ProtocolError {
    fn from(e: std::io::Error) -> Self {
        ProtocolError::Io(e.to_string())
    }
}

/// Longest line (inline command, or a `*`/`$` header) accepted without a CRLF,
/// as in Redis (PROTO_INLINE_MAX_SIZE).
pub const MAX_INLINE_LEN: usize = 64 * 1024;

/// Parses a RESP integer line (`-1`, `42`) strictly, as Redis's `string2ll`
/// does: optional minus, digits, no spaces, no overflow, and no leading zero
/// (`03`, `-0`). Requests are forwarded verbatim, so a length Redis would
/// refuse must be refused here, or it would break a shared upstream
/// connection.
pub(crate) fn parse_int(line: &[u8]) -> Option<i64> {
    let (neg, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    if digits[0] == b'0' && (neg || digits.len() > 1) {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((d - b'0') as i64)?;
    }
    Some(if neg { -v } else { v })
}

/// Whether a bulk string's body, ending at `end` in `buf[start..]`, has
/// arrived with its CRLF. If not, makes room for the rest at once instead of
/// growing the buffer piece by piece — but at most `reserve_cap` bytes: a
/// header alone must not make a peer reserve the whole length it claims.
#[inline]
pub(crate) fn bulk_body_arrived(
    buf: &mut BytesMut,
    start: usize,
    end: usize,
    reserve_cap: usize,
) -> Result<bool, ProtocolError> {
    let input = &buf[start..];
    if input.len() < end + 2 {
        let missing = end + 2 - input.len();
        buf.reserve(missing.min(reserve_cap));
        return Ok(false);
    }
    if &input[end..end + 2] != b"\r\n" {
        return Err(ProtocolError::MissingCrlf);
    }
    Ok(true)
}

/// Bytes [`find_crlf`] scans one by one before it hands over to `memchr`.
/// Nearly every line it looks for is a header (`*2`, `$16`, `:1`, `+OK`):
/// a plain loop finds their CR in a few steps, where `memchr` pays its
/// vector setup and tail handling first (callgrind: 125 of the ~1 700
/// instructions respool spends per pipelined GET were in `memchr`).
const SCAN_BEFORE_MEMCHR: usize = 16;

/// Index of the `\r` of the first CRLF at or after `from`, if any.
pub(crate) fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    let scan_end = buf.len().min(from.saturating_add(SCAN_BEFORE_MEMCHR));
    while at < scan_end {
        if buf[at] == b'\r' {
            match buf.get(at + 1) {
                Some(b'\n') => return Some(at),
                Some(_) => {}
                None => return None,
            }
        }
        at += 1;
    }
    while at < buf.len() {
        let rel = memchr::memchr(b'\r', &buf[at..])?;
        let cr = at + rel;
        match buf.get(cr + 1) {
            Some(b'\n') => return Some(cr),
            Some(_) => at = cr + 1,
            None => return None,
        }
    }
    None
}

/// A small deterministic generator (xorshift) for the randomized codec tests.
#[cfg(test)]
pub(crate) fn test_rng(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_are_strict() {
        assert_eq!(parse_int(b"42"), Some(42));
        assert_eq!(parse_int(b"-1"), Some(-1));
        assert_eq!(parse_int(b""), None);
        assert_eq!(parse_int(b"-"), None);
        assert_eq!(parse_int(b"1 "), None);
        assert_eq!(parse_int(b"+1"), None);
        assert_eq!(parse_int(b"99999999999999999999"), None);
        // Redis refuses leading zeros (string2ll): so must we.
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"03"), None);
        assert_eq!(parse_int(b"00"), None);
        assert_eq!(parse_int(b"-0"), None);
        assert_eq!(parse_int(b"-01"), None);
        assert_eq!(parse_int(b"10"), Some(10));
    }

    #[test]
    fn crlf_search_skips_lone_cr() {
        assert_eq!(find_crlf(b"ab\rc\r\n", 0), Some(4));
        assert_eq!(find_crlf(b"ab\r", 0), None);
        assert_eq!(find_crlf(b"\r\n\r\n", 1), Some(2));
    }

    /// The byte-by-byte scan and the `memchr` search behind it must find the
    /// same CRLF as a plain search, wherever it lies relative to the point
    /// where one hands over to the other (lone CRs and LFs on either side).
    #[test]
    fn crlf_search_agrees_with_a_plain_search_across_the_memchr_handover() {
        let mut next = test_rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            let len = (next() % 48) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| match next() % 8 {
                    0 => b'\r',
                    1 => b'\n',
                    _ => b'x',
                })
                .collect();
            let from = (next() % (len as u64 + 1)) as usize;
            let plain = buf[from..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .map(|i| from + i);
            assert_eq!(find_crlf(&buf, from), plain, "{buf:?} from {from}");
        }
    }
}
