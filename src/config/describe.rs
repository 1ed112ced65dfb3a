//! The effective configuration as `RESPOOL CONFIG` shows it: one entry per
//! flag, named as the flag is, with every secret masked — a password is
//! shown only as set or not, a user only by name.

use std::time::Duration;

use super::Config;

/// How a set secret is shown.
const MASKED: &str = "(set)";

impl Config {
    /// `--listen` as given: the TCP address and the Unix socket, comma
    /// separated.
    fn listen_text(&self) -> String {
        let tcp = self.listener.tcp.map(|a| a.to_string());
        let unix = self
            .listener
            .unix
            .as_ref()
            .map(|u| format!("unix:{}", u.path.display()));
        tcp.into_iter().chain(unix).collect::<Vec<_>>().join(",")
    }

    /// The effective settings as `(flag name, value)` pairs, secrets masked.
    pub(crate) fn describe(&self) -> Vec<(&'static str, String)> {
        let dur = |d: Duration| format!("{d:?}");
        let opt_dur = |d: Option<Duration>| d.map_or_else(|| "0s".to_string(), dur);
        let opt_size =
            |s: Option<usize>| s.map_or_else(|| "0 (unlimited)".to_string(), |s| s.to_string());
        let on_off = |b: bool| if b { "on" } else { "off" }.to_string();
        let secret = |set: bool| if set { MASKED } else { "(not set)" }.to_string();
        let upstream = &self.upstream;
        let scheme = if upstream.node.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let user = upstream
            .identity
            .username
            .as_deref()
            .map_or_else(String::new, |u| format!("{u}@"));
        let users = self.clients.auth.user_names().join(",");
        let topology = &self.topology;
        let admin = &self.admin;
        vec![
            ("listen", self.listen_text()),
            ("threads", self.listener.threads.to_string()),
            ("event-loops", self.event_loops().to_string()),
            ("max-clients", self.listener.max_clients.to_string()),
            ("shutdown-timeout", dur(self.listener.shutdown_timeout)),
            ("tls", on_off(self.listener.tls.is_some())),
            // The URL without its password.
            (
                "upstream",
                format!("{scheme}://{user}{}/{}", upstream.node.addr(), upstream.db),
            ),
            (
                "upstream-password",
                secret(upstream.identity.password.is_some()),
            ),
            (
                "validate",
                format!("{:?}", self.pool.validate).to_lowercase(),
            ),
            ("probe-prefix", self.pool.probe_prefix.clone()),
            ("require-upstream", on_off(self.require_upstream)),
            ("max-connections", self.pool.max_connections.to_string()),
            ("max-pinned", self.pool.max_pinned.to_string()),
            ("min-idle", self.pool.min_idle.to_string()),
            ("connect-timeout", dur(self.pool.connect_timeout)),
            ("checkout-timeout", dur(self.pool.checkout_timeout)),
            (
                "health-check-interval",
                opt_dur(self.pool.health_check_interval),
            ),
            ("keepalive", opt_dur(self.pool.keepalive)),
            ("batch-writes", on_off(self.pool.batch_writes)),
            ("read-buffer-size", self.pool.read_buffer_size.to_string()),
            ("timeout", dur(self.retry.timeout)),
            ("hold-timeout", dur(self.retry.hold_timeout)),
            ("retries", self.retry.retries.to_string()),
            ("backoff-base", dur(self.retry.backoff.base)),
            ("backoff-cap", dur(self.retry.backoff.cap)),
            ("max-bulk-length", self.clients.max_bulk_length.to_string()),
            (
                "max-pending-per-client",
                self.clients.max_pending.to_string(),
            ),
            ("client-output-limit", opt_size(self.clients.output_limit)),
            ("max-reply-memory", opt_size(self.clients.max_reply_memory)),
            ("client-idle-timeout", opt_dur(self.clients.idle_timeout)),
            (
                "request-read-timeout",
                opt_dur(self.clients.request_read_timeout),
            ),
            (
                "requirepass",
                secret(self.clients.auth.has_default_password()),
            ),
            // Names only: the passwords stay where they were given.
            ("user", users),
            ("auth-passthrough", on_off(self.identities.passthrough)),
            ("max-identities", self.identities.max.to_string()),
            ("identity-idle-timeout", dur(self.identities.idle_timeout)),
            ("deny-command", self.clients.deny.names().join(",")),
            (
                "sentinel",
                topology
                    .sentinel
                    .as_ref()
                    .map_or_else(String::new, |s| s.sentinels.join(",")),
            ),
            (
                "sentinel-master",
                topology
                    .sentinel
                    .as_ref()
                    .map_or_else(String::new, |s| s.master.to_string()),
            ),
            (
                "sentinel-password",
                secret(
                    topology
                        .sentinel
                        .as_ref()
                        .is_some_and(|s| s.identity.password.is_some()),
                ),
            ),
            (
                "read-from",
                format!("{:?}", topology.replicas.read_from).to_lowercase(),
            ),
            ("max-replica-lag", dur(topology.replicas.max_lag)),
            (
                "read-your-writes",
                on_off(topology.replicas.read_your_writes),
            ),
            (
                "log-format",
                format!("{:?}", self.log.format).to_lowercase(),
            ),
            ("log-level", self.log.level.clone()),
            ("admin-user", admin.admin_user.clone().unwrap_or_default()),
            (
                "slowlog-threshold",
                admin.slowlog_threshold.map_or_else(|| "off".into(), dur),
            ),
            ("slowlog-max-len", admin.slowlog_max_len.to_string()),
            ("slowlog-args", on_off(admin.slowlog_args)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        let config = Config::parse_from_args([
            "respool",
            "--upstream",
            "redis://app:upstream-pw@127.0.0.1:6379/2",
            "--user",
            "alice:alice-pw",
            "--user",
            "ops:ops-pw",
            "--admin-user",
            "ops",
        ])
        .unwrap();
        let shown = format!("{:?}", config.describe());
        for secret in ["upstream-pw", "alice-pw", "ops-pw"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        let get = |name: &str| {
            config
                .describe()
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v)
                .unwrap()
        };
        assert_eq!(get("upstream"), "redis://app@127.0.0.1:6379/2");
        assert_eq!(get("upstream-password"), "(set)");
        assert_eq!(get("user"), "alice,ops");
        assert_eq!(get("admin-user"), "ops");
        assert_eq!(get("slowlog-threshold"), "10ms");
    }

    #[test]
    fn the_admin_user_must_be_one_of_respools_users() {
        let err = Config::parse_from_args(["respool", "--admin-user", "ops"]).unwrap_err();
        assert!(err.to_string().contains("--user ops:PASSWORD"), "{err}");
        let off = Config::parse_from_args(["respool", "--slowlog-threshold", "off"]).unwrap();
        assert_eq!(off.admin.slowlog_threshold, None);
    }
}
