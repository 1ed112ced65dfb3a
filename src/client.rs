//! One client connection: read a batch of requests, route each, and write the
//! replies back in request order, one write per batch.
//!
//! Each request gets a slot in `pending`, in arrival order. Local answers fill
//! their slot at once; requests sent to the client's lane get theirs filled
//! when the lane delivers. Whatever prefix of `pending` is filled is moved to
//! the output buffer and written, so replies leave in request order no matter
//! the order in which they were resolved.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use crate::codec::{ProtocolError, Request, RequestDecoder, RequestLimits};
use crate::command::{classify, Local, Route};
use crate::config::Config;
use crate::error::{error_line, Error};
use crate::pool::lane::{Delivery, LaneRequest};
use crate::pool::LaneHandle;

/// Replies up to this size are copied into the output buffer; larger ones are
/// written from their own buffer to avoid copying megabytes.
const COPY_LIMIT: usize = 16 * 1024;

/// Serves one client until it disconnects, QUITs, breaks the protocol, or the
/// proxy shuts down.
pub async fn serve(
    stream: TcpStream,
    config: Arc<Config>,
    lane: LaneHandle,
    shutdown: CancellationToken,
    abort: CancellationToken,
) {
    let peer = stream.peer_addr().ok();
    let mut client = Client::new(stream, config, lane);
    match client.run(shutdown, abort).await {
        Ok(()) => tracing::trace!(?peer, "client closed"),
        Err(e) => tracing::debug!(?peer, error = %e, "client connection ended with an error"),
    }
}

struct Client {
    stream: TcpStream,
    config: Arc<Config>,
    lane: LaneHandle,
    /// This client's inbox; a clone of `reply_tx` travels with each request.
    reply_tx: mpsc::UnboundedSender<Delivery>,
    reply_rx: mpsc::UnboundedReceiver<Delivery>,
    decoder: RequestDecoder,
    /// Bytes read and not yet decoded. Allocated only while the client is
    /// active, so idle clients cost no buffer.
    inbuf: BytesMut,
    /// Replies in request order; `None` until resolved.
    pending: VecDeque<Option<Bytes>>,
    /// Sequence number of `pending[0]`.
    base_seq: u64,
    /// Resolved replies waiting to be written: small ones coalesced into
    /// `out_small`, large ones queued as their own buffers.
    out: VecDeque<Bytes>,
    out_small: BytesMut,
    /// No more requests will be read (QUIT, protocol error, EOF, shutdown).
    reading_done: bool,
}

impl Client {
    fn new(stream: TcpStream, config: Arc<Config>, lane: LaneHandle) -> Client {
        let (reply_tx, reply_rx) = mpsc::unbounded_channel();
        let limits = RequestLimits {
            max_bulk_len: config.max_bulk_length,
            ..RequestLimits::default()
        };
        Client {
            stream,
            config,
            lane,
            reply_tx,
            reply_rx,
            decoder: RequestDecoder::new(limits),
            inbuf: BytesMut::new(),
            pending: VecDeque::new(),
            base_seq: 0,
            out: VecDeque::new(),
            out_small: BytesMut::new(),
            reading_done: false,
        }
    }

    async fn run(
        &mut self,
        shutdown: CancellationToken,
        abort: CancellationToken,
    ) -> io::Result<()> {
        loop {
            if self.reading_done && self.pending.is_empty() && self.out_is_empty() {
                return Ok(());
            }
            let can_read =
                !self.reading_done && self.pending.len() < self.config.max_pending_per_client;
            let want_write = !self.out_is_empty();
            tokio::select! {
                biased;
                _ = abort.cancelled() => return Ok(()),
                Some(d) = self.reply_rx.recv() => {
                    self.resolve(d);
                    while let Ok(d) = self.reply_rx.try_recv() {
                        self.resolve(d);
                    }
                }
                r = self.stream.writable(), if want_write => r?,
                r = self.stream.readable(), if can_read => {
                    r?;
                    if self.read_some()? == 0 {
                        // EOF: the client is gone; replies still pending would
                        // reach nobody. (Its commands still run, as with Redis.)
                        return Ok(());
                    }
                }
                _ = shutdown.cancelled(), if !self.reading_done => {
                    self.reading_done = true;
                }
            }
            if !self.reading_done {
                self.process_input();
            }
            self.collect_ready();
            if self.write_some()? {
                return Ok(());
            }
        }
    }

    /// Reads what the socket has. Returns 0 on EOF.
    fn read_some(&mut self) -> io::Result<usize> {
        if self.inbuf.capacity() - self.inbuf.len() < 1024 {
            self.inbuf.reserve(self.config.read_buffer_size);
        }
        match self.stream.try_read_buf(&mut self.inbuf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(usize::MAX),
            Err(e) => Err(e),
        }
    }

    /// Decodes and routes buffered requests while the in-flight limit allows.
    fn process_input(&mut self) {
        while self.pending.len() < self.config.max_pending_per_client && !self.reading_done {
            match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(req)) => self.route(req),
                Ok(None) => break,
                Err(e) => self.protocol_error(e),
            }
        }
        if self.inbuf.is_empty() {
            // Let go of the read buffer between batches: its memory returns
            // once the requests sliced from it are answered.
            self.inbuf = BytesMut::new();
        }
    }

    fn protocol_error(&mut self, e: ProtocolError) {
        self.reading_done = true;
        self.inbuf.clear();
        if e == ProtocolError::Http {
            return;
        }
        tracing::debug!(error = %e, "client protocol error; closing its connection");
        self.push_ready(Error::ClientProtocol(e).to_resp());
    }

    fn route(&mut self, req: Request) {
        let command = classify(&req, self.config.upstream.db);
        match command.route {
            Route::Shared => {
                let seq = self.base_seq + self.pending.len() as u64;
                self.pending.push_back(None);
                let sent = self.lane.send(LaneRequest {
                    seq,
                    raw: req.raw().clone(),
                    retry_safe: command.retry_safe,
                    reply_to: self.reply_tx.clone(),
                });
                if sent.is_err() {
                    if let Some(slot) = self.pending.back_mut() {
                        *slot = Some(Error::ShuttingDown.to_resp());
                    }
                }
            }
            Route::Local(local) => {
                let reply = local_reply(local, &req);
                self.push_ready(reply);
                if local == Local::Quit {
                    self.reading_done = true;
                }
            }
            Route::Dedicated(why) => {
                let command = String::from_utf8_lossy(req.name()).to_ascii_uppercase();
                self.push_ready(
                    Error::NeedsDedicatedConnection {
                        command: command.into(),
                        why,
                    }
                    .to_resp(),
                );
            }
            Route::Denied => {
                let command = String::from_utf8_lossy(req.name()).to_ascii_uppercase();
                self.push_ready(Error::Denied(command.into()).to_resp());
            }
            Route::Attack => {
                // Like Redis: drop the connection without a word.
                tracing::warn!("possible cross-protocol attack (HTTP request on the proxy port); connection closed");
                self.protocol_error(ProtocolError::Http);
                self.pending.clear();
                self.out.clear();
                self.out_small.clear();
            }
        }
    }

    fn push_ready(&mut self, reply: Bytes) {
        self.pending.push_back(Some(reply));
    }

    fn resolve(&mut self, d: Delivery) {
        let Some(index) = d.seq.checked_sub(self.base_seq) else {
            return;
        };
        if let Some(slot) = self.pending.get_mut(index as usize) {
            *slot = Some(d.reply);
        }
    }

    /// Moves the resolved prefix of `pending` to the output.
    fn collect_ready(&mut self) {
        while let Some(Some(_)) = self.pending.front() {
            let Some(Some(reply)) = self.pending.pop_front() else {
                break;
            };
            self.base_seq += 1;
            if reply.len() <= COPY_LIMIT {
                self.out_small.extend_from_slice(&reply);
            } else {
                if !self.out_small.is_empty() {
                    self.out.push_back(self.out_small.split().freeze());
                }
                self.out.push_back(reply);
            }
        }
    }

    fn out_is_empty(&self) -> bool {
        self.out.is_empty() && self.out_small.is_empty()
    }

    /// Writes as much output as the socket takes without waiting. Returns
    /// true when the connection should now close (everything written after
    /// QUIT or a protocol error).
    fn write_some(&mut self) -> io::Result<bool> {
        loop {
            let chunk: &[u8] = match self.out.front() {
                Some(b) => b,
                None if !self.out_small.is_empty() => &self.out_small,
                None => break,
            };
            match self.stream.try_write(chunk) {
                Ok(n) => {
                    if let Some(front) = self.out.front_mut() {
                        front.advance(n);
                        if front.is_empty() {
                            self.out.pop_front();
                        }
                    } else {
                        self.out_small.advance(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if self.out_small.is_empty() && self.out_small.capacity() > 64 * 1024 {
            self.out_small = BytesMut::new();
        }
        Ok(self.reading_done && self.pending.is_empty())
    }
}

/// The reply to a command respool answers itself.
fn local_reply(local: Local, req: &Request) -> Bytes {
    match local {
        Local::Quit | Local::Ok => Bytes::from_static(b"+OK\r\n"),
        Local::Reset => Bytes::from_static(b"+RESET\r\n"),
        Local::Auth => error_line("ERR", "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
        Local::Hello => match req.arg(1) {
            None | Some(b"2") => hello_reply(),
            Some(b"3") => error_line("NOPROTO", "sorry, this protocol version is not supported"),
            Some(_) => error_line("ERR", "Protocol version is not an integer or out of range"),
        },
    }
}

/// `HELLO 2`'s reply: the fields clients look at, as a RESP2 flat map.
fn hello_reply() -> Bytes {
    let version = env!("CARGO_PKG_VERSION");
    let fields: [(&str, String); 6] = [
        ("server", "redis".into()),
        ("version", version.into()),
        ("proto", String::new()),
        ("mode", "standalone".into()),
        ("role", "master".into()),
        ("modules", String::new()),
    ];
    let mut out = String::from("*14\r\n");
    for (k, v) in fields {
        out.push_str(&format!("${}\r\n{k}\r\n", k.len()));
        match k {
            "proto" => out.push_str(":2\r\n"),
            "modules" => out.push_str("*0\r\n"),
            _ => out.push_str(&format!("${}\r\n{v}\r\n", v.len())),
        }
    }
    out.push_str("$2\r\nid\r\n:0\r\n");
    Bytes::from(out)
}
