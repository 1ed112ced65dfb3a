//! Upstream URLs: `redis://[[user]:password@]host[:port][/db]`, and
//! `rediss://` for TLS. Parsed by the `url` crate; user names and passwords
//! are percent-decoded by `percent-encoding`.
//!
//! A Redis on a Unix socket is named the way redis-rs and redis-py name it:
//! `unix:///path/redis.sock` or `redis+unix:///path/redis.sock`, with the
//! database and credentials as query options (`?db=2&user=alice&password=pw`;
//! redis-rs's `pass` is the same as `password`) or as userinfo
//! (`unix://alice:pw@/path/redis.sock`).

use std::sync::Arc;

use url::Url;

use super::Secret;

/// An upstream URL, taken apart.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamUrl {
    /// `host:port` (IPv6 hosts in brackets), as connected to and shown in
    /// messages; never with credentials.
    pub addr: Arc<str>,
    /// The host alone, without brackets: the name a TLS certificate must carry.
    pub host: String,
    /// ACL user name, if any.
    pub username: Option<Arc<str>>,
    /// Password, if any.
    pub password: Option<Secret>,
    /// Database index selected on every connection.
    pub db: u32,
    /// `rediss://`: connect with TLS.
    pub tls: bool,
}

/// The URL schemes of a Redis on a Unix socket.
const UNIX_SCHEMES: [&str; 2] = ["unix://", "redis+unix://"];

/// The socket file's path when an upstream address names a Unix socket:
/// a URL's path is absolute, and a `host:port` never starts with `/`.
pub(crate) fn unix_socket_path(addr: &str) -> Option<&str> {
    addr.starts_with('/').then_some(addr)
}

/// Redis's port, for URLs without one.
const DEFAULT_PORT: u16 = 6379;

impl UpstreamUrl {
    /// Parses an upstream URL. Error messages never repeat the URL: it may
    /// hold a password.
    pub fn parse(input: &str) -> Result<UpstreamUrl, String> {
        if let Some(rest) = UNIX_SCHEMES.iter().find_map(|s| strip_scheme(input, s)) {
            return UpstreamUrl::parse_unix(rest);
        }
        let url = Url::parse(input).map_err(|e| e.to_string())?;
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            _ => {
                return Err("must start with redis://, rediss://, unix:// or redis+unix://".into())
            }
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err("missing host".into()),
        };
        if host.is_empty() {
            return Err("missing host".into());
        }
        if authority(input).ends_with(':') {
            return Err(format!("missing port after '{host}:'"));
        }
        let port = url.port().unwrap_or(DEFAULT_PORT);
        let addr = match url.host() {
            Some(url::Host::Ipv6(_)) => format!("[{host}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            db => db
                .parse::<u32>()
                .map_err(|_| format!("database '{db}' is not a number"))?,
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err("options after '?' or '#' are not supported; use flags".into());
        }
        let user = decode(url.username(), "user name")?;
        let password = url
            .password()
            .map(|p| decode(p, "password"))
            .transpose()?
            .flatten();
        let (username, password) = match (user, password) {
            // `redis://name@host` conventionally means the name is the password.
            (Some(name), None) => (None, Some(name)),
            other => other,
        };
        Ok(UpstreamUrl {
            addr: addr.into(),
            host,
            username: username.map(Into::into),
            password: password.map(|p| Secret::new(&p)),
            db,
            tls,
        })
    }
}

impl UpstreamUrl {
    /// Parses what follows `unix://`: `[user[:password]@]/path[?options]`.
    fn parse_unix(rest: &str) -> Result<UpstreamUrl, String> {
        if rest.contains('#') {
            return Err("a '#' fragment is not supported".into());
        }
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (userinfo, path) = match location.find('/') {
            Some(slash) => (&location[..slash], &location[slash..]),
            None => (location, ""),
        };
        // A host before the path (`unix://host/path`) means nothing here.
        let userinfo = match userinfo.rsplit_once('@') {
            Some((userinfo, "")) => Some(userinfo),
            None if userinfo.is_empty() => None,
            _ => return Err("write a Unix socket as unix:///absolute/path/redis.sock".into()),
        };
        if path.len() < 2 {
            return Err("missing the socket's path: unix:///absolute/path/redis.sock".into());
        }
        let path = percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .map_err(|_| "the socket path is not valid UTF-8 once percent-decoded")?;
        let (mut username, mut password) = match userinfo.map(|u| u.split_once(':')) {
            None => (None, None),
            Some(None) => (decode(userinfo.unwrap_or_default(), "user name")?, None),
            Some(Some((user, pass))) => (decode(user, "user name")?, decode(pass, "password")?),
        };
        if let (Some(name), None) = (&username, &password) {
            // As with redis://name@host: a lone name is the password.
            password = Some(name.clone());
            username = None;
        }
        let mut db = 0;
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "db" => {
                    db = value
                        .parse::<u32>()
                        .map_err(|_| format!("database '{value}' is not a number"))?
                }
                "user" | "username" if !value.is_empty() => username = Some(value.into()),
                "pass" | "password" if !value.is_empty() => password = Some(value.into()),
                // Never echo the option's value: it may be a password.
                other => {
                    return Err(format!(
                        "unknown option '{other}' in a unix:// URL (known: db, user, password); use flags for the rest"
                    ))
                }
            }
        }
        Ok(UpstreamUrl {
            addr: path.into(),
            host: String::new(),
            username: username.map(Into::into),
            password: password.map(|p| Secret::new(&p)),
            db,
            tls: false,
        })
    }
}

/// What follows `scheme` (case-insensitive) in `input`, if it starts so.
fn strip_scheme<'a>(input: &'a str, scheme: &str) -> Option<&'a str> {
    let head = input.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| &input[scheme.len()..])
}

/// `host:port` as written in the URL (the `url` crate forgets an empty port).
fn authority(input: &str) -> &str {
    let rest = input.split_once("://").map_or(input, |(_, rest)| rest);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let userinfo_and_host = &rest[..end];
    userinfo_and_host
        .rsplit_once('@')
        .map_or(userinfo_and_host, |(_, host)| host)
}

/// A percent-decoded, non-empty user name or password.
fn decode(part: &str, what: &str) -> Result<Option<String>, String> {
    if part.is_empty() {
        return Ok(None);
    }
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|s| Some(s.into_owned()))
        .map_err(|_| format!("the {what} is not valid UTF-8 once percent-decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let u = UpstreamUrl::parse("redis://127.0.0.1:6379").unwrap();
        assert_eq!(&*u.addr, "127.0.0.1:6379");
        assert_eq!(u.db, 0);
        assert!(u.password.is_none());

        let u = UpstreamUrl::parse("redis://alice:s%40cret@localhost:7000/3").unwrap();
        assert_eq!(&*u.addr, "localhost:7000");
        assert_eq!(u.username.as_deref(), Some("alice"));
        assert_eq!(u.password.as_ref().unwrap().expose(), "s@cret");
        assert_eq!(u.db, 3);

        let u = UpstreamUrl::parse("redis://:pw@host").unwrap();
        assert_eq!(&*u.addr, "host:6379");
        assert!(u.username.is_none());
        assert_eq!(u.password.unwrap().expose(), "pw");

        let u = UpstreamUrl::parse("redis://sekret@host/").unwrap();
        assert!(u.username.is_none());
        assert_eq!(u.password.unwrap().expose(), "sekret");

        for bad in [
            "http://x",
            "redis://127.0.0.1:",
            "redis://127.0.0.1:99999",
            "redis://:6379",
            "redis://h:1/x",
            "redis://h:1/0?protocol=3",
            "127.0.0.1:6379",
        ] {
            assert!(UpstreamUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_with_any_characters_decode_without_panicking() {
        // Not valid percent-escapes: kept as they are.
        let u = UpstreamUrl::parse("redis://:%aé@host").unwrap();
        assert_eq!(u.password.unwrap().expose(), "%aé");
        let u = UpstreamUrl::parse("redis://u:%E2%9C%93%@host").unwrap();
        assert_eq!(u.password.unwrap().expose(), "✓%");
        // Decoded bytes that are not UTF-8 are refused, not mangled.
        let e = UpstreamUrl::parse("redis://u:%ff@host").unwrap_err();
        assert!(!e.contains("%ff"), "{e}");
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets_in_the_address_only() {
        let u = UpstreamUrl::parse("rediss://:pw@[::1]:6390/2").unwrap();
        assert!(u.tls);
        assert_eq!(&*u.addr, "[::1]:6390");
        assert_eq!(u.host, "::1");
        assert_eq!(u.db, 2);
        assert_eq!(
            UpstreamUrl::parse("rediss://cache.example").unwrap().host,
            "cache.example"
        );
        assert!(!UpstreamUrl::parse("redis://h:1").unwrap().tls);
    }

    #[test]
    fn unix_socket_urls_in_the_forms_client_libraries_accept() {
        let u = UpstreamUrl::parse("unix:///run/redis/redis.sock").unwrap();
        assert_eq!(&*u.addr, "/run/redis/redis.sock");
        assert_eq!(unix_socket_path(&u.addr), Some("/run/redis/redis.sock"));
        assert!(!u.tls);
        assert_eq!(u.db, 0);
        assert!(u.username.is_none() && u.password.is_none());

        // redis-rs
        let u =
            UpstreamUrl::parse("redis+unix:///tmp/r.sock?db=3&user=alice&pass=s%40cret").unwrap();
        assert_eq!(&*u.addr, "/tmp/r.sock");
        assert_eq!(u.db, 3);
        assert_eq!(u.username.as_deref(), Some("alice"));
        assert_eq!(u.password.unwrap().expose(), "s@cret");

        // redis-py
        let u = UpstreamUrl::parse("unix://alice:pw@/tmp/r.sock?db=1").unwrap();
        assert_eq!(u.username.as_deref(), Some("alice"));
        assert_eq!(u.password.unwrap().expose(), "pw");
        assert_eq!(u.db, 1);
        let u = UpstreamUrl::parse("unix:///tmp/r.sock?password=pw").unwrap();
        assert!(u.username.is_none());
        assert_eq!(u.password.unwrap().expose(), "pw");
        let u = UpstreamUrl::parse("UNIX://sekret@/tmp/my%20redis.sock").unwrap();
        assert_eq!(&*u.addr, "/tmp/my redis.sock");
        assert_eq!(u.password.unwrap().expose(), "sekret");

        for bad in [
            "unix://",
            "unix:///",
            "unix://host/tmp/r.sock",
            "unix://relative.sock",
            "unix:///tmp/r.sock?db=x",
            "unix:///tmp/r.sock?protocol=3",
            "unix:///tmp/r.sock#x",
        ] {
            assert!(UpstreamUrl::parse(bad).is_err(), "{bad}");
        }
        let e = UpstreamUrl::parse("unix:///tmp/r.sock?secret=hunter2").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(unix_socket_path("127.0.0.1:6379"), None);
        assert_eq!(unix_socket_path("[::1]:6379"), None);
    }

    #[test]
    fn secrets_never_print() {
        let u = UpstreamUrl::parse("redis://alice:hunter2@localhost:7000").unwrap();
        let shown = format!("{u:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
        let e = UpstreamUrl::parse("redis://alice:hunter2@localhost:7000/x").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
