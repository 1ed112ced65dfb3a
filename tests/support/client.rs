//! `TestClient`: a deliberately tiny raw-RESP client over a tokio `TcpStream`
//! (or a `UnixStream`).
//!
//! It uses no Redis client crate on purpose: tests must be able to send any
//! bytes (pipelines, malformed frames, half requests) and see every reply
//! exactly as it arrived, RESP2 and RESP3 alike.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::either::Either;

/// How long `read_reply` waits for one complete reply unless told otherwise.
/// Generous on purpose: the tests run on loaded 2-core machines.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Deepest reply nesting the parser (which recurses) accepts. Ordinary
/// replies stay below 10 levels; a Lua script's may reach thousands: read
/// those as bytes with [`TestClient::read_raw_reply`].
const MAX_DEPTH: usize = 128;

/// One reply, RESP2 or RESP3, decoded.
#[derive(Clone, PartialEq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...` (also RESP3 blob errors `!`).
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3\r\nfoo`
    Bulk(Vec<u8>),
    /// `$-1` (RESP2 null bulk string).
    Nil,
    /// `*N` followed by N replies.
    Array(Vec<Reply>),
    /// `*-1` (RESP2 null array).
    NilArray,
    /// RESP3 `,1.5` — kept as the text Redis sent so `inf`/`nan` survive.
    Double(String),
    /// RESP3 `#t` / `#f`.
    Bool(bool),
    /// RESP3 `(1234...`.
    BigNumber(String),
    /// RESP3 `=`: format (e.g. `txt`) and payload.
    Verbatim(String, Vec<u8>),
    /// RESP3 `%`.
    Map(Vec<(Reply, Reply)>),
    /// RESP3 `~`.
    Set(Vec<Reply>),
    /// RESP3 `>` (out-of-band push, e.g. pub/sub messages).
    Push(Vec<Reply>),
    /// RESP3 `_`.
    Null,
}

impl Reply {
    /// The reply as text when it is a simple string, bulk string or verbatim
    /// string holding UTF-8; `None` for anything else.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Reply::Simple(s) => Some(s),
            Reply::Bulk(b) | Reply::Verbatim(_, b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The raw bytes of a bulk or verbatim string, or the text of a simple one.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Simple(s) => Some(s.as_bytes()),
            Reply::Bulk(b) | Reply::Verbatim(_, b) => Some(b),
            _ => None,
        }
    }

    /// The integer of a `:` reply.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Whether this is an error reply (`-` or `!`).
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// The error code (first word, e.g. `LOADING`, `READONLY`, `ERR`) of an
    /// error reply.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => e.split_whitespace().next(),
            _ => None,
        }
    }

    /// Whether the reply is RESP2 `$-1`/`*-1` or RESP3 `_`.
    pub fn is_nil(&self) -> bool {
        matches!(self, Reply::Nil | Reply::NilArray | Reply::Null)
    }

    /// Panics, showing the reply, unless it is `+OK`.
    #[track_caller]
    pub fn expect_ok(&self) {
        match self {
            Reply::Simple(s) if s == "OK" => {}
            other => panic!("expected +OK, got {other}"),
        }
    }

    /// Panics, showing the reply, unless it is an error whose code is `code`.
    #[track_caller]
    pub fn expect_error_code(&self, code: &str) {
        if self.error_code() != Some(code) {
            panic!("expected a -{code} error, got {self}");
        }
    }
}

impl fmt::Display for Reply {
    /// A one-line rendering close to the wire format, for assertion messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list(f: &mut fmt::Formatter<'_>, open: &str, items: &[Reply]) -> fmt::Result {
            write!(f, "{open}")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "{item}")?;
            }
            write!(f, "]")
        }
        match self {
            Reply::Simple(s) => write!(f, "+{s}"),
            Reply::Error(e) => write!(f, "-{e}"),
            Reply::Int(i) => write!(f, ":{i}"),
            Reply::Bulk(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Reply::Nil => write!(f, "(nil bulk)"),
            Reply::Array(items) => list(f, "[", items),
            Reply::NilArray => write!(f, "(nil array)"),
            Reply::Double(d) => write!(f, ",{d}"),
            Reply::Bool(b) => write!(f, "#{}", if *b { 't' } else { 'f' }),
            Reply::BigNumber(n) => write!(f, "({n}"),
            Reply::Verbatim(format, b) => {
                write!(f, "={format}:{:?}", String::from_utf8_lossy(b))
            }
            Reply::Map(pairs) => {
                write!(f, "{{")?;
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k} => {v}")?;
                }
                write!(f, "}}")
            }
            Reply::Set(items) => list(f, "~[", items),
            Reply::Push(items) => list(f, ">[", items),
            Reply::Null => write!(f, "(null)"),
        }
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why `read_reply` did not return a reply.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection (EOF). `buffered` is how many bytes of
    /// an incomplete reply had arrived before that (non-zero: cut mid-reply).
    Closed { buffered: usize },
    /// The peer reset the connection (RST: `ECONNRESET`/`ECONNABORTED`).
    Reset(io::Error),
    /// No complete reply within `after`; the connection is still open.
    Timeout { after: Duration, buffered: usize },
    /// Any other socket error.
    Io(io::Error),
    /// The bytes received are not valid RESP.
    Protocol(String),
}

impl ReadError {
    /// Closed by the peer, gracefully (EOF) or not (reset).
    pub fn is_closed(&self) -> bool {
        matches!(self, ReadError::Closed { .. } | ReadError::Reset(_))
    }

    /// Whether the read gave up waiting.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ReadError::Timeout { .. })
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Closed { buffered } => write!(
                f,
                "connection closed by peer ({buffered} bytes of an incomplete reply buffered)"
            ),
            ReadError::Reset(e) => write!(f, "connection reset by peer: {e}"),
            ReadError::Timeout { after, buffered } => write!(
                f,
                "no complete reply within {after:?} ({buffered} bytes buffered)"
            ),
            ReadError::Io(e) => write!(f, "socket error: {e}"),
            ReadError::Protocol(e) => write!(f, "invalid RESP from peer: {e}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a reply, and otherwise the
/// reply with the number of bytes it took. Shared by the async `TestClient`
/// and the blocking probes `RedisServer` uses while a server starts.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let mut parser = Parser { buf, pos: 0 };
    match parser.value(0) {
        Ok(reply) => Ok(Some((reply, parser.pos))),
        Err(Incomplete::NeedMore) => Ok(None),
        Err(Incomplete::Invalid(e)) => Err(e),
    }
}

/// The length of the reply at the front of `buf`, found without decoding
/// it and without recursion, so at any depth; `Ok(None)` while only part of
/// it has arrived.
pub fn raw_reply_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let mut pos = 0;
    // Items still expected by each open aggregate, innermost last.
    let mut open: Vec<usize> = Vec::new();
    loop {
        let Some(&kind) = buf.get(pos) else {
            return Ok(None);
        };
        let Some(end) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[pos + 1..pos + end];
        pos += end + 2;
        let number = || {
            std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| format!("bad length {:?}", String::from_utf8_lossy(line)))
        };
        // A null (-1) counts as a scalar.
        let count = || number().map(|n| usize::try_from(n).unwrap_or(0));
        let children = match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => 0,
            b'$' | b'=' | b'!' => {
                if let Ok(len) = usize::try_from(number()?) {
                    if buf.len() < pos + len + 2 {
                        return Ok(None);
                    }
                    if &buf[pos + len..pos + len + 2] != b"\r\n" {
                        return Err("blob not terminated by CRLF".to_string());
                    }
                    pos += len + 2;
                }
                0
            }
            b'*' | b'~' | b'>' => count()?,
            b'%' => 2 * count()?,
            // Attributes, then the reply they annotate.
            b'|' => 2 * count()? + 1,
            other => return Err(format!("unknown reply type byte {:?}", other as char)),
        };
        if children > 0 {
            open.push(children);
            continue;
        }
        // One item done: close every aggregate it completes.
        loop {
            match open.last_mut() {
                None => return Ok(Some(pos)),
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    open.pop();
                }
            }
        }
    }
}

enum Incomplete {
    NeedMore,
    Invalid(String),
}

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    /// The next `\r\n`-terminated line, without the terminator.
    fn line(&mut self) -> Result<&'a [u8], Incomplete> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(Incomplete::NeedMore)?;
        self.pos += end + 2;
        Ok(&rest[..end])
    }

    fn text(&mut self) -> Result<String, Incomplete> {
        Ok(String::from_utf8_lossy(self.line()?).into_owned())
    }

    fn number(&mut self) -> Result<i64, Incomplete> {
        let line = self.line()?;
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Incomplete::Invalid(format!("bad number {:?}", String::from_utf8_lossy(line)))
            })
    }

    /// A length-prefixed payload; `None` for the `-1` null length.
    fn blob(&mut self) -> Result<Option<Vec<u8>>, Incomplete> {
        let len = self.number()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len)
            .map_err(|_| Incomplete::Invalid(format!("bad blob length {len}")))?;
        let rest = &self.buf[self.pos..];
        if rest.len() < len + 2 {
            return Err(Incomplete::NeedMore);
        }
        if &rest[len..len + 2] != b"\r\n" {
            return Err(Incomplete::Invalid(
                "blob not terminated by CRLF".to_string(),
            ));
        }
        self.pos += len + 2;
        Ok(Some(rest[..len].to_vec()))
    }

    /// An aggregate's element count; `None` for the `-1` null count.
    fn count(&mut self) -> Result<Option<usize>, Incomplete> {
        let n = self.number()?;
        if n == -1 {
            return Ok(None);
        }
        usize::try_from(n)
            .map(Some)
            .map_err(|_| Incomplete::Invalid(format!("bad aggregate length {n}")))
    }

    fn values(&mut self, n: usize, depth: usize) -> Result<Vec<Reply>, Incomplete> {
        // Do not trust `n` for the allocation: it comes from the peer.
        let mut items = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(items)
    }

    fn value(&mut self, depth: usize) -> Result<Reply, Incomplete> {
        if depth > MAX_DEPTH {
            return Err(Incomplete::Invalid(format!(
                "reply nested deeper than {MAX_DEPTH}"
            )));
        }
        let Some(&kind) = self.buf.get(self.pos) else {
            return Err(Incomplete::NeedMore);
        };
        self.pos += 1;
        Ok(match kind {
            b'+' => Reply::Simple(self.text()?),
            b'-' => Reply::Error(self.text()?),
            b':' => Reply::Int(self.number()?),
            b'$' => match self.blob()? {
                Some(b) => Reply::Bulk(b),
                None => Reply::Nil,
            },
            b'*' => match self.count()? {
                Some(n) => Reply::Array(self.values(n, depth)?),
                None => Reply::NilArray,
            },
            b'_' => {
                self.line()?;
                Reply::Null
            }
            b',' => Reply::Double(self.text()?),
            b'#' => match self.line()? {
                b"t" => Reply::Bool(true),
                b"f" => Reply::Bool(false),
                other => {
                    return Err(Incomplete::Invalid(format!(
                        "bad boolean {:?}",
                        String::from_utf8_lossy(other)
                    )))
                }
            },
            b'(' => Reply::BigNumber(self.text()?),
            b'!' => {
                let blob = self.blob()?.unwrap_or_default();
                Reply::Error(String::from_utf8_lossy(&blob).into_owned())
            }
            b'=' => {
                let blob = self.blob()?.unwrap_or_default();
                // `=15\r\ntxt:Some string`: a three-letter format, a colon, the text.
                if blob.len() < 4 || blob[3] != b':' {
                    return Err(Incomplete::Invalid(
                        "verbatim string without a format prefix".to_string(),
                    ));
                }
                let format = String::from_utf8_lossy(&blob[..3]).into_owned();
                Reply::Verbatim(format, blob[4..].to_vec())
            }
            b'%' | b'|' => {
                let n = self.count()?.unwrap_or(0);
                let mut pairs = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let key = self.value(depth + 1)?;
                    let value = self.value(depth + 1)?;
                    pairs.push((key, value));
                }
                if kind == b'|' {
                    // Attributes annotate the reply that follows; tests only
                    // care about that reply.
                    return self.value(depth);
                }
                Reply::Map(pairs)
            }
            b'~' => {
                let n = self.count()?.unwrap_or(0);
                Reply::Set(self.values(n, depth)?)
            }
            b'>' => {
                let n = self.count()?.unwrap_or(0);
                Reply::Push(self.values(n, depth)?)
            }
            other => {
                return Err(Incomplete::Invalid(format!(
                    "unknown reply type byte {:?}",
                    other as char
                )))
            }
        })
    }
}

/// A raw RESP connection for tests.
pub struct TestClient {
    stream: Either<TcpStream, UnixStream>,
    /// Bytes read but not yet parsed into a reply: replies may arrive split
    /// across reads or many to a read (pipelining).
    buf: BytesMut,
    read_timeout: Duration,
    /// `0.0.0.0:0` over a Unix socket.
    peer: SocketAddr,
    /// Where it connected, for messages.
    name: String,
}

/// How a [`TestClient`] hangs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Closes the socket: the peer reads end of stream.
    Close,
    /// Resets the connection: the peer's next read fails.
    Reset,
}

impl TestClient {
    /// Connects to `addr` (TCP_NODELAY on, so tests can send in small pieces).
    pub async fn connect(addr: SocketAddr) -> io::Result<TestClient> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("connect to {addr}: {e}")))?;
        stream.set_nodelay(true)?;
        Ok(TestClient {
            stream: Either::Left(stream),
            buf: BytesMut::with_capacity(16 * 1024),
            read_timeout: DEFAULT_READ_TIMEOUT,
            peer: addr,
            name: addr.to_string(),
        })
    }

    /// Connects to the Unix socket at `path`.
    pub async fn connect_unix(path: impl AsRef<std::path::Path>) -> io::Result<TestClient> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("connect to {}: {e}", path.display())))?;
        Ok(TestClient {
            stream: Either::Right(stream),
            buf: BytesMut::with_capacity(16 * 1024),
            read_timeout: DEFAULT_READ_TIMEOUT,
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            name: format!("unix:{}", path.display()),
        })
    }

    /// The address this client connected to.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The client's own address (as the server sees it); TCP only.
    pub fn local_addr(&self) -> SocketAddr {
        match &self.stream {
            Either::Left(tcp) => tcp
                .local_addr()
                .expect("a connected socket has a local address"),
            Either::Right(_) => panic!("a Unix socket client has no TCP address"),
        }
    }

    /// Changes how long `read_reply` waits (default `DEFAULT_READ_TIMEOUT`).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.read_timeout = timeout;
    }

    /// Goes away without a word: a close (FIN) or a reset (RST).
    pub fn leave(self, how: Leave) {
        if let (Leave::Reset, Either::Left(tcp)) = (how, &self.stream) {
            // Closing with a zero linger time resets the connection.
            tcp.set_zero_linger().expect("SO_LINGER");
        }
    }

    /// Writes `bytes` exactly as given.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Sends one command as a RESP array of bulk strings.
    pub async fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<()> {
        self.send_raw(&encode_command(args)).await
    }

    /// Reads the next reply, waiting at most the client's read timeout.
    pub async fn read_reply(&mut self) -> Result<Reply, ReadError> {
        self.read_reply_within(self.read_timeout).await
    }

    /// Reads the next reply, waiting at most `timeout`.
    pub async fn read_reply_within(&mut self, timeout: Duration) -> Result<Reply, ReadError> {
        self.read_within(timeout, parse_reply).await
    }

    /// Reads the next reply as the bytes that arrived, however deeply
    /// nested, waiting at most the client's read timeout.
    pub async fn read_raw_reply(&mut self) -> Result<Vec<u8>, ReadError> {
        self.read_within(self.read_timeout, |buf| {
            Ok(raw_reply_len(buf)?.map(|len| (buf[..len].to_vec(), len)))
        })
        .await
    }

    /// Reads until `parse` finds a whole reply at the front of the buffer,
    /// waiting at most `timeout`.
    async fn read_within<T>(
        &mut self,
        timeout: Duration,
        parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, String>,
    ) -> Result<T, ReadError> {
        match tokio::time::timeout(timeout, self.read_next(parse)).await {
            Ok(result) => result,
            Err(_) => Err(ReadError::Timeout {
                after: timeout,
                buffered: self.buf.len(),
            }),
        }
    }

    async fn read_next<T>(
        &mut self,
        parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, String>,
    ) -> Result<T, ReadError> {
        loop {
            if let Some((reply, used)) = parse(&self.buf).map_err(ReadError::Protocol)? {
                self.buf.advance(used);
                return Ok(reply);
            }
            self.buf.reserve(16 * 1024);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => {
                    return Err(ReadError::Closed {
                        buffered: self.buf.len(),
                    })
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Err(ReadError::Reset(e))
                }
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Sends a command and reads its reply.
    pub async fn try_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Reply, ReadError> {
        self.send(args).await.map_err(ReadError::Io)?;
        self.read_reply().await
    }

    /// respool's `INFO respool` counters (the numeric fields), by name.
    pub async fn respool_counters(&mut self) -> std::collections::HashMap<String, String> {
        let reply = self.cmd(&["INFO", "respool"]).await;
        let text = reply
            .as_str()
            .unwrap_or_else(|| panic!("INFO respool answered {reply}"))
            .to_string();
        assert!(text.starts_with("# Respool\r\n"), "{text}");
        text.lines()
            .skip(1)
            .map(|line| {
                let (name, value) = line.split_once(':').expect("field:value");
                (name.to_string(), value.to_string())
            })
            .collect()
    }

    /// Sends a command and reads its reply; panics, naming the command and the
    /// server, when the connection fails. Error *replies* are returned.
    pub async fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        match self.try_cmd(args).await {
            Ok(reply) => reply,
            Err(e) => panic!(
                "{} to {}: {e}",
                args.first()
                    .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
                    .unwrap_or_default(),
                self.name
            ),
        }
    }

    /// Closes our sending side (TCP FIN) while still allowing reads.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }
}
