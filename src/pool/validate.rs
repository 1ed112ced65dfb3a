//! The validation gate: a new upstream connection joins the pool only after
//! AUTH, SELECT, PING and a write/read probe on a unique, short-lived key all
//! succeed. The steps are pipelined (one round trip) and checked in order, so
//! the first failing step is the one reported.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;

use crate::codec::Request;
use crate::config::Validate;
use crate::upstream::{ConnectError, UpstreamConn, UpstreamSettings};

/// What a step's reply must be.
enum Expect {
    /// `HELLO 3`: a RESP3 map.
    Hello,
    /// `INFO server`: a text carrying `redis_version:`.
    Info,
    Ok,
    Pong,
    Bulk(Bytes),
    Int(i64),
}

/// A probe key unique to one validation attempt, so concurrent validations
/// (many lanes, many proxies) never read each other's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeKey(String);

impl ProbeKey {
    /// `<prefix>:<pid>:<attempt counter>:<random>`.
    pub fn new(prefix: &str) -> ProbeKey {
        static ATTEMPTS: AtomicU64 = AtomicU64::new(0);
        let n = ATTEMPTS.fetch_add(1, Ordering::Relaxed);
        ProbeKey(format!(
            "{prefix}:{}:{n}:{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Runs the gate on a freshly connected `conn`.
pub(crate) async fn run_gate(
    conn: &mut UpstreamConn,
    s: &UpstreamSettings,
) -> Result<(), ConnectError> {
    let mut steps: Vec<(&'static str, Request, Expect)> = Vec::new();
    if s.protocol == 3 {
        // HELLO switches the protocol and authenticates in one step.
        let hello = match &s.password {
            Some(password) => Request::from_args(&[
                "HELLO",
                "3",
                "AUTH",
                s.username.as_deref().unwrap_or("default"),
                password.expose(),
            ]),
            None => Request::from_args(&["HELLO", "3"]),
        };
        steps.push(("HELLO 3", hello, Expect::Hello));
    } else if let Some(password) = &s.password {
        let auth = match &s.username {
            Some(user) => Request::from_args(&["AUTH", user.as_str(), password.expose()]),
            None => Request::from_args(&["AUTH", password.expose()]),
        };
        steps.push(("AUTH", auth, Expect::Ok));
    }
    if s.db != 0 {
        steps.push((
            "SELECT",
            Request::from_args(&["SELECT".to_string(), s.db.to_string()]),
            Expect::Ok,
        ));
    }
    if s.validate != Validate::Off {
        steps.push(("PING", Request::from_args(&["PING"]), Expect::Pong));
    }
    if s.validate == Validate::Write {
        let key = ProbeKey::new(&s.probe_prefix);
        let value = format!("{:032x}", rand::random::<u128>());
        let ttl = s.probe_ttl.as_secs().max(1).to_string();
        steps.push((
            "probe SET",
            Request::from_args(&["SET", key.as_str(), &value, "EX", &ttl]),
            Expect::Ok,
        ));
        steps.push((
            "probe GET",
            Request::from_args(&["GET", key.as_str()]),
            Expect::Bulk(Bytes::from(value)),
        ));
        steps.push((
            "probe DEL",
            Request::from_args(&["DEL", key.as_str()]),
            Expect::Int(1),
        ));
    }
    // The server version, for the HELLO reply respool gives its clients
    // (never fails the gate).
    steps.push((
        "INFO server",
        Request::from_args(&["INFO", "server"]),
        Expect::Info,
    ));
    let requests: Vec<Request> = steps.iter().map(|(_, r, _)| r.clone()).collect();
    let replies = conn
        .exchange(&requests, "validation", s.connect_timeout)
        .await?;
    let mut version = None;
    for ((step, _, expect), reply) in steps.iter().zip(&replies) {
        if let Err(e) = check(step, expect, reply) {
            conn.broken = true;
            return Err(e);
        }
        if let Expect::Info = expect {
            version = redis_version(reply);
        }
    }
    s.server_version.validated(version);
    Ok(())
}

/// `redis_version:7.0.15` out of an INFO reply.
fn redis_version(info: &[u8]) -> Option<String> {
    let at = memchr::memmem::find(info, b"redis_version:")? + b"redis_version:".len();
    let rest = &info[at..];
    let end = rest
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok().map(str::to_owned)
}

fn check(step: &'static str, expect: &Expect, reply: &[u8]) -> Result<(), ConnectError> {
    // RESP3 and text replies are checked by shape; redis-protocol's RESP2
    // decoder handles the rest.
    match expect {
        Expect::Hello if reply.first() == Some(&b'%') => return Ok(()),
        Expect::Hello if reply.first() != Some(&b'-') => return Err(unexpected(step, reply)),
        // The version is nice to have; an ACL that forbids INFO is no reason
        // to distrust the connection.
        Expect::Info => return Ok(()),
        _ => {}
    }
    // The reply was framed and depth-checked by ReplyDecoder; only now is it
    // handed to redis-protocol for typed decoding.
    let frame = match decode(reply) {
        Ok(Some((frame, _))) => frame,
        _ => return Err(unexpected(step, reply)),
    };
    let ok = match (&frame, expect) {
        (OwnedFrame::Error(e), _) => {
            return Err(ConnectError::Rejected {
                step,
                reply: e.as_str().into(),
            })
        }
        (OwnedFrame::SimpleString(s), Expect::Ok) => s == b"OK",
        (OwnedFrame::SimpleString(s), Expect::Pong) => s == b"PONG",
        (OwnedFrame::BulkString(b), Expect::Bulk(want)) => b[..] == want[..],
        (OwnedFrame::Integer(i), Expect::Int(want)) => i == want,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(unexpected(step, reply))
    }
}

fn unexpected(step: &'static str, reply: &[u8]) -> ConnectError {
    let shown = String::from_utf8_lossy(&reply[..reply.len().min(80)]).replace("\r\n", " ");
    ConnectError::Unexpected {
        step,
        reply: shown.trim_end().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_keys_are_unique() {
        let a = ProbeKey::new("respool:probe");
        let b = ProbeKey::new("respool:probe");
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("respool:probe:"));
    }

    #[test]
    fn rejections_are_precise() {
        let e = check(
            "PING",
            &Expect::Pong,
            b"-LOADING Redis is loading the dataset in memory\r\n",
        )
        .unwrap_err();
        assert_eq!(e.reply_code(), Some("LOADING"));
        assert_eq!(
            e.to_string(),
            "PING rejected: LOADING Redis is loading the dataset in memory"
        );
        let e = check(
            "probe GET",
            &Expect::Bulk(Bytes::from_static(b"x")),
            b"$1\r\ny\r\n",
        )
        .unwrap_err();
        assert!(matches!(
            e,
            ConnectError::Unexpected {
                step: "probe GET",
                ..
            }
        ));
        assert!(check("probe DEL", &Expect::Int(1), b":1\r\n").is_ok());
        assert!(check("HELLO 3", &Expect::Hello, b"%1\r\n+a\r\n+b\r\n").is_ok());
        let e = check(
            "HELLO 3",
            &Expect::Hello,
            b"-WRONGPASS invalid username-password pair\r\n",
        )
        .unwrap_err();
        assert_eq!(e.reply_code(), Some("WRONGPASS"));
    }

    #[test]
    fn server_version_is_read_from_info() {
        let info = b"$40\r\n# Server\r\nredis_version:7.0.15\r\nredis_mode:x\r\n";
        assert_eq!(redis_version(info).as_deref(), Some("7.0.15"));
    }
}
