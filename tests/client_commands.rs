//! Commands that must reach a busy upstream, and CLIENT commands answered
//! in respool's terms: SCRIPT/FUNCTION KILL never queue behind the script
//! they stop; CLIENT LIST, INFO, KILL, UNBLOCK, PAUSE and TRACKING …
//! REDIRECT act on respool's clients, whose ids are respool's.

mod support;

use std::time::{Duration, Instant};

use support::{wait, RedisServer, Reply, TestClient, TestProxy};

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

/// A Redis that reports busy scripts after 50 ms (instead of 5 s), so a
/// kill is served at once.
fn busy_redis() -> RedisServer {
    RedisServer::builder()
        .arg("busy-reply-threshold", "50")
        .start()
}

/// Sends `kill` until the running script is there to kill; the time the
/// kill was accepted.
async fn kill_when_running(client: &mut TestClient, kill: &[&str]) -> Instant {
    wait::until_ok("a script to run", Duration::from_secs(20), async || {
        let reply = client.cmd(kill).await;
        if reply == ok() {
            return Ok(Instant::now());
        }
        assert_eq!(
            reply.error_code(),
            Some("NOTBUSY"),
            "{kill:?} answered {reply}"
        );
        Err(format!("no script ever ran: {kill:?} answered {reply}"))
    })
    .await
}

#[tokio::test]
async fn script_and_function_kill_reach_a_busy_upstream_at_once() {
    let redis = busy_redis();
    let proxy = TestProxy::start(&redis.url(), &["--timeout", "30s"]).await;
    let mut runner = proxy.client().await;
    let mut killer = proxy.client().await;

    runner
        .send(&["EVAL", "while true do end", "0"])
        .await
        .expect("sent");
    let killed_at = kill_when_running(&mut killer, &["SCRIPT", "KILL"]).await;
    let reply = runner.read_reply().await.expect("the script's reply");
    assert!(
        reply.to_string().contains("killed by user"),
        "the script answered {reply}"
    );
    assert!(
        killed_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        killed_at.elapsed()
    );

    let code = "#!lua name=spin\nredis.register_function('spin', function() while true do end end)";
    assert!(!runner
        .cmd(&["FUNCTION", "LOAD", "REPLACE", code])
        .await
        .is_error());
    runner.send(&["FCALL", "spin", "0"]).await.expect("sent");
    kill_when_running(&mut killer, &["FUNCTION", "KILL"]).await;
    let reply = runner.read_reply().await.expect("the function's reply");
    assert!(reply.to_string().contains("killed"), "{reply}");
    // Everyone is served again on the same lanes.
    assert_eq!(killer.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    assert_eq!(runner.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
}

/// A field of a `CLIENT LIST` line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

async fn client_id(client: &mut TestClient) -> i64 {
    client.cmd(&["CLIENT", "ID"]).await.as_int().expect("an id")
}

/// The `CLIENT LIST` line of client `id`, as `asker` sees it.
async fn list_line(asker: &mut TestClient, id: i64) -> Option<String> {
    let list = asker.cmd(&["CLIENT", "LIST"]).await;
    let text = list.as_str().expect("CLIENT LIST is text").to_string();
    text.lines()
        .find(|line| field(line, "id") == Some(&id.to_string()))
        .map(str::to_string)
}

#[tokio::test]
async fn client_list_info_and_kill_see_respools_clients() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut me = proxy.client().await;
    let mut other = proxy.client().await;
    let my_id = client_id(&mut me).await;
    let other_id = client_id(&mut other).await;
    assert_eq!(other.cmd(&["CLIENT", "SETNAME", "worker"]).await, ok());

    let mine = list_line(&mut me, my_id).await.expect("I am listed");
    assert_eq!(field(&mine, "cmd"), Some("client|list"), "{mine}");
    assert_eq!(field(&mine, "qbuf"), Some("26"), "{mine}");
    assert_eq!(field(&mine, "flags"), Some("N"), "{mine}");
    assert_eq!(field(&mine, "resp"), Some("2"), "{mine}");
    let theirs = list_line(&mut me, other_id)
        .await
        .expect("the other is listed");
    assert_eq!(field(&theirs, "name"), Some("worker"), "{theirs}");
    assert_eq!(
        field(&theirs, "addr"),
        Some(other.local_addr().to_string().as_str()),
        "{theirs}"
    );
    let info = me.cmd(&["CLIENT", "INFO"]).await;
    let info = info.as_str().expect("text").trim_end().to_string();
    assert_eq!(field(&info, "id"), Some(my_id.to_string().as_str()));
    assert_eq!(field(&info, "cmd"), Some("client|info"));
    // Only the named ids.
    let only = me
        .cmd(&["CLIENT", "LIST", "ID", &other_id.to_string()])
        .await;
    assert_eq!(only.as_str().expect("text").lines().count(), 1);

    // Redis's argument errors.
    me.cmd(&["CLIENT", "KILL", "ID", "0"])
        .await
        .expect_error_code("ERR");
    me.cmd(&["CLIENT", "KILL", "TYPE", "wrong"])
        .await
        .expect_error_code("ERR");
    // Killing the other closes its connection.
    assert_eq!(
        me.cmd(&["CLIENT", "KILL", "ID", &other_id.to_string()])
            .await,
        Reply::Int(1)
    );
    let gone = other.read_reply_within(Duration::from_secs(20)).await;
    assert!(
        gone.is_err_and(|e| e.is_closed()),
        "the killed client stayed open"
    );
    // SKIPME no: the caller gets its answer, then is closed.
    let killed = me.cmd(&["CLIENT", "KILL", "SKIPME", "no"]).await;
    assert!(matches!(killed, Reply::Int(n) if n >= 1), "{killed}");
    assert!(
        me.try_cmd(&["PING"]).await.is_err(),
        "the caller was killed too"
    );
}

#[tokio::test]
async fn client_unblock_reaches_the_pinned_connection_of_the_client_it_names() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut blocked = proxy.client().await;
    let mut helper = proxy.client().await;
    let id = client_id(&mut blocked).await;

    for (mode, expect_error) in [(None, false), (Some("ERROR"), true)] {
        blocked.send(&["BLPOP", "empty", "0"]).await.expect("sent");
        // Wait until respool knows it is blocked.
        wait::until_ok(
            "the client to be listed as blocked",
            Duration::from_secs(20),
            async || match list_line(&mut helper, id).await {
                Some(line) if field(&line, "flags") == Some("b") => Ok(()),
                line => Err(format!("never listed as blocked: {line:?}")),
            },
        )
        .await;
        let mut unblock = vec!["CLIENT", "UNBLOCK"];
        let id_text = id.to_string();
        unblock.push(&id_text);
        unblock.extend(mode);
        assert_eq!(helper.cmd(&unblock).await, Reply::Int(1));
        let reply = blocked
            .read_reply_within(Duration::from_secs(5))
            .await
            .expect("unblocked");
        if expect_error {
            reply.expect_error_code("UNBLOCKED");
        } else {
            assert!(reply.is_nil(), "{reply}");
        }
    }
    // Not blocked: nothing to unblock.
    assert_eq!(
        helper.cmd(&["CLIENT", "UNBLOCK", &id.to_string()]).await,
        Reply::Int(0)
    );
}

#[tokio::test]
async fn client_pause_write_holds_writes_and_unpause_releases_them_in_order() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut admin = proxy.client().await;
    let mut app = proxy.client().await;
    assert_eq!(app.cmd(&["SET", "k", "0"]).await, ok());
    assert_eq!(
        admin.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]).await,
        ok()
    );
    // Reads pass a WRITE pause.
    assert_eq!(app.cmd(&["GET", "k"]).await, Reply::Bulk(b"0".to_vec()));
    // A write, and a read after it, wait (in order).
    app.send(&["INCR", "k"]).await.expect("sent");
    app.send(&["GET", "k"]).await.expect("sent");
    assert!(
        app.read_reply_within(Duration::from_millis(300))
            .await
            .is_err_and(|e| e.is_timeout()),
        "the write was not held"
    );
    assert_eq!(redis.command(&[b"GET", b"k"]), Reply::Bulk(b"0".to_vec()));
    assert_eq!(admin.cmd(&["CLIENT", "UNPAUSE"]).await, ok());
    assert_eq!(app.read_reply().await.expect("INCR"), Reply::Int(1));
    assert_eq!(
        app.read_reply().await.expect("GET"),
        Reply::Bulk(b"1".to_vec())
    );
    // A pause ends by itself too.
    assert_eq!(admin.cmd(&["CLIENT", "PAUSE", "200"]).await, ok());
    let held = Instant::now();
    assert_eq!(app.cmd(&["GET", "k"]).await, Reply::Bulk(b"1".to_vec()));
    assert!(
        held.elapsed() >= Duration::from_millis(150),
        "{:?}",
        held.elapsed()
    );
}

#[tokio::test]
async fn tracking_redirects_to_the_client_it_names() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut listener = proxy.client().await;
    let mut tracked = proxy.client().await;
    let mut writer = proxy.client().await;
    let listener_id = client_id(&mut listener).await;
    let subscribed = listener.cmd(&["SUBSCRIBE", "__redis__:invalidate"]).await;
    assert!(matches!(subscribed, Reply::Array(_)), "{subscribed}");
    // No such client: Redis's error.
    tracked
        .cmd(&["CLIENT", "TRACKING", "on", "REDIRECT", "999999"])
        .await
        .expect_error_code("ERR");
    assert_eq!(
        tracked
            .cmd(&[
                "CLIENT",
                "TRACKING",
                "on",
                "REDIRECT",
                &listener_id.to_string()
            ])
            .await,
        ok()
    );
    assert_eq!(writer.cmd(&["SET", "tk", "1"]).await, ok());
    assert_eq!(
        tracked.cmd(&["GET", "tk"]).await,
        Reply::Bulk(b"1".to_vec())
    );
    assert_eq!(writer.cmd(&["SET", "tk", "2"]).await, ok());
    let message = listener
        .read_reply_within(Duration::from_secs(5))
        .await
        .expect("an invalidation");
    let text = format!("{message:?}");
    assert!(text.contains("invalidate") && text.contains("tk"), "{text}");
    // The redirect reads back as the id the client gave.
    assert_eq!(
        tracked.cmd(&["CLIENT", "GETREDIR"]).await,
        Reply::Int(listener_id)
    );
    assert_eq!(
        tracking_info_redirect(&mut tracked).await,
        Reply::Int(listener_id)
    );
}

/// The `redirect` field of `CLIENT TRACKINGINFO` (RESP2 or RESP3).
async fn tracking_info_redirect(client: &mut TestClient) -> Reply {
    let pairs: Vec<(Reply, Reply)> = match client.cmd(&["CLIENT", "TRACKINGINFO"]).await {
        Reply::Map(pairs) => pairs,
        Reply::Array(items) => items
            .chunks(2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect(),
        other => panic!("TRACKINGINFO answered {other}"),
    };
    pairs
        .into_iter()
        .find(|(k, _)| *k == Reply::Bulk(b"redirect".to_vec()))
        .map(|(_, v)| v)
        .expect("a redirect field")
}

/// Redis tells a RESP3 tracking client that its redirect broke once the
/// target's connection is gone; through respool the target's pinned
/// connection is closed when the target leaves, not pooled, so the client
/// hears of it as it would directly.
#[tokio::test]
async fn a_redirect_target_that_leaves_breaks_the_redirect() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut listener = proxy.client().await;
    let mut tracked = proxy.client().await;
    let mut writer = proxy.client().await;
    let listener_id = client_id(&mut listener).await.to_string();
    let subscribed = listener.cmd(&["SUBSCRIBE", "__redis__:invalidate"]).await;
    assert!(matches!(subscribed, Reply::Array(_)), "{subscribed}");
    assert!(matches!(tracked.cmd(&["HELLO", "3"]).await, Reply::Map(_)));
    let tracking = ["CLIENT", "TRACKING", "on", "REDIRECT", listener_id.as_str()];
    assert_eq!(tracked.cmd(&tracking).await, ok());
    assert_eq!(writer.cmd(&["SET", "tk", "1"]).await, ok());
    assert_eq!(
        tracked.cmd(&["GET", "tk"]).await,
        Reply::Bulk(b"1".to_vec())
    );
    assert_eq!(listener.cmd(&["QUIT"]).await, ok());
    drop(listener);

    // The target's connection closes in the background: keep changing the
    // key until Redis finds the redirect broken.
    let mut broken = false;
    for _ in 0..100 {
        assert_eq!(writer.cmd(&["SET", "tk", "2"]).await, ok());
        tracked.send(&["PING"]).await.expect("sent");
        loop {
            match tracked.read_reply().await.expect("a reply") {
                Reply::Simple(pong) if pong == "PONG" => break,
                Reply::Push(items) => {
                    broken |= items.first() == Some(&Reply::Bulk(b"tracking-redir-broken".to_vec()))
                }
                other => panic!("unexpected {other}"),
            }
        }
        if broken {
            break;
        }
        // Tracking dropped the key with its invalidation: read it again.
        tracked.cmd(&["GET", "tk"]).await;
    }
    assert!(
        broken,
        "no tracking-redir-broken push after the target left"
    );
}

#[tokio::test]
async fn commands_redis_never_queues_abort_a_transaction_in_redis_words() {
    let redis = RedisServer::start();
    let proxy = TestProxy::start(&redis.url(), &[]).await;
    let mut client = proxy.client().await;
    let mut direct = redis.direct().await;
    for c in [&mut client, &mut direct] {
        assert_eq!(c.cmd(&["MULTI"]).await, ok());
        assert_eq!(
            c.cmd(&["SET", "m", "1"]).await,
            Reply::Simple("QUEUED".into())
        );
    }
    let refused = client.cmd(&["SHUTDOWN", "NOSAVE"]).await;
    assert_eq!(
        refused,
        Reply::Error("ERR Command not allowed inside a transaction".into())
    );
    let direct_refused = direct.cmd(&["SYNC"]).await;
    assert_eq!(refused, direct_refused, "the words Redis uses");
    for c in [&mut client, &mut direct] {
        c.cmd(&["EXEC"]).await.expect_error_code("EXECABORT");
    }
    assert_eq!(client.cmd(&["GET", "m"]).await, Reply::Nil);
}
