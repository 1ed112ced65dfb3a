//! The other yardstick from the performance issue: the least work any proxy
//! can do per request, for measuring respool against, not for use.
//!
//! Each client connection gets its own upstream connection and two threads,
//! one per direction, that copy bytes with blocking `read` and `write` and do
//! nothing else: no parsing, no pooling, no event loop. A request through it
//! costs one extra read and write on each side, and one extra wake-up of a
//! sleeping thread each way, which is the hop every proxy adds. What it
//! measures at one client is an upper bound for any proxy that sleeps while
//! it waits.
//!
//! `--spin` serves each connection from one thread instead that polls both
//! sockets without blocking, in a loop: it never sleeps and is never woken,
//! which shows what the proxy's own wake-ups cost, at the price of one busy
//! core per client.
//!
//! It takes respool's `--listen` and `--upstream` flags, so the comparison
//! script can run it in respool's place:
//!
//! ```sh
//! cargo build --release --example relay_floor
//! python3 ../shared/bench/compare.py --respool target/release/examples/relay_floor
//! ```

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;

fn main() -> io::Result<()> {
    let mut listen = "127.0.0.1:6380".to_string();
    let mut upstream = "127.0.0.1:6379".to_string();
    let mut spin = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "--upstream" => {
                let url = args.next().expect("--upstream redis://HOST:PORT");
                upstream = url.trim_start_matches("redis://").to_string();
            }
            "--spin" => spin = true,
            other => panic!("unknown argument {other}"),
        }
    }
    let listener = TcpListener::bind(&listen)?;
    for client in listener.incoming() {
        // One client's failure (the upstream refusing it, say) closes that
        // client only, and the relay keeps serving the others.
        if let Err(e) = client.and_then(|client| relay(client, &upstream, spin)) {
            eprintln!("relay_floor: dropping a client: {e}");
        }
    }
    Ok(())
}

/// Connects `client` to the upstream and starts copying between them.
fn relay(client: TcpStream, upstream: &str, spin: bool) -> io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
        s.set_nonblocking(spin)?;
    }
    if spin {
        thread::spawn(move || spin_relay(client, server));
    } else {
        let (c2, s2) = (client.try_clone()?, server.try_clone()?);
        thread::spawn(move || copy(client, server));
        thread::spawn(move || copy(s2, c2));
    }
    Ok(())
}

/// Copies `from` to `to` until either side closes, sleeping in `read`.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Both directions from one thread that never sleeps.
fn spin_relay(client: TcpStream, server: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        for (mut from, mut to) in [(&client, &server), (&server, &client)] {
            let n = match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            };
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                match to.write(rest) {
                    Ok(0) => return,
                    Ok(m) => rest = &rest[m..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                    Err(_) => return,
                }
            }
        }
    }
}
