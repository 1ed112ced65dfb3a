//! A transaction in front of a Redis Cluster (`--cluster`), from MULTI
//! until the node it runs on is known.
//!
//! Redis runs a transaction on one node, and only with keys of one slot.
//! Which node is only known at its first keyed command, so MULTI without
//! a session (no WATCH before it) is answered `+OK` by respool, and the
//! keyless commands after it are answered `+QUEUED` and held once checked
//! as Redis checks them when queueing (known command, argument count).
//! The first keyed command opens a session on its key's primary, which is
//! sent MULTI and the held commands (their replies swallowed: the client
//! had them) before that command. An EXEC before any key runs the held
//! commands on the client's own primary, or answers `*0` for an empty
//! transaction; DISCARD forgets them.
//!
//! Inside the session, a command whose keys are on another primary is
//! refused with `-CROSSSLOT` and the transaction aborted (EXEC answers
//! EXECABORT, as for any command refused while queueing): nothing of it
//! ever runs on one node and not the other. A slot that moves mid-way
//! gets the node's own `-MOVED` for a command queued after the move, and
//! the node discards the transaction at EXEC (answered EXECABORT: see
//! the session's `exec_redirected`).

use bytes::Bytes;

use super::cluster::{Routed, Split};
use super::local::refused_in_multi;
use super::Client;
use crate::codec::Request;
use crate::command::{Command, Local, Route, Stateful};
use crate::error::error_line;

/// A MULTI answered by respool whose node no keyed command has named yet.
#[derive(Default)]
pub(super) struct OpenTransaction {
    /// Keyless commands answered `+QUEUED`, for the node once it is known
    /// (with the state each changes there: UNWATCH).
    held: Vec<(Request, Option<Stateful>)>,
    /// A command was refused while queueing: EXEC answers EXECABORT.
    aborted: bool,
}

impl OpenTransaction {
    /// The held commands, in the order the client sent them.
    pub(super) fn held(&self) -> &[(Request, Option<Stateful>)] {
        &self.held
    }

    /// Whether a command was refused while queueing.
    pub(super) fn aborted(&self) -> bool {
        self.aborted
    }
}

fn cross_slot_in_transaction() -> Bytes {
    error_line(
        "CROSSSLOT",
        "Keys in request don't hash to the same slot as the transaction's (respool runs a transaction on the primary of its first key)",
    )
}

impl Client {
    /// MULTI without a session in cluster mode: the transaction opens here.
    pub(super) fn open_transaction(&mut self) {
        self.cluster_tx = Some(OpenTransaction::default());
        self.publish_session();
        self.output.push_ready(Bytes::from_static(b"+OK\r\n"));
    }

    /// A request while a transaction waits for its first key (see the
    /// module docs).
    pub(super) fn queue_in_transaction(&mut self, req: Request, command: Command) {
        let reply = match command.route {
            Route::Dedicated(Stateful::Multi) => {
                // Redis answers it without aborting the transaction.
                return self
                    .output
                    .push_ready(error_line("ERR", "MULTI calls can not be nested"));
            }
            Route::Dedicated(Stateful::Watch) => {
                return self
                    .output
                    .push_ready(error_line("ERR", "WATCH inside MULTI is not allowed"));
            }
            Route::Dedicated(Stateful::Discard) => {
                self.end_open_transaction();
                return self.output.push_ready(Bytes::from_static(b"+OK\r\n"));
            }
            Route::Dedicated(Stateful::Exec) => return self.exec_without_key(req, command),
            Route::Local(Local::Reset) => {
                self.end_open_transaction();
                return self.local(Local::Reset, req, command);
            }
            Route::Local(Local::Quit) => return self.local(Local::Quit, req, command),
            Route::Local(_) => refused_in_multi(
                &String::from_utf8_lossy(req.name()).to_ascii_uppercase(),
                "respool answers it itself",
            ),
            Route::Dedicated(
                Stateful::Subscribe(_)
                | Stateful::Unsubscribe(_)
                | Stateful::ClientReply
                | Stateful::Monitor,
            ) => super::local::changes_replies_in_exec(&req),
            Route::Denied => {
                self.abort_open_transaction();
                return self.deny(&req);
            }
            Route::Dedicated(Stateful::Select | Stateful::ConnectionFlag) => {
                self.refused_in_cluster(&req)
            }
            Route::Urgent => refused_in_multi(
                &String::from_utf8_lossy(req.name()).to_ascii_uppercase(),
                "in cluster mode it goes to every primary, and a transaction runs on one",
            ),
            Route::Attack => return self.drop_attacker(),
            Route::Shared | Route::Dedicated(Stateful::Blocking | Stateful::Unwatch) => {
                match self.queue_keyless(req, command) {
                    Some(reply) => reply,
                    None => return,
                }
            }
        };
        if let Some(tx) = &mut self.cluster_tx {
            tx.aborted |= reply.first() == Some(&b'-');
        }
        self.output.push_ready(reply);
    }

    /// The open transaction is over (DISCARD, RESET, a failed EXEC).
    pub(super) fn end_open_transaction(&mut self) {
        self.cluster_tx = None;
        self.publish_session();
    }

    /// A command of the open transaction was refused: its EXEC answers
    /// EXECABORT.
    pub(super) fn abort_open_transaction(&mut self) {
        if let Some(tx) = &mut self.cluster_tx {
            tx.aborted = true;
        }
    }

    /// A shared (or blocking) command in the open transaction: its node
    /// opens the session, or it is held; `None` once it is on its way,
    /// else the client's reply.
    fn queue_keyless(&mut self, req: Request, command: Command) -> Option<Bytes> {
        let cluster = self.cluster.as_ref()?;
        match cluster.place(req.view(), crate::ops::commands::command_id(req.name())) {
            Routed::Node(_) => {
                // The first key: a session on its node (after the client's
                // earlier requests are answered), then MULTI, the held
                // commands and this one on it.
                self.park(req, command, None);
                None
            }
            Routed::AnyNode => {
                if let Some(why) = cluster.refusal(req.view()) {
                    return Some(error_line("ERR", &why));
                }
                let tx = self.cluster_tx.as_mut()?;
                if tx.held.len() >= self.settings.max_pending {
                    return Some(error_line(
                        "ERR",
                        &format!("respool holds at most {} keyless commands of a transaction before its first key (--max-pending-per-client); send a keyed command earlier", self.settings.max_pending),
                    ));
                }
                let stateful = match command.route {
                    Route::Dedicated(state) => Some(state),
                    _ => None,
                };
                tx.held.push((req, stateful));
                Some(Bytes::from_static(b"+QUEUED\r\n"))
            }
            Routed::Refused(reply) => Some(reply),
            Routed::Split(Split::Mget | Split::Mset | Split::Sum) => {
                Some(cross_slot_in_transaction())
            }
            Routed::Split(_) | Routed::Myself(_) => Some(refused_in_multi(
                &String::from_utf8_lossy(req.name()).to_ascii_uppercase(),
                "in cluster mode it goes to every primary, and a transaction runs on one",
            )),
        }
    }

    /// EXEC before any key: EXECABORT if a command was refused, `*0` if
    /// nothing was queued, else the held commands run on the client's own
    /// primary.
    fn exec_without_key(&mut self, req: Request, command: Command) {
        let Some(tx) = self
            .cluster_tx
            .take_if(|tx| tx.aborted || tx.held.is_empty())
        else {
            // A session on the client's own primary; EXEC goes after them.
            return self.park(req, command, None);
        };
        self.publish_session();
        let reply = if tx.aborted {
            error_line(
                "EXECABORT",
                "Transaction discarded because of previous errors.",
            )
        } else {
            Bytes::from_static(b"*0\r\n")
        };
        self.output.push_ready(reply);
    }

    /// In cluster mode with a session: the refusal of a request whose keys
    /// are on another primary than the session's (which a transaction
    /// open on the session then fails with at EXEC), or `None` to send it.
    pub(super) fn off_session_node(&mut self, req: &Request) -> Option<Bytes> {
        // The map the session's node was chosen by may have changed since
        // (a moved shard channel's session is on the slot's new owner).
        self.sync_cluster();
        let (cluster, session) = (self.cluster.as_ref()?, self.session.as_mut()?);
        let reply = match cluster.place(req.view(), crate::ops::commands::command_id(req.name())) {
            Routed::Node(i) if cluster.is_node(i, session.origin()) => return None,
            Routed::Node(_) | Routed::Split(Split::Mget | Split::Mset | Split::Sum) => {
                if session.abort_transaction_on_exec() {
                    cross_slot_in_transaction()
                } else {
                    error_line(
                        "CROSSSLOT",
                        "Keys in request are on another primary than the one this connection is pinned to (by WATCH, a blocking command or subscriptions); send it once that has ended",
                    )
                }
            }
            Routed::Split(_) => {
                session.abort_transaction_on_exec();
                error_line(
                    "ERR",
                    &format!("{} goes to every primary in cluster mode; send it after EXEC, DISCARD or UNWATCH, not on a connection pinned to one node", String::from_utf8_lossy(req.name()).to_ascii_uppercase()),
                )
            }
            Routed::Refused(reply) => {
                session.abort_transaction_on_exec();
                reply
            }
            Routed::AnyNode | Routed::Myself(_) => return None,
        };
        Some(reply)
    }
}
