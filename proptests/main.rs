//! Property tests for respool's framing.
