//! The validation gate: a new upstream connection joins the pool only after
//! AUTH (as its endpoint's identity), SELECT, PING and a write probe all
//! succeed. The steps are pipelined (one round trip) and checked in order,
//! so the first failing step is the one reported.
//!
//! The write probe is a `SET` queued inside `MULTI` and then discarded.
//! Redis refuses a write while queueing it for every reason it would refuse
//! to run it — a read-only replica (`-READONLY`), memory full under
//! `noeviction` (`-OOM`), a failed background save (`-MISCONF`), too few
//! replicas (`-NOREPLICAS`), an ACL that denies the key (`-NOPERM`) — so the
//! probe proves the server takes writes without ever writing: no key
//! appears, nothing is replicated or counted towards a save point, and no
//! client tracking keys (`CLIENT TRACKING … BCAST`) or keyspace
//! notifications sees it.

use super::connection::UpstreamConn;
use super::endpoint::{Endpoint, Identity};
use crate::codec::{Request, Value};
use crate::config::{PoolSettings, Validate};
use crate::error::ConnectError;

/// What a step's reply must be.
enum Expect {
    /// `HELLO 3`: a RESP3 map.
    Hello,
    /// `INFO server`: a text carrying `redis_version:`.
    Info,
    /// `CLIENT ID`: the connection's id upstream.
    Id,
    Ok,
    Pong,
    /// A command accepted into a transaction.
    Queued,
}

/// The validation step that logs a RESP2 connection in.
pub(crate) const LOGIN_STEP: &str = "AUTH";
/// The validation step that logs a RESP3 connection in.
pub(crate) const HELLO_STEP: &str = "HELLO 3";

/// The request that logs a connection in as `identity`, speaking
/// `protocol`: `HELLO 3 [AUTH user pass]` for RESP3 (it switches and
/// authenticates in one step), `AUTH [user] pass` for RESP2, nothing for
/// the `default` user without a password on RESP2.
pub(crate) fn login(identity: &Identity, protocol: u8) -> Option<(&'static str, Request)> {
    let user = identity.username.as_deref();
    let password = identity.password.as_ref().map(|p| p.expose());
    match (protocol, password) {
        (3, Some(password)) => Some((
            HELLO_STEP,
            Request::from_args(&["HELLO", "3", "AUTH", user.unwrap_or("default"), password]),
        )),
        (3, None) => Some((HELLO_STEP, Request::from_args(&["HELLO", "3"]))),
        (_, Some(password)) => Some((
            LOGIN_STEP,
            match user {
                Some(user) => Request::from_args(&["AUTH", user, password]),
                None => Request::from_args(&["AUTH", password]),
            },
        )),
        (_, None) => None,
    }
}

/// Runs the gate on a freshly connected `conn`; the server's version, if
/// its `INFO` gave one. It also notes the connection's id upstream.
pub(crate) async fn run_gate(
    conn: &mut UpstreamConn,
    endpoint: &Endpoint,
    protocol: u8,
    s: &PoolSettings,
) -> Result<Option<String>, ConnectError> {
    let mut steps: Vec<(&'static str, Request, Expect)> = Vec::new();
    if let Some((step, request)) = login(&endpoint.identity, protocol) {
        let expect = if protocol == 3 {
            Expect::Hello
        } else {
            Expect::Ok
        };
        steps.push((step, request, expect));
    }
    if endpoint.db != 0 {
        steps.push((
            "SELECT",
            Request::from_args(&["SELECT".to_string(), endpoint.db.to_string()]),
            Expect::Ok,
        ));
    }
    if s.validate != Validate::Off {
        steps.push(("PING", Request::from_args(&["PING"]), Expect::Pong));
    }
    if s.validate == Validate::Write {
        let key = match &endpoint.probe_slot {
            Some(slot) => format!(
                "{}:{}:{}",
                s.probe_prefix,
                crate::router::slot::tag_for(slot.load(std::sync::atomic::Ordering::Relaxed)),
                std::process::id()
            ),
            None => format!("{}:{}", s.probe_prefix, std::process::id()),
        };
        steps.push(("probe MULTI", Request::from_args(&["MULTI"]), Expect::Ok));
        steps.push((
            "probe SET",
            Request::from_args(&["SET", &key, "1"]),
            Expect::Queued,
        ));
        steps.push((
            "probe DISCARD",
            Request::from_args(&["DISCARD"]),
            Expect::Ok,
        ));
    }
    // The server version, for the HELLO reply respool gives its clients
    // (never fails the gate).
    steps.push((
        "INFO server",
        Request::from_args(&["INFO", "server"]),
        Expect::Info,
    ));
    // The connection's id upstream, so that CLIENT UNBLOCK and CLIENT
    // TRACKING … REDIRECT can name it (never fails the gate either).
    steps.push((
        "CLIENT ID",
        Request::from_args(&["CLIENT", "ID"]),
        Expect::Id,
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
        match expect {
            Expect::Info => version = redis_version(reply),
            Expect::Id => {
                conn.upstream_id = Value::of_frame(reply)
                    .ok()
                    .and_then(|v| v.int())
                    .and_then(|id| u64::try_from(id).ok())
            }
            _ => {}
        }
    }
    Ok(version)
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
    let value = Value::of_frame(reply).map_err(|_| unexpected(step, reply))?;
    let ok = match (&value, expect) {
        // The version and the id are nice to have; an ACL that forbids INFO
        // or CLIENT is no reason to distrust the connection.
        (_, Expect::Info | Expect::Id) => true,
        // A user whose ACL forbids PING is still logged in: the connection
        // works, for what that user may run.
        (Value::Error(e), Expect::Pong) if e.starts_with(b"NOPERM") => true,
        (Value::Error(e), _) => {
            return Err(ConnectError::Rejected {
                step,
                reply: String::from_utf8_lossy(e).into(),
            })
        }
        (Value::Map(_), Expect::Hello) => true,
        (Value::Simple(s), Expect::Ok) => s == b"OK",
        (Value::Simple(s), Expect::Pong) => s == b"PONG",
        (Value::Simple(s), Expect::Queued) => s == b"QUEUED",
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
        let e = check("probe SET", &Expect::Queued, b"+OK\r\n").unwrap_err();
        assert!(matches!(
            e,
            ConnectError::Unexpected {
                step: "probe SET",
                ..
            }
        ));
        assert!(check("probe SET", &Expect::Queued, b"+QUEUED\r\n").is_ok());
        let e = check(
            "probe SET",
            &Expect::Queued,
            b"-READONLY You can't write against a read only replica.\r\n",
        )
        .unwrap_err();
        assert_eq!(e.reply_code(), Some("READONLY"));
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
