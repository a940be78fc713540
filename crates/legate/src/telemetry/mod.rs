//! What legate tells operators: Prometheus metrics (with the process's own), the per-request
//! access log, event logs, spans exported over OTLP.

pub mod access_log;
pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod process;
pub mod throttle;
pub mod top;
