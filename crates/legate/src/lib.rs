//! legate: an ambassador sidecar proxy. The application talks plain HTTP or TCP to localhost; legate
//! owns everything about reaching the real service.
//!
//! The modules follow the data flow: `listen` accepts, `http` serves and forwards a request,
//! `tcp` carries a connection (and speaks PostgreSQL's startup where asked),
//! `upstream` picks an endpoint and a pooled connection, `telemetry` records what happened,
//! `lifecycle` starts and drains the whole thing, `admin` reports on it.

pub mod admin;
pub mod auth;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod h1;
pub mod http;
pub mod lifecycle;
pub mod listen;
pub mod server;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod window;
