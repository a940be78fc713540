//! The keep-alive race (envoy#1979): the upstream closed an idle pooled connection, but legate
//! has not noticed yet when the next request takes it. The request was never written, so it must
//! go out again on a new connection instead of failing. Staged deterministically: the dead
//! connection's close is pending but its task has not run when the request is sent.

mod common;

use common::*;
use hyper_util::rt::TokioIo;
use legate::config::UpstreamConfig;
use legate::http::body::ReqBody;
use legate::telemetry::metrics::Metrics;
use legate::upstream::pool::Pools;
use legate::upstream::Upstream;
use std::sync::Arc;

#[tokio::test(flavor = "current_thread")]
async fn unsent_request_on_a_dead_pooled_connection_is_resent_on_a_new_one() {
    let up_server = echo_upstream(Proto::H1).await;
    let metrics = Arc::new(Metrics::new());
    let up = Upstream::build(
        0,
        &UpstreamConfig::with_endpoints("api", vec![up_server.addr.to_string()]),
        metrics.clone(),
    )
    .unwrap();
    let ep = up.endpoints()[0].clone();
    let pools = Arc::new(Pools::default());

    // A pooled connection whose peer is about to be gone.
    let (client_io, server_io) = tokio::io::duplex(4096);
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake::<_, ReqBody>(TokioIo::new(client_io))
            .await
            .unwrap();
    tokio::spawn(conn);
    tx.ready().await.unwrap();
    drop(server_io);
    pools.put_h1(&up, ep.addr, tx);

    // No await between the close and the send: the connection task has not seen the EOF yet.
    let req = http::Request::get("/race")
        .header("host", "x")
        .body(ReqBody::Empty)
        .unwrap();
    let (resp, _pool_return, endpoint) =
        legate::http::proxy::send(&pools, &up, &ep, &mut Some(req), None, false)
            .await
            .expect("the request is resent on a fresh connection");
    assert_eq!(resp.status(), 200);
    assert_eq!(endpoint, up_server.addr);
    assert_eq!(
        up_server.connections(),
        1,
        "exactly one new connection was opened"
    );
    let m = metrics.encode();
    assert_eq!(
        metric(&m, "legate_upstream_connections_reused_total", &[]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "legate_upstream_connections_opened_total", &[]),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_fresh_connection_failing_is_not_retried() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let up = Upstream::build(
        0,
        &UpstreamConfig::with_endpoints("api", vec![closed.to_string()]),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let ep = up.endpoints()[0].clone();
    let pools = Arc::new(Pools::default());
    let req = http::Request::get("/").body(ReqBody::Empty).unwrap();
    let err = legate::http::proxy::send(&pools, &up, &ep, &mut Some(req), None, false)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.reply().1, "connect-refused");
}
