//! The slowlog: runs of requests slower than `--slowlog-threshold` through
//! respool, as `RESPOOL SLOWLOG GET | LEN | RESET` shows them, each also a
//! log line.
//!
//! What is timed is a run on a shared lane (one or more consecutive
//! requests of one client, which a lane takes, writes and answers as one):
//! from the lane taking it to its last reply, split into the time queued in
//! respool (taken → written to the upstream connection) and the time at
//! Redis (written → last reply). The lane reads the clock once per batch
//! of replies it reads, and only when the slowlog is on; everything else
//! here runs for slow runs alone.
//!
//! Argument values are kept only with `--slowlog-args` (they may be
//! secrets); then, like Redis, at most [`MAX_ARGS`] arguments of at most
//! [`MAX_ARG_LEN`] bytes each.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::client::roster::Roster;
use crate::codec::RequestRef;
use crate::config::AdminSettings;

/// Arguments kept per entry with `--slowlog-args` (Redis's
/// `SLOWLOG_ENTRY_MAX_ARGC`); past it, the last says how many more there were.
pub(crate) const MAX_ARGS: usize = 32;
/// Bytes kept per argument (Redis's `SLOWLOG_ENTRY_MAX_STRING`).
pub(crate) const MAX_ARG_LEN: usize = 128;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Slowlog {
    /// Slower than this is recorded; `None`: off.
    threshold: Option<Duration>,
    max_len: usize,
    keep_args: bool,
    next_id: AtomicU64,
    entries: Mutex<Entries>,
    /// Where a client's address, name and identity are looked up.
    roster: Weak<Roster>,
}

/// Log lines a second at most: when everything is slow (an overloaded
/// Redis), a line per request would add to the overload.
const LOG_LINES_PER_SECOND: u32 = 10;

/// The entries, newest first, and the log lines' budget.
#[derive(Debug, Default)]
struct Entries {
    newest_first: VecDeque<SlowEntry>,
    /// The second the log budget counts in, and lines logged in it.
    log_window: Option<Instant>,
    logged: u32,
    /// Slow runs not logged since the last line.
    not_logged: u64,
}

/// One slow run, as `RESPOOL SLOWLOG GET` shows it.
#[derive(Debug, Clone)]
pub(crate) struct SlowEntry {
    /// Unique, growing (Redis's entry id).
    pub id: u64,
    /// When it finished, in seconds since the Unix epoch.
    pub unix_time: u64,
    /// Taken by the lane → last reply.
    pub total: Duration,
    /// Taken by the lane → written to the upstream connection.
    pub queued: Duration,
    /// Written → last reply.
    pub at_redis: Duration,
    /// The run's first command: its name, then (with `--slowlog-args`)
    /// its arguments, truncated.
    pub argv: Vec<Bytes>,
    /// Arguments left out (without `--slowlog-args`).
    pub hidden_args: usize,
    /// Requests in the run (a pipeline's requests are answered together).
    pub requests: u32,
    pub client_id: u64,
    /// `None` for a client that had gone.
    pub client_addr: Option<crate::net::PeerAddr>,
    pub client_name: Option<Bytes>,
    /// The user the client's commands run as upstream.
    pub identity: Arc<str>,
    /// The upstream node's address.
    pub upstream: Arc<str>,
}

impl SlowEntry {
    /// The command as `SLOWLOG GET` shows it: `argv`, then a note of the
    /// arguments left out, if any.
    pub fn shown_argv(&self) -> Vec<Bytes> {
        let mut shown = self.argv.clone();
        if self.hidden_args > 0 {
            shown.push(Bytes::from(format!(
                "({} argument{} hidden: --slowlog-args is off)",
                self.hidden_args,
                if self.hidden_args == 1 { "" } else { "s" }
            )));
        }
        shown
    }

    /// The client's address as Redis writes it (`?:0` when unknown).
    pub fn addr_text(&self) -> String {
        self.client_addr
            .as_ref()
            .map_or_else(|| "?:0".to_string(), |a| a.to_string())
    }
}

/// What a lane knows of a slow run when its last reply arrives.
pub(crate) struct SlowRun<'a> {
    /// The run's requests (its first is named).
    pub raw: &'a [u8],
    pub requests: u32,
    pub client_id: u64,
    pub upstream: Arc<str>,
    pub queued: Duration,
    pub at_redis: Duration,
}

impl Slowlog {
    /// A slowlog as `settings` say, looking clients up in `roster`.
    pub fn new(settings: &AdminSettings, roster: Weak<Roster>) -> Slowlog {
        Slowlog {
            threshold: settings.slowlog_threshold,
            max_len: settings.slowlog_max_len.max(1),
            keep_args: settings.slowlog_args,
            next_id: AtomicU64::new(0),
            entries: Mutex::default(),
            roster,
        }
    }

    /// The threshold, if the slowlog is on (what the lanes check).
    #[inline]
    pub fn threshold(&self) -> Option<Duration> {
        self.threshold
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Nothing panics while holding it; a poisoned log is intact.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a run that took longer than the threshold, and logs it.
    #[cold]
    pub fn record(&self, run: SlowRun<'_>) {
        let total = run.queued + run.at_redis;
        let member = self.roster.upgrade().and_then(|r| r.get(run.client_id));
        let (client_addr, client_name, identity) = match &member {
            Some(m) => {
                let published = m.published();
                (m.addr(), published.name, published.user)
            }
            None => (None, None, Arc::from("")),
        };
        let (argv, hidden_args) = argv(run.raw, self.keep_args);
        let entry = SlowEntry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            total,
            queued: run.queued,
            at_redis: run.at_redis,
            argv,
            hidden_args,
            requests: run.requests,
            client_id: run.client_id,
            client_addr,
            client_name,
            identity,
            upstream: run.upstream,
        };
        let mut entries = self.lock();
        let now = Instant::now();
        if entries
            .log_window
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1))
        {
            entries.log_window = Some(now);
            entries.logged = 0;
        }
        if entries.logged < LOG_LINES_PER_SECOND {
            entries.logged += 1;
            let not_logged = std::mem::take(&mut entries.not_logged);
            let command = entry
                .argv
                .first()
                .map(|n| String::from_utf8_lossy(n).to_ascii_lowercase())
                .unwrap_or_default();
            // Never the arguments in the log line: logs travel further than
            // the slowlog.
            tracing::info!(
                command = %command,
                requests = entry.requests,
                client = entry.client_id,
                addr = %entry.addr_text(),
                identity = %entry.identity,
                upstream = %entry.upstream,
                total_us = micros(total),
                queued_us = micros(entry.queued),
                at_redis_us = micros(entry.at_redis),
                not_logged,
                "slow request (--slowlog-threshold)"
            );
        } else {
            entries.not_logged += 1;
        }
        if entries.newest_first.len() >= self.max_len {
            entries.newest_first.pop_back();
        }
        entries.newest_first.push_front(entry);
    }

    /// The newest `n` entries, newest first (`SLOWLOG GET [n]`; `None`:
    /// Redis's default of 10).
    pub fn newest(&self, n: Option<usize>) -> Vec<SlowEntry> {
        self.lock()
            .newest_first
            .iter()
            .take(n.unwrap_or(10))
            .cloned()
            .collect()
    }

    /// Entries kept (`SLOWLOG LEN`).
    pub fn len(&self) -> usize {
        self.lock().newest_first.len()
    }

    /// Forgets every entry (`SLOWLOG RESET`).
    pub fn reset(&self) {
        self.lock().newest_first.clear();
    }
}

/// Whole microseconds, as Redis's slowlog counts.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The first request of `raw` as a slowlog keeps it: its name, and either
/// its arguments (truncated as Redis truncates them) or how many there were.
fn argv(raw: &[u8], keep_args: bool) -> (Vec<Bytes>, usize) {
    let Some(req) = RequestRef::first_of(raw) else {
        return (vec![Bytes::from_static(b"?")], 0);
    };
    let argc = req.argc();
    let name = Bytes::copy_from_slice(req.name());
    if !keep_args {
        return (vec![name], argc.saturating_sub(1));
    }
    let kept = if argc > MAX_ARGS { MAX_ARGS - 1 } else { argc };
    let mut argv = Vec::with_capacity(kept + 1);
    argv.push(name);
    for arg in req.args().take(kept).skip(1) {
        if arg.len() > MAX_ARG_LEN {
            let mut shown = arg[..MAX_ARG_LEN].to_vec();
            shown.extend_from_slice(
                format!("... ({} more bytes)", arg.len() - MAX_ARG_LEN).as_bytes(),
            );
            argv.push(Bytes::from(shown));
        } else {
            argv.push(Bytes::copy_from_slice(arg));
        }
    }
    if argc > kept {
        argv.push(Bytes::from(format!("... ({} more arguments)", argc - kept)));
    }
    (argv, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Request;

    fn settings(max_len: usize, args: bool) -> AdminSettings {
        AdminSettings {
            admin_user: None,
            slowlog_threshold: Some(Duration::ZERO),
            slowlog_max_len: max_len,
            slowlog_args: args,
        }
    }

    fn run(raw: &[u8]) -> SlowRun<'_> {
        SlowRun {
            raw,
            requests: 1,
            client_id: 9,
            upstream: Arc::from("127.0.0.1:6379"),
            queued: Duration::from_micros(5),
            at_redis: Duration::from_millis(50),
        }
    }

    const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$6\r\nsecret\r\n";

    #[test]
    fn arguments_are_hidden_unless_asked_for() {
        let log = Slowlog::new(&settings(10, false), Weak::new());
        log.record(run(SET));
        let entry = &log.newest(None)[0];
        let argv = entry.shown_argv();
        assert_eq!(argv[0], "SET");
        assert_eq!(argv[1], "(2 arguments hidden: --slowlog-args is off)");
        assert_eq!(entry.total, Duration::from_micros(50_005));
        assert!(!format!("{entry:?}").contains("secret"));
        let shown = Slowlog::new(&settings(10, true), Weak::new());
        shown.record(run(SET));
        assert_eq!(shown.newest(None)[0].argv, ["SET", "key", "secret"]);
    }

    #[test]
    fn long_arguments_and_long_commands_are_truncated_like_redis() {
        let long = "x".repeat(200);
        let mut args: Vec<&str> = vec!["MSET"];
        args.extend(std::iter::repeat_n(long.as_str(), 40));
        let req = Request::from_args(&args);
        let log = Slowlog::new(&settings(10, true), Weak::new());
        log.record(run(req.raw()));
        let argv = &log.newest(None)[0].argv;
        assert_eq!(argv.len(), MAX_ARGS);
        assert!(argv[1].ends_with(b"... (72 more bytes)"));
        assert_eq!(argv[31], "... (10 more arguments)");
    }

    #[test]
    fn the_oldest_entries_go_first_and_reset_forgets_all() {
        let log = Slowlog::new(&settings(2, false), Weak::new());
        for _ in 0..3 {
            log.record(run(b"*1\r\n$4\r\nPING\r\n"));
        }
        assert_eq!(log.len(), 2);
        let ids: Vec<u64> = log.newest(Some(5)).iter().map(|e| e.id).collect();
        assert_eq!(ids, [2, 1]);
        log.reset();
        assert_eq!(log.len(), 0);
    }
}
