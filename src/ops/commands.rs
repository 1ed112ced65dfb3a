//! The command names metrics are labelled with: Redis 7's commands, each
//! with a small id, and one label (`other`) for every name that is not one
//! of them, so that what a client sends can never grow the label set.
//!
//! The id is looked up once per request, so the lookup is a hash into a
//! table built at compile time, then one comparison: no allocation, no
//! string building, no lock (about 30 instructions for a name of up to 8
//! bytes).

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

/// The id of `CLUSTER`, which respool answers itself in cluster mode.
pub(crate) const CLUSTER: u16 = id_of("cluster");

/// The id of the lower-case `name`, at compile time ([`OTHER`] if it has
/// none).
const fn id_of(name: &str) -> u16 {
    let name = name.as_bytes();
    let mut id = 0;
    'names: while id < NAMES.len() {
        let candidate = NAMES[id].as_bytes();
        id += 1;
        if candidate.len() != name.len() {
            continue;
        }
        let mut i = 0;
        while i < name.len() {
            if candidate[i] != name[i] {
                continue 'names;
            }
            i += 1;
        }
        return (id - 1) as u16;
    }
    OTHER
}

/// Longest name in [`NAMES`]; a longer name is `other` at once.
const MAX_NAME: usize = 24;

/// Names of up to 8 bytes (nearly every command a client sends often) are
/// looked up as one word: the name in lower case, little-endian, in a
/// table keyed by that word and the length. Exact, and about 30
/// instructions. Longer names hash byte by byte and compare.
pub(crate) const SHORT: usize = 8;

/// Slots of each hash table: a power of two, at least twice the names.
const SLOTS: usize = 512;
const EMPTY: u16 = u16::MAX;

/// A slot of [`SHORT_TABLE`]: the name as a word, its length, its id.
#[derive(Clone, Copy)]
struct ShortSlot {
    key: u64,
    len: u8,
    id: u16,
}

const EMPTY_SHORT: ShortSlot = ShortSlot {
    key: 0,
    len: 0,
    id: EMPTY,
};

/// Names of up to [`SHORT`] bytes, by [`short_slot`] (open addressing,
/// linear probing), filled at compile time.
static SHORT_TABLE: [ShortSlot; SLOTS] = build_short();

/// Longer names, by [`long_hash`]: ids into [`NAMES`].
static LONG_TABLE: [u16; SLOTS] = build_long();

/// Lowers the ASCII capitals among the eight bytes of `x` (SWAR: no branch
/// per byte; bytes outside `A..=Z`, non-ASCII ones included, are kept).
const fn lower_word(x: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let heptets = x & LOW7;
    // The high bit of each byte says: heptet >= b'A', resp. > b'Z'.
    let at_least_a = heptets + 0x3f3f_3f3f_3f3f_3f3f;
    let above_z = heptets + 0x2525_2525_2525_2525;
    let capitals = at_least_a & !above_z & !x & HIGH;
    x | (capitals >> 2)
}

/// The bytes of `name` (at most 8) as a little-endian word, zero-padded.
#[inline]
fn load_short(name: &[u8]) -> u64 {
    let n = name.len();
    if n >= 4 {
        // Two overlapping 4-byte loads; the overlap ORs equal bytes.
        let lo = u64::from(u32::from_le_bytes([name[0], name[1], name[2], name[3]]));
        let hi = u64::from(u32::from_le_bytes([
            name[n - 4],
            name[n - 3],
            name[n - 2],
            name[n - 1],
        ]));
        lo | hi << ((n - 4) * 8)
    } else if n > 0 {
        u64::from(name[0])
            | u64::from(name[n / 2]) << (n / 2 * 8)
            | u64::from(name[n - 1]) << ((n - 1) * 8)
    } else {
        0
    }
}

/// The same as [`load_short`], for the table built at compile time.
const fn load_short_const(name: &[u8]) -> u64 {
    let mut key = 0u64;
    let mut i = 0;
    while i < name.len() {
        key |= (name[i] as u64) << (i * 8);
        i += 1;
    }
    key
}

/// The first slot to look at for the lower-case word `key`.
const fn short_slot(key: u64) -> usize {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 55) as usize
}

/// FNV-1a over the name with ASCII letters folded to lower case (`| 0x20`
/// folds a few other bytes together too: that only costs a probe, the
/// final comparison is exact).
const fn long_hash(name: &[u8]) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < name.len() {
        h ^= (name[i] | 0x20) as u32;
        h = h.wrapping_mul(0x0100_0193);
        i += 1;
    }
    (h >> 23) as usize
}

const fn build_short() -> [ShortSlot; SLOTS] {
    let mut table = [EMPTY_SHORT; SLOTS];
    let mut id = 0;
    while id < NAMES.len() {
        let name = NAMES[id].as_bytes();
        if name.len() <= SHORT {
            let key = load_short_const(name);
            let mut slot = short_slot(key);
            while table[slot].id != EMPTY {
                slot = (slot + 1) % SLOTS;
            }
            table[slot] = ShortSlot {
                key,
                len: name.len() as u8,
                id: id as u16,
            };
        }
        id += 1;
    }
    table
}

const fn build_long() -> [u16; SLOTS] {
    let mut table = [EMPTY; SLOTS];
    let mut id = 0;
    while id < NAMES.len() {
        let name = NAMES[id].as_bytes();
        assert!(name.len() <= MAX_NAME);
        if name.len() > SHORT {
            let mut slot = long_hash(name) % SLOTS;
            while table[slot] != EMPTY {
                slot = (slot + 1) % SLOTS;
            }
            table[slot] = id as u16;
        }
        id += 1;
    }
    table
}

/// A name of up to 8 bytes as one little-endian word, zero-padded, read
/// from `from_name` (the name and what follows it in the request) with one
/// load when 8 bytes are there; `None` for a longer name.
#[inline]
pub(crate) fn short_word(from_name: &[u8], len: usize) -> Option<u64> {
    if len > SHORT {
        return None;
    }
    Some(match from_name.first_chunk::<8>() {
        Some(bytes) => {
            u64::from_le_bytes(*bytes) & u64::MAX.checked_shr(64 - 8 * len as u32).unwrap_or(0)
        }
        None => load_short(from_name.get(..len)?),
    })
}

/// The id of the command `name` (any case): its index in the table, or
/// [`OTHER`].
#[inline]
pub(crate) fn command_id(name: &[u8]) -> u16 {
    if name.len() <= SHORT {
        short_id(load_short(name), name.len())
    } else {
        long_command_id(name)
    }
}

/// The id of the name of `len` bytes (at most 8) whose word is `word`
/// ([`short_word`]).
#[inline]
pub(crate) fn short_id(word: u64, len: usize) -> u16 {
    let key = lower_word(word);
    let mut slot = short_slot(key);
    loop {
        let entry = SHORT_TABLE[slot];
        if entry.id == EMPTY {
            return OTHER;
        }
        if entry.key == key && usize::from(entry.len) == len {
            return entry.id;
        }
        slot = (slot + 1) % SLOTS;
    }
}

/// [`command_id`] of a name longer than [`SHORT`] bytes.
#[cold]
pub(crate) fn long_command_id(name: &[u8]) -> u16 {
    if name.len() > MAX_NAME {
        return OTHER;
    }
    let mut slot = long_hash(name);
    loop {
        let id = LONG_TABLE[slot];
        if id == EMPTY {
            return OTHER;
        }
        if NAMES[usize::from(id)].as_bytes().eq_ignore_ascii_case(name) {
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
    fn ids_known_at_compile_time_are_the_lookups() {
        assert_eq!(CLUSTER, command_id(b"CLUSTER"));
        assert_ne!(CLUSTER, OTHER);
        assert_eq!(id_of("nosuch"), OTHER);
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
        // Short names: exact too (NUL padding, the bytes next to A..Z,
        // non-ASCII bytes that lose their high bit to nothing).
        for name in [
            &b"GET\0"[..],
            b"\0GET",
            b"GE@",
            b"GE[",
            b"ge\x74\x80",
            b"G\xc5T",
            b"SORT\x7fRO",
            b"EVAL-RO",
            b"get ",
        ] {
            assert_eq!(command_id(name), OTHER, "{name:?}");
        }
        assert_eq!(command_id(b"gEt"), command_id(b"GET"));
    }

    #[test]
    fn lowering_a_word_lowers_exactly_the_capitals() {
        for b in 0..=255u8 {
            let word = u64::from_le_bytes([b, b'A', b'Z', b'@', b'[', b'a', b'z', 0x80 | b'A']);
            let lowered = lower_word(word).to_le_bytes();
            let expected = word.to_le_bytes().map(|c| c.to_ascii_lowercase());
            assert_eq!(lowered, expected, "{b:#x}");
        }
    }

    #[test]
    fn short_loads_are_the_bytes_in_order() {
        for n in 0..=8 {
            let name: Vec<u8> = (1..=n as u8).collect();
            assert_eq!(load_short(&name), load_short_const(&name), "{n}");
            // Read from a request: with enough bytes after it, and without.
            let mut request = name.clone();
            request.extend_from_slice(b"\r\n$1\r\nk\r\n");
            assert_eq!(short_word(&request, n), Some(load_short(&name)), "{n}");
            assert_eq!(short_word(&name, n), Some(load_short(&name)), "{n}");
        }
        assert_eq!(short_word(b"GEORADIUS\r\n", 9), None);
        assert_eq!(short_word(b"GE", 3), None, "shorter than it says");
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
