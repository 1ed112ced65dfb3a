//! The byte stream of a client or upstream connection: plain TCP, or TLS on
//! top of TCP.
//!
//! Client tasks and pinned sessions drive their sockets by readiness
//! (`readable()`, then read without waiting; `writable()`, then `try_write`),
//! so that one task can serve a socket in both directions without buffering
//! anything of its own. [`Stream`] keeps that interface for both kinds:
//!
//! * **TCP** calls straight through to [`TcpStream`]; nothing is added on the
//!   plain path but a branch on the variant.
//! * **TLS** keeps the rustls connection state next to the socket and moves
//!   records with `read_tls`/`write_tls` over the socket's own non-blocking
//!   `try_read`/`try_write`, so socket readiness stays exact. Two things
//!   differ from TCP, and the callers handle both:
//!   - a readable socket does not mean plaintext is available (half a record
//!     arrived): a read then returns `None`, the same as a spurious wakeup;
//!     and plaintext already decrypted makes [`Stream::readable`] return at
//!     once, because the socket may have nothing more to say;
//!   - written plaintext becomes records that the socket may not take at
//!     once: [`Stream::has_pending_output`] says so, and
//!     [`Stream::try_flush`] (or the next write) sends them. Nothing new is
//!     accepted until older records are out, so at most one record batch
//!     (rustls's buffer limit) is held per connection.
//!
//! The rustls state sits in a mutex only so that a lane can hold a read and a
//! write half of one connection at once ([`Stream::split`]); both halves are
//! used by one task, so the lock is never contended.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection's byte stream; see the module docs.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP, after a completed handshake.
    Tls(Box<TlsStream>),
}

/// A socket and the rustls state of the TLS session on it.
pub struct TlsStream {
    tcp: TcpStream,
    session: Mutex<rustls::Connection>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for Stream {
    fn from(tls: tokio_rustls::server::TlsStream<TcpStream>) -> Stream {
        let (tcp, session) = tls.into_inner();
        Stream::tls(tcp, session.into())
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for Stream {
    fn from(tls: tokio_rustls::client::TlsStream<TcpStream>) -> Stream {
        let (tcp, session) = tls.into_inner();
        Stream::tls(tcp, session.into())
    }
}

impl Stream {
    fn tls(tcp: TcpStream, session: rustls::Connection) -> Stream {
        Stream::Tls(Box::new(TlsStream {
            tcp,
            session: Mutex::new(session),
        }))
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr(),
            Stream::Tls(s) => s.tcp.peer_addr(),
        }
    }

    /// Waits until a read may make progress (it may still find nothing).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Tls(s) => s.readable().await,
        }
    }

    /// Waits until a write may make progress.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.writable().await,
            Stream::Tls(s) => s.tcp.writable().await,
        }
    }

    /// Reads into `buf`'s spare capacity; `Ok(0)` is EOF. Polled once with
    /// `now_or_never()` after [`readable`](Self::readable) it never waits.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
        }
    }

    /// Writes what the socket takes now, or fails with `WouldBlock`.
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(data),
            Stream::Tls(s) => s.try_write(data),
        }
    }

    /// Encrypted output is waiting for the socket (never on TCP).
    pub fn has_pending_output(&self) -> bool {
        match self {
            Stream::Tcp(_) => false,
            Stream::Tls(s) => s.session().wants_write(),
        }
    }

    /// Sends waiting encrypted output, or fails with `WouldBlock` (a no-op
    /// on TCP).
    pub fn try_flush(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(_) => Ok(()),
            Stream::Tls(s) => s.flush(&mut s.session()),
        }
    }

    /// Writes all of `data`, and flushes it.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(data).await,
            Stream::Tls(s) => {
                let mut rest = data;
                while !rest.is_empty() || s.session().wants_write() {
                    let n = s.write_some(rest).await?;
                    rest = &rest[n..];
                }
                Ok(())
            }
        }
    }

    /// A read half and a write half, to wait on both directions at once.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Tls(s) => (ReadHalf::Tls(s), WriteHalf::Tls(s)),
        }
    }
}

/// The reading side of a [`Stream::split`].
pub enum ReadHalf<'a> {
    /// Plain TCP.
    Tcp(tokio::net::tcp::ReadHalf<'a>),
    /// TLS.
    Tls(&'a TlsStream),
}

/// The writing side of a [`Stream::split`].
pub enum WriteHalf<'a> {
    /// Plain TCP.
    Tcp(tokio::net::tcp::WriteHalf<'a>),
    /// TLS.
    Tls(&'a TlsStream),
}

impl ReadHalf<'_> {
    /// Reads at least one byte into `buf`'s spare capacity (`Ok(0)` is EOF).
    /// Cancel-safe.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            ReadHalf::Tcp(r) => r.read_buf(buf).await,
            ReadHalf::Tls(s) => s.read_buf(buf).await,
        }
    }
}

impl WriteHalf<'_> {
    /// Writes some of `buf` and advances it; on TLS, with `buf` empty, sends
    /// waiting encrypted output. Cancel-safe.
    pub async fn write_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(w) => w.write_buf(buf).await,
            WriteHalf::Tls(s) => {
                let n = s.write_some(buf).await?;
                buf.advance(n);
                Ok(n)
            }
        }
    }

    /// Encrypted output is waiting for the socket (never on TCP): keep
    /// calling [`write_buf`](Self::write_buf), even with nothing new to send.
    pub fn has_pending_output(&self) -> bool {
        match self {
            WriteHalf::Tcp(_) => false,
            WriteHalf::Tls(s) => s.session().wants_write(),
        }
    }
}

/// Non-blocking socket I/O for rustls's `read_tls`/`write_tls`.
struct SocketIo<'a>(&'a TcpStream);

impl Read for SocketIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for SocketIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsStream {
    fn session(&self) -> MutexGuard<'_, rustls::Connection> {
        // A panic while holding the lock leaves a session that is at worst
        // broken, which the next I/O error reports.
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn readable(&self) -> io::Result<()> {
        // Decrypted plaintext waiting, or the peer's close_notify: the next
        // read returns at once, whatever the socket says.
        let ready = !self.session().wants_read();
        if ready {
            return Ok(());
        }
        self.tcp.readable().await
    }

    async fn read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            self.readable().await?;
            if let Some(result) = self.try_read(buf) {
                return result;
            }
        }
    }

    /// Decrypts what has arrived into `buf`. `None` when the socket has no
    /// complete record yet (its readiness is then cleared).
    fn try_read(&self, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        if buf.capacity() == buf.len() {
            buf.reserve(4096);
        }
        let mut session = self.session();
        loop {
            let start = buf.len();
            buf.resize(buf.capacity(), 0);
            let read = session.reader().read(&mut buf[start..]);
            buf.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(n) => return Some(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed the socket without a close_notify: for a
                // request/reply stream framed by RESP, the same as EOF.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Some(Ok(0)),
                Err(e) => return Some(Err(e)),
            }
            match session.read_tls(&mut SocketIo(&self.tcp)) {
                Ok(_) => {
                    if let Err(e) = session.process_new_packets() {
                        // rustls queued an alert saying why; try to send it.
                        let _ = self.flush(&mut session);
                        return Some(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Sends queued records until none is left or the socket is full.
    fn flush(&self, session: &mut rustls::Connection) -> io::Result<()> {
        while session.wants_write() {
            if session.write_tls(&mut SocketIo(&self.tcp))? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Encrypts what fits of `data` once earlier records are sent, and sends
    /// what the socket takes. `WouldBlock` when nothing was accepted.
    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let mut session = self.session();
        self.flush(&mut session)?;
        let n = session.writer().write(data)?;
        match self.flush(&mut session) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ if n == 0 && !data.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            _ => Ok(n),
        }
    }

    /// Waits for the socket and writes some of `data` (with `data` empty:
    /// flushes waiting records). Cancel-safe.
    async fn write_some(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            match self.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tcp.writable().await?,
                result => return result,
            }
        }
    }
}
