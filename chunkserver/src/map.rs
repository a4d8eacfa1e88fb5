//! The cluster map as this node sees it: from the metaservers (which this node registers
//! with and heartbeats to), or from a TOML file re-read whenever it changes (tests and
//! small static deployments).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meridian_client::MetaClient;
use meridian_proto::{ClusterMap, NodeInfo};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// A shared, changing view of the cluster map.
pub type MapView = watch::Receiver<Arc<ClusterMap>>;

/// Watches a cluster map file: loads it now if it exists, then polls it every `every` and
/// publishes each valid new version. A map with a lower epoch than the current one is
/// ignored with a warning; a missing or invalid file leaves the current map in place.
pub fn watch_file(path: PathBuf, every: Duration) -> MapView {
    let initial = ClusterMap::load(&path).ok().unwrap_or_default();
    if initial.nodes.is_empty() {
        info!(path = %path.display(), "no cluster map yet; waiting for the file");
    }
    let (tx, rx) = watch::channel(Arc::new(initial));
    tokio::spawn(async move {
        let mut last_error = String::new();
        loop {
            tokio::time::sleep(every).await;
            if tx.is_closed() {
                return;
            }
            match ClusterMap::load(&path) {
                Ok(map) => {
                    last_error.clear();
                    let current = tx.borrow().clone();
                    if *current == map {
                        continue;
                    }
                    if map.epoch < current.epoch {
                        warn!(
                            file_epoch = map.epoch,
                            current_epoch = current.epoch,
                            "ignoring an older cluster map"
                        );
                        continue;
                    }
                    info!(
                        epoch = map.epoch,
                        nodes = map.nodes.len(),
                        "cluster map updated"
                    );
                    tx.send_replace(Arc::new(map));
                }
                Err(e) => {
                    let text = e.to_string();
                    if text != last_error {
                        warn!(error = %text, "cluster map not (re)loaded");
                        last_error = text;
                    }
                }
            }
        }
    });
    rx
}

/// Joins the cluster through the metaservers at `meta`: registers `me` (retrying until a
/// member answers), heartbeats every `every`, registers again whenever a heartbeat is
/// refused (a new leader, or a map that lost the node), and watches the cluster map.
/// Returns the map and the client, for other questions to the metaservers.
pub fn watch_meta(meta: Vec<String>, me: NodeInfo, every: Duration) -> (MapView, Arc<MetaClient>) {
    let client = Arc::new(MetaClient::new(meta).with_retry_for(Duration::from_secs(5)));
    let beat = client.clone();
    tokio::spawn(async move {
        let mut registered = false;
        loop {
            if !registered {
                match beat.register_chunkserver(&me).await {
                    Ok(()) => {
                        info!(node = %me.id, "registered with the metaservers");
                        registered = true;
                    }
                    Err(e) => debug!(node = %me.id, error = %e, "registration failed; retrying"),
                }
            } else if let Err(e) = beat.heartbeat(&me).await {
                debug!(node = %me.id, error = %e, "heartbeat refused; registering again");
                registered = false;
                continue;
            }
            tokio::time::sleep(every).await;
        }
    });
    (client.watch_cluster_map(), client)
}

/// A view that never changes, for a map given in full.
pub fn fixed(map: ClusterMap) -> MapView {
    let (_tx, rx) = watch::channel(Arc::new(map));
    rx
}
