//! The byte stream of a client or upstream connection: plain TCP, TLS on
//! top of TCP through tokio-rustls, or a Unix domain socket (a sidecar's
//! clients, a local Redis's `unixsocket`).
//!
//! [`Stream`] implements `AsyncRead` and `AsyncWrite` by delegating to
//! tokio and tokio-rustls, so every transport wakes its task the same way:
//! a poll that returns `Pending` has left the task's waker with the runtime,
//! and nothing respool writes itself can lose that registration.
//!
//! Two things are respool's own, because they buy something measurable:
//! * [`Stream::peer_closed`] asks the kernel (`poll(2)` with `POLLRDHUP`)
//!   whether the peer hung up *behind data not read yet*, which no read can
//!   tell without consuming that data; a client that respool stops reading
//!   while its blocking command waits is watched this way.
//! * A TLS peer that closes without a `close_notify` alert reads as the end
//!   of the stream, not as an error: RESP frames itself, so a cut-short
//!   stream is detected as an incomplete frame anyway.
//!
//! TLS output: a write hands plaintext to rustls, which may keep encrypted
//! records when the socket is full; `poll_flush` sends them. Callers flush
//! after each batch of writes (a no-op on TCP).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsStream;

/// A connection's byte stream; see the module docs.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP, after a completed handshake (either side).
    Tls(Box<TlsStream<TcpStream>>),
    /// A Unix domain socket, and the path of the socket file it was
    /// accepted on or connected to (the kernel names neither end of an
    /// accepted connection; Redis shows the listening path for both).
    Unix(UnixStream, Arc<str>),
}

/// Where a connection's end is, as `CLIENT LIST` shows it: `ip:port`, or
/// for a Unix socket the socket file's path followed by `:0`, as Redis
/// prints its `unixsocket` clients (`addr=/run/redis.sock:0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// The path of a Unix socket file.
    Unix(Arc<str>),
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(addr) => addr.fmt(f),
            PeerAddr::Unix(path) => write!(f, "{path}:0"),
        }
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for Stream {
    fn from(tls: tokio_rustls::server::TlsStream<TcpStream>) -> Stream {
        Stream::Tls(Box::new(TlsStream::Server(tls)))
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for Stream {
    fn from(tls: tokio_rustls::client::TlsStream<TcpStream>) -> Stream {
        Stream::Tls(Box::new(TlsStream::Client(tls)))
    }
}

impl Stream {
    /// The socket under the stream.
    fn socket(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Tls(s) => s.get_ref().0.as_fd(),
            Stream::Unix(s, _) => s.as_fd(),
        }
    }

    /// The peer's address (for a Unix socket, the socket file's path).
    pub(crate) fn peer_addr(&self) -> io::Result<PeerAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().map(PeerAddr::Tcp),
            Stream::Tls(s) => s.get_ref().0.peer_addr().map(PeerAddr::Tcp),
            Stream::Unix(_, path) => Ok(PeerAddr::Unix(path.clone())),
        }
    }

    /// Our end's address (for a Unix socket, the socket file's path).
    pub(crate) fn local_addr(&self) -> io::Result<PeerAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().map(PeerAddr::Tcp),
            Stream::Tls(s) => s.get_ref().0.local_addr().map(PeerAddr::Tcp),
            Stream::Unix(_, path) => Ok(PeerAddr::Unix(path.clone())),
        }
    }

    /// The socket's file descriptor, for `CLIENT LIST`.
    pub fn fd(&self) -> i32 {
        self.socket().as_raw_fd()
    }

    /// Writes what the socket takes now, like `poll_write`. On TCP it goes
    /// through `try_write`, and registers for writability only when the
    /// socket is full: `poll_write` would also charge tokio's cooperative
    /// budget on every call, which cost ~200 instructions per request at
    /// pipeline 1 on a client's reply path (respool's loops return to the
    /// runtime on their own once nothing is ready).
    #[inline]
    pub fn poll_send(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Stream::Tcp(s) => loop {
                match s.try_write(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::task::ready!(s.poll_write_ready(cx))?;
                    }
                    result => return Poll::Ready(result),
                }
            },
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            // The same reasoning as TCP's.
            Stream::Unix(s, _) => loop {
                match s.try_write(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::task::ready!(s.poll_write_ready(cx))?;
                    }
                    result => return Poll::Ready(result),
                }
            },
        }
    }

    /// Whether written bytes may wait in the stream until a flush (TLS
    /// records); never on TCP or a Unix socket.
    #[inline]
    pub fn buffers_writes(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Whether the peer has closed its end (FIN or reset), asked of the
    /// kernel now. Unlike a read, this sees the close behind data not read
    /// yet, so it can watch a client that is not being read. Costs a system
    /// call: for a periodic check, not a hot path.
    pub fn peer_closed(&self) -> bool {
        let socket = self.socket();
        let mut fds = [PollFd::new(&socket, PollFlags::RDHUP)];
        // A zero timeout: the call reports and returns.
        match poll(&mut fds, Some(&Timespec::default())) {
            Ok(1) => fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
            _ => false,
        }
    }

    /// Ends the stream as far as the socket takes it without waiting: a TLS
    /// peer gets its close_notify alert (without one it cannot tell the end
    /// of the stream from a connection cut short), a TCP or Unix peer the
    /// end of the stream.
    pub fn close(&mut self) {
        use futures_util::FutureExt;
        let _ = self.shutdown().now_or_never();
    }
}

impl Stream {
    /// After [`close`](Self::close): reads and discards what the peer still
    /// sends until it closes its end too, for at most `limit` (a "lingering
    /// close"). Closing a socket with bytes unread makes the kernel reset
    /// the connection, and a reset can overtake replies not yet delivered.
    pub async fn linger(&mut self, limit: std::time::Duration) {
        use tokio::io::AsyncReadExt;
        let mut scratch = [0u8; 4096];
        let drain = async { while let Ok(1..) = self.read(&mut scratch).await {} };
        let _ = tokio::time::timeout(limit, drain).await;
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => match Pin::new(s.as_mut()).poll_read(cx, buf) {
                // Closed without a close_notify: for RESP, the same as EOF.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(()))
                }
                other => other,
            },
            Stream::Unix(s, _) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Unix(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Unix(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Unix(s, _) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            // Nothing is buffered on TCP or a Unix socket.
            Stream::Tcp(_) | Stream::Unix(..) => Poll::Ready(Ok(())),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s, _) => Pin::new(s).poll_shutdown(cx),
            // tokio-rustls queues the close_notify alert first.
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::BytesMut;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A respool-side TLS [`Stream`] (server) and the peer's tokio-rustls
    /// stream, connected over loopback.
    pub(crate) async fn tls_pair() -> (Stream, tokio_rustls::client::TlsStream<TcpStream>) {
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
    async fn a_close_without_close_notify_reads_as_the_end_of_the_stream() {
        let (mut server, client) = tls_pair().await;
        let (mut tcp, _session) = client.into_inner();
        // A FIN without the alert (closing the socket itself could send a
        // reset instead, with the server's session tickets unread).
        tcp.shutdown().await.unwrap();
        let mut buf = BytesMut::with_capacity(64);
        let n = tokio::time::timeout(Duration::from_secs(20), server.read_buf(&mut buf))
            .await
            .expect("the close is noticed")
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn close_sends_close_notify() {
        let (mut server, mut client) = tls_pair().await;
        server.write_all(b"+OK\r\n").await.unwrap();
        server.flush().await.unwrap();
        server.close();
        let mut got = Vec::new();
        // A clean end (not UnexpectedEof): the alert arrived.
        tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut got))
            .await
            .expect("the end arrives")
            .expect("a clean close_notify, not a cut-short stream");
        assert_eq!(got, b"+OK\r\n");
    }

    /// Each side waits on readiness alone, with no timer anywhere: if a
    /// wake-up were lost, this would hang instead of finishing 2 000 round
    /// trips.
    #[tokio::test]
    async fn round_trips_over_tls_wake_on_readiness_alone() {
        let (mut server, mut client) = tls_pair().await;
        let echo = tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(4096);
            loop {
                buf.clear();
                if server.read_buf(&mut buf).await.unwrap() == 0 {
                    return;
                }
                server.write_all(&buf).await.unwrap();
                server.flush().await.unwrap();
            }
        });
        let rounds = async {
            let mut got = [0u8; 5];
            for _ in 0..2000 {
                client.write_all(b"hello").await.unwrap();
                client.flush().await.unwrap();
                client.read_exact(&mut got).await.unwrap();
                assert_eq!(&got, b"hello");
            }
        };
        tokio::time::timeout(Duration::from_secs(60), rounds)
            .await
            .expect("2 000 round trips well within a minute");
        drop(client);
        echo.await.unwrap();
    }

    #[tokio::test]
    async fn peer_closed_sees_a_hang_up_behind_unread_data() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut peer = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let ours = Stream::Tcp(tcp);
        assert!(!ours.peer_closed());
        peer.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
        drop(peer);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !ours.peer_closed() {
            assert!(tokio::time::Instant::now() < deadline, "never noticed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
