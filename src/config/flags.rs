//! The command-line flags, in the groups the subsystems take them in. Every
//! flag is also read from `RESPOOL_<NAME>`; a flag given on the command line
//! wins. [`super::Config::from_flags`] validates them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

use super::units::{parse_bytes, parse_duration};

/// How much a new upstream connection must prove before it joins the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Validate {
    /// Trust the connection once AUTH/SELECT succeed.
    Off,
    /// Also require `PING` → `PONG`.
    Ping,
    /// Also queue a `SET` in `MULTI` and discard it: Redis refuses it while
    /// queueing if it would refuse the write (a read-only replica, out of
    /// memory, a failed save, an ACL), so this proves the server takes
    /// writes without writing anything.
    Write,
}

/// Where read-only commands go (`--read-from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReadFrom {
    /// Every command to the primary.
    Primary,
    /// Reads to a replica that is up and within --max-replica-lag, else to the primary.
    PreferReplica,
    /// Reads only to replicas; with none usable they fail.
    Replica,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every flag of the proxy, as clap parses them.
#[derive(Debug, Parser)]
#[command(
    name = "respool",
    version,
    about = "A Redis pooling proxy: clients connect to respool, respool carries their commands over a small pool of validated, health-checked upstream connections."
)]
pub struct Flags {
    #[command(flatten)]
    pub(crate) file: FileFlags,
    #[command(flatten)]
    pub(crate) listener: ListenerFlags,
    #[command(flatten)]
    pub(crate) upstream: UpstreamFlags,
    #[command(flatten)]
    pub(crate) pool: PoolFlags,
    #[command(flatten)]
    pub(crate) retry: RetryFlags,
    #[command(flatten)]
    pub(crate) clients: ClientFlags,
    #[command(flatten)]
    pub(crate) auth: AuthFlags,
    #[command(flatten)]
    pub(crate) tls: TlsFlags,
    #[command(flatten)]
    pub(crate) topology: TopologyFlags,
    #[command(flatten)]
    pub(crate) cluster: ClusterFlags,
    #[command(flatten)]
    pub(crate) log: LogFlags,
    #[command(flatten)]
    pub(crate) admin: AdminFlags,
    #[command(flatten)]
    pub(crate) ops: OpsFlags,
}

/// The configuration file.
#[derive(Debug, Args)]
#[command(next_help_heading = "Configuration file")]
pub(crate) struct FileFlags {
    /// A TOML file of settings whose keys are these flags' names without the dashes (`max-connections = 4`, `user = ["alice:pw"]`); flags and env variables override it. SIGHUP re-reads it (docs/configuration.md "Config file").
    #[arg(long, env = "RESPOOL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Where clients connect, how many, and how the process runs.
#[derive(Debug, Args)]
#[command(next_help_heading = "Listener")]
pub(crate) struct ListenerFlags {
    /// Where to accept clients: a TCP `host:port`, or `unix:/path/respool.sock` for a Unix socket; give it twice (or comma-separated in the env variable) for both at once.
    #[arg(long, env = "RESPOOL_LISTEN", default_value = "127.0.0.1:6380", value_delimiter = ',', value_parser = parse_listen)]
    pub listen: Vec<ListenAddr>,

    /// Mode of the Unix socket file, in octal (`0660`: owner and group may connect); unset, the umask decides.
    #[arg(long, env = "RESPOOL_UNIX_PERMISSIONS", value_parser = parse_mode)]
    pub unix_permissions: Option<u32>,

    /// Replace the Unix socket of a respool that is still running (zero-downtime restart): bind a temporary name and rename it over the path. Without it a live socket at the path is refused.
    #[arg(long, env = "RESPOOL_UNIX_TAKEOVER", value_parser = clap::builder::BoolishValueParser::new())]
    pub unix_takeover: bool,

    /// Most client connections at once; more are answered with an error and closed.
    #[arg(long, env = "RESPOOL_MAX_CLIENTS", default_value_t = 10_000)]
    pub max_clients: u32,

    /// Event-loop threads: 0 = one per two CPU cores, at least 1 and at most 4; 1 = one single-threaded event loop; N > 1 = N independent loops (thread per core), each with its own listener (SO_REUSEPORT), lanes and pools. See docs/operations.md "Tuning".
    #[arg(long, env = "RESPOOL_THREADS", default_value_t = 0)]
    pub threads: u32,

    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, env = "RESPOOL_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// A `--listen` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// The path of a Unix socket file.
    Unix(PathBuf),
}

/// `host:port`, or `unix:PATH` (also `unix://PATH`).
fn parse_listen(value: &str) -> Result<ListenAddr, String> {
    if let Some(path) = value.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err("'unix:' needs a path: unix:/run/respool/respool.sock".into());
        }
        return Ok(ListenAddr::Unix(PathBuf::from(path)));
    }
    value.parse().map(ListenAddr::Tcp).map_err(|_| {
        format!("'{value}' is neither an IP:PORT address nor unix:/path/to/respool.sock")
    })
}

/// An octal file mode: `0660`, `660`, `0o660`.
fn parse_mode(value: &str) -> Result<u32, String> {
    let digits = value.strip_prefix("0o").unwrap_or(value);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!("'{value}' is not an octal file mode like 0660")),
    }
}

/// The upstream Redis and what its connections must prove.
#[derive(Debug, Args)]
#[command(next_help_heading = "Upstream")]
pub(crate) struct UpstreamFlags {
    /// Upstream Redis: `redis://[[user]:password@]host:port[/db]`, `rediss://…` for TLS, or a Unix socket: `unix:///path/redis.sock[?db=N]`. With --cluster, a seed node where discovery starts: repeat it for each (the env variable takes a comma-separated list); the first URL's user, password and scheme apply to every node.
    #[arg(
        long = "upstream",
        env = "RESPOOL_UPSTREAM",
        default_value = "redis://127.0.0.1:6379",
        value_delimiter = ',',
        value_name = "URL",
        hide_env_values = true
    )]
    pub upstreams: Vec<String>,

    /// Upstream password; overrides one in the URL (prefer the env variable: flags show in `ps`).
    #[arg(long, env = "RESPOOL_UPSTREAM_PASSWORD", hide_env_values = true)]
    pub upstream_password: Option<String>,

    /// What a new upstream connection must pass before it is pooled.
    #[arg(long, env = "RESPOOL_VALIDATE", value_enum, default_value = "write")]
    pub validate: Validate,

    /// Key prefix of the key the write probe names (queued in MULTI and discarded, never written): an ACL user must be allowed to write it.
    #[arg(long, env = "RESPOOL_PROBE_PREFIX", default_value = "respool:probe")]
    pub probe_prefix: String,

    /// Accepted and ignored: the write probe no longer writes a key, so there is nothing to expire.
    #[arg(long, env = "RESPOOL_PROBE_TTL", hide = true, value_parser = parse_duration)]
    pub probe_ttl: Option<Duration>,

    /// Exit with an error instead of serving when the upstream is unavailable at start.
    #[arg(long, env = "RESPOOL_REQUIRE_UPSTREAM", value_parser = clap::builder::BoolishValueParser::new())]
    pub require_upstream: bool,
}

/// How many upstream connections, and how they are kept.
#[derive(Debug, Args)]
#[command(next_help_heading = "Pool")]
pub(crate) struct PoolFlags {
    /// Upstream connections shared by all clients, one multiplexed lane each (plus --min-idle validated spares); a total for the process, at least one per event loop.
    #[arg(long, env = "RESPOOL_MAX_CONNECTIONS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_connections: u32,

    /// Dedicated upstream connections for clients in connection state (MULTI/WATCH, blocking commands, pub/sub, SELECT of another db, …); more such clients wait up to --checkout-timeout.
    #[arg(long, env = "RESPOOL_MAX_PINNED", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_pinned: u32,

    /// Validated spare connections kept ready to replace a broken lane at once.
    #[arg(long, env = "RESPOOL_MIN_IDLE", default_value_t = 1)]
    pub min_idle: u32,

    /// Time allowed for a TCP connect to the upstream, and again for its validation exchange (AUTH … probe).
    #[arg(long, env = "RESPOOL_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// How long a request may wait for an upstream connection before it fails.
    #[arg(long, env = "RESPOOL_CHECKOUT_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub checkout_timeout: Duration,

    /// An upstream connection idle this long is PINGed before it is trusted again (0s = never).
    #[arg(long, env = "RESPOOL_HEALTH_CHECK_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub health_check_interval: Duration,

    /// TCP keepalive idle time on upstream and client sockets (0s = off).
    #[arg(long, env = "RESPOOL_KEEPALIVE", default_value = "60s", value_parser = parse_duration)]
    pub keepalive: Duration,

    /// Hold a lane's new requests while its previous write is unanswered (at most until 64 runs wait), so requests from many clients reach Redis in one write, like Nagle's algorithm with Redis's replies as the acknowledgement; off = write each request as it arrives. An idle lane writes at once either way. See docs/operations.md "Tuning".
    #[arg(long, env = "RESPOOL_BATCH_WRITES", default_value = "on", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub batch_writes: bool,

    /// Read buffer size per connection (e.g. 64KiB).
    #[arg(long, env = "RESPOOL_READ_BUFFER_SIZE", default_value = "64KiB", value_parser = parse_bytes)]
    pub read_buffer_size: u64,
}

/// Request deadlines, holds and resends.
#[derive(Debug, Args)]
#[command(next_help_heading = "Timeouts and retries")]
pub(crate) struct RetryFlags {
    /// Request deadline: a request without a reply after this long fails and its connection is closed.
    #[arg(long, env = "RESPOOL_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// How long a request may be held unsent while the upstream is unreachable or answers -LOADING/-BUSY/-TRYAGAIN/-MASTERDOWN/-CLUSTERDOWN, being resent with backoff; an outage shorter than this is invisible to clients (default: --checkout-timeout).
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
}

/// What one client may send and hold.
#[derive(Debug, Args)]
#[command(next_help_heading = "Client limits")]
pub(crate) struct ClientFlags {
    /// Largest bulk string a client may send (Redis's proto-max-bulk-len).
    #[arg(long, env = "RESPOOL_MAX_BULK_LENGTH", default_value = "512MiB", value_parser = parse_bytes)]
    pub max_bulk_length: u64,

    /// Requests one client may have in flight before respool stops reading from it.
    #[arg(long, env = "RESPOOL_MAX_PENDING_PER_CLIENT", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_per_client: u32,

    /// Reply bytes one client may have waiting in respool (received from the upstream, not yet written to the client) before it is disconnected, like Redis's client-output-buffer-limit; 0 = unlimited. Also caps the largest single reply a client can receive.
    #[arg(long, env = "RESPOOL_CLIENT_OUTPUT_LIMIT", default_value = "256MiB", value_parser = parse_bytes)]
    pub client_output_limit: u64,

    /// Reply bytes all clients together may have waiting in respool; past it, the client holding the most is disconnected, as Redis's maxmemory-clients evicts the biggest client; 0 = unlimited.
    #[arg(long, env = "RESPOOL_MAX_REPLY_MEMORY", default_value = "1GiB", value_parser = parse_bytes)]
    pub max_reply_memory: u64,

    /// Close a client that has sent nothing for this long and has no request in flight (0s = never, like Redis's `timeout 0`). Subscribed and blocked clients are exempt.
    #[arg(long, env = "RESPOOL_CLIENT_IDLE_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub client_idle_timeout: Duration,

    /// Time a client has to finish sending a command it has started; after that it gets a protocol error and is closed (0s = no limit).
    #[arg(long, env = "RESPOOL_REQUEST_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_read_timeout: Duration,
}

/// Who may connect, and what they may run.
#[derive(Debug, Args)]
#[command(next_help_heading = "Client authentication")]
pub(crate) struct AuthFlags {
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
    pub users_file: Option<PathBuf>,

    /// Without client users of respool's own (--requirepass, --user), a client's AUTH is checked by the upstream and its commands run as that user, over lanes of their own: the most such identities served at once (a total for the process).
    #[arg(long, env = "RESPOOL_MAX_IDENTITIES", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_identities: u32,

    /// An identity's lanes that no client has used for this long are closed, and its credentials forgotten.
    #[arg(long, env = "RESPOOL_IDENTITY_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub identity_idle_timeout: Duration,

    /// Refuse a command on this proxy: NAME or NAME|SUBCOMMAND (repeatable; env: comma-separated).
    #[arg(
        long = "deny-command",
        env = "RESPOOL_DENY_COMMANDS",
        value_delimiter = ','
    )]
    pub deny_commands: Vec<String>,
}

/// TLS for clients (the listener) and for a `rediss://` upstream.
#[derive(Debug, Args)]
#[command(next_help_heading = "TLS")]
pub(crate) struct TlsFlags {
    /// Serve clients over TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "RESPOOL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "RESPOOL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require TLS clients to present a certificate signed by a CA in this PEM file.
    #[arg(long, env = "RESPOOL_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// How long a TLS client may take to complete its handshake.
    #[arg(long, env = "RESPOOL_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// Trust these CA certificates (PEM) for a rediss:// upstream instead of the system's trust store; its certificate must also name the URL's host.
    #[arg(long, env = "RESPOOL_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,

    /// Client certificate chain (PEM) presented to a rediss:// upstream (Redis's tls-auth-clients).
    #[arg(long, env = "RESPOOL_UPSTREAM_CERT", requires = "upstream_key")]
    pub upstream_cert: Option<PathBuf>,

    /// PEM private key of --upstream-cert.
    #[arg(long, env = "RESPOOL_UPSTREAM_KEY", requires = "upstream_cert")]
    pub upstream_key: Option<PathBuf>,

    /// The name a rediss:// upstream's certificate must carry, and the SNI sent, when it is not the URL's host (an IP address, a tunnel or a load balancer in between).
    #[arg(long, env = "RESPOOL_UPSTREAM_TLS_SERVER_NAME")]
    pub upstream_tls_server_name: Option<String>,

    /// FOR TESTS ONLY: accept any certificate from a rediss:// upstream (no verification; anyone on the path can read and change the traffic).
    #[arg(long, env = "RESPOOL_UPSTREAM_TLS_INSECURE", value_parser = clap::builder::BoolishValueParser::new(), conflicts_with = "upstream_ca")]
    pub upstream_tls_insecure: bool,
}

/// Following the primary through Sentinel, and reading from replicas.
#[derive(Debug, Args)]
#[command(next_help_heading = "Sentinel and replicas")]
pub(crate) struct TopologyFlags {
    /// A Sentinel to ask where the primary of --sentinel-master is; repeat it for each (the env variable takes a comma-separated list). With Sentinels, --upstream's host and port are not used: its user, password, database and scheme (rediss:// for TLS) apply to the primary and the replicas.
    #[arg(
        long = "sentinel",
        env = "RESPOOL_SENTINELS",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    pub sentinels: Vec<String>,

    /// The master name the Sentinels monitor (needed with --sentinel).
    #[arg(long, env = "RESPOOL_SENTINEL_MASTER")]
    pub sentinel_master: Option<String>,

    /// ACL user respool logs in to the Sentinels as (with --sentinel-password).
    #[arg(long, env = "RESPOOL_SENTINEL_USER", requires = "sentinel_password")]
    pub sentinel_user: Option<String>,

    /// The Sentinels' password (prefer the env variable: flags show in `ps`).
    #[arg(long, env = "RESPOOL_SENTINEL_PASSWORD", hide_env_values = true)]
    pub sentinel_password: Option<String>,

    /// Talk to the Sentinels over TLS, trusting --upstream-ca (else the system's trust store) and presenting --upstream-cert if given.
    #[arg(long, env = "RESPOOL_SENTINEL_TLS", value_parser = clap::builder::BoolishValueParser::new())]
    pub sentinel_tls: bool,

    /// Where read-only commands go: `primary`; `prefer-replica`, a replica that is up and within --max-replica-lag, else the primary; `replica`, only replicas. Replicas are the primary's (its ROLE), with or without Sentinel.
    #[arg(long, env = "RESPOOL_READ_FROM", value_enum, default_value = "primary")]
    pub read_from: ReadFrom,

    /// A replica whose replication offset is further behind the primary's than this is not read from.
    #[arg(long, env = "RESPOOL_MAX_REPLICA_LAG", default_value = "1s", value_parser = parse_duration)]
    pub max_replica_lag: Duration,

    /// How often the replicas' replication offsets are compared with the primary's (a ROLE on each).
    #[arg(long, env = "RESPOOL_REPLICA_CHECK_INTERVAL", default_value = "100ms", value_parser = parse_duration)]
    pub replica_check_interval: Duration,

    /// A client that wrote reads from the primary until a replica has caught up with its writes; off = reads go to replicas at once.
    #[arg(long, env = "RESPOOL_READ_YOUR_WRITES", default_value = "on", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub read_your_writes: bool,
}

/// Redis Cluster.
#[derive(Debug, Args)]
#[command(next_help_heading = "Cluster")]
pub(crate) struct ClusterFlags {
    /// Front a Redis Cluster: --upstream names seed nodes, the slot map comes from CLUSTER SHARDS (or SLOTS), and each request goes to the primary serving its key's slot. See docs/operations.md "Redis Cluster".
    #[arg(long, env = "RESPOOL_CLUSTER", value_parser = clap::builder::BoolishValueParser::new())]
    pub cluster: bool,

    /// How often the slot map is asked for again, besides after a MOVED reply or a node's connection failure.
    #[arg(long, env = "RESPOOL_CLUSTER_REFRESH_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub cluster_refresh_interval: Duration,

    /// Shortest time between two slot-map refreshes: a storm of MOVED replies causes one refresh per this interval.
    #[arg(long, env = "RESPOOL_CLUSTER_REFRESH_MIN_INTERVAL", default_value = "100ms", value_parser = parse_duration)]
    pub cluster_refresh_min_interval: Duration,
}

/// What respool shows operators besides its log.
#[derive(Debug, Args)]
#[command(next_help_heading = "Metrics and health")]
pub(crate) struct OpsFlags {
    /// Serve HTTP on this address: /metrics (Prometheus text format), /healthz (200 while serving) and /readyz (200 while a validated upstream connection exists, else 503). Off unless given.
    #[arg(long, env = "RESPOOL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Logging.
#[derive(Debug, Args)]
#[command(next_help_heading = "Logging")]
pub(crate) struct LogFlags {
    /// Log format.
    #[arg(long, env = "RESPOOL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, env = "RESPOOL_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// `--slowlog-threshold`: a duration, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlowlogThreshold(pub Option<Duration>);

fn parse_slowlog_threshold(s: &str) -> Result<SlowlogThreshold, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(SlowlogThreshold(None));
    }
    parse_duration(s).map(|d| SlowlogThreshold(Some(d)))
}

/// The admin console (`RESPOOL …` on the client port) and the slowlog.
#[derive(Debug, Args)]
#[command(next_help_heading = "Admin console and slowlog")]
pub(crate) struct AdminFlags {
    /// One of respool's own client users (--user) whose connections may run RESPOOL POOLS | CLIENTS | STATS | CONFIG | PAUSE | RESUME | DRAIN | RELOAD | SLOWLOG on the client port; without it nobody may. See docs/operations.md "Admin console".
    #[arg(long, env = "RESPOOL_ADMIN_USER")]
    pub admin_user: Option<String>,

    /// Requests on shared lanes slower than this through respool (from the lane taking them to their last reply) go to the slowlog and a log line; 0s = every request; off = none.
    #[arg(long, env = "RESPOOL_SLOWLOG_THRESHOLD", default_value = "10ms", value_parser = parse_slowlog_threshold)]
    pub slowlog_threshold: SlowlogThreshold,

    /// Entries the slowlog keeps (the oldest go first), like Redis's slowlog-max-len.
    #[arg(long, env = "RESPOOL_SLOWLOG_MAX_LEN", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub slowlog_max_len: u32,

    /// Keep the arguments of slow requests in the slowlog (truncated as Redis truncates them); off by default, since values may be secrets.
    #[arg(long, env = "RESPOOL_SLOWLOG_ARGS", value_parser = clap::builder::BoolishValueParser::new())]
    pub slowlog_args: bool,
}
