//! What legate tells operators: Prometheus metrics, the per-request access log, event logs.

pub mod access_log;
pub mod logging;
pub mod metrics;
pub mod throttle;
