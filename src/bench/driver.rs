//! Client tasks: connect, send pipeline batches, read and check every reply,
//! record latencies.
//!
//! The load runs on its own runtime on its own OS thread (see [`run_load`]):
//! one current-thread runtime by default. Clients share nothing but one
//! progress counter, so a single thread needs no cross-thread wake-ups or
//! work stealing, keeps one core for the endpoint under test on a small
//! machine, and matches redis-benchmark's single-threaded design, which makes
//! the two tools' numbers comparable. Running apart from the caller's runtime
//! also keeps an in-process proxy (`--sweep`) from sharing a scheduler with
//! the load aimed at it.
//!
//! (Over 600 lines with its tests against a fake server, which check that
//! every reply is counted exactly once however a run ends.)

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::args::Password;
use super::report::{printable, reply_summary};
use super::workload::{ClientState, Op, RequestPlan, Verdict};
use super::BenchError;
use crate::codec::Value;
use crate::tls::UpstreamTls;

/// Deepest reply nesting accepted: nothing the benchmark sends expects an
/// aggregate at all.
const MAX_DEPTH: usize = 32;

/// Parses the reply at the front of `buf`.
fn parse(buf: &[u8]) -> io::Result<Option<(Value<'_>, usize)>> {
    Value::parse(buf, MAX_DEPTH).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("protocol error in reply stream: {e}"),
        )
    })
}

/// A client's connection, in two halves so that a batch is written while
/// its replies are read.
struct Conn {
    reader: Box<dyn AsyncRead + Unpin + Send>,
    writer: Box<dyn AsyncWrite + Unpin + Send>,
}

impl Conn {
    fn tcp(tcp: TcpStream) -> Conn {
        let (reader, writer) = tcp.into_split();
        Conn {
            reader: Box::new(reader),
            writer: Box::new(writer),
        }
    }

    fn tls(tls: tokio_rustls::client::TlsStream<TcpStream>) -> Conn {
        let (reader, writer) = tokio::io::split(tls);
        Conn {
            reader: Box::new(reader),
            writer: Box::new(writer),
        }
    }

    /// Writes all of `data` and flushes it (TLS keeps records otherwise).
    async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.writer.write_all(data).await?;
        self.writer.flush().await
    }
}

/// Examples of each kind of failure kept for the report.
pub const MAX_EXAMPLES: usize = 5;
/// Longest latency the histogram records; anything slower is clamped to it.
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;
/// Initial size of a client's read buffer.
const READ_BUFFER: usize = 64 * 1024;

/// When the run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAfter {
    /// After this many requests in total, split evenly over the clients.
    Requests(u64),
    /// After this long: no batch is started later, in-flight ones finish.
    Elapsed(Duration),
}

/// Everything one load run needs.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Endpoint to connect to.
    pub target: String,
    /// Number of client connections.
    pub clients: u32,
    /// Requests per batch.
    pub pipeline: u32,
    /// When to stop.
    pub stop: StopAfter,
    /// What to send and how to check it.
    pub plan: Arc<RequestPlan>,
    /// AUTH password, if any.
    pub password: Option<Password>,
    /// Worker threads of the load runtime; 1 means current-thread.
    pub threads: u32,
    /// How long to wait for each connection to be established.
    pub connect_timeout: Duration,
    /// Draw a progress line on stderr.
    pub progress: bool,
    /// Seed of the clients' random key streams.
    pub seed: u64,
    /// Connect with TLS, with these settings.
    pub tls: Option<UpstreamTls>,
}

/// Counts of checked replies plus the first few examples of each failure.
#[derive(Debug, Default, Clone)]
pub struct ReplyTally {
    /// Replies that matched their request exactly.
    pub correct: u64,
    /// Replies of the wrong type or content.
    pub wrong: u64,
    /// Error replies (`-…`).
    pub errors: u64,
    /// Clients whose connection failed mid-run (reset, EOF, garbage).
    pub connection_errors: u64,
    /// The first wrong replies, described.
    pub wrong_examples: Vec<String>,
    /// The first error replies, described.
    pub error_examples: Vec<String>,
    /// The first connection failures, described.
    pub connection_error_examples: Vec<String>,
}

impl ReplyTally {
    fn merge(&mut self, other: ReplyTally) {
        self.correct += other.correct;
        self.wrong += other.wrong;
        self.errors += other.errors;
        self.connection_errors += other.connection_errors;
        keep_first(&mut self.wrong_examples, other.wrong_examples);
        keep_first(&mut self.error_examples, other.error_examples);
        keep_first(
            &mut self.connection_error_examples,
            other.connection_error_examples,
        );
    }

    fn connection_failed(&mut self, client: u32, error: &io::Error) {
        self.connection_errors += 1;
        keep_first(
            &mut self.connection_error_examples,
            [format!("client {client}: {error}")],
        );
    }
}

fn keep_first(examples: &mut Vec<String>, more: impl IntoIterator<Item = String>) {
    let room = MAX_EXAMPLES.saturating_sub(examples.len());
    examples.extend(more.into_iter().take(room));
}

/// What one load run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Per-request latency in microseconds, from the send of its batch to
    /// the arrival of its reply.
    pub latency: Histogram<u64>,
    /// Wall time from the first batch to the last reply.
    pub elapsed: Duration,
    /// Reply counts and examples.
    pub tally: ReplyTally,
}

impl LoadResult {
    /// Replies received, whatever their verdict.
    pub fn replies(&self) -> u64 {
        self.tally.correct + self.tally.wrong + self.tally.errors
    }
}

/// Runs `spec` to completion on a dedicated runtime thread.
pub async fn run_load(spec: LoadSpec) -> Result<LoadResult, BenchError> {
    let runtime = if spec.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(spec.threads as usize)
            .thread_name("respool-bench-worker")
            .enable_all()
            .build()
    }
    .map_err(BenchError::Runtime)?;
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("respool-bench".into())
        .spawn(move || {
            // The receiver only disappears if the caller gave up waiting.
            let _ = done.send(runtime.block_on(drive(spec)));
        })
        .map_err(BenchError::Runtime)?;
    result
        .await
        .map_err(|_| BenchError::Runtime(io::Error::other("load thread panicked")))?
}

async fn drive(spec: LoadSpec) -> Result<LoadResult, BenchError> {
    // Connect (and authenticate) every client before the clock starts, so
    // connection setup is not measured as request latency.
    let mut connecting = JoinSet::new();
    for id in 0..spec.clients {
        let (target, password, timeout, tls) = (
            spec.target.clone(),
            spec.password.clone(),
            spec.connect_timeout,
            spec.tls.clone(),
        );
        connecting.spawn(async move {
            connect(&target, password.as_ref(), timeout, tls.as_ref())
                .await
                .map(|s| (id, s))
        });
    }
    let mut streams = Vec::with_capacity(spec.clients as usize);
    while let Some(joined) = connecting.join_next().await {
        streams.push(joined.map_err(|e| BenchError::Runtime(io::Error::other(e)))??);
    }

    let completed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let progress = spec
        .progress
        .then(|| tokio::spawn(show_progress(completed.clone(), start)));
    let mut clients = JoinSet::new();
    for (id, stream) in streams {
        let budget = match spec.stop {
            StopAfter::Requests(total) => {
                let clients = u64::from(spec.clients);
                let extra = u64::from(u64::from(id) < total % clients);
                Budget::Requests(total / clients + extra)
            }
            StopAfter::Elapsed(duration) => Budget::Until(start + duration),
        };
        let client = Client {
            stream,
            state: spec.plan.client(id, spec.seed),
            plan: spec.plan.clone(),
            pipeline: spec.pipeline as usize,
            budget,
            completed: completed.clone(),
        };
        clients.spawn(client.run());
    }

    let mut latency = new_histogram();
    let mut tally = ReplyTally::default();
    while let Some(joined) = clients.join_next().await {
        let (client_latency, client_tally) =
            joined.map_err(|e| BenchError::Runtime(io::Error::other(e)))?;
        latency.add(&client_latency).map_err(|e| {
            BenchError::Runtime(io::Error::other(format!("merging histograms: {e:?}")))
        })?;
        tally.merge(client_tally);
    }
    let elapsed = start.elapsed();
    if let Some(progress) = progress {
        progress.abort();
        eprint!("\r\x1b[2K");
    }
    Ok(LoadResult {
        latency,
        elapsed,
        tally,
    })
}

/// A histogram covering 1 µs to an hour at three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: creation cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3).expect("valid histogram bounds")
}

async fn connect(
    target: &str,
    password: Option<&Password>,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
) -> Result<Conn, BenchError> {
    let connect_error = |source| BenchError::Connect {
        target: target.to_owned(),
        source,
    };
    // `measure` checked the target; a bad one fails to connect here.
    let addr = super::endpoint(target).map_or(target, |(addr, _)| addr);
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| connect_error(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
        .map_err(connect_error)?;
    tcp.set_nodelay(true).map_err(connect_error)?;
    let mut stream = match tls {
        None => Conn::tcp(tcp),
        Some(tls) => {
            let handshake = tls.connector.connect(tls.server_name.clone(), tcp);
            let tls_stream = tokio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| {
                    connect_error(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    ))
                })?
                .map_err(|e| {
                    connect_error(io::Error::new(
                        e.kind(),
                        format!("TLS handshake failed: {e}"),
                    ))
                })?;
            Conn::tls(tls_stream)
        }
    };
    if let Some(password) = password {
        let secret = password.expose().as_bytes();
        let mut auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n", secret.len()).into_bytes();
        auth.extend_from_slice(secret);
        auth.extend_from_slice(b"\r\n");
        stream.send(&auth).await.map_err(connect_error)?;
        let mut buf = BytesMut::with_capacity(512);
        let reply = loop {
            if let Some((reply, _)) = parse(&buf).map_err(connect_error)? {
                break reply_summary(&reply);
            }
            let read = tokio::time::timeout(timeout, stream.reader.read_buf(&mut buf))
                .await
                .map_err(|_| {
                    connect_error(io::Error::new(io::ErrorKind::TimedOut, "AUTH timed out"))
                })?
                .map_err(connect_error)?;
            if read == 0 {
                return Err(connect_error(io::ErrorKind::UnexpectedEof.into()));
            }
        };
        if reply != "+OK" {
            return Err(BenchError::Auth {
                target: target.to_owned(),
                reply,
            });
        }
    }
    Ok(stream)
}

/// How much work a client has left.
#[derive(Debug, Clone, Copy)]
enum Budget {
    Requests(u64),
    Until(Instant),
}

impl Budget {
    /// Size of the next batch, taken from the budget; 0 means stop.
    fn take_batch(&mut self, pipeline: usize) -> usize {
        match self {
            Budget::Requests(left) => {
                let batch = (*left).min(pipeline as u64);
                *left -= batch;
                batch as usize
            }
            Budget::Until(deadline) if Instant::now() < *deadline => pipeline,
            Budget::Until(_) => 0,
        }
    }
}

/// One client connection and its share of the load.
struct Client {
    stream: Conn,
    state: ClientState,
    plan: Arc<RequestPlan>,
    pipeline: usize,
    budget: Budget,
    /// Requests completed by all clients, for the progress line.
    completed: Arc<AtomicU64>,
}

impl Client {
    async fn run(mut self) -> (Histogram<u64>, ReplyTally) {
        let mut latency = new_histogram();
        let mut tally = ReplyTally::default();
        // Buffers live for the whole run: a batch allocates nothing.
        let mut batch = Vec::with_capacity(self.pipeline * 64);
        let mut ops = Vec::with_capacity(self.pipeline);
        let mut replies = BytesMut::with_capacity(READ_BUFFER);
        loop {
            let size = self.budget.take_batch(self.pipeline);
            if size == 0 {
                break;
            }
            batch.clear();
            ops.clear();
            for _ in 0..size {
                let op = self.plan.next_op(&mut self.state);
                self.plan.encode(op, &self.state, &mut batch);
                ops.push(op);
            }

            // Write the batch in one write while reading replies, so a peer
            // that answers before it has read the whole batch cannot
            // deadlock against us.
            let sent = Instant::now();
            let Conn { reader, writer } = &mut self.stream;
            let mut checker = ReplyChecker {
                plan: &self.plan,
                state: &mut self.state,
                latency: &mut latency,
                tally: &mut tally,
                sent,
            };
            let write = async {
                writer.write_all(&batch).await?;
                writer.flush().await
            };
            let outcome = tokio::try_join!(write, checker.read_replies(reader, &mut replies, &ops));
            if let Err(error) = outcome {
                tally.connection_failed(self.state.id(), &error);
                break;
            }
            self.completed.fetch_add(size as u64, Ordering::Relaxed);
        }
        (latency, tally)
    }
}

/// Checks the replies of one batch as they arrive.
struct ReplyChecker<'a> {
    plan: &'a RequestPlan,
    state: &'a mut ClientState,
    latency: &'a mut Histogram<u64>,
    tally: &'a mut ReplyTally,
    /// When the batch was handed to the socket.
    sent: Instant,
}

impl ReplyChecker<'_> {
    /// Reads exactly one reply per op in `ops`. Any stream that cannot be
    /// trusted any more (EOF, garbage, bytes beyond the last reply) is an
    /// error: the connection is dropped rather than misattribute replies.
    async fn read_replies(
        &mut self,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        buf: &mut BytesMut,
        ops: &[Op],
    ) -> io::Result<()> {
        let mut next = 0;
        while next < ops.len() {
            while next < ops.len() {
                let Some((reply, used)) = parse(buf)? else {
                    break;
                };
                let micros = u64::try_from(self.sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.latency
                    .saturating_record(micros.clamp(1, MAX_LATENCY_MICROS));
                self.check(ops[next], &reply);
                buf.advance(used);
                next += 1;
            }
            if next < ops.len() && reader.read_buf(buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed with {} replies outstanding",
                        ops.len() - next
                    ),
                ));
            }
        }
        if !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unsolicited bytes after the last reply: {}", printable(buf)),
            ));
        }
        Ok(())
    }

    fn check(&mut self, op: Op, reply: &Value<'_>) {
        let verdict = self.plan.check(op, reply, self.state);
        let (count, examples) = match verdict {
            Verdict::Correct => {
                self.tally.correct += 1;
                return;
            }
            Verdict::Wrong => (&mut self.tally.wrong, &mut self.tally.wrong_examples),
            Verdict::ErrorReply => (&mut self.tally.errors, &mut self.tally.error_examples),
        };
        *count += 1;
        if examples.len() < MAX_EXAMPLES {
            examples.push(format!(
                "client {}: {}, got {}",
                self.state.id(),
                self.plan.describe(op, self.state),
                reply_summary(reply)
            ));
        }
    }
}

/// Redraws a one-line progress report on stderr until aborted.
async fn show_progress(completed: Arc<AtomicU64>, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last = (start, 0u64);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let done = completed.load(Ordering::Relaxed);
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
        last = (now, done);
        eprint!(
            "\r\x1b[2K{:>6.1}s  {done:>10} requests  {rate:>10.0} ops/s",
            now.duration_since(start).as_secs_f64()
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bench::args::Workload;
    use tokio::net::TcpListener;

    /// A fake RESP server on a free port: answers every request with
    /// `reply`, and hangs up after `hang_up_after` requests if given.
    pub(crate) async fn fake_server(reply: &'static [u8], hang_up_after: Option<usize>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    let mut answered = 0;
                    loop {
                        // Requests are arrays, which the reply parser can split.
                        while let Ok(Some((_, used))) = parse(&buf) {
                            buf.advance(used);
                            if hang_up_after == Some(answered) {
                                return;
                            }
                            answered += 1;
                            if socket.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                        if matches!(socket.read_buf(&mut buf).await, Ok(0) | Err(_)) {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    pub(crate) fn spec(target: &str, workload: Workload, stop: StopAfter) -> LoadSpec {
        LoadSpec {
            target: target.to_owned(),
            clients: 3,
            pipeline: 4,
            stop,
            plan: Arc::new(RequestPlan::new(workload, 0.5, 100, 3, "t:")),
            password: None,
            threads: 1,
            connect_timeout: Duration::from_secs(5),
            progress: false,
            seed: 1,
            tls: None,
        }
    }

    #[tokio::test]
    async fn every_request_gets_one_checked_reply() {
        let addr = fake_server(b"+OK\r\n", None).await;
        // 3 clients share 101 requests: 34 + 34 + 33, in batches of ≤ 4.
        let result = run_load(spec(&addr, Workload::Set, StopAfter::Requests(101)))
            .await
            .unwrap();
        assert_eq!(result.tally.correct, 101);
        assert_eq!(result.latency.len(), 101);
        assert_eq!(
            result.tally.wrong + result.tally.errors + result.tally.connection_errors,
            0
        );
    }

    #[tokio::test]
    async fn wrong_replies_are_counted_with_examples() {
        let addr = fake_server(b"+OK\r\n", None).await;
        let result = run_load(spec(
            &addr,
            Workload::Get,
            StopAfter::Elapsed(Duration::from_millis(50)),
        ))
        .await
        .unwrap();
        assert!(result.tally.wrong > 0);
        assert_eq!(result.tally.correct, 0);
        assert_eq!(result.tally.wrong_examples.len(), MAX_EXAMPLES);
        assert!(
            result.tally.wrong_examples[0].contains("got +OK"),
            "{:?}",
            result.tally.wrong_examples
        );
    }

    #[tokio::test]
    async fn a_dropped_connection_is_counted_not_fatal() {
        let addr = fake_server(b"+OK\r\n", Some(2)).await;
        let result = run_load(spec(&addr, Workload::Set, StopAfter::Requests(60)))
            .await
            .unwrap();
        assert_eq!(result.tally.connection_errors, 3);
        assert_eq!(result.tally.correct, 6);
        assert!(result.tally.connection_error_examples[0].contains("2 replies outstanding"));
    }

    #[tokio::test]
    async fn garbage_from_the_server_breaks_only_that_connection() {
        let addr = fake_server(b"+OK\r\n!?\r\n", None).await;
        let result = run_load(spec(&addr, Workload::Set, StopAfter::Requests(30)))
            .await
            .unwrap();
        assert_eq!(result.tally.connection_errors, 3);
    }
}
