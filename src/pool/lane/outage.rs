//! Getting a lane a validated connection: from the pool when one is there,
//! else by waiting for new ones, with backoff, for as long as the upstream
//! is unreachable — while still taking the clients' requests and failing
//! those whose hold window (`--hold-timeout`) ends first.

use std::future::poll_fn;
use std::time::Duration;

use bb8::PooledConnection;
use tokio::time::{sleep_until, Instant};

use super::Lane;
use crate::error::{ConnectError, Error};
use crate::pool::checkout::{checkout, Wait};
use crate::pool::manager::UpstreamManager;
use crate::retry::Backoff;
use crate::stats::FailCause;

/// The upstream is unreachable; kept to tell waiting clients why.
pub(super) struct Outage {
    since: Instant,
    attempts: u32,
    last: ConnectError,
}

impl Outage {
    /// What a request that could not be sent during the outage is told.
    pub(super) fn error(&self, addr: &std::sync::Arc<str>) -> Error {
        Error::Unavailable {
            addr: addr.clone(),
            cause: self.last.to_string().into(),
            attempts: self.attempts,
            elapsed: self.since.elapsed(),
        }
    }
}

impl Lane {
    /// Gets a validated connection from the pool (after `delay`, if given),
    /// retrying with backoff while still taking requests and failing those
    /// that wait too long. `None` when the lane is closing.
    pub(super) async fn connect(
        &mut self,
        backoff: &mut Backoff,
        mut delay: Option<Duration>,
    ) -> Option<PooledConnection<'static, UpstreamManager>> {
        loop {
            if let Some(delay) = delay.take() {
                self.ctx.stats.backoff_waits.add(1);
                self.wait_taking_requests(Instant::now() + delay).await;
            }
            if self.closing {
                let error = Error::ShuttingDown.to_resp();
                for job in self.queue.drain(..) {
                    job.fail(&error, &self.ctx.stats, FailCause::ShuttingDown);
                }
                return None;
            }
            let (probe, stats) = (self.probe.clone(), self.ctx.stats.clone());
            let waiting = probe.waiting(&stats.checkout_wait[0]);
            let attempt = checkout(
                self.pool.clone(),
                self.failures.clone(),
                self.ctx.pool.checkout_timeout,
                Wait::UntilAnAttemptFails,
            );
            tokio::pin!(attempt);
            let result = loop {
                let expiry = self.queue.front().map(|j| j.hold_deadline);
                tokio::select! {
                    r = &mut attempt => break r,
                    () = poll_fn(|cx| self.poll_accept(cx, &mut None)), if !self.closing => {}
                    _ = sleep_until_opt(expiry) => self.expire_queue(),
                }
            };
            drop(waiting);
            match result {
                Ok(conn) => {
                    if let Some(o) = self.outage.take() {
                        tracing::info!(lane = self.id, upstream = %self.addr(), down_for_ms = o.since.elapsed().as_millis() as u64, attempts = o.attempts, "upstream available again");
                    }
                    return Some(conn);
                }
                Err(e) => {
                    if self.ctx.cluster.is_some() {
                        // A cluster node that cannot be reached may have
                        // failed over: the slot map is asked for again
                        // (the refresher rate-limits these).
                        self.ctx.refresh.notify_one();
                    }
                    self.note_outage(e);
                    if let Some(cluster) = self.ctx.cluster.clone() {
                        self.reroute_if_gone(&cluster);
                    }
                }
            }
            delay = Some(backoff.next_delay());
        }
    }

    /// In front of a cluster: once the slot map no longer names this
    /// lane's node as a primary (it failed and a replica took over), the
    /// requests waiting here were never sent, so each goes to the lane of
    /// its slot's primary now, in the order they came.
    fn reroute_if_gone(&mut self, cluster: &crate::topology::cluster::ClusterLink) {
        if self.queue.is_empty() {
            return;
        }
        let addr = self.node.addr();
        let Some(reroute) = cluster.reroute(&addr, self.protocol, &self.identity) else {
            return;
        };
        tracing::info!(lane = self.id, upstream = %addr, requests = self.queue.len(), "cluster node left the slot map; sending its waiting requests to the slots' primaries now");
        let mut queue = std::mem::take(&mut self.queue);
        while let Some(mut job) = queue.pop_front() {
            let single = job.take_first();
            if job.remaining() > 0 {
                queue.push_front(job);
            }
            match reroute.lane_for(&single.req.raw) {
                Some(lane) => {
                    if let Err(req) = lane.send(single.req) {
                        req.reply_to.send(req.seq, 1, Error::ShuttingDown.to_resp());
                    }
                }
                None => {
                    // No primary serves its slot yet (the replica is not
                    // promoted): it and everything after it wait here for
                    // the next look, in order.
                    queue.push_front(single);
                    break;
                }
            }
        }
        self.queue = queue;
    }

    /// Logs and records a failed attempt to get a connection.
    fn note_outage(&mut self, e: crate::error::ConnectError) {
        match &mut self.outage {
            None if self.ctx.client_identity && e.is_login_refusal() => {
                tracing::debug!(lane = self.id, upstream = %self.addr(), error = %e, "a client's login was refused");
                self.outage = Some(Outage {
                    since: Instant::now(),
                    attempts: 1,
                    last: e,
                });
            }
            None => {
                tracing::warn!(lane = self.id, upstream = %self.addr(), error = %e, "upstream unavailable; reconnecting with backoff, requests are held up to --hold-timeout");
                self.outage = Some(Outage {
                    since: Instant::now(),
                    attempts: 1,
                    last: e,
                });
            }
            Some(o) => {
                tracing::debug!(lane = self.id, upstream = %self.node.addr(), error = %e, attempts = o.attempts, "upstream still unavailable");
                o.attempts += 1;
                o.last = e;
            }
        }
    }

    /// Waits until `until` while still queueing new requests and failing
    /// those whose hold deadline passes.
    async fn wait_taking_requests(&mut self, until: Instant) {
        loop {
            let expiry = self.queue.front().map(|j| j.hold_deadline);
            tokio::select! {
                _ = sleep_until(until) => return,
                () = poll_fn(|cx| self.poll_accept(cx, &mut None)), if !self.closing => {
                    if self.closing {
                        return;
                    }
                }
                _ = sleep_until_opt(expiry) => self.expire_queue(),
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}
