//! respool in front of a real Redis Cluster (`--cluster`): three primaries
//! with a replica each, formed by `tests/support/cluster.rs`.

mod support;

use support::cluster::{slot_ranges, Cluster};
use support::Reply;

/// The harness forms a cluster whose nodes agree on every slot, and its
/// helpers say where a key lives.
#[test]
fn the_harness_forms_a_cluster_of_three_primaries() {
    let cluster = Cluster::start();
    assert_eq!(cluster.nodes.len(), 6);
    assert_eq!(cluster.primaries().len(), 3);
    let ranges = slot_ranges(cluster.any());
    assert_eq!(
        ranges
            .iter()
            .map(|(a, b, _)| usize::from(b - a) + 1)
            .sum::<usize>(),
        16384
    );
    let slot = cluster.keyslot(b"somekey");
    assert_eq!(slot, 11058, "CLUSTER KEYSLOT somekey");
    let owner = cluster.owner(slot);
    assert_eq!(
        owner.command(&[b"SET", b"somekey", b"v"]),
        Reply::Simple("OK".into())
    );
    let other = cluster
        .primaries()
        .into_iter()
        .find(|p| p.port() != owner.port())
        .expect("another primary");
    assert_eq!(
        other.command(&[b"GET", b"somekey"]).error_code(),
        Some("MOVED")
    );
}
