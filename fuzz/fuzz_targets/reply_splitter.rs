//! Arbitrary bytes into `ReplyDecoder`: no panic, the frames are exactly the
//! consumed prefix of the input, and each frame alone is exactly one frame.
#![no_main]

#[path = "common.rs"]
mod common;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use respool::codec::{ReplyDecoder, ReplyKind};
use tokio_util::codec::Decoder;

fn check(input: &[u8], max_depth: usize) -> Vec<Bytes> {
    let mut dec = ReplyDecoder::new(max_depth);
    let out = common::feed(&mut dec, input, &[]);
    let joined: Vec<u8> = out.items.concat();
    assert!(
        input.starts_with(&joined),
        "frames are not a prefix of the input"
    );
    if out.error.is_none() {
        // Nothing lost: frames followed by the unconsumed rest is the input.
        assert_eq!(joined.len() + out.rest.len(), input.len());
        assert_eq!(&input[joined.len()..], &out.rest[..]);
        if out.rest.is_empty() {
            assert!(!dec.in_frame(), "in_frame with an empty buffer");
        }
    }
    for frame in &out.items {
        assert!(!frame.is_empty());
        let _ = ReplyKind::of(frame);
        // Alone, in a fresh decoder, the frame is exactly one frame.
        let mut alone = ReplyDecoder::new(max_depth);
        let mut buf = BytesMut::from(&frame[..]);
        let again = alone.decode(&mut buf).expect("a split frame decodes alone");
        assert_eq!(again.as_ref(), Some(frame), "frame is not one whole frame");
        assert!(buf.is_empty());
        assert!(!alone.in_frame());
        assert_eq!(alone.decode(&mut buf), Ok(None));
    }
    out.items
}

fuzz_target!(|data: &[u8]| {
    let deep = check(data, respool::codec::reply::UPSTREAM_MAX_DEPTH);
    let shallow = check(data, common::SMALL_DEPTH);
    // A tighter depth cap only ever cuts the frame list short.
    assert!(shallow.len() <= deep.len());
    assert_eq!(&deep[..shallow.len()], &shallow[..]);
});
