//! `RESPOOL <subcommand>`: the admin console on the client port — what
//! PgBouncer's console offers, in Redis's syntax, so any redis-cli works.
//! Only connections logged in as `--admin-user` may run it; everyone else
//! gets Redis's NOPERM error.
//!
//! Replies are shaped like Redis's own: a list of records (POOLS, CLIENTS)
//! is an array of maps in RESP3 and of flat field/value arrays in RESP2
//! (as HELLO's reply is); a single record (STATS, CONFIG) is one map or
//! flat array; SLOWLOG GET is Redis's SLOWLOG GET with respool's fields
//! after Redis's six.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::roster::Pause;
use super::Client;
use crate::codec::Request;
use crate::error::error_line;
use crate::slowlog::{micros, SlowEntry};

/// How long `RESPOOL PAUSE` holds requests without a timeout given.
const DEFAULT_PAUSE: Duration = Duration::from_secs(30);

/// `RESPOOL HELP`.
const HELP: &[&str] = &[
    "RESPOOL <subcommand> [<arg> ...]. Subcommands are:",
    "POOLS",
    "    Each upstream endpoint's lane set: lanes, idle spares, pinned connections in use and the most allowed, waiters, state.",
    "CLIENTS",
    "    One entry per client: id, addr, name, identity, state, age, idle, pending.",
    "STATS",
    "    The counters INFO respool shows.",
    "CONFIG",
    "    The effective configuration, secrets masked.",
    "PAUSE [WRITE] [<timeout>]",
    "    Hold new requests (only writes with WRITE) until RESUME, or until <timeout> (milliseconds, or e.g. 30s; default 30s), then release them.",
    "RESUME",
    "    Release the held requests, each client's in the order it sent them.",
    "DRAIN",
    "    Stop accepting clients; close each client once its requests are answered (this one too).",
    "RELOAD",
    "    Re-read the configuration file and apply what can change live.",
    "SLOWLOG GET [<count>] | LEN | RESET",
    "    Requests slower than --slowlog-threshold.",
    "HELP",
    "    Print this help.",
];

/// A field value in an admin reply.
enum Field {
    Int(i64),
    Text(String),
}

impl From<usize> for Field {
    fn from(n: usize) -> Field {
        Field::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<u64> for Field {
    fn from(n: u64) -> Field {
        Field::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<u32> for Field {
    fn from(n: u32) -> Field {
        Field::Int(i64::from(n))
    }
}

impl From<String> for Field {
    fn from(s: String) -> Field {
        Field::Text(s)
    }
}

impl From<&str> for Field {
    fn from(s: &str) -> Field {
        Field::Text(s.to_string())
    }
}

/// Builds a reply in the client's protocol.
struct Reply {
    out: BytesMut,
    protocol: u8,
}

impl Reply {
    fn new(protocol: u8) -> Reply {
        Reply {
            out: BytesMut::new(),
            protocol,
        }
    }

    fn header(&mut self, kind: u8, n: usize) {
        self.out.put_u8(kind);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn array(&mut self, n: usize) {
        self.header(b'*', n);
    }

    /// A map of `n` pairs: `%n` in RESP3, a flat array of `2n` in RESP2.
    fn map(&mut self, n: usize) {
        if self.protocol == 3 {
            self.header(b'%', n);
        } else {
            self.header(b'*', 2 * n);
        }
    }

    fn bulk(&mut self, data: &[u8]) {
        self.header(b'$', data.len());
        self.out.extend_from_slice(data);
        self.out.extend_from_slice(b"\r\n");
    }

    fn int(&mut self, n: i64) {
        self.out.put_u8(b':');
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn field(&mut self, value: &Field) {
        match value {
            Field::Int(n) => self.int(*n),
            Field::Text(s) => self.bulk(s.as_bytes()),
        }
    }

    /// A record: a map of its fields.
    fn record(&mut self, fields: &[(&str, Field)]) {
        self.map(fields.len());
        for (name, value) in fields {
            self.bulk(name.as_bytes());
            self.field(value);
        }
    }

    fn finish(self) -> Bytes {
        self.out.freeze()
    }
}

impl Client {
    /// Answers `RESPOOL <subcommand> …`, for the admin only.
    pub(super) fn admin_command(&mut self, req: &Request) {
        let reply = if self.admin {
            self.admin_reply(req)
        } else {
            // Redis's words for a command the user's ACL does not allow.
            error_line(
                "NOPERM",
                "this user has no permissions to run the 'respool' command",
            )
        };
        self.output.push_ready(reply);
    }

    fn admin_reply(&mut self, req: &Request) -> Bytes {
        let Some(sub) = req.arg(1) else {
            return error_line(
                "ERR",
                "wrong number of arguments for 'respool' command; try RESPOOL HELP",
            );
        };
        let sub = String::from_utf8_lossy(sub).to_ascii_uppercase();
        let args: Vec<&[u8]> = req.args().skip(2).collect();
        let no_args = |reply: Bytes| {
            if args.is_empty() {
                reply
            } else {
                wrong_args(&sub)
            }
        };
        match sub.as_str() {
            "HELP" => no_args(self.help()),
            "POOLS" => no_args(self.pools()),
            "CLIENTS" => no_args(self.clients()),
            "STATS" => no_args(self.stats()),
            "CONFIG" => no_args(self.config()),
            "PAUSE" => self.pause(&args),
            "RESUME" => no_args(self.resume()),
            "DRAIN" => no_args(self.drain()),
            "RELOAD" => no_args(self.reload()),
            "SLOWLOG" => self.slowlog(&args),
            _ => error_line(
                "ERR",
                &format!(
                    "unknown subcommand '{}'. Try RESPOOL HELP.",
                    sub.to_ascii_lowercase()
                ),
            ),
        }
    }

    fn help(&self) -> Bytes {
        let mut reply = Reply::new(self.protocol);
        reply.array(HELP.len());
        for line in HELP {
            reply.out.put_u8(b'+');
            reply.out.extend_from_slice(line.as_bytes());
            reply.out.extend_from_slice(b"\r\n");
        }
        reply.finish()
    }

    /// One record per lane set, of every event loop.
    fn pools(&self) -> Bytes {
        let mut records = Vec::new();
        for (index, shared) in self.shared.process.loops().iter().enumerate() {
            for view in shared.router.pool_views() {
                records.push(vec![
                    ("event_loop", Field::from(index)),
                    ("upstream", Field::from(&*view.upstream)),
                    ("role", Field::from(view.role)),
                    ("identity", Field::from(view.identity)),
                    ("state", Field::from(view.state)),
                    ("lanes", Field::from(view.lanes)),
                    ("lane_connections", Field::from(view.lane_connections)),
                    ("idle_spares", Field::from(view.idle_spares)),
                    ("pinned_in_use", Field::from(view.pinned_in_use)),
                    ("pinned_max", Field::from(view.pinned_max)),
                    ("waiters", Field::from(view.waiters)),
                ]);
            }
        }
        self.records(&records)
    }

    /// One record per client of the process.
    fn clients(&self) -> Bytes {
        let records: Vec<_> = self
            .shared
            .process
            .roster
            .all()
            .iter()
            .map(|member| {
                let published = member.published();
                let state = if published.subscriptions.iter().any(|&n| n > 0) {
                    "pubsub"
                } else if published.multi {
                    "multi"
                } else if published.blocked {
                    "blocked"
                } else if published.pinned_upstream_id.is_some() {
                    "pinned"
                } else {
                    "normal"
                };
                let name = published
                    .name
                    .as_ref()
                    .map_or_else(String::new, |n| String::from_utf8_lossy(n).into_owned());
                vec![
                    ("id", Field::from(member.id)),
                    (
                        "addr",
                        Field::from(
                            member
                                .addr()
                                .map_or_else(|| "?:0".into(), |a| a.to_string()),
                        ),
                    ),
                    ("name", Field::from(name)),
                    ("identity", Field::from(published.user.to_string())),
                    ("resp", Field::from(u32::from(published.resp))),
                    ("state", Field::from(state)),
                    ("age", Field::from(member.age().as_secs())),
                    ("idle", Field::from(member.idle_secs())),
                    ("pending", Field::from(member.pending())),
                ]
            })
            .collect();
        self.records(&records)
    }

    fn records(&self, records: &[Vec<(&str, Field)>]) -> Bytes {
        let mut reply = Reply::new(self.protocol);
        reply.array(records.len());
        for record in records {
            reply.record(record);
        }
        reply.finish()
    }

    /// `INFO respool`'s fields as one record: numbers as integers.
    fn stats(&self) -> Bytes {
        let text = self.stats_text();
        let fields: Vec<(&str, Field)> = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| {
                let value = value.trim_end();
                let field = value
                    .parse::<i64>()
                    .map_or_else(|_| Field::from(value), Field::Int);
                (name, field)
            })
            .collect();
        // What a readiness check reads (Process::paused_or_draining).
        let process = &self.shared.process;
        let mut fields = fields;
        let pause = match process.roster.current_pause() {
            None => "none",
            Some(p) if p.writes_only => "write",
            Some(_) => "all",
        };
        fields.push(("pause", Field::from(pause)));
        fields.push((
            "draining",
            Field::from(u32::from(process.draining.is_cancelled())),
        ));
        fields.push((
            "paused_or_draining",
            Field::from(u32::from(process.paused_or_draining())),
        ));
        let mut reply = Reply::new(self.protocol);
        reply.record(&fields);
        reply.finish()
    }

    fn config(&self) -> Bytes {
        let fields: Vec<(&str, Field)> = self
            .shared
            .config
            .describe()
            .into_iter()
            .map(|(name, value)| (name, Field::from(value)))
            .collect();
        let mut reply = Reply::new(self.protocol);
        reply.record(&fields);
        reply.finish()
    }

    /// `RESPOOL PAUSE [WRITE] [timeout]`: the `CLIENT PAUSE` mechanism,
    /// which holds each client's next request (and so everything it sends
    /// after it) until the pause ends.
    fn pause(&mut self, args: &[&[u8]]) -> Bytes {
        let mut writes_only = false;
        let mut timeout = DEFAULT_PAUSE;
        let mut rest = args;
        if let Some((first, tail)) = rest.split_first() {
            if first.eq_ignore_ascii_case(b"WRITE") {
                writes_only = true;
                rest = tail;
            } else if first.eq_ignore_ascii_case(b"ALL") {
                rest = tail;
            }
        }
        match rest {
            [] => {}
            [given] => match parse_timeout(given) {
                Some(t) => timeout = t,
                None => return error_line(
                    "ERR",
                    "timeout is not a positive number of milliseconds or a duration such as 30s",
                ),
            },
            _ => return wrong_args("PAUSE"),
        }
        self.shared.process.roster.pause(Pause {
            until: Instant::now() + timeout,
            writes_only,
        });
        tracing::info!(
            writes_only,
            timeout_ms = timeout.as_millis() as u64,
            admin = self.id,
            "RESPOOL PAUSE: holding new requests"
        );
        Bytes::from_static(b"+OK\r\n")
    }

    fn resume(&mut self) -> Bytes {
        self.shared.process.roster.unpause();
        tracing::info!(admin = self.id, "RESPOOL RESUME: releasing held requests");
        Bytes::from_static(b"+OK\r\n")
    }

    /// `RESPOOL DRAIN`: every event loop stops accepting and closes its
    /// clients once their requests are answered, as a shutdown does, but
    /// the process stays up (reporting itself draining) until stopped.
    fn drain(&mut self) -> Bytes {
        tracing::info!(admin = self.id, "RESPOOL DRAIN");
        self.shared.process.draining.cancel();
        Bytes::from_static(b"+OK\r\n")
    }

    fn reload(&mut self) -> Bytes {
        match self.shared.process.reload_config() {
            Ok(report) => Reply::status_or_bulk(&report),
            Err(why) => error_line("ERR", &why),
        }
    }

    /// `RESPOOL SLOWLOG GET [count] | LEN | RESET`.
    fn slowlog(&mut self, args: &[&[u8]]) -> Bytes {
        let slowlog = &self.shared.process.slowlog;
        let sub = args.first().map(|s| s.to_ascii_uppercase());
        match (sub.as_deref(), &args[args.len().min(1)..]) {
            (Some(b"GET"), []) => self.slow_entries(&slowlog.newest(None)),
            (Some(b"GET"), [count]) => {
                // Redis: -1 means all; otherwise a non-negative count.
                match std::str::from_utf8(count)
                    .ok()
                    .and_then(|c| c.parse::<i64>().ok())
                {
                    Some(-1) => self.slow_entries(&slowlog.newest(Some(usize::MAX))),
                    Some(n) if n >= 0 => self.slow_entries(
                        &slowlog.newest(Some(usize::try_from(n).unwrap_or(usize::MAX))),
                    ),
                    _ => error_line("ERR", "count should be greater than or equal to -1"),
                }
            }
            (Some(b"LEN"), []) => Bytes::from(format!(":{}\r\n", slowlog.len())),
            (Some(b"RESET"), []) => {
                slowlog.reset();
                Bytes::from_static(b"+OK\r\n")
            }
            _ => error_line("ERR", "RESPOOL SLOWLOG takes GET [count], LEN or RESET"),
        }
    }

    /// Entries as Redis's SLOWLOG GET gives them — id, unix time, total
    /// microseconds, the command's arguments, client address, client name
    /// — followed by respool's: microseconds queued in respool,
    /// microseconds at Redis, client id, identity, upstream, requests in
    /// the run.
    fn slow_entries(&self, entries: &[SlowEntry]) -> Bytes {
        let mut reply = Reply::new(self.protocol);
        reply.array(entries.len());
        for e in entries {
            reply.array(12);
            reply.int(i64::try_from(e.id).unwrap_or(i64::MAX));
            reply.int(i64::try_from(e.unix_time).unwrap_or(i64::MAX));
            reply.field(&Field::from(micros(e.total)));
            let argv = e.shown_argv();
            reply.array(argv.len());
            for arg in &argv {
                reply.bulk(arg);
            }
            reply.bulk(e.addr_text().as_bytes());
            reply.bulk(e.client_name.as_deref().unwrap_or_default());
            reply.field(&Field::from(micros(e.queued)));
            reply.field(&Field::from(micros(e.at_redis)));
            reply.field(&Field::from(e.client_id));
            reply.bulk(e.identity.as_bytes());
            reply.bulk(e.upstream.as_bytes());
            reply.field(&Field::from(e.requests));
        }
        reply.finish()
    }
}

impl Reply {
    /// A one-line answer as a status reply; anything longer as bulk.
    fn status_or_bulk(text: &str) -> Bytes {
        if text.contains(['\r', '\n']) {
            super::local::bulk(text.as_bytes())
        } else {
            Bytes::from(format!("+{text}\r\n"))
        }
    }
}

/// Redis's error for a subcommand given the wrong arguments.
fn wrong_args(sub: &str) -> Bytes {
    error_line(
        "ERR",
        &format!(
            "wrong number of arguments for 'respool|{}' command",
            sub.to_ascii_lowercase()
        ),
    )
}

/// A pause timeout: milliseconds (as `CLIENT PAUSE` takes them) or a
/// duration with a unit; more than zero.
fn parse_timeout(arg: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(arg).ok()?;
    let timeout = match text.parse::<u64>() {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => crate::config::parse_duration(text).ok()?,
    };
    (!timeout.is_zero()).then_some(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_maps_in_resp3_and_flat_arrays_in_resp2() {
        let fields = [("id", Field::Int(7)), ("addr", Field::from("1.2.3.4:5"))];
        let mut r2 = Reply::new(2);
        r2.record(&fields);
        assert_eq!(
            &r2.finish()[..],
            b"*4\r\n$2\r\nid\r\n:7\r\n$4\r\naddr\r\n$9\r\n1.2.3.4:5\r\n"
        );
        let mut r3 = Reply::new(3);
        r3.record(&fields);
        assert!(r3.finish().starts_with(b"%2\r\n$2\r\nid\r\n:7\r\n"));
    }

    #[test]
    fn pause_timeouts() {
        assert_eq!(parse_timeout(b"1500"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timeout(b"2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"0"), None);
        assert_eq!(parse_timeout(b"soon"), None);
    }
}
