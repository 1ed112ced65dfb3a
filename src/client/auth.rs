//! Client authentication to respool itself (`--requirepass`, `--user`,
//! `--users-file`): AUTH and HELLO … AUTH answer exactly as Redis does, and
//! passwords are compared in constant time.

use std::collections::HashMap;

use crate::config::Secret;

/// Who may connect, and with which password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClientAuth {
    /// The `default` user's password (`--requirepass`).
    default: Option<Secret>,
    /// Named users (`--user name:password`).
    users: HashMap<String, Secret>,
}

/// The outcome of an AUTH attempt, as Redis words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthOutcome {
    /// `+OK`.
    Ok,
    /// `-WRONGPASS invalid username-password pair or user is disabled.`
    WrongPass,
    /// `AUTH <password>` while the default user has no password.
    NoPasswordConfigured,
}

impl ClientAuth {
    /// Builds the user table. `users` are `name:password` entries.
    pub fn new(requirepass: Option<&str>, users: &[String]) -> Result<ClientAuth, String> {
        let mut table = HashMap::new();
        for entry in users {
            let (name, password) = entry
                .split_once(':')
                .ok_or_else(|| "a user must be given as name:password".to_string())?;
            if name.is_empty() || password.is_empty() {
                return Err("a user needs a non-empty name and password (name:password)".into());
            }
            if name == "default" {
                return Err("set the default user's password with --requirepass".into());
            }
            table.insert(name.to_string(), Secret::new(password));
        }
        Ok(ClientAuth {
            default: requirepass.filter(|p| !p.is_empty()).map(Secret::new),
            users: table,
        })
    }

    /// True when clients must authenticate before anything else: a default
    /// password is set, or named users exist (the default user is then off).
    pub fn required(&self) -> bool {
        self.default.is_some() || !self.users.is_empty()
    }

    /// Whether `name` is one of the named users (`--user`).
    pub fn has_user(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// The named users' names, sorted (never their passwords).
    pub fn user_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.users.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether the `default` user has a password (`--requirepass`).
    pub fn has_default_password(&self) -> bool {
        self.default.is_some()
    }

    /// Checks `AUTH [user] password`.
    pub fn check(&self, user: Option<&[u8]>, password: &[u8]) -> AuthOutcome {
        let expected = match user {
            None | Some(b"default") => match &self.default {
                Some(p) => p,
                None if user.is_none() => return AuthOutcome::NoPasswordConfigured,
                // Like Redis's `default` user with `nopass`: any password works,
                // unless named users exist (the default user is then off).
                None if self.users.is_empty() => return AuthOutcome::Ok,
                None => return AuthOutcome::WrongPass,
            },
            Some(name) => match std::str::from_utf8(name)
                .ok()
                .and_then(|n| self.users.get(n))
            {
                Some(p) => p,
                None => {
                    // Spend the same time as a real comparison.
                    let _ = Secret::new("").matches(password);
                    return AuthOutcome::WrongPass;
                }
            },
        };
        if expected.matches(password) {
            AuthOutcome::Ok
        } else {
            AuthOutcome::WrongPass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_user_and_named_users() {
        let auth = ClientAuth::new(Some("s3cret"), &["alice:wonder".into()]).unwrap();
        assert!(auth.required());
        assert_eq!(auth.check(None, b"s3cret"), AuthOutcome::Ok);
        assert_eq!(auth.check(Some(b"default"), b"s3cret"), AuthOutcome::Ok);
        assert_eq!(auth.check(None, b"s3cre"), AuthOutcome::WrongPass);
        assert_eq!(auth.check(Some(b"alice"), b"wonder"), AuthOutcome::Ok);
        assert_eq!(
            auth.check(Some(b"alice"), b"s3cret"),
            AuthOutcome::WrongPass
        );
        assert_eq!(auth.check(Some(b"bob"), b"wonder"), AuthOutcome::WrongPass);
    }

    #[test]
    fn without_passwords_auth_is_not_required() {
        let auth = ClientAuth::new(None, &[]).unwrap();
        assert!(!auth.required());
        assert_eq!(auth.check(None, b"x"), AuthOutcome::NoPasswordConfigured);
        assert_eq!(auth.check(Some(b"default"), b"x"), AuthOutcome::Ok);
        let users_only = ClientAuth::new(None, &["alice:pw".into()]).unwrap();
        assert_eq!(
            users_only.check(Some(b"default"), b"x"),
            AuthOutcome::WrongPass
        );
    }

    #[test]
    fn bad_user_entries_are_refused() {
        assert!(ClientAuth::new(None, &["nopassword".into()]).is_err());
        assert!(ClientAuth::new(None, &[":pw".into()]).is_err());
        assert!(ClientAuth::new(None, &["default:pw".into()]).is_err());
    }

    #[test]
    fn debug_output_hides_passwords() {
        let auth = ClientAuth::new(Some("s3cret"), &["alice:wonder".into()]).unwrap();
        let shown = format!("{auth:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("wonder"),
            "{shown}"
        );
    }
}
