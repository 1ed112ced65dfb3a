//! One upstream connection: connect with a deadline, TCP options, and a
//! helper for the few request/reply exchanges respool makes on its own
//! account (the validation gate, health checks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use crate::codec::{ReplyDecoder, Request};
use crate::config::{Config, Secret, Validate};
use crate::error::Secs;
use crate::net::Stream;
use crate::stats::LoopStats;
use crate::tls::UpstreamTls;

/// Everything needed to open and validate an upstream connection.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// `host:port`.
    pub addr: Arc<str>,
    /// ACL user.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// Database to SELECT.
    pub db: u32,
    /// TCP connect deadline.
    pub connect_timeout: Duration,
    /// Deadline for each exchange on the connection.
    pub timeout: Duration,
    /// TCP keepalive idle time.
    pub keepalive: Option<Duration>,
    /// Validation level.
    pub validate: Validate,
    /// Probe key prefix.
    pub probe_prefix: String,
    /// Probe key TTL.
    pub probe_ttl: Duration,
    /// Initial read buffer capacity.
    pub read_buffer_size: usize,
    /// Idle time after which a pooled connection is PINGed before reuse.
    pub health_check_interval: Option<Duration>,
    /// RESP version the connection speaks (2, or 3 after `HELLO 3`).
    pub protocol: u8,
    /// The upstream's version, learned during validation.
    pub server_version: ServerVersion,
    /// TLS (`rediss://`), or plain TCP.
    pub tls: Option<UpstreamTls>,
    /// The event loop's counters (connections validated or failed).
    pub stats: Arc<LoopStats>,
}

/// The upstream server's version (`INFO server`), shared by every pool, and
/// whether any connection has passed validation yet.
#[derive(Debug, Clone, Default)]
pub struct ServerVersion(Arc<VersionCell>);

#[derive(Debug, Default)]
struct VersionCell {
    version: std::sync::RwLock<Option<Arc<str>>>,
    validated: std::sync::atomic::AtomicBool,
    /// Woken when the first connection passes validation.
    first_validated: tokio::sync::Notify,
}

impl ServerVersion {
    /// Records a connection that passed validation, with the version its
    /// `INFO server` gave (`None` if an ACL forbids `INFO`).
    pub fn validated(&self, version: Option<String>) {
        if let Some(version) = version {
            if let Ok(mut v) = self.0.version.write() {
                if v.as_deref() != Some(version.as_str()) {
                    *v = Some(version.into());
                }
            }
        }
        if !self
            .0
            .validated
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.0.first_validated.notify_waiters();
        }
    }

    /// The last version seen, if any connection was validated yet.
    pub fn get(&self) -> Option<Arc<str>> {
        self.0.version.read().ok().and_then(|v| v.clone())
    }

    /// Whether any connection has passed validation: only then is the
    /// version as known as it will be.
    pub fn is_validated(&self) -> bool {
        self.0.validated.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once a connection has passed validation (`true`), or after
    /// `within` without one (`false`).
    pub fn wait_validated(
        &self,
        within: Duration,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let this = self.clone();
        async move {
            let validated = async {
                loop {
                    // Registered before the check, so a validation in
                    // between still wakes it.
                    let notified = this.0.first_validated.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if this.is_validated() {
                        return;
                    }
                    notified.await;
                }
            };
            tokio::time::timeout(within, validated).await.is_ok()
        }
    }
}

impl UpstreamSettings {
    /// Picks the upstream settings out of the configuration.
    pub fn from_config(c: &Config) -> Self {
        UpstreamSettings {
            addr: c.upstream.addr.clone(),
            username: c.upstream.username.clone(),
            password: c.upstream.password.clone(),
            db: c.upstream.db,
            connect_timeout: c.connect_timeout,
            timeout: c.timeout,
            keepalive: c.keepalive,
            validate: c.validate,
            probe_prefix: c.probe_prefix.clone(),
            probe_ttl: c.probe_ttl,
            read_buffer_size: c.read_buffer_size,
            health_check_interval: c.health_check_interval,
            protocol: 2,
            server_version: ServerVersion::default(),
            tls: c.upstream_tls.clone(),
            // Counted nowhere unless the pool that owns it says otherwise.
            stats: Arc::default(),
        }
    }
}

/// Why an upstream connection could not be opened or was not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Nothing listens at the address.
    #[error("connection refused")]
    Refused,
    /// TCP connect did not complete in time.
    #[error("connect timed out after {}", Secs(*.0))]
    ConnectTimeout(Duration),
    /// Another socket error.
    #[error("{0}")]
    Io(Arc<str>),
    /// The TLS handshake failed (certificate not trusted, wrong name, the
    /// server wants a client certificate, …).
    #[error("TLS handshake failed: {0}")]
    Tls(Arc<str>),
    /// Redis answered a validation step with an error (`-LOADING`, `-READONLY`,
    /// `-NOAUTH`, `-WRONGPASS`, `-OOM`, …).
    #[error("{step} rejected: {reply}")]
    Rejected {
        /// The step: AUTH, SELECT, PING, probe SET/GET/DEL.
        step: &'static str,
        /// Redis's error line, without the leading '-'.
        reply: Arc<str>,
    },
    /// Redis answered a validation step with something unexpected.
    #[error("{step} returned an unexpected reply: {reply}")]
    Unexpected {
        /// The step.
        step: &'static str,
        /// The reply, shortened.
        reply: Arc<str>,
    },
    /// A validation step got no reply in time.
    #[error("{step} got no reply within {}", Secs(*after))]
    StepTimeout {
        /// The step.
        step: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// No connection became available before the checkout deadline.
    #[error("no connection available within {}", Secs(*.0))]
    CheckoutTimeout(Duration),
}

impl ConnectError {
    fn from_io(e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectError::Refused,
            _ => ConnectError::Io(e.to_string().into()),
        }
    }

    /// The Redis error code of a rejected step (`LOADING`, `READONLY`, …).
    pub fn reply_code(&self) -> Option<&str> {
        match self {
            ConnectError::Rejected { reply, .. } => reply.split_whitespace().next(),
            _ => None,
        }
    }
}

/// An open upstream connection.
#[derive(Debug)]
pub struct UpstreamConn {
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
}

impl UpstreamConn {
    /// Connects (with deadline, nodelay, keepalive) and runs the validation
    /// gate. A connection that fails any step is closed, never returned.
    /// With TLS, the handshake shares the connect deadline.
    pub async fn open(s: &UpstreamSettings) -> Result<UpstreamConn, ConnectError> {
        let stream = match tokio::time::timeout(s.connect_timeout, connect(s)).await {
            Err(_) => return Err(ConnectError::ConnectTimeout(s.connect_timeout)),
            Ok(result) => result?,
        };
        let mut conn = UpstreamConn {
            stream,
            read_buf: BytesMut::with_capacity(s.read_buffer_size),
            broken: false,
            last_used: Instant::now(),
        };
        crate::pool::validate::run_gate(&mut conn, s).await?;
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
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| ConnectError::from_io(&e))?;
        let mut decoder = ReplyDecoder::default();
        let mut replies = Vec::with_capacity(requests.len());
        while replies.len() < requests.len() {
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
                    let n = self
                        .stream
                        .read_buf(&mut self.read_buf)
                        .await
                        .map_err(|e| ConnectError::from_io(&e))?;
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

/// Opens the TCP connection and, for `rediss://`, runs the TLS handshake.
async fn connect(s: &UpstreamSettings) -> Result<Stream, ConnectError> {
    let tcp = TcpStream::connect(&*s.addr)
        .await
        .map_err(|e| ConnectError::from_io(&e))?;
    configure_socket(&tcp, s.keepalive);
    let Some(tls) = &s.tls else {
        return Ok(Stream::Tcp(tcp));
    };
    match tls.connector.connect(tls.server_name.clone(), tcp).await {
        Ok(tls) => Ok(Stream::from(tls)),
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
pub fn configure_socket(stream: &TcpStream, keepalive: Option<Duration>) {
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
