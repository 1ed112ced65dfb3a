//! Command-line flags (every one also readable from `RESPOOL_<NAME>`) turned
//! into one validated [`Config`], the only configuration the rest of the code
//! sees.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How much a new upstream connection must prove before it joins the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Validate {
    /// Trust the connection once AUTH/SELECT succeed.
    Off,
    /// Also require `PING` → `PONG`.
    Ping,
    /// Also write, read back and delete a unique short-lived probe key: proves
    /// the server accepts writes (not a read-only replica, not out of memory).
    Write,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The flags, as clap parses them. Turned into [`Config`] by [`Config::from_flags`].
#[derive(Debug, Parser)]
#[command(
    name = "respool",
    version,
    about = "A Redis pooling proxy: clients connect to respool, respool carries their commands over a small pool of validated, health-checked upstream connections."
)]
pub struct Flags {
    /// Address to accept client connections on.
    #[arg(long, env = "RESPOOL_LISTEN", default_value = "127.0.0.1:6380")]
    pub listen: SocketAddr,

    /// Upstream Redis: `redis://[[user]:password@]host:port[/db]`.
    #[arg(
        long,
        env = "RESPOOL_UPSTREAM",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub upstream: String,

    /// Upstream password; overrides one in the URL (prefer the env variable: flags show in `ps`).
    #[arg(long, env = "RESPOOL_UPSTREAM_PASSWORD", hide_env_values = true)]
    pub upstream_password: Option<String>,

    /// Upstream connections shared by all clients, one multiplexed lane each (plus --min-idle validated spares); a total for the process, at least one per event loop.
    #[arg(long, env = "RESPOOL_MAX_CONNECTIONS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_connections: u32,

    /// Dedicated upstream connections for clients in connection state (MULTI/WATCH, blocking commands, pub/sub, SELECT of another db, …); more such clients wait up to --checkout-timeout.
    #[arg(long, env = "RESPOOL_MAX_PINNED", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_pinned: u32,

    /// Password clients must AUTH with (the `default` user), as Redis's requirepass.
    #[arg(long, env = "RESPOOL_REQUIREPASS", hide_env_values = true)]
    pub requirepass: Option<String>,

    /// A client user as name:password (repeatable; env: comma-separated). With users and no --requirepass, the default user is disabled.
    #[arg(
        long = "user",
        env = "RESPOOL_USERS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub users: Vec<String>,

    /// A file of client users, one name:password per line (# comments allowed).
    #[arg(long, env = "RESPOOL_USERS_FILE")]
    pub users_file: Option<std::path::PathBuf>,

    /// Refuse a command on this proxy: NAME or NAME|SUBCOMMAND (repeatable; env: comma-separated).
    #[arg(
        long = "deny-command",
        env = "RESPOOL_DENY_COMMANDS",
        value_delimiter = ','
    )]
    pub deny_commands: Vec<String>,

    /// Validated spare connections kept ready to replace a broken lane at once.
    #[arg(long, env = "RESPOOL_MIN_IDLE", default_value_t = 1)]
    pub min_idle: u32,

    /// Time allowed for a TCP connect to the upstream, and again for its validation exchange (AUTH … probe).
    #[arg(long, env = "RESPOOL_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Request deadline: a request without a reply after this long fails and its connection is closed.
    #[arg(long, env = "RESPOOL_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// How long a request may wait for an upstream connection before it fails.
    #[arg(long, env = "RESPOOL_CHECKOUT_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub checkout_timeout: Duration,

    /// How long a request may be held unsent while the upstream is unreachable or answers -LOADING/-BUSY/-TRYAGAIN/-MASTERDOWN, being resent with backoff; an outage shorter than this is invisible to clients (default: --checkout-timeout).
    #[arg(long, env = "RESPOOL_HOLD_TIMEOUT", value_parser = parse_duration)]
    pub hold_timeout: Option<Duration>,

    /// Resends of a read-only request whose connection was lost after it was written (writes are never resent).
    #[arg(long, env = "RESPOOL_RETRIES", default_value_t = 5)]
    pub retries: u32,

    /// First backoff delay between retries and reconnects; doubles each time.
    #[arg(long, env = "RESPOOL_BACKOFF_BASE", default_value = "50ms", value_parser = parse_duration)]
    pub backoff_base: Duration,

    /// Longest backoff delay.
    #[arg(long, env = "RESPOOL_BACKOFF_CAP", default_value = "2s", value_parser = parse_duration)]
    pub backoff_cap: Duration,

    /// An upstream connection idle this long is PINGed before it is trusted again (0s = never).
    #[arg(long, env = "RESPOOL_HEALTH_CHECK_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub health_check_interval: Duration,

    /// TCP keepalive idle time on upstream and client sockets (0s = off).
    #[arg(long, env = "RESPOOL_KEEPALIVE", default_value = "60s", value_parser = parse_duration)]
    pub keepalive: Duration,

    /// Hold a lane's new requests while its previous write is unanswered (at most until 64 runs wait), so requests from many clients reach Redis in one write, like Nagle's algorithm with Redis's replies as the acknowledgement; off = write each request as it arrives. An idle lane writes at once either way. See README "Tuning".
    #[arg(long, env = "RESPOOL_BATCH_WRITES", default_value = "on", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub batch_writes: bool,

    /// Read buffer size per connection (e.g. 64KiB).
    #[arg(long, env = "RESPOOL_READ_BUFFER_SIZE", default_value = "64KiB", value_parser = parse_bytes)]
    pub read_buffer_size: u64,

    /// Largest bulk string a client may send (Redis's proto-max-bulk-len).
    #[arg(long, env = "RESPOOL_MAX_BULK_LENGTH", default_value = "512MiB", value_parser = parse_bytes)]
    pub max_bulk_length: u64,

    /// Requests one client may have in flight before respool stops reading from it.
    #[arg(long, env = "RESPOOL_MAX_PENDING_PER_CLIENT", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_per_client: u32,

    /// Reply bytes one client may have waiting in respool (received from the upstream, not yet written to the client) before it is disconnected, like Redis's client-output-buffer-limit; 0 = unlimited. Also caps the largest single reply a client can receive.
    #[arg(long, env = "RESPOOL_CLIENT_OUTPUT_LIMIT", default_value = "256MiB", value_parser = parse_bytes)]
    pub client_output_limit: u64,

    /// Close a client that has sent nothing for this long and has no request in flight (0s = never, like Redis's `timeout 0`). Subscribed and blocked clients are exempt.
    #[arg(long, env = "RESPOOL_CLIENT_IDLE_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub client_idle_timeout: Duration,

    /// Time a client has to finish sending a command it has started; after that it gets a protocol error and is closed (0s = no limit).
    #[arg(long, env = "RESPOOL_REQUEST_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_read_timeout: Duration,

    /// What a new upstream connection must pass before it is pooled.
    #[arg(long, env = "RESPOOL_VALIDATE", value_enum, default_value = "write")]
    pub validate: Validate,

    /// Key prefix of the validation probe keys.
    #[arg(long, env = "RESPOOL_PROBE_PREFIX", default_value = "respool:probe")]
    pub probe_prefix: String,

    /// Expiry of a probe key, so that none outlives a crash mid-validation.
    #[arg(long, env = "RESPOOL_PROBE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub probe_ttl: Duration,

    /// Most client connections at once; more are answered with an error and closed.
    #[arg(long, env = "RESPOOL_MAX_CLIENTS", default_value_t = 10_000)]
    pub max_clients: u32,

    /// Event-loop threads: 0 = one per two CPU cores, at least 1 and at most 4; 1 = one single-threaded event loop; N > 1 = N independent loops (thread per core), each with its own listener (SO_REUSEPORT), lanes and pools. See README "Tuning".
    #[arg(long, env = "RESPOOL_THREADS", default_value_t = 0)]
    pub threads: u32,

    /// Exit with an error instead of serving when the upstream is unavailable at start.
    #[arg(long, env = "RESPOOL_REQUIRE_UPSTREAM", value_parser = clap::builder::BoolishValueParser::new())]
    pub require_upstream: bool,

    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, env = "RESPOOL_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Serve clients over TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "RESPOOL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "RESPOOL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Require TLS clients to present a certificate signed by a CA in this PEM file.
    #[arg(long, env = "RESPOOL_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// How long a TLS client may take to complete its handshake.
    #[arg(long, env = "RESPOOL_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// Trust these CA certificates (PEM) for a rediss:// upstream instead of the system's trust store; its certificate must also name the URL's host.
    #[arg(long, env = "RESPOOL_UPSTREAM_CA")]
    pub upstream_ca: Option<std::path::PathBuf>,

    /// Client certificate chain (PEM) presented to a rediss:// upstream (Redis's tls-auth-clients).
    #[arg(long, env = "RESPOOL_UPSTREAM_CERT", requires = "upstream_key")]
    pub upstream_cert: Option<std::path::PathBuf>,

    /// PEM private key of --upstream-cert.
    #[arg(long, env = "RESPOOL_UPSTREAM_KEY", requires = "upstream_cert")]
    pub upstream_key: Option<std::path::PathBuf>,

    /// The name a rediss:// upstream's certificate must carry, and the SNI sent, when it is not the URL's host (an IP address, a tunnel or a load balancer in between).
    #[arg(long, env = "RESPOOL_UPSTREAM_TLS_SERVER_NAME")]
    pub upstream_tls_server_name: Option<String>,

    /// FOR TESTS ONLY: accept any certificate from a rediss:// upstream (no verification; anyone on the path can read and change the traffic).
    #[arg(long, env = "RESPOOL_UPSTREAM_TLS_INSECURE", value_parser = clap::builder::BoolishValueParser::new(), conflicts_with = "upstream_ca")]
    pub upstream_tls_insecure: bool,

    /// Log format.
    #[arg(long, env = "RESPOOL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, env = "RESPOOL_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// A secret that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: &str) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the upstream is and how to log in to it.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port`, as connected to and shown in messages.
    pub addr: Arc<str>,
    /// ACL user name, if any.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<Secret>,
    /// Database index selected on every connection.
    pub db: u32,
    /// `rediss://`: connect with TLS.
    pub tls: bool,
}

impl Upstream {
    /// Parses `redis://[[user]:password@]host:port[/db]` (`rediss://` for TLS).
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let (tls, rest) = match url.strip_prefix("rediss://") {
            Some(rest) => (true, rest),
            None => (
                false,
                url.strip_prefix("redis://")
                    .ok_or_else(|| "must start with redis:// or rediss://".to_string())?,
            ),
        };
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, d)) => (
                h,
                d.parse::<u32>()
                    .map_err(|_| format!("database '{d}' is not a number"))?,
            ),
            None => (rest, 0),
        };
        if hostport.is_empty() || hostport.starts_with(':') {
            return Err("missing host".into());
        }
        if hostport.ends_with(':') {
            return Err(format!("missing port after '{hostport}'"));
        }
        // A bare host (or bracketed IPv6 address) gets Redis's default port.
        if let Some((_, port)) = hostport.rsplit_once(':') {
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_err()
            {
                return Err(format!("invalid port '{port}'"));
            }
        }
        let has_port = hostport.rsplit_once(':').is_some_and(|(host, port)| {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        });
        let addr = if has_port {
            hostport.to_string()
        } else {
            format!("{hostport}:6379")
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, pass) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                let user = (!user.is_empty()).then(|| percent_decode(user));
                let pass = pass
                    .filter(|p| !p.is_empty())
                    .map(|p| Secret::new(&percent_decode(p)));
                match pass {
                    // `redis://name@host` conventionally means the name is the password.
                    None => (None, user.map(|u| Secret::new(&u))),
                    Some(p) => (user, Some(p)),
                }
            }
        };
        Ok(Upstream {
            addr: addr.into(),
            username,
            password,
            db,
            tls,
        })
    }

    /// The host part of the address, without port or IPv6 brackets: the
    /// name the upstream's TLS certificate must carry.
    pub fn host(&self) -> &str {
        host_of(&self.addr)
    }
}

/// The host part of a `host:port` address, without the port or IPv6
/// brackets: the name a TLS certificate must carry.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `--threads 0` starts no more event loops than this: one Redis is one
/// thread, and each loop holds its own upstream connections.
pub const AUTO_THREADS_MAX: usize = 4;

/// The event loops `--threads 0` starts on a machine with `cores` cores: one
/// per two cores, at least one, at most [`AUTO_THREADS_MAX`].
///
/// Half, not one per core, because respool shares its machine with the
/// processes whose work it carries: at least Redis (one thread) and usually
/// its clients. On 2 cores, with write batching, one loop beat two at 50
/// and 500 clients and matched it at pipeline 16 (README "Tuning"): fewer
/// lanes write larger batches, and a second loop only adds wake-ups
/// competing with Redis and the clients for the same cores.
pub fn auto_threads(cores: usize) -> usize {
    (cores / 2).clamp(1, AUTO_THREADS_MAX)
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client listen address.
    pub listen: SocketAddr,
    /// The upstream Redis.
    pub upstream: Upstream,
    /// Shared lanes (upstream connections multiplexed across clients).
    pub max_connections: u32,
    /// Spare validated connections.
    pub min_idle: u32,
    /// Dedicated (pinned) connections at most.
    pub max_pinned: u32,
    /// Client authentication.
    pub client_auth: crate::client::auth::ClientAuth,
    /// Commands refused by policy.
    pub deny: crate::command::DenyList,
    /// TCP connect + validation time limit.
    pub connect_timeout: Duration,
    /// Request deadline.
    pub timeout: Duration,
    /// Longest wait for an upstream connection.
    pub checkout_timeout: Duration,
    /// Hold window during outages.
    pub hold_timeout: Duration,
    /// Retry attempts per request.
    pub retries: u32,
    /// Backoff base delay.
    pub backoff_base: Duration,
    /// Backoff cap.
    pub backoff_cap: Duration,
    /// Idle time after which a connection is PINGed.
    pub health_check_interval: Option<Duration>,
    /// TCP keepalive idle time.
    pub keepalive: Option<Duration>,
    /// Hold new requests while a lane's write is unanswered.
    pub batch_writes: bool,
    /// Read buffer size per connection.
    pub read_buffer_size: usize,
    /// Largest client bulk string.
    pub max_bulk_length: u64,
    /// Per-client in-flight request limit.
    pub max_pending_per_client: usize,
    /// Per-client limit on reply bytes held for it (`None` = unlimited).
    pub client_output_limit: Option<usize>,
    /// Idle time after which a client is closed (`None` = never).
    pub client_idle_timeout: Option<Duration>,
    /// Deadline for completing a started request (`None` = none).
    pub request_read_timeout: Option<Duration>,
    /// Validation level.
    pub validate: Validate,
    /// Probe key prefix.
    pub probe_prefix: String,
    /// Probe key TTL.
    pub probe_ttl: Duration,
    /// Client connection limit.
    pub max_clients: usize,
    /// Clients connected now, counted against `max_clients`. Shared by every
    /// clone of the configuration, so the event loops of `--threads` N count
    /// against one limit (not a flag).
    pub connected_clients: Arc<std::sync::atomic::AtomicUsize>,
    /// Every event loop's counters, for `INFO respool` (shared by every
    /// clone, like `connected_clients`).
    pub stats: Arc<crate::stats::StatsRegistry>,
    /// Event loops (0 = [`auto_threads`] of the machine's cores; `main`
    /// replaces 0 by the number it starts).
    pub threads: usize,
    /// Exit when the upstream is unavailable at start.
    pub require_upstream: bool,
    /// Bind the listener with SO_REUSEPORT (set for each thread's listener
    /// when `--threads` > 1; not a flag).
    pub reuse_port: bool,
    /// Drain deadline at shutdown.
    pub shutdown_timeout: Duration,
    /// TLS for clients (`--tls-cert`/`--tls-key`), or plain TCP.
    pub listener_tls: Option<crate::tls::ListenerTls>,
    /// TLS for a `rediss://` upstream.
    pub upstream_tls: Option<crate::tls::UpstreamTls>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
}

impl Config {
    /// The event loops these flags start on this machine: `--threads`, or
    /// for `0` [`auto_threads`] of its cores.
    pub fn event_loops(&self) -> usize {
        match self.threads {
            0 => auto_threads(std::thread::available_parallelism().map_or(1, |n| n.get())),
            n => n,
        }
    }

    /// Event loop `index`'s share of the pool sizes when `loops` event loops
    /// run (`--threads`): `--max-connections`, `--min-idle` and
    /// `--max-pinned` are totals for the process, split as evenly as
    /// possible, with at least one lane and one dedicated connection per
    /// loop. (`--max-clients` is one shared count, see `connected_clients`.)
    pub fn loop_share(&self, index: usize, loops: usize) -> Config {
        let loops = loops.max(1) as u32;
        let index = index as u32;
        let split = |total: u32, at_least: u32| {
            (total / loops + u32::from(index < total % loops)).max(at_least)
        };
        Config {
            max_connections: split(self.max_connections, 1),
            min_idle: split(self.min_idle, 0),
            max_pinned: split(self.max_pinned, 1),
            ..self.clone()
        }
    }

    /// Parses command-line style arguments (the first is the program name).
    pub fn parse_from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let flags = Flags::try_parse_from(args)?;
        Config::from_flags(flags)
    }

    /// Validates parsed flags; an invalid combination is a clap error (exit code 2).
    pub fn from_flags(flags: Flags) -> Result<Config, clap::Error> {
        let invalid = |msg: String| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{msg}\n"))
        };
        let mut upstream = Upstream::parse(&flags.upstream)
            .map_err(|e| invalid(format!("invalid value for '--upstream': {e}")))?;
        if let Some(p) = &flags.upstream_password {
            upstream.password = Some(Secret::new(p));
        }
        if flags.backoff_base > flags.backoff_cap {
            return Err(invalid(
                "'--backoff-base' must not exceed '--backoff-cap'".into(),
            ));
        }
        if flags.timeout.is_zero()
            || flags.connect_timeout.is_zero()
            || flags.checkout_timeout.is_zero()
            || flags.hold_timeout.is_some_and(|h| h.is_zero())
            || flags.tls_handshake_timeout.is_zero()
        {
            return Err(invalid("timeouts must be greater than zero".into()));
        }
        if flags.read_buffer_size < 512 || flags.read_buffer_size > 64 << 20 {
            return Err(invalid(
                "'--read-buffer-size' must be between 512B and 64MiB".into(),
            ));
        }
        if flags.probe_prefix.is_empty()
            || flags.probe_prefix.bytes().any(|b| b.is_ascii_whitespace())
        {
            return Err(invalid(
                "'--probe-prefix' must be non-empty and contain no spaces".into(),
            ));
        }
        let mut users = flags.users.clone();
        if let Some(path) = &flags.users_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(format!(
                    "cannot read '--users-file' {}: {e}",
                    path.display()
                ))
            })?;
            users.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        let client_auth =
            crate::client::auth::ClientAuth::new(flags.requirepass.as_deref(), &users)
                .map_err(|e| invalid(format!("invalid client user: {e}")))?;
        let listener_tls = match (&flags.tls_cert, &flags.tls_key) {
            (Some(cert), Some(key)) => Some(
                crate::tls::ListenerTls::load(
                    cert,
                    key,
                    flags.tls_ca.as_deref(),
                    flags.tls_handshake_timeout,
                )
                .map_err(invalid)?,
            ),
            _ => None,
        };
        let upstream_tls = upstream_tls(&flags, &upstream).map_err(invalid)?;
        Ok(Config {
            listener_tls,
            upstream_tls,
            max_pinned: flags.max_pinned,
            client_auth,
            deny: crate::command::DenyList::new(&flags.deny_commands),
            listen: flags.listen,
            upstream,
            max_connections: flags.max_connections,
            min_idle: flags.min_idle,
            connect_timeout: flags.connect_timeout,
            timeout: flags.timeout,
            checkout_timeout: flags.checkout_timeout,
            hold_timeout: flags.hold_timeout.unwrap_or(flags.checkout_timeout),
            retries: flags.retries,
            backoff_base: flags.backoff_base,
            backoff_cap: flags.backoff_cap,
            health_check_interval: (!flags.health_check_interval.is_zero())
                .then_some(flags.health_check_interval),
            keepalive: (!flags.keepalive.is_zero()).then_some(flags.keepalive),
            batch_writes: flags.batch_writes,
            read_buffer_size: flags.read_buffer_size as usize,
            max_bulk_length: flags.max_bulk_length,
            max_pending_per_client: flags.max_pending_per_client as usize,
            client_output_limit: (flags.client_output_limit > 0)
                .then(|| usize::try_from(flags.client_output_limit).unwrap_or(usize::MAX)),
            client_idle_timeout: (!flags.client_idle_timeout.is_zero())
                .then_some(flags.client_idle_timeout),
            request_read_timeout: (!flags.request_read_timeout.is_zero())
                .then_some(flags.request_read_timeout),
            validate: flags.validate,
            probe_prefix: flags.probe_prefix,
            probe_ttl: flags.probe_ttl.max(Duration::from_secs(1)),
            max_clients: flags.max_clients as usize,
            connected_clients: Arc::default(),
            stats: Arc::default(),
            threads: flags.threads as usize,
            require_upstream: flags.require_upstream,
            reuse_port: false,
            shutdown_timeout: flags.shutdown_timeout,
            log_format: flags.log_format,
            log_level: flags.log_level,
        })
    }
}

/// The TLS settings of a `rediss://` upstream; TLS flags without one are an
/// error rather than silently ignored.
fn upstream_tls(
    flags: &Flags,
    upstream: &Upstream,
) -> Result<Option<crate::tls::UpstreamTls>, String> {
    use crate::tls::{UpstreamTls, UpstreamTrust};
    if !upstream.tls {
        let given = [
            ("--upstream-ca", flags.upstream_ca.is_some()),
            ("--upstream-cert", flags.upstream_cert.is_some()),
            ("--upstream-tls-insecure", flags.upstream_tls_insecure),
            (
                "--upstream-tls-server-name",
                flags.upstream_tls_server_name.is_some(),
            ),
        ];
        return match given.iter().find(|(_, set)| *set) {
            Some((flag, _)) => Err(format!(
                "'{flag}' needs a TLS upstream: use a rediss:// URL for '--upstream'"
            )),
            None => Ok(None),
        };
    }
    let trust = match (&flags.upstream_ca, flags.upstream_tls_insecure) {
        (Some(ca), _) => UpstreamTrust::Ca(ca),
        (None, true) => UpstreamTrust::Insecure,
        (None, false) => UpstreamTrust::System,
    };
    let client_cert = flags
        .upstream_cert
        .as_deref()
        .zip(flags.upstream_key.as_deref());
    let server_name = flags
        .upstream_tls_server_name
        .as_deref()
        .unwrap_or(upstream.host());
    UpstreamTls::load(server_name, trust, client_cert).map(Some)
}

/// Parses `250ms`, `2s`, `1.5s`, `1m`, `100us`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("'{s}' needs a unit: ms, s, m or h (e.g. 250ms, 2s)"))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 250ms, 2s)"))?;
    let scale = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' (use ms, s, m or h)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `65536`, `64KiB`, `64k`, `512MiB`, `1GB` (K/M/G are powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 65536, 64KiB, 512MiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit '{other}' (use KiB, MiB or GiB)")),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("'{s}' is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_event_loops_are_one_per_two_cores_within_bounds() {
        let loops = [1, 2, 3, 4, 6, 8, 64].map(auto_threads);
        assert_eq!(loops, [1, 1, 1, 2, 3, 4, 4]);
    }

    #[test]
    fn pool_sizes_are_split_between_event_loops() {
        let config = Config::parse_from_args([
            "respool",
            "--max-connections",
            "5",
            "--min-idle",
            "1",
            "--max-pinned",
            "64",
        ])
        .unwrap();
        let shares: Vec<_> = (0..2)
            .map(|i| {
                let c = config.loop_share(i, 2);
                (c.max_connections, c.min_idle, c.max_pinned)
            })
            .collect();
        assert_eq!(shares, vec![(3, 1, 32), (2, 0, 32)]);
        // More loops than lanes: each loop still needs one.
        let few = Config::parse_from_args(["respool", "--max-connections", "2"]).unwrap();
        assert_eq!(few.loop_share(3, 4).max_connections, 1);
        // One loop gets everything.
        assert_eq!(config.loop_share(0, 1).max_connections, 5);
    }

    #[test]
    fn durations_accept_operator_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn sizes_accept_binary_units() {
        assert_eq!(parse_bytes("64KiB").unwrap(), 65536);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("12 parsecs").is_err());
    }

    #[test]
    fn upstream_urls() {
        let u = Upstream::parse("redis://127.0.0.1:6379").unwrap();
        assert_eq!(&*u.addr, "127.0.0.1:6379");
        assert_eq!(u.db, 0);
        assert!(u.password.is_none());

        let u = Upstream::parse("redis://alice:s%40cret@localhost:7000/3").unwrap();
        assert_eq!(&*u.addr, "localhost:7000");
        assert_eq!(u.username.as_deref(), Some("alice"));
        assert_eq!(u.password.as_ref().unwrap().expose(), "s@cret");
        assert_eq!(u.db, 3);

        let u = Upstream::parse("redis://:pw@host").unwrap();
        assert_eq!(&*u.addr, "host:6379");
        assert!(u.username.is_none());
        assert_eq!(u.password.unwrap().expose(), "pw");

        assert!(Upstream::parse("http://x").is_err());
        assert!(Upstream::parse("redis://127.0.0.1:").is_err());
        assert!(Upstream::parse("redis://127.0.0.1:99999").is_err());
        assert!(Upstream::parse("redis://:6379").is_err());
        assert!(Upstream::parse("redis://h:1/x").is_err());
    }

    #[test]
    fn rediss_urls_need_a_trust_decision() {
        let u = Upstream::parse("rediss://:pw@[::1]:6390/2").unwrap();
        assert!(u.tls);
        assert_eq!(u.host(), "::1");
        assert_eq!(
            Upstream::parse("rediss://cache.example").unwrap().host(),
            "cache.example"
        );
        assert!(!Upstream::parse("redis://h:1").unwrap().tls);

        // Without --upstream-ca the system's trust store is used; that is
        // tested against a respool process in tests/tls.rs, where the
        // store can be chosen without touching this process's environment.
        let upstream = ["respool", "--upstream", "rediss://127.0.0.1:6390"];
        let c = Config::parse_from_args([&upstream[..], &["--upstream-tls-insecure"]].concat())
            .unwrap();
        assert!(c.upstream_tls.as_ref().is_some_and(|t| t.insecure));
        assert!(c.listener_tls.is_none());

        let e = Config::parse_from_args(
            [&upstream[..], &["--upstream-ca", "/nonexistent/ca.pem"]].concat(),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn tls_flags_that_would_be_ignored_are_errors() {
        for args in [
            &["--upstream-ca", "ca.pem"][..],
            &["--upstream-tls-insecure"],
            &["--upstream-tls-server-name", "cache.example"],
            &["--upstream-cert", "c.pem", "--upstream-key", "k.pem"],
            &["--tls-cert", "c.pem"],
            &["--tls-ca", "ca.pem"],
        ] {
            let e = Config::parse_from_args([&["respool"][..], args].concat()).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
        let e = Config::parse_from_args([
            "respool",
            "--tls-cert",
            "/nonexistent/c.pem",
            "--tls-key",
            "/nonexistent/k.pem",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("cannot read '--tls-cert'"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let u = Upstream::parse("redis://alice:hunter2@localhost:7000").unwrap();
        let shown = format!("{u:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn defaults_are_the_quick_start() {
        let c = Config::parse_from_args(["respool"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:6380");
        assert_eq!(&*c.upstream.addr, "127.0.0.1:6379");
        assert_eq!(c.validate, Validate::Write);
        assert_eq!(c.client_output_limit, Some(256 << 20));
        assert_eq!(c.client_idle_timeout, None);
        assert_eq!(c.request_read_timeout, Some(Duration::from_secs(10)));
    }

    #[test]
    fn zero_turns_client_limits_off() {
        let c = Config::parse_from_args([
            "respool",
            "--client-output-limit",
            "0",
            "--client-idle-timeout",
            "0s",
            "--request-read-timeout",
            "0s",
        ])
        .unwrap();
        assert_eq!(c.client_output_limit, None);
        assert_eq!(c.client_idle_timeout, None);
        assert_eq!(c.request_read_timeout, None);
    }

    #[test]
    fn invalid_values_are_clap_errors() {
        let e = Config::parse_from_args(["respool", "--timeout", "soon"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = Config::parse_from_args(["respool", "--backoff-base", "5s", "--backoff-cap", "1s"])
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
