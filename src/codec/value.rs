//! A reply, typed: what respool's own exchanges (validation, health checks,
//! pub/sub bookkeeping), `respool bench` and the tests read out of a reply.
//!
//! The proxy never needs this to forward a reply — it forwards the raw
//! frame — so [`Value`] is a view borrowed from a frame that
//! [`ReplyDecoder`] has already delimited, without
//! recursion and within its depth limit. Aggregates are read element by
//! element ([`Elements`]), so reading the first element of a large array
//! looks at nothing else and allocates nothing.

use super::{find_crlf, parse_int, ProtocolError, ReplyDecoder};

/// One reply (RESP2 or RESP3), borrowed from its frame. Scalars are kept as
/// the bytes of their line: read numbers with [`Value::int`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// `+OK`.
    Simple(&'a [u8]),
    /// `-ERR …`, or a RESP3 blob error `!`: the text without the `-`.
    Error(&'a [u8]),
    /// `:42`, as its digits.
    Integer(&'a [u8]),
    /// `$3\r\nfoo`.
    Bulk(&'a [u8]),
    /// RESP3 `=`: the format (`txt`, `mkd`) and the text.
    Verbatim(&'a [u8], &'a [u8]),
    /// RESP3 `,1.5`, as its text (`inf`, `nan` included).
    Double(&'a [u8]),
    /// RESP3 `#t` / `#f`.
    Boolean(bool),
    /// RESP3 `(1234…`, as its digits.
    BigNumber(&'a [u8]),
    /// RESP2 `$-1` and `*-1`, RESP3 `_`.
    Null,
    /// `*N`.
    Array(Elements<'a>),
    /// RESP3 `~N`.
    Set(Elements<'a>),
    /// RESP3 `%N`: keys and values alternate.
    Map(Elements<'a>),
    /// RESP3 `>N`: an out-of-band push.
    Push(Elements<'a>),
}

/// The elements of an aggregate, read one at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elements<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Value<'a> {
    /// Parses the reply at the front of `buf`: `Ok(None)` while only part
    /// of it has arrived, else the reply and the bytes it takes. Nesting
    /// deeper than `max_depth` levels is an error.
    pub fn parse(
        buf: &'a [u8],
        max_depth: usize,
    ) -> Result<Option<(Value<'a>, usize)>, ProtocolError> {
        let Some(len) = ReplyDecoder::new(max_depth).frame_len(buf)? else {
            return Ok(None);
        };
        Ok(Some((Value::of_frame(&buf[..len])?, len)))
    }

    /// The value of one whole frame, as [`ReplyDecoder`] delimits them.
    pub fn of_frame(frame: &'a [u8]) -> Result<Value<'a>, ProtocolError> {
        let mut frame = frame;
        let (kind, line, body) = loop {
            let (&kind, _) = frame.split_first().ok_or(ProtocolError::BadHeader)?;
            let cr = find_crlf(frame, 1).ok_or(ProtocolError::BadHeader)?;
            let (line, body) = (&frame[1..cr], &frame[cr + 2..]);
            if kind != b'|' {
                break (kind, line, body);
            }
            // Attributes annotate the reply that follows them: skip them,
            // in a loop rather than by recursion, however many there are.
            let pairs = parse_int(line)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or(ProtocolError::BadHeader)?;
            let mut attributes = Elements {
                rest: body,
                left: 2 * pairs,
            };
            while attributes.next_frame().is_some() {}
            frame = attributes.rest;
        };
        let count = || -> Result<Option<usize>, ProtocolError> {
            match parse_int(line).ok_or(ProtocolError::BadHeader)? {
                -1 => Ok(None),
                n => usize::try_from(n)
                    .map(Some)
                    .map_err(|_| ProtocolError::BadHeader),
            }
        };
        let blob = || -> Result<Option<&'a [u8]>, ProtocolError> {
            Ok(count()?.map(|len| &body[..len.min(body.len())]))
        };
        let elements = |left: usize| Elements { rest: body, left };
        Ok(match kind {
            b'+' => Value::Simple(line),
            b'-' => Value::Error(line),
            b':' => Value::Integer(line),
            b',' => Value::Double(line),
            b'(' => Value::BigNumber(line),
            b'_' => Value::Null,
            b'#' => match line {
                b"t" => Value::Boolean(true),
                b"f" => Value::Boolean(false),
                _ => return Err(ProtocolError::BadHeader),
            },
            b'$' => blob()?.map_or(Value::Null, Value::Bulk),
            b'!' => Value::Error(blob()?.unwrap_or_default()),
            b'=' => match blob()? {
                // `=15\r\ntxt:Some string`: a three-letter format, a colon.
                Some(v) if v.len() >= 4 && v[3] == b':' => Value::Verbatim(&v[..3], &v[4..]),
                _ => return Err(ProtocolError::BadHeader),
            },
            b'*' => count()?.map_or(Value::Null, |n| Value::Array(elements(n))),
            b'~' => Value::Set(elements(count()?.unwrap_or(0))),
            b'>' => Value::Push(elements(count()?.unwrap_or(0))),
            b'%' => Value::Map(elements(2 * count()?.unwrap_or(0))),
            other => return Err(ProtocolError::UnknownType(other)),
        })
    }

    /// An integer reply's value.
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Integer(digits) => parse_int(digits),
            _ => None,
        }
    }

    /// A simple, bulk or verbatim string's bytes.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Simple(b) | Value::Bulk(b) | Value::Verbatim(_, b) => Some(b),
            _ => None,
        }
    }

    /// The elements of an array, set, map or push.
    pub fn elements(&self) -> Option<Elements<'a>> {
        match self {
            Value::Array(e) | Value::Set(e) | Value::Map(e) | Value::Push(e) => Some(e.clone()),
            _ => None,
        }
    }
}

impl<'a> Elements<'a> {
    /// Elements not read yet (a map counts keys and values).
    pub fn len(&self) -> usize {
        self.left
    }

    /// Whether every element has been read.
    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// The next element's frame, delimited but not read.
    fn next_frame(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        let len = ReplyDecoder::new(usize::MAX)
            .frame_len(self.rest)
            .ok()
            .flatten()?;
        let (element, rest) = self.rest.split_at(len);
        self.rest = rest;
        self.left -= 1;
        Some(element)
    }
}

impl<'a> Iterator for Elements<'a> {
    type Item = Value<'a>;

    /// The next element. The frame was delimited as a whole, so each
    /// element is whole too; a malformed one (an integer that is not a
    /// number cannot be seen by the framing) ends the iteration.
    fn next(&mut self) -> Option<Value<'a>> {
        Value::of_frame(self.next_frame()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(wire: &[u8]) -> Value<'_> {
        let (value, used) = Value::parse(wire, 128).unwrap().unwrap();
        assert_eq!(used, wire.len(), "{wire:?}");
        value
    }

    #[test]
    fn every_reply_type() {
        assert_eq!(one(b"+OK\r\n"), Value::Simple(b"OK"));
        assert_eq!(one(b"-ERR x\r\n"), Value::Error(b"ERR x"));
        assert_eq!(one(b":-12\r\n").int(), Some(-12));
        assert_eq!(one(b"$3\r\nabc\r\n"), Value::Bulk(b"abc"));
        assert_eq!(one(b"$0\r\n\r\n"), Value::Bulk(b""));
        assert_eq!(one(b"$-1\r\n"), Value::Null);
        assert_eq!(one(b"*-1\r\n"), Value::Null);
        assert_eq!(one(b"_\r\n"), Value::Null);
        assert_eq!(one(b"#t\r\n"), Value::Boolean(true));
        assert_eq!(one(b",1.5\r\n"), Value::Double(b"1.5"));
        assert_eq!(one(b"(123\r\n"), Value::BigNumber(b"123"));
        assert_eq!(one(b"!3\r\nERR\r\n"), Value::Error(b"ERR"));
        assert_eq!(one(b"=7\r\ntxt:abc\r\n"), Value::Verbatim(b"txt", b"abc"));
        // Attributes are skipped for the reply they annotate.
        assert_eq!(one(b"|1\r\n+k\r\n+v\r\n:5\r\n").int(), Some(5));
    }

    #[test]
    fn aggregates_are_read_element_by_element() {
        let wire = b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n:2\r\n%1\r\n+k\r\n_\r\n";
        let Value::Array(mut items) = one(wire) else {
            panic!("an array")
        };
        assert_eq!(items.len(), 3);
        assert_eq!(items.next(), Some(Value::Bulk(b"a")));
        let inner: Vec<_> = items.next().unwrap().elements().unwrap().collect();
        assert_eq!(
            inner.iter().map(Value::int).collect::<Vec<_>>(),
            [Some(1), Some(2)]
        );
        let map: Vec<_> = items.next().unwrap().elements().unwrap().collect();
        assert_eq!(map, [Value::Simple(b"k"), Value::Null]);
        assert_eq!(items.next(), None);
    }

    #[test]
    fn partial_replies_wait_for_the_rest() {
        let wire = b"*2\r\n$5\r\nhello\r\n:1\r\n+next\r\n";
        for cut in 0..wire.len() - 8 {
            assert_eq!(
                Value::parse(&wire[..cut], 128).unwrap(),
                None,
                "cut at {cut}"
            );
        }
        let (_, used) = Value::parse(wire, 128).unwrap().unwrap();
        assert_eq!(&wire[used..], b"+next\r\n");
    }

    #[test]
    fn garbage_and_depth_are_errors_not_panics() {
        for wire in [
            &b"?\r\n"[..],
            b"$abc\r\n",
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b"*-5\r\n",
            b"#x\r\n",
            b"=2\r\nab\r\n",
        ] {
            assert!(Value::parse(wire, 128).is_err(), "{wire:?}");
        }
        let deep = "*1\r\n".repeat(200) + ":1\r\n";
        assert!(Value::parse(deep.as_bytes(), 128).is_err());
        assert!(Value::parse(deep.as_bytes(), 1000).unwrap().is_some());
    }

    #[test]
    fn deep_replies_are_read_without_recursion() {
        // 100 000 levels: recursion would overflow the stack long before.
        const LEVELS: usize = 100_000;
        let whole = |wire: &[u8]| -> i64 {
            let (value, used) = Value::parse(wire, usize::MAX).unwrap().unwrap();
            assert_eq!(used, wire.len());
            value.int().unwrap()
        };
        // Attributes in a row, each annotating the next.
        let chained = b"|1\r\n+k\r\n+v\r\n".repeat(LEVELS);
        assert_eq!(whole(&[&chained[..], b":5\r\n"].concat()), 5);
        // An attribute whose key is an attribute-annotated value, whose key
        // is one too, and so on.
        let key = [
            b"|1\r\n".repeat(LEVELS),
            b"+k\r\n".to_vec(),
            b"+v\r\n+k\r\n".repeat(LEVELS),
        ]
        .concat();
        assert_eq!(whole(&[b"|1\r\n", &key[..], b"+v\r\n:6\r\n"].concat()), 6);
        // A deep array, read one level at a time (each step delimits the
        // rest, so fewer levels keep this quick).
        let levels = 2_000;
        let deep = [b"*1\r\n".repeat(levels), b":7\r\n".to_vec()].concat();
        let (mut value, _) = Value::parse(&deep, usize::MAX).unwrap().unwrap();
        let mut depth = 0;
        while let Some(mut inner) = value.elements() {
            value = inner.next().unwrap();
            depth += 1;
        }
        assert_eq!((depth, value.int()), (levels, Some(7)));
    }
}
