//! The admin console (`--admin-user`) and the slowlog (`--slowlog-*`).

use std::time::Duration;

use super::flags::AdminFlags;
use crate::client::auth::ClientAuth;

/// Who may run `RESPOOL …`, and what the slowlog keeps.
#[derive(Debug, Clone)]
pub(crate) struct AdminSettings {
    /// The client user (one of `--user`) whose connections may run the
    /// admin commands; `None`: nobody may.
    pub admin_user: Option<String>,
    /// Requests slower than this are recorded; `None`: the slowlog is off.
    pub slowlog_threshold: Option<Duration>,
    /// Entries kept.
    pub slowlog_max_len: usize,
    /// Keep the arguments (truncated) of slow requests.
    pub slowlog_args: bool,
}

impl AdminSettings {
    pub(super) fn validate(flags: AdminFlags, auth: &ClientAuth) -> Result<AdminSettings, String> {
        if let Some(user) = &flags.admin_user {
            // The admin logs in to respool itself: with AUTH passthrough,
            // who a client is would be the upstream's word, not respool's.
            if !auth.has_user(user) {
                return Err(format!(
                    "'--admin-user {user}' must name one of respool's own client users: add --user {user}:PASSWORD (or a line in --users-file)"
                ));
            }
        }
        Ok(AdminSettings {
            admin_user: flags.admin_user,
            slowlog_threshold: flags.slowlog_threshold.0,
            slowlog_max_len: flags.slowlog_max_len as usize,
            slowlog_args: flags.slowlog_args,
        })
    }
}
