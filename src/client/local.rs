//! Commands respool answers itself (see [`crate::command::Local`]): QUIT,
//! AUTH, HELLO, RESET, SELECT of the configured database, CLIENT
//! ID/GETNAME/SETNAME/SETINFO, INFO respool — and the RESP encodings their
//! replies need in either protocol version.

use bytes::Bytes;

use super::auth::{AuthOutcome, ClientAuth};
use super::session::Session;
use super::{Client, Wait};
use crate::codec::{Request, RequestLimits, RequestRef};
use crate::command::{Command, Local, Stateful};
use crate::error::{error_line, Error};

impl Client {
    /// Answers a command respool handles itself (or parks it until it can).
    pub(super) fn local(&mut self, local: Local, req: Request, command: Command) {
        if !matches!(local, Local::Quit | Local::Reset | Local::Info)
            && self.session.as_ref().is_some_and(Session::pubsub_only)
        {
            // Redis refuses it on a RESP2 connection in pub/sub mode; so does
            // respool, rather than answer what Redis would not.
            self.output.push_ready(not_in_pubsub_context(&req));
            return;
        }
        if !matches!(
            local,
            Local::Quit | Local::Reset | Local::SelectDefault | Local::Info
        ) && self
            .session
            .as_mut()
            .is_some_and(|s| s.abort_transaction_on_exec())
        {
            // Redis would queue it and run it at EXEC, but respool answers
            // it itself and has no place in EXEC's reply for it. Refusing it
            // keeps the reply count right: as with any command refused while
            // queueing, EXEC answers EXECABORT and nothing runs.
            self.output.push_ready(not_queueable(&req));
            return;
        }
        match local {
            Local::Auth if self.passthrough() => self.login(req, command),
            Local::Hello if self.passthrough() && hello_logs_in(&req) => self.login(req, command),
            Local::Quit => {
                self.output.push_ready(Bytes::from_static(b"+OK\r\n"));
                self.stop_reading();
            }
            Local::Reset if self.session.is_some() => self.park(req, command, None),
            Local::Reset if self.logging_out() && self.output.shared_pending() > 0 => {
                // Back to respool's own identity once the client's earlier
                // requests have run as the one it logged in as.
                self.park(req, command, None)
            }
            Local::Reset => {
                let reply = self.reset();
                self.output.push_ready(reply);
            }
            Local::SelectDefault if self.session.is_some() => {
                self.dedicated(Stateful::Select, req, command)
            }
            Local::Hello => {
                if let Some(protocol) = hello_protocol(&req) {
                    if protocol != self.protocol
                        && self.session.is_none()
                        && self.output.shared_pending() > 0
                    {
                        // Switching lanes: wait until the old lane answered
                        // everything, so nothing is reordered.
                        self.park(req, command, None);
                        return;
                    }
                }
                self.answer_hello(req, command, false);
            }
            Local::Client(which) => self.client_command(which, req),
            Local::Info => self.info(req),
            Local::Admin => self.admin_command(&req),
            other => {
                let reply = self.simple_local(other, &req);
                self.output.push_ready(reply);
            }
        }
    }

    fn simple_local(&mut self, local: Local, req: &Request) -> Bytes {
        match local {
            Local::Auth => self.auth(req),
            Local::Ok | Local::SelectDefault => Bytes::from_static(b"+OK\r\n"),
            Local::ClientId => Bytes::from(format!(":{}\r\n", self.id)),
            Local::Stats => self.stats_reply(),
            Local::ClientGetName => match &self.name {
                Some(name) => bulk(name),
                None => nil(self.protocol),
            },
            Local::ClientSetName => match validate_client_name(req) {
                Ok(name) => {
                    self.set_name(name);
                    Bytes::from_static(b"+OK\r\n")
                }
                Err(reply) => reply,
            },
            // Handled by `local` itself.
            Local::Quit
            | Local::Reset
            | Local::Hello
            | Local::Client(_)
            | Local::Info
            | Local::Admin => Bytes::from_static(b"+OK\r\n"),
        }
    }

    fn auth(&mut self, req: &Request) -> Bytes {
        self.refresh_settings();
        match auth(&self.settings().auth, req) {
            Ok(()) => {
                let user = auth_args(req).ok().and_then(|(user, _)| user);
                self.set_authenticated(user);
                Bytes::from_static(b"+OK\r\n")
            }
            Err(reply) => reply,
        }
    }

    /// The client logged in to respool itself as `user` (`None`: the
    /// `default` user).
    fn set_authenticated(&mut self, user: Option<&[u8]>) {
        self.admin = match (&self.shared.config.admin.admin_user, user) {
            (Some(admin), Some(user)) => admin.as_bytes() == user,
            _ => false,
        };
        if !self.authenticated {
            self.authenticated = true;
            let limits = RequestLimits {
                max_bulk_len: self.settings().max_bulk_length,
                ..RequestLimits::default()
            };
            self.input.set_limits(limits);
        }
    }

    /// Answers HELLO, or parks it until the server version its reply
    /// carries is known. `logged_in`: its AUTH was passed through and the
    /// upstream accepted it.
    fn answer_hello(&mut self, req: Request, command: Command, logged_in: bool) {
        match self.hello(&req, logged_in) {
            Some(reply) => self.output.push_ready(reply),
            None => {
                // No wait is running: a HELLO is parked while one does, and
                // nothing is read behind it.
                let within = self.shared.process.live.retry.hold_timeout();
                let wait = self.lanes.health().wait_validated(within);
                self.park(req, command, Some(Wait::Version(Box::pin(wait))));
            }
        }
    }

    /// A HELLO whose AUTH the upstream accepted goes on.
    pub(super) fn hello_after_login(&mut self, req: Request, command: Command) {
        self.answer_hello(req, command, true);
    }

    /// HELLO's reply; `None` when it would succeed but no upstream
    /// connection has passed validation yet, so the server version its reply
    /// carries is not known: nothing is changed then, and the caller waits.
    fn hello(&mut self, req: &Request, logged_in: bool) -> Option<Bytes> {
        let hello = match parse_hello(req) {
            Ok(h) => h,
            Err(reply) => return Some(reply),
        };
        if hello.auth.is_some() && !logged_in {
            self.refresh_settings();
        }
        // The user respool itself checked, if it did.
        let mut own_user = None;
        let authenticates = match hello.auth {
            Some(_) if logged_in => true,
            Some((user, password)) => match self.settings().auth.check(Some(user), password) {
                AuthOutcome::Ok => {
                    own_user = Some(user);
                    true
                }
                _ => return Some(wrongpass()),
            },
            None if !self.authenticated => return Some(error_line("NOAUTH", "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")),
            None => false,
        };
        if !self.lanes.health().is_validated() {
            return None;
        }
        if authenticates {
            self.set_authenticated(own_user);
        }
        if let Some(name) = hello.setname {
            self.set_name(name);
        }
        if let Some(protocol) = hello.protocol {
            if protocol != self.protocol {
                self.protocol = protocol;
                self.member.publish(|p| p.resp = protocol);
                self.lane = self.lanes.lane(protocol);
                if let Some(session) = &mut self.session {
                    session.switch_protocol(protocol == 3);
                }
            }
        }
        // Unknown only where an ACL forbids the validation's `INFO server`.
        let version = self.lanes.health().version();
        let version = version.as_deref().unwrap_or("unknown");
        Some(hello_reply(self.protocol, self.id, version))
    }

    /// The parked `HELLO` waited `--hold-timeout` for a validated upstream
    /// connection in vain: it fails, changing nothing, as a command sent
    /// while Redis is down would.
    pub(super) fn no_server_version(&mut self) {
        let parked = std::mem::replace(&mut self.phase, super::Phase::Reading);
        if let super::Phase::Parked(parked) = parked {
            if parked.drain_after {
                self.phase = super::Phase::Draining;
            }
            let error = Error::NoHealth {
                addr: self.lanes.addr().clone(),
                waited: self.shared.process.live.retry.hold_timeout(),
            };
            self.output.push_ready(error.to_resp());
        }
    }

    /// `INFO respool`: the process's counters, summed over its event loops.
    fn stats_reply(&self) -> Bytes {
        bulk(self.stats_text().as_bytes())
    }

    /// `INFO respool`'s text (also `RESPOOL STATS`'s, as fields).
    pub(super) fn stats_text(&self) -> String {
        let version = self.lanes.health().version();
        let upstream = self.lanes.addr();
        let process = &self.shared.process.stats;
        let ctx = crate::stats::Context {
            upstream: &upstream,
            upstream_version: version.as_deref(),
            event_loops: self.shared.config.event_loops(),
            connected_clients: process
                .connected_clients
                .load(std::sync::atomic::Ordering::Relaxed),
            uptime_secs: process.uptime_secs(),
            reply_memory: self.shared.process.roster.memory.held(),
            reply_memory_evictions: self.shared.process.roster.memory.evictions(),
        };
        let mut text = crate::stats::render(ctx, process.totals());
        self.shared.router.render_topology(&mut text);
        text
    }

    /// Names the client (CLIENT SETNAME, HELLO SETNAME, RESET).
    fn set_name(&mut self, name: Option<Bytes>) {
        self.member.publish(|p| p.name = name.clone());
        self.name = name;
    }

    /// RESET logs a client out: one that logged in as another identity
    /// than respool's own goes back to respool's lanes.
    pub(super) fn logging_out(&self) -> bool {
        self.passthrough() && !std::sync::Arc::ptr_eq(&self.lanes, &self.shared.router.initial())
    }

    /// RESET of a client without a session: its own state goes back to a new
    /// connection's.
    pub(super) fn reset(&mut self) -> Bytes {
        self.set_name(None);
        if self.logging_out() {
            let lanes = self.shared.router.initial();
            self.switch_lanes(lanes);
        }
        if self.protocol != 2 {
            self.protocol = 2;
            self.member.publish(|p| p.resp = 2);
            self.lane = self.lanes.lane(2);
        }
        self.admin = false;
        if self.settings().auth.required() && self.authenticated {
            self.authenticated = false;
            self.input.set_limits(RequestLimits::unauthenticated());
        }
        Bytes::from_static(b"+RESET\r\n")
    }
}

/// Commands a client may send before it has authenticated (as in Redis).
pub(super) fn allowed_before_auth(req: RequestRef<'_>) -> bool {
    let name = req.name();
    ["AUTH", "HELLO", "QUIT", "RESET"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// A command's name as an error names it: its subcommand (or, for INFO,
/// its section) joined on with `sep` when the command is one of
/// `containers`, in upper or lower case.
fn error_name(req: &Request, containers: &[&str], sep: char, upper: bool) -> String {
    let case = |b: &[u8]| {
        let text = String::from_utf8_lossy(b);
        if upper {
            text.to_ascii_uppercase()
        } else {
            text.to_ascii_lowercase()
        }
    };
    let mut name = case(req.name());
    if let Some(sub) = req.arg(1) {
        if containers.iter().any(|c| c.eq_ignore_ascii_case(&name)) {
            name.push(sep);
            name.push_str(&case(sub));
        }
    }
    name
}

/// The refusal of a command respool answers itself, sent inside MULTI,
/// named with the argument that made it respool's own.
fn not_queueable(req: &Request) -> Bytes {
    refused_in_multi(
        &error_name(req, &["CLIENT", "INFO"], ' ', true),
        "respool answers it itself",
    )
}

/// The refusal of SUBSCRIBE and the like, or CLIENT REPLY, inside MULTI.
pub(super) fn changes_replies_in_exec(req: &Request) -> Bytes {
    refused_in_multi(
        &error_name(req, &["CLIENT"], ' ', true),
        "run by EXEC, it would change what the connection sends in ways respool cannot follow",
    )
}

pub(super) fn refused_in_multi(name: &str, why: &str) -> Bytes {
    error_line(
        "ERR",
        &format!("{name} cannot be queued in a transaction through respool ({why}); send it before MULTI or after EXEC"),
    )
}

/// Redis's refusal of a command on a RESP2 connection in pub/sub mode,
/// naming it as Redis does (`client|setname`).
fn not_in_pubsub_context(req: &Request) -> Bytes {
    let name = error_name(req, &["CLIENT"], '|', false);
    error_line(
        "ERR",
        &format!("Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"),
    )
}

/// `-WRONGPASS`, worded as Redis 7 words it.
pub(super) fn wrongpass() -> Bytes {
    error_line(
        "WRONGPASS",
        "invalid username-password pair or user is disabled.",
    )
}

/// `AUTH [user] password`: the user and password, or Redis's error for a
/// malformed one.
pub(super) fn auth_args(req: &Request) -> Result<(Option<&[u8]>, &[u8]), Bytes> {
    let args: Vec<&[u8]> = req.args().skip(1).collect();
    match args[..] {
        [password] => Ok((None, password)),
        [user, password] => Ok((Some(user), password)),
        [] => Err(error_line(
            "ERR",
            "wrong number of arguments for 'auth' command",
        )),
        _ => Err(error_line("ERR", "syntax error")),
    }
}

/// Answers `AUTH [user] password` against respool's own users.
fn auth(users: &ClientAuth, req: &Request) -> Result<(), Bytes> {
    let (user, password) = auth_args(req)?;
    match users.check(user, password) {
        AuthOutcome::Ok => Ok(()),
        AuthOutcome::WrongPass => Err(wrongpass()),
        AuthOutcome::NoPasswordConfigured => Err(error_line(
            "ERR",
            "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        )),
    }
}

/// A parsed `HELLO [protover [AUTH user pass] [SETNAME name]]`.
pub(super) struct Hello<'a> {
    pub protocol: Option<u8>,
    pub auth: Option<(&'a [u8], &'a [u8])>,
    /// `Some(None)` clears the name.
    pub setname: Option<Option<Bytes>>,
}

/// Whether a HELLO logs in (`HELLO 3 AUTH user pass`).
fn hello_logs_in(req: &Request) -> bool {
    parse_hello(req).is_ok_and(|hello| hello.auth.is_some())
}

/// The protocol version a HELLO asks for, if it is valid.
pub(super) fn hello_protocol(req: &Request) -> Option<u8> {
    match req.arg(1)? {
        b"2" => Some(2),
        b"3" => Some(3),
        _ => None,
    }
}

pub(super) fn parse_hello(req: &Request) -> Result<Hello<'_>, Bytes> {
    let args: Vec<&[u8]> = req.args().skip(1).collect();
    let mut hello = Hello {
        protocol: None,
        auth: None,
        setname: None,
    };
    let Some((first, mut rest)) = args.split_first() else {
        return Ok(hello);
    };
    let version: i64 = std::str::from_utf8(first)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| error_line("ERR", "Protocol version is not an integer or out of range"))?;
    hello.protocol = match version {
        2 => Some(2),
        3 => Some(3),
        _ => {
            // Redis's own wording (helloCommand), not the RESP3 spec's prose.
            return Err(error_line("NOPROTO", "unsupported protocol version"));
        }
    };
    while let Some((option, tail)) = rest.split_first() {
        if option.eq_ignore_ascii_case(b"AUTH") && tail.len() >= 2 {
            hello.auth = Some((tail[0], tail[1]));
            rest = &tail[2..];
        } else if option.eq_ignore_ascii_case(b"SETNAME") && !tail.is_empty() {
            hello.setname = Some(client_name(tail[0])?);
            rest = &tail[1..];
        } else {
            return Err(error_line(
                "ERR",
                &format!(
                    "Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(option)
                ),
            ));
        }
    }
    Ok(hello)
}

/// `CLIENT SETNAME name`: the new name (`None` clears it) or Redis's error.
fn validate_client_name(req: &Request) -> Result<Option<Bytes>, Bytes> {
    if req.argc() != 3 {
        return Err(error_line(
            "ERR",
            "wrong number of arguments for 'client|setname' command",
        ));
    }
    client_name(req.arg(2).unwrap_or_default())
}

fn client_name(name: &[u8]) -> Result<Option<Bytes>, Bytes> {
    if name.is_empty() {
        return Ok(None);
    }
    if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(error_line(
            "ERR",
            "Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(Some(Bytes::copy_from_slice(name)))
}

/// A bulk string.
pub(super) fn bulk(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// Null in the client's protocol.
fn nil(protocol: u8) -> Bytes {
    Bytes::from_static(if protocol == 3 { b"_\r\n" } else { b"$-1\r\n" })
}

/// HELLO's reply: a map in RESP3, a flat array in RESP2, with the fields
/// Redis sends. `version` is the upstream's, learned during validation.
fn hello_reply(protocol: u8, id: u64, version: &str) -> Bytes {
    let mut out = Vec::new();
    out.extend_from_slice(if protocol == 3 { b"%7\r\n" } else { b"*14\r\n" });
    let mut field = |key: &str, value: &[u8]| {
        out.extend_from_slice(&bulk(key.as_bytes()));
        out.extend_from_slice(value);
    };
    field("server", &bulk(b"redis"));
    field("version", &bulk(version.as_bytes()));
    field("proto", format!(":{protocol}\r\n").as_bytes());
    field("id", format!(":{id}\r\n").as_bytes());
    field("mode", &bulk(b"standalone"));
    field("role", &bulk(b"master"));
    field("modules", b"*0\r\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(args: &[&str]) -> Request {
        Request::from_args(args)
    }

    #[test]
    fn hello_parsing_matches_redis() {
        assert!(parse_hello(&req(&["HELLO"])).unwrap().protocol.is_none());
        assert_eq!(
            parse_hello(&req(&["HELLO", "3"])).unwrap().protocol,
            Some(3)
        );
        let e = parse_hello(&req(&["HELLO", "4"])).err().unwrap();
        assert_eq!(&e[..], b"-NOPROTO unsupported protocol version\r\n");
        let e = parse_hello(&req(&["HELLO", "x"])).err().unwrap();
        assert!(e.starts_with(b"-ERR Protocol version"));
        let full = req(&["HELLO", "3", "AUTH", "u", "p", "SETNAME", "app"]);
        let h = parse_hello(&full).unwrap();
        assert_eq!(h.auth, Some((&b"u"[..], &b"p"[..])));
        assert_eq!(h.setname, Some(Some(Bytes::from_static(b"app"))));
        assert!(parse_hello(&req(&["HELLO", "3", "AUTH", "u"])).is_err());
    }

    #[test]
    fn hello_replies_in_both_protocols() {
        let r2 = hello_reply(2, 7, "7.0.15");
        assert!(r2.starts_with(
            b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n"
        ));
        let r3 = hello_reply(3, 7, "7.0.15");
        assert!(r3.starts_with(b"%7\r\n"));
        // Both are whole frames.
        use tokio_util::codec::Decoder;
        for r in [r2, r3] {
            let mut buf = bytes::BytesMut::from(&r[..]);
            let frame = crate::codec::ReplyDecoder::default()
                .decode(&mut buf)
                .unwrap()
                .unwrap();
            assert_eq!(frame.len(), r.len());
        }
    }

    #[test]
    fn client_names_are_validated() {
        assert_eq!(
            validate_client_name(&req(&["CLIENT", "SETNAME", "app-1"])).unwrap(),
            Some(Bytes::from_static(b"app-1"))
        );
        assert_eq!(
            validate_client_name(&req(&["CLIENT", "SETNAME", ""])).unwrap(),
            None
        );
        assert!(validate_client_name(&req(&["CLIENT", "SETNAME", "a b"])).is_err());
        assert!(validate_client_name(&req(&["CLIENT", "SETNAME"])).is_err());
    }

    #[test]
    fn auth_replies() {
        let users = ClientAuth::new(Some("pw"), &[]).unwrap();
        assert!(auth(&users, &req(&["AUTH", "pw"])).is_ok());
        assert_eq!(
            auth(&users, &req(&["AUTH", "no"])).unwrap_err(),
            wrongpass()
        );
        assert!(auth(&users, &req(&["AUTH"]))
            .unwrap_err()
            .starts_with(b"-ERR wrong number"));
        let none = ClientAuth::new(None, &[]).unwrap();
        assert!(auth(&none, &req(&["AUTH", "x"]))
            .unwrap_err()
            .starts_with(b"-ERR AUTH <password> called without"));
    }
}
