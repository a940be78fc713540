//! legate: an ambassador sidecar proxy. The application talks plain HTTP to localhost; legate
//! owns everything about reaching the real service.
//!
//! The modules follow the data flow: `listen` accepts, `http` serves and forwards a request,
//! `upstream` picks an endpoint and a pooled connection, `telemetry` records what happened,
//! `lifecycle` starts and drains the whole thing, `admin` reports on it.

pub mod admin;
pub mod auth;
pub mod config;
pub mod demo;
pub mod http;
pub mod lifecycle;
pub mod listen;
pub mod reload;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod window;
