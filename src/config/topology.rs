//! Where the primary is (`--upstream`, or Sentinel's answer) and where reads
//! may go (`--read-from`): the settings of the `Sentinel and replicas`
//! flags, validated.

use std::sync::Arc;
use std::time::Duration;

use super::flags::{ClusterFlags, ReadFrom, TlsFlags, TopologyFlags, UpstreamFlags};
use super::url::UpstreamUrl;
use super::Secret;
use crate::pool::endpoint::Identity;
use crate::tls::UpstreamTls;

/// Sentinel's port when `--sentinel` gives none.
const SENTINEL_PORT: u16 = 26379;

/// Following the primary through Sentinel.
#[derive(Debug, Clone)]
pub(crate) struct SentinelSettings {
    /// `host:port` of each Sentinel.
    pub sentinels: Vec<Arc<str>>,
    /// The master name they monitor.
    pub master: Arc<str>,
    /// Who respool logs in to them as.
    pub identity: Identity,
    /// TLS to the Sentinels (the certificate must name each one's host).
    pub tls: Option<UpstreamTls>,
}

/// Reads from replicas.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplicaSettings {
    pub read_from: ReadFrom,
    pub max_lag: Duration,
    pub check_interval: Duration,
    pub read_your_writes: bool,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct TopologySettings {
    pub sentinel: Option<SentinelSettings>,
    pub replicas: ReplicaSettings,
    /// The certificate of a node respool learns of (Sentinel's primary, a
    /// replica) must name that node's host: no `--upstream-tls-server-name`.
    pub discovered_tls_name: bool,
}

impl TopologySettings {
    pub(super) fn validate(
        flags: TopologyFlags,
        tls: &TlsFlags,
    ) -> Result<TopologySettings, String> {
        let sentinel =
            match (flags.sentinels.is_empty(), flags.sentinel_master) {
                (true, None) => {
                    let given = [
                        ("--sentinel-password", flags.sentinel_password.is_some()),
                        ("--sentinel-tls", flags.sentinel_tls),
                    ];
                    if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                        return Err(format!("'{flag}' needs '--sentinel'"));
                    }
                    None
                }
                (true, Some(_)) => {
                    return Err("'--sentinel-master' needs '--sentinel HOST:PORT'".into())
                }
                (false, None) => return Err(
                    "'--sentinel' needs '--sentinel-master NAME', the master the Sentinels monitor"
                        .into(),
                ),
                (false, Some(master)) => Some(SentinelSettings {
                    sentinels: flags
                        .sentinels
                        .iter()
                        .map(|s| sentinel_addr(s))
                        .collect::<Result<_, _>>()?,
                    master: master.into(),
                    identity: Identity {
                        username: flags.sentinel_user.map(Into::into),
                        password: flags.sentinel_password.as_deref().map(Secret::new),
                    },
                    tls: if flags.sentinel_tls {
                        Some(discovered_tls(tls)?)
                    } else {
                        None
                    },
                }),
            };
        if flags.max_replica_lag.is_zero() || flags.replica_check_interval.is_zero() {
            return Err(
                "'--max-replica-lag' and '--replica-check-interval' must be greater than zero"
                    .into(),
            );
        }
        Ok(TopologySettings {
            discovered_tls_name: tls.upstream_tls_server_name.is_none(),
            sentinel,
            replicas: ReplicaSettings {
                read_from: flags.read_from,
                max_lag: flags.max_replica_lag,
                check_interval: flags.replica_check_interval,
                read_your_writes: flags.read_your_writes,
            },
        })
    }
}

/// Redis Cluster (`--cluster`).
#[derive(Debug, Clone)]
pub(crate) struct ClusterSettings {
    /// `host:port` of each seed node (`--upstream`), asked for the slot map
    /// in order until one answers.
    pub seeds: Vec<Arc<str>>,
    /// `--cluster-refresh-interval`.
    pub refresh_interval: Duration,
    /// `--cluster-refresh-min-interval`.
    pub refresh_min_interval: Duration,
}

impl ClusterSettings {
    /// `None` without `--cluster`; several `--upstream` URLs need it, and
    /// it excludes what a cluster does not have (databases other than 0)
    /// or respool does not do in front of one (Sentinel, replica reads).
    pub(super) fn validate(
        flags: &ClusterFlags,
        upstream: &UpstreamFlags,
        topology: &TopologyFlags,
    ) -> Result<Option<ClusterSettings>, String> {
        if !flags.cluster {
            if upstream.upstreams.len() > 1 {
                return Err("'--upstream' names one Redis; several URLs are the seed nodes of a Redis Cluster and need '--cluster'".into());
            }
            return Ok(None);
        }
        if !topology.sentinels.is_empty() {
            return Err("'--cluster' and '--sentinel' exclude each other: a Redis Cluster fails over by itself".into());
        }
        if topology.read_from != ReadFrom::Primary {
            return Err(
                "'--cluster' reads from the primaries only: '--read-from' must be 'primary'".into(),
            );
        }
        if flags.cluster_refresh_interval.is_zero() {
            return Err("'--cluster-refresh-interval' must be greater than zero".into());
        }
        let mut seeds = Vec::with_capacity(upstream.upstreams.len());
        let mut schemes = Vec::new();
        for given in &upstream.upstreams {
            let url = UpstreamUrl::parse(given)
                .map_err(|e| format!("invalid value for '--upstream': {e}"))?;
            if url.db != 0 {
                return Err("'--cluster': a Redis Cluster has only database 0; remove the /db from '--upstream'".into());
            }
            schemes.push(url.tls);
            seeds.push(url.addr.clone());
        }
        if schemes.windows(2).any(|w| w[0] != w[1]) {
            return Err("'--cluster': every '--upstream' seed must use the same scheme (redis:// or rediss://)".into());
        }
        Ok(Some(ClusterSettings {
            seeds,
            refresh_interval: flags.cluster_refresh_interval,
            refresh_min_interval: flags.cluster_refresh_min_interval,
        }))
    }
}

/// `host:port`, `host` (port 26379), `[v6]:port`.
fn sentinel_addr(given: &str) -> Result<Arc<str>, String> {
    let invalid = || format!("invalid value for '--sentinel': '{given}' is not HOST:PORT");
    let given = given.trim();
    if given.is_empty() || given.contains('/') || given.contains(char::is_whitespace) {
        return Err(invalid());
    }
    let has_port = match given.rsplit_once(':') {
        // `[v6]:port` or `host:port`; a bare IPv6 address has several colons.
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
            port.parse::<u16>().map_err(|_| invalid())?;
            true
        }
        _ => false,
    };
    Ok(if has_port {
        given.into()
    } else if given.contains(':') && !given.starts_with('[') {
        format!("[{given}]:{SENTINEL_PORT}").into()
    } else {
        format!("{given}:{SENTINEL_PORT}").into()
    })
}

/// TLS for the Sentinels: the upstream trust flags, with each Sentinel's
/// own host as the name its certificate must carry (set per connection).
fn discovered_tls(flags: &TlsFlags) -> Result<UpstreamTls, String> {
    super::load_upstream_tls(flags, "localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_addresses_get_the_default_port() {
        assert_eq!(&*sentinel_addr("10.0.0.1:26380").unwrap(), "10.0.0.1:26380");
        assert_eq!(&*sentinel_addr("s1.example").unwrap(), "s1.example:26379");
        assert_eq!(&*sentinel_addr("[::1]:5000").unwrap(), "[::1]:5000");
        assert_eq!(&*sentinel_addr("::1").unwrap(), "[::1]:26379");
        assert!(sentinel_addr("h:notaport").is_err());
        assert!(sentinel_addr("redis://h:1").is_err());
        assert!(sentinel_addr("").is_err());
    }
}
