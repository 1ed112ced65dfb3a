//! Decoding in pieces gives exactly what decoding the whole input gives, for
//! both decoders.
//!
//! Input layout: byte 0 = `n`; if its top bit is set the input is fed one
//! byte at a time, otherwise `n % 16` cut positions follow as little-endian
//! u16s (taken modulo the data length + 1). The rest is the data.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use respool::codec::{ProtocolError, ReplyDecoder, RequestDecoder, RequestLimits};
use tokio_util::codec::Decoder;

fn cuts_and_data(input: &[u8]) -> Option<(Vec<usize>, &[u8])> {
    let (&n, rest) = input.split_first()?;
    if n & 0x80 != 0 {
        return Some(((1..rest.len()).collect(), rest));
    }
    let n = (n % 16) as usize;
    if rest.len() < 2 * n {
        return None;
    }
    let (raw_cuts, data) = rest.split_at(2 * n);
    let mut cuts: Vec<usize> = raw_cuts
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize % (data.len() + 1))
        .collect();
    cuts.sort_unstable();
    Some((cuts, data))
}

fn same_errors(whole: &Option<ProtocolError>, pieces: &Option<ProtocolError>) {
    assert_eq!(whole.is_some(), pieces.is_some(), "{whole:?} vs {pieces:?}");
    if let (Some(a), Some(b)) = (whole, pieces) {
        if !(common::is_length_cap(a) || common::is_length_cap(b)) {
            assert_eq!(a, b);
        }
    }
}

fn equivalent<D, F>(
    make: F,
    data: &[u8],
    cuts: &[usize],
    in_progress: fn(&D, &bytes::BytesMut) -> bool,
) where
    D: Decoder<Error = ProtocolError>,
    D::Item: PartialEq + std::fmt::Debug,
    F: Fn() -> D,
{
    let mut d1 = make();
    let mut d2 = make();
    let whole = common::feed(&mut d1, data, &[]);
    let pieces = common::feed(&mut d2, data, cuts);
    same_errors(&whole.error, &pieces.error);
    if whole.error.is_none() {
        assert_eq!(whole.items, pieces.items);
        assert_eq!(whole.rest, pieces.rest);
        assert_eq!(
            in_progress(&d1, &whole.rest),
            in_progress(&d2, &pieces.rest)
        );
    } else {
        // Up to the error, both produced the same items.
        let n = whole.items.len().min(pieces.items.len());
        assert_eq!(whole.items[..n], pieces.items[..n]);
        if !whole.error.as_ref().is_some_and(common::is_length_cap)
            && !pieces.error.as_ref().is_some_and(common::is_length_cap)
        {
            assert_eq!(whole.items, pieces.items);
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((cuts, data)) = cuts_and_data(input) else {
        return;
    };
    for limits in [RequestLimits::default(), common::SMALL_LIMITS] {
        equivalent(
            || RequestDecoder::new(limits),
            data,
            &cuts,
            |d, b| d.in_progress(b),
        );
    }
    for depth in [
        respool::codec::reply::UPSTREAM_MAX_DEPTH,
        common::SMALL_DEPTH,
    ] {
        equivalent(
            || ReplyDecoder::new(depth),
            data,
            &cuts,
            |d, _| d.in_frame(),
        );
    }
});
