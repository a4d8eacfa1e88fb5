//! Starting and stopping a chunkserver.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::channels::{self, ChannelPool, Timeouts};
use meridian_proto::pb::chunk::chunk_service_server::ChunkServiceServer;
use meridian_proto::{ClusterMap, NodeId, NodeInfo, NodeState, ZoneId};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::ChunkConfig;
use crate::error::ChunkError;
use crate::ledger::Ledger;
use crate::map::{self, MapView};
use crate::range_port::{RangePort, RangeService};
use crate::replicate::Replicator;
use crate::service::ChunkNode;
use crate::store::BlockStore;

/// Opens the store, binds the listener and serves until `shutdown` completes; in-flight
/// requests finish first. Prints `meridian chunk <id> listening on <addr>` to stdout once
/// the port is bound, so scripts and tests can find a port chosen at run time.
pub async fn run(
    config: ChunkConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ChunkError> {
    config.validate().map_err(ChunkError::Invalid)?;
    let id = NodeId(config.id);
    let (data, capacity) = (config.data.clone(), config.capacity);
    let pack_len = config.pack_mib << 20;
    let (store, ledger) = tokio::task::spawn_blocking(move || {
        let store = BlockStore::open_with_packs(&data, id, capacity, pack_len)?;
        Ok::<_, ChunkError>((store, Ledger::open(&data)?))
    })
    .await
    .map_err(|e| ChunkError::Invalid(format!("start-up task failed: {e}")))??;

    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| ChunkError::Invalid(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ChunkError::Invalid(format!("listener has no address: {e}")))?;
    let capacity = store.usage().capacity;
    let store = Arc::new(store);
    let mut meta = None;
    // Started before registering, so the map names it from the first; serves once the
    // residency checker exists (connections wait in the backlog until then).
    // With TLS on, the port speaks it too (with the identity in force at each connection).
    let (range_service, range_port) = match config.range_port {
        true => {
            let (tx, rx) = std::sync::mpsc::channel();
            let at = match &config.range_listen {
                Some(a) => a
                    .parse()
                    .map_err(|e| ChunkError::Invalid(format!("range listen address {a:?}: {e}")))?,
                None => std::net::SocketAddr::new(addr.ip(), 0),
            };
            let port = RangePort::start(at, rx).map_err(|e| {
                ChunkError::Invalid(format!("cannot open the range port on {at}: {e}"))
            })?;
            (Some(tx), Some(port))
        }
        false => (None, None),
    };
    let advertised = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let range_address = match (&range_port, advertised.rsplit_once(':')) {
        (Some(port), Some((host, _))) if !host.is_empty() => {
            format!("{host}:{}", port.addr().port())
        }
        (Some(_), _) => {
            warn!(%advertised, "the advertised address is not host:port; the range port is not announced");
            String::new()
        }
        (None, _) => String::new(),
    };
    let map = if !config.meta.is_empty() {
        let me = NodeInfo {
            id,
            zone: ZoneId(config.zone.clone()),
            address: advertised,
            range_address,
            capacity,
            state: NodeState::Up,
        };
        let (map, client) = map::watch_meta(
            config.meta.clone(),
            me,
            Duration::from_millis(config.heartbeat_ms.max(10)),
        );
        meta = Some(client);
        map
    } else if let Some(path) = &config.cluster_map {
        map::watch_file(
            path.clone(),
            Duration::from_millis(config.map_poll_ms.max(10)),
        )
    } else {
        warn!(
            "no metaservers and no cluster map: this node can store blocks but not replicate them"
        );
        map::fixed(ClusterMap::default())
    };
    check_own_entry(&map, id, &config.zone);

    let pool = Arc::new(ChannelPool::new(Timeouts {
        connect: Duration::from_millis(config.peer_connect_timeout_ms),
        request: Duration::from_millis(config.peer_request_timeout_ms),
    }));
    let peers = Arc::new(crate::ship::Peers::new(
        config.region,
        &config.peers,
        &config.routes,
    ));
    let ledger = Arc::new(ledger);
    let residency = Arc::new(crate::residency::Residency::new(
        config.region,
        meta.clone(),
    ));
    let maintainer = Arc::new(crate::maintain::Maintainer::new(
        id,
        store.clone(),
        ledger.clone(),
        map.clone(),
        pool.clone(),
        meta,
        crate::maintain::MaintainConfig {
            repair_every: Duration::from_millis(config.repair_interval_ms),
            repair_bytes_per_sec: config.repair_bytes_per_sec,
            scrub_every: Duration::from_millis(config.scrub_interval_ms),
            scrub_bytes_per_sec: config.scrub_bytes_per_sec,
            default_replicas: config.default_replicas,
            gc_every: Duration::from_millis(config.gc_interval_ms),
            gc_grace: Duration::from_millis(config.gc_grace_ms),
            adopt_staged_after: Duration::from_millis(config.adopt_staged_after_ms),
        },
    )?);
    let background = maintainer.spawn();
    let node = Arc::new(ChunkNode {
        id,
        zone: ZoneId(config.zone.clone()),
        region: config.region,
        store: store.clone(),
        ledger,
        replicator: Replicator::new(id, map.clone(), pool.clone()),
        map,
        max_block_len: config.max_block_len,
        default_min_copies: config.default_min_copies,
        peers: peers.clone(),
        maintainer: maintainer.clone(),
        default_replicas: config.default_replicas,
        residency: residency.clone(),
        ship_replica_delay: Duration::from_millis(config.ship_replica_delay_ms),
    });
    if let Some(tx) = range_service {
        let runtime = tokio::runtime::Handle::current();
        let _ = tx.send(RangeService {
            store,
            residency,
            region: config.region,
            runtime: runtime.clone(),
            maintainer,
            puts: config
                .put_port
                .then(|| Arc::new(crate::put_port::PortPuts::new(node.clone(), runtime))),
        });
    }
    let shippers: Vec<_> = config
        .peers
        .iter()
        .filter_map(|p| {
            let client = peers.client(p.region)?;
            info!(region = p.region, "shipping blocks to peer region");
            Some(tokio::spawn(crate::ship::ship_loop(
                p.region,
                client,
                node.ledger.clone(),
                node.maintainer.clone(),
            )))
        })
        .collect();

    println!("meridian chunk {} listening on {addr}", config.id);
    info!(node = %id, zone = %config.zone, %addr, data = %config.data.display(), "chunkserver serving");

    channels::server(meridian_proto::fair::Limits {
        total: config.max_requests,
        per_client: config.max_requests_per_client,
        timeout: std::time::Duration::from_millis(config.request_timeout_ms),
        per_client_rate: config.max_requests_per_client_per_sec,
    })
    .add_service(ChunkServiceServer::from_arc(node.clone()))
    .serve_with_incoming_shutdown(channels::incoming(listener), shutdown)
    .await
    .map_err(|e| ChunkError::Invalid(format!("server failed: {e}")))?;
    drop(range_port);
    for s in shippers.into_iter().chain(background) {
        s.abort();
    }
    info!(node = %id, "chunkserver stopped");
    Ok(())
}

fn check_own_entry(map: &MapView, id: NodeId, zone: &str) {
    let map = map.borrow();
    match map.node(id) {
        Some(n) if n.zone.0 != zone => {
            warn!(node = %id, map_zone = %n.zone, config_zone = zone, "cluster map puts this node in another zone")
        }
        None if !map.nodes.is_empty() => warn!(node = %id, "this node is not in the cluster map"),
        _ => {}
    }
}
