//! A real Redis Cluster: six `redis-server` processes (`cluster-enabled
//! yes`, free loopback ports, their own temp dirs, a short
//! `cluster-node-timeout`), joined by `redis-cli --cluster create …
//! --cluster-replicas 1` into three primaries with a replica each, and
//! waited on until every node says `cluster_state:ok` and all of them see
//! the same slots. Every process is killed when the cluster is dropped.
//!
//! `Cluster::start_tls` forms the same cluster over TLS only: every node
//! listens with `tls-port` and `port 0`, and talks TLS to the others
//! (`tls-cluster`, `tls-replication`), with a test PKI's certificates.

use std::process::Command;
use std::time::Duration;

use super::redis::{free_port, RedisServer, RedisServerBuilder};
use super::tls::Pki;
use super::wait;
use super::Reply;

/// `cluster-node-timeout`: short, so that a killed primary is failed over
/// within seconds.
pub const NODE_TIMEOUT_MS: u32 = 2000;
/// How long forming the cluster, or agreeing after a change, may take on a
/// loaded machine.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// See the module docs.
pub struct Cluster {
    /// Every node, primaries and replicas, in start order.
    pub nodes: Vec<RedisServer>,
}

impl Cluster {
    /// Three primaries with a replica each, formed and agreeing.
    pub fn start() -> Cluster {
        Cluster::start_with(3, 1)
    }

    /// `primaries` primaries with `replicas` replicas each.
    pub fn start_with(primaries: usize, replicas: usize) -> Cluster {
        Cluster::form(primaries, replicas, RedisServer::builder, &[])
    }

    /// Three primaries with a replica each, listening and talking to each
    /// other with TLS only (`pki`'s certificates; clients must present a
    /// certificate of its CA).
    pub fn start_tls(pki: &Pki) -> Cluster {
        let (ca, cert, key) = (
            pki.arg("ca.pem"),
            pki.arg("client.pem"),
            pki.arg("client.key"),
        );
        let cli_tls = ["--tls", "--cacert", &ca, "--cert", &cert, "--key", &key];
        let node = || {
            RedisServer::builder()
                .tls_only(pki)
                .arg("tls-cluster", "yes")
                .arg("tls-replication", "yes")
        };
        Cluster::form(3, 1, node, &cli_tls)
    }

    /// Starts the nodes `node` builds, joins them with `redis-cli [cli_tls]
    /// --cluster create`, and waits until they agree.
    fn form(
        primaries: usize,
        replicas: usize,
        node: impl Fn() -> RedisServerBuilder,
        cli_tls: &[&str],
    ) -> Cluster {
        let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas))
            .map(|_| cluster_node(node(), free_port()).start())
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new("redis-cli")
            .args(cli_tls)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes")
            .output()
            .unwrap_or_else(|e| {
                panic!("running redis-cli --cluster create: {e} (apt-get install -y redis-tools)")
            });
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Cluster { nodes };
        cluster.wait_agree(primaries);
        // A replica that never synced refuses to fail over ("disconnected
        // from master for longer than allowed").
        wait::until(
            "every replica to be in sync with its primary",
            FORM_TIMEOUT,
            || {
                cluster.nodes.iter().all(|n| {
                    let info = text(&n.command(&[b"INFO", b"replication"]));
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
            },
        );
        cluster
    }

    /// Starts one more node and joins it (`CLUSTER MEET`) as a primary
    /// with no slot yet; returns its port once every node knows it.
    pub fn add_primary(&mut self) -> u16 {
        let bus = free_port();
        let node = cluster_node(RedisServer::builder(), bus).start();
        let port = node.port();
        let (port_s, bus_s) = (port.to_string(), bus.to_string());
        expect_ok(
            self.any(),
            &[
                b"CLUSTER",
                b"MEET",
                b"127.0.0.1",
                port_s.as_bytes(),
                bus_s.as_bytes(),
            ],
        );
        let id = node_id(&node);
        self.nodes.push(node);
        wait::until("every node to know the new primary", FORM_TIMEOUT, || {
            self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let nodes = text(&n.command(&[b"CLUSTER", b"NODES"]));
                let known = nodes.lines().filter(|l| !l.contains("handshake")).count();
                nodes.contains(&id)
                    && known == self.nodes.len()
                    && text(&n.command(&[b"CLUSTER", b"INFO"])).contains("cluster_state:ok")
            })
        });
        port
    }

    /// Stops the primary on `port`, which must serve no slot, and has every
    /// other node forget it (`CLUSTER FORGET`).
    pub fn remove_primary(&self, port: u16) {
        let node = self.node(port);
        assert!(
            !slot_ranges(self.any()).iter().any(|(_, _, p)| *p == port),
            ":{port} still serves slots"
        );
        let id = node_id(node);
        node.stop();
        for other in self.nodes.iter().filter(|n| n.is_running()) {
            expect_ok(other, &[b"CLUSTER", b"FORGET", id.as_bytes()]);
        }
        wait::until("every node to forget the primary", FORM_TIMEOUT, || {
            self.nodes
                .iter()
                .filter(|n| n.is_running())
                .all(|n| !text(&n.command(&[b"CLUSTER", b"NODES"])).contains(&id))
        });
    }

    /// Waits until every running node says `cluster_state:ok`, knows
    /// `primaries` primaries, and all of them map every slot alike.
    pub fn wait_agree(&self, primaries: usize) {
        wait::until(
            "every cluster node to say cluster_state:ok and agree on the slots",
            FORM_TIMEOUT,
            || {
                let running: Vec<&RedisServer> =
                    self.nodes.iter().filter(|n| n.is_running()).collect();
                let ok = running
                    .iter()
                    .all(|n| text(&n.command(&[b"CLUSTER", b"INFO"])).contains("cluster_state:ok"));
                if !ok {
                    return false;
                }
                let maps: Vec<Vec<(u16, u16, u16)>> =
                    running.iter().map(|n| slot_ranges(n)).collect();
                maps[0].len() >= primaries
                    && maps.iter().all(|m| *m == maps[0])
                    && covered(&maps[0]) == 16384
                    && distinct_owners(&maps[0]) == primaries
            },
        );
    }

    /// `redis://127.0.0.1:P` (`rediss://` over TLS) of every node, to pass
    /// as seeds.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `--cluster --upstream <first primary>,…` as proxy flags: the first
    /// URL is the proxy's `--upstream` (see `seed_flags`).
    pub fn seed_flags(&self) -> Vec<String> {
        let others: Vec<String> = self.urls().into_iter().skip(1).collect();
        vec!["--cluster".into(), "--upstream".into(), others.join(",")]
    }

    /// The slot of `key`, as `CLUSTER KEYSLOT` on a running node says.
    pub fn keyslot(&self, key: &[u8]) -> u16 {
        match self.any().command(&[b"CLUSTER", b"KEYSLOT", key]) {
            Reply::Int(slot) => slot as u16,
            other => panic!("CLUSTER KEYSLOT: {other:?}"),
        }
    }

    /// The primary serving `slot` now, as the first running node says.
    pub fn owner(&self, slot: u16) -> &RedisServer {
        let port = slot_ranges(self.any())
            .into_iter()
            .find(|(from, to, _)| (*from..=*to).contains(&slot))
            .map(|(_, _, port)| port)
            .unwrap_or_else(|| panic!("no node serves slot {slot}"));
        self.node(port)
    }

    /// The running primaries, by their own `ROLE`.
    pub fn primaries(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .filter(|n| {
                matches!(n.command(&[b"ROLE"]),
                    Reply::Array(items) if items.first() == Some(&Reply::Bulk(b"master".to_vec())))
            })
            .collect()
    }

    /// The node on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// A node that is running.
    pub fn any(&self) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running cluster node")
    }

    /// Moves `slot` from its owner to `to` the way `redis-cli --cluster
    /// reshard` does: IMPORTING on the target, MIGRATING on the source,
    /// `MIGRATE` of its keys in batches, then `SETSLOT … NODE` on both and
    /// on every other primary. Blocking; returns once every node agrees.
    pub fn migrate_slot(&self, slot: u16, to: &RedisServer) {
        self.begin_migration(slot, to);
        let from = self.owner(slot);
        let slot_s = slot.to_string();
        loop {
            let keys =
                match from.command(&[b"CLUSTER", b"GETKEYSINSLOT", slot_s.as_bytes(), b"100"]) {
                    Reply::Array(keys) => keys,
                    other => panic!("CLUSTER GETKEYSINSLOT: {other:?}"),
                };
            if keys.is_empty() {
                break;
            }
            let keys: Vec<Vec<u8>> = keys
                .into_iter()
                .map(|key| match key {
                    Reply::Bulk(key) => key,
                    other => panic!("a key: {other:?}"),
                })
                .collect();
            self.move_keys(slot, to, &keys);
        }
        self.end_migration(slot, to);
    }

    /// Marks `slot` as migrating from its owner to `to` (and importing
    /// there): from now on its owner answers `-ASK` for keys it does not
    /// have.
    pub fn begin_migration(&self, slot: u16, to: &RedisServer) {
        let from = self.owner(slot);
        assert_ne!(
            from.port(),
            to.port(),
            "slot {slot} is already on :{}",
            to.port()
        );
        let (from_id, to_id) = (node_id(from), node_id(to));
        let slot_s = slot.to_string();
        expect_ok(
            to,
            &[
                b"CLUSTER",
                b"SETSLOT",
                slot_s.as_bytes(),
                b"IMPORTING",
                from_id.as_bytes(),
            ],
        );
        expect_ok(
            from,
            &[
                b"CLUSTER",
                b"SETSLOT",
                slot_s.as_bytes(),
                b"MIGRATING",
                to_id.as_bytes(),
            ],
        );
    }

    /// Moves `keys` of a migrating `slot` from its owner to `to` (`MIGRATE`).
    pub fn move_keys(&self, slot: u16, to: &RedisServer, keys: &[Vec<u8>]) {
        let from = self.owner(slot);
        let to_port = to.port().to_string();
        let mut args: Vec<&[u8]> = vec![
            b"MIGRATE",
            b"127.0.0.1",
            to_port.as_bytes(),
            b"",
            b"0",
            b"10000",
            b"REPLACE",
            b"KEYS",
        ];
        args.extend(keys.iter().map(Vec::as_slice));
        expect_ok(from, &args);
    }

    /// Gives a migrating `slot` to `to` on every primary, and waits until
    /// every node agrees.
    pub fn end_migration(&self, slot: u16, to: &RedisServer) {
        let from = self.owner(slot);
        let to_id = node_id(to);
        let slot_s = slot.to_string();
        // The target first, then the source: the order redis-cli uses, so
        // that the slot is never owned by no one.
        let mut order = vec![to, from];
        for p in self.primaries() {
            if p.port() != to.port() && p.port() != from.port() {
                order.push(p);
            }
        }
        for server in order {
            expect_ok(
                server,
                &[
                    b"CLUSTER",
                    b"SETSLOT",
                    slot_s.as_bytes(),
                    b"NODE",
                    to_id.as_bytes(),
                ],
            );
        }
        wait::until(
            "every node to see the migrated slot at its new owner",
            FORM_TIMEOUT,
            || {
                self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                    slot_ranges(n)
                        .iter()
                        .any(|(a, b, port)| (*a..=*b).contains(&slot) && *port == to.port())
                })
            },
        );
        // The primaries serving slots now: one more if `to` had none, one
        // fewer if the source gave its last.
        self.wait_agree(distinct_owners(&slot_ranges(to)));
    }
}

/// `node` set up as a cluster node whose bus listens on `bus`.
fn cluster_node(node: RedisServerBuilder, bus: u16) -> RedisServerBuilder {
    node.arg("cluster-enabled", "yes")
        .arg("cluster-config-file", "nodes.conf")
        .arg("cluster-node-timeout", &NODE_TIMEOUT_MS.to_string())
        // The bus port is not port + 10000 (which may not exist for a high
        // free port) but a free port of its own.
        .arg("cluster-port", &bus.to_string())
        // Keep serving the slots still covered while a node is down.
        .arg("cluster-require-full-coverage", "no")
        // A primary that gives its last slot away stays a primary (by
        // default it would turn into a replica of the slot's new owner),
        // so that a test can take it out of the cluster.
        .arg("cluster-allow-replica-migration", "no")
}

/// Runs `args` on `server`, which must answer `+OK`.
fn expect_ok(server: &RedisServer, args: &[&[u8]]) {
    let reply = server.command(args);
    assert_eq!(
        reply,
        Reply::Simple("OK".into()),
        "{args:?} on :{}",
        server.port()
    );
}

/// A node's own id (`CLUSTER MYID`).
pub fn node_id(node: &RedisServer) -> String {
    match node.command(&[b"CLUSTER", b"MYID"]) {
        Reply::Bulk(id) => String::from_utf8(id).expect("an ASCII node id"),
        other => panic!("CLUSTER MYID: {other:?}"),
    }
}

/// `(first, last, primary port)` of every slot range, sorted, as `CLUSTER
/// SLOTS` on `node` says (empty if it cannot be asked).
pub fn slot_ranges(node: &RedisServer) -> Vec<(u16, u16, u16)> {
    let Reply::Array(ranges) = node.command(&[b"CLUSTER", b"SLOTS"]) else {
        return Vec::new();
    };
    let mut out: Vec<(u16, u16, u16)> = ranges
        .iter()
        .filter_map(|range| match range {
            Reply::Array(items) => match (items.first(), items.get(1), items.get(2)) {
                (Some(Reply::Int(a)), Some(Reply::Int(b)), Some(Reply::Array(primary))) => {
                    match primary.get(1) {
                        Some(Reply::Int(port)) => Some((*a as u16, *b as u16, *port as u16)),
                        _ => None,
                    }
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    out.sort_unstable();
    out
}

fn covered(ranges: &[(u16, u16, u16)]) -> usize {
    ranges.iter().map(|(a, b, _)| usize::from(b - a) + 1).sum()
}

fn distinct_owners(ranges: &[(u16, u16, u16)]) -> usize {
    let mut ports: Vec<u16> = ranges.iter().map(|(_, _, p)| *p).collect();
    ports.sort_unstable();
    ports.dedup();
    ports.len()
}

fn text(reply: &Reply) -> String {
    match reply {
        Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
        Reply::Verbatim(_, b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}
