//! Compatibility with redis-py, the most common Python client: a script
//! (`SCENARIO` below) runs through respool and directly against the same
//! fresh `redis-server`, over RESP2 and RESP3, and its printed results must
//! be identical line for line. A second test runs
//! `examples/webapp_redis_py.py` as written against respool.
//!
//! Requires `python3` with redis-py (`python3 -m pip install redis`); `.ci/run`
//! installs it. Without it these tests fail with that command in the message:
//! a compatibility test that silently checks nothing would be worse.
//!
//! The client is configured as a web app configures it (a bounded pool,
//! timeouts, retries, health checks, a client name), so the handshake and
//! housekeeping redis-py does on its own (HELLO, CLIENT SETINFO, CLIENT
//! SETNAME, PING health checks) goes through respool too.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::{RedisServer, TestProxy};

/// The script: `python3 - HOST PORT PROTOCOL` prints one `label\tresult`
/// line per step. Results that legitimately differ between two runs (exact
/// TTLs, element order of sets and scans) are normalised first.
const SCENARIO: &str = r#"
import sys
import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

host, port, protocol = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pool = redis.ConnectionPool(
    host=host, port=port, protocol=protocol, max_connections=8,
    socket_connect_timeout=2, socket_timeout=5, socket_keepalive=True,
    retry=Retry(ExponentialBackoff(), 3), retry_on_error=[ConnectionError, TimeoutError],
    health_check_interval=1, client_name="compat",
)
r = redis.Redis(connection_pool=pool)

def show(label, fn):
    try:
        result = fn()
    except redis.RedisError as e:
        result = "error %s: %s" % (type(e).__name__, e)
    print("%s\t%r" % (label, result), flush=True)

def exc(values):
    return [("%s: %s" % (type(v).__name__, v)) if isinstance(v, Exception) else v for v in values]

def norm(value):
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return value

show("ping", lambda: r.ping())
show("set", lambda: r.set("py:s", "hello"))
show("get", lambda: r.get("py:s"))
show("get missing", lambda: r.get("py:missing"))
show("set nx", lambda: r.set("py:s", "x", nx=True))
show("set get", lambda: r.set("py:s", "world", get=True))
show("mset", lambda: r.mset({"py:a": 1, "py:b": 2}))
show("mget", lambda: r.mget(["py:a", "py:missing", "py:b"]))
show("incr", lambda: r.incr("py:n"))
show("incrby", lambda: r.incrby("py:n", 41))
show("incrbyfloat", lambda: r.incrbyfloat("py:f", 1.5))
show("decr", lambda: r.decr("py:n", 2))
show("set ex", lambda: r.set("py:e", "v", ex=100))
show("ttl range", lambda: 95 <= r.ttl("py:e") <= 100)
show("pttl range", lambda: 95000 <= r.pttl("py:e") <= 100000)
show("persist", lambda: r.persist("py:e"))
show("ttl persisted", lambda: r.ttl("py:e"))
show("ttl missing", lambda: r.ttl("py:missing"))
show("exists", lambda: r.exists("py:s", "py:n", "py:missing"))
show("type", lambda: r.type("py:s"))
show("hset", lambda: r.hset("py:h", mapping={"a": 1, "b": 2}))
show("hgetall", lambda: r.hgetall("py:h"))
show("hincrby", lambda: r.hincrby("py:h", "a", 5))
show("hmget", lambda: r.hmget("py:h", ["a", "zz"]))
show("rpush", lambda: r.rpush("py:l", "a", "b", "c"))
show("lrange", lambda: r.lrange("py:l", 0, -1))
show("lpop count", lambda: r.lpop("py:l", 2))
show("sadd", lambda: r.sadd("py:set", "a", "b", "c"))
show("smembers", lambda: norm(r.smembers("py:set")))
show("sismember", lambda: r.sismember("py:set", "a"))
show("zadd", lambda: r.zadd("py:z", {"one": 1, "two": 2, "three": 3}))
show("zrange withscores", lambda: r.zrange("py:z", 0, -1, withscores=True))
show("zscore", lambda: r.zscore("py:z", "two"))
show("zincrby", lambda: r.zincrby("py:z", 2.5, "one"))
show("zrangebyscore", lambda: r.zrangebyscore("py:z", 2, "+inf"))
for i in range(30):
    r.set("py:scan:%d" % i, i)
show("scan_iter", lambda: sorted(r.scan_iter(match="py:scan:*", count=7)))
show("hscan_iter", lambda: sorted(r.hscan_iter("py:h")))
show("sscan_iter", lambda: sorted(r.sscan_iter("py:set")))
show("zscan_iter", lambda: sorted(r.zscan_iter("py:z")))

def pipeline_plain():
    pipe = r.pipeline(transaction=False)
    pipe.set("py:p", 1).incr("py:p").get("py:p").incr("py:s")
    return pipe.execute(raise_on_error=False)
show("pipeline", lambda: exc(pipeline_plain()))

def pipeline_multi():
    with r.pipeline() as pipe:
        pipe.set("py:t", 1).incr("py:t", 41).get("py:t")
        return pipe.execute()
show("transaction", pipeline_multi)

def pipeline_multi_error():
    with r.pipeline() as pipe:
        pipe.set("py:t", "x").incr("py:t").get("py:t")
        return exc(pipe.execute(raise_on_error=False))
show("transaction with error", pipeline_multi_error)

def watch_conflict():
    other = redis.Redis(host=host, port=port, protocol=protocol)
    with r.pipeline() as pipe:
        pipe.watch("py:w")
        other.set("py:w", "changed")
        pipe.multi()
        pipe.set("py:w", "mine")
        try:
            return pipe.execute()
        except redis.WatchError as e:
            return "WatchError %s" % e
        finally:
            other.close()
show("watch conflict", watch_conflict)
show("after watch", lambda: r.get("py:w"))

def decrement(pipe):
    n = int(pipe.get("py:n"))
    pipe.multi()
    pipe.set("py:n", n - 1)
show("transaction helper", lambda: r.transaction(decrement, "py:n"))
show("after transaction helper", lambda: r.get("py:n"))

script = r.register_script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")
show("register_script", lambda: script(keys=["py:lua"], args=["x"]))
show("register_script again", lambda: script(keys=["py:lua"], args=["y"]))
show("eval", lambda: r.eval("return {1, 'two', nil, 3}", 0))
show("eval error", lambda: r.eval("return redis.error_reply('MYERR bad')", 0))
show("script load", lambda: r.script_load("return 42"))
show("script exists", lambda: r.script_exists(r.script_load("return 42"), "f" * 40))
show("evalsha", lambda: r.evalsha(r.script_load("return 42"), 0))
show("evalsha noscript", lambda: r.evalsha("f" * 40, 0))

show("blpop timeout", lambda: r.blpop(["py:bl"], timeout=0.05))
show("blpop value", lambda: (r.rpush("py:bl", "v"), r.blpop(["py:bl"], timeout=1)))

def pubsub_round_trip():
    p = r.pubsub(ignore_subscribe_messages=True)
    p.subscribe("py:chan")
    p.psubscribe("py:pat:*")
    # subscribe() does not wait for Redis to confirm, and PUBLISH goes over
    # another connection: through a proxy the subscriber's connection may
    # still be on its way. Wait until Redis counts both subscriptions.
    for _ in range(500):
        p.get_message(timeout=0.01)
        if r.pubsub_numsub("py:chan")[0][1] == 1 and r.pubsub_numpat() >= 1:
            break
    got = []
    for channel, payload in [("py:chan", b"one"), ("py:pat:x", b"\x00\r\n\xff")]:
        receivers = r.publish(channel, payload)
        message = None
        for _ in range(50):
            message = p.get_message(timeout=0.1)
            if message is not None:
                break
        got.append((receivers, message and (message["type"], message["pattern"], message["channel"], message["data"])))
    got.append(r.pubsub_numsub("py:chan"))
    p.close()
    return got
show("pubsub", pubsub_round_trip)

binary = bytes(range(256))
show("binary set", lambda: r.set(b"py:bin:\x00\xff", binary))
show("binary get", lambda: r.get(b"py:bin:\x00\xff") == binary)
show("large", lambda: (r.set("py:large", b"x" * 1000000), r.strlen("py:large")))
show("wrongtype", lambda: r.lrange("py:s", 0, -1))
show("not an integer", lambda: r.incr("py:s"))
show("unknown command", lambda: r.execute_command("NOSUCHCOMMAND", "a"))
show("arity", lambda: r.execute_command("GET"))
show("ping after errors", lambda: r.ping())
show("pool in use", lambda: len(pool._in_use_connections))
"#;

/// Runs `python3 -c 'import redis'` once and panics with the install
/// command if redis-py is missing.
fn require_redis_py() {
    let probe = Command::new("python3")
        .args(["-c", "import redis; print(redis.__version__)"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "redis-py is not installed for python3 ({}); install it with: python3 -m pip install redis",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "python3 is not available ({e}); install python3, then: python3 -m pip install redis"
        ),
    }
}

/// Runs `script` with `python3 - args…` (the script on stdin) and returns
/// its output; panics with stderr if it fails.
fn python(script: &str, args: &[String]) -> Output {
    let mut child = Command::new("python3")
        .arg("-")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning python3: {e}"));
    child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(script.as_bytes()))
        .transpose()
        .unwrap_or_else(|e| panic!("writing the script to python3: {e}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for python3: {e}"));
    assert!(
        out.status.success(),
        "python3 failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_scenario(addr: SocketAddr, protocol: u8) -> Vec<String> {
    let args = [
        addr.ip().to_string(),
        addr.port().to_string(),
        protocol.to_string(),
    ];
    let out = python(SCENARIO, &args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Empties the test's own server between runs: keys and cached scripts.
fn reset(redis: &RedisServer) {
    for command in [&[b"FLUSHALL".as_slice()][..], &[b"SCRIPT", b"FLUSH"]] {
        let reply = redis.command(command);
        assert!(!reply.is_error(), "{command:?} failed: {reply}");
    }
}

fn compare(protocol: u8) {
    require_redis_py();
    let redis = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("building a runtime: {e}"));
    let proxy = runtime.block_on(TestProxy::start(&redis.url(), &[]));

    let via_proxy = run_scenario(proxy.addr(), protocol);
    reset(&redis);
    let direct = run_scenario(redis.addr(), protocol);

    // COMPAT_DUMP=1 prints what redis-py saw through respool.
    if std::env::var_os("COMPAT_DUMP").is_some() {
        eprintln!("{}", via_proxy.join("\n"));
    }
    assert!(
        via_proxy.len() > 50,
        "the scenario printed only {} lines through respool:\n{}",
        via_proxy.len(),
        via_proxy.join("\n")
    );
    let differences: Vec<String> = via_proxy
        .iter()
        .zip(&direct)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("  respool: {a}\n  direct:  {b}"))
        .collect();
    assert!(
        differences.is_empty() && via_proxy.len() == direct.len(),
        "redis-py (RESP{protocol}) sees different results through respool ({} vs {} lines):\n{}",
        via_proxy.len(),
        direct.len(),
        differences.join("\n")
    );
    eprintln!(
        "{} redis-py results compared over RESP{protocol}: respool and direct Redis agree",
        via_proxy.len()
    );
    drop(proxy);
}

#[test]
fn redis_py_sees_the_same_results_through_respool_resp2() {
    compare(2);
}

#[test]
fn redis_py_sees_the_same_results_through_respool_resp3() {
    compare(3);
}

/// `examples/webapp_redis_py.py` runs as written (exit 0) against respool.
#[test]
fn webapp_example_runs_against_respool() {
    require_redis_py();
    let redis = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("building a runtime: {e}"));
    let proxy = runtime.block_on(TestProxy::start(&redis.url(), &[]));

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/webapp_redis_py.py");
    let out = Command::new("python3")
        .arg(&example)
        .env("RESPOOL_ADDR", proxy.addr().to_string())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", example.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        example.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "counter: webapp:views:home -> 3",
        "WATCH transaction: stock left -> 4",
        "rate limiter (EVALSHA): hits -> [1, 2, 3, 4]",
        "got 'user:42'",
        "WRONGTYPE",
    ] {
        assert!(
            stdout.contains(expected),
            "the example's output lacks {expected:?}:\n{stdout}"
        );
    }
}
