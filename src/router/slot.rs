//! Redis Cluster's hash slots: CRC16 (XMODEM) of a key, or of its `{hash
//! tag}` when it has a non-empty one, modulo 16 384.

/// How many hash slots a Redis Cluster has.
pub(crate) const SLOTS: usize = 16384;

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), by table.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

/// The part of `key` that is hashed: what is between the first `{` and the
/// first `}` after it, if that is not empty; else the whole key (Redis's
/// `keyHashSlot`).
fn hashed_part(key: &[u8]) -> &[u8] {
    if let Some(open) = memchr::memchr(b'{', key) {
        let rest = &key[open + 1..];
        if let Some(close) = memchr::memchr(b'}', rest) {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    key
}

/// The hash slot of `key`.
#[inline]
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    crc16(hashed_part(key)) & (SLOTS as u16 - 1)
}

/// A short hash tag whose keys fall in `slot`: `{n}` for the first decimal
/// `n` that hashes there (found in a few tens of thousands of steps at
/// most), for probe keys a node must accept.
pub(crate) fn tag_for(slot: u16) -> String {
    let mut buf = itoa::Buffer::new();
    (0u32..)
        .map(|n| buf.format(n).to_owned())
        .find(|s| slot_of(s.as_bytes()) == slot)
        .map(|s| format!("{{{s}}}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values `CLUSTER KEYSLOT` gives on Redis 7.
    #[test]
    fn slots_match_cluster_keyslot() {
        for (key, slot) in [
            (&b"somekey"[..], 11058),
            (b"foo", 12182),
            (b"bar", 5061),
            (b"a", 15495),
            (b"", 0),
            (b"{user1000}.following", 3443),
            (b"{user1000}.followers", 3443),
            (b"user1000", 3443),
            (b"foo{}{bar}", 8363),
            (b"foo{{bar}}zap", 4015),
            (b"foo{bar}{zap}", 5061),
            (b"123456789", 12739),
        ] {
            assert_eq!(slot_of(key), slot, "{}", String::from_utf8_lossy(key));
        }
        assert_eq!(crc16(b"123456789"), 0x31C3, "XMODEM check value");
    }

    #[test]
    fn a_tag_is_found_for_every_slot_asked() {
        for slot in [0u16, 1, 5061, 16383] {
            let tag = tag_for(slot);
            assert_eq!(slot_of(format!("respool:probe:{tag}:1").as_bytes()), slot);
        }
    }
}
