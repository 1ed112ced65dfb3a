//! SCAN in front of a Redis Cluster (`--cluster`): one primary after the
//! other, with a cursor that names the primary.
//!
//! The cursor respool gives the client is the index of the primary in the
//! client's slot map in its top [`NODE_BITS`] bits and that primary's own
//! cursor in the rest. Redis 7's cursors are a position in a hash table
//! (2^k buckets: k bits; at most 2^32 keys per node: 33 bits), so
//! [`CURSOR_BITS`] hold any of them; a node cursor that does not fit gets a
//! clear error rather than a wrong one. When a primary answers cursor 0,
//! the next cursor names the next primary from its start; after the last,
//! it is 0. Each call sends one SCAN to one primary: an iteration ends
//! after the primaries' own iterations have.
//!
//! Each call reads the cursor against the slot map the client routes by
//! then: if primaries were added or removed between calls, the index may
//! name another primary than before (keys may then be missed or returned
//! twice, as SCAN itself allows while its data changes shape) and a cursor
//! naming a primary past the map's end is refused.

use bytes::{BufMut, Bytes, BytesMut};

use super::cluster::Split;
use super::Client;
use crate::codec::{Request, Value};
use crate::error::error_line;

/// Bits of respool's cursor naming the primary: a cluster has at most
/// 16 384 primaries (one per slot).
pub(super) const NODE_BITS: u32 = 14;
/// Bits of respool's cursor holding the primary's own cursor.
pub(super) const CURSOR_BITS: u32 = 64 - NODE_BITS;
const CURSOR_MASK: u64 = (1 << CURSOR_BITS) - 1;

/// A SCAN call on its way to one primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ScanStep {
    /// The primary's index in the client's map.
    node: u16,
    /// How many primaries the map has.
    nodes: u16,
}

impl ScanStep {
    /// The client's reply out of the primary's: its keys, and the cursor
    /// that continues the iteration.
    pub(super) fn merge(self, reply: &Bytes) -> Bytes {
        if matches!(reply.first(), Some(b'-' | b'!')) {
            return reply.clone();
        }
        let Some((cursor, keys)) = split_reply(reply) else {
            return error_line(
                "ERR",
                "a cluster node answered SCAN with something other than a cursor and keys",
            );
        };
        if cursor > CURSOR_MASK {
            return error_line(
                "ERR",
                &format!("a cluster node's SCAN cursor ({cursor}) does not fit the {CURSOR_BITS} bits respool keeps for it; scan each node directly"),
            );
        }
        let next = if cursor != 0 {
            u64::from(self.node) << CURSOR_BITS | cursor
        } else if self.node + 1 < self.nodes {
            u64::from(self.node + 1) << CURSOR_BITS
        } else {
            0
        };
        let next = next.to_string();
        let mut out = BytesMut::with_capacity(16 + next.len() + keys.len());
        out.put_slice(format!("*2\r\n${}\r\n{next}\r\n", next.len()).as_bytes());
        out.put_slice(keys);
        out.freeze()
    }
}

/// A SCAN reply's cursor and its keys array as the node sent it.
fn split_reply(reply: &[u8]) -> Option<(u64, &[u8])> {
    let mut elements = Value::of_frame(reply).ok()?.elements()?;
    let cursor = std::str::from_utf8(elements.next()?.bytes()?)
        .ok()?
        .parse()
        .ok()?;
    // The array header, the cursor's bulk header and the cursor: the keys
    // are what follows.
    let header = memchr::memchr(b'\n', reply)? + 1;
    let bulk_header = header + memchr::memchr(b'\n', reply.get(header..)?)? + 1;
    let len: usize = std::str::from_utf8(reply.get(header + 1..bulk_header - 2)?)
        .ok()?
        .parse()
        .ok()?;
    let keys = reply.get(bulk_header + len + 2..)?;
    matches!(keys.first(), Some(b'*')).then_some((cursor, keys))
}

impl Client {
    /// Sends the client's SCAN to the primary its cursor names, with that
    /// primary's own cursor.
    pub(super) fn scan(&mut self, req: Request) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let nodes = cluster.node_count();
        if req.argc() < 2 {
            return self.output.push_ready(error_line(
                "ERR",
                "wrong number of arguments for 'scan' command",
            ));
        }
        let Some(cursor) = req
            .arg(1)
            .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u64>().ok())
        else {
            return self.output.push_ready(error_line("ERR", "invalid cursor"));
        };
        let node = cursor >> CURSOR_BITS;
        let Some(node) = u16::try_from(node).ok().filter(|&n| n < nodes) else {
            return self.output.push_ready(error_line(
                "ERR",
                &format!("invalid cursor: it names primary {node} and the cluster has {nodes} (the cluster's primaries changed since the scan began, or the cursor is not one respool gave); start again from 0"),
            ));
        };
        let own = (cursor & CURSOR_MASK).to_string();
        let mut args: Vec<&[u8]> = req.args().collect();
        args[1] = own.as_bytes();
        let raw = Request::from_args(&args).into_raw().freeze();
        let step = ScanStep { node, nodes };
        // A read: resent after a lost connection like any other.
        self.send_parts(vec![(node, raw)], Vec::new(), 0, Split::ScanFrom(step), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(cursor: &str, keys: &[&str]) -> Bytes {
        let mut out = format!("*2\r\n${}\r\n{cursor}\r\n*{}\r\n", cursor.len(), keys.len());
        for k in keys {
            out.push_str(&format!("${}\r\n{k}\r\n", k.len()));
        }
        Bytes::from(out)
    }

    #[test]
    fn the_cursor_names_the_node_and_moves_on_when_it_is_done() {
        let step = ScanStep { node: 1, nodes: 3 };
        assert_eq!(
            step.merge(&reply("17", &["a", "b"])),
            reply(&(1u64 << CURSOR_BITS | 17).to_string(), &["a", "b"])
        );
        assert_eq!(
            step.merge(&reply("0", &["c"])),
            reply(&(2u64 << CURSOR_BITS).to_string(), &["c"])
        );
        let last = ScanStep { node: 2, nodes: 3 };
        assert_eq!(last.merge(&reply("0", &[])), reply("0", &[]));
    }

    #[test]
    fn a_node_cursor_too_wide_and_a_malformed_reply_are_errors() {
        let step = ScanStep { node: 0, nodes: 3 };
        let wide = (1u64 << CURSOR_BITS).to_string();
        assert!(step.merge(&reply(&wide, &[])).starts_with(b"-ERR"));
        assert!(step
            .merge(&Bytes::from_static(b":1\r\n"))
            .starts_with(b"-ERR"));
        assert!(step
            .merge(&Bytes::from_static(b"*2\r\n$1\r\n5\r\n:3\r\n"))
            .starts_with(b"-ERR"));
        let error = Bytes::from_static(b"-ERR boom\r\n");
        assert_eq!(step.merge(&error), error);
    }
}
