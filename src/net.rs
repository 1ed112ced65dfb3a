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
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
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

    /// Like [`readable`](Self::readable), as a poll: cheaper in a loop that
    /// polls it on every turn, because the waker goes into the socket's one
    /// reader slot instead of a waiter list that each poll would join and
    /// each drop would leave.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            // Decrypted plaintext waiting, or the peer's close_notify: the
            // next read returns at once, whatever the socket says.
            Stream::Tls(s) if !s.session().wants_read() => Poll::Ready(Ok(())),
            Stream::Tls(s) => s.tcp.poll_read_ready(cx),
        }
    }

    /// Whether the peer has closed the connection, without taking anything
    /// from it: `Ready(true)` at end of stream, `Ready(false)` when data is
    /// waiting instead (which keeps the stream readable: stop asking until it
    /// is read), pending until either.
    pub fn poll_hung_up(&self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        match self {
            Stream::Tcp(s) => {
                let mut byte = [0u8; 1];
                let mut buf = tokio::io::ReadBuf::new(&mut byte);
                s.poll_peek(cx, &mut buf).map_ok(|n| n == 0)
            }
            Stream::Tls(s) => s.poll_hung_up(cx),
        }
    }

    /// Whether the peer has closed its end (FIN or reset), asked of the
    /// kernel now. Unlike a read or a peek, this sees the close behind data
    /// not read yet, so it can watch a client that is not being read. Costs
    /// a system call: for a periodic check, not a hot path.
    pub fn peer_closed(&self) -> bool {
        let tcp = match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => &s.tcp,
        };
        let mut fds = [PollFd::new(tcp, PollFlags::RDHUP)];
        // A zero timeout: the call reports and returns.
        match poll(&mut fds, Some(&Timespec::default())) {
            Ok(1) => fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
            _ => false,
        }
    }

    /// Like [`writable`](Self::writable), as a poll (see
    /// [`poll_read_ready`](Self::poll_read_ready)).
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_write_ready(cx),
            Stream::Tls(s) => s.tcp.poll_write_ready(cx),
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

    /// Tells a TLS peer that the stream ends here (a close_notify alert),
    /// as far as the socket takes it without waiting; nothing on TCP, where
    /// closing the socket says it. Without it a TLS client cannot tell the
    /// end of the stream from a connection cut short.
    pub fn close_notify(&self) {
        if let Stream::Tls(s) = self {
            let mut session = s.session();
            session.send_close_notify();
            let _ = s.flush(&mut session);
        }
    }

    /// Writes all of `data`, and flushes it.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(data).await,
            Stream::Tls(s) => s.write_all(data).await,
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
    pub async fn write_buf<B: Buf>(&mut self, buf: &mut B) -> io::Result<usize> {
        match self {
            // Vectored when `buf` is in pieces.
            WriteHalf::Tcp(w) => w.write_buf(buf).await,
            WriteHalf::Tls(s) => {
                let n = s.write_some(buf.chunk()).await?;
                buf.advance(n);
                Ok(n)
            }
        }
    }

    /// Writes all of `data`, and flushes it.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(w) => w.write_all(data).await,
            WriteHalf::Tls(s) => s.write_all(data).await,
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

    /// See [`Stream::poll_hung_up`]. Peeking at the socket would not do: a
    /// close_notify alert, or a record of another kind, is data there. So
    /// this takes the records that arrived into the session, where any
    /// plaintext stays for the next read, and asks the session.
    fn poll_hung_up(&self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut session = self.session();
        loop {
            let state = match session.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // rustls queued an alert saying why; try to send it.
                    let _ = self.flush(&mut session);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            };
            if state.plaintext_bytes_to_read() > 0 {
                return Poll::Ready(Ok(false));
            }
            if state.peer_has_closed() {
                return Poll::Ready(Ok(true));
            }
            std::task::ready!(self.tcp.poll_read_ready(cx))?;
            match session.read_tls(&mut SocketIo(&self.tcp)) {
                // The socket closed without a close_notify.
                Ok(0) => return Poll::Ready(Ok(true)),
                Ok(_) => {}
                // Readiness is cleared: the next turn registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
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

    /// Writes all of `data` and every record it became.
    async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        let mut rest = data;
        while !rest.is_empty() || self.session().wants_write() {
            let n = self.write_some(rest).await?;
            rest = &rest[n..];
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::FutureExt;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::net::TcpListener;

    use super::*;

    /// A respool-side TLS [`Stream`] (server) and the peer's tokio-rustls
    /// stream, connected over loopback.
    async fn tls_pair() -> (Stream, tokio_rustls::client::TlsStream<TcpStream>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = CertificateDer::from_pem_slice(ck.cert.pem().as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(ck.signing_key.serialize_pem().as_bytes()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            Stream::from(acceptor.accept(tcp).await.unwrap())
        };
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            let name = ServerName::try_from("localhost").unwrap();
            connector.connect(name, tcp).await.unwrap()
        };
        tokio::join!(accept, connect)
    }

    #[tokio::test]
    async fn half_a_record_is_a_spurious_wakeup_not_data() {
        let (mut server, client) = tls_pair().await;
        let (mut tcp, mut session) = client.into_inner();
        session.writer().write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        let mut record = Vec::new();
        while session.wants_write() {
            session.write_tls(&mut record).unwrap();
        }
        let half = record.len() / 2;
        tcp.write_all(&record[..half]).await.unwrap();

        let mut buf = BytesMut::with_capacity(1024);
        server.readable().await.unwrap();
        assert!(server.read_buf(&mut buf).now_or_never().is_none());
        assert!(buf.is_empty());

        tcp.write_all(&record[half..]).await.unwrap();
        let n = loop {
            server.readable().await.unwrap();
            if let Some(read) = server.read_buf(&mut buf).now_or_never() {
                break read.unwrap();
            }
        };
        assert_eq!(&buf[..n], b"*1\r\n$4\r\nPING\r\n");

        // A close without close_notify reads as EOF.
        tcp.shutdown().await.unwrap();
        let n = loop {
            server.readable().await.unwrap();
            if let Some(read) = server.read_buf(&mut buf).now_or_never() {
                break read.unwrap();
            }
        };
        assert_eq!(n, 0);
    }

    /// Waits for the hang-up watch's answer; a reset (the peer closed with
    /// our session tickets unread) counts as a hang-up.
    async fn hung_up(server: &Stream) -> bool {
        let watch = std::future::poll_fn(|cx| server.poll_hung_up(cx));
        match tokio::time::timeout(std::time::Duration::from_secs(20), watch)
            .await
            .expect("the hang-up watch answers")
        {
            Ok(hung_up) => hung_up,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => true,
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn a_tls_peer_that_hangs_up_is_noticed_and_its_data_kept() {
        let (mut server, mut client) = tls_pair().await;
        let watch = std::future::poll_fn(|cx| server.poll_hung_up(cx));
        assert!(watch.now_or_never().is_none(), "a quiet peer is pending");

        // Data: not a hang-up, and still there for the next read.
        client.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
        client.flush().await.unwrap();
        assert!(!hung_up(&server).await);
        let mut buf = BytesMut::with_capacity(1024);
        server.read_buf(&mut buf).await.unwrap();
        assert_eq!(&buf[..], b"*1\r\n$4\r\nPING\r\n");

        // close_notify, then the socket's end: a hang-up.
        client.shutdown().await.unwrap();
        assert!(hung_up(&server).await);

        // A socket closed without close_notify: a hang-up too.
        let (server, client) = tls_pair().await;
        let (tcp, _session) = client.into_inner();
        drop(tcp);
        assert!(hung_up(&server).await);
    }

    #[tokio::test]
    async fn writes_the_socket_cannot_take_are_flushed_later() {
        let (server, mut client) = tls_pair().await;
        let data: Vec<u8> = (0..32 << 20).map(|i| (i % 251) as u8).collect();

        // The peer does not read yet: write until the socket pushes back.
        // Everything accepted counts as written, but the last records are
        // still waiting in the session.
        let mut sent = 0;
        loop {
            match server.try_write(&data[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(sent < data.len(), "the socket never pushed back");
        assert!(server.has_pending_output());

        let expected = data[..sent].to_vec();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            client.read_exact(&mut got).await.unwrap();
            got == expected
        });
        // Readiness-driven, as the client task does it: the peer gets the
        // last bytes only because they are flushed.
        while server.has_pending_output() {
            server.writable().await.unwrap();
            match server.try_flush() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => panic!("{e}"),
                _ => {}
            }
        }
        let intact = tokio::time::timeout(std::time::Duration::from_secs(20), reader)
            .await
            .expect("every accepted byte arrives once flushed")
            .unwrap();
        assert!(intact, "the bytes arrived changed");
    }

    #[tokio::test]
    async fn split_halves_carry_both_directions() {
        let (mut server, mut client) = tls_pair().await;
        let (mut rd, mut wr) = server.split();
        let mut out = BytesMut::from(&vec![b'a'; 1 << 20][..]);
        let mut inbuf = BytesMut::with_capacity(64 * 1024);
        let peer = async {
            client.write_all(b"hello").await.unwrap();
            client.flush().await.unwrap();
            let mut got = vec![0u8; 1 << 20];
            client.read_exact(&mut got).await.unwrap();
            got
        };
        let local = async {
            while !out.is_empty() || wr.has_pending_output() {
                wr.write_buf(&mut out).await.unwrap();
            }
            while inbuf.len() < 5 {
                rd.read_buf(&mut inbuf).await.unwrap();
            }
        };
        let (got, ()) = tokio::join!(peer, local);
        assert!(got.iter().all(|&b| b == b'a'));
        assert_eq!(&inbuf[..], b"hello");
    }
}
