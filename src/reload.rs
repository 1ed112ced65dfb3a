//! Live reload: re-read the configuration (the same command line, the
//! environment and the `--config` file, with the same precedence), and
//! apply what can change while respool runs. SIGHUP calls
//! [`Reloader::reload`]; so can an admin command.
//!
//! What applies live is listed in [`LIVE`]; any other changed setting is
//! logged as needing a restart and left as it is. A configuration that does
//! not validate changes nothing. Each change is logged by name, with its old
//! and new value unless the setting is a secret.

use std::collections::hash_map::DefaultHasher;
use std::ffi::OsString;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::config::{Config, Effective, Loaded};
use crate::live::Live;
use crate::pool::endpoint::Endpoint;

/// The settings a reload applies while respool runs; any other is reported
/// as needing a restart.
pub const LIVE: &[&str] = &[
    "requirepass",
    "user",
    "users-file",
    "deny-command",
    "max-clients",
    "max-bulk-length",
    "max-pending-per-client",
    "client-output-limit",
    "client-idle-timeout",
    "request-read-timeout",
    "tls-cert",
    "tls-key",
    "tls-ca",
    "tls-handshake-timeout",
    "max-pinned",
    "timeout",
    "hold-timeout",
    "retries",
    "backoff-base",
    "backoff-cap",
    "log-level",
];

/// The settings of respool's own client users: turning them all on or all
/// off switches AUTH passthrough, which needs a restart.
const OWN_USERS: &[&str] = &["requirepass", "user", "users-file"];

/// Sets the process's log filter (`--log-level`); the binary's logging
/// set-up provides it.
pub type LogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// One setting a reload found changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The flag's name (its config file key).
    pub setting: String,
    /// Applied; `false`: it needs a restart and was left unchanged.
    pub applied: bool,
    /// `old -> new`, or empty for a secret or a file's contents.
    pub detail: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} changed", self.setting)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        if !self.applied {
            f.write_str(": needs a restart, left unchanged")?;
        }
        Ok(())
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration does not validate.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The reloader is not attached to a running proxy.
    #[error("reloading is not enabled: respool runs without a configuration to re-read")]
    NotAttached,
}

/// Re-reads the configuration and applies it; see the module docs.
pub struct Reloader {
    /// The command line the process started with.
    args: Vec<OsString>,
    /// What the last start or reload read and applied.
    applied: Mutex<Effective>,
    /// The `--upstream` endpoint applied last, to tell a move (the same
    /// Redis login elsewhere: applied live) from another upstream.
    upstream: Mutex<Endpoint>,
    live: Option<Arc<Live>>,
    log_filter: Option<LogFilter>,
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader that reads `args` (the command line, program name first)
    /// again as [`Config::load`] does; `started` is what the proxy started
    /// with. Attach it with [`crate::Proxy::enable_reload`] or
    /// [`crate::EventLoops::enable_reload`].
    pub fn new(args: Vec<OsString>, started: &Loaded) -> Reloader {
        Reloader {
            args,
            applied: Mutex::new(started.effective.clone()),
            upstream: Mutex::new(started.config.upstream.clone()),
            live: None,
            log_filter: None,
        }
    }

    /// Lets a reload change the log filter (`--log-level`).
    pub fn with_log_filter(mut self, set: LogFilter) -> Reloader {
        self.log_filter = Some(set);
        self
    }

    pub(crate) fn attach(mut self, live: Arc<Live>) -> Reloader {
        self.live = Some(live);
        self
    }

    /// Re-reads the configuration and applies what can change live. Returns
    /// every change found (applied or needing a restart), each also logged;
    /// on an error nothing changed, and the error is logged too.
    pub fn reload(&self) -> Result<Vec<Change>, ReloadError> {
        let result = self.try_reload();
        match &result {
            Ok(changes) if changes.is_empty() => {
                tracing::info!("configuration reloaded: nothing changed")
            }
            Ok(changes) => {
                for change in changes {
                    if change.applied {
                        tracing::info!("reload: {change}");
                    } else {
                        tracing::warn!("reload: {change}");
                    }
                }
            }
            Err(e) => tracing::error!("reload refused, nothing changed: {e}"),
        }
        result
    }

    fn try_reload(&self) -> Result<Vec<Change>, ReloadError> {
        let live = self.live.as_ref().ok_or(ReloadError::NotAttached)?;
        let new = Config::load(&self.args).map_err(|e| ReloadError::Invalid(one_line(&e)))?;
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let old_clients = live.clients.load_full();
        // AUTH passthrough (no users of respool's own) is decided at start.
        let passthrough_flips = old_clients.auth.required() != new.config.clients.auth.required();
        let old_tls = live.listener_tls.load_full();
        let tls_flips = old_tls.is_some() != new.config.listener.tls.is_some();

        let mut upstream = self.upstream.lock().unwrap_or_else(|e| e.into_inner());
        // Without Sentinel, the same login elsewhere moves the lanes; in
        // front of a cluster, it is a new list of seeds.
        let follows_upstream = live.upstream.is_some()
            || (live.cluster_seeds.is_some() && new.config.cluster.is_some());
        let moves_upstream =
            follows_upstream && only_the_address_differs(&upstream, &new.config.upstream);

        let mut changes = Vec::new();
        let mut next = applied.clone();
        for (old, now) in applied.changed(&new.effective) {
            let name = old.name.as_str();
            let live_setting = (LIVE.contains(&name) || (name == "upstream" && moves_upstream))
                && !(passthrough_flips && OWN_USERS.contains(&name))
                && !(tls_flips && name.starts_with("tls-"));
            let detail = if old.secret {
                String::new()
            } else {
                format!("{} -> {}", old.shown(), now.shown())
            };
            changes.push(Change {
                setting: name.to_owned(),
                applied: live_setting,
                detail,
            });
            if live_setting {
                next.replace(now.clone());
            }
        }
        let applies = |name: &str| changes.iter().any(|c| c.applied && c.setting == name);
        let upstream_moved = applies("upstream");
        let users_changed = OWN_USERS.iter().any(|n| applies(n));
        let cert_changed = applies("tls-cert") || applies("tls-key");
        let hold_changed = applies("hold-timeout");

        // The log filter first: the one step that can still fail.
        if applies("log-level") {
            if let Some(set) = &self.log_filter {
                set(new.config.log_level())
                    .map_err(|e| ReloadError::Invalid(format!("invalid '--log-level': {e}")))?;
            }
        }

        // Client settings: new connections and new logins take them.
        let mut clients = new.config.clients.clone();
        if passthrough_flips {
            clients.auth = old_clients.auth.clone();
        } else if clients.auth != old_clients.auth && !users_changed {
            // Same flags, another users file.
            changes.push(Change {
                setting: "users-file".into(),
                applied: true,
                detail: "its contents".into(),
            });
        }
        live.clients.store(Arc::new(clients));
        live.max_clients
            .store(new.config.listener.max_clients, Ordering::Relaxed);
        live.set_max_pinned(&new.config);
        let mut retry = new.config.retry;
        if !hold_changed {
            // Unset, it follows --checkout-timeout, which needs a restart.
            retry.hold_timeout = live.retry.hold_timeout();
        }
        live.retry.set(retry);

        // The certificate: re-read even when its paths did not change, as
        // rotation usually replaces the files in place.
        if let (Some(old), Some(tls)) = (&old_tls, &new.config.listener.tls) {
            if tls.fingerprint != old.fingerprint && !cert_changed {
                changes.push(Change {
                    setting: "tls-cert".into(),
                    applied: true,
                    detail: "the certificate or key files' contents".into(),
                });
            }
            live.listener_tls.store(Some(Arc::new(tls.clone())));
        }
        // The upstream's new address: lanes drain their connections to the
        // old one and validate new ones, as after a failover.
        if let (true, Some(followed)) = (upstream_moved, &live.upstream) {
            followed.set(&new.config.upstream.node.addr());
            *upstream = new.config.upstream.clone();
        }
        // A cluster's new seeds: asked at the next refresh that finds no
        // known primary answering. The lanes stay on the primaries the
        // slot map names.
        if let (true, Some(seeds), Some(cluster)) =
            (upstream_moved, &live.cluster_seeds, &new.config.cluster)
        {
            seeds.store(Arc::new(cluster.seeds.clone()));
            *upstream = new.config.upstream.clone();
        }
        *applied = next;
        Ok(changes)
    }
}

/// Whether `new` is `old` at another address: the same login, database
/// and TLS (with the same certificate name), so the lanes may move to it
/// as they follow a failover (or, in front of a cluster, the slot map may
/// be asked of it). Anything else is another upstream, which needs a
/// restart.
fn only_the_address_differs(old: &Endpoint, new: &Endpoint) -> bool {
    let same_tls = match (&old.node.tls, &new.node.tls) {
        (None, None) => true,
        (Some(a), Some(b)) => a.server_name == b.server_name && a.insecure == b.insecure,
        _ => false,
    };
    same_tls && old.identity == new.identity && old.db == new.db
}

/// A clap error on one log line: its message lines, without the usage
/// and help hints that follow them.
fn one_line(e: &clap::Error) -> String {
    let rendered = e.to_string();
    let lines: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(" ").trim_start_matches("error: ").to_owned()
}

/// A fingerprint of certificate and key bytes, to tell a rotated
/// certificate from the same one read again (not a security measure).
pub(crate) fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut hasher = DefaultHasher::new();
    for part in parts {
        part.hash(&mut hasher);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_live_setting_is_a_flag() {
        let cmd = crate::config::Flags::command();
        for name in LIVE.iter().chain(OWN_USERS) {
            assert!(
                cmd.get_arguments().any(|a| a.get_long() == Some(name)),
                "{name} is not a flag"
            );
        }
    }

    #[test]
    fn changes_read_as_log_lines() {
        let live = Change {
            setting: "max-pinned".into(),
            applied: true,
            detail: "4 -> 2".into(),
        };
        assert_eq!(live.to_string(), "max-pinned changed (4 -> 2)");
        let restart = Change {
            setting: "listen".into(),
            applied: false,
            detail: String::new(),
        };
        assert_eq!(
            restart.to_string(),
            "listen changed: needs a restart, left unchanged"
        );
    }

    #[test]
    fn clap_errors_become_one_line() {
        let e = crate::Config::parse_from_args(["respool", "--tls-cert", "c.pem"]).unwrap_err();
        let line = one_line(&e);
        assert!(!line.contains('\n') && line.contains("--tls-key"), "{line}");
        assert!(!line.contains("Usage"), "{line}");
    }

    #[test]
    fn a_reloader_without_a_proxy_changes_nothing() {
        let loaded = crate::Config::load(["respool"]).unwrap();
        let reloader = Reloader::new(vec!["respool".into()], &loaded);
        assert!(matches!(reloader.reload(), Err(ReloadError::NotAttached)));
    }
}
