//! respool: a Redis pooling proxy.
//!
//! Applications connect to respool as if it were Redis; respool carries their
//! commands over a small pool of validated, health-checked upstream
//! connections. A tour of the data flow, one module per step:
//!
//! ```text
//! app ──RESP──▶ server ──▶ client ──▶ command ──▶ pool::lane ──▶ Redis
//!                            ▲     (classify)   (shared, pipelined)  │
//!                            └────── replies, in request order ◀─────┘
//! ```
//!
//! * [`config`] — flags (each also `RESPOOL_<NAME>`) → one validated [`Config`].
//! * [`server`] — the listener, the client limit, graceful shutdown.
//! * [`event_loops`] — `--threads N`: N single-threaded loops, one listener each.
//! * [`client`] — one task per client: read a batch, route each request, write
//!   the replies back in request order.
//! * [`codec`] — request decoding with limits; reply framing as raw bytes.
//! * [`command`] — which path a command takes and whether it may be retried.
//! * [`pool`] — the bb8 manager and validation gate, and the shared lanes that
//!   multiplex many clients over few connections.
//! * [`upstream`] — one upstream connection: connect, socket options, exchanges.
//! * [`net`] — the byte stream of a connection: plain TCP or TLS.
//! * [`tls`] — certificates and keys for the TLS listener and `rediss://` upstreams.
//! * [`retry`] — backoff and what may be retried.
//! * [`error`] — the one error type, rendered as a Redis error line.
//! * [`bench`](mod@bench) — `respool bench`, a load generator that checks every reply.
//!
//! Embedding:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = respool::Config::parse_from_args(["respool", "--listen", "127.0.0.1:0"])?;
//! let proxy = respool::Proxy::start(config).await?;
//! println!("clients connect to {}", proxy.local_addr());
//! proxy.shutdown().await;
//! # Ok(()) }
//! ```

pub mod bench;
pub mod client;
pub mod codec;
pub mod command;
pub mod config;
pub mod error;
pub mod event_loops;
pub mod net;
pub mod pool;
pub mod retry;
pub mod server;
pub mod stats;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use error::Error;
pub use server::Proxy;
