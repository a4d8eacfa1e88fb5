//! The cluster map as this node sees it. Until the metaserver serves maps, it comes from a
//! TOML file that is re-read whenever it changes (tests and small deployments keep using
//! that path).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::channels::{ChannelPool, Timeouts};
use meridian_proto::pb::meta::meta_service_client::MetaServiceClient;
use meridian_proto::pb::meta::{
    GetClusterMapRequest, HeartbeatRequest, RegisterChunkserverRequest,
};
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
/// member answers), heartbeats every `every`, re-registers when the leader does not know
/// it, and long-polls the cluster map, publishing each newer epoch.
pub fn watch_meta(meta: Vec<String>, me: NodeInfo, every: Duration) -> MapView {
    let (tx, rx) = watch::channel(Arc::new(ClusterMap::default()));
    let pool = Arc::new(ChannelPool::new(Timeouts {
        connect: Duration::from_millis(500),
        request: Duration::from_secs(40),
    }));
    let register = RegisterChunkserverRequest {
        id: me.id.0,
        zone: me.zone.0.clone(),
        address: me.address.clone(),
        capacity: me.capacity,
    };
    let (hb_pool, hb_meta) = (pool.clone(), meta.clone());
    tokio::spawn(async move {
        let mut registered = false;
        let mut i = 0usize;
        loop {
            let addr = &hb_meta[i % hb_meta.len()];
            let Ok(ch) = hb_pool.get(addr) else {
                i += 1;
                continue;
            };
            let mut client = MetaServiceClient::new(ch);
            let result = if registered {
                client
                    .heartbeat(HeartbeatRequest {
                        id: me.id.0,
                        used_bytes: 0,
                        capacity: me.capacity,
                    })
                    .await
                    .map(|_| ())
            } else {
                client
                    .register_chunkserver(register.clone())
                    .await
                    .map(|_| ())
            };
            match result {
                Ok(()) => {
                    if !registered {
                        info!(node = %me.id, member = %addr, "registered with the metaservers");
                    }
                    registered = true;
                }
                Err(s) if s.code() == tonic::Code::NotFound => registered = false,
                Err(s) => {
                    debug!(member = %addr, error = %s.message(), "metaserver did not answer; trying the next");
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            tokio::time::sleep(every).await;
        }
    });
    tokio::spawn(async move {
        let mut i = 0usize;
        loop {
            if tx.is_closed() {
                return;
            }
            let known = tx.borrow().epoch;
            let addr = &meta[i % meta.len()];
            let got = match pool.get(addr) {
                Ok(ch) => MetaServiceClient::new(ch)
                    .get_cluster_map(GetClusterMapRequest {
                        known_epoch: known,
                        wait_ms: 10_000,
                    })
                    .await
                    .map_err(|s| s.message().to_string())
                    .and_then(|r| {
                        serde_json::from_slice::<ClusterMap>(&r.into_inner().map)
                            .map_err(|e| e.to_string())
                    }),
                Err(e) => Err(e.to_string()),
            };
            match got {
                Ok(map) if map.epoch > known => {
                    info!(
                        epoch = map.epoch,
                        nodes = map.nodes.len(),
                        "cluster map updated"
                    );
                    tx.send_replace(Arc::new(map));
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(member = %addr, error = %e, "cluster map fetch failed; trying the next member");
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
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
