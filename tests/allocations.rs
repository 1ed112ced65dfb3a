//! The steady-state request path allocates (almost) nothing per request.
//!
//! A counting global allocator counts heap allocations made on the proxy's
//! thread only (a single-threaded runtime, as `--threads 1` runs it), while a
//! client on another thread drives pipelined GETs and SETs through it to a
//! real redis-server. Requests are sliced from the read buffer and replies
//! from the lane's buffer as shared `Bytes`, deliveries travel in channel
//! blocks of 32; so what remains per request must be a small fraction of one
//! allocation. A change that allocates per request (a `Vec` per request, a
//! `String` per reply, a oneshot per request) makes the count jump past 1.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use support::RedisServer;

struct Counting;

static PROXY_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the proxy's thread: only its allocations are counted.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// only addition is a relaxed counter increment, which cannot allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTED.try_with(Cell::get).unwrap_or(false) {
            PROXY_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTED.try_with(Cell::get).unwrap_or(false) {
            PROXY_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Sends `batches` pipelines of `per_batch` commands and reads every reply
/// (checking each one), as a plain blocking client.
fn drive(stream: &mut TcpStream, batches: usize, per_batch: usize) {
    let mut request = Vec::new();
    for i in 0..per_batch {
        let key = format!("key:{i:04}");
        if i % 2 == 0 {
            request.extend_from_slice(
                format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$5\r\nvalue\r\n",
                    key.len()
                )
                .as_bytes(),
            );
        } else {
            request.extend_from_slice(
                format!(
                    "*2\r\n$3\r\nGET\r\n${}\r\n{}\r\n",
                    key.len(),
                    format_args!("key:{:04}", i - 1)
                )
                .as_bytes(),
            );
        }
    }
    let expected: Vec<u8> = (0..per_batch)
        .flat_map(|i| {
            if i % 2 == 0 {
                b"+OK\r\n".to_vec()
            } else {
                b"$5\r\nvalue\r\n".to_vec()
            }
        })
        .collect();
    let mut reply = vec![0u8; expected.len()];
    for _ in 0..batches {
        stream.write_all(&request).expect("write to the proxy");
        stream.read_exact(&mut reply).expect("read from the proxy");
        assert_eq!(reply, expected, "wrong replies through the proxy");
    }
}

#[test]
fn the_request_path_allocates_less_than_once_per_request() {
    let redis = RedisServer::start();
    let config = respool::Config::parse_from_args([
        "respool",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &redis.url(),
        "--max-connections",
        "1",
        "--health-check-interval",
        "0s",
    ])
    .expect("valid flags");
    let (addr_tx, addr_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        COUNTED.with(|c| c.set(true));
        runtime.block_on(async move {
            let proxy = respool::Proxy::start(config).await.expect("proxy starts");
            addr_tx.send(proxy.local_addr()).expect("test is waiting");
            let _ = stop_rx.await;
            proxy.shutdown().await;
        });
        COUNTED.with(|c| c.set(false));
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("proxy address");
    let mut client = TcpStream::connect(addr).expect("connect to the proxy");
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");

    // Warm up: connections validated, buffers and channel blocks grown.
    drive(&mut client, 50, 100);
    let before = PROXY_ALLOCATIONS.load(Ordering::Relaxed);
    let (batches, per_batch) = (400, 100);
    drive(&mut client, batches, per_batch);
    let allocations = PROXY_ALLOCATIONS.load(Ordering::Relaxed) - before;

    let requests = (batches * per_batch) as f64;
    let per_request = allocations as f64 / requests;
    println!("pipelined: {allocations} allocations for {requests} requests: {per_request:.3} per request");
    assert!(per_request < 0.25, "pipelined: {allocations} allocations for {requests} requests ({per_request:.3} per request): something allocates per request");

    // Many clients without pipelining: each has one request in flight at a
    // time, so read buffers are always in use somewhere — they must still be
    // reused rather than allocated per request.
    const CLIENTS: usize = 50;
    const ROUNDS: usize = 400;
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let c = TcpStream::connect(addr).expect("connect to the proxy");
            c.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            c
        })
        .collect();
    let run = |clients: &mut Vec<TcpStream>, rounds: usize| {
        std::thread::scope(|scope| {
            for client in clients.iter_mut() {
                scope.spawn(move || drive(client, rounds, 1));
            }
        });
    };
    run(&mut clients, 20); // warm up
    let before = PROXY_ALLOCATIONS.load(Ordering::Relaxed);
    run(&mut clients, ROUNDS);
    let allocations = PROXY_ALLOCATIONS.load(Ordering::Relaxed) - before;
    let requests = (CLIENTS * ROUNDS) as f64;
    let per_request = allocations as f64 / requests;
    println!("{CLIENTS} clients, no pipelining: {allocations} allocations for {requests} requests: {per_request:.3} per request");
    assert!(per_request < 0.25, "{CLIENTS} clients without pipelining: {allocations} allocations for {requests} requests ({per_request:.3} per request): something allocates per request");

    let _ = stop_tx.send(());
    proxy_thread.join().expect("proxy thread");
}
