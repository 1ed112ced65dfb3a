//! A per-thread pool of small read buffers, so that an idle client holds no
//! read buffer at all while an active one reads without allocating.
//!
//! A client takes a buffer when its socket becomes readable and gives it back
//! once everything read has been decoded and answered: the requests sliced
//! from it are gone by then, so the next taker reuses it in place
//! (`BytesMut::reserve` reclaims a uniquely owned allocation instead of
//! allocating).

use std::cell::RefCell;

use bytes::BytesMut;

/// Size of a pooled buffer: fits any ordinary batch of small commands.
pub(super) const SMALL: usize = 4 * 1024;
/// Buffers kept per thread; more are simply freed (bounds the pool at 4 MiB).
const MAX_POOLED: usize = 1024;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `SMALL` bytes.
pub(super) fn take() -> BytesMut {
    let mut buf = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    buf.reserve(SMALL);
    buf
}

/// Returns an empty buffer to the pool (a grown one is freed instead, so the
/// pool only ever holds small buffers).
pub(super) fn give_back(buf: BytesMut) {
    debug_assert!(buf.is_empty());
    if buf.capacity() < SMALL / 2 || buf.capacity() > 2 * SMALL {
        return;
    }
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < MAX_POOLED {
            pool.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_in_place() {
        let mut buf = take();
        let start = buf.as_ptr();
        assert!(buf.capacity() >= SMALL);
        buf.extend_from_slice(b"hello");
        let request = buf.split_to(5).freeze();
        drop(request);
        give_back(buf);
        let again = take();
        // The same allocation, reclaimed from its start.
        assert_eq!(again.as_ptr(), start);
        assert!(again.capacity() >= SMALL);
    }

    #[test]
    fn grown_buffers_are_not_pooled() {
        POOL.with(|p| p.borrow_mut().clear());
        give_back(BytesMut::with_capacity(64 * 1024));
        assert_eq!(POOL.with(|p| p.borrow().len()), 0);
    }
}
