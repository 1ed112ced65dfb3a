//! Incremental parser for the replies the benchmark reads.
//!
//! A reply is parsed in place from the front of the read buffer and borrowed
//! from it, so checking a reply copies nothing. When the buffer holds only
//! part of a reply the parser says so and the caller reads more; re-parsing a
//! partial reply costs only its header, because a bulk string's length is
//! known from its header and its payload is never scanned. Arrays (which the
//! benchmark never expects) are walked element by element, with a depth limit.

use std::fmt;

/// Longest bulk string accepted (Redis' own `proto-max-bulk-len` default).
const MAX_BULK_LEN: i64 = 512 * 1024 * 1024;
/// Deepest array nesting accepted before the stream is declared broken.
const MAX_DEPTH: usize = 32;
/// Longest simple-string / error / integer line accepted.
const MAX_LINE_LEN: usize = 64 * 1024;

/// One reply, borrowed from the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `+…` status line.
    Simple(&'a [u8]),
    /// `-…` error line.
    Error(&'a [u8]),
    /// `:…` integer.
    Integer(i64),
    /// `$…` bulk string.
    Bulk(&'a [u8]),
    /// `$-1`, `*-1` or RESP3 `_`.
    Nil,
    /// `*N` array; only its length is kept (nothing the benchmark sends
    /// expects an array, so its content is never inspected).
    Array(usize),
}

/// The byte stream is not RESP: the connection can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "protocol error in reply stream: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// Parses the reply at the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of it, otherwise the reply
/// and how many bytes it occupies.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, ProtocolError> {
    // Parsing from offset 0, the end offset is the length.
    parse_at(buf, 0, 0)
}

/// Parses the reply starting at `start`; returns it and the offset just past it.
fn parse_at(
    buf: &[u8],
    start: usize,
    depth: usize,
) -> Result<Option<(Reply<'_>, usize)>, ProtocolError> {
    let Some(line_end) = find_crlf(buf, start + 1)? else {
        return Ok(None);
    };
    let line = &buf[start + 1..line_end];
    let after_line = line_end + 2;
    let reply = match buf[start] {
        b'+' => (Reply::Simple(line), after_line),
        b'-' => (Reply::Error(line), after_line),
        b':' => (Reply::Integer(parse_int(line)?), after_line),
        b'_' => (Reply::Nil, after_line),
        b'$' => {
            let len = parse_int(line)?;
            if len == -1 {
                (Reply::Nil, after_line)
            } else if !(0..=MAX_BULK_LEN).contains(&len) {
                return Err(ProtocolError(format!("bulk length {len}")));
            } else {
                // In range 0..=MAX_BULK_LEN, so it fits in usize.
                let len = len as usize;
                let end = after_line + len;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(ProtocolError("bulk string not terminated by CRLF".into()));
                }
                (Reply::Bulk(&buf[after_line..end]), end + 2)
            }
        }
        b'*' => {
            let len = parse_int(line)?;
            if len == -1 {
                (Reply::Nil, after_line)
            } else if !(0..=MAX_BULK_LEN).contains(&len) {
                return Err(ProtocolError(format!("array length {len}")));
            } else if depth >= MAX_DEPTH {
                return Err(ProtocolError("arrays nested too deeply".into()));
            } else {
                let mut at = after_line;
                for _ in 0..len {
                    match parse_at(buf, at, depth + 1)? {
                        Some((_, next)) => at = next,
                        None => return Ok(None),
                    }
                }
                (Reply::Array(len as usize), at)
            }
        }
        other => {
            return Err(ProtocolError(format!(
                "unexpected type byte {:?}",
                char::from(other)
            )))
        }
    };
    Ok(Some(reply))
}

/// Finds the CRLF ending the line that starts at `from`, if it has arrived.
fn find_crlf(buf: &[u8], from: usize) -> Result<Option<usize>, ProtocolError> {
    if from >= buf.len() {
        return Ok(None);
    }
    match buf[from..].iter().position(|&b| b == b'\r') {
        Some(i) if from + i + 1 < buf.len() => {
            if buf[from + i + 1] == b'\n' {
                Ok(Some(from + i))
            } else {
                Err(ProtocolError("CR not followed by LF".into()))
            }
        }
        // The CR is the last byte received; its LF is still on the way.
        Some(_) => Ok(None),
        None if buf.len() - from > MAX_LINE_LEN => Err(ProtocolError("line too long".into())),
        None => Ok(None),
    }
}

fn parse_int(line: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProtocolError(format!("bad integer {:?}", String::from_utf8_lossy(line))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_reply_type() {
        let cases: &[(&[u8], Reply<'_>)] = &[
            (b"+OK\r\n", Reply::Simple(b"OK")),
            (b"-ERR wrong\r\n", Reply::Error(b"ERR wrong")),
            (b":-12\r\n", Reply::Integer(-12)),
            (b"$3\r\nabc\r\n", Reply::Bulk(b"abc")),
            (b"$0\r\n\r\n", Reply::Bulk(b"")),
            (b"$-1\r\n", Reply::Nil),
            (b"*-1\r\n", Reply::Nil),
            (b"_\r\n", Reply::Nil),
            (b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n", Reply::Array(2)),
        ];
        for (wire, expected) in cases {
            assert_eq!(
                parse(wire),
                Ok(Some((expected.clone(), wire.len()))),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn every_split_point_is_incomplete_then_complete() {
        let stream: &[u8] = b"+OK\r\n$5\r\nhel\rx\r\n:42\r\n*2\r\n$1\r\na\r\n$-1\r\n$-1\r\n";
        let expected = [
            Reply::Simple(b"OK"),
            Reply::Bulk(b"hel\rx"),
            Reply::Integer(42),
            Reply::Array(2),
            Reply::Nil,
        ];
        // Feed the stream in two pieces split at every possible byte, parsing
        // as far as the first piece allows before the second one arrives.
        for split in 0..=stream.len() {
            let mut buf: Vec<u8> = stream[..split].to_vec();
            let mut seen = Vec::new();
            let drain = |buf: &mut Vec<u8>, seen: &mut Vec<String>| {
                while let Some((reply, used)) = parse(buf).unwrap() {
                    seen.push(format!("{reply:?}"));
                    buf.drain(..used);
                }
            };
            drain(&mut buf, &mut seen);
            buf.extend_from_slice(&stream[split..]);
            drain(&mut buf, &mut seen);
            let expected: Vec<String> = expected.iter().map(|r| format!("{r:?}")).collect();
            assert_eq!(seen, expected, "split at {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn garbage_is_a_protocol_error_not_a_panic() {
        for wire in [
            &b"?\r\n"[..],
            b"$abc\r\n",
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b":1\rx",
            b"*-5\r\n",
            b"$99999999999\r\n",
        ] {
            assert!(parse(wire).is_err(), "{wire:?}");
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(parse(deep.as_bytes()).is_err());
        let long_line = vec![b'+'; MAX_LINE_LEN + 2];
        assert!(parse(&long_line).is_err());
    }
}
