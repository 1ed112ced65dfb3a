//! What a validated upstream connection is made for: an [`Endpoint`] is a
//! node (address and TLS), an identity (the user it authenticates as) and a
//! database. Every lane set serves one endpoint; two clients share lanes
//! exactly when they need the same endpoint.
//!
//! The RESP protocol is not part of the endpoint: a lane set keeps shared
//! lanes per protocol, and a pinned connection switches protocol for the
//! session it serves, so `--max-pinned` stays one budget per endpoint.

use std::fmt;
use std::sync::Arc;

use crate::config::Secret;
use crate::tls::UpstreamTls;

/// An upstream node.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// `host:port`, as connected to and shown in messages.
    pub addr: Arc<str>,
    /// TLS (`rediss://`), or plain TCP.
    pub tls: Option<UpstreamTls>,
}

/// Who an upstream connection authenticates as: no one (the `default` user
/// without AUTH), a password (the `default` user), or a user and password.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    /// ACL user name; `None` is Redis's `default` user.
    pub username: Option<Arc<str>>,
    /// Password; `None` sends no AUTH at all.
    pub password: Option<Secret>,
}

impl Identity {
    /// The user name, as logs and `INFO` show it.
    pub fn user(&self) -> &str {
        self.username.as_deref().unwrap_or("default")
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("user", &self.user())
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Everything a validated connection is made for.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub node: Node,
    pub identity: Identity,
    /// Database selected on every connection.
    pub db: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_compare_by_user_and_password_and_never_print_it() {
        let alice = |pw: &str| Identity {
            username: Some("alice".into()),
            password: Some(Secret::new(pw)),
        };
        assert_eq!(alice("a"), alice("a"));
        assert_ne!(alice("a"), alice("b"));
        assert_ne!(alice("a"), Identity::default());
        let shown = format!("{:?}", alice("hunter2"));
        assert!(
            !shown.contains("hunter2") && shown.contains("alice"),
            "{shown}"
        );
        assert_eq!(Identity::default().user(), "default");
    }
}
