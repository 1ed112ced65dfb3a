//! Redis Cluster's hash slots: CRC16 (XMODEM) of a key, or of its `{hash
//! tag}` when it has a non-empty one, modulo 16 384.
//!
//! Every request in cluster mode hashes its key, so the hash takes sixteen
//! bytes at a time: one test of all sixteen for `{` (a compare the
//! compiler vectorises; a key without one — nearly all — is hashed whole,
//! in the same pass), and eight table lookups per eight bytes that do not
//! wait on each other (slicing-by-8).

/// How many hash slots a Redis Cluster has.
pub(crate) const SLOTS: usize = 16384;

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0) by table:
/// `CRC16_TABLES[0]` is the classic byte-at-a-time table; `[k][b]` is the
/// CRC of byte `b` followed by `k` zero bytes, so that eight bytes are
/// folded in with eight independent lookups.
static CRC16_TABLES: [[u16; 256]; 8] = {
    let mut tables = [[0u16; 256]; 8];
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
        tables[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = tables[k - 1][i];
            tables[k][i] = (prev << 8) ^ tables[0][(prev >> 8) as usize];
            i += 1;
        }
        k += 1;
    }
    tables
};

/// Folds one byte into `crc`.
#[inline(always)]
fn crc16_byte(crc: u16, b: u8) -> u16 {
    (crc << 8) ^ CRC16_TABLES[0][usize::from((crc >> 8) as u8 ^ b)]
}

/// Folds eight bytes into `crc`. The CRC so far (16 bits) is folded into
/// the first two, after which it has been shifted out entirely; each byte
/// is then one lookup, read straight from `bytes`.
#[inline(always)]
fn crc16_word(crc: u16, bytes: &[u8; 8]) -> u16 {
    let t = &CRC16_TABLES;
    let [b0, b1, b2, b3, b4, b5, b6, b7] = *bytes;
    let at = usize::from;
    t[7][at(b0 ^ (crc >> 8) as u8)]
        ^ t[6][at(b1 ^ crc as u8)]
        ^ t[5][at(b2)]
        ^ t[4][at(b3)]
        ^ t[3][at(b4)]
        ^ t[2][at(b5)]
        ^ t[1][at(b6)]
        ^ t[0][at(b7)]
}

/// Folds four bytes into `crc` (as [`crc16_word`]).
#[inline(always)]
fn crc16_half(crc: u16, bytes: &[u8; 4]) -> u16 {
    let t = &CRC16_TABLES;
    let [b0, b1, b2, b3] = *bytes;
    let at = usize::from;
    t[3][at(b0 ^ (crc >> 8) as u8)] ^ t[2][at(b1 ^ crc as u8)] ^ t[1][at(b2)] ^ t[0][at(b3)]
}

/// Whether any of `bytes` is `{`: 1 or 0 (folded with `|` rather than
/// tested one by one, so that the compiler compares them all at once).
#[inline(always)]
fn any_open_brace(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |any, &b| any | u8::from(b == b'{'))
}

/// CRC16 of `bytes`, or `None` if one of them is `{`.
#[inline(always)]
fn crc16_untagged(mut bytes: &[u8]) -> Option<u16> {
    let mut crc = 0;
    let mut braces = 0;
    while let Some((sixteen, rest)) = bytes.split_first_chunk::<16>() {
        braces |= any_open_brace(sixteen);
        let (first, second) = sixteen.split_at(8);
        if let (Ok(first), Ok(second)) = (first.try_into(), second.try_into()) {
            crc = crc16_word(crc16_word(crc, first), second);
        }
        bytes = rest;
    }
    if let Some((word, rest)) = bytes.split_first_chunk::<8>() {
        braces |= any_open_brace(word);
        crc = crc16_word(crc, word);
        bytes = rest;
    }
    if let Some((half, rest)) = bytes.split_first_chunk::<4>() {
        braces |= any_open_brace(half);
        crc = crc16_half(crc, half);
        bytes = rest;
    }
    for &b in bytes {
        braces |= u8::from(b == b'{');
        crc = crc16_byte(crc, b);
    }
    (braces == 0).then_some(crc)
}

fn crc16(mut bytes: &[u8]) -> u16 {
    let mut crc = 0;
    while let Some((word, rest)) = bytes.split_first_chunk::<8>() {
        crc = crc16_word(crc, word);
        bytes = rest;
    }
    bytes.iter().fold(crc, |crc, &b| crc16_byte(crc, b))
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
#[inline(always)]
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let crc = match crc16_untagged(key) {
        Some(crc) => crc,
        None => tagged_crc16(key),
    };
    crc & (SLOTS as u16 - 1)
}

/// CRC16 of the part of `key` (which has a `{`) that is hashed.
#[cold]
#[inline(never)]
fn tagged_crc16(key: &[u8]) -> u16 {
    crc16(hashed_part(key))
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
            // Empty, unclosed and nested tags, as Redis 7.2 answered them.
            (b"{}", 15257),
            (b"{", 4092),
            (b"}", 12090),
            (b"a{}{b}", 15033),
            (b"{}{b}", 8193),
            (b"{{}}", 4092),
            (b"}{a}", 15495),
            (b"a{b", 13340),
            (b"{a}", 15495),
            (b"a{bc}d{e}", 12685),
            (b"{x{y}z}", 2740),
            (b"abc{", 3048),
            (b"abcdefg{h}", 11694),
            // Whole words, a half word and a tail; a tag in the second word.
            (b"key:000000000123", 5068),
            (b"key:__rand_int__", 13782),
            (b"0123456789abcdef0123", 11518),
        ] {
            assert_eq!(slot_of(key), slot, "{}", String::from_utf8_lossy(key));
        }
        assert_eq!(crc16(b"123456789"), 0x31C3, "XMODEM check value");
    }

    /// The CRC16 bit by bit, as the polynomial defines it.
    fn crc16_by_bits(bytes: &[u8]) -> u16 {
        let mut crc = 0u16;
        for &b in bytes {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    /// Every length up to five words, each position of a `{` and `}` in
    /// a word, against the bitwise CRC and Redis's tag rule.
    #[test]
    fn word_at_a_time_hash_matches_the_bitwise_crc() {
        let mut rng = crate::codec::test_rng(19);
        for len in 0..40 {
            for _ in 0..50 {
                let key: Vec<u8> = (0..len).map(|_| (rng() % 130) as u8 + b'{' - 60).collect();
                assert_eq!(crc16(&key), crc16_by_bits(&key), "{key:?}");
                let expected = crc16_by_bits(hashed_part(&key)) & 0x3fff;
                assert_eq!(slot_of(&key), expected, "{key:?}");
            }
        }
        for len in 1..20 {
            for open in 0..len {
                for close in 0..len {
                    let mut key = vec![b'x'; len];
                    key[close] = b'}';
                    key[open] = b'{';
                    let tagged = match key[open + 1..].iter().position(|&b| b == b'}') {
                        Some(0) | None => &key[..],
                        Some(end) => &key[open + 1..open + 1 + end],
                    };
                    assert_eq!(
                        slot_of(&key),
                        crc16_by_bits(tagged) & 0x3fff,
                        "{}",
                        String::from_utf8_lossy(&key)
                    );
                }
            }
        }
    }

    #[test]
    fn a_tag_is_found_for_every_slot_asked() {
        for slot in [0u16, 1, 5061, 16383] {
            let tag = tag_for(slot);
            assert_eq!(slot_of(format!("respool:probe:{tag}:1").as_bytes()), slot);
        }
    }
}
