//! respool: a Redis pooling proxy.
