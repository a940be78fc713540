//! Protocol upgrades (WebSocket): after both sides agreed on 101, legate copies bytes both ways
//! until either side closes.

use super::serve_h1::ClientUpgrade;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

/// `client` resolves once legate's server has written the 101 to the client.
pub fn bridge(client: ClientUpgrade, upstream: OnUpgrade, endpoint: std::net::SocketAddr) {
    tokio::spawn(async move {
        let upstream = match upstream.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, "upgrade did not complete");
                return;
            }
        };
        let Ok(client) = client.await else {
            tracing::debug!(%endpoint, "the client connection ended before the upgrade");
            return;
        };
        let mut upstream = TokioIo::new(upstream);
        // What the client sent right after its request head is already the new protocol's.
        if !client.read_ahead.is_empty() {
            if let Err(e) = upstream.write_all(&client.read_ahead).await {
                tracing::debug!(%endpoint, error = %e, "upgraded connection ended with error");
                return;
            }
        }
        let mut client = client.io;
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(%endpoint, error = %e, "upgraded connection ended with error");
        }
    });
}
