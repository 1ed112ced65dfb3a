//! `CLIENT LIST | INFO | KILL | UNBLOCK | PAUSE | UNPAUSE` and `CLIENT
//! TRACKING … REDIRECT`, answered in respool's terms: the ids, names and
//! addresses a client sees through respool are respool's own (see
//! [`super::roster`]), so these act on respool's clients; where Redis must
//! act (unblocking a pinned connection, redirecting invalidations to one),
//! the id is translated to that connection's id upstream.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::inbox::ReplyInbox;
use super::roster::ReplyMemory;
use crate::codec::Value;
use crate::pool::lane::LaneRequest;

use super::roster::{ClientKind, KillFilter, Pause};
use super::{local, Client, Wait};
use crate::codec::Request;
use crate::command::{ClientCommand, Command};
use crate::error::error_line;

impl Client {
    /// The CLIENT subcommands respool answers itself.
    pub(super) fn client_command(&mut self, which: ClientCommand, req: Request) {
        let reply = match which {
            ClientCommand::List => self.client_list(&req),
            ClientCommand::Info => Ok(self.text_reply(self.member_line("client|info", &req))),
            ClientCommand::Kill => self.client_kill(&req),
            ClientCommand::Pause => self.client_pause(&req),
            ClientCommand::Unpause => {
                self.shared.process.roster.unpause();
                Ok(Bytes::from_static(b"+OK\r\n"))
            }
            ClientCommand::Unblock => match self.client_unblock(&req) {
                Ok(Some(forward)) => return self.forward(forward, false),
                Ok(None) => Ok(Bytes::from_static(b":0\r\n")),
                Err(reply) => Err(reply),
            },
        };
        self.output.push_ready(reply.unwrap_or_else(|e| e));
    }

    /// This client's `CLIENT LIST` line, with `cmd` as the command it runs.
    fn member_line(&self, cmd: &str, req: &Request) -> String {
        format!("{}\n", self.member.line(Some((cmd, req.raw().len()))))
    }

    /// Text as Redis sends it: a verbatim string in RESP3, bulk in RESP2.
    fn text_reply(&self, text: String) -> Bytes {
        if self.protocol == 3 {
            let mut out = format!("={}\r\ntxt:", text.len() + 4).into_bytes();
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
            Bytes::from(out)
        } else {
            local::bulk(text.as_bytes())
        }
    }

    /// `CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id …]`.
    fn client_list(&self, req: &Request) -> Result<Bytes, Bytes> {
        let args: Vec<&[u8]> = req.args().skip(2).collect();
        let mut kind = None;
        let mut ids: Option<Vec<u64>> = None;
        match args.first().map(|a| a.to_ascii_uppercase()).as_deref() {
            None => {}
            Some(b"TYPE") if args.len() == 2 => kind = Some(client_kind(args[1])?),
            Some(b"ID") if args.len() >= 2 => {
                let parsed: Option<Vec<u64>> = args[1..]
                    .iter()
                    .map(|a| parse_u64(a).filter(|&id| id > 0))
                    .collect();
                ids = Some(parsed.ok_or_else(|| error_line("ERR", "Invalid client ID"))?);
            }
            Some(_) => return Err(error_line("ERR", "syntax error")),
        }
        let mut text = String::new();
        for member in self.shared.process.roster.all() {
            if ids.as_ref().is_some_and(|ids| !ids.contains(&member.id)) {
                continue;
            }
            let subscribed = member.published().subscriptions.iter().any(|&n| n > 0);
            match kind {
                Some(ClientKind::Replication) => continue,
                Some(ClientKind::Pubsub) if !subscribed => continue,
                Some(ClientKind::Normal) if subscribed => continue,
                _ => {}
            }
            if member.id == self.id {
                text.push_str(&self.member_line("client|list", req));
            } else {
                text.push_str(&member.line(None));
                text.push('\n');
            }
        }
        Ok(self.text_reply(text))
    }

    /// `CLIENT KILL ip:port` or `CLIENT KILL <filter> <value> …`.
    fn client_kill(&mut self, req: &Request) -> Result<Bytes, Bytes> {
        let args: Vec<&[u8]> = req.args().skip(2).collect();
        let roster = &self.shared.process.roster;
        if let [addr] = args[..] {
            // The old form: one client by address, +OK or an error.
            let filter = KillFilter {
                addr: Some(String::from_utf8_lossy(addr).into_owned()),
                ..KillFilter::default()
            };
            let (killed, me) = roster.kill(&filter, self.id);
            if me {
                self.stop_reading();
            }
            return if killed > 0 {
                Ok(Bytes::from_static(b"+OK\r\n"))
            } else {
                Err(error_line("ERR", "No such client"))
            };
        }
        if args.is_empty() {
            return Err(error_line(
                "ERR",
                "wrong number of arguments for 'client|kill' command",
            ));
        }
        if args.len() % 2 != 0 {
            return Err(error_line("ERR", "syntax error"));
        }
        let mut filter = KillFilter {
            skip_me: true,
            ..KillFilter::default()
        };
        for pair in args.chunks(2) {
            let value = String::from_utf8_lossy(pair[1]).into_owned();
            match pair[0].to_ascii_uppercase().as_slice() {
                b"ID" => {
                    let id = parse_u64(pair[1])
                        .filter(|&id| id > 0)
                        .ok_or_else(|| error_line("ERR", "client-id should be greater than 0"))?;
                    filter.id = Some(id);
                }
                b"TYPE" => filter.kind = Some(client_kind(pair[1])?),
                b"USER" => {
                    if !roster.knows_user(&value) {
                        return Err(error_line("ERR", &format!("No such user '{value}'")));
                    }
                    filter.user = Some(value);
                }
                b"ADDR" => filter.addr = Some(value),
                b"LADDR" => filter.laddr = Some(value),
                b"SKIPME" => {
                    filter.skip_me = match value.to_ascii_lowercase().as_str() {
                        "yes" => true,
                        "no" => false,
                        _ => return Err(error_line("ERR", "syntax error")),
                    }
                }
                b"MAXAGE" => {
                    let secs =
                        parse_u64(pair[1]).ok_or_else(|| error_line("ERR", "syntax error"))?;
                    filter.max_age = Some(Duration::from_secs(secs));
                }
                _ => return Err(error_line("ERR", "syntax error")),
            }
        }
        let (killed, me) = roster.kill(&filter, self.id);
        if me {
            // Answered first, then closed, as Redis does.
            self.stop_reading();
        }
        Ok(Bytes::from(format!(":{killed}\r\n")))
    }

    /// `CLIENT PAUSE timeout [WRITE|ALL]`: respool holds the requests it
    /// would forward (writes only, for WRITE) until the pause ends.
    fn client_pause(&self, req: &Request) -> Result<Bytes, Bytes> {
        let Some(millis) = req.arg(2) else {
            return Err(error_line(
                "ERR",
                "wrong number of arguments for 'client|pause' command",
            ));
        };
        let millis = parse_u64(millis)
            .ok_or_else(|| error_line("ERR", "timeout is not an integer or out of range"))?;
        let writes_only = match req.arg(3).map(|m| m.to_ascii_uppercase()).as_deref() {
            None | Some(b"ALL") => false,
            Some(b"WRITE") => true,
            Some(_) => return Err(error_line("ERR", "syntax error")),
        };
        if req.argc() > 4 {
            return Err(error_line("ERR", "syntax error"));
        }
        self.shared.process.roster.pause(Pause {
            until: Instant::now() + Duration::from_millis(millis),
            writes_only,
        });
        Ok(Bytes::from_static(b"+OK\r\n"))
    }

    /// `CLIENT UNBLOCK id [TIMEOUT|ERROR]`: the request to send upstream
    /// for a client blocked on its pinned connection; `None` (answered
    /// `:0`) when the id names no such client.
    fn client_unblock(&self, req: &Request) -> Result<Option<Request>, Bytes> {
        let id = req
            .arg(2)
            .and_then(parse_u64)
            .ok_or_else(|| error_line("ERR", "value is not an integer or out of range"))?;
        let mode = match req.arg(3).map(|m| m.to_ascii_uppercase()).as_deref() {
            None => None,
            Some(m @ (b"TIMEOUT" | b"ERROR")) => Some(String::from_utf8_lossy(m).into_owned()),
            Some(_) => {
                return Err(error_line(
                    "ERR",
                    "CLIENT UNBLOCK reason should be TIMEOUT or ERROR",
                ))
            }
        };
        let Some(upstream_id) = self
            .shared
            .process
            .roster
            .get(id)
            .map(|m| m.published())
            .filter(|p| p.blocked)
            .and_then(|p| p.pinned_upstream_id)
        else {
            return Ok(None);
        };
        let mut args = vec![
            "CLIENT".to_string(),
            "UNBLOCK".into(),
            upstream_id.to_string(),
        ];
        args.extend(mode);
        Ok(Some(Request::from_args(&args)))
    }

    /// `CLIENT TRACKING … REDIRECT id`: the request with the id translated
    /// to the redirect target's pinned connection upstream, with the
    /// (upstream, respool) id pair; or Redis's error when the target has
    /// none (it must be subscribed to `__redis__:invalidate` on a
    /// connection of its own).
    pub(super) fn translate_redirect(
        &self,
        req: Request,
    ) -> Result<(Request, Option<(u64, u64)>), Bytes> {
        let args: Vec<&[u8]> = req.args().collect();
        let Some(at) = args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"REDIRECT"))
            .map(|i| i + 1)
            .filter(|&i| i < args.len())
        else {
            return Ok((req, None));
        };
        let missing = || error_line("ERR", "The client ID you want redirect to does not exist");
        let target = parse_u64(args[at]).ok_or_else(missing)?;
        let upstream_id = self
            .shared
            .process
            .roster
            .get(target)
            .and_then(|m| m.published().pinned_upstream_id)
            .ok_or_else(missing)?;
        let id = upstream_id.to_string();
        let translated: Vec<&[u8]> = args
            .iter()
            .enumerate()
            .map(|(i, a)| if i == at { id.as_bytes() } else { *a })
            .collect();
        Ok((Request::from_args(&translated), Some((upstream_id, target))))
    }

    /// `INFO` with its `clients` section: sent on the client's lane in its
    /// turn like any read, and Redis's reply delivered with
    /// `connected_clients` counting respool's clients (whom the client's
    /// `CLIENT LIST` and `CLIENT KILL` see), not respool's connections.
    /// On a pinned session it goes as it is.
    pub(super) fn info(&mut self, req: Request) {
        if self.session.is_some() {
            return self.forward(req, true);
        }
        let seq = self.output.open_shared_slot();
        let inbox = ReplyInbox::new(None, Arc::new(ReplyMemory::detached()));
        let sent = self.lane.send(LaneRequest {
            seq: 0,
            raw: req.into_raw().freeze(),
            count: 1,
            retry_safe: 1,
            reply_to: inbox.sender(),
            redirects: 0,
            asking: false,
        });
        if sent.is_err() {
            return self
                .output
                .fail_shared(seq, 1, &crate::error::Error::ShuttingDown.to_resp());
        }
        let reply_to = self.output.sender();
        let process = self.shared.process.clone();
        tokio::spawn(async move {
            let mut arrived = Vec::new();
            std::future::poll_fn(|cx| inbox.poll_take(cx, &mut arrived)).await;
            let Some(reply) = arrived.pop().map(|d| d.reply) else {
                return;
            };
            let clients = process.stats.connected_clients.load(Ordering::Relaxed);
            reply_to.send(seq, 1, with_connected_clients(reply, clients));
        });
    }

    /// Publishes what a pinned session changes of the client (CLIENT LIST).
    pub(super) fn publish_session(&self) {
        let default_db = self.lanes.endpoint().db;
        self.member.publish(|p| match &self.session {
            Some(session) => session.publish(p),
            None => {
                p.db = default_db;
                p.subscriptions = [0; 3];
                // A cluster MULTI before its first key has no session yet.
                p.multi = self.cluster_tx.is_some();
                p.blocked = false;
                p.pinned_upstream_id = None;
            }
        });
    }

    /// A request waits while `CLIENT PAUSE` is in force (writes only, for
    /// `WRITE`); parks it if so.
    pub(super) fn held_by_pause(&mut self, req: Request, command: Command) -> Option<Request> {
        let roster = &self.shared.process.roster;
        let Some(until) = roster.paused_for(!command.retry_safe) else {
            return Some(req);
        };
        let over = roster.pause_over(until);
        self.park(req, command, Some(Wait::Pause(Box::pin(over))));
        None
    }
}

/// An INFO reply whose `connected_clients` line says `clients`; the reply
/// as it was if it has none (or is an error).
fn with_connected_clients(reply: Bytes, clients: usize) -> Bytes {
    let (text, verbatim) = match Value::of_frame(&reply) {
        Ok(Value::Bulk(text)) => (text, false),
        Ok(Value::Verbatim(_, text)) => (text, true),
        _ => return reply,
    };
    const FIELD: &[u8] = b"connected_clients:";
    let Some(at) = memchr::memmem::find(text, FIELD) else {
        return reply;
    };
    let start = at + FIELD.len();
    let end = text[start..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map_or(text.len(), |n| start + n);
    let mut patched = Vec::with_capacity(text.len() + 8);
    patched.extend_from_slice(&text[..start]);
    patched.extend_from_slice(clients.to_string().as_bytes());
    patched.extend_from_slice(&text[end..]);
    let mut out = if verbatim {
        let mut out = format!("={}\r\ntxt:", patched.len() + 4).into_bytes();
        out.extend_from_slice(&patched);
        out
    } else {
        let mut out = format!("${}\r\n", patched.len()).into_bytes();
        out.extend_from_slice(&patched);
        out
    };
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

fn parse_u64(arg: &[u8]) -> Option<u64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

fn client_kind(arg: &[u8]) -> Result<ClientKind, Bytes> {
    match arg.to_ascii_lowercase().as_slice() {
        b"normal" => Ok(ClientKind::Normal),
        b"pubsub" => Ok(ClientKind::Pubsub),
        b"master" | b"replica" | b"slave" => Ok(ClientKind::Replication),
        _ => Err(error_line(
            "ERR",
            &format!("Unknown client type '{}'", String::from_utf8_lossy(arg)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_counts_respools_clients_in_either_protocol() {
        let text = "# Clients\r\nconnected_clients:2\r\nblocked_clients:0\r\n";
        let bulk = Bytes::from(format!("${}\r\n{text}\r\n", text.len()));
        let patched = with_connected_clients(bulk, 17);
        let want = "# Clients\r\nconnected_clients:17\r\nblocked_clients:0\r\n";
        assert_eq!(
            &patched[..],
            format!("${}\r\n{want}\r\n", want.len()).as_bytes()
        );
        let verbatim = Bytes::from(format!("={}\r\ntxt:{text}\r\n", text.len() + 4));
        let patched = with_connected_clients(verbatim, 3);
        assert!(
            patched.starts_with(b"=") && patched.windows(20).any(|w| w == b"connected_clients:3\r")
        );
        let error = Bytes::from_static(b"-ERR no\r\n");
        assert_eq!(with_connected_clients(error.clone(), 3), error);
    }
}
