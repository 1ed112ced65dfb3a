//! Client request decoding: RESP arrays of bulk strings, or inline commands.
//!
//! (Longer than most files here because of its tests: every limit, and
//! every way a peer can split or mangle a request, is one.)

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::{bulk_body_arrived, find_crlf, inline, parse_int, ProtocolError, MAX_INLINE_LEN};

/// Limits applied while decoding client requests, before anything is buffered
/// for the frame they describe.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Largest bulk string (Redis: proto-max-bulk-len, 512 MiB).
    pub max_bulk_len: u64,
    /// Most arguments in one request (Redis: INT_MAX).
    pub max_args: u64,
    /// The client has not authenticated yet (errors say so, as Redis's do).
    pub unauthenticated: bool,
}

impl RequestLimits {
    /// Redis's limits for a client that has not authenticated yet: at most 10
    /// arguments of at most 16 KiB each.
    pub fn unauthenticated() -> RequestLimits {
        RequestLimits {
            max_bulk_len: 16 * 1024,
            max_args: 10,
            unauthenticated: true,
        }
    }
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_bulk_len: 512 << 20,
            max_args: i32::MAX as u64,
            unauthenticated: false,
        }
    }
}

/// One client request, kept as the exact bytes of a RESP array of bulk
/// strings so that it can be forwarded without re-encoding.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    /// The whole request, `*N\r\n$len\r\narg\r\n…`.
    raw: BytesMut,
    /// Number of arguments (≥ 1).
    argc: usize,
    /// Offset and length of the command name inside `raw`, so classifying a
    /// request needs no second parse.
    name: (usize, usize),
}

impl Request {
    /// Builds a request from arguments (for commands respool sends itself).
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Request {
        assert!(!args.is_empty(), "a request has at least a command name");
        let raw = inline::encode_array(args);
        Request::from_encoded(raw, args.len())
    }

    /// A request already decoded once (one of a lane's runs), read again:
    /// its argument count from its `*<n>` header. `None` if it has none.
    pub(crate) fn of_whole(raw: &[u8]) -> Option<Request> {
        let rest = raw.strip_prefix(b"*")?;
        let end = memchr::memchr(b'\r', rest)?;
        let argc = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
        Some(Request::from_encoded(BytesMut::from(raw), argc))
    }

    /// Wraps an encoded array whose argument count is known.
    fn from_encoded(raw: BytesMut, argc: usize) -> Request {
        let mut args = ArgIter {
            raw: &raw,
            pos: 0,
            left: argc,
        };
        args.skip_header();
        let start = args.pos;
        let name = args
            .next()
            .map_or((0, 0), |n| (start + header_len(n.len()), n.len()));
        Request { raw, argc, name }
    }

    /// The request seen in place, for classifying it.
    pub fn view(&self) -> RequestRef<'_> {
        RequestRef {
            raw: &self.raw,
            argc: self.argc,
            name: self.name,
        }
    }

    /// The request's bytes, exactly as they go upstream.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The request's bytes, taken out of it.
    pub fn into_raw(self) -> BytesMut {
        self.raw
    }

    /// The number of arguments, command name included.
    pub fn argc(&self) -> usize {
        self.argc
    }

    /// The command name, as sent (any case).
    pub fn name(&self) -> &[u8] {
        self.view().name()
    }

    /// All arguments, command name first.
    pub fn args(&self) -> ArgIter<'_> {
        self.view().args()
    }

    /// Argument `i` (0 is the command name).
    pub fn arg(&self, i: usize) -> Option<&[u8]> {
        self.view().arg(i)
    }
}

/// A decoded request seen where it lies — in a [`Request`], or still in the
/// client's read buffer — so that it can be classified before (or instead
/// of) being split off into a buffer of its own.
#[derive(Clone, Copy)]
pub struct RequestRef<'a> {
    raw: &'a [u8],
    argc: usize,
    name: (usize, usize),
}

impl<'a> RequestRef<'a> {
    /// The request's bytes.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The number of arguments, command name included.
    pub fn argc(&self) -> usize {
        self.argc
    }

    /// The command name, as sent (any case).
    pub fn name(&self) -> &'a [u8] {
        &self.raw[self.name.0..self.name.0 + self.name.1]
    }

    /// The command name's length.
    pub(crate) fn name_len(&self) -> usize {
        self.name.1
    }

    /// The request's bytes from the command name on (the name, then what
    /// follows it): lets a short name be read as one word.
    pub(crate) fn name_onwards(&self) -> &'a [u8] {
        &self.raw[self.name.0..]
    }

    /// All arguments, command name first.
    pub fn args(&self) -> ArgIter<'a> {
        let mut it = ArgIter {
            raw: self.raw,
            pos: 0,
            left: self.argc,
        };
        it.skip_header();
        it
    }

    /// Argument `i` (0 is the command name).
    pub fn arg(&self, i: usize) -> Option<&'a [u8]> {
        self.args().nth(i)
    }

    /// Argument `i` (at least 1), found by walking from the name, whose
    /// place the decoder kept: a command's key (argument 1, mostly) is one
    /// header away. Inlined: it is how cluster mode finds each key.
    #[inline(always)]
    pub(crate) fn arg_after_name(&self, i: usize) -> Option<&'a [u8]> {
        if i == 0 || i >= self.argc {
            return None;
        }
        let mut pos = self.name.0 + self.name.1 + 2;
        for _ in 1..i {
            let (len, start) = bulk_header(self.raw, pos)?;
            pos = start.checked_add(len)? + 2;
        }
        let (len, start) = bulk_header(self.raw, pos)?;
        self.raw.get(start..start.checked_add(len)?)
    }

    /// The first request of `run`, a concatenation of requests decoded
    /// earlier (see [`first_request_len`]), seen in place; `None` if `run`
    /// does not start with a whole request that has a name.
    pub fn first_of(run: &'a [u8]) -> Option<RequestRef<'a>> {
        let raw = &run[..first_request_len(run)?];
        let cr = find_crlf(raw, 1)?;
        let argc = usize::try_from(parse_int(&raw[1..cr])?).ok()?;
        let mut args = ArgIter {
            raw,
            pos: cr + 2,
            left: argc,
        };
        let name_len = args.next()?.len();
        // The name ends just before its CRLF.
        let name_start = args.pos - 2 - name_len;
        Some(RequestRef {
            raw,
            argc,
            name: (name_start, name_len),
        })
    }
}

/// A whole request found at the front of what the decoder was given, not
/// split off yet ([`RequestDecoder::decode_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSpan {
    len: usize,
    argc: usize,
    name: (usize, usize),
}

impl RequestSpan {
    /// The request's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a request has at least its header.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The request, in `at`: the bytes the decoder was given, from where it
    /// was told to start.
    pub fn view<'a>(&self, at: &'a [u8]) -> RequestRef<'a> {
        RequestRef {
            raw: &at[..self.len],
            argc: self.argc,
            name: self.name,
        }
    }

    /// Splits the request off the front of `buf`, where it must lie.
    pub fn split_off(self, buf: &mut BytesMut) -> Request {
        Request {
            raw: buf.split_to(self.len),
            argc: self.argc,
            name: self.name,
        }
    }
}

/// What [`RequestDecoder::decode_at`] found.
#[derive(Debug)]
pub enum Decoded {
    /// A request in RESP form, verbatim in the buffer.
    Request(RequestSpan),
    /// An inline command, re-encoded as a RESP array; it took `consumed`
    /// bytes of input.
    Inline { consumed: usize, request: Request },
    /// `consumed` bytes that hold no command (an empty line, `*0`), to drop.
    Nothing { consumed: usize },
}

impl std::fmt::Debug for Request {
    // Arguments may be secrets (AUTH): show only the name and the count.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Request({} + {} args, {} bytes)",
            String::from_utf8_lossy(self.name()),
            self.argc - 1,
            self.raw.len()
        )
    }
}

/// The common case of a header line, `*<n>\r\n` or `$<n>\r\n` at
/// `input[at..]`, read in one pass: `n` and the offset just past its CRLF.
/// `None` for anything else — a line not complete yet, a sign, a leading
/// zero, more than 18 digits, a stray byte — which the general path
/// (`find_crlf` + [`parse_int`]) then waits for or refuses with the right
/// error.
#[inline]
fn plain_header(input: &[u8], at: usize) -> Option<(usize, usize)> {
    let digits = input.get(at + 1..)?;
    let mut value = 0usize;
    let mut i = 0;
    while i < 18 {
        let d = digits.get(i)?.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        value = value * 10 + d as usize;
        i += 1;
    }
    if i == 0 || (i > 1 && digits[0] == b'0') {
        return None;
    }
    (digits.get(i) == Some(&b'\r') && digits.get(i + 1) == Some(&b'\n'))
        .then_some((value, at + 1 + i + 2))
}

/// The header `$<n>\r\n` at `raw[at..]` of a request decoded earlier:
/// `n` and the offset of the bulk string. A length of one or two digits
/// (nearly every key) is read without a loop; anything else as
/// [`plain_header`] reads it (validated when decoded: no sign, no leading
/// zero; anything else ends the walk).
#[inline(always)]
fn bulk_header(raw: &[u8], at: usize) -> Option<(usize, usize)> {
    let digit = |b: u8| usize::from(b.wrapping_sub(b'0'));
    match *raw.get(at + 1..at + 4)? {
        [d1, d2, b'\r'] if digit(d1) <= 9 && digit(d2) <= 9 => {
            Some((digit(d1) * 10 + digit(d2), at + 5))
        }
        [d, b'\r', _] if digit(d) <= 9 => Some((digit(d), at + 4)),
        _ => plain_header(raw, at),
    }
}

/// Reads the header line (`*<n>` or `$<n>`) at `input[at..]`: its value and
/// the offset just past its CRLF; `Ok(None)` while the line is incomplete.
/// `scanned` remembers how far an incomplete line was searched, so a header
/// trickling in byte by byte is scanned once. A line longer than an inline
/// command may be fails with `too_long`, a value that is not an integer
/// with `invalid`.
#[inline(always)]
fn read_header(
    input: &[u8],
    at: usize,
    scanned: &mut usize,
    too_long: ProtocolError,
    invalid: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    if let Some((value, next)) = plain_header(input, at) {
        *scanned = 0;
        return Ok(Some((value as i64, next)));
    }
    let Some(cr) = find_crlf(input, (*scanned).max(at + 1)) else {
        if input.len() - at > MAX_INLINE_LEN {
            return Err(too_long);
        }
        // A CR may be the last byte; search again from it next time.
        *scanned = input.len() - 1;
        return Ok(None);
    };
    *scanned = 0;
    let value = parse_int(&input[at + 1..cr]).ok_or(invalid)?;
    Ok(Some((value, cr + 2)))
}

/// The length of the first request in `run`, a concatenation of requests
/// that were decoded (so validated) earlier and are all arrays — inline
/// commands were re-encoded as arrays. `None` if `run` does not start with a
/// whole request.
pub fn first_request_len(run: &[u8]) -> Option<usize> {
    if run.first() != Some(&b'*') {
        return None;
    }
    let cr = find_crlf(run, 1)?;
    let argc = usize::try_from(parse_int(&run[1..cr])?).ok()?;
    let mut args = ArgIter {
        raw: run,
        pos: cr + 2,
        left: argc,
    };
    for _ in 0..argc {
        args.next()?;
    }
    Some(args.pos)
}

fn header_len(len: usize) -> usize {
    1 + itoa::Buffer::new().format(len).len() + 2
}

/// Iterates over the arguments of an already validated request.
pub struct ArgIter<'a> {
    raw: &'a [u8],
    pos: usize,
    left: usize,
}

impl ArgIter<'_> {
    fn skip_header(&mut self) {
        self.pos = find_crlf(self.raw, 0).map_or(self.raw.len(), |cr| cr + 2);
    }
}

impl<'a> Iterator for ArgIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        // The request was validated when decoded, so the layout is known good;
        // stay defensive anyway and end the iteration on anything unexpected.
        let cr = find_crlf(self.raw, self.pos + 1)?;
        let len = parse_int(&self.raw[self.pos + 1..cr])? as usize;
        let start = cr + 2;
        let arg = self.raw.get(start..start + len)?;
        self.pos = start + len + 2;
        self.left -= 1;
        Some(arg)
    }
}

/// Progress through a multibulk request that has not fully arrived yet.
#[derive(Debug, Clone, Copy)]
struct Partial {
    /// Arguments announced by `*N`.
    argc: usize,
    /// Arguments fully received so far.
    seen: usize,
    /// Offset of the next argument's `$` header.
    pos: usize,
    /// Where the command name is.
    name: (usize, usize),
}

/// Decodes client requests; see the module docs.
#[derive(Debug, Default)]
pub struct RequestDecoder {
    limits: RequestLimits,
    partial: Option<Partial>,
    /// How much of an incomplete inline line was already searched for '\n'.
    inline_scanned: usize,
    /// How far an incomplete `*`/`$` header line was already searched for
    /// CRLF, so a header trickling in byte by byte is scanned once.
    header_scanned: usize,
}

impl RequestDecoder {
    /// A decoder with the given limits.
    pub fn new(limits: RequestLimits) -> Self {
        RequestDecoder {
            limits,
            partial: None,
            inline_scanned: 0,
            header_scanned: 0,
        }
    }

    /// Changes the limits (after a client authenticates).
    pub fn set_limits(&mut self, limits: RequestLimits) {
        self.limits = limits;
    }

    /// True while a request has started arriving in `input` (what follows
    /// the decoded requests) but is not complete — a client stuck here for
    /// long is sending a half command.
    pub fn in_progress(&self, input: &[u8]) -> bool {
        self.partial.is_some() || !input.is_empty()
    }

    fn decode_inline(&mut self, input: &[u8]) -> Result<Option<Decoded>, ProtocolError> {
        let Some(nl) =
            memchr::memchr(b'\n', &input[self.inline_scanned..]).map(|i| i + self.inline_scanned)
        else {
            if input.len() > MAX_INLINE_LEN {
                return Err(ProtocolError::InlineTooLong);
            }
            self.inline_scanned = input.len();
            return Ok(None);
        };
        self.inline_scanned = 0;
        if nl > MAX_INLINE_LEN {
            return Err(ProtocolError::InlineTooLong);
        }
        let consumed = nl + 1;
        let line = &input[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let args = inline::split_args(line)?;
        if args.is_empty() {
            // An empty line is ignored, as Redis does.
            return Ok(Some(Decoded::Nothing { consumed }));
        }
        // An inline command becomes a RESP array like any other: the same
        // limits apply to it.
        if args.len() as u64 > self.limits.max_args {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        if args
            .iter()
            .any(|a| a.len() as u64 > self.limits.max_bulk_len)
        {
            return Err(ProtocolError::InvalidBulkLength);
        }
        let argc = args.len();
        let request = Request::from_encoded(inline::encode_array(&args), argc);
        Ok(Some(Decoded::Inline { consumed, request }))
    }

    /// Decodes the request that starts at `buf[start..]` without taking it
    /// out of `buf`, so that a caller collecting consecutive requests can
    /// split them off as one piece. Progress on an incomplete request is
    /// kept relative to `start`: call again with the same start (or, after
    /// taking the bytes before it out of `buf`, with the start moved back
    /// by as many) once more bytes arrived.
    pub fn decode_at(
        &mut self,
        buf: &mut BytesMut,
        start: usize,
    ) -> Result<Option<Decoded>, ProtocolError> {
        if self.partial.is_none() {
            let input = &buf[start..];
            let Some(&first) = input.first() else {
                return Ok(None);
            };
            if first != b'*' {
                return self.decode_inline(input);
            }
            let Some((n, next)) = read_header(
                input,
                0,
                &mut self.header_scanned,
                ProtocolError::MultibulkCountTooLong,
                ProtocolError::InvalidMultibulkLength,
            )?
            else {
                return Ok(None);
            };
            if n > self.limits.max_args as i64 {
                return Err(if self.limits.unauthenticated {
                    ProtocolError::UnauthenticatedMultibulk
                } else {
                    ProtocolError::InvalidMultibulkLength
                });
            }
            if n <= 0 {
                // `*0` and `*-1` are empty commands: Redis skips them silently.
                return Ok(Some(Decoded::Nothing { consumed: next }));
            }
            self.partial = Some(Partial {
                argc: n as usize,
                seen: 0,
                pos: next,
                name: (0, 0),
            });
        }
        let Some(p) = self.partial.as_mut() else {
            return Ok(None);
        };
        while p.seen < p.argc {
            let input = &buf[start..];
            let Some(&marker) = input.get(p.pos) else {
                return Ok(None);
            };
            if marker != b'$' {
                return Err(ProtocolError::ExpectedBulk(marker as char));
            }
            let Some((len, data)) = read_header(
                input,
                p.pos,
                &mut self.header_scanned,
                ProtocolError::BulkCountTooLong,
                ProtocolError::InvalidBulkLength,
            )?
            else {
                return Ok(None);
            };
            if len < 0 {
                return Err(ProtocolError::InvalidBulkLength);
            }
            let len = len as u64;
            if len > self.limits.max_bulk_len {
                return Err(if self.limits.unauthenticated {
                    ProtocolError::UnauthenticatedBulk
                } else {
                    ProtocolError::InvalidBulkLength
                });
            }
            let len = len as usize;
            let end = data + len;
            // Room for up to 1 MiB of a missing argument at once, not the
            // 512 MiB a header may claim.
            if !bulk_body_arrived(buf, start, end, 1 << 20)? {
                return Ok(None);
            }
            if p.seen == 0 {
                p.name = (data, len);
            }
            p.seen += 1;
            p.pos = end + 2;
        }
        let done = *p;
        self.partial = None;
        Ok(Some(Decoded::Request(RequestSpan {
            len: done.pos,
            argc: done.argc,
            name: done.name,
        })))
    }
}

impl Decoder for RequestDecoder {
    type Item = Request;
    type Error = ProtocolError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        loop {
            match self.decode_at(buf, 0)? {
                None => return Ok(None),
                Some(Decoded::Request(span)) => return Ok(Some(span.split_off(buf))),
                Some(Decoded::Inline { consumed, request }) => {
                    buf.advance(consumed);
                    return Ok(Some(request));
                }
                Some(Decoded::Nothing { consumed }) => buf.advance(consumed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<Vec<Request>, ProtocolError> {
        let mut dec = RequestDecoder::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = dec.decode(&mut buf)? {
            out.push(r);
        }
        Ok(out)
    }

    /// Arguments found from the name's end, whatever the width of their
    /// length: one digit, two, three; none past the last.
    #[test]
    fn arguments_are_found_after_the_name_at_any_length() {
        let long = "v".repeat(150);
        let args = ["SET", "k", "0123456789ab", long.as_str(), "", "x"];
        let req = Request::from_args(&args);
        for (i, arg) in args.iter().enumerate().skip(1) {
            let found = req.view().arg_after_name(i);
            assert_eq!(found, Some(arg.as_bytes()), "argument {i}");
            assert_eq!(found, req.arg(i));
        }
        assert_eq!(
            req.view().arg_after_name(0),
            None,
            "the name is not after it"
        );
        assert_eq!(req.view().arg_after_name(args.len()), None);
        assert_eq!(req.view().arg_after_name(usize::MAX), None);
        let name_only = Request::from_args(&["PING"]);
        assert_eq!(name_only.view().arg_after_name(1), None);
    }

    /// `decode_at` leaves requests where they are, so a caller can decode
    /// one after another and take them out as one piece; a request cut short
    /// at the end is finished after the bytes before it were taken out.
    #[test]
    fn decode_at_leaves_requests_in_place_and_resumes_after_a_split() {
        let first = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
        let second = b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$5\r\nhello\r\n";
        let third = b"*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n";
        let mut buf = BytesMut::new();
        buf.extend_from_slice(first);
        buf.extend_from_slice(second);
        buf.extend_from_slice(&third[..13]);
        let mut dec = RequestDecoder::default();

        let Some(Decoded::Request(a)) = dec.decode_at(&mut buf, 0).unwrap() else {
            panic!("the first request")
        };
        assert_eq!(a.len(), first.len());
        assert_eq!(a.view(&buf).raw(), first);
        assert_eq!(a.view(&buf).name(), b"GET");
        let Some(Decoded::Request(b)) = dec.decode_at(&mut buf, a.len()).unwrap() else {
            panic!("the second request")
        };
        let at = a.len();
        assert_eq!(b.view(&buf[at..]).raw(), second);
        assert_eq!(b.view(&buf[at..]).arg(2), Some(&b"hello"[..]));
        assert_eq!(
            buf.len(),
            first.len() + second.len() + 13,
            "nothing taken out"
        );

        let run = a.len() + b.len();
        assert!(dec.decode_at(&mut buf, run).unwrap().is_none(), "cut short");
        assert!(dec.in_progress(&buf[run..]));
        // The caller hands the run on, then more bytes arrive.
        let taken = buf.split_to(run);
        assert_eq!(&taken[..first.len()], first);
        buf.extend_from_slice(&third[13..]);
        let Some(Decoded::Request(c)) = dec.decode_at(&mut buf, 0).unwrap() else {
            panic!("the third request")
        };
        let req = c.split_off(&mut buf);
        assert_eq!(req.raw(), third);
        assert_eq!(req.name(), b"INCR");
        assert_eq!(req.arg(1), Some(&b"counter"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn decode_at_reports_inline_commands_and_empty_ones_with_their_length() {
        let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\nECHO hi\r\n\r\n*0\r\n"[..]);
        let mut dec = RequestDecoder::default();
        let Some(Decoded::Request(ping)) = dec.decode_at(&mut buf, 0).unwrap() else {
            panic!("PING")
        };
        let mut at = ping.len();
        match dec.decode_at(&mut buf, at).unwrap() {
            Some(Decoded::Inline { consumed, request }) => {
                assert_eq!(consumed, b"ECHO hi\r\n".len());
                assert_eq!(request.raw(), b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n");
                at += consumed;
            }
            other => panic!("expected the inline ECHO, got {other:?}"),
        }
        match dec.decode_at(&mut buf, at).unwrap() {
            Some(Decoded::Nothing { consumed: 2 }) => at += 2,
            other => panic!("expected the empty line, got {other:?}"),
        }
        match dec.decode_at(&mut buf, at).unwrap() {
            Some(Decoded::Nothing { consumed: 4 }) => at += 4,
            other => panic!("expected *0, got {other:?}"),
        }
        assert_eq!(at, buf.len());
        assert!(dec.decode_at(&mut buf, at).unwrap().is_none());
    }

    /// The one-pass header read must agree with the general path wherever it
    /// answers, and must answer for every plain length (or it would never be
    /// the fast path it is there to be).
    #[test]
    fn plain_header_agrees_with_the_general_path() {
        let mut next = crate::codec::test_rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..50_000 {
            let len = (next() % 24) as usize;
            let mut line = vec![b'$'];
            line.extend((0..len).map(|_| match next() % 12 {
                0 => b'\r',
                1 => b'\n',
                2 => b'-',
                3 => b'x',
                n => b'0' + (n as u8 - 4) % 3,
            }));
            if let Some((value, next_at)) = plain_header(&line, 0) {
                let cr = find_crlf(&line, 1).expect("a CRLF");
                assert_eq!(next_at, cr + 2, "{line:?}");
                assert_eq!(parse_int(&line[1..cr]), Some(value as i64), "{line:?}");
            }
        }
        for _ in 0..50_000 {
            let value = next() % 10u64.pow((next() % 19) as u32).max(1);
            let line = format!("*{value}\r\nrest");
            assert_eq!(
                plain_header(line.as_bytes(), 0),
                Some((value as usize, line.len() - 4)),
                "{line}"
            );
        }
        // Cut short, or not plain: left to the general path.
        for line in [
            &b"$12"[..],
            b"$12\r",
            b"$-1\r\n",
            b"$012\r\n",
            b"$1x\r\n",
            b"$\r\n",
        ] {
            assert_eq!(plain_header(line, 0), None, "{line:?}");
        }
        assert_eq!(plain_header(b"$0\r\n", 0), Some((0, 4)));
    }

    #[test]
    fn first_request_len_walks_a_run_of_decoded_requests() {
        let input =
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123456789\r\nGET k\r\n*1\r\n$4\r\nPING\r\n";
        let reqs = decode_all(input).unwrap();
        let run: Vec<u8> = reqs.iter().flat_map(|r| r.raw().to_vec()).collect();
        let mut at = 0;
        for req in &reqs {
            let len = first_request_len(&run[at..]).expect("a whole request");
            assert_eq!(&run[at..at + len], req.raw());
            at += len;
        }
        assert_eq!(at, run.len());
        assert_eq!(first_request_len(b""), None);
        assert_eq!(first_request_len(b"*2\r\n$3\r\nGET\r\n"), None, "cut short");
        assert_eq!(first_request_len(b"PING\r\n"), None, "not an array");
    }

    #[test]
    fn decodes_a_pipeline_verbatim() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nget\r\n$1\r\nk\r\n";
        let reqs = decode_all(input).unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].name(), b"SET");
        assert_eq!(reqs[1].name(), b"get");
        assert_eq!(
            reqs[0].args().collect::<Vec<_>>(),
            [&b"SET"[..], b"k", b"v"]
        );
        let joined: Vec<u8> = reqs.iter().flat_map(|r| r.raw().to_vec()).collect();
        assert_eq!(joined, input);
    }

    #[test]
    fn inline_commands_become_arrays() {
        let reqs = decode_all(b"set k \"a b\"\r\n\r\nPING\n").unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(
            reqs[0].raw(),
            b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$3\r\na b\r\n"
        );
        assert_eq!(reqs[1].name(), b"PING");
    }

    #[test]
    fn empty_multibulks_are_skipped() {
        let reqs = decode_all(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n").unwrap();
        assert_eq!(reqs.len(), 1);
    }

    #[test]
    fn partial_input_waits_for_more() {
        let mut dec = RequestDecoder::default();
        let full = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n";
        let mut buf = BytesMut::new();
        for (i, b) in full.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let r = dec.decode(&mut buf).unwrap();
            assert_eq!(r.is_some(), i == full.len() - 1, "at byte {i}");
        }
    }

    #[test]
    fn limits_are_checked_before_buffering() {
        assert_eq!(
            decode_all(b"*2147483648\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            decode_all(b"*1\r\n$536870913\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            decode_all(b"*1\r\n$-5\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            decode_all(b"*x\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            decode_all(b"*1\r\n$abc\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            decode_all(b"*1\r\n*1\r\n$1\r\na\r\n"),
            Err(ProtocolError::ExpectedBulk('*'))
        );
        assert_eq!(
            decode_all(b"*1\r\n$1\r\nabc"),
            Err(ProtocolError::MissingCrlf)
        );
        assert_eq!(
            decode_all(&vec![b'a'; MAX_INLINE_LEN + 10]),
            Err(ProtocolError::InlineTooLong)
        );
        assert_eq!(
            decode_all(b"set k \"v\r\n"),
            Err(ProtocolError::UnbalancedQuotes)
        );
    }

    #[test]
    fn unauthenticated_limits_are_small() {
        let mut dec = RequestDecoder::new(RequestLimits::unauthenticated());
        let mut buf = BytesMut::from(&b"*11\r\n"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(ProtocolError::UnauthenticatedMultibulk)
        );
        let mut dec = RequestDecoder::new(RequestLimits::unauthenticated());
        let mut buf = BytesMut::from(&b"*2\r\n$4\r\nAUTH\r\n$16385\r\n"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(ProtocolError::UnauthenticatedBulk)
        );
    }

    #[test]
    fn header_lines_are_scanned_once() {
        // A `*` or `$` header line trickling in byte by byte used to be
        // re-searched from its start on every call: 60 KB of lone CRs took
        // ~10 s of CPU. The search now resumes where it stopped.
        for prefix in [&b"*"[..], b"*1\r\n$"] {
            let mut dec = RequestDecoder::default();
            let mut buf = BytesMut::from(prefix);
            assert_eq!(dec.decode(&mut buf), Ok(None));
            for _ in 0..1000 {
                buf.extend_from_slice(b"\r");
                assert_eq!(dec.decode(&mut buf), Ok(None));
                assert_eq!(dec.header_scanned, buf.len() - 1);
            }
            buf.extend_from_slice(b"\n");
            let want = if prefix == b"*" {
                ProtocolError::InvalidMultibulkLength
            } else {
                ProtocolError::InvalidBulkLength
            };
            assert_eq!(dec.decode(&mut buf), Err(want));
        }
        // Split anywhere, a header is still found (CR and LF in two reads).
        let full = b"*1\r\n$4\r\nPING\r\n";
        for cut in 0..full.len() {
            let mut dec = RequestDecoder::default();
            let mut buf = BytesMut::from(&full[..cut]);
            let first = dec.decode(&mut buf).unwrap();
            buf.extend_from_slice(&full[cut..]);
            let req = first.or_else(|| dec.decode(&mut buf).unwrap()).unwrap();
            assert_eq!(req.raw(), full);
        }
    }

    #[test]
    fn non_canonical_lengths_are_refused_like_redis() {
        // Found by fuzzing: these were accepted and forwarded verbatim, and
        // Redis answers them with a protocol error and closes the (shared)
        // upstream connection.
        assert_eq!(
            decode_all(b"*1\r\n$04\r\nPING\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            decode_all(b"*01\r\n$4\r\nPING\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            decode_all(b"*1\r\n$-0\r\n\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            decode_all(b"*-0\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(decode_all(b"*1\r\n$0\r\n\r\n").unwrap().len(), 1);
    }

    #[test]
    fn inline_commands_obey_the_limits() {
        let small = RequestLimits {
            max_bulk_len: 3,
            max_args: 2,
            unauthenticated: false,
        };
        let decode = |input: &[u8]| RequestDecoder::new(small).decode(&mut BytesMut::from(input));
        assert!(decode(b"GET abc\r\n").unwrap().is_some());
        assert_eq!(
            decode(b"GET a b\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            decode(b"GET abcd\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
    }

    #[test]
    fn deep_nesting_is_refused_at_the_first_byte() {
        let mut input = Vec::new();
        for _ in 0..10_000 {
            input.extend_from_slice(b"*1\r\n");
        }
        assert_eq!(decode_all(&input), Err(ProtocolError::ExpectedBulk('*')));
    }

    #[test]
    fn debug_hides_arguments() {
        let r = Request::from_args(&["AUTH", "hunter2"]);
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
