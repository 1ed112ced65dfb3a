//! One upstream connection: connect with a deadline, TCP options, TLS, the
//! validation gate, and a helper for the few request/reply exchanges respool
//! makes on its own account (validation, health checks, resets).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::codec::Decoder;

use super::endpoint::Endpoint;
use crate::codec::{ReplyDecoder, Request};
use crate::config::url::unix_socket_path;
use crate::config::PoolSettings;
use crate::error::ConnectError;
use crate::net::Stream;

/// Why a connection stopped being usable: its reply stream is in doubt, so
/// it is closed, never reused.
#[derive(Debug)]
pub(crate) enum Broken {
    /// EOF, reset or another socket error.
    Lost(String),
    /// No reply within the request deadline.
    Timeout,
    /// A frame that is not RESP, or a reply nobody asked for.
    BadReply(String),
    /// The primary it went to is no longer the primary (a failover); the
    /// new primary's address.
    Moved(String),
}

/// An open upstream connection.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    /// The socket (plain or TLS).
    pub stream: Stream,
    /// Bytes read but not yet framed; kept with the connection so nothing is
    /// lost between the exchanges that use it.
    pub read_buf: BytesMut,
    /// Set when the reply stream is in doubt; `has_broken` reads it so that
    /// bb8 discards the connection instead of pooling it again.
    pub broken: bool,
    /// When the connection last carried traffic, for idle health checks.
    pub last_used: Instant,
    /// Its id upstream (`CLIENT ID`), if validation could ask.
    pub upstream_id: Option<u64>,
    /// The generation of its node's address it was made for (see
    /// [`Node`](super::endpoint::Node)).
    pub generation: u64,
    /// The address it is connected to, for messages.
    pub addr: Arc<str>,
}

impl UpstreamConn {
    /// Connects (with deadline, nodelay, keepalive, TLS for `rediss://`)
    /// and runs the validation gate as `endpoint`'s identity, speaking
    /// `protocol`. A connection that fails any step is closed, never
    /// returned. Returns the server's version too, when `INFO` gave it.
    pub async fn open(
        endpoint: &Endpoint,
        protocol: u8,
        s: &PoolSettings,
    ) -> Result<(UpstreamConn, Option<String>), ConnectError> {
        let (stream, generation, addr) =
            match tokio::time::timeout(s.connect_timeout, connect(endpoint, s)).await {
                Err(_) => return Err(ConnectError::ConnectTimeout(s.connect_timeout)),
                Ok(result) => result?,
            };
        let mut conn = UpstreamConn {
            stream,
            read_buf: BytesMut::with_capacity(s.read_buffer_size),
            broken: false,
            last_used: Instant::now(),
            upstream_id: None,
            generation,
            addr,
        };
        let version = super::validate::run_gate(&mut conn, endpoint, protocol, s).await?;
        Ok((conn, version))
    }

    /// Connects and logs in as `endpoint`'s identity, and nothing else:
    /// for a command that must reach Redis while it is busy running a
    /// script (then only AUTH, SCRIPT KILL, FUNCTION KILL and a few others
    /// are served), so no PING, SELECT or probe.
    pub async fn open_logged_in(
        endpoint: &Endpoint,
        s: &PoolSettings,
    ) -> Result<UpstreamConn, ConnectError> {
        let (stream, generation, addr) =
            match tokio::time::timeout(s.connect_timeout, connect(endpoint, s)).await {
                Err(_) => return Err(ConnectError::ConnectTimeout(s.connect_timeout)),
                Ok(result) => result?,
            };
        let mut conn = UpstreamConn {
            stream,
            read_buf: BytesMut::with_capacity(4096),
            broken: false,
            last_used: Instant::now(),
            upstream_id: None,
            generation,
            addr,
        };
        if let Some((step, login)) = super::validate::login(&endpoint.identity, 2) {
            let replies = conn.exchange(&[login], step, s.connect_timeout).await?;
            if replies.first().is_none_or(|r| r.first() == Some(&b'-')) {
                let reply = replies
                    .first()
                    .map(|r| String::from_utf8_lossy(&r[1..]).trim_end().to_string())
                    .unwrap_or_default();
                return Err(ConnectError::Rejected {
                    step,
                    reply: reply.into(),
                });
            }
        }
        Ok(conn)
    }

    /// Sends `requests` in one write and reads exactly one reply per request.
    /// Any failure marks the connection broken.
    pub async fn exchange(
        &mut self,
        requests: &[Request],
        step: &'static str,
        timeout: Duration,
    ) -> Result<Vec<Bytes>, ConnectError> {
        self.exchange_within(requests, step, timeout, false).await
    }

    /// Like [`exchange`](Self::exchange), but frames that arrive before the
    /// first reply and are pub/sub leftovers (pushes, message arrays) are
    /// skipped: used to RESET a connection that was subscribed.
    pub async fn exchange_skipping_pushes(
        &mut self,
        requests: &[Request],
        step: &'static str,
        timeout: Duration,
    ) -> Result<Vec<Bytes>, ConnectError> {
        self.exchange_within(requests, step, timeout, true).await
    }

    async fn exchange_within(
        &mut self,
        requests: &[Request],
        step: &'static str,
        timeout: Duration,
        skip_leading_pushes: bool,
    ) -> Result<Vec<Bytes>, ConnectError> {
        let result = match tokio::time::timeout(
            timeout,
            self.exchange_frames(requests, skip_leading_pushes),
        )
        .await
        {
            Err(_) => Err(ConnectError::StepTimeout {
                step,
                after: timeout,
            }),
            Ok(r) => r,
        };
        if result.is_err() {
            self.broken = true;
        }
        self.last_used = Instant::now();
        result
    }

    async fn exchange_frames(
        &mut self,
        requests: &[Request],
        skip_leading_pushes: bool,
    ) -> Result<Vec<Bytes>, ConnectError> {
        let mut out = BytesMut::new();
        for r in requests {
            out.extend_from_slice(r.raw());
        }
        self.send_and_read(&out, requests.len(), skip_leading_pushes)
            .await
    }

    /// Sends whole requests given as bytes and reads `count` replies.
    pub async fn exchange_raw(
        &mut self,
        raw: &[u8],
        count: usize,
        step: &'static str,
        timeout: Duration,
    ) -> Result<Vec<Bytes>, ConnectError> {
        let exchange = self.send_and_read(raw, count, false);
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(ConnectError::StepTimeout {
                step,
                after: timeout,
            }),
            Ok(r) => r,
        }
    }

    /// Waits for the next frame the server sends of its own accord (a
    /// pub/sub message on a subscribed connection).
    pub async fn next_frame(&mut self) -> Result<Bytes, ConnectError> {
        let mut frames = self.send_and_read(&[], 1, false).await?;
        frames
            .pop()
            .ok_or_else(|| ConnectError::Io("connection closed by upstream".into()))
    }

    async fn send_and_read(
        &mut self,
        out: &[u8],
        count: usize,
        skip_leading_pushes: bool,
    ) -> Result<Vec<Bytes>, ConnectError> {
        let io = |e: std::io::Error| ConnectError::from_io(&e);
        self.stream.write_all(out).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;
        let mut decoder = ReplyDecoder::default();
        let mut replies = Vec::with_capacity(count);
        while replies.len() < count {
            match decoder.decode(&mut self.read_buf) {
                Ok(Some(frame)) => {
                    let leftover = skip_leading_pushes
                        && replies.is_empty()
                        && matches!(frame.first(), Some(b'>' | b'*'));
                    if !leftover {
                        replies.push(frame);
                    }
                }
                Ok(None) => {
                    if self.read_buf.capacity() - self.read_buf.len() < 1024 {
                        self.read_buf.reserve(4096);
                    }
                    let n = self.stream.read_buf(&mut self.read_buf).await.map_err(io)?;
                    if n == 0 {
                        return Err(ConnectError::Io("connection closed by upstream".into()));
                    }
                }
                Err(e) => return Err(ConnectError::Io(format!("invalid reply: {e}").into())),
            }
        }
        Ok(replies)
    }
}

/// Opens the TCP connection to where the node is now and, for `rediss://`,
/// runs the TLS handshake (or connects to its Unix socket); the stream, the
/// generation of the address, and the address.
async fn connect(
    endpoint: &Endpoint,
    s: &PoolSettings,
) -> Result<(Stream, u64, Arc<str>), ConnectError> {
    let (addr, generation) = endpoint.node.locate_within(s.connect_timeout / 2).await?;
    if let Some(path) = unix_socket_path(&addr) {
        // Configuration refuses TLS here: the socket never leaves the host.
        let unix = UnixStream::connect(path)
            .await
            .map_err(|e| ConnectError::from_io(&e))?;
        return Ok((Stream::Unix(unix, addr.clone()), generation, addr));
    }
    let tcp = TcpStream::connect(&*addr)
        .await
        .map_err(|e| ConnectError::from_io(&e))?;
    configure_socket(&tcp, s.keepalive);
    let Some(tls) = &endpoint.node.tls else {
        return Ok((Stream::Tcp(tcp), generation, addr));
    };
    let server_name = if endpoint.node.tls_name_from_addr {
        crate::tls::server_name_of(&addr).map_err(|e| ConnectError::Tls(e.into()))?
    } else {
        tls.server_name.clone()
    };
    match tls.connector.connect(server_name, tcp).await {
        Ok(tls) => Ok((Stream::from(tls), generation, addr)),
        // rustls reports a failed verification as InvalidData with the
        // rustls error inside; anything else is the socket's own failure.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(ConnectError::Tls(e.to_string().into()))
        }
        Err(e) => Err(ConnectError::Tls(
            ConnectError::from_io(&e).to_string().into(),
        )),
    }
}

/// Sets TCP_NODELAY and keepalive; failures only cost latency, so they are logged.
pub(crate) fn configure_socket(stream: &TcpStream, keepalive: Option<Duration>) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    if let Some(idle) = keepalive {
        let ka = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(idle.min(Duration::from_secs(10)));
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
            tracing::debug!(error = %e, "could not set TCP keepalive");
        }
    }
}
