//! respool: a Redis pooling proxy.
pub mod bench;
