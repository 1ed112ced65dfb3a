//! Waiting on conditions instead of sleeping: tests poll what they need to
//! see, with a deadline generous enough for a loaded 2-core machine.

use std::time::{Duration, Instant};

/// Default deadline for `until` / `until_async` / `until_ok` callers that
/// have no better idea.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// How often a condition is re-checked. Polling granularity only.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How often an async check is re-run: each one is typically a round trip
/// through the proxy, so it is polled less eagerly than a local condition.
const ASYNC_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Blocks until `condition()` holds; panics with "timed out waiting for
/// {what}" after `timeout`.
#[track_caller]
pub fn until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// `until` for async tests: sleeps on the tokio timer between checks, so
/// other tasks on the test's runtime keep running.
pub async fn until_async(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls the async `check` until it returns `Ok`, and returns that value;
/// panics with "timed out after {timeout:?} waiting for {what}: {last Err}"
/// after `timeout`. The `Err` says what was seen instead, so that a timeout
/// shows how far the condition got, not only that it never held.
pub async fn until_ok<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match check().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}: {seen}");
        }
        tokio::time::sleep(ASYNC_POLL_INTERVAL).await;
    }
}
