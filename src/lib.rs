//! respool: a Redis pooling proxy.
//!
//! Applications connect to respool as if it were Redis; respool carries their
//! commands over a small pool of validated, health-checked upstream
//! connections. A tour of the data flow, one module per step:
//!
//! ```text
//! app ──RESP──▶ server ──▶ client ──▶ command ──▶ router ──▶ lane set ──┬─ shared lanes ─┐
//!                            ▲      (classify)              (endpoint)  └─ pinned session ┴─▶ Redis
//!                            └──────────────── replies, in request order ◀───────────────┘
//! ```
//!
//! * `config` — flags (each also `RESPOOL_<NAME>`) → one validated [`Config`],
//!   in groups the subsystems take directly.
//! * `server` — the listener, the client limit, graceful shutdown; `event_loops`
//!   runs `--threads N` of them ([`EventLoops`]).
//! * `client` — one task per client: read a batch, route each request, write
//!   the replies back in request order.
//! * [`codec`] — request decoding with limits; reply framing as raw bytes;
//!   a typed view of a reply for respool's own exchanges.
//! * [`command`] — which path a command takes and whether it may be retried.
//! * `router` — which lane set serves a client.
//! * `pool` — endpoints and their lane sets: shared lanes that multiplex many
//!   clients over few connections, pinned connections, the bb8 pools and
//!   the validation gate behind them.
//! * `net` — the byte stream of a connection: plain TCP, TLS (tokio-rustls)
//!   or a Unix socket; `unix_socket` — a Unix listener's socket file.
//! * `tls` — certificates and keys for the listener and `rediss://` upstreams.
//! * `retry` — backoff and what may be retried.
//! * `error` — the error a client is told, rendered as a Redis error line.
//! * `stats` — the counters behind `INFO respool` and `/metrics`.
//! * `live` — the settings a reload can change, read once per connection
//!   or checkout; [`reload`] re-reads the configuration and applies it.
//! * `slowlog` — runs slower than `--slowlog-threshold`, for `RESPOOL
//!   SLOWLOG` and the log; `client/admin` answers the `RESPOOL` admin
//!   commands (`--admin-user`).
//! * `ops` — `--metrics-listen`: the Prometheus exposition, `/healthz` and
//!   `/readyz`.
//! * [`bench`](mod@bench) — `respool bench`, a load generator that checks every
//!   reply; it uses only this crate's public API.
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
mod client;
pub mod codec;
pub mod command;
pub mod config;
mod error;
mod event_loops;
mod live;
mod net;
mod ops;
mod pool;
pub mod reload;
mod retry;
mod router;
mod server;
mod slowlog;
mod stats;
pub mod tls;
mod topology;
mod unix_socket;

pub use config::Config;
pub use event_loops::{current_thread_runtime, EventLoops};
pub use server::{Proxy, StartError};
