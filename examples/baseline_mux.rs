//! The yardstick from the performance issue: a *minimal* single-threaded
//! tokio multiplexer, for measuring respool against, not for use.
//!
//! Every client's complete requests go, as they were read, onto one upstream
//! connection; replies come back in order and go to the client that owns
//! them. It has none of what makes respool a proxy: no validation, retries,
//! sessions, limits, AUTH or error replies — a peer that breaks the protocol
//! ends the whole process. It takes respool's `--listen` and `--upstream`
//! flags, so the comparison script can run it in respool's place:
//!
//! ```sh
//! cargo build --release --example baseline_mux
//! python3 ../shared/bench/compare.py --respool target/release/examples/baseline_mux
//! ```

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Aggregates nested deeper than this end the process (a recursion bound).
const MAX_DEPTH: usize = 32;

type ReplyTo = mpsc::UnboundedSender<Bytes>;

/// Complete requests of one client, read together.
struct Batch {
    raw: Bytes,
    count: usize,
    reply_to: ReplyTo,
}

/// A batch written upstream, waiting for its replies.
struct Waiting {
    count: usize,
    reply_to: ReplyTo,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let listen = flag("--listen", "127.0.0.1:6380");
    let upstream = flag("--upstream", "redis://127.0.0.1:6379")
        .trim_start_matches("redis://")
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("cannot start the runtime: {e}")));
    tokio::task::LocalSet::new().block_on(&runtime, serve(listen, upstream));
}

fn fail(why: &str) -> ! {
    eprintln!("baseline_mux: {why}");
    std::process::exit(1)
}

async fn serve(listen: String, upstream: String) {
    let conn = TcpStream::connect(&upstream)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot connect to {upstream}: {e}")));
    conn.set_nodelay(true).ok();
    let (mut up_read, mut up_write) = conn.into_split();
    let waiting: Rc<RefCell<VecDeque<Waiting>>> = Rc::default();
    let (batches, mut batch_rx) = mpsc::unbounded_channel::<Batch>();

    // Writer: whatever batches are queued leave in one write.
    let queue = waiting.clone();
    tokio::task::spawn_local(async move {
        let mut out = BytesMut::with_capacity(64 * 1024);
        while let Some(first) = batch_rx.recv().await {
            let mut next = Some(first);
            while let Some(batch) = next {
                out.extend_from_slice(&batch.raw);
                queue.borrow_mut().push_back(Waiting {
                    count: batch.count,
                    reply_to: batch.reply_to,
                });
                next = batch_rx.try_recv().ok();
            }
            if let Err(e) = up_write.write_all(&out).await {
                fail(&format!("upstream write: {e}"));
            }
            out.clear();
        }
    });

    // Reader: replies, in order, to the batch at the front.
    tokio::task::spawn_local(async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut replies = BytesMut::new();
        let mut got = 0;
        loop {
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            match up_read.read_buf(&mut buf).await {
                Ok(0) => fail("upstream closed the connection"),
                Err(e) => fail(&format!("upstream read: {e}")),
                Ok(_) => {}
            }
            while let Some(end) = frame_end(&buf, 0, 0) {
                replies.unsplit(buf.split_to(end));
                got += 1;
                let mut queue = waiting.borrow_mut();
                let Some(front) = queue.front() else {
                    fail("a reply arrived with no request waiting");
                };
                if got == front.count {
                    let done = queue.pop_front().map(|w| w.reply_to);
                    if let Some(reply_to) = done {
                        let _ = reply_to.send(std::mem::take(&mut replies).freeze());
                    }
                    got = 0;
                }
            }
        }
    });

    let listener = TcpListener::bind(&listen)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot listen on {listen}: {e}")));
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::task::spawn_local(serve_client(client, batches.clone()));
            }
            Err(e) => eprintln!("baseline_mux: accept: {e}"),
        }
    }
}

async fn serve_client(client: TcpStream, batches: mpsc::UnboundedSender<Batch>) {
    client.set_nodelay(true).ok();
    let (mut read, mut write) = client.into_split();
    let (reply_to, mut replies) = mpsc::unbounded_channel::<Bytes>();
    tokio::task::spawn_local(async move {
        while let Some(reply) = replies.recv().await {
            if write.write_all(&reply).await.is_err() {
                break;
            }
        }
    });
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (mut end, mut count) = (0, 0);
        while let Some(next) = frame_end(&buf, end, 0) {
            end = next;
            count += 1;
        }
        if count > 0 {
            let raw = buf.split_to(end).freeze();
            let batch = Batch {
                raw,
                count,
                reply_to: reply_to.clone(),
            };
            if batches.send(batch).is_err() {
                return;
            }
        }
    }
}

/// The end of the RESP frame that starts at `buf[at..]`, if it is complete.
fn frame_end(buf: &[u8], at: usize, depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        fail("a frame nested too deep");
    }
    let cr = at + 1 + buf.get(at + 1..)?.windows(2).position(|w| w == b"\r\n")?;
    let next = cr + 2;
    let number = || {
        std::str::from_utf8(&buf[at + 1..cr])
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or_else(|| fail("a malformed length"))
    };
    match buf[at] {
        b'$' => match number() {
            n if n < 0 => Some(next),
            n => {
                let end = next + n as usize + 2;
                (end <= buf.len()).then_some(end)
            }
        },
        b'*' => {
            let mut end = next;
            for _ in 0..number().max(0) {
                end = frame_end(buf, end, depth + 1)?;
            }
            Some(end)
        }
        _ => Some(next),
    }
}
