//! A 1 GiB upload and a 1 GiB download pass through legate while the process's memory stays
//! flat: bodies stream frame by frame, never buffered whole. (Alone in its binary so the
//! peak-RSS reading is this test's own.)

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Frame;
use std::convert::Infallible;

const TOTAL: u64 = 1 << 30;
const CHUNK: usize = 64 * 1024;

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn generated(total: u64) -> Body {
    let chunk = Bytes::from(vec![0xA5u8; CHUNK]);
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(CHUNK as u64) as usize;
            Some((
                Ok::<_, Infallible>(Frame::data(chunk.slice(..n))),
                sent + n as u64,
            ))
        }
    });
    http_body_util::StreamBody::new(stream).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_with_flat_memory() {
    let up = upstream(
        Proto::H1,
        |req: http::Request<hyper::body::Incoming>| async move {
            if req.uri().path() == "/download" {
                return http::Response::new(generated(TOTAL));
            }
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(Ok(f)) = body.frame().await {
                if let Some(d) = f.data_ref() {
                    n += d.len() as u64;
                }
            }
            http::Response::new(full(n.to_string()))
        },
    )
    .await;
    let legate = Legate::start(&config(up.addr, "        timeout: 10m", ""));
    let mut c = Client::h1(legate.addr).await;
    // Warm up so allocator pools and buffers exist before the baseline.
    let _ = c.get("/upload").await;
    let baseline = status_kib("VmRSS:");

    let r = c
        .send(
            Request::post("/upload")
                .header("host", "x")
                .body(generated(TOTAL))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, TOTAL.to_string());

    let resp = c.get_raw("/download").await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(f) = body.frame().await {
        if let Some(d) = f.unwrap().data_ref() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, TOTAL);

    let peak = status_kib("VmHWM:");
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    assert!(growth_mib < 64, "peak RSS grew by {growth_mib} MiB while moving 2 GiB (baseline {baseline} KiB, peak {peak} KiB)");
}
