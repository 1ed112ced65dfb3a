//! Where a command's keys are, and where a keyless one may go, as the
//! cluster itself says: the reply to `COMMAND` (key specs and command
//! tips, Redis 7), loaded from a node when respool first learns the slot
//! map. A command the reply does not know is sent to any node, whose
//! error for it the client then gets.
//!
//! A command is looked up by the id the client already found for its
//! counters ([`crate::ops::commands`]): one index, no hash of its name.
//! Commands without such an id (newer or module commands) and subcommands
//! cost one hash of the lower-cased name (FNV, on a stack buffer: no
//! allocation). A command whose only key is at a fixed position (most of
//! them) is answered without walking its key specs.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::codec::{RequestRef, Value};
use crate::ops::commands::{command_id, COMMAND_IDS, OTHER};

/// The longest command name (with `|subcommand`) looked up; longer ones
/// are unknown.
const MAX_NAME: usize = 64;

/// Commands Redis's tips send to every shard whose answer from any one
/// node is a right answer for a client of one Redis: a PING is answered,
/// a random key is a random key.
const ANY_NODE: [&[u8]; 3] = [b"ping", b"randomkey", b"echo"];

/// Where a request goes in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Its keys are all in this slot.
    Slot(u16),
    /// It has no keys and any node may answer it.
    AnyNode,
    /// Its keys are in different slots (Redis's `-CROSSSLOT`).
    CrossSlot,
    /// Redis's tips say it goes to every shard or node (DBSIZE, KEYS,
    /// FLUSHALL, SCRIPT LOAD, …), its replies merged as this says.
    Fanout(Fanout),
}

/// How the replies of a command sent to every primary are merged, from
/// its `response_policy` tip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fanout {
    /// `agg_sum`: the sum of the integers (DBSIZE).
    Sum,
    /// `all_succeeded`: the first error, else the first reply (FLUSHALL,
    /// SCRIPT LOAD, FUNCTION LOAD, CONFIG SET).
    AllSucceeded,
    /// No policy: the arrays one after the other (KEYS).
    Concat,
    /// `agg_logical_and`: element by element, 1 where every node said 1
    /// (SCRIPT EXISTS).
    LogicalAnd,
    /// A policy respool does not merge (WAIT's agg_min, INFO's …); SCAN,
    /// whose cursor respool encodes, comes through here too.
    Unsupported,
}

/// What one command's entry says.
#[derive(Debug, Clone)]
struct Entry {
    /// Redis's arity: the argument count (name included), or its minimum
    /// when negative.
    arity: i64,
    shape: Shape,
    specs: Box<[KeySpec]>,
}

/// How an entry places a request, decided once when the table is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// It has subcommands (`OBJECT ENCODING`, `XINFO STREAM`): the entry
    /// to use is `name|sub`'s.
    Container,
    /// It goes to every primary.
    Fanout(Fanout),
    /// Its only key is at this argument (the common case).
    SingleKey(usize),
    /// It has no keys.
    Keyless,
    /// Its keys are found by walking its key specs.
    Specs,
}

/// A Redis 7 key spec: where the search for keys begins, and how they are
/// found from there.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySpec {
    Range {
        begin: Begin,
        last: i64,
        step: usize,
        limit: usize,
    },
    KeyNum {
        begin: Begin,
        numkeys_at: usize,
        first: usize,
        step: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Begin {
    Index(usize),
    /// After the first argument equal to this word, searched from
    /// `from` (from the end when negative).
    Keyword(Box<[u8]>, i64),
}

/// FNV-1a, for short command names.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        self.0 = h;
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct KeyTable {
    /// The commands with an id, by id (`None`: the cluster did not list
    /// it).
    by_id: Box<[Option<Entry>]>,
    /// By id: the argument of a command's only key when that is all its
    /// entry says (its shape is [`Shape::SingleKey`]), else 0; one byte
    /// per command, read for every request.
    key_at: Box<[u8]>,
    /// Commands without an id, and subcommands (`name|sub`), by
    /// lower-cased name.
    by_name: HashMap<Box<[u8]>, Entry, BuildHasherDefault<Fnv>>,
}

impl Default for KeyTable {
    fn default() -> KeyTable {
        KeyTable {
            by_id: vec![None; COMMAND_IDS].into(),
            key_at: vec![0; COMMAND_IDS].into(),
            by_name: HashMap::default(),
        }
    }
}

impl KeyTable {
    /// Reads the reply to `COMMAND`; `None` if it is not one.
    pub fn parse(reply: &[u8]) -> Option<KeyTable> {
        let mut table = KeyTable::default();
        for command in Value::of_frame(reply).ok()?.elements()? {
            table.add(&command, None);
        }
        (table.len() > 0).then_some(table)
    }

    /// How many commands (and subcommands) it knows.
    pub fn len(&self) -> usize {
        self.by_id.iter().flatten().count() + self.by_name.len()
    }

    fn add(&mut self, command: &Value<'_>, parent: Option<&[u8]>) {
        let Some(fields) = command.elements() else {
            return;
        };
        let fields: Vec<Value<'_>> = fields.collect();
        let Some(name) = fields.first().and_then(Value::bytes) else {
            return;
        };
        let tips: Vec<&[u8]> = fields
            .get(7)
            .and_then(Value::elements)
            .map(|tips| tips.filter_map(|t| t.bytes()).collect())
            .unwrap_or_default();
        let any_node = ANY_NODE.iter().any(|n| name.eq_ignore_ascii_case(n));
        let to_all = tips.iter().any(|t| {
            matches!(
                *t,
                b"request_policy:all_shards" | b"request_policy:all_nodes"
            )
        });
        // SCAN: a cursor per node, which the client encodes.
        let special = tips.contains(&b"request_policy:special".as_slice());
        let fanout = (!any_node && (to_all || special)).then(|| {
            if special {
                return Fanout::Unsupported;
            }
            let response = tips
                .iter()
                .find_map(|t| t.strip_prefix(b"response_policy:".as_slice()));
            match response {
                Some(b"agg_sum") => Fanout::Sum,
                Some(b"agg_logical_and") => Fanout::LogicalAnd,
                Some(b"all_succeeded" | b"one_succeeded") => Fanout::AllSucceeded,
                // KEYS: the nodes' arrays, one after the other.
                None => Fanout::Concat,
                // INFO's sections, the min/max of a few (WAIT): not
                // merged.
                Some(_) => Fanout::Unsupported,
            }
        });
        let specs: Box<[KeySpec]> = fields
            .get(8)
            .and_then(Value::elements)
            .map(|specs| specs.filter_map(|s| key_spec(&s)).collect())
            .unwrap_or_default();
        let single_key = match &*specs {
            [KeySpec::Range {
                begin: Begin::Index(i),
                last: 0,
                ..
            }] => Some(*i),
            _ => None,
        };
        let subcommands = fields.get(9).and_then(Value::elements);
        let container = subcommands.as_ref().is_some_and(|s| !s.is_empty());
        let shape = match (container, fanout, single_key) {
            (true, _, _) => Shape::Container,
            (false, Some(fanout), _) => Shape::Fanout(fanout),
            (false, None, Some(at)) => Shape::SingleKey(at),
            (false, None, None) if specs.is_empty() => Shape::Keyless,
            (false, None, None) => Shape::Specs,
        };
        let entry = Entry {
            arity: fields.get(1).and_then(Value::int).unwrap_or(0),
            shape,
            specs,
        };
        // Subcommands are named `parent|sub` in Redis 7's reply.
        let id = if parent.is_none() {
            command_id(name)
        } else {
            OTHER
        };
        match self.by_id.get_mut(usize::from(id)).filter(|_| id != OTHER) {
            Some(slot) => {
                if let Shape::SingleKey(at) = entry.shape {
                    self.key_at[usize::from(id)] = u8::try_from(at).unwrap_or(0);
                }
                *slot = Some(entry);
            }
            None => {
                self.by_name.insert(name.to_ascii_lowercase().into(), entry);
            }
        }
        for sub in subcommands.into_iter().flatten() {
            self.add(&sub, Some(name));
        }
    }

    /// Where `req` goes: the slot of its keys (`slot_of` computes one),
    /// any node, or neither.
    pub fn place(&self, req: RequestRef<'_>, slot_of: impl Fn(&[u8]) -> u16) -> Placement {
        self.place_command(req, command_id(req.name()), slot_of)
    }

    /// The slot of the key of `req` (command id `id`) if its command has
    /// one key at a fixed place and the request has it: the common case,
    /// answered first; else `None` ([`KeyTable::place_command`] answers).
    #[inline(always)]
    pub fn single_key_slot(&self, req: RequestRef<'_>, id: u16) -> Option<u16> {
        let at = *self.key_at.get(usize::from(id))?;
        let key = req.arg_after_name(usize::from(at))?;
        Some(crate::router::slot::slot_of(key))
    }

    /// [`KeyTable::place`] for a request whose command id
    /// ([`command_id`]) is known.
    pub fn place_command(
        &self,
        req: RequestRef<'_>,
        id: u16,
        slot_of: impl Fn(&[u8]) -> u16,
    ) -> Placement {
        let Some(mut entry) = self.entry(&mut [0; MAX_NAME], req.name(), id) else {
            return Placement::AnyNode;
        };
        if entry.shape == Shape::Container {
            match req
                .arg(1)
                .and_then(|sub| self.lookup(&mut [0; MAX_NAME], req.name(), Some(sub)))
            {
                Some(sub) => entry = sub,
                None => return Placement::AnyNode,
            }
        }
        match entry.shape {
            Shape::SingleKey(at) => match req.arg(at) {
                Some(key) => Placement::Slot(slot_of(key)),
                None => Placement::AnyNode,
            },
            Shape::Fanout(fanout) => Placement::Fanout(fanout),
            Shape::Keyless | Shape::Container => Placement::AnyNode,
            Shape::Specs => Self::walk_specs(req, &entry.specs, slot_of),
        }
    }

    /// Several keys, or keys found by keyword or count: walks the
    /// arguments once.
    #[inline(never)]
    fn walk_specs(
        req: RequestRef<'_>,
        specs: &[KeySpec],
        slot_of: impl Fn(&[u8]) -> u16,
    ) -> Placement {
        let args: smallvec_args::Args<'_> = smallvec_args::Args::of(req);
        let mut slot = None;
        for spec in specs {
            let Some((first, last, step)) = spec.bounds(&args) else {
                continue;
            };
            let mut i = first;
            while i <= last {
                let Some(key) = args.get(i) else { break };
                let s = slot_of(key);
                match slot {
                    None => slot = Some(s),
                    Some(seen) if seen != s => return Placement::CrossSlot,
                    Some(_) => {}
                }
                i += step;
            }
        }
        slot.map_or(Placement::AnyNode, Placement::Slot)
    }

    /// Redis's refusal of `req` for its name or argument count, which it
    /// gives when the command is queued in a transaction, or `None` when
    /// Redis would queue it (a subcommand respool does not know included:
    /// the node judges it).
    pub fn refusal(&self, req: RequestRef<'_>) -> Option<String> {
        let mut buf = [0u8; MAX_NAME];
        let Some(mut entry) = self.entry(&mut buf, req.name(), command_id(req.name())) else {
            let name = String::from_utf8_lossy(req.name());
            let args: String = req
                .args()
                .skip(1)
                .map(|a| format!("'{}' ", String::from_utf8_lossy(a)))
                .collect();
            return Some(format!(
                "unknown command '{:.128}', with args beginning with: {:.128}",
                name, args
            ));
        };
        let mut full = String::from_utf8_lossy(req.name()).to_ascii_lowercase();
        if entry.shape == Shape::Container {
            let sub = req.arg(1)?;
            entry = self.lookup(&mut buf, req.name(), Some(sub))?;
            full = format!(
                "{full}|{}",
                String::from_utf8_lossy(sub).to_ascii_lowercase()
            );
        }
        let argc = req.argc() as i64;
        let fits = if entry.arity >= 0 {
            argc == entry.arity
        } else {
            argc >= -entry.arity
        };
        (!fits).then(|| format!("wrong number of arguments for '{full}' command"))
    }

    /// The entry of command `name`, whose id is `id`.
    fn entry<'t>(&'t self, buf: &mut [u8; MAX_NAME], name: &[u8], id: u16) -> Option<&'t Entry> {
        match self.by_id.get(usize::from(id)) {
            Some(entry) if id != OTHER => entry.as_ref(),
            _ => self.lookup(buf, name, None),
        }
    }

    fn lookup<'t>(
        &'t self,
        buf: &mut [u8; MAX_NAME],
        name: &[u8],
        sub: Option<&[u8]>,
    ) -> Option<&'t Entry> {
        let len = name.len() + sub.map_or(0, |s| s.len() + 1);
        if len > MAX_NAME {
            return None;
        }
        buf[..name.len()].copy_from_slice(name);
        if let Some(sub) = sub {
            buf[name.len()] = b'|';
            buf[name.len() + 1..len].copy_from_slice(sub);
        }
        buf[..len].make_ascii_lowercase();
        self.by_name.get(&buf[..len])
    }
}

impl KeySpec {
    /// The arguments its keys are at: first, last, step (inclusive).
    fn bounds(&self, args: &smallvec_args::Args<'_>) -> Option<(usize, usize, usize)> {
        let argc = args.len();
        let begin = |b: &Begin| -> Option<usize> {
            match b {
                Begin::Index(i) => Some(*i),
                Begin::Keyword(word, from) => {
                    let found = if *from >= 0 {
                        (usize::try_from(*from).ok()?..argc)
                            .find(|&i| args.get(i).is_some_and(|a| a.eq_ignore_ascii_case(word)))
                    } else {
                        let start = argc.checked_sub(usize::try_from(-*from).ok()?)?;
                        (1..=start)
                            .rev()
                            .find(|&i| args.get(i).is_some_and(|a| a.eq_ignore_ascii_case(word)))
                    }?;
                    Some(found + 1)
                }
            }
        };
        match self {
            KeySpec::Range {
                begin: b,
                last,
                step,
                limit,
            } => {
                let first = begin(b)?;
                let last = if *last >= 0 {
                    first + usize::try_from(*last).ok()?
                } else {
                    let back = usize::try_from(-*last).ok()?;
                    // `limit`: only that fraction of the remaining
                    // arguments are keys (0: all of them).
                    match argc.checked_sub(first)?.checked_div(*limit) {
                        None => argc.checked_sub(back)?,
                        Some(span) => (first + span).checked_sub(back)?,
                    }
                };
                Some((first, last.min(argc.saturating_sub(1)), (*step).max(1)))
            }
            KeySpec::KeyNum {
                begin: b,
                numkeys_at,
                first,
                step,
            } => {
                let start = begin(b)?;
                let numkeys: usize = std::str::from_utf8(args.get(start + numkeys_at)?)
                    .ok()?
                    .parse()
                    .ok()?;
                if numkeys == 0 {
                    return None;
                }
                let first = start + first;
                let step = (*step).max(1);
                Some((first, first + (numkeys - 1) * step, step))
            }
        }
    }
}

/// One key spec of a `COMMAND` reply (a map, as alternating elements).
fn key_spec<'a>(spec: &Value<'a>) -> Option<KeySpec> {
    fn field<'a>(v: &Value<'a>, name: &[u8]) -> Option<Value<'a>> {
        let mut it = v.elements()?;
        while let (Some(k), Some(val)) = (it.next(), it.next()) {
            if k.bytes() == Some(name) {
                return Some(val);
            }
        }
        None
    }
    let int = |v: &Value<'a>, name: &[u8]| field(v, name).and_then(|x| x.int());
    let begin_search = field(spec, b"begin_search")?;
    let begin_spec = field(&begin_search, b"spec")?;
    let begin = match field(&begin_search, b"type")?.bytes()? {
        b"index" => Begin::Index(usize::try_from(int(&begin_spec, b"index")?).ok()?),
        b"keyword" => Begin::Keyword(
            field(&begin_spec, b"keyword")?.bytes()?.into(),
            int(&begin_spec, b"startfrom")?,
        ),
        _ => return None,
    };
    let find_keys = field(spec, b"find_keys")?;
    let find_spec = field(&find_keys, b"spec")?;
    let usize_of = |name: &[u8]| int(&find_spec, name).and_then(|v| usize::try_from(v).ok());
    match field(&find_keys, b"type")?.bytes()? {
        b"range" => Some(KeySpec::Range {
            begin,
            last: int(&find_spec, b"lastkey")?,
            step: usize_of(b"keystep")?,
            limit: usize_of(b"limit")?,
        }),
        b"keynum" => Some(KeySpec::KeyNum {
            begin,
            numkeys_at: usize_of(b"keynumidx")?,
            first: usize_of(b"firstkey")?,
            step: usize_of(b"keystep")?,
        }),
        _ => None,
    }
}

/// A request's arguments by index, read once.
mod smallvec_args {
    use crate::codec::RequestRef;

    /// Up to 32 arguments kept on the stack; a longer request keeps the
    /// rest in a vector (multi-key commands with many keys).
    pub(super) struct Args<'a> {
        head: [&'a [u8]; 32],
        len: usize,
        tail: Vec<&'a [u8]>,
    }

    impl<'a> Args<'a> {
        pub fn of(req: RequestRef<'a>) -> Args<'a> {
            let mut args = Args {
                head: [&[]; 32],
                len: 0,
                tail: Vec::new(),
            };
            for a in req.args() {
                if args.len < 32 {
                    args.head[args.len] = a;
                } else {
                    args.tail.push(a);
                }
                args.len += 1;
            }
            args
        }

        pub fn len(&self) -> usize {
            self.len
        }

        pub fn get(&self, i: usize) -> Option<&'a [u8]> {
            if i >= self.len {
                None
            } else if i < 32 {
                Some(self.head[i])
            } else {
                self.tail.get(i - 32).copied()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Request;
    use crate::router::slot::slot_of;

    /// `COMMAND INFO` of a few commands, as Redis 7.0 answers it.
    const COMMAND_INFO: &[u8] = include_bytes!("testdata/command-info.resp");

    fn place(table: &KeyTable, args: &[&str]) -> Placement {
        table.place(Request::from_args(args).view(), slot_of)
    }

    #[test]
    fn keys_are_found_by_the_clusters_own_key_specs() {
        let table = KeyTable::parse(COMMAND_INFO).expect("a command table");
        let slot = |key: &str| Placement::Slot(slot_of(key.as_bytes()));
        assert_eq!(place(&table, &["GET", "foo"]), slot("foo"));
        assert_eq!(place(&table, &["get", "foo"]), slot("foo"));
        assert_eq!(place(&table, &["SET", "foo", "1", "EX", "10"]), slot("foo"));
        assert_eq!(place(&table, &["MGET", "{a}1", "{a}2"]), slot("a"));
        assert_eq!(place(&table, &["MGET", "a", "b"]), Placement::CrossSlot);
        assert_eq!(
            place(&table, &["MSET", "{a}1", "x", "{a}2", "y"]),
            slot("a")
        );
        // MSET's values are not keys.
        assert_eq!(place(&table, &["MSET", "a", "b"]), slot("a"));
        assert_eq!(place(&table, &["DEL", "a", "b"]), Placement::CrossSlot);
        assert_eq!(place(&table, &["RENAME", "{x}a", "{x}b"]), slot("x"));
        // Keys by count (EVAL's numkeys), by keyword (XREAD's STREAMS).
        assert_eq!(place(&table, &["EVAL", "return 1", "1", "k"]), slot("k"));
        assert_eq!(
            place(&table, &["EVAL", "return 1", "0", "k"]),
            Placement::AnyNode
        );
        assert_eq!(
            place(&table, &["EVAL", "return 1", "2", "a", "b"]),
            Placement::CrossSlot
        );
        assert_eq!(
            place(
                &table,
                &["XREAD", "COUNT", "1", "STREAMS", "{s}1", "{s}2", "0", "0"]
            ),
            slot("s")
        );
        assert_eq!(
            place(&table, &["XREAD", "STREAMS", "a", "b", "0", "0"]),
            Placement::CrossSlot
        );
        assert_eq!(
            place(
                &table,
                &[
                    "ZUNIONSTORE",
                    "{z}d",
                    "2",
                    "{z}a",
                    "{z}b",
                    "WEIGHTS",
                    "1",
                    "2"
                ]
            ),
            slot("z")
        );
        assert_eq!(
            place(&table, &["LMPOP", "2", "{l}a", "{l}b", "LEFT"]),
            slot("l")
        );
        // A subcommand's own spec.
        assert_eq!(place(&table, &["OBJECT", "ENCODING", "k"]), slot("k"));
        assert_eq!(place(&table, &["OBJECT", "HELP"]), Placement::AnyNode);
        // Shard channels are keys; plain channels are not.
        assert_eq!(place(&table, &["SPUBLISH", "ch", "m"]), slot("ch"));
        assert_eq!(place(&table, &["PUBLISH", "ch", "m"]), Placement::AnyNode);
        // Redis's tips send these to every shard; these go anywhere.
        assert_eq!(place(&table, &["DBSIZE"]), Placement::Fanout(Fanout::Sum));
        assert_eq!(
            place(&table, &["KEYS", "*"]),
            Placement::Fanout(Fanout::Concat)
        );
        assert_eq!(place(&table, &["PING"]), Placement::AnyNode);
        assert_eq!(place(&table, &["ECHO", "x"]), Placement::AnyNode);
        assert_eq!(place(&table, &["RANDOMKEY"]), Placement::AnyNode);
        // Unknown commands and missing keys go anywhere (Redis answers).
        assert_eq!(place(&table, &["NOSUCH", "k"]), Placement::AnyNode);
        assert_eq!(place(&table, &["GET"]), Placement::AnyNode);
        assert!(KeyTable::parse(b"-ERR unknown command\r\n").is_none());
    }

    #[test]
    fn refusals_at_queueing_are_redis_own() {
        let table = KeyTable::parse(COMMAND_INFO).expect("a command table");
        let refusal = |args: &[&str]| table.refusal(Request::from_args(args).view());
        assert_eq!(refusal(&["PING"]), None);
        assert_eq!(refusal(&["ping", "a"]), None);
        assert_eq!(refusal(&["ECHO", "x"]), None);
        assert_eq!(
            refusal(&["ECHO"]).as_deref(),
            Some("wrong number of arguments for 'echo' command")
        );
        assert_eq!(
            refusal(&["NOSUCH", "a", "b"]).as_deref(),
            Some("unknown command 'NOSUCH', with args beginning with: 'a' 'b' ")
        );
        assert_eq!(
            refusal(&["OBJECT", "ENCODING"]).as_deref(),
            Some("wrong number of arguments for 'object|encoding' command")
        );
        // A subcommand respool does not know: the node judges it.
        assert_eq!(refusal(&["OBJECT", "NOSUCH"]), None);
    }

    #[test]
    fn long_multi_key_requests_are_walked_past_the_stack_buffer() {
        let table = KeyTable::parse(COMMAND_INFO).expect("a command table");
        let mut args = vec!["MGET".to_string()];
        args.extend((0..100).map(|i| format!("{{t}}{i}")));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(place(&table, &refs), Placement::Slot(slot_of(b"t")));
        args.push("other".into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(place(&table, &refs), Placement::CrossSlot);
    }
}
