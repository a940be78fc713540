//! Responses legate answers itself. Each carries `legate-error: <reason>` so a client, a test or
//! an operator can tell legate's own answer from the upstream's.

use super::body::RespBody;
use super::observe::Observe;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

pub const ERROR_HEADER: &str = "legate-error";

/// Builds the reply and records it on `observe` (status and reason for logs and metrics).
pub fn reply(
    status: StatusCode,
    reason: &'static str,
    detail: &str,
    mut observe: Observe,
) -> Response<RespBody> {
    observe.status = status.as_u16();
    observe.error = Some(reason);
    let body = format!(
        "{} {}: {}\n",
        status.as_u16(),
        reason,
        detail.replace('\n', " ")
    );
    let mut resp = Response::new(RespBody::local(Bytes::from(body), Some(observe)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
