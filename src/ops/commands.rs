//! The command names metrics are labelled with: Redis 7's commands, each
//! with a small id, and one label (`other`) for every name that is not one
//! of them, so that what a client sends can never grow the label set.
//!
//! The id is looked up once per request, so the lookup is a hash into a
//! table built at compile time, then one comparison: no allocation, no
//! string building, no lock.

/// Redis 7's commands (`COMMAND LIST` without subcommands), lower case,
/// sorted. Their index is the command's id.
const NAMES: &[&str] = &[
    "acl",
    "append",
    "asking",
    "auth",
    "bgrewriteaof",
    "bgsave",
    "bitcount",
    "bitfield",
    "bitfield_ro",
    "bitop",
    "bitpos",
    "blmove",
    "blmpop",
    "blpop",
    "brpop",
    "brpoplpush",
    "bzmpop",
    "bzpopmax",
    "bzpopmin",
    "client",
    "cluster",
    "command",
    "config",
    "copy",
    "dbsize",
    "debug",
    "decr",
    "decrby",
    "del",
    "discard",
    "dump",
    "echo",
    "eval",
    "eval_ro",
    "evalsha",
    "evalsha_ro",
    "exec",
    "exists",
    "expire",
    "expireat",
    "expiretime",
    "failover",
    "fcall",
    "fcall_ro",
    "flushall",
    "flushdb",
    "function",
    "geoadd",
    "geodist",
    "geohash",
    "geopos",
    "georadius",
    "georadius_ro",
    "georadiusbymember",
    "georadiusbymember_ro",
    "geosearch",
    "geosearchstore",
    "get",
    "getbit",
    "getdel",
    "getex",
    "getrange",
    "getset",
    "hdel",
    "hello",
    "hexists",
    "hget",
    "hgetall",
    "hincrby",
    "hincrbyfloat",
    "hkeys",
    "hlen",
    "hmget",
    "hmset",
    "hrandfield",
    "hscan",
    "hset",
    "hsetnx",
    "hstrlen",
    "hvals",
    "incr",
    "incrby",
    "incrbyfloat",
    "info",
    "keys",
    "lastsave",
    "latency",
    "lcs",
    "lindex",
    "linsert",
    "llen",
    "lmove",
    "lmpop",
    "lolwut",
    "lpop",
    "lpos",
    "lpush",
    "lpushx",
    "lrange",
    "lrem",
    "lset",
    "ltrim",
    "memory",
    "mget",
    "migrate",
    "module",
    "monitor",
    "move",
    "mset",
    "msetnx",
    "multi",
    "object",
    "persist",
    "pexpire",
    "pexpireat",
    "pexpiretime",
    "pfadd",
    "pfcount",
    "pfdebug",
    "pfmerge",
    "pfselftest",
    "ping",
    "psetex",
    "psubscribe",
    "psync",
    "pttl",
    "publish",
    "pubsub",
    "punsubscribe",
    "quit",
    "randomkey",
    "readonly",
    "readwrite",
    "rename",
    "renamenx",
    "replconf",
    "replicaof",
    "reset",
    "restore",
    "restore-asking",
    "role",
    "rpop",
    "rpoplpush",
    "rpush",
    "rpushx",
    "sadd",
    "save",
    "scan",
    "scard",
    "script",
    "sdiff",
    "sdiffstore",
    "select",
    "set",
    "setbit",
    "setex",
    "setnx",
    "setrange",
    "shutdown",
    "sinter",
    "sintercard",
    "sinterstore",
    "sismember",
    "slaveof",
    "slowlog",
    "smembers",
    "smismember",
    "smove",
    "sort",
    "sort_ro",
    "spop",
    "spublish",
    "srandmember",
    "srem",
    "sscan",
    "ssubscribe",
    "strlen",
    "subscribe",
    "substr",
    "sunion",
    "sunionstore",
    "sunsubscribe",
    "swapdb",
    "sync",
    "time",
    "touch",
    "ttl",
    "type",
    "unlink",
    "unsubscribe",
    "unwatch",
    "wait",
    "waitaof",
    "watch",
    "xack",
    "xadd",
    "xautoclaim",
    "xclaim",
    "xdel",
    "xgroup",
    "xinfo",
    "xlen",
    "xpending",
    "xrange",
    "xread",
    "xreadgroup",
    "xrevrange",
    "xsetid",
    "xtrim",
    "zadd",
    "zcard",
    "zcount",
    "zdiff",
    "zdiffstore",
    "zincrby",
    "zinter",
    "zintercard",
    "zinterstore",
    "zlexcount",
    "zmpop",
    "zmscore",
    "zpopmax",
    "zpopmin",
    "zrandmember",
    "zrange",
    "zrangebylex",
    "zrangebyscore",
    "zrangestore",
    "zrank",
    "zrem",
    "zremrangebylex",
    "zremrangebyrank",
    "zremrangebyscore",
    "zrevrange",
    "zrevrangebylex",
    "zrevrangebyscore",
    "zrevrank",
    "zscan",
    "zscore",
    "zunion",
    "zunionstore",
];

/// Commands with an id, plus `other`.
pub(crate) const COMMAND_IDS: usize = NAMES.len() + 1;

/// The id of every name not in [`NAMES`].
pub(crate) const OTHER: u16 = NAMES.len() as u16;

/// Longest name in [`NAMES`]; a longer name is `other` at once.
const MAX_NAME: usize = 24;

/// Slots of the hash table: a power of two, about four per name, so that
/// most lookups find their name in the first slot.
const SLOTS: usize = 1024;
const EMPTY: u16 = u16::MAX;

/// `slot → id`, filled at compile time (open addressing, linear probing).
static TABLE: [u16; SLOTS] = build();

/// FNV-1a over the name with ASCII letters folded to lower case (`| 0x20`
/// leaves digits, `_` and `-` distinct enough: a collision only costs a
/// probe, and the final comparison is exact).
const fn hash(name: &[u8]) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < name.len() {
        h ^= (name[i] | 0x20) as u32;
        h = h.wrapping_mul(0x0100_0193);
        i += 1;
    }
    (h >> 22) as usize
}

const fn build() -> [u16; SLOTS] {
    let mut table = [EMPTY; SLOTS];
    let mut id = 0;
    while id < NAMES.len() {
        let name = NAMES[id].as_bytes();
        assert!(name.len() <= MAX_NAME);
        let mut slot = hash(name) % SLOTS;
        while table[slot] != EMPTY {
            slot = (slot + 1) % SLOTS;
        }
        table[slot] = id as u16;
        id += 1;
    }
    table
}

/// The id of the command `name` (any case): its index in the table, or
/// [`OTHER`].
#[inline]
pub(crate) fn command_id(name: &[u8]) -> u16 {
    if name.len() > MAX_NAME {
        return OTHER;
    }
    let mut slot = hash(name);
    loop {
        let id = TABLE[slot];
        if id == EMPTY {
            return OTHER;
        }
        if NAMES[id as usize].as_bytes().eq_ignore_ascii_case(name) {
            return id;
        }
        slot = (slot + 1) % SLOTS;
    }
}

/// The label of command `id`.
pub(crate) fn command_name(id: usize) -> &'static str {
    NAMES.get(id).copied().unwrap_or("other")
}

/// The name of the `index`-th request of `run` (requests back to back, each
/// an array whose first element is the name, as lanes carry them); `None`
/// if `run` holds fewer requests or is not that shape. For the rare path
/// (an error reply), never per request.
pub(crate) fn nth_request_name(run: &[u8], index: u32) -> Option<&[u8]> {
    let mut at = 0;
    for _ in 0..index {
        at += crate::codec::request::first_request_len(&run[at..])?;
    }
    let req = &run[at..];
    // `*<argc>\r\n$<len>\r\n<name>\r\n`
    let header = crate::codec::find_crlf(req, 1)?;
    let bulk = req.get(header + 2..)?;
    if bulk.first() != Some(&b'$') {
        return None;
    }
    let len_end = crate::codec::find_crlf(bulk, 1)?;
    let len = usize::try_from(crate::codec::parse_int(&bulk[1..len_end])?).ok()?;
    bulk.get(len_end + 2..len_end + 2 + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_finds_its_own_id_in_any_case() {
        for (id, name) in NAMES.iter().enumerate() {
            assert_eq!(command_id(name.as_bytes()), id as u16, "{name}");
            let upper = name.to_ascii_uppercase();
            assert_eq!(command_id(upper.as_bytes()), id as u16, "{upper}");
            assert_eq!(command_name(id), *name);
        }
        assert!(
            NAMES.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
    }

    #[test]
    fn unknown_names_collapse_into_other() {
        for name in [&b"GETX"[..], b"", b"G", b"ge", b"\xff\x00", &[b'a'; 200]] {
            assert_eq!(command_id(name), OTHER, "{name:?}");
        }
        assert_eq!(command_name(OTHER as usize), "other");
        // Folding with `| 0x20` must not make `_` and DEL (0x7f) or `-` and
        // `\r` the same name.
        assert_eq!(command_id(b"GEORADIUS\x7fRO"), OTHER);
        assert_eq!(command_id(b"restore\x0dasking"), OTHER);
    }

    #[test]
    fn the_name_of_a_request_inside_a_run() {
        let run = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$4\r\nHSET\r\n$1\r\nh\r\n$1\r\nv\r\n";
        assert_eq!(nth_request_name(run, 0), Some(&b"GET"[..]));
        assert_eq!(nth_request_name(run, 1), Some(&b"HSET"[..]));
        assert_eq!(nth_request_name(run, 2), None);
        assert_eq!(nth_request_name(b"PING\r\n", 0), None);
        assert_eq!(nth_request_name(b"*1\r\n$9\r\nGET\r\n", 0), None);
    }
}
