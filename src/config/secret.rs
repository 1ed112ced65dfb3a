//! Passwords: never printed, compared in constant time.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use subtle::ConstantTimeEq;

/// A secret that never prints itself.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: &str) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this secret. The time taken depends on the
    /// lengths only, never on how many leading bytes match.
    pub fn matches(&self, given: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let same_length = (expected.len() as u64).ct_eq(&(given.len() as u64));
        // Compare against the expected bytes even when the lengths differ,
        // so the loop runs the same way either way.
        let compared = if expected.len() == given.len() {
            given
        } else {
            expected
        };
        (same_length & expected.ct_eq(compared)).into()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.matches(other.0.as_bytes())
    }
}

impl Eq for Secret {}

impl Hash for Secret {
    /// Hashes the length only: equal secrets hash alike, and a table keyed
    /// by secrets does not spend time proportional to their contents
    /// outside [`Secret::matches`].
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.len().hash(state);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_is_exact() {
        let s = Secret::new("abc");
        assert!(s.matches(b"abc"));
        assert!(!s.matches(b"abd"));
        assert!(!s.matches(b"ab"));
        assert!(!s.matches(b"abcd"));
        assert!(!s.matches(b""));
        assert!(Secret::new("").matches(b""));
        assert_eq!(Secret::new("x"), Secret::new("x"));
        assert_ne!(Secret::new("x"), Secret::new("y"));
    }

    #[test]
    fn never_printed() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
    }
}
