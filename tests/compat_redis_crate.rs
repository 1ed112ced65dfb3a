//! Compatibility with a real client library: the same scenario of common
//! operations runs through the `redis` crate once through respool and once
//! directly against the same fresh `redis-server`, and every reply must be
//! equal (as a `redis::Value`, or as the same error).
//!
//! The scenario covers strings, counters, expiries (TTL ranges, not exact
//! values), key space commands, hashes, lists, sets, sorted sets, SCAN
//! families, pipelines, MULTI/EXEC (including EXECABORT, runtime errors
//! inside EXEC, DISCARD and a WATCH conflict caused by another client), Lua
//! (EVAL, SCRIPT LOAD/EXISTS, EVALSHA, NOSCRIPT, script errors), blocking
//! pops, SELECT of another database, pub/sub round trips (channel and
//! pattern), binary-safe keys and values up to 1 MiB, and error replies
//! (WRONGTYPE, unknown command, arity, syntax, not an integer, overflow).
//!
//! It runs once over RESP2 and once over RESP3 (`HELLO 3`, which the `redis`
//! crate sends when the URL asks for `protocol=resp3`).
//!
//! Replies that legitimately differ between two runs are not compared:
//! anything random (SPOP, RANDOMKEY), anything about the connection (CLIENT
//! ID, INFO, HELLO's reply, which respool answers itself), and the exact TTL
//! (only its range). The order of unordered replies (SMEMBERS, SCAN, KEYS…)
//! is normalised by sorting.

mod support;

use std::time::Duration;

use redis::{Commands, ConnectionLike, Value};
use support::{RedisServer, TestProxy};

/// Read timeout of every client connection: a hang becomes an error reply
/// in the comparison instead of a stuck test.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What one step of the scenario produced: a reply, or an error rendered as
/// text (code and message).
type Outcome = Result<Value, String>;

/// One endpoint under test and the record of what it answered.
struct Run {
    client: redis::Client,
    conn: redis::Connection,
    log: Vec<(String, Outcome)>,
}

impl Run {
    fn new(url: &str) -> Run {
        let client =
            redis::Client::open(url).unwrap_or_else(|e| panic!("bad redis URL {url}: {e}"));
        let conn = connect(&client);
        Run {
            client,
            conn,
            log: Vec::new(),
        }
    }

    /// Runs `args` as one command on the main connection and records the reply.
    fn cmd(&mut self, args: &[&[u8]]) {
        let outcome = self.take(args);
        self.record(render_args(args), outcome);
    }

    /// Like `cmd`, with `&str` arguments.
    fn run(&mut self, args: &[&str]) {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd(&args);
    }

    /// Like `run`, for a reply whose element order is unspecified.
    fn run_unordered(&mut self, args: &[&str]) {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let outcome = self.take(&bytes).map(sort_unordered);
        self.record(render_args(&bytes), outcome);
    }

    /// Runs `args` and returns the reply without recording it, for replies
    /// that are compared only after processing (TTLs, SCAN cursors).
    fn take(&mut self, args: &[&[u8]]) -> Outcome {
        let mut cmd = redis::Cmd::new();
        for arg in args {
            cmd.arg(*arg);
        }
        // `req_command` keeps error replies nested in arrays (EXEC, EVAL)
        // as `Value::ServerError`, where `Cmd::query` would fold them into
        // one error: the comparison sees every element.
        self.conn.req_command(&cmd).map_err(render_error)
    }

    /// Sends `pipe` in one write and records both its raw replies (every
    /// element, errors included) and what `Pipeline::query` makes of them.
    fn pipeline(&mut self, label: &str, pipe: &redis::Pipeline, replies: usize) {
        let packed = pipe.get_packed_pipeline();
        let raw = self
            .conn
            .req_packed_commands(&packed, 0, replies)
            .map(Value::Array)
            .map_err(render_error);
        self.record(format!("{label} (raw replies)"), raw);
        let typed = pipe.query::<Value>(&mut self.conn).map_err(render_error);
        self.record(format!("{label} (Pipeline::query)"), typed);
    }

    /// The last recorded reply.
    fn last(&self) -> Outcome {
        self.log
            .last()
            .map_or(Ok(Value::Nil), |(_, outcome)| outcome.clone())
    }

    /// Records a value derived from replies (a TTL range check, a scan).
    fn record(&mut self, label: impl Into<String>, outcome: Outcome) {
        self.log.push((label.into(), outcome));
    }
}

/// A new connection with a read timeout.
fn connect(client: &redis::Client) -> redis::Connection {
    let conn = client
        .get_connection()
        .unwrap_or_else(|e| panic!("connecting to {:?}: {e}", client.get_connection_info()));
    conn.set_read_timeout(Some(READ_TIMEOUT))
        .unwrap_or_else(|e| panic!("setting a read timeout: {e}"));
    conn
}

/// `SET k v` → `"SET k v"`: long arguments shortened, other bytes escaped.
fn render_args(args: &[&[u8]]) -> String {
    args.iter()
        .map(|arg| {
            if arg.len() > 40 {
                format!("<{} bytes>", arg.len())
            } else {
                arg.escape_ascii().to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn render_error(e: redis::RedisError) -> String {
    format!("{:?} code={:?} detail={:?}", e.kind(), e.code(), e.detail())
}

/// Sorts the elements of an array or set reply (recursively for SCAN's
/// `[cursor, [keys…]]`, sorting only the inner list).
fn sort_unordered(value: Value) -> Value {
    let sort = |mut items: Vec<Value>| {
        items.sort_by_key(|item| format!("{item:?}"));
        items
    };
    match value {
        Value::Array(items) => Value::Array(sort(items)),
        Value::Set(items) => Value::Set(sort(items)),
        Value::Map(mut pairs) => {
            pairs.sort_by_key(|pair| format!("{pair:?}"));
            Value::Map(pairs)
        }
        other => other,
    }
}

/// An integer reply, or `i64::MIN` for anything else (then the comparison
/// of the recorded replies reports the real difference).
fn int(outcome: &Outcome) -> i64 {
    match outcome {
        Ok(Value::Int(n)) => *n,
        _ => i64::MIN,
    }
}

fn ok_if(condition: bool, what: &str) -> Outcome {
    if condition {
        Ok(Value::Okay)
    } else {
        Err(format!("check failed: {what}"))
    }
}

/// The whole scenario. Keys live under `compat:`; the server is flushed
/// between the two runs, so both start from the same empty state.
fn scenario(run: &mut Run) {
    strings_and_counters(run);
    expiries(run);
    keyspace(run);
    hashes(run);
    lists(run);
    sets(run);
    sorted_sets(run);
    scans(run);
    pipelines(run);
    transactions(run);
    scripts(run);
    blocking(run);
    select(run);
    pubsub(run);
    binary_safety(run);
    errors(run);
}

fn strings_and_counters(run: &mut Run) {
    run.run(&["SET", "compat:s", "hello"]);
    run.run(&["GET", "compat:s"]);
    run.run(&["GET", "compat:missing"]);
    run.run(&["SET", "compat:s", "nope", "NX"]);
    run.run(&["SET", "compat:s", "world", "XX", "GET"]);
    run.run(&["SET", "compat:missing", "x", "XX"]);
    run.run(&["APPEND", "compat:s", "!!"]);
    run.run(&["STRLEN", "compat:s"]);
    run.run(&["GETRANGE", "compat:s", "1", "3"]);
    run.run(&["SETRANGE", "compat:s", "0", "W"]);
    run.run(&["MSET", "compat:m1", "1", "compat:m2", "2"]);
    run.run(&["MSETNX", "compat:m2", "x", "compat:m3", "3"]);
    run.run(&[
        "MGET",
        "compat:m1",
        "compat:missing",
        "compat:m2",
        "compat:s",
    ]);
    run.run(&["GETDEL", "compat:m1"]);
    run.run(&["SETNX", "compat:m1", "again"]);
    run.run(&["INCR", "compat:n"]);
    run.run(&["INCRBY", "compat:n", "41"]);
    run.run(&["DECR", "compat:n"]);
    run.run(&["DECRBY", "compat:n", "-10"]);
    run.run(&["INCRBYFLOAT", "compat:f", "1.5"]);
    run.run(&["INCRBYFLOAT", "compat:f", "-0.25"]);
    run.run(&["GET", "compat:n"]);

    // The same through the typed API, as applications write it.
    let conn = &mut run.conn;
    let typed: redis::RedisResult<(Option<String>, i64, i64)> = (|| {
        let _: () = conn.set("compat:typed", "v")?;
        let v: Option<String> = conn.get("compat:typed")?;
        let n: i64 = conn.incr("compat:typed:n", 5)?;
        let m: i64 = conn.decr("compat:typed:n", 2)?;
        Ok((v, n, m))
    })();
    let typed = typed
        .map(|(v, n, m)| {
            Value::Array(vec![
                v.map_or(Value::Nil, |v| Value::BulkString(v.into_bytes())),
                Value::Int(n),
                Value::Int(m),
            ])
        })
        .map_err(render_error);
    run.record("typed set/get/incr/decr", typed);
}

fn expiries(run: &mut Run) {
    run.run(&["SET", "compat:e", "v", "EX", "100"]);
    // Only the TTL's range is compared: the runs happen at different times.
    let ttl = run.take(&[b"TTL", b"compat:e"]);
    run.record(
        "TTL compat:e in 95..=100",
        ok_if((95..=100).contains(&int(&ttl)), "TTL in range"),
    );
    let pttl = run.take(&[b"PTTL", b"compat:e"]);
    run.record(
        "PTTL compat:e in 95000..=100000",
        ok_if((95_000..=100_000).contains(&int(&pttl)), "PTTL in range"),
    );
    run.run(&["PERSIST", "compat:e"]);
    run.run(&["TTL", "compat:e"]);
    run.run(&["TTL", "compat:missing"]);
    run.run(&["EXPIRE", "compat:e", "50", "NX"]);
    run.run(&["EXPIRE", "compat:e", "60", "NX"]);
    run.run(&["EXPIRE", "compat:missing", "60"]);
    run.run(&["SETEX", "compat:e2", "30", "v"]);
    let ttl = run.take(&[b"TTL", b"compat:e2"]);
    run.record(
        "TTL compat:e2 in 25..=30",
        ok_if((25..=30).contains(&int(&ttl)), "TTL in range"),
    );
    run.run(&["GETEX", "compat:e2", "PERSIST"]);
    run.run(&["TTL", "compat:e2"]);
    // An already-past expiry deletes the key at once.
    run.run(&["SET", "compat:gone", "v"]);
    run.run(&["PEXPIREAT", "compat:gone", "1"]);
    run.run(&["EXISTS", "compat:gone"]);
}

fn keyspace(run: &mut Run) {
    run.run(&[
        "EXISTS",
        "compat:s",
        "compat:n",
        "compat:missing",
        "compat:s",
    ]);
    run.run(&["TYPE", "compat:s"]);
    run.run(&["TYPE", "compat:missing"]);
    run.run(&["RENAME", "compat:m2", "compat:renamed"]);
    run.run(&["RENAMENX", "compat:renamed", "compat:s"]);
    run.run(&["RENAME", "compat:missing", "compat:x"]);
    run.run(&["COPY", "compat:s", "compat:s:copy"]);
    run.run(&["GET", "compat:s:copy"]);
    run.run(&["DEL", "compat:s:copy", "compat:missing", "compat:renamed"]);
    run.run(&["UNLINK", "compat:m3"]);
    run.run(&["OBJECT", "ENCODING", "compat:n"]);
    run.run_unordered(&["KEYS", "compat:m*"]);
    run.run(&["TOUCH", "compat:s", "compat:missing"]);
}

fn hashes(run: &mut Run) {
    run.run(&["HSET", "compat:h", "a", "1", "b", "2", "c", "3"]);
    run.run(&["HSET", "compat:h", "a", "10"]);
    run.run(&["HGET", "compat:h", "a"]);
    run.run(&["HGET", "compat:h", "zz"]);
    run.run(&["HMGET", "compat:h", "a", "zz", "c"]);
    run.run_unordered(&["HGETALL", "compat:h"]);
    run.run(&["HINCRBY", "compat:h", "b", "5"]);
    run.run(&["HINCRBYFLOAT", "compat:h", "c", "0.5"]);
    run.run(&["HSETNX", "compat:h", "a", "x"]);
    run.run(&["HSETNX", "compat:h", "d", "4"]);
    run.run(&["HEXISTS", "compat:h", "d"]);
    run.run(&["HDEL", "compat:h", "d", "zz"]);
    run.run(&["HLEN", "compat:h"]);
    run.run(&["HSTRLEN", "compat:h", "c"]);
    run.run_unordered(&["HKEYS", "compat:h"]);
    run.run_unordered(&["HVALS", "compat:h"]);
    run.run_unordered(&["HGETALL", "compat:missing"]);
}

fn lists(run: &mut Run) {
    run.run(&["RPUSH", "compat:l", "a", "b", "c", "d"]);
    run.run(&["LPUSH", "compat:l", "z"]);
    run.run(&["LRANGE", "compat:l", "0", "-1"]);
    run.run(&["LINDEX", "compat:l", "2"]);
    run.run(&["LINDEX", "compat:l", "99"]);
    run.run(&["LSET", "compat:l", "0", "zz"]);
    run.run(&["LSET", "compat:l", "99", "x"]);
    run.run(&["LINSERT", "compat:l", "BEFORE", "c", "bb"]);
    run.run(&["LPOS", "compat:l", "c"]);
    run.run(&["LLEN", "compat:l"]);
    run.run(&["LPOP", "compat:l"]);
    run.run(&["RPOP", "compat:l", "2"]);
    run.run(&["RPUSH", "compat:l", "a", "a", "a"]);
    run.run(&["LREM", "compat:l", "2", "a"]);
    run.run(&["LMOVE", "compat:l", "compat:l2", "LEFT", "RIGHT"]);
    run.run(&["LTRIM", "compat:l", "0", "1"]);
    run.run(&["LRANGE", "compat:l", "0", "-1"]);
    run.run(&["LRANGE", "compat:l2", "0", "-1"]);
    run.run(&["LPOP", "compat:missing"]);
    run.run(&["LPOP", "compat:missing", "3"]);
}

fn sets(run: &mut Run) {
    run.run(&["SADD", "compat:set1", "a", "b", "c", "a"]);
    run.run(&["SADD", "compat:set2", "b", "c", "d"]);
    run.run(&["SISMEMBER", "compat:set1", "a"]);
    run.run(&["SMISMEMBER", "compat:set1", "a", "z", "c"]);
    run.run(&["SCARD", "compat:set1"]);
    run.run_unordered(&["SMEMBERS", "compat:set1"]);
    run.run_unordered(&["SINTER", "compat:set1", "compat:set2"]);
    run.run_unordered(&["SUNION", "compat:set1", "compat:set2"]);
    run.run_unordered(&["SDIFF", "compat:set1", "compat:set2"]);
    run.run(&["SINTERSTORE", "compat:set3", "compat:set1", "compat:set2"]);
    run.run(&["SREM", "compat:set1", "a", "zz"]);
    run.run(&["SMOVE", "compat:set1", "compat:set2", "b"]);
    run.run_unordered(&["SMEMBERS", "compat:set2"]);
    run.run(&["SADD", "compat:ints", "3", "1", "2"]);
    run.run(&["OBJECT", "ENCODING", "compat:ints"]);
    run.run_unordered(&["SMEMBERS", "compat:missing"]);
}

fn sorted_sets(run: &mut Run) {
    run.run(&["ZADD", "compat:z", "1", "one", "2", "two", "3", "three"]);
    run.run(&["ZADD", "compat:z", "NX", "10", "one", "4", "four"]);
    run.run(&["ZADD", "compat:z", "XX", "CH", "1.5", "one"]);
    run.run(&["ZSCORE", "compat:z", "one"]);
    run.run(&["ZSCORE", "compat:z", "missing"]);
    run.run(&["ZMSCORE", "compat:z", "one", "missing"]);
    run.run(&["ZINCRBY", "compat:z", "2.5", "two"]);
    run.run(&["ZRANGE", "compat:z", "0", "-1", "WITHSCORES"]);
    run.run(&[
        "ZRANGE", "compat:z", "(1.5", "+inf", "BYSCORE", "LIMIT", "0", "2",
    ]);
    run.run(&["ZREVRANGE", "compat:z", "0", "1"]);
    run.run(&["ZRANGEBYSCORE", "compat:z", "-inf", "3", "WITHSCORES"]);
    run.run(&["ZRANK", "compat:z", "three"]);
    run.run(&["ZREVRANK", "compat:z", "three"]);
    run.run(&["ZRANK", "compat:z", "missing"]);
    run.run(&["ZCARD", "compat:z"]);
    run.run(&["ZCOUNT", "compat:z", "2", "(4"]);
    run.run(&["ZREM", "compat:z", "four", "missing"]);
    run.run(&["ZPOPMIN", "compat:z"]);
    run.run(&["ZPOPMAX", "compat:z", "5"]);
    run.run(&["ZADD", "compat:z", "INCR", "1", "x"]);
    run.run(&["ZADD", "compat:z", "1", "a", "1", "b", "1", "c"]);
    run.run(&["ZRANGEBYLEX", "compat:z", "[a", "(c"]);
}

/// SCAN, HSCAN, SSCAN and ZSCAN iterated to the end; the collected elements
/// are compared sorted, since the cursor walk is an implementation detail.
fn scans(run: &mut Run) {
    for i in 0..40 {
        let key = format!("compat:scan:{i}");
        run.run(&["SET", &key, "v"]);
    }
    let walks: [(&str, &[&str]); 4] = [
        ("SCAN", &["MATCH", "compat:scan:*", "COUNT", "7"]),
        ("HSCAN compat:h", &["COUNT", "1"]),
        ("SSCAN compat:set2", &["MATCH", "*", "COUNT", "1"]),
        ("ZSCAN compat:z", &[]),
    ];
    for (command, options) in walks {
        let mut cursor = "0".to_string();
        let mut elements = Vec::new();
        let mut rounds = 0;
        let result = loop {
            let mut args: Vec<&[u8]> = command.split(' ').map(str::as_bytes).collect();
            args.push(cursor.as_bytes());
            args.extend(options.iter().map(|o| o.as_bytes()));
            let reply = run.take(&args);
            rounds += 1;
            match reply {
                Ok(Value::Array(mut parts)) if parts.len() == 2 => {
                    let batch = parts.pop();
                    let next = parts.pop();
                    match (next, batch) {
                        (Some(Value::BulkString(next)), Some(Value::Array(batch))) => {
                            elements.extend(batch);
                            cursor = String::from_utf8_lossy(&next).into_owned();
                            if cursor == "0" {
                                break Ok(sort_unordered(Value::Array(elements)));
                            }
                        }
                        other => break Err(format!("unexpected SCAN reply parts {other:?}")),
                    }
                }
                other => break Err(format!("unexpected SCAN reply {other:?}")),
            }
            if rounds > 1000 {
                break Err("SCAN did not finish in 1000 rounds".to_string());
            }
        };
        // HSCAN/ZSCAN return field/value pairs flattened; sorting them
        // separates pairs, but identically on both sides.
        run.record(format!("{command} … (all elements, sorted)"), result);
    }
}

fn pipelines(run: &mut Run) {
    let mut pipe = redis::pipe();
    pipe.set("compat:p1", "a")
        .get("compat:p1")
        .incr("compat:p2", 3)
        .rpush("compat:pl", &["x", "y"])
        .lrange("compat:pl", 0, -1)
        .cmd("PING")
        .del(&["compat:p1", "compat:p2", "compat:pl"]);
    run.pipeline("pipeline of 7", &pipe, 7);

    // An error reply in the middle of a pipeline.
    let mut pipe = redis::pipe();
    pipe.set("compat:p3", "a")
        .incr("compat:p3", 1)
        .get("compat:p3");
    run.pipeline("pipeline with an error inside", &pipe, 3);

    // A long pipeline: many replies in one read.
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.incr("compat:p4", i);
    }
    run.pipeline("pipeline of 500 INCRBY", &pipe, 500);
    run.run(&["DEL", "compat:p4"]);
}

fn transactions(run: &mut Run) {
    // The redis crate's atomic pipeline: MULTI … EXEC in one write. Raw,
    // the replies are OK, 3 × QUEUED and EXEC's array.
    let mut pipe = redis::pipe();
    pipe.atomic()
        .set("compat:t1", 1)
        .incr("compat:t1", 41)
        .get("compat:t1");
    run.pipeline("atomic pipeline", &pipe, 5);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .set("compat:t1", "x")
        .incr("compat:t1", 1)
        .get("compat:t1");
    run.pipeline("atomic pipeline with a failing command", &pipe, 5);

    // Step by step, with QUEUED replies.
    run.run(&["MULTI"]);
    run.run(&["SET", "compat:t2", "x"]);
    run.run(&["INCR", "compat:t2"]);
    run.run(&["GET", "compat:t2"]);
    run.run(&["EXEC"]);

    // A command rejected while queueing aborts the whole transaction.
    run.run(&["MULTI"]);
    run.run(&["SET", "compat:t3", "x"]);
    run.run(&["NOSUCHCOMMAND"]);
    run.run(&["EXEC"]);
    run.run(&["EXISTS", "compat:t3"]);

    run.run(&["MULTI"]);
    run.run(&["SET", "compat:t4", "x"]);
    run.run(&["DISCARD"]);
    run.run(&["EXISTS", "compat:t4"]);
    run.run(&["EXEC"]);
    run.run(&["DISCARD"]);
    run.run(&["MULTI"]);
    run.run(&["MULTI"]);
    run.run(&["DISCARD"]);

    // WATCH: another client changes the key before EXEC → nil reply.
    run.run(&["SET", "compat:w", "1"]);
    run.run(&["WATCH", "compat:w"]);
    let mut other = connect(&run.client);
    let changed = redis::cmd("SET")
        .arg("compat:w")
        .arg("2")
        .query::<Value>(&mut other)
        .map_err(render_error);
    run.record("other client: SET compat:w 2", changed);
    run.run(&["MULTI"]);
    run.run(&["INCR", "compat:w"]);
    run.run(&["EXEC"]);
    run.run(&["GET", "compat:w"]);

    // WATCH without a conflict, then UNWATCH.
    run.run(&["WATCH", "compat:w"]);
    run.run(&["MULTI"]);
    run.run(&["INCR", "compat:w"]);
    run.run(&["EXEC"]);
    run.run(&["WATCH", "compat:w"]);
    run.run(&["UNWATCH"]);

    // The crate's optimistic-locking helper.
    let key = "compat:w";
    let reply: redis::RedisResult<(i64,)> =
        redis::transaction(&mut run.conn, &[key], |conn, pipe| {
            let n: i64 = conn.get(key)?;
            pipe.set(key, n * 10).ignore().get(key).query(conn)
        });
    let reply = reply.map(|(n,)| Value::Int(n)).map_err(render_error);
    run.record("redis::transaction", reply);
}

fn scripts(run: &mut Run) {
    let body = "redis.call('SET', KEYS[1], ARGV[1]); return {redis.call('GET', KEYS[1]), tonumber(ARGV[2]) + 1, 'ok'}";
    run.run(&["EVAL", body, "1", "compat:lua", "v", "41"]);
    run.run(&["EVAL", "return nil", "0"]);
    run.run(&["EVAL", "return {1, 2, {3, 'x'}, false, true}", "0"]);
    run.run(&["EVAL", "return redis.status_reply('FINE')", "0"]);
    run.run(&["EVAL", "return redis.error_reply('MYERR custom')", "0"]);
    run.run(&[
        "EVAL",
        "return redis.call('INCR', KEYS[1])",
        "1",
        "compat:s",
    ]);
    run.run(&["EVAL", "return 3.99", "0"]);
    run.run(&["EVAL", "syntax error here", "0"]);
    run.run(&["SCRIPT", "LOAD", body]);
    let sha = match run.last() {
        Ok(Value::BulkString(sha)) => String::from_utf8_lossy(&sha).into_owned(),
        _ => "no-sha".to_string(),
    };
    let unknown = "ffffffffffffffffffffffffffffffffffffffff";
    run.run(&["SCRIPT", "EXISTS", &sha, unknown]);
    run.run(&["EVALSHA", &sha, "1", "compat:lua2", "w", "1"]);
    run.run(&["EVALSHA", unknown, "0"]);
    run.run(&[
        "EVAL_RO",
        "return redis.call('GET', KEYS[1])",
        "1",
        "compat:lua",
    ]);

    // redis::Script: EVALSHA first, SCRIPT LOAD + retry on NOSCRIPT.
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let reply = script
        .key("compat:lua:n")
        .arg(5)
        .invoke::<Value>(&mut run.conn)
        .map_err(render_error);
    run.record("Script::invoke (loads on NOSCRIPT)", reply);
    let reply = script
        .key("compat:lua:n")
        .arg(5)
        .invoke::<Value>(&mut run.conn)
        .map_err(render_error);
    run.record("Script::invoke (cached)", reply);
}

fn blocking(run: &mut Run) {
    run.run(&["BLPOP", "compat:bl", "0.05"]);
    run.run(&["RPUSH", "compat:bl", "a", "b"]);
    run.run(&["BLPOP", "compat:missing", "compat:bl", "1"]);
    run.run(&["BRPOP", "compat:bl", "1"]);
    run.run(&["BZPOPMIN", "compat:bz", "0.05"]);
    run.run(&[
        "BLMOVE",
        "compat:missing",
        "compat:bl",
        "LEFT",
        "LEFT",
        "0.05",
    ]);
    run.run(&["GET", "compat:s"]);
}

fn select(run: &mut Run) {
    run.run(&["SELECT", "3"]);
    run.run(&["SET", "compat:db3", "three"]);
    run.run(&["GET", "compat:db3"]);
    run.run(&["GET", "compat:s"]);
    run.run(&["SELECT", "0"]);
    run.run(&["GET", "compat:db3"]);
    run.run(&["GET", "compat:s"]);
    run.run(&["SELECT", "99999"]);
}

fn pubsub(run: &mut Run) {
    let mut subscriber = connect(&run.client);
    let mut publisher = connect(&run.client);
    let received = (|| -> redis::RedisResult<Value> {
        let mut pubsub = subscriber.as_pubsub();
        pubsub.set_read_timeout(Some(READ_TIMEOUT))?;
        pubsub.subscribe("compat:chan")?;
        pubsub.psubscribe("compat:pat:*")?;
        let mut seen = Vec::new();
        for (channel, payload) in [
            ("compat:chan", b"plain".as_slice()),
            ("compat:pat:1", b"by pattern"),
            ("compat:chan", b"bin\x00\r\n\xff"),
        ] {
            let receivers: Value = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query(&mut publisher)?;
            let message = pubsub.get_message()?;
            seen.push(Value::Array(vec![
                receivers,
                Value::BulkString(message.get_channel_name().as_bytes().to_vec()),
                message
                    .get_pattern::<Option<String>>()?
                    .map_or(Value::Nil, |p| Value::BulkString(p.into_bytes())),
                Value::BulkString(message.get_payload_bytes().to_vec()),
            ]));
        }
        let numsub: Value = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("compat:chan")
            .arg("compat:none")
            .query(&mut publisher)?;
        seen.push(numsub);
        let numpat: Value = redis::cmd("PUBSUB").arg("NUMPAT").query(&mut publisher)?;
        seen.push(numpat);
        pubsub.unsubscribe("compat:chan")?;
        pubsub.punsubscribe("compat:pat:*")?;
        Ok(Value::Array(seen))
    })();
    run.record("pub/sub round trip", received.map_err(render_error));

    // After unsubscribing, the same connection is an ordinary one again.
    let reply = redis::cmd("GET")
        .arg("compat:s")
        .query::<Value>(&mut subscriber)
        .map_err(render_error);
    run.record("GET on the former subscriber", reply);
    let reply = redis::cmd("PUBLISH")
        .arg("compat:chan")
        .arg("nobody")
        .query::<Value>(&mut publisher)
        .map_err(render_error);
    run.record("PUBLISH after unsubscribe", reply);
}

fn binary_safety(run: &mut Run) {
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let key: &[u8] = b"compat:bin:\x00\xff\r\n key";
    run.cmd(&[b"SET", key, &every_byte]);
    run.cmd(&[b"GET", key]);
    run.cmd(&[b"SET", b"compat:empty", b""]);
    run.cmd(&[b"GET", b"compat:empty"]);
    run.cmd(&[b"STRLEN", b"compat:empty"]);
    run.cmd(&[b"SET", b"compat:crlf", b"*1\r\n$4\r\nPING\r\n"]);
    run.cmd(&[b"GET", b"compat:crlf"]);
    run.cmd(&[b"HSET", b"compat:binh", &every_byte, b"\r\n"]);
    run.cmd(&[b"HGETALL", b"compat:binh"]);
    let large: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
    run.cmd(&[b"SET", b"compat:large", &large]);
    run.cmd(&[b"GET", b"compat:large"]);
    run.cmd(&[b"STRLEN", b"compat:large"]);
    run.cmd(&[b"GETRANGE", b"compat:large", b"1048570", b"-1"]);
    // Typed round trip of raw bytes.
    let reply = run
        .conn
        .get::<_, Vec<u8>>(key)
        .map(|bytes| Value::Int(i64::from(bytes == every_byte)))
        .map_err(render_error);
    run.record("typed GET of binary value equals what was SET", reply);
}

fn errors(run: &mut Run) {
    run.run(&["RPUSH", "compat:wrong", "x"]);
    run.run(&["GET", "compat:wrong"]);
    run.run(&["INCR", "compat:wrong"]);
    run.run(&["HGET", "compat:wrong", "f"]);
    run.run(&["SADD", "compat:s", "x"]);
    run.run(&["INCR", "compat:s"]);
    run.run(&["SET", "compat:big", "9223372036854775807"]);
    run.run(&["INCR", "compat:big"]);
    run.run(&["INCRBYFLOAT", "compat:s", "1"]);
    run.run(&["NOSUCHCOMMAND", "a", "b"]);
    run.run(&["GET"]);
    run.run(&["SET", "compat:x", "v", "EX"]);
    run.run(&["SET", "compat:x", "v", "EX", "-5"]);
    run.run(&["SET", "compat:x", "v", "BOGUS"]);
    run.run(&["EXPIRE", "compat:x", "notanumber"]);
    run.run(&["LRANGE", "compat:wrong", "a", "b"]);
    run.run(&["ZADD", "compat:z", "notafloat", "m"]);
    run.run(&["OBJECT", "NOSUCH"]);
    // The connection is still fine after all those errors.
    run.run(&["PING"]);
    run.run(&["ECHO", "still here"]);
}

/// Resets the server between the two runs: no keys in any database, no
/// cached scripts. Sent directly, never through the proxy.
fn reset(redis: &RedisServer) {
    for command in [&[b"FLUSHALL".as_slice()][..], &[b"SCRIPT", b"FLUSH"]] {
        let reply = redis.command(command);
        assert!(
            !reply.is_error(),
            "{command:?} failed on the test's own redis-server: {reply}"
        );
    }
}

/// Runs the scenario through respool, resets the server, runs it directly,
/// and compares the two records step by step.
fn compare(protocol: &str) {
    let redis = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("building a runtime: {e}"));
    // The proxy runs on its own thread and runtime (see support::proxy).
    let proxy = runtime.block_on(TestProxy::start(&redis.url(), &[]));

    let mut through_proxy = Run::new(&format!("redis://{}/?protocol={protocol}", proxy.addr()));
    scenario(&mut through_proxy);
    // Close respool's client connections before the direct run.
    let proxy_log = std::mem::take(&mut through_proxy.log);
    drop(through_proxy);
    reset(&redis);
    let mut direct = Run::new(&format!("redis://{}/?protocol={protocol}", redis.addr()));
    scenario(&mut direct);

    // COMPAT_DUMP=1 prints every step and respool's reply.
    if std::env::var_os("COMPAT_DUMP").is_some() {
        for (label, outcome) in &proxy_log {
            eprintln!("{protocol} {label} -> {outcome:?}");
        }
    }
    assert_eq!(
        proxy_log.iter().map(|(label, _)| label).collect::<Vec<_>>(),
        direct
            .log
            .iter()
            .map(|(label, _)| label)
            .collect::<Vec<_>>(),
        "the two runs took different steps"
    );
    let differences: Vec<String> = proxy_log
        .iter()
        .zip(&direct.log)
        .filter(|((_, via_proxy), (_, via_direct))| via_proxy != via_direct)
        .map(|((label, via_proxy), (_, via_direct))| {
            format!("  {label}\n    respool: {via_proxy:?}\n    direct:  {via_direct:?}")
        })
        .collect();
    assert!(
        differences.is_empty(),
        "{} of {} replies differ between respool and direct Redis ({protocol}):\n{}",
        differences.len(),
        proxy_log.len(),
        differences.join("\n")
    );
    eprintln!(
        "{} replies compared over {protocol}: respool and direct Redis agree",
        proxy_log.len()
    );
    drop(proxy);
}

#[test]
fn redis_crate_sees_the_same_replies_through_respool_resp2() {
    compare("resp2");
}

#[test]
fn redis_crate_sees_the_same_replies_through_respool_resp3() {
    compare("resp3");
}
