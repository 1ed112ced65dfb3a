"""redis-py configured the way a web app configures it, pointed at respool.

Run it:

    pip install redis
    # In another terminal: respool on 127.0.0.1:6380 in front of the Redis on
    # 127.0.0.1:6379 (add `-- --upstream redis://HOST:PORT` for another Redis):
    cargo run --release
    python3 examples/webapp_redis_py.py

Set RESPOOL_ADDR=host:port if respool listens elsewhere (default
127.0.0.1:6380). The script writes only keys under `webapp:` and deletes them
at the end.

The interesting part is `make_client()`: every knob a production web app sets
on redis-py is still there, with a note on whether respool now owns that job.
"""

import os
import time

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry


def make_client(host, port):
    pool = redis.ConnectionPool(
        host=host,
        port=port,
        # Connections from this process to respool. Still worth bounding (one
        # per concurrent request handler), but they are cheap now: respool
        # multiplexes all of them, from every worker process, onto its own few
        # validated upstream connections (`--max-connections`, `--min-idle`).
        # Sizing the pool against Redis's `maxclients` is respool's job.
        max_connections=20,
        # Client-side deadlines: these STILL MATTER. respool has its own request
        # deadline (`--timeout`, 5s by default) and answers with a Redis-style
        # error when it passes ("... timed out after 5.0s; the command may or
        # may not have executed"). Keep socket_timeout a little above it to get
        # that explicit error, or below it if your latency budget is tighter
        # (the connection is then discarded by redis-py).
        socket_connect_timeout=1.0,
        socket_timeout=6.0,
        # Keepalive on the hop to respool; respool keeps its upstream sockets
        # alive itself (`--keepalive`).
        socket_keepalive=True,
        # Retries: respool now owns retrying against Redis. It retries what is
        # safe (commands not yet sent, -LOADING/-BUSY/-TRYAGAIN/-MASTERDOWN,
        # and read-only commands whose connection was lost) with
        # exponential backoff (`--retries`, `--backoff-base`, `--backoff-cap`),
        # and never applies a write twice. A client-side retry now only covers
        # the local hop (respool restarting). Keep it small: redis-py retries
        # any command on ConnectionError/TimeoutError, INCR included, so a retry
        # after a timeout may run a write twice.
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        retry_on_error=[ConnectionError, TimeoutError],
        # Health checks: respool owns these too. It PINGs idle upstream
        # connections (`--health-check-interval`), validates new ones with a
        # PING and a write/read probe, and replaces broken ones. This client
        # PING (sent before reusing a connection idle this long) goes through
        # respool to Redis; now it mainly catches a dead socket to respool.
        health_check_interval=30,
        # A connection name is kept by respool itself (CLIENT SETNAME does not
        # pin an upstream connection), so it is safe to set.
        client_name="webapp",
        # What respool does NOT take over: use the database number in respool's
        # `--upstream` URL (.../2) rather than `db=2` here; a SELECT of another
        # database gives each connection a dedicated upstream connection. The
        # Redis password belongs to respool (`--upstream-password`); a password
        # here is checked by respool itself (`--requirepass` / `--user`).
        decode_responses=True,
    )
    return redis.Redis(connection_pool=pool)


def main():
    host, _, port = os.environ.get("RESPOOL_ADDR", "127.0.0.1:6380").rpartition(":")
    r = make_client(host or "127.0.0.1", int(port))
    print(f"connected to respool at {host}:{port}: PING -> {r.ping()}")

    # Cache-aside: read, miss, compute, store with a TTL.
    key = "webapp:cache:user:42"
    r.delete(key)
    cached = r.get(key)
    if cached is None:
        cached = "Ada Lovelace"  # the expensive database query
        r.set(key, cached, ex=300)
    print(f"cache: {key} -> {r.get(key)!r}, TTL {r.ttl(key)}s")

    # Counters.
    r.delete("webapp:views:home")
    for _ in range(3):
        views = r.incr("webapp:views:home")
    print(f"counter: webapp:views:home -> {views}")

    # A session hash with an expiry.
    r.hset("webapp:session:abc", mapping={"user": "42", "cart": "3 items"})
    r.expire("webapp:session:abc", 1800)
    print(f"session: {r.hgetall('webapp:session:abc')}")

    # A pipeline in a MULTI/EXEC transaction (redis-py's default for pipelines):
    # respool runs it on a pinned upstream connection, so it stays atomic.
    with r.pipeline(transaction=True) as pipe:
        pipe.lpush("webapp:recent", "page-1", "page-2", "page-3")
        pipe.ltrim("webapp:recent", 0, 1)
        pipe.lrange("webapp:recent", 0, -1)
        print(f"transaction: {pipe.execute()}")

    # Optimistic locking (WATCH/MULTI/EXEC) with redis-py's helper.
    r.set("webapp:stock:sku1", 5)

    def reserve_one(pipe):
        stock = int(pipe.get("webapp:stock:sku1"))
        pipe.multi()
        pipe.set("webapp:stock:sku1", stock - 1)

    r.transaction(reserve_one, "webapp:stock:sku1")
    print(f"WATCH transaction: stock left -> {r.get('webapp:stock:sku1')}")

    # A Lua script: a fixed-window rate limiter.
    limiter = r.register_script(
        "local n = redis.call('INCR', KEYS[1]) "
        "if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end "
        "return n"
    )
    r.delete("webapp:rate:ip:10.0.0.1")
    hits = [limiter(keys=["webapp:rate:ip:10.0.0.1"], args=[60]) for _ in range(4)]
    print(f"rate limiter (EVALSHA): hits -> {hits}")

    # Pub/sub: a cache-invalidation channel.
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("webapp:invalidate")
    receivers = r.publish("webapp:invalidate", "user:42")
    message = None
    deadline = time.monotonic() + 5
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
    pubsub.close()
    print(f"pub/sub: PUBLISH -> {receivers} receiver(s), got {message and message['data']!r}")

    # Errors come back exactly as Redis words them.
    try:
        r.hget("webapp:views:home", "field")
    except redis.ResponseError as e:
        print(f"error reply: {e}")

    r.delete(*r.scan_iter("webapp:*"))
    print("cleaned up webapp:* keys")


if __name__ == "__main__":
    main()
