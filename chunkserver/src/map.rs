//! The cluster map as this node sees it. Until the metaserver serves maps, it comes from a
//! TOML file that is re-read whenever it changes (tests and small deployments keep using
//! that path).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::ClusterMap;
use tokio::sync::watch;
use tracing::{info, warn};

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

/// A view that never changes, for a map given in full.
pub fn fixed(map: ClusterMap) -> MapView {
    let (_tx, rx) = watch::channel(Arc::new(map));
    rx
}
