//! Operating respool: what it shows about itself besides `INFO respool`.
//!
//! * [`commands`] — the bounded set of command names metrics are labelled
//!   with;
//! * [`health`] — readiness: may a load balancer send clients here now;
//! * [`metrics`] — the Prometheus exposition, read from the event loops'
//!   counters ([`crate::stats`]) at scrape time, never recorded twice;
//! * [`http`] — `--metrics-listen`: `/metrics`, `/healthz`, `/readyz`.

pub(crate) mod commands;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod metrics;
