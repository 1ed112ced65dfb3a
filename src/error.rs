//! One error type for everything a client can be told about.
//!
//! Every variant knows where the failure came from and renders itself as the
//! Redis-style error line the client receives, saying what happened and, where
//! it helps, what to do.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::ProtocolError;

/// A failure that ends one client request (or one client connection).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No upstream connection could be had before the request's checkout
    /// deadline; nothing was sent.
    #[error("upstream {addr} unavailable: {cause} (retried {attempts} {} over {})", if *attempts == 1 { "time" } else { "times" }, Secs(*elapsed))]
    Unavailable {
        /// The upstream address (never with credentials).
        addr: Arc<str>,
        /// Why the last connection attempt failed.
        cause: Arc<str>,
        /// Connection attempts made during this outage.
        attempts: u32,
        /// How long the upstream has been unavailable.
        elapsed: Duration,
    },
    /// `HELLO` waited for a first validated upstream connection, whose
    /// server version its reply carries, and none came in time.
    #[error("upstream {addr} unavailable: no connection validated within {} (HELLO answers with the server's version; retry once Redis is up)", Secs(*waited))]
    NoHealth {
        /// The upstream address.
        addr: Arc<str>,
        /// How long the client waited.
        waited: Duration,
    },
    /// The connection broke after the request was written; the command is not
    /// safe to run again, so its outcome is unknown.
    #[error("upstream connection lost; the command may or may not have executed")]
    LostAfterWrite,
    /// A pinned session's upstream moved (a failover, or a reload that
    /// changed `--upstream`'s address): its transaction, WATCH,
    /// subscription or blocking command stayed on the old one.
    #[error("the primary moved (a failover, or a reload of --upstream; now: {to}); this connection's transaction, WATCH, subscription or blocking command was on the old one and is gone, and a command in flight may or may not have executed: reconnect and start it again")]
    PrimaryMoved {
        /// The new primary's address.
        to: Arc<str>,
    },
    /// A read-only command was resent after each connection loss until the
    /// retries ran out.
    #[error("upstream {addr} connection lost {attempts} times while running the command; giving up (see --retries)")]
    RetriesExhausted {
        /// The upstream address.
        addr: Arc<str>,
        /// Connection losses seen by the request.
        attempts: u32,
    },
    /// No reply arrived within the request deadline; the connection was closed.
    #[error("upstream {addr} timed out after {}; the command may or may not have executed", Secs(*after))]
    Timeout {
        /// The upstream address.
        addr: Arc<str>,
        /// The deadline that passed.
        after: Duration,
    },
    /// The request waited for an upstream connection (or for the upstream to
    /// finish loading) past its deadline and was never sent.
    #[error("upstream {addr} did not take the request within {}; it was not executed", Secs(*after))]
    NotSent {
        /// The upstream address.
        addr: Arc<str>,
        /// How long it waited.
        after: Duration,
    },
    /// The upstream sent bytes that are not RESP; its connection was closed.
    #[error("upstream {addr} sent an invalid reply ({detail}); the command may or may not have executed")]
    UpstreamProtocol {
        /// The upstream address.
        addr: Arc<str>,
        /// What was wrong with the reply.
        detail: Arc<str>,
    },
    /// The client sent something that is not a valid request.
    #[error("Protocol error: {0}")]
    ClientProtocol(#[from] crate::codec::ProtocolError),
    /// The client started a request and did not finish sending it within
    /// `--request-read-timeout`; its connection is closed.
    #[error("Protocol error: request not completed within {}", Secs(*.0))]
    RequestIncomplete(Duration),
    /// No dedicated connection could be had for a client entering connection
    /// state (MULTI, WATCH, a blocking command, SUBSCRIBE, SELECT …).
    #[error("no dedicated upstream connection to {addr} within {}: {cause}", Secs(*waited))]
    NoDedicatedConnection {
        /// The upstream address.
        addr: Arc<str>,
        /// Why: the last connect error, or that all are in use.
        cause: Arc<str>,
        /// How long the client waited.
        waited: Duration,
    },
    /// A client logged in as an identity while `--max-identities` others
    /// had lanes open, every one of them in use.
    #[error("too many identities in use through respool (--max-identities {0}); retry later, or raise --max-identities")]
    TooManyIdentities(usize),
    /// A client's login could not be checked: no connection as that
    /// identity got through the validation gate in time.
    #[error("upstream {addr} unavailable: no connection as this user got through within {}, so the login could not be checked; retry once Redis is up", Secs(*waited))]
    LoginUnchecked {
        /// The upstream address.
        addr: Arc<str>,
        /// How long the client waited.
        waited: Duration,
    },
    /// The command is disabled by proxy policy.
    #[error("command '{0}' is disabled on this proxy")]
    Denied(Arc<str>),
    /// The proxy is shutting down and no longer takes requests.
    #[error("respool is shutting down")]
    ShuttingDown,
    /// In front of a Redis Cluster: a command respool cannot route to the
    /// right node(s) yet.
    #[error("{0} is not supported in cluster mode yet: {1}")]
    NotInCluster(Arc<str>, &'static str),
    /// In front of a Redis Cluster, before the first slot map.
    #[error("respool does not know the cluster's slot map yet ({0}); retry shortly")]
    NoSlotMap(Arc<str>),
}

impl Error {
    /// The reply line a client receives, `-ERR …\r\n`.
    pub fn to_resp(&self) -> Bytes {
        if let Error::ClientProtocol(ProtocolError::ExpectedBulk(got)) = self {
            // Redis echoes the offending byte as it came, UTF-8 or not;
            // `got` holds it as the char of the same value (U+0000..U+00FF).
            let got = match *got as u8 {
                b'\r' | b'\n' => b' ',
                byte => byte,
            };
            let mut line = BytesMut::from(&b"-ERR Protocol error: expected '$', got '"[..]);
            line.put_u8(got);
            line.put_slice(b"'\r\n");
            return line.freeze();
        }
        match self {
            // Redis Cluster's own code, so clients treat it as they would.
            Error::NoSlotMap(_) => error_line("CLUSTERDOWN", &self.to_string()),
            _ => error_line("ERR", &self.to_string()),
        }
    }
}

/// Why an upstream connection could not be opened or was not trusted: the
/// cause inside [`Error::Unavailable`] and [`Error::NoDedicatedConnection`].
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
    pub(crate) fn from_io(e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectError::Refused,
            _ => ConnectError::Io(e.to_string().into()),
        }
    }

    /// Whether Redis refused the login itself (a wrong password, a disabled
    /// user), as opposed to the server being unreachable or unwell.
    pub(crate) fn is_login_refusal(&self) -> bool {
        matches!(
            self,
            ConnectError::Rejected {
                step: crate::pool::validate::LOGIN_STEP | crate::pool::validate::HELLO_STEP,
                ..
            }
        )
    }

    /// The Redis error code of a rejected step (`LOADING`, `READONLY`, …).
    pub fn reply_code(&self) -> Option<&str> {
        match self {
            ConnectError::Rejected { reply, .. } => reply.split_whitespace().next(),
            _ => None,
        }
    }
}

/// Renders `-CODE message\r\n`, with CR/LF in the message replaced so that the
/// line can never be mistaken for more than one frame.
pub fn error_line(code: &str, message: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(code.len() + message.len() + 4);
    out.put_u8(b'-');
    out.put_slice(code.as_bytes());
    out.put_u8(b' ');
    for b in message.bytes() {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// Renders Redis's own error `line` (without its leading `-`) as the reply
/// it was, for a client that gets Redis's word (a refused login).
pub(crate) fn error_reply(line: &str) -> Bytes {
    let (code, message) = line.split_once(' ').unwrap_or((line, ""));
    error_line(code, message)
}

/// Formats a duration the way operators read it: `250ms`, `3.1s`.
pub struct Secs(pub Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d < Duration::from_secs(1) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{:.1}s", d.as_secs_f64())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_reads_like_an_operator_message() {
        let e = Error::Unavailable {
            addr: "127.0.0.1:6379".into(),
            cause: "connection refused".into(),
            attempts: 5,
            elapsed: Duration::from_millis(3100),
        };
        assert_eq!(
            &e.to_resp()[..],
            b"-ERR upstream 127.0.0.1:6379 unavailable: connection refused (retried 5 times over 3.1s)\r\n"
        );
    }

    #[test]
    fn unexpected_bytes_are_echoed_raw_as_redis_does() {
        let e = Error::ClientProtocol(ProtocolError::ExpectedBulk(0xfe as char));
        assert_eq!(
            &e.to_resp()[..],
            b"-ERR Protocol error: expected '$', got '\xfe'\r\n"
        );
        let e = Error::ClientProtocol(ProtocolError::ExpectedBulk('*'));
        assert_eq!(
            &e.to_resp()[..],
            b"-ERR Protocol error: expected '$', got '*'\r\n"
        );
    }

    #[test]
    fn error_lines_never_contain_line_breaks() {
        let line = error_line("ERR", "a\r\nb");
        assert_eq!(&line[..], b"-ERR a  b\r\n");
    }
}
