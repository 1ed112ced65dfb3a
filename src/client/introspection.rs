//! `CLIENT LIST | INFO | KILL | UNBLOCK | PAUSE | UNPAUSE` and `CLIENT
//! TRACKING … REDIRECT`, answered in respool's terms: the ids, names and
//! addresses a client sees through respool are respool's own (see
//! [`super::roster`]), so these act on respool's clients; where Redis must
//! act (unblocking a pinned connection, redirecting invalidations to one),
//! the id is translated to that connection's id upstream.

use std::time::{Duration, Instant};

use bytes::Bytes;

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
    /// to the redirect target's pinned connection upstream, or Redis's
    /// error when the target has none (it must be subscribed to
    /// `__redis__:invalidate` on a connection of its own).
    pub(super) fn translate_redirect(&self, req: Request) -> Result<Request, Bytes> {
        let args: Vec<&[u8]> = req.args().collect();
        let Some(at) = args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"REDIRECT"))
            .map(|i| i + 1)
            .filter(|&i| i < args.len())
        else {
            return Ok(req);
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
        Ok(Request::from_args(&translated))
    }

    /// Publishes what a pinned session changes of the client (CLIENT LIST).
    pub(super) fn publish_session(&self) {
        let default_db = self.lanes.endpoint().db;
        self.member.publish(|p| match &self.session {
            Some(session) => session.publish(p),
            None => {
                p.db = default_db;
                p.subscriptions = [0; 3];
                p.multi = false;
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
