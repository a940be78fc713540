//! PostgreSQL awareness for TCP listeners whose upstream is a PostgreSQL server reached with
//! `tls.mode: postgres` or logged in to with `postgres:` credentials.
//!
//! The app's side (`startup`): libpq opens with SSLRequest (or GSSENCRequest) under its default
//! `sslmode=prefer`; legate answers `N`, so the local hop stays plaintext, and reads the app's
//! StartupMessage. The server's side: `upstream::connect` has already done SSLRequest and TLS;
//! legate forwards the StartupMessage (with the configured user when it logs in for the app)
//! and, with credentials, answers the server's authentication request itself (`login`). From
//! AuthenticationOk on, the tunnel copies bytes as for any TCP upstream.

pub mod login;
pub mod message;
pub mod startup;
