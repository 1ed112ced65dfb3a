//! Embedding respool in a Rust program and talking to it with the `redis` crate.
//!
//! ```sh
//! cargo run --example embedded
//! ```
//!
//! What it does, in order:
//!
//! 1. Starts its own `redis-server` on a free loopback port, in a temporary
//!    directory, without persistence (or uses `RESPOOL_EXAMPLE_UPSTREAM`, e.g.
//!    `redis://127.0.0.1:7000`, if set — it writes keys under `example:` there).
//! 2. Starts respool in-process on `127.0.0.1:0` in front of it.
//! 3. Talks to respool exactly as it would talk to Redis:
//!    * a sync client: SET/GET/INCR, a pipeline, a MULTI/EXEC transaction and
//!      a WATCH-based optimistic transaction;
//!    * an async multiplexed connection shared by several tasks;
//!    * an async pub/sub subscriber receiving messages that another
//!      connection publishes.
//! 4. Shuts respool down gracefully and stops the `redis-server`.
//!
//! Needs `redis-server` on `PATH` (or in `REDIS_SERVER_BIN`):
//! `apt-get install -y redis-server`. Set `RUST_LOG=respool=debug` to see the
//! proxy's own log lines.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use redis::{AsyncCommands, Commands};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    // 1. An upstream Redis: the caller's, or one of our own.
    let (upstream_url, _own_redis) = match std::env::var("RESPOOL_EXAMPLE_UPSTREAM") {
        Ok(url) => (url, None),
        Err(_) => {
            let redis = RedisChild::start()?;
            (redis.url(), Some(redis))
        }
    };
    println!("upstream Redis: {upstream_url}");

    // 2. respool, configured with the same flags as the binary.
    let config = respool::Config::parse_from_args([
        "respool",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream_url,
        "--max-connections",
        "2",
    ])?;
    let proxy = respool::Proxy::start(config).await?;
    let proxy_url = format!("redis://{}/", proxy.local_addr());
    println!("respool listening on {}\n", proxy.local_addr());

    // 3. The application side: a plain `redis::Client` pointed at respool.
    let client = redis::Client::open(proxy_url)?;

    // The sync API blocks its thread, so it runs off the async runtime.
    let sync_client = client.clone();
    tokio::task::spawn_blocking(move || sync_examples(&sync_client)).await??;
    async_examples(&client).await?;
    pubsub_example(&client).await?;

    // 4. Every connection above is closed by now, so this returns promptly.
    proxy.shutdown().await;
    println!("\nrespool shut down; done");
    Ok(())
}

/// The blocking `redis::Connection`, as a web handler or a script would use it.
fn sync_examples(client: &redis::Client) -> anyhow::Result<()> {
    println!("== sync client");
    let mut conn = client.get_connection()?;

    // Plain commands: each one travels over respool's shared upstream lanes.
    let _: () = conn.set("example:greeting", "hello from respool")?;
    let greeting: String = conn.get("example:greeting")?;
    let _: () = conn.del("example:visits")?;
    let visits: i64 = conn.incr("example:visits", 1)?;
    let visits_after: i64 = conn.incr("example:visits", 10)?;
    println!("GET example:greeting -> {greeting:?}");
    println!("INCR example:visits -> {visits}, INCRBY 10 -> {visits_after}");

    // A pipeline: several commands in one write, replies in the same order.
    let (len, tags): (usize, Vec<String>) = redis::pipe()
        .del("example:tags")
        .ignore()
        .rpush("example:tags", &["rust", "redis", "proxy"])
        .lrange("example:tags", 0, -1)
        .query(&mut conn)?;
    println!("pipeline: RPUSH -> {len}, LRANGE -> {tags:?}");

    // MULTI/EXEC: respool notices MULTI and gives this client a pinned
    // upstream connection until EXEC, so no other client's commands can land
    // inside the transaction.
    let _: () = conn.set("example:alice", 100)?;
    let _: () = conn.set("example:bob", 0)?;
    let (alice, bob): (i64, i64) = redis::pipe()
        .atomic()
        .decr("example:alice", 30)
        .incr("example:bob", 30)
        .query(&mut conn)?;
    println!("MULTI/EXEC transfer of 30: alice -> {alice}, bob -> {bob}");

    // WATCH + MULTI/EXEC (optimistic locking): `redis::transaction` retries
    // the closure if a watched key changed before EXEC. WATCH state lives on
    // the connection, which respool keeps pinned while it is set.
    let (doubled,): (i64,) = redis::transaction(&mut conn, &["example:bob"], |conn, pipe| {
        let bob: i64 = conn.get("example:bob")?;
        pipe.set("example:bob", bob * 2)
            .ignore()
            .get("example:bob")
            .query(conn)
    })?;
    println!("WATCH/MULTI/EXEC doubling bob -> {doubled}");
    Ok(())
}

/// One multiplexed async connection, cloned into several tasks: the usual
/// pattern in a tokio service. respool multiplexes in turn, across clients.
async fn async_examples(client: &redis::Client) -> anyhow::Result<()> {
    println!("\n== async client");
    let mut conn = client.get_multiplexed_async_connection().await?;
    for user in 0..5 {
        let _: () = conn
            .set(format!("example:user:{user}"), format!("user #{user}"))
            .await?;
    }

    let mut tasks = tokio::task::JoinSet::new();
    for user in 0..5 {
        let mut conn = conn.clone();
        tasks.spawn(async move {
            let name: String = conn.get(format!("example:user:{user}")).await?;
            Ok::<_, redis::RedisError>((user, name))
        });
    }
    let mut names = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        names.push(joined??);
    }
    names.sort();
    for (user, name) in names {
        println!("task {user}: GET example:user:{user} -> {name:?}");
    }
    Ok(())
}

/// A subscriber on its own connection (respool pins it while subscribed) and
/// a publisher on a normal one.
async fn pubsub_example(client: &redis::Client) -> anyhow::Result<()> {
    println!("\n== pub/sub");
    let mut subscriber = client.get_async_pubsub().await?;
    // `subscribe` returns once the server has confirmed the subscription, so
    // nothing published after this point is missed.
    subscriber.subscribe("example:news").await?;

    let mut publisher = client.get_multiplexed_async_connection().await?;
    let headlines = ["respool 0.1 released", "pools are shared", "bye"];
    for headline in headlines {
        let receivers: i64 = publisher.publish("example:news", headline).await?;
        println!("PUBLISH {headline:?} -> {receivers} subscriber(s)");
    }

    let mut messages = subscriber.on_message();
    for _ in headlines {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .context("no message within 5 s")?
            .context("the subscription stream ended")?;
        let payload: String = message.get_payload()?;
        println!(
            "subscriber got {payload:?} on {:?}",
            message.get_channel_name()
        );
    }
    Ok(())
}

/// A `redis-server` child process of our own: free loopback port, temporary
/// directory, no persistence; killed when dropped.
struct RedisChild {
    process: Child,
    port: u16,
    /// Kept alive as long as the server runs; removed on drop.
    _dir: tempfile::TempDir,
}

impl RedisChild {
    fn start() -> anyhow::Result<RedisChild> {
        let bin = find_redis_server().context(
            "redis-server not found: install it (apt-get install -y redis-server), \
             set REDIS_SERVER_BIN, or set RESPOOL_EXAMPLE_UPSTREAM to a Redis URL",
        )?;
        let port = free_port()?;
        let dir = tempfile::tempdir()?;
        let process = Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut redis = RedisChild {
            process,
            port,
            _dir: dir,
        };
        redis.wait_ready()?;
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Polls PING until the server answers (it takes a few milliseconds).
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.url())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ping = client
                .get_connection()
                .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn));
            match ping {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    bail!("redis-server on port {} did not answer: {e}", self.port)
                }
                Err(_) => {}
            }
            if let Some(status) = self.process.try_wait()? {
                bail!("redis-server on port {} exited: {status}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// `$REDIS_SERVER_BIN`, else the first `redis-server` on `PATH`.
fn find_redis_server() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("REDIS_SERVER_BIN") {
        return Some(PathBuf::from(bin));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

/// A port that was free a moment ago, never 6379 (someone else's Redis).
fn free_port() -> anyhow::Result<u16> {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if port != 6379 {
            return Ok(port);
        }
    }
}
