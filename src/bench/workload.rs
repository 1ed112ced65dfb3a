//! Request generation and reply checking.
//!
//! Every key is `PREFIX` + a fixed-width, zero-padded key number, and every
//! value is a pure function of that number and `--value-size` (see
//! [`write_value`]), so any GET or LPOP reply can be checked exactly without
//! remembering what was written. Fixed-width keys also let each command be
//! encoded from prebuilt byte templates with the digits patched in: no
//! formatting or allocation per request.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::args::Workload;
use crate::codec::Value;

/// Digits in a key number; covers the largest accepted `--keyspace` (10^12).
pub const KEY_DIGITS: usize = 12;

/// One request, with what is needed to check its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `SET key(n) value(n)` → `+OK`.
    Set(u64),
    /// `GET key(n)` → nil or `value(n)`.
    Get(u64),
    /// `INCR` of the client's own counter → previous reply + 1.
    Incr,
    /// `LPUSH list(n) value(n)` → list length ≥ 1.
    Lpush(u64),
    /// `LPOP list(n)` → nil or `value(n)`.
    Lpop(u64),
}

/// How a reply compares with what its request expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The reply is exactly what the benchmark expects.
    Correct,
    /// The server answered with an error reply (`-…`).
    ErrorReply,
    /// Anything else: the wrong type, the wrong value, a counter out of step.
    Wrong,
}

/// What every client sends: the workload and the byte templates its
/// commands are encoded from. Built once and shared by all clients.
#[derive(Debug)]
pub struct RequestPlan {
    workload: Workload,
    read_ratio: f64,
    keyspace: u64,
    value_size: usize,
    key_prefix: String,
    /// `*3 $3 SET $<keylen> <prefix>` up to the key number.
    set_head: Vec<u8>,
    /// `*2 $3 GET $<keylen> <prefix>` up to the key number.
    get_head: Vec<u8>,
    /// `*3 $5 LPUSH $<keylen> <prefix>list:` up to the key number.
    lpush_head: Vec<u8>,
    /// `*2 $4 LPOP $<keylen> <prefix>list:` up to the key number.
    lpop_head: Vec<u8>,
    /// `\r\n$<value-size>\r\n`: between a key and its value.
    value_head: Vec<u8>,
}

/// The per-client side of the workload: its random stream and the state
/// needed to check replies that depend on earlier ones.
#[derive(Debug)]
pub struct ClientState {
    /// Client number, used in its counter key and in error reports.
    id: u32,
    rng: SmallRng,
    /// List key pushed by the last LPUSH, popped by the next op.
    pending_pop: Option<u64>,
    /// Last counter value seen, once the first INCR reply has arrived.
    last_counter: Option<i64>,
    /// The complete INCR command for this client's own counter key.
    incr_command: Vec<u8>,
    /// Reused buffer for the expected value of a GET or LPOP reply.
    expected_value: Vec<u8>,
}

impl RequestPlan {
    /// Prepares the templates for `workload` over keys `prefix000000000000`…
    pub fn new(
        workload: Workload,
        read_ratio: f64,
        keyspace: u64,
        value_size: usize,
        key_prefix: &str,
    ) -> Self {
        let key_len = key_prefix.len() + KEY_DIGITS;
        let list_prefix = format!("{key_prefix}list:");
        let list_key_len = list_prefix.len() + KEY_DIGITS;
        let head = |args: usize, name: &str, key_len: usize, prefix: &str| {
            format!(
                "*{args}\r\n${}\r\n{name}\r\n${key_len}\r\n{prefix}",
                name.len()
            )
            .into_bytes()
        };
        RequestPlan {
            workload,
            read_ratio,
            keyspace: keyspace.max(1),
            value_size,
            key_prefix: key_prefix.to_owned(),
            set_head: head(3, "SET", key_len, key_prefix),
            get_head: head(2, "GET", key_len, key_prefix),
            lpush_head: head(3, "LPUSH", list_key_len, &list_prefix),
            lpop_head: head(2, "LPOP", list_key_len, &list_prefix),
            value_head: format!("\r\n${value_size}\r\n").into_bytes(),
        }
    }

    /// The command mix.
    pub fn workload(&self) -> Workload {
        self.workload
    }

    /// Bytes per value.
    pub fn value_size(&self) -> usize {
        self.value_size
    }

    /// Number of distinct keys.
    pub fn keyspace(&self) -> u64 {
        self.keyspace
    }

    /// The key of counter `client`, which only that client INCRs.
    pub fn counter_key(&self, client: u32) -> String {
        format!("{}counter:{client}", self.key_prefix)
    }

    /// State for client number `id`, seeded from `seed` and `id` so that runs
    /// are repeatable.
    pub fn client(&self, id: u32, seed: u64) -> ClientState {
        let key = self.counter_key(id);
        let incr_command = format!("*2\r\n$4\r\nINCR\r\n${}\r\n{key}\r\n", key.len()).into_bytes();
        ClientState {
            id,
            rng: SmallRng::seed_from_u64(seed ^ (u64::from(id) << 32 | u64::from(id))),
            pending_pop: None,
            last_counter: None,
            incr_command,
            expected_value: Vec::with_capacity(self.value_size),
        }
    }

    /// Picks the client's next request.
    pub fn next_op(&self, state: &mut ClientState) -> Op {
        match self.workload {
            Workload::Set => Op::Set(self.random_key(state)),
            Workload::Get => Op::Get(self.random_key(state)),
            Workload::Mixed => {
                let key = self.random_key(state);
                if state.rng.random::<f64>() < self.read_ratio {
                    Op::Get(key)
                } else {
                    Op::Set(key)
                }
            }
            Workload::Incr => Op::Incr,
            Workload::LpushLpop => match state.pending_pop.take() {
                Some(key) => Op::Lpop(key),
                None => {
                    let key = self.random_key(state);
                    state.pending_pop = Some(key);
                    Op::Lpush(key)
                }
            },
        }
    }

    fn random_key(&self, state: &mut ClientState) -> u64 {
        state.rng.random_range(0..self.keyspace)
    }

    /// Appends the RESP encoding of `op` to `out`.
    pub fn encode(&self, op: Op, state: &ClientState, out: &mut Vec<u8>) {
        match op {
            Op::Set(n) => self.encode_with_value(&self.set_head, n, out),
            Op::Lpush(n) => self.encode_with_value(&self.lpush_head, n, out),
            Op::Get(n) => encode_key_only(&self.get_head, n, out),
            Op::Lpop(n) => encode_key_only(&self.lpop_head, n, out),
            Op::Incr => out.extend_from_slice(&state.incr_command),
        }
    }

    fn encode_with_value(&self, head: &[u8], n: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(head);
        write_key_number(n, out);
        out.extend_from_slice(&self.value_head);
        write_value(n, self.value_size, out);
        out.extend_from_slice(b"\r\n");
    }

    /// Checks the reply to `op`, updating the client's running state.
    pub fn check(&self, op: Op, reply: &Value<'_>, state: &mut ClientState) -> Verdict {
        if let Value::Error(_) = reply {
            return Verdict::ErrorReply;
        }
        let correct = match (op, reply) {
            (Op::Set(_), Value::Simple(status)) => *status == b"OK",
            (Op::Get(_) | Op::Lpop(_), Value::Null) => true,
            (Op::Get(n) | Op::Lpop(n), Value::Bulk(value)) => {
                state.expected_value.clear();
                write_value(n, self.value_size, &mut state.expected_value);
                *value == state.expected_value.as_slice()
            }
            (Op::Lpush(_), Value::Integer(_)) => reply.int().is_some_and(|len| len >= 1),
            (Op::Incr, Value::Integer(_)) => {
                // Resynchronise on every reply so one bad value is counted
                // once, not again for every reply after it.
                let value = reply.int();
                let in_step = state
                    .last_counter
                    .is_none_or(|last| value.is_some() && last.checked_add(1) == value);
                state.last_counter = value;
                in_step
            }
            _ => false,
        };
        if correct {
            Verdict::Correct
        } else {
            Verdict::Wrong
        }
    }

    /// What `op` expects, for the report of a reply that did not match.
    pub fn describe(&self, op: Op, state: &ClientState) -> String {
        let key = |list: &str, n: u64| {
            format!("{}{list}{n:0width$}", self.key_prefix, width = KEY_DIGITS)
        };
        let value = |n: u64| {
            let mut value = Vec::new();
            write_value(n, self.value_size, &mut value);
            super::report::printable(&value)
        };
        match op {
            Op::Set(n) => format!("SET {} → expected +OK", key("", n)),
            Op::Get(n) => format!("GET {} → expected nil or {}", key("", n), value(n)),
            Op::Lpush(n) => format!("LPUSH {} → expected an integer ≥ 1", key("list:", n)),
            Op::Lpop(n) => format!("LPOP {} → expected nil or {}", key("list:", n), value(n)),
            Op::Incr => match state.last_counter {
                Some(last) => format!(
                    "INCR {} → expected the integer after the previous reply {last}",
                    self.counter_key(state.id)
                ),
                None => format!("INCR {} → expected an integer", self.counter_key(state.id)),
            },
        }
    }
}

impl ClientState {
    /// This client's number.
    pub fn id(&self) -> u32 {
        self.id
    }
}

fn encode_key_only(head: &[u8], n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(head);
    write_key_number(n, out);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` as exactly [`KEY_DIGITS`] zero-padded digits.
fn write_key_number(n: u64, out: &mut Vec<u8>) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n).as_bytes();
    let padding = KEY_DIGITS.saturating_sub(digits.len());
    out.extend(std::iter::repeat_n(b'0', padding));
    out.extend_from_slice(digits);
}

/// Appends the value stored under key number `n`: `"<n>."` repeated and cut
/// to `size` bytes, or — when even one copy does not fit — the lowest
/// `size` digits of `n`, so that neighbouring keys still differ.
///
/// With the default 3-byte values, keys that share their last three digits
/// share a value; larger `--value-size` makes the check stricter.
pub fn write_value(n: u64, size: usize, out: &mut Vec<u8>) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n).as_bytes();
    if size <= digits.len() {
        out.extend_from_slice(&digits[digits.len() - size..]);
        return;
    }
    let mut remaining = size;
    while remaining > 0 {
        let take = digits.len().min(remaining);
        out.extend_from_slice(&digits[..take]);
        remaining -= take;
        if remaining > 0 {
            out.push(b'.');
            remaining -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(workload: Workload, value_size: usize) -> RequestPlan {
        RequestPlan::new(workload, 0.5, 1000, value_size, "t:")
    }

    fn value(n: u64, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        write_value(n, size, &mut out);
        out
    }

    #[test]
    fn values_are_derived_from_the_key() {
        assert_eq!(value(12345, 3), b"345");
        assert_eq!(value(7, 3), b"7.7");
        assert_eq!(value(42, 8), b"42.42.42");
        assert_eq!(value(0, 1), b"0");
        assert_eq!(value(123, 4), b"123.");
        assert_eq!(value(9, 1 << 20).len(), 1 << 20);
    }

    #[test]
    fn commands_are_valid_resp() {
        let plan = plan(Workload::Set, 5);
        let state = plan.client(3, 1);
        let mut out = Vec::new();
        plan.encode(Op::Set(42), &state, &mut out);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$14\r\nt:000000000042\r\n$5\r\n42.42\r\n"
        );
        out.clear();
        plan.encode(Op::Get(7), &state, &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$14\r\nt:000000000007\r\n");
        out.clear();
        plan.encode(Op::Lpop(7), &state, &mut out);
        assert_eq!(out, b"*2\r\n$4\r\nLPOP\r\n$19\r\nt:list:000000000007\r\n");
        out.clear();
        plan.encode(Op::Incr, &state, &mut out);
        assert_eq!(out, b"*2\r\n$4\r\nINCR\r\n$11\r\nt:counter:3\r\n");
    }

    fn check(plan: &RequestPlan, state: &mut ClientState, op: Op, wire: &[u8]) -> Verdict {
        let (reply, used) = Value::parse(wire, 32).unwrap().unwrap();
        assert_eq!(used, wire.len());
        plan.check(op, &reply, state)
    }

    #[test]
    fn get_accepts_nil_or_the_exact_value() {
        let plan = plan(Workload::Get, 5);
        let mut state = plan.client(0, 1);
        assert_eq!(
            check(&plan, &mut state, Op::Get(42), b"$-1\r\n"),
            Verdict::Correct
        );
        assert_eq!(
            check(&plan, &mut state, Op::Get(42), b"$5\r\n42.42\r\n"),
            Verdict::Correct
        );
        // Another key's value, a truncated value, a wrong type: all wrong.
        assert_eq!(
            check(&plan, &mut state, Op::Get(42), b"$5\r\n43.43\r\n"),
            Verdict::Wrong
        );
        assert_eq!(
            check(&plan, &mut state, Op::Get(42), b"$4\r\n42.4\r\n"),
            Verdict::Wrong
        );
        assert_eq!(
            check(&plan, &mut state, Op::Get(42), b"+OK\r\n"),
            Verdict::Wrong
        );
        assert_eq!(
            check(&plan, &mut state, Op::Get(42), b"-ERR no\r\n"),
            Verdict::ErrorReply
        );
    }

    #[test]
    fn set_and_list_replies_are_checked() {
        let plan = plan(Workload::LpushLpop, 3);
        let mut state = plan.client(0, 1);
        assert_eq!(
            check(&plan, &mut state, Op::Set(1), b"+OK\r\n"),
            Verdict::Correct
        );
        assert_eq!(
            check(&plan, &mut state, Op::Set(1), b"+QUEUED\r\n"),
            Verdict::Wrong
        );
        assert_eq!(
            check(&plan, &mut state, Op::Set(1), b":1\r\n"),
            Verdict::Wrong
        );
        assert_eq!(
            check(&plan, &mut state, Op::Lpush(1), b":3\r\n"),
            Verdict::Correct
        );
        assert_eq!(
            check(&plan, &mut state, Op::Lpush(1), b":0\r\n"),
            Verdict::Wrong
        );
        assert_eq!(
            check(&plan, &mut state, Op::Lpop(5), b"$3\r\n5.5\r\n"),
            Verdict::Correct
        );
        assert_eq!(
            check(&plan, &mut state, Op::Lpop(5), b"$3\r\n6.6\r\n"),
            Verdict::Wrong
        );
        assert_eq!(
            check(&plan, &mut state, Op::Lpop(5), b"*-1\r\n"),
            Verdict::Correct
        );
    }

    #[test]
    fn counter_must_step_by_one() {
        let plan = plan(Workload::Incr, 3);
        let mut state = plan.client(0, 1);
        assert_eq!(
            check(&plan, &mut state, Op::Incr, b":41\r\n"),
            Verdict::Correct
        );
        assert_eq!(
            check(&plan, &mut state, Op::Incr, b":42\r\n"),
            Verdict::Correct
        );
        assert_eq!(
            check(&plan, &mut state, Op::Incr, b":42\r\n"),
            Verdict::Wrong
        );
        assert_eq!(
            check(&plan, &mut state, Op::Incr, b":43\r\n"),
            Verdict::Correct
        );
        assert_eq!(
            check(&plan, &mut state, Op::Incr, b":45\r\n"),
            Verdict::Wrong
        );
        assert_eq!(
            check(&plan, &mut state, Op::Incr, b"$2\r\n46\r\n"),
            Verdict::Wrong
        );
        assert!(plan
            .describe(Op::Incr, &state)
            .contains("after the previous reply 45"));
    }

    #[test]
    fn lpush_lpop_alternate_on_one_key() {
        let plan = plan(Workload::LpushLpop, 3);
        let mut state = plan.client(0, 1);
        for _ in 0..10 {
            let Op::Lpush(n) = plan.next_op(&mut state) else {
                panic!("expected LPUSH");
            };
            assert_eq!(plan.next_op(&mut state), Op::Lpop(n));
        }
    }

    #[test]
    fn mixed_respects_the_read_ratio() {
        let plan = RequestPlan::new(Workload::Mixed, 0.8, 1000, 3, "t:");
        let mut state = plan.client(0, 7);
        let gets = (0..10_000)
            .filter(|_| matches!(plan.next_op(&mut state), Op::Get(_)))
            .count();
        assert!((7_500..8_500).contains(&gets), "{gets} GETs of 10000");
    }
}
