//! Command classification: which path a request takes through respool, and
//! whether it may be sent again after its connection was lost.
//!
//! The table covers Redis 7. Anything not listed is an ordinary command: it
//! goes through a shared lane and is never retried once written, so an unknown
//! command reaches Redis (whose error text then reaches the client) and an
//! unknown write is never applied twice.

#[cfg(test)]
use crate::codec::Request;
use crate::codec::RequestRef;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Multiplexed with other clients' commands over a shared lane.
    Shared,
    /// Leaves state on the connection that outlives its reply (or blocks it),
    /// so it needs a connection of its own for as long as that state lives.
    Dedicated(Stateful),
    /// Answered by respool without going upstream.
    Local(Local),
    /// Must reach Redis while it is busy running a script or function
    /// (`SCRIPT KILL`, `FUNCTION KILL`): sent on a connection of its own,
    /// never queued behind the command it is meant to stop.
    Urgent,
    /// Refused by policy: it would break the pool or other clients.
    Denied,
    /// A browser or HTTP client talking to the Redis port (cross-protocol
    /// scripting): the connection is closed without a reply, as Redis does.
    Attack,
}

/// Which connection state a command creates, changes or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stateful {
    /// `MULTI`.
    Multi,
    /// `EXEC`.
    Exec,
    /// `DISCARD`.
    Discard,
    /// `WATCH`.
    Watch,
    /// `UNWATCH`.
    Unwatch,
    /// A command that may block the connection until data arrives.
    Blocking,
    /// `SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`.
    Subscribe(SubKind),
    /// `UNSUBSCRIBE`, `PUNSUBSCRIBE`, `SUNSUBSCRIBE`.
    Unsubscribe(SubKind),
    /// `SELECT` of a database other than the configured one.
    Select,
    /// `CLIENT REPLY ON|OFF|SKIP`.
    ClientReply,
    /// `CLIENT TRACKING`, `CLIENT CACHING`, `CLIENT NO-EVICT`, `CLIENT NO-TOUCH`,
    /// `READONLY`, `READWRITE`, `ASKING`: flags that live on the connection.
    ConnectionFlag,
    /// `MONITOR`.
    Monitor,
}

/// The three pub/sub namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    /// Channels (`SUBSCRIBE`).
    Channel,
    /// Patterns (`PSUBSCRIBE`).
    Pattern,
    /// Shard channels (`SSUBSCRIBE`).
    Shard,
}

/// Commands respool answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// `+OK`, then close the connection.
    Quit,
    /// `AUTH`: checked against respool's own client users (`--requirepass`, `--user`).
    Auth,
    /// `HELLO`: protocol switch (RESP2/RESP3 lanes), HELLO AUTH and SETNAME.
    Hello,
    /// `+OK` without doing anything (`CLIENT SETINFO`, which would otherwise
    /// label a shared connection).
    Ok,
    /// `SELECT` of the configured database: `+OK` on shared lanes.
    SelectDefault,
    /// `RESET`: reset the client's own state (and its pinned session).
    Reset,
    /// `CLIENT ID`: the client's id in respool.
    ClientId,
    /// `CLIENT GETNAME`.
    ClientGetName,
    /// `CLIENT SETNAME`: kept by respool, so naming a client does not pin it.
    ClientSetName,
    /// `INFO respool`: respool's own counters (Redis has no such section).
    Stats,
    /// CLIENT subcommands about clients, answered in respool's terms.
    Client(ClientCommand),
    /// `INFO` with its `clients` section: Redis's reply, with
    /// `connected_clients` counting respool's clients.
    Info,
    /// `RESPOOL …`: the admin console (`--admin-user`), respool's own
    /// command (Redis has none by that name).
    Admin,
}

/// The CLIENT subcommands that act on clients: respool's clients are not
/// Redis's, so respool answers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCommand {
    /// `CLIENT LIST`: respool's clients, in Redis's format.
    List,
    /// `CLIENT INFO`: this client, in Redis's format.
    Info,
    /// `CLIENT KILL`: closes respool's clients.
    Kill,
    /// `CLIENT UNBLOCK`: translated to the target's pinned connection.
    Unblock,
    /// `CLIENT PAUSE`: respool holds the requests it would forward.
    Pause,
    /// `CLIENT UNPAUSE`.
    Unpause,
}

/// The result of classifying one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// Where it goes.
    pub route: Route,
    /// May be sent again after the connection was lost with the request
    /// already written (read-only commands only).
    pub retry_safe: bool,
}

impl Command {
    const fn shared(retry_safe: bool) -> Command {
        Command {
            route: Route::Shared,
            retry_safe,
        }
    }
    pub(crate) const fn dedicated(state: Stateful) -> Command {
        Command {
            route: Route::Dedicated(state),
            retry_safe: false,
        }
    }
    const fn local(l: Local) -> Command {
        Command {
            route: Route::Local(l),
            retry_safe: false,
        }
    }
    const DENIED: Command = Command {
        route: Route::Denied,
        retry_safe: false,
    };
}

/// Longest command name in the table (`GEORADIUSBYMEMBER_RO`).
const MAX_NAME: usize = 24;

/// Classifies a request. `db` is the database the upstream connections use.
pub fn classify(req: RequestRef<'_>, db: u32) -> Command {
    let name = req.name();
    if name.len() > MAX_NAME {
        return Command::shared(false);
    }
    let mut upper = [0u8; MAX_NAME];
    let upper = &mut upper[..name.len()];
    upper.copy_from_slice(name);
    upper.make_ascii_uppercase();

    match &*upper {
        // Answered locally.
        b"QUIT" => Command::local(Local::Quit),
        b"AUTH" => Command::local(Local::Auth),
        b"HELLO" => Command::local(Local::Hello),
        b"RESET" => Command::local(Local::Reset),
        b"SELECT" => match req
            .arg(1)
            .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u32>().ok())
        {
            Some(n) if n == db => Command::local(Local::SelectDefault),
            _ => Command::dedicated(Stateful::Select),
        },
        b"CLIENT" => classify_client(req),
        b"RESPOOL" => Command::local(Local::Admin),
        b"INFO"
            if req.argc() == 2
                && req
                    .arg(1)
                    .is_some_and(|s| s.eq_ignore_ascii_case(b"respool")) =>
        {
            Command::local(Local::Stats)
        }
        b"INFO"
            if req.argc() == 1
                || req.args().skip(1).any(|s| {
                    [&b"clients"[..], b"default", b"all", b"everything"]
                        .iter()
                        .any(|section| s.eq_ignore_ascii_case(section))
                }) =>
        {
            Command {
                route: Route::Local(Local::Info),
                retry_safe: true,
            }
        }

        // Connection state that outlives the reply.
        b"MULTI" => Command::dedicated(Stateful::Multi),
        b"EXEC" => Command::dedicated(Stateful::Exec),
        b"DISCARD" => Command::dedicated(Stateful::Discard),
        b"WATCH" => Command::dedicated(Stateful::Watch),
        b"UNWATCH" => Command::dedicated(Stateful::Unwatch),
        b"BLPOP" | b"BRPOP" | b"BLMOVE" | b"BRPOPLPUSH" | b"BLMPOP" | b"BZPOPMIN" | b"BZPOPMAX"
        | b"BZMPOP" | b"WAIT" | b"WAITAOF" => Command::dedicated(Stateful::Blocking),
        b"XREAD" | b"XREADGROUP" if has_option(req, 1, b"BLOCK") => {
            Command::dedicated(Stateful::Blocking)
        }
        b"XREAD" => Command::shared(true),
        b"SUBSCRIBE" => Command::dedicated(Stateful::Subscribe(SubKind::Channel)),
        b"PSUBSCRIBE" => Command::dedicated(Stateful::Subscribe(SubKind::Pattern)),
        b"SSUBSCRIBE" => Command::dedicated(Stateful::Subscribe(SubKind::Shard)),
        b"UNSUBSCRIBE" => Command::dedicated(Stateful::Unsubscribe(SubKind::Channel)),
        b"PUNSUBSCRIBE" => Command::dedicated(Stateful::Unsubscribe(SubKind::Pattern)),
        b"SUNSUBSCRIBE" => Command::dedicated(Stateful::Unsubscribe(SubKind::Shard)),
        b"MONITOR" => Command::dedicated(Stateful::Monitor),
        b"READONLY" | b"READWRITE" | b"ASKING" => Command::dedicated(Stateful::ConnectionFlag),

        // Would break the pool or every other client.
        b"SYNC" | b"PSYNC" | b"REPLCONF" | b"SHUTDOWN" => Command::DENIED,
        b"SCRIPT" | b"FUNCTION" if req.arg(1).is_some_and(|s| s.eq_ignore_ascii_case(b"KILL")) => {
            Command {
                route: Route::Urgent,
                retry_safe: false,
            }
        }
        b"DEBUG" => match req.arg(1) {
            Some(sub)
                if [
                    &b"SLEEP"[..],
                    b"RELOAD",
                    b"SEGFAULT",
                    b"RESTART",
                    b"CRASH-AND-RECOVER",
                    b"PANIC",
                    b"LOADAOF",
                ]
                .iter()
                .any(|s| sub.eq_ignore_ascii_case(s)) =>
            {
                Command::DENIED
            }
            _ => Command::shared(false),
        },

        // Cross-protocol scripting (an HTTP request on the Redis port).
        b"POST" | b"HOST:" => Command {
            route: Route::Attack,
            retry_safe: false,
        },

        // Writes are never resent once written, not even "idempotent" ones:
        // replaying SET k v after another client's SET k w would undo theirs.
        name if is_read_only(name) => Command::shared(true),
        _ => Command::shared(false),
    }
}

fn classify_client(req: RequestRef<'_>) -> Command {
    let Some(sub) = req.arg(1) else {
        return Command::shared(false);
    };
    let is = |s: &[u8]| sub.eq_ignore_ascii_case(s);
    if is(b"SETINFO") {
        Command::local(Local::Ok)
    } else if is(b"ID") {
        Command::local(Local::ClientId)
    } else if is(b"GETNAME") {
        Command::local(Local::ClientGetName)
    } else if is(b"SETNAME") {
        Command::local(Local::ClientSetName)
    } else if is(b"REPLY") {
        Command::dedicated(Stateful::ClientReply)
    } else if is(b"TRACKING") || is(b"CACHING") || is(b"NO-EVICT") || is(b"NO-TOUCH") {
        Command::dedicated(Stateful::ConnectionFlag)
    } else if let Some(client) = [
        (&b"LIST"[..], ClientCommand::List),
        (b"INFO", ClientCommand::Info),
        (b"KILL", ClientCommand::Kill),
        (b"UNBLOCK", ClientCommand::Unblock),
        (b"PAUSE", ClientCommand::Pause),
        (b"UNPAUSE", ClientCommand::Unpause),
    ]
    .iter()
    .find(|(name, _)| is(name))
    {
        Command::local(Local::Client(client.1))
    } else {
        Command::shared(false)
    }
}

/// Commands refused by `--deny-command NAME` (or `NAME|SUBCOMMAND`).
#[derive(Debug, Clone, Default)]
pub struct DenyList {
    names: std::collections::HashSet<Vec<u8>>,
}

impl DenyList {
    /// Builds the list from flag values, case-insensitively.
    pub fn new<S: AsRef<str>>(names: &[S]) -> DenyList {
        DenyList {
            names: names
                .iter()
                .map(|n| n.as_ref().to_ascii_uppercase().into_bytes())
                .collect(),
        }
    }

    /// The refused names, sorted (`RESPOOL CONFIG`).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .names
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        names.sort_unstable();
        names
    }

    /// True when the request's command (or command|subcommand) is denied.
    pub fn denies(&self, req: RequestRef<'_>) -> bool {
        if self.names.is_empty() {
            return false;
        }
        let mut key = req.name().to_ascii_uppercase();
        if self.names.contains(&key) {
            return true;
        }
        match req.arg(1) {
            Some(sub) => {
                key.push(b'|');
                key.extend(sub.iter().map(u8::to_ascii_uppercase));
                self.names.contains(&key)
            }
            None => false,
        }
    }
}

/// True when `word` is one of the options from position `from` on, looking
/// no further than `STREAMS` (after which XREAD's arguments are stream names
/// and ids, not options).
fn has_option(req: RequestRef<'_>, from: usize, word: &[u8]) -> bool {
    req.args()
        .skip(from)
        .take_while(|a| !a.eq_ignore_ascii_case(b"STREAMS"))
        .any(|a| a.eq_ignore_ascii_case(word))
}

/// Whether a command classified `retry_safe` (read-only) reads data that a
/// replica can answer as well as the primary: not a script (`EVAL_RO` and
/// the like go to the primary), nor a question about the server itself
/// (`INFO`, `TIME`, `PING`, …). Asked only when replicas take reads, so
/// that the table costs nothing otherwise.
pub fn reads_data(req: RequestRef<'_>) -> bool {
    let name = req.name();
    if name.len() > MAX_NAME {
        return false;
    }
    let mut upper = [0u8; MAX_NAME];
    let upper = &mut upper[..name.len()];
    upper.copy_from_slice(name);
    upper.make_ascii_uppercase();
    !matches!(
        &*upper,
        b"EVAL_RO"
            | b"EVALSHA_RO"
            | b"FCALL_RO"
            | b"PING"
            | b"ECHO"
            | b"TIME"
            | b"INFO"
            | b"LASTSAVE"
            | b"ROLE"
            | b"COMMAND"
            | b"LOLWUT"
            | b"MEMORY"
    )
}

fn is_read_only(upper: &[u8]) -> bool {
    matches!(
        upper,
        b"GET"
            | b"MGET"
            | b"STRLEN"
            | b"GETRANGE"
            | b"SUBSTR"
            | b"EXISTS"
            | b"TTL"
            | b"PTTL"
            | b"EXPIRETIME"
            | b"PEXPIRETIME"
            | b"TYPE"
            | b"KEYS"
            | b"SCAN"
            | b"RANDOMKEY"
            | b"DBSIZE"
            | b"DUMP"
            | b"OBJECT"
            | b"MEMORY"
            | b"LCS"
            | b"TOUCH"
            | b"HGET"
            | b"HMGET"
            | b"HGETALL"
            | b"HKEYS"
            | b"HVALS"
            | b"HLEN"
            | b"HEXISTS"
            | b"HSTRLEN"
            | b"HRANDFIELD"
            | b"HSCAN"
            | b"LRANGE"
            | b"LLEN"
            | b"LINDEX"
            | b"LPOS"
            | b"SMEMBERS"
            | b"SISMEMBER"
            | b"SMISMEMBER"
            | b"SCARD"
            | b"SRANDMEMBER"
            | b"SINTER"
            | b"SINTERCARD"
            | b"SUNION"
            | b"SDIFF"
            | b"SSCAN"
            | b"ZRANGE"
            | b"ZRANGEBYSCORE"
            | b"ZRANGEBYLEX"
            | b"ZREVRANGE"
            | b"ZREVRANGEBYSCORE"
            | b"ZREVRANGEBYLEX"
            | b"ZRANK"
            | b"ZREVRANK"
            | b"ZSCORE"
            | b"ZMSCORE"
            | b"ZCARD"
            | b"ZCOUNT"
            | b"ZLEXCOUNT"
            | b"ZRANDMEMBER"
            | b"ZSCAN"
            | b"ZINTER"
            | b"ZUNION"
            | b"ZDIFF"
            | b"ZINTERCARD"
            | b"XRANGE"
            | b"XREVRANGE"
            | b"XLEN"
            | b"XINFO"
            | b"XPENDING"
            | b"GETBIT"
            | b"BITCOUNT"
            | b"BITPOS"
            | b"BITFIELD_RO"
            | b"GEOPOS"
            | b"GEODIST"
            | b"GEOHASH"
            | b"GEORADIUS_RO"
            | b"GEORADIUSBYMEMBER_RO"
            | b"GEOSEARCH"
            | b"PFCOUNT"
            | b"SORT_RO"
            | b"EVAL_RO"
            | b"EVALSHA_RO"
            | b"FCALL_RO"
            | b"PING"
            | b"ECHO"
            | b"TIME"
            | b"INFO"
            | b"LASTSAVE"
            | b"ROLE"
            | b"COMMAND"
            | b"LOLWUT"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(args: &[&str]) -> Command {
        classify(Request::from_args(args).view(), 0)
    }

    #[test]
    fn ordinary_commands_share_lanes() {
        assert_eq!(class(&["get", "k"]), Command::shared(true));
        assert_eq!(class(&["INCR", "k"]), Command::shared(false));
        assert_eq!(class(&["EVAL", "return 1", "0"]), Command::shared(false));
        assert_eq!(class(&["NOSUCHCOMMAND"]), Command::shared(false));
        assert_eq!(class(&["ping"]), Command::shared(true));
    }

    #[test]
    fn replicas_take_reads_of_data_only() {
        for read in [
            &["GET", "k"][..],
            &["hgetall", "h"],
            &["SCAN", "0"],
            &["XREAD", "STREAMS", "s", "0"],
        ] {
            let req = Request::from_args(read);
            assert!(class(read).retry_safe && reads_data(req.view()), "{read:?}");
        }
        for primary in [
            &["SET", "k", "v"][..],
            &["EVAL_RO", "return 1", "0"],
            &["FCALL_RO", "f", "0"],
            &["PING"],
            &["INFO", "server"],
            &["TIME"],
            &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"],
        ] {
            let req = Request::from_args(primary);
            assert!(
                !class(primary).retry_safe || !reads_data(req.view()),
                "{primary:?}"
            );
        }
    }

    #[test]
    fn only_reads_are_retry_safe() {
        assert!(class(&["GET", "k"]).retry_safe);
        assert!(class(&["XREAD", "STREAMS", "block", "0"]).retry_safe);
        for write in [
            &["SET", "k", "v"][..],
            &["MSET", "a", "1"],
            &["SETEX", "k", "1", "v"],
            &["INCR", "k"],
            &["EVAL", "x", "0"],
        ] {
            assert!(!class(write).retry_safe, "{write:?}");
        }
    }

    #[test]
    fn stateful_commands_need_their_own_connection() {
        for cmd in [
            &["MULTI"][..],
            &["watch", "k"],
            &["BLPOP", "l", "0"],
            &["subscribe", "c"],
            &["MONITOR"],
            &["SELECT", "3"],
            &["CLIENT", "TRACKING", "on"],
        ] {
            assert!(matches!(class(cmd).route, Route::Dedicated(_)), "{cmd:?}");
        }
        assert!(matches!(
            class(&["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]).route,
            Route::Dedicated(_)
        ));
        assert_eq!(class(&["XREAD", "STREAMS", "s", "0"]).route, Route::Shared);
    }

    #[test]
    fn deny_list_matches_names_and_subcommands() {
        let deny = DenyList::new(&["flushall", "CONFIG|SET"]);
        assert!(deny.denies(Request::from_args(&["FLUSHALL"]).view()));
        assert!(deny.denies(Request::from_args(&["config", "set", "x", "y"]).view()));
        assert!(!deny.denies(Request::from_args(&["CONFIG", "GET", "x"]).view()));
        assert!(!deny.denies(Request::from_args(&["GET", "k"]).view()));
    }

    #[test]
    fn local_and_denied() {
        assert_eq!(class(&["quit"]).route, Route::Local(Local::Quit));
        assert_eq!(
            class(&["SELECT", "0"]).route,
            Route::Local(Local::SelectDefault)
        );
        assert_eq!(
            classify(Request::from_args(&["SELECT", "2"]).view(), 2).route,
            Route::Local(Local::SelectDefault)
        );
        assert_eq!(
            class(&["CLIENT", "SETNAME", "x"]).route,
            Route::Local(Local::ClientSetName)
        );
        assert_eq!(
            class(&["client", "id"]).route,
            Route::Local(Local::ClientId)
        );
        assert_eq!(
            class(&["CLIENT", "SETINFO", "lib-name", "x"]).route,
            Route::Local(Local::Ok)
        );
        assert_eq!(
            class(&["info", "Respool"]).route,
            Route::Local(Local::Stats)
        );
        assert_eq!(
            class(&["respool", "pools"]).route,
            Route::Local(Local::Admin)
        );
        // Every other INFO is Redis's; with its clients section, counted
        // in respool's terms.
        for info in [&["INFO", "server"][..], &["INFO", "respool", "server"]] {
            assert_eq!(class(info).route, Route::Shared, "{info:?}");
        }
        for info in [
            &["INFO"][..],
            &["INFO", "Clients"],
            &["INFO", "server", "all"],
        ] {
            assert_eq!(class(info).route, Route::Local(Local::Info), "{info:?}");
        }
        assert_eq!(
            class(&["client", "kill", "id", "3"]).route,
            Route::Local(Local::Client(ClientCommand::Kill))
        );
        assert_eq!(class(&["SCRIPT", "kill"]).route, Route::Urgent);
        assert_eq!(class(&["function", "KILL"]).route, Route::Urgent);
        assert_eq!(class(&["SCRIPT", "LOAD", "x"]).route, Route::Shared);
        assert_eq!(class(&["SHUTDOWN"]).route, Route::Denied);
        assert_eq!(class(&["DEBUG", "sleep", "1"]).route, Route::Denied);
        assert_eq!(class(&["POST", "/", "HTTP/1.1"]).route, Route::Attack);
        assert_eq!(class(&["Host:", "x"]).route, Route::Attack);
    }
}
