//! The HTTP path: accept a request (`server`), refuse what an ambassador must not forward,
//! match a route (`route`), rewrite headers (`headers`), forward it through a pooled upstream
//! connection (`proxy`), and account for it when the response body ends (`observe`).

pub mod body;
pub mod forward;
pub mod headers;
pub mod local;
pub mod observe;
pub mod proxy;
pub mod rate_limit;
pub mod request_id;
pub mod retry;
pub mod route;
pub mod serve_h1;
pub mod server;
pub mod trace;
pub mod upgrade;
