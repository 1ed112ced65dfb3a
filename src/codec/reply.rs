//! Upstream reply framing: splits whole RESP2/RESP3 frames off the read buffer
//! as raw `Bytes`, without decoding their contents.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::{find_crlf, parse_int, ProtocolError};

/// Longest header or simple-string line accepted in a reply.
const MAX_REPLY_LINE: usize = 64 << 20;
/// Largest bulk reply accepted (well above Redis's own 512 MiB default).
const MAX_REPLY_BULK: i64 = 4 << 30;
/// Nesting cap for replies from the upstream, far above anything Redis can
/// send, so that every reply Redis produces is forwarded.
///
/// Ordinary replies (COMMAND DOCS, XINFO STREAM FULL) stay below 10 levels,
/// but a Lua script (EVAL, FCALL) may return any table, a self-referencing
/// one included: Redis 7.0 converts it level by level until the Lua C stack
/// (`LUAI_MAXCSTACK`, 8 000 slots) runs out, and sends 7 995 levels ending in
/// `-ERR reached lua stack limit`; EXEC wraps that in one more. Nested maps
/// and sets take more stack per level, so they end sooner. Only a module
/// could nest deeper.
///
/// The cap is eight times that, to leave room for other builds and
/// versions, and is still safe: the decoder never recurses, and keeps 8
/// bytes per open level for at least 4 bytes (`*1\r\n`) of the frame already
/// buffered, so its stack is at most twice the frame's size, and at most
/// 512 KiB. What the cap still catches is a stream that is no reply at all.
pub const UPSTREAM_MAX_DEPTH: usize = 1 << 16;

/// What kind of frame a reply is, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// An error reply (`-` or RESP3 `!`).
    Error,
    /// An out-of-band RESP3 push (`>`), not the answer to a request.
    Push,
    /// Any other reply.
    Value,
}

impl ReplyKind {
    /// Classifies a complete frame.
    pub fn of(frame: &[u8]) -> ReplyKind {
        match frame.first() {
            Some(b'-' | b'!') => ReplyKind::Error,
            Some(b'>') => ReplyKind::Push,
            _ => ReplyKind::Value,
        }
    }
}

/// Splits replies off a buffer; see the module docs. Remembers how far it got
/// into an incomplete frame, so each byte is scanned once.
#[derive(Debug)]
pub struct ReplyDecoder {
    max_depth: usize,
    /// Offset of the next unscanned item of the current frame.
    pos: usize,
    /// Items still expected by each open aggregate, innermost last.
    open: Vec<u64>,
    /// How far an incomplete header line was already searched for CRLF.
    line_scanned: usize,
}

impl Default for ReplyDecoder {
    /// A decoder for the upstream's replies, capped at
    /// [`UPSTREAM_MAX_DEPTH`].
    fn default() -> Self {
        ReplyDecoder::new(UPSTREAM_MAX_DEPTH)
    }
}

impl ReplyDecoder {
    /// A decoder that refuses frames nested deeper than `max_depth`.
    pub fn new(max_depth: usize) -> Self {
        ReplyDecoder {
            max_depth,
            pos: 0,
            open: Vec::new(),
            line_scanned: 0,
        }
    }

    /// True when a frame has started arriving but is incomplete.
    pub fn in_frame(&self) -> bool {
        self.pos > 0 || !self.open.is_empty()
    }
}

impl Decoder for ReplyDecoder {
    type Item = Bytes;
    type Error = ProtocolError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        Ok(self
            .decode_at(buf, 0)?
            .map(|len| buf.split_to(len).freeze()))
    }
}

impl ReplyDecoder {
    /// Finds the end of the frame that starts at `buf[start..]` and returns
    /// its length, leaving it in `buf`, so that the replies to a pipeline
    /// can be taken out together. Progress on an incomplete frame is kept
    /// relative to `start`: call again with the same start (or, after taking
    /// the bytes before it out of `buf`, with the start moved back by as
    /// many) once more bytes arrived. A bulk string whose header has arrived
    /// makes room for its body at once (up to 64 MiB), instead of the
    /// buffer growing piece by piece.
    #[inline]
    pub fn decode_at(
        &mut self,
        buf: &mut BytesMut,
        start: usize,
    ) -> Result<Option<usize>, ProtocolError> {
        match self.scan(&buf[start..])? {
            Scan::Complete(len) => Ok(Some(len)),
            Scan::Incomplete { missing } => {
                if missing > 0 {
                    buf.reserve(missing.min(64 << 20));
                }
                Ok(None)
            }
        }
    }

    /// The length of the frame at the start of `input`, if all of it is
    /// there; see [`decode_at`](Self::decode_at).
    pub fn frame_len(&mut self, input: &[u8]) -> Result<Option<usize>, ProtocolError> {
        match self.scan(input)? {
            Scan::Complete(len) => Ok(Some(len)),
            Scan::Incomplete { .. } => Ok(None),
        }
    }

    fn scan(&mut self, input: &[u8]) -> Result<Scan, ProtocolError> {
        loop {
            let Some(&kind) = input.get(self.pos) else {
                return Ok(Scan::Incomplete { missing: 0 });
            };
            let search_from = (self.pos + 1).max(self.line_scanned);
            let Some(cr) = find_crlf(input, search_from) else {
                if input.len() - self.pos > MAX_REPLY_LINE {
                    return Err(ProtocolError::BadHeader);
                }
                // A CR may be the last byte; search again from it next time.
                self.line_scanned = input.len().saturating_sub(1).max(self.pos + 1);
                return Ok(Scan::Incomplete { missing: 0 });
            };
            self.line_scanned = 0;
            let line = &input[self.pos + 1..cr];
            let next = cr + 2;
            // Items this one opens (0 for a scalar or an empty aggregate).
            let children: u64 = match kind {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                    self.pos = next;
                    0
                }
                b'$' | b'=' | b'!' => {
                    let len = parse_int(line).ok_or(ProtocolError::BadHeader)?;
                    if len == -1 && kind == b'$' {
                        self.pos = next;
                    } else {
                        if !(0..=MAX_REPLY_BULK).contains(&len) {
                            return Err(ProtocolError::BadHeader);
                        }
                        let end = next + len as usize;
                        if input.len() < end + 2 {
                            return Ok(Scan::Incomplete {
                                missing: end + 2 - input.len(),
                            });
                        }
                        if &input[end..end + 2] != b"\r\n" {
                            return Err(ProtocolError::MissingCrlf);
                        }
                        self.pos = end + 2;
                    }
                    0
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_int(line).ok_or(ProtocolError::BadHeader)?;
                    self.pos = next;
                    if n == -1 && kind == b'*' {
                        0
                    } else {
                        if n < 0 || n > i32::MAX as i64 {
                            return Err(ProtocolError::BadHeader);
                        }
                        let n = n as u64;
                        match kind {
                            b'%' => 2 * n,
                            // An attribute map is followed by the reply it annotates.
                            b'|' => 2 * n + 1,
                            _ => n,
                        }
                    }
                }
                other => return Err(ProtocolError::UnknownType(other)),
            };
            if children > 0 {
                if self.open.len() >= self.max_depth {
                    return Err(ProtocolError::TooDeep(self.max_depth));
                }
                self.open.push(children);
                continue;
            }
            // One item finished: close every aggregate it completes.
            loop {
                match self.open.last_mut() {
                    None => {
                        let len = self.pos;
                        self.pos = 0;
                        return Ok(Scan::Complete(len));
                    }
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

/// How far [`ReplyDecoder::scan`] got.
enum Scan {
    /// A whole frame of this length.
    Complete(usize),
    /// Not all there yet; at least `missing` more bytes are needed (0 when
    /// that is not known).
    Incomplete { missing: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
        let mut dec = ReplyDecoder::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = dec.decode(&mut buf)? {
            out.push(f.to_vec());
        }
        assert!(buf.is_empty() || dec.in_frame() || !buf.is_empty());
        Ok(out)
    }

    #[test]
    fn splits_resp2_frames() {
        let input = b"+OK\r\n-ERR x\r\n:1\r\n$3\r\nfoo\r\n$-1\r\n*-1\r\n*2\r\n$1\r\na\r\n*1\r\n:2\r\n*0\r\n";
        let f = frames(input).unwrap();
        assert_eq!(f.len(), 8);
        assert_eq!(f[6], b"*2\r\n$1\r\na\r\n*1\r\n:2\r\n");
        assert_eq!(f[7], b"*0\r\n");
    }

    #[test]
    fn splits_resp3_frames() {
        let input = b"%1\r\n+a\r\n:1\r\n~2\r\n,1.5\r\n#t\r\n_\r\n(123\r\n=7\r\ntxt:abc\r\n!3\r\nERR\r\n>2\r\n+x\r\n+y\r\n|1\r\n+k\r\n+v\r\n:5\r\n";
        let f = frames(input).unwrap();
        assert_eq!(f.len(), 8);
        assert_eq!(ReplyKind::of(&f[6]), ReplyKind::Push);
        assert_eq!(ReplyKind::of(&f[5]), ReplyKind::Error);
        assert_eq!(f[7], b"|1\r\n+k\r\n+v\r\n:5\r\n");
    }

    #[test]
    fn byte_at_a_time_gives_the_same_frames() {
        let input = b"*3\r\n$5\r\nhello\r\n*2\r\n:1\r\n$-1\r\n+OK\r\n+PONG\r\n";
        let mut dec = ReplyDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in input {
            buf.extend_from_slice(&[*b]);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out.len(), 2);
        assert_eq!(&out[1][..], b"+PONG\r\n");
    }

    /// `levels` nested one-element arrays around `innermost`.
    fn nested(levels: usize, innermost: &[u8]) -> Vec<u8> {
        let mut input = b"*1\r\n".repeat(levels);
        input.extend_from_slice(innermost);
        input
    }

    #[test]
    fn replies_as_deep_as_redis_sends_are_framed() {
        // A self-referencing Lua table inside EXEC, as Redis 7.0 sends it.
        let mut input = nested(7_996, b"-ERR reached lua stack limit\r\n");
        input.extend_from_slice(b"+OK\r\n");
        let f = frames(&input).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].len(), input.len() - 5);
        let at_cap = nested(UPSTREAM_MAX_DEPTH, b":1\r\n");
        assert_eq!(frames(&at_cap).unwrap(), vec![at_cap]);
    }

    #[test]
    fn nesting_deeper_than_the_cap_is_refused() {
        let input = nested(UPSTREAM_MAX_DEPTH + 1, b":1\r\n");
        assert_eq!(
            frames(&input),
            Err(ProtocolError::TooDeep(UPSTREAM_MAX_DEPTH))
        );
        // A tighter cap for a peer trusted less.
        let mut dec = ReplyDecoder::new(128);
        let mut buf = BytesMut::from(&nested(129, b":1\r\n")[..]);
        assert_eq!(dec.decode(&mut buf), Err(ProtocolError::TooDeep(128)));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(frames(b"?x\r\n"), Err(ProtocolError::UnknownType(b'?')));
        assert_eq!(frames(b"$x\r\n"), Err(ProtocolError::BadHeader));
        assert_eq!(frames(b"*-2\r\n"), Err(ProtocolError::BadHeader));
        assert_eq!(frames(b"$1\r\nab\r\n"), Err(ProtocolError::MissingCrlf));
    }
}
