//! What Redis and Sentinel say about roles: `ROLE` of a primary or replica,
//! `SENTINEL MASTER <name>`, and the `+switch-master` event, read out of
//! their replies.

use std::time::Duration;

use crate::codec::{Request, Value};
use crate::error::ConnectError;
use crate::pool::connection::UpstreamConn;

/// Asks `conn` for its `ROLE`, within `timeout`: `None` when the answer is
/// not one respool reads.
pub(crate) async fn ask_role(
    conn: &mut UpstreamConn,
    timeout: Duration,
) -> Result<Option<Role>, ConnectError> {
    let replies = conn
        .exchange(&[Request::from_args(&["ROLE"])], "ROLE", timeout)
        .await?;
    Ok(replies.first().and_then(|r| parse_role(r)))
}

/// A primary's `ROLE`: its replication offset and its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrimaryRole {
    pub offset: u64,
    /// `host:port` of each replica, as the primary knows it.
    pub replicas: Vec<String>,
}

/// What `ROLE` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    Primary(PrimaryRole),
    /// A replica: whether its link to the primary is up, and how much of
    /// the replication stream it has processed.
    Replica {
        connected: bool,
        offset: u64,
    },
    /// `sentinel`, or anything else.
    Other(String),
}

/// Reads a `ROLE` reply; `None` if it is not one (an error, an ACL refusal).
pub(crate) fn parse_role(frame: &[u8]) -> Option<Role> {
    let mut items = Value::of_frame(frame).ok()?.elements()?;
    let kind = items.next()?.bytes()?;
    match kind {
        b"master" => {
            let offset = number(&items.next()?)?;
            let replicas = items
                .next()?
                .elements()?
                .filter_map(|r| {
                    let mut fields = r.elements()?;
                    let host = text(&fields.next()?)?;
                    let port = number(&fields.next()?)?;
                    Some(join(&host, port))
                })
                .collect();
            Some(Role::Primary(PrimaryRole { offset, replicas }))
        }
        b"slave" => {
            let _host = items.next()?;
            let _port = items.next()?;
            let state = items.next()?.bytes()?;
            let offset = items.next().and_then(|v| number(&v)).unwrap_or(0);
            Some(Role::Replica {
                connected: state == b"connected",
                offset,
            })
        }
        other => Some(Role::Other(String::from_utf8_lossy(other).into_owned())),
    }
}

/// The primary one Sentinel names, with the configuration epoch it was
/// named in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentinelView {
    pub addr: String,
    pub epoch: u64,
}

/// Reads a `SENTINEL MASTER <name>` reply (field/value pairs, RESP2 array
/// or RESP3 map); `None` without an address (an error: no such master).
pub(crate) fn parse_sentinel_master(frame: &[u8]) -> Option<SentinelView> {
    let mut fields = Value::of_frame(frame).ok()?.elements()?;
    let (mut ip, mut port, mut epoch) = (None, None, 0);
    while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
        match key.bytes()? {
            b"ip" => ip = text(&value),
            b"port" => port = number(&value),
            b"config-epoch" => epoch = number(&value).unwrap_or(0),
            _ => {}
        }
    }
    Some(SentinelView {
        addr: join(&ip?, port?),
        epoch,
    })
}

/// The new primary's `host:port` in a `+switch-master` event about
/// `master` (`<name> <old-ip> <old-port> <new-ip> <new-port>`).
pub(crate) fn switched_to(payload: &[u8], master: &str) -> Option<String> {
    let payload = std::str::from_utf8(payload).ok()?;
    let words: Vec<&str> = payload.split(' ').collect();
    match words[..] {
        [name, _, _, ip, port] if name == master => Some(join(ip, port.parse().ok()?)),
        _ => None,
    }
}

/// `host:port`, with brackets around an IPv6 host.
pub(crate) fn join(host: &str, port: u64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn text(v: &Value<'_>) -> Option<String> {
    Some(String::from_utf8_lossy(v.bytes()?).into_owned())
}

/// An integer reply, or a bulk string holding one.
fn number(v: &Value<'_>) -> Option<u64> {
    match v.int() {
        Some(n) => u64::try_from(n).ok(),
        None => std::str::from_utf8(v.bytes()?).ok()?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primarys_role_lists_its_replicas() {
        let frame = b"*3\r\n$6\r\nmaster\r\n:3129659\r\n*2\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n9001\r\n$7\r\n3129242\r\n*3\r\n$3\r\n::1\r\n$4\r\n9002\r\n$7\r\n3129543\r\n";
        assert_eq!(
            parse_role(frame),
            Some(Role::Primary(PrimaryRole {
                offset: 3_129_659,
                replicas: vec!["127.0.0.1:9001".into(), "[::1]:9002".into()],
            }))
        );
    }

    #[test]
    fn a_replicas_role_says_whether_it_is_connected() {
        let frame =
            b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:9000\r\n$9\r\nconnected\r\n:3167038\r\n";
        assert_eq!(
            parse_role(frame),
            Some(Role::Replica {
                connected: true,
                offset: 3_167_038
            })
        );
        let syncing = b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:9000\r\n$4\r\nsync\r\n:-1\r\n";
        assert_eq!(
            parse_role(syncing),
            Some(Role::Replica {
                connected: false,
                offset: 0
            })
        );
        assert_eq!(parse_role(b"-NOPERM no\r\n"), None);
    }

    #[test]
    fn sentinel_master_gives_address_and_epoch() {
        let frame = b"*8\r\n$4\r\nname\r\n$8\r\nmymaster\r\n$2\r\nip\r\n$8\r\n10.0.0.2\r\n$4\r\nport\r\n$4\r\n6380\r\n$12\r\nconfig-epoch\r\n$1\r\n7\r\n";
        assert_eq!(
            parse_sentinel_master(frame),
            Some(SentinelView {
                addr: "10.0.0.2:6380".into(),
                epoch: 7
            })
        );
        assert_eq!(
            parse_sentinel_master(b"-ERR No such master with that name\r\n"),
            None
        );
    }

    #[test]
    fn switch_master_events_name_the_new_primary() {
        assert_eq!(
            switched_to(b"mymaster 10.0.0.1 6379 10.0.0.2 6380", "mymaster").as_deref(),
            Some("10.0.0.2:6380")
        );
        assert_eq!(switched_to(b"other 1 2 3 4", "mymaster"), None);
    }
}
