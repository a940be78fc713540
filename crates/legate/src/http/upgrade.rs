//! Protocol upgrades (WebSocket): after both sides agreed on 101, legate copies bytes both ways
//! until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

pub fn bridge(client: OnUpgrade, upstream: OnUpgrade, endpoint: std::net::SocketAddr) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(%endpoint, error = %e, "upgraded connection ended with error");
        }
    });
}
