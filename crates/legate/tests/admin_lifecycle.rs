//! Admin endpoints, metric values after known traffic, and the drain on shutdown.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer() {
    let up = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&config(up.addr, "", ""));
    let admin = legate.admin.expect("admin on");
    assert_eq!(get(admin, "/live").await.status, 200);
    let ready = get(admin, "/ready").await;
    assert_eq!((ready.status, &ready.body[..]), (200, &b"ready\n"[..]));
    let cfg = get(admin, "/config").await;
    assert_eq!(cfg.status, 200);
    let text = String::from_utf8_lossy(&cfg.body);
    let parsed =
        legate::config::load_str("config", &text, |_| None).expect("/config is valid config");
    assert_eq!(
        parsed.upstreams[0].endpoints[0].address,
        up.addr.to_string()
    );
    assert_eq!(get(admin, "/nope").await.status, 404);
    let m = get(admin, "/metrics").await;
    assert_eq!(m.status, 200);
    assert!(String::from_utf8_lossy(&m.body).contains("# TYPE legate_http_requests counter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let up = upstream(
        Proto::H1,
        |req: Request<hyper::body::Incoming>| async move {
            let code: u16 = req
                .uri()
                .path()
                .trim_start_matches('/')
                .parse()
                .unwrap_or(200);
            http::Response::builder()
                .status(code)
                .body(full("x"))
                .unwrap()
        },
    )
    .await;
    let legate = Legate::start(&config(up.addr, "", ""));
    let mut c = Client::h1(legate.addr).await;
    for _ in 0..7 {
        assert_eq!(c.get("/200").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(c.get("/503").await.status, 503);
    }
    assert_eq!(c.get("/404").await.status, 404);
    let text =
        String::from_utf8_lossy(&get(legate.admin.unwrap(), "/metrics").await.body).into_owned();
    let req = |class: &str| {
        metric(
            &text,
            "legate_http_requests_total",
            &[
                "listener=\"app\"",
                "route=\"default\"",
                "upstream=\"api\"",
                &format!("code_class=\"{class}\""),
            ],
        )
    };
    assert_eq!(req("2xx"), Some(7.0), "{text}");
    assert_eq!(req("5xx"), Some(3.0));
    assert_eq!(req("4xx"), Some(1.0));
    assert_eq!(
        metric(
            &text,
            "legate_http_request_duration_seconds_count",
            &["route=\"default\""]
        ),
        Some(11.0)
    );
    assert_eq!(
        metric(
            &text,
            "legate_http_inflight_requests",
            &["listener=\"app\""]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "legate_upstream_connections_opened_total",
            &["upstream=\"api\""]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let up = upstream(Proto::H1, move |_| {
        let mut rx = release_rx.clone();
        async move {
            let _ = rx.wait_for(|r| *r).await;
            http::Response::new(full("finished"))
        }
    })
    .await;
    let mut legate = Legate::start(&config(up.addr, "", ""));
    let addr = legate.addr;
    let admin = legate.admin.unwrap();
    let in_flight = tokio::spawn(async move { get(addr, "/slow").await });
    let m = legate.running.as_ref().unwrap().metrics.clone();
    wait_until_async("request in flight", || {
        metric(
            &m.encode(),
            "legate_http_inflight_requests",
            &["listener=\"app\""],
        ) == Some(1.0)
    })
    .await;

    let running = legate.running.take().unwrap();
    running.shutdown();
    let state = running.state.clone();
    let waiter = std::thread::spawn(move || running.wait());
    assert!(state.is_draining());
    let ready = get(admin, "/ready").await;
    assert_eq!(ready.status, 503, "/ready says 503 while draining");
    // The listening socket closes: new connections are refused.
    let mut refused = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "new connections must be refused while draining");
    assert!(
        !waiter.is_finished(),
        "legate must wait for the in-flight request"
    );
    release_tx.send_replace(true);
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.body), (200, Bytes::from_static(b"finished")));
    tokio::task::spawn_blocking(move || waiter.join().unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_the_wait() {
    let up = upstream(Proto::H1, |_| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        http::Response::new(full("never"))
    })
    .await;
    let yaml = config(up.addr, "", "").replace(
        "runtime: { workers: 1 }",
        "runtime: { workers: 1 }\nshutdown: { drain_timeout: 300ms }",
    );
    let mut legate = Legate::start(&yaml);
    let addr = legate.addr;
    let stuck = tokio::spawn(async move { Client::h1(addr).await.get_raw("/").await });
    let m = legate.running.as_ref().unwrap().metrics.clone();
    wait_until_async("request in flight", || {
        metric(&m.encode(), "legate_http_inflight_requests", &[]) == Some(1.0)
    })
    .await;
    let running = legate.running.take().unwrap();
    running.shutdown();
    tokio::task::spawn_blocking(move || running.wait())
        .await
        .unwrap();
    // The stuck request was cut when the drain timeout passed (its connection closed).
    assert!(stuck.await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_share_one_port() {
    let up = echo_upstream(Proto::H1).await;
    let yaml =
        config(up.addr, "", "").replace("runtime: { workers: 1 }", "runtime: { workers: 3 }");
    let legate = Legate::start(&yaml);
    assert_eq!(legate.running.as_ref().unwrap().workers, 3);
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let addr = legate.addr;
        tasks.push(tokio::spawn(async move { get(addr, "/").await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
}
