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
    if let Some(password) = &s.password {
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
    if steps.is_empty() {
        return Ok(());
    }
    let requests: Vec<Request> = steps.iter().map(|(_, r, _)| r.clone()).collect();
    let replies = conn.exchange(&requests, "validation", s.timeout).await?;
    for ((step, _, expect), reply) in steps.iter().zip(&replies) {
        if let Err(e) = check(step, expect, reply) {
            conn.broken = true;
            return Err(e);
        }
    }
    Ok(())
}

fn check(step: &'static str, expect: &Expect, reply: &[u8]) -> Result<(), ConnectError> {
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
    }
}
