//! AUTH passthrough, respool's default when it has no client users of its
//! own (`--requirepass`, `--user`): a client's `AUTH [user] pass` or `HELLO
//! … AUTH user pass` is checked by the upstream itself, and from then on the
//! client's commands run as that identity, over its lane set.
//!
//! The check: the identity's lane set (opened if new) must get a
//! connection through the validation gate — whose login is the upstream's
//! verdict on a new identity — and then the client's AUTH itself goes to
//! the upstream over that set's lane, so the reply the client gets is
//! Redis's own, even for an identity whose lanes were validated long ago
//! and whose password has changed since. The client's earlier requests are
//! answered first, so nothing it sent before AUTH runs as the new identity,
//! nor anything after it as the old one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Client, Phase, Wait};
use crate::codec::Request;
use crate::command::{Command, Local, Route};
use crate::config::Secret;
use crate::error::{error_line, Error};
use crate::pool::endpoint::Identity;
use crate::pool::{LaneSet, LoginCheck};

/// The identity's lane set and Redis's reply to the client's AUTH over it;
/// or the reply that ends the login there (a refusal, a timeout).
pub(super) type LoginResult = Result<(Arc<LaneSet>, Bytes), Bytes>;
/// A login being checked.
pub(super) type LoginWait = Pin<Box<dyn Future<Output = LoginResult> + Send>>;

impl Client {
    /// Whether a client's AUTH is the upstream's to check.
    pub(super) fn passthrough(&self) -> bool {
        self.shared.config.identities.passthrough
    }

    /// Starts checking the login `req` asks for (an AUTH, or a HELLO with
    /// AUTH), parked until the upstream has said.
    pub(super) fn login(&mut self, req: Request, command: Command) {
        let (identity, ask) = match login_request(&req) {
            Ok(login) => login,
            Err(reply) => return self.output.push_ready(reply),
        };
        if let Some(session) = &mut self.session {
            if command.route != Route::Local(Local::Auth) {
                return self.output.push_ready(error_line(
                    "ERR",
                    "HELLO with AUTH cannot switch users inside a pinned session through respool; send AUTH on its own",
                ));
            }
            // Redis checks it on the session's connection, which then runs
            // the client's commands as the new user; the client's lanes
            // follow once the reply says so.
            let seq = self.output.next_seq();
            if session.send_login(&req, seq, identity) {
                self.output.open_slot();
            }
            return;
        }
        if self.output.shared_pending() > 0 {
            // The client's earlier requests run as the old identity first.
            return self.park(req, command, None);
        }
        let lanes = match self.shared.router.login(identity) {
            Ok(lanes) => lanes,
            Err(e) => return self.output.push_ready(e.to_resp()),
        };
        let protocol = match command.route {
            Route::Local(Local::Hello) => {
                super::local::hello_protocol(&req).unwrap_or(self.protocol)
            }
            _ => self.protocol,
        };
        let within = self.shared.process.live.retry.hold_timeout();
        let check = check_login(lanes, protocol, ask, within);
        self.park(req, command, Some(Wait::Login(Box::pin(check))));
    }

    /// The upstream has said: on `+OK` the client moves to the identity's
    /// lanes; otherwise it stays who it was, and gets Redis's refusal.
    pub(super) fn on_login(&mut self, result: LoginResult) {
        let Phase::Parked(parked) = std::mem::replace(&mut self.phase, Phase::Reading) else {
            return;
        };
        if parked.drain_after {
            self.phase = Phase::Draining;
        }
        let stats = &self.shared.stats;
        match result {
            Ok((lanes, reply)) if reply[..] == b"+OK\r\n"[..] => {
                stats.logins.add(1);
                self.switch_lanes(lanes);
                if parked.command.route == Route::Local(Local::Hello) {
                    // The HELLO goes on, its login done.
                    return self.hello_after_login(parked.req, parked.command);
                }
                self.output.push_ready(reply);
            }
            Ok((_, reply)) | Err(reply) => {
                stats.login_refusals.add(1);
                self.output.push_ready(reply);
            }
        }
    }

    /// A login on the pinned session succeeded: the client's shared
    /// requests, once the session ends, run as `identity` too.
    pub(super) fn logged_in_on_session(&mut self, identity: Identity) {
        self.shared.stats.logins.add(1);
        match self.shared.router.login(identity) {
            Ok(lanes) => self.switch_lanes(lanes),
            Err(e) => {
                // The session's connection runs as the new user, the lanes
                // cannot: end the client rather than serve it as two users.
                tracing::warn!(error = %e, "no lanes for the identity a client logged in as on its session; closing it");
                self.output.push_ready(e.to_resp());
                self.phase = Phase::Draining;
            }
        }
    }

    /// Moves the client to `lanes` (its earlier shared requests are all
    /// answered).
    pub(super) fn switch_lanes(&mut self, lanes: Arc<LaneSet>) {
        if !Arc::ptr_eq(&lanes, &self.lanes) {
            let user: Arc<str> = lanes.endpoint().identity.user().into();
            self.member.publish(|p| p.user = user);
            self.lane = lanes.lane(self.protocol);
            if self.cluster.is_some() {
                self.flush_run();
                self.run_target = super::routing::Target::Primary;
                let (identity, protocol) = (lanes.endpoint().identity.clone(), self.protocol);
                if let Some(cluster) = &mut self.cluster {
                    // Every primary's lanes of the new identity.
                    cluster.switch_identity(identity, protocol);
                }
            }
            self.lanes = lanes;
        }
    }
}

/// Waits for the identity's lane set to pass (or fail) the gate, then puts
/// the client's AUTH to the upstream over it.
async fn check_login(
    lanes: Arc<LaneSet>,
    protocol: u8,
    ask: Bytes,
    within: Duration,
) -> LoginResult {
    match lanes.health().wait_login(within).await {
        LoginCheck::Accepted => {
            let reply = lanes.ask(protocol, ask).await;
            Ok((lanes, reply))
        }
        LoginCheck::Refused(line) => Err(line),
        LoginCheck::TimedOut => Err(Error::LoginUnchecked {
            addr: lanes.addr().clone(),
            waited: within,
        }
        .to_resp()),
    }
}

/// The identity an AUTH or HELLO … AUTH logs in as, and the AUTH to put to
/// the upstream (the client's own bytes for an AUTH); Redis's error for a
/// malformed one.
fn login_request(req: &Request) -> Result<(Identity, Bytes), Bytes> {
    let is_auth = req.name().eq_ignore_ascii_case(b"AUTH");
    let (user, password) = if is_auth {
        super::local::auth_args(req)?
    } else {
        let hello = super::local::parse_hello(req)?;
        let (user, password) = hello
            .auth
            .ok_or_else(|| error_line("ERR", "syntax error"))?;
        (Some(user), password)
    };
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| super::local::wrongpass())
    };
    // `AUTH default pw` and `AUTH pw` are the same login.
    let username = match user {
        Some(user) if user != b"default" => Some(Arc::from(text(user)?)),
        _ => None,
    };
    let password = text(password)?;
    let ask = if is_auth {
        Bytes::copy_from_slice(req.raw())
    } else {
        let user = username.as_deref().unwrap_or("default");
        let auth = Request::from_args(&["AUTH", user, &password]);
        Bytes::copy_from_slice(auth.raw())
    };
    let identity = Identity {
        username,
        password: Some(Secret::new(&password)),
    };
    Ok((identity, ask))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(args: &[&str]) -> Request {
        Request::from_args(args)
    }

    #[test]
    fn auth_forms_name_one_identity_each() {
        let (plain, ask) = login_request(&req(&["AUTH", "pw"])).unwrap();
        assert_eq!(plain.username, None);
        assert_eq!(plain.password.as_ref().unwrap().expose(), "pw");
        assert_eq!(
            &ask[..],
            req(&["AUTH", "pw"]).raw(),
            "the client's own bytes"
        );
        let (default, _) = login_request(&req(&["AUTH", "default", "pw"])).unwrap();
        assert_eq!(default, plain, "AUTH default pw is AUTH pw");
        let (alice, _) = login_request(&req(&["auth", "alice", "pw"])).unwrap();
        assert_eq!(alice.username.as_deref(), Some("alice"));
        let (hello, ask) =
            login_request(&req(&["HELLO", "3", "AUTH", "alice", "pw", "SETNAME", "x"])).unwrap();
        assert_eq!(hello, alice);
        assert_eq!(&ask[..], req(&["AUTH", "alice", "pw"]).raw());
    }

    #[test]
    fn malformed_logins_get_redis_errors() {
        assert!(login_request(&req(&["AUTH"]))
            .unwrap_err()
            .starts_with(b"-ERR wrong number of arguments"));
        assert!(login_request(&req(&["AUTH", "a", "b", "c"]))
            .unwrap_err()
            .starts_with(b"-ERR syntax error"));
        assert!(login_request(&req(&["HELLO", "4", "AUTH", "a", "b"]))
            .unwrap_err()
            .starts_with(b"-NOPROTO"));
    }
}
