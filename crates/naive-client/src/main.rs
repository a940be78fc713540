//! The naive app: GET http://localhost:8080/get every 5 s, forever.
//! `TARGET_URL` and `INTERVAL` (e.g. `5s`, `500ms`) override the defaults.

use naive_client::{parse_interval, Client};
use std::time::Duration;

fn main() {
    let target = std::env::var("TARGET_URL").unwrap_or_else(|_| "http://localhost:8080/get".into());
    let interval = std::env::var("INTERVAL")
        .ok()
        .and_then(|s| parse_interval(&s))
        .unwrap_or(Duration::from_secs(5));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async move {
        let mut client = match Client::new(&target) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        };
        if !client.wait_ready(Duration::from_secs(60)).await {
            println!("Ambassador still not answering after 60s; continuing anyway");
        }
        loop {
            println!("{}", client.call_once().await);
            tokio::time::sleep(interval).await;
        }
    });
}
