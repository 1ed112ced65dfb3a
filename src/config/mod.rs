//! Command-line flags (every one also readable from `RESPOOL_<NAME>`) turned
//! into one validated [`Config`], the only configuration the rest of the code
//! sees: a group of settings per subsystem, built once and never changed.
//!
//! * `flags` — the flags as clap parses them, in groups.
//! * `url` — `redis://` / `rediss://` URLs.
//! * `units` — durations and sizes as operators write them.
//! * `secret` — passwords that never print themselves.
//! * `file` — `--config FILE`, read through the flags' own definitions.
//! * `effective` — every flag's final value and source (check-config, reload).

mod admin;
mod describe;
mod effective;
mod file;
mod flags;
mod secret;
mod topology;
mod units;
pub(crate) mod url;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) use admin::AdminSettings;
pub use effective::{Effective, Source};
pub use flags::{Flags, LogFormat, ReadFrom, Validate};
pub use secret::Secret;
pub(crate) use topology::{ClusterSettings, ReplicaSettings, SentinelSettings, TopologySettings};
pub use units::{parse_bytes, parse_duration};

use crate::client::auth::ClientAuth;
use crate::command::DenyList;
use crate::pool::endpoint::{Endpoint, Identity, Node};
use crate::retry::BackoffPolicy;
use crate::tls::{ListenerTls, UpstreamTls, UpstreamTrust};
use url::UpstreamUrl;

/// `--threads 0` starts no more event loops than this: one Redis is one
/// thread, and each loop holds its own upstream connections.
const AUTO_THREADS_MAX: usize = 4;

/// The event loops `--threads 0` starts on a machine with `cores` cores: one
/// per two cores, at least one, at most [`AUTO_THREADS_MAX`].
///
/// Half, not one per core, because respool shares its machine with the
/// processes whose work it carries: at least Redis (one thread) and usually
/// its clients. On 2 cores, with write batching, one loop beat two at 50
/// and 500 clients and matched it at pipeline 16 (docs/operations.md,
/// "Tuning"): fewer lanes write larger batches, and a second loop only adds
/// wake-ups competing with Redis and the clients for the same cores.
fn auto_threads(cores: usize) -> usize {
    (cores / 2).clamp(1, AUTO_THREADS_MAX)
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) listener: ListenerSettings,
    /// The upstream named by `--upstream`, as respool's own identity.
    pub(crate) upstream: Endpoint,
    pub(crate) require_upstream: bool,
    pub(crate) pool: PoolSettings,
    pub(crate) retry: RetrySettings,
    pub(crate) clients: ClientSettings,
    /// Lane sets of the identities clients log in as (AUTH passthrough).
    pub(crate) identities: IdentitySettings,
    /// Sentinel, and reads from replicas.
    pub(crate) topology: TopologySettings,
    /// Redis Cluster (`--cluster`): the seeds and how the slot map is kept.
    pub(crate) cluster: Option<ClusterSettings>,
    pub(crate) log: LogSettings,
    /// The admin console and the slowlog.
    pub(crate) admin: AdminSettings,
    /// `--metrics-listen`: where `/metrics`, `/healthz` and `/readyz` are
    /// served, if anywhere.
    pub(crate) metrics_listen: Option<SocketAddr>,
}

/// AUTH passthrough: on when respool has no client users of its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdentitySettings {
    /// A client's AUTH is checked by the upstream, and its commands run as
    /// that identity.
    pub passthrough: bool,
    /// Identities with lane sets at once, besides respool's own.
    pub max: usize,
    /// Unused this long, an identity's lane set is closed.
    pub idle_timeout: Duration,
}

/// Where and how clients are accepted.
#[derive(Debug, Clone)]
pub(crate) struct ListenerSettings {
    /// The TCP address clients connect to, if any.
    pub tcp: Option<SocketAddr>,
    /// The Unix socket clients connect to, if any.
    pub unix: Option<UnixListen>,
    pub max_clients: usize,
    /// `--threads`: 0 for one loop per two cores ([`Config::event_loops`]).
    pub threads: usize,
    pub shutdown_timeout: Duration,
    /// TLS for clients (`--tls-cert`/`--tls-key`), or plain TCP.
    pub tls: Option<ListenerTls>,
    /// TCP keepalive on client sockets.
    pub keepalive: Option<Duration>,
}

/// A Unix socket listener (`--listen unix:PATH`).
#[derive(Debug, Clone)]
pub(crate) struct UnixListen {
    pub path: std::path::PathBuf,
    /// `--unix-permissions`: the socket file's mode, or the umask's.
    pub permissions: Option<u32>,
    /// `--unix-takeover`: replace a live socket instead of refusing it.
    pub takeover: bool,
}

/// How upstream connections are made, validated and kept: the same for
/// every endpoint.
#[derive(Debug, Clone)]
pub(crate) struct PoolSettings {
    /// Shared lanes (upstream connections multiplexed across clients).
    pub max_connections: u32,
    /// Validated spares kept for the lanes.
    pub min_idle: u32,
    /// Dedicated (pinned) connections at most.
    pub max_pinned: u32,
    /// TCP connect + TLS handshake time limit, and again for validation.
    pub connect_timeout: Duration,
    /// Longest wait for an upstream connection.
    pub checkout_timeout: Duration,
    /// Idle time after which a connection is PINGed.
    pub health_check_interval: Option<Duration>,
    /// TCP keepalive idle time on upstream sockets.
    pub keepalive: Option<Duration>,
    /// Hold new requests while a lane's write is unanswered.
    pub batch_writes: bool,
    /// Read buffer size per connection.
    pub read_buffer_size: usize,
    /// What a new connection must pass.
    pub validate: Validate,
    /// Prefix of the key the write probe names.
    pub probe_prefix: String,
}

/// Request deadlines, holds and resends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetrySettings {
    /// Request deadline.
    pub timeout: Duration,
    /// Hold window during outages and transient errors.
    pub hold_timeout: Duration,
    /// Resends of a read-only request after its connection was lost.
    pub retries: u32,
    /// Reconnect and transient-error backoff.
    pub backoff: BackoffPolicy,
}

/// What a client may send and hold, and who may connect.
#[derive(Debug, Clone)]
pub(crate) struct ClientSettings {
    /// Largest client bulk string.
    pub max_bulk_length: u64,
    /// Per-client in-flight request limit.
    pub max_pending: usize,
    /// Per-client limit on reply bytes held for it (`None` = unlimited).
    pub output_limit: Option<usize>,
    /// Limit on reply bytes held for all clients (`None` = unlimited).
    pub max_reply_memory: Option<usize>,
    /// Idle time after which a client is closed (`None` = never).
    pub idle_timeout: Option<Duration>,
    /// Deadline for completing a started request (`None` = none).
    pub request_read_timeout: Option<Duration>,
    /// Client authentication.
    pub auth: ClientAuth,
    /// Commands refused by policy.
    pub deny: DenyList,
}

/// Logging.
#[derive(Debug, Clone)]
pub(crate) struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

impl ListenerSettings {
    fn validate(
        listener: flags::ListenerFlags,
        tls: &flags::TlsFlags,
        pool: &flags::PoolFlags,
    ) -> Result<ListenerSettings, String> {
        let unix_listen = listener
            .listen
            .iter()
            .any(|l| matches!(l, flags::ListenAddr::Unix(_)));
        if unix_listen && tls.tls_cert.is_some() {
            // A sidecar's socket never leaves the host; TLS there would only
            // cost CPU, and TLS on one listener but not the other is not
            // supported.
            return Err("'--tls-cert' secures TCP clients: it cannot be combined with a '--listen unix:' socket; serve the Unix socket (it never leaves the host) from a respool without TLS".into());
        }
        let tls = match (&tls.tls_cert, &tls.tls_key) {
            (Some(cert), Some(key)) => Some(ListenerTls::load(
                cert,
                key,
                tls.tls_ca.as_deref(),
                tls.tls_handshake_timeout,
            )?),
            _ => None,
        };
        let mut tcp = None;
        let mut unix = None;
        for addr in listener.listen {
            let one_more = match addr {
                flags::ListenAddr::Tcp(addr) => tcp.replace(addr).is_some(),
                flags::ListenAddr::Unix(path) => unix
                    .replace(UnixListen {
                        path,
                        permissions: listener.unix_permissions,
                        takeover: listener.unix_takeover,
                    })
                    .is_some(),
            };
            if one_more {
                return Err("'--listen' takes at most one TCP address and one unix: path".into());
            }
        }
        if unix.is_none() && (listener.unix_permissions.is_some() || listener.unix_takeover) {
            return Err(
                "'--unix-permissions' and '--unix-takeover' need '--listen unix:PATH'".into(),
            );
        }
        Ok(ListenerSettings {
            tcp,
            unix,
            max_clients: listener.max_clients as usize,
            threads: listener.threads as usize,
            shutdown_timeout: listener.shutdown_timeout,
            tls,
            keepalive: nonzero(pool.keepalive),
        })
    }
}

impl PoolSettings {
    fn validate(
        pool: flags::PoolFlags,
        upstream: flags::UpstreamFlags,
    ) -> Result<PoolSettings, String> {
        if pool.read_buffer_size < 512 || pool.read_buffer_size > 64 << 20 {
            return Err("'--read-buffer-size' must be between 512B and 64MiB".into());
        }
        let prefix = upstream.probe_prefix;
        if prefix.is_empty() || prefix.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err("'--probe-prefix' must be non-empty and contain no spaces".into());
        }
        Ok(PoolSettings {
            max_connections: pool.max_connections,
            min_idle: pool.min_idle,
            max_pinned: pool.max_pinned,
            connect_timeout: pool.connect_timeout,
            checkout_timeout: pool.checkout_timeout,
            health_check_interval: nonzero(pool.health_check_interval),
            keepalive: nonzero(pool.keepalive),
            batch_writes: pool.batch_writes,
            read_buffer_size: pool.read_buffer_size as usize,
            validate: upstream.validate,
            probe_prefix: prefix,
        })
    }
}

impl RetrySettings {
    fn validate(
        retry: &flags::RetryFlags,
        pool: &flags::PoolFlags,
    ) -> Result<RetrySettings, String> {
        if retry.backoff_base > retry.backoff_cap {
            return Err("'--backoff-base' must not exceed '--backoff-cap'".into());
        }
        Ok(RetrySettings {
            timeout: retry.timeout,
            hold_timeout: retry.hold_timeout.unwrap_or(pool.checkout_timeout),
            retries: retry.retries,
            backoff: BackoffPolicy {
                base: retry.backoff_base,
                cap: retry.backoff_cap,
            },
        })
    }
}

impl ClientSettings {
    fn validate(
        clients: flags::ClientFlags,
        auth: flags::AuthFlags,
    ) -> Result<ClientSettings, String> {
        let users = client_users(&auth.users, auth.users_file.as_ref())?;
        let client_auth = ClientAuth::new(auth.requirepass.as_deref(), &users)
            .map_err(|e| format!("invalid client user: {e}"))?;
        Ok(ClientSettings {
            max_bulk_length: clients.max_bulk_length,
            max_pending: clients.max_pending_per_client as usize,
            output_limit: (clients.client_output_limit > 0)
                .then(|| usize::try_from(clients.client_output_limit).unwrap_or(usize::MAX)),
            max_reply_memory: (clients.max_reply_memory > 0)
                .then(|| usize::try_from(clients.max_reply_memory).unwrap_or(usize::MAX)),
            idle_timeout: nonzero(clients.client_idle_timeout),
            request_read_timeout: nonzero(clients.request_read_timeout),
            auth: client_auth,
            deny: DenyList::new(&auth.deny_commands),
        })
    }
}

/// The endpoint `--upstream` names, as respool's own identity.
fn upstream_endpoint(
    upstream: &flags::UpstreamFlags,
    tls: &flags::TlsFlags,
    sentinel_tls: bool,
) -> Result<Endpoint, String> {
    let first = upstream.upstreams.first().map_or("", String::as_str);
    let url =
        UpstreamUrl::parse(first).map_err(|e| format!("invalid value for '--upstream': {e}"))?;
    let password = match upstream.upstream_password.as_deref() {
        Some(p) => Some(Secret::new(p)),
        None => url.password.clone(),
    };
    Ok(Endpoint {
        node: Node::fixed(url.addr.clone(), upstream_tls(tls, &url, sentinel_tls)?),
        identity: Identity {
            username: url.username.clone(),
            password,
        },
        db: url.db,
        probe_slot: None,
    })
}

/// A validated configuration and every flag's effective value: what
/// [`Config::load`] returns.
#[derive(Clone)]
pub struct Loaded {
    /// The configuration the proxy runs with.
    pub config: Config,
    /// Each flag's value and source, for `check-config` and reloads.
    pub effective: Effective,
}

impl Config {
    /// Parses command-line arguments (the first is the program name), the
    /// `RESPOOL_…` environment and the `--config` file if one is named, in
    /// that order of precedence, and validates the result.
    pub fn load<I, T>(args: I) -> Result<Loaded, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let mut cmd = Flags::command();
        cmd.build();
        let given = cmd.clone().try_get_matches_from(&args)?;
        let mut from_file = std::collections::BTreeSet::new();
        if let Some(path) = given.get_one::<PathBuf>("config") {
            let loaded = file::read(path, &cmd, &given).map_err(|msg| {
                clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{msg}\n"))
            })?;
            // After the command line: no flag the file sets was given there.
            args.extend(loaded.args);
            from_file = loaded.set;
        }
        let matches = cmd.clone().try_get_matches_from(&args)?;
        let effective = Effective::from_matches(&cmd, &matches, &from_file);
        let flags = Flags::from_arg_matches(&matches)?;
        Ok(Loaded {
            config: Config::from_flags(flags)?,
            effective,
        })
    }

    /// Parses command-line style arguments (the first is the program name).
    pub fn parse_from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        Config::from_flags(Flags::try_parse_from(args)?)
    }

    /// Validates parsed flags; an invalid combination is a clap error (exit
    /// code 2).
    pub fn from_flags(flags: Flags) -> Result<Config, clap::Error> {
        Config::validate(flags).map_err(|msg| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{msg}\n"))
        })
    }

    fn validate(flags: Flags) -> Result<Config, String> {
        let Flags {
            file: _,
            listener,
            upstream,
            pool,
            retry,
            clients,
            auth,
            tls,
            topology,
            cluster,
            log,
            admin,
            ops,
        } = flags;
        if let Some(metrics) = ops.metrics_listen {
            if listener.listen.contains(&flags::ListenAddr::Tcp(metrics)) {
                return Err(format!(
                    "--metrics-listen {metrics} is the --listen address; give the metrics their own port"
                ));
            }
        }
        if retry.timeout.is_zero()
            || pool.connect_timeout.is_zero()
            || pool.checkout_timeout.is_zero()
            || retry.hold_timeout.is_some_and(|h| h.is_zero())
            || tls.tls_handshake_timeout.is_zero()
        {
            return Err("timeouts must be greater than zero".into());
        }
        let cluster = ClusterSettings::validate(&cluster, &upstream, &topology)?;
        let identities = IdentitySettings {
            passthrough: auth.requirepass.is_none()
                && auth.users.is_empty()
                && auth.users_file.is_none(),
            max: auth.max_identities as usize,
            idle_timeout: auth.identity_idle_timeout,
        };
        let clients = ClientSettings::validate(clients, auth)?;
        Ok(Config {
            admin: AdminSettings::validate(admin, &clients.auth)?,
            upstream: upstream_endpoint(&upstream, &tls, topology.sentinel_tls)?,
            require_upstream: upstream.require_upstream,
            retry: RetrySettings::validate(&retry, &pool)?,
            listener: ListenerSettings::validate(listener, &tls, &pool)?,
            pool: PoolSettings::validate(pool, upstream)?,
            identities,
            clients,
            topology: TopologySettings::validate(topology, &tls)?,
            cluster,
            log: LogSettings {
                format: log.log_format,
                level: log.log_level,
            },
            metrics_listen: ops.metrics_listen,
        })
    }

    /// The TCP address clients connect to, if respool listens on one.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listener.tcp
    }

    /// The log line format.
    pub fn log_format(&self) -> LogFormat {
        self.log.format
    }

    /// The log filter (`--log-level`).
    pub fn log_level(&self) -> &str {
        &self.log.level
    }

    /// The event loops these flags start on this machine: `--threads`, or
    /// for `0` one per two cores (at least one, at most four).
    pub fn event_loops(&self) -> usize {
        match self.listener.threads {
            0 => auto_threads(std::thread::available_parallelism().map_or(1, |n| n.get())),
            n => n,
        }
    }

    /// Event loop `index`'s share of the pool sizes when `loops` event loops
    /// run (`--threads`): `--max-connections`, `--min-idle` and
    /// `--max-pinned` are totals for the process, split as evenly as
    /// possible, with at least one lane and one dedicated connection per
    /// loop; `--max-identities` likewise. (`--max-clients` is one count for
    /// the process.)
    pub(crate) fn loop_share(&self, index: usize, loops: usize) -> Config {
        let loops = loops.max(1) as u32;
        let index = index as u32;
        let split = |total: u32, at_least: u32| {
            (total / loops + u32::from(index < total % loops)).max(at_least)
        };
        let mut share = self.clone();
        share.pool.max_connections = split(self.pool.max_connections, 1);
        share.pool.min_idle = split(self.pool.min_idle, 0);
        share.pool.max_pinned = split(self.pool.max_pinned, 1);
        share.identities.max = split(self.identities.max as u32, 1) as usize;
        share
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// `--user` entries and the lines of `--users-file`.
fn client_users(users: &[String], file: Option<&PathBuf>) -> Result<Vec<String>, String> {
    let mut all = users.to_vec();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read '--users-file' {}: {e}", path.display()))?;
        all.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    Ok(all)
}

/// The TLS settings of a `rediss://` upstream; TLS flags without one are an
/// error rather than silently ignored.
/// `sentinel_tls`: the trust flags also serve `--sentinel-tls`, so they
/// are not an error without a TLS upstream.
fn upstream_tls(
    flags: &flags::TlsFlags,
    url: &UpstreamUrl,
    sentinel_tls: bool,
) -> Result<Option<UpstreamTls>, String> {
    if !url.tls {
        let given = [
            (
                "--upstream-ca",
                flags.upstream_ca.is_some() && !sentinel_tls,
            ),
            (
                "--upstream-cert",
                flags.upstream_cert.is_some() && !sentinel_tls,
            ),
            (
                "--upstream-tls-insecure",
                flags.upstream_tls_insecure && !sentinel_tls,
            ),
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
    let server_name = flags
        .upstream_tls_server_name
        .as_deref()
        .unwrap_or(&url.host);
    load_upstream_tls(flags, server_name).map(Some)
}

/// The upstream TLS client configuration the trust flags describe, for a
/// server whose certificate must name `host`.
pub(super) fn load_upstream_tls(
    flags: &flags::TlsFlags,
    host: &str,
) -> Result<UpstreamTls, String> {
    let trust = match (&flags.upstream_ca, flags.upstream_tls_insecure) {
        (Some(ca), _) => UpstreamTrust::Ca(ca),
        (None, true) => UpstreamTrust::Insecure,
        (None, false) => UpstreamTrust::System,
    };
    let client_cert = flags
        .upstream_cert
        .as_deref()
        .zip(flags.upstream_key.as_deref());
    UpstreamTls::load(host, trust, client_cert)
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
                let c = config.loop_share(i, 2).pool;
                (c.max_connections, c.min_idle, c.max_pinned)
            })
            .collect();
        assert_eq!(shares, vec![(3, 1, 32), (2, 0, 32)]);
        // More loops than lanes: each loop still needs one.
        let few = Config::parse_from_args(["respool", "--max-connections", "2"]).unwrap();
        assert_eq!(few.loop_share(3, 4).pool.max_connections, 1);
        // One loop gets everything.
        assert_eq!(config.loop_share(0, 1).pool.max_connections, 5);
    }

    #[test]
    fn listeners_tcp_unix_or_both() {
        let parse = |args: &[&str]| Config::parse_from_args([&["respool"], args].concat());
        let c = parse(&["--listen", "unix:/tmp/r.sock", "--unix-permissions", "0660"]).unwrap();
        assert!(c.listen_addr().is_none());
        let unix = c.listener.unix.unwrap();
        assert_eq!(unix.path, std::path::Path::new("/tmp/r.sock"));
        assert_eq!(unix.permissions, Some(0o660));
        assert!(!unix.takeover);

        let c = parse(&[
            "--listen",
            "127.0.0.1:7000",
            "--listen",
            "unix:///tmp/r.sock",
        ])
        .unwrap();
        assert_eq!(c.listen_addr().unwrap().port(), 7000);
        assert!(c.listener.unix.is_some());
        let c = parse(&[
            "--listen",
            "127.0.0.1:7000,unix:/tmp/r.sock",
            "--unix-takeover",
        ])
        .unwrap();
        assert!(c.listener.unix.unwrap().takeover);

        for bad in [
            &["--listen", "unix:"][..],
            &["--listen", "localhost:6380"],
            &["--listen", "unix:/a", "--listen", "unix:/b"],
            &["--listen", "127.0.0.1:1", "--listen", "127.0.0.1:2"],
            &["--listen", "unix:/a", "--unix-permissions", "0999"],
            &["--listen", "unix:/a", "--unix-permissions", "01777"],
            &["--unix-permissions", "0660"],
            &["--unix-takeover"],
            &[
                "--listen",
                "unix:/a",
                "--tls-cert",
                "/c.pem",
                "--tls-key",
                "/k.pem",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_password_flag_overrides_the_url() {
        let c = Config::parse_from_args([
            "respool",
            "--upstream",
            "redis://alice:inurl@h:1",
            "--upstream-password",
            "flag",
        ])
        .unwrap();
        assert_eq!(c.upstream.identity.username.as_deref(), Some("alice"));
        assert_eq!(
            c.upstream.identity.password.as_ref().unwrap().expose(),
            "flag"
        );
    }

    #[test]
    fn rediss_urls_need_a_trust_decision() {
        // Without --upstream-ca the system's trust store is used; that is
        // tested against a respool process in tests/tls.rs, where the
        // store can be chosen without touching this process's environment.
        let upstream = ["respool", "--upstream", "rediss://127.0.0.1:6390"];
        let c = Config::parse_from_args([&upstream[..], &["--upstream-tls-insecure"]].concat())
            .unwrap();
        assert!(c.upstream.node.tls.as_ref().is_some_and(|t| t.insecure));
        assert!(c.listener.tls.is_none());

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
    fn defaults_are_the_quick_start() {
        let c = Config::parse_from_args(["respool"]).unwrap();
        assert_eq!(c.listener.tcp.unwrap().to_string(), "127.0.0.1:6380");
        assert!(c.listener.unix.is_none());
        assert_eq!(&*c.upstream.node.addr(), "127.0.0.1:6379");
        assert_eq!(c.pool.validate, Validate::Write);
        assert_eq!(c.clients.output_limit, Some(256 << 20));
        assert_eq!(c.clients.idle_timeout, None);
        assert_eq!(
            c.clients.request_read_timeout,
            Some(Duration::from_secs(10))
        );
        assert_eq!(c.retry.hold_timeout, c.pool.checkout_timeout);
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
        assert_eq!(c.clients.output_limit, None);
        assert_eq!(c.clients.idle_timeout, None);
        assert_eq!(c.clients.request_read_timeout, None);
    }

    #[test]
    fn invalid_values_are_clap_errors() {
        let e = Config::parse_from_args(["respool", "--timeout", "soon"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = Config::parse_from_args(["respool", "--backoff-base", "5s", "--backoff-cap", "1s"])
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        // A password that once panicked the URL parser.
        let c = Config::parse_from_args(["respool", "--upstream", "redis://:%aé@h:1"]).unwrap();
        assert_eq!(
            c.upstream.identity.password.as_ref().unwrap().expose(),
            "%aé"
        );
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::parse_from_args([
            "respool",
            "--upstream",
            "redis://alice:hunter2@localhost:7000",
            "--requirepass",
            "s3cret",
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}
