//! Starting and stopping a metaserver.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto::RegionId;
use meridian_proto::channels::{self, ChannelPool, Timeouts};
use meridian_proto::pb::meta::meta_service_server::MetaServiceServer;
use meridian_proto::pb::meta::raft_service_server::RaftServiceServer;
use openraft::BasicNode;
use tokio::net::TcpListener;
use tracing::info;

use crate::config::MetaConfig;
use crate::error::MetaError;
use crate::raft::log_store::LogStore;
use crate::raft::network::{Network, RaftRpc};
use crate::raft::state_machine::StateMachine;
use crate::service::{MetaApi, MetaNode};

/// Opens the stores, joins (or starts) the Raft group and serves until `shutdown`.
/// Prints `meridian meta <id> listening on <addr>` once the port is bound.
pub async fn run(
    config: MetaConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetaError> {
    config.validate()?;
    std::fs::create_dir_all(&config.data)
        .map_err(|e| MetaError::Io(format!("cannot create {}: {e}", config.data.display())))?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| MetaError::Io(format!("cannot listen on {}: {e}", config.listen)))?;
    let bound = listener
        .local_addr()
        .map_err(|e| MetaError::Io(e.to_string()))?;
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| bound.to_string());
    // Beside gRPC, on its IP unless told: clients reach it at the host they reach gRPC at.
    let calls_listener = if config.no_calls_port || config.no_calls_stream {
        None
    } else {
        let at = config
            .calls_listen
            .clone()
            .unwrap_or_else(|| std::net::SocketAddr::new(bound.ip(), 0).to_string());
        Some(
            crate::calls_port::listen(&at)
                .await
                .map_err(|e| MetaError::Io(format!("calls port on {at}: {e}")))?,
        )
    };

    let log = LogStore::open(
        &config.data.join("raft-log"),
        Some(&config.data.join("log.redb")),
    )
    .map_err(|e| MetaError::Io(format!("raft log: {e}")))?
    .for_member(config.id)
    .spare_gather(Duration::from_micros(config.spare_sync_us))
    .sync_delay(Duration::from_micros(config.fault_sync_delay_us));
    if config.fault_sync_delay_us > 0 {
        tracing::warn!(
            us = config.fault_sync_delay_us,
            "every sync of the Raft log is made longer (--fault-sync-delay-us)"
        );
    }
    let cache = usize::try_from(config.state_cache_mib << 20).unwrap_or(usize::MAX);
    let (sm, shared) = StateMachine::open_cached(&config.data, RegionId(config.region), cache)
        .and_then(|(sm, shared)| Ok((sm.for_member(config.id)?, shared)))
        .map_err(|e| MetaError::Io(format!("state: {e}")))?;
    // Entries' JSON, made once per member (`raft/encoded.rs`).
    let encoded = Arc::new(crate::raft::encoded::Encoded::default());
    let log = log
        .apply_ahead(sm.ahead())
        .durable_notices(shared.notices.clone())
        .share_encoded(encoded.clone());
    let db = sm.db();
    let raft_config = openraft::Config {
        cluster_name: format!("meridian-region-{}", config.region),
        heartbeat_interval: config.heartbeat_ms,
        election_timeout_min: config.election_min_ms,
        election_timeout_max: config.election_max_ms,
        // Snapshots are triggered by raft::snapshot_policy (their cost follows the log).
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: config.keep_logs,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| MetaError::Io(format!("raft config: {e}")))?;
    let pool = Arc::new(ChannelPool::new(Timeouts {
        connect: Duration::from_millis(500),
        request: Duration::from_secs(30),
    }));
    let policy_log = log.clone();
    let spare_log = log.clone();
    // The leader's spares' entries batched (`raft/pacing.rs`).
    let pacing = Arc::new(crate::raft::pacing::Pacing::new(Duration::from_micros(
        config.spare_batch_us,
    )));
    let node_log = log.clone();
    let raft = openraft::Raft::new(
        config.id,
        Arc::new(raft_config),
        Network::new(pool.clone(), encoded.clone(), pacing.clone()),
        log,
        sm,
    )
    .await
    .map_err(|e| MetaError::Io(format!("raft: {e}")))?;
    let snapshot_task = tokio::spawn(crate::raft::snapshot_policy::run(
        raft.clone(),
        policy_log,
        config.data.join("snapshots"),
        config.snapshot_logs,
    ));
    let spare_task = tokio::spawn(crate::raft::spare::run(
        raft.clone(),
        spare_log,
        config.id,
        pool.clone(),
        pacing,
    ));

    if config.init
        && !raft
            .is_initialized()
            .await
            .map_err(|e| MetaError::Io(e.to_string()))?
    {
        info!(member = config.id, %advertise, "initializing a new group");
        raft.initialize(BTreeMap::from([(config.id, BasicNode::new(&advertise))]))
            .await
            .map_err(|e| MetaError::Io(format!("initialize: {e}")))?;
    }

    let node = Arc::new(MetaNode {
        id: config.id,
        raft: raft.clone(),
        db,
        shared,
        pool,
        liveness: Mutex::new(Default::default()),
        levels: Mutex::new(Default::default()),
        peers: config.peers.clone(),
        regions: Default::default(),
        recalls: Default::default(),
        feed_load: Default::default(),
        backfills: crate::backfill::Backfills::new(config.data.join("scratch")),
        relayed: Default::default(),
        copy_pause: Duration::from_millis(config.copy_pause_ms),
        no_calls_stream: config.no_calls_stream,
        calls_port: calls_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map_or(0, |a| a.port()),
        log: node_log,
        stopping: tokio::sync::watch::Sender::new(false),
    });
    let stopping = node.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.stopping.send_replace(true);
    };
    let mut region_tasks = vec![
        tokio::spawn(crate::regions::export_lag(node.clone())),
        tokio::spawn(crate::regions::promise_loop(node.clone())),
        tokio::spawn(crate::backfill::backfill_loop(node.clone())),
        tokio::spawn(crate::copy::sweep_loop(node.clone())),
        tokio::spawn(crate::trim::trim_loop(node.clone())),
        tokio::spawn(crate::link_detector::detect_loop(
            node.clone(),
            Duration::from_millis(config.peer_unreachable_after_ms),
        )),
    ];
    for peer in &config.peers {
        info!(peer = peer.region, meta = ?peer.meta, "replicating with peer region");
        region_tasks.push(tokio::spawn(crate::regions::pull_loop(
            node.clone(),
            peer.clone(),
        )));
    }
    let detector = tokio::spawn(node.clone().detect_failures(
        Duration::from_millis(config.suspect_after_ms),
        Duration::from_millis(config.down_after_ms),
    ));

    let relays = node.clone();
    println!("meridian meta {} listening on {bound}", config.id);
    info!(member = config.id, %bound, %advertise, data = %config.data.display(), "metaserver serving");
    let fair = meridian_proto::fair::FairLayer::new(meridian_proto::fair::Limits {
        total: config.max_requests,
        per_client: config.max_requests_per_client,
        timeout: std::time::Duration::from_millis(config.request_timeout_ms),
        per_client_rate: config.max_requests_per_client_per_sec,
    });
    if let Some(listener) = calls_listener {
        region_tasks.push(tokio::spawn(crate::calls_port::serve(
            node.clone(),
            listener,
            fair.clone(),
        )));
    }
    let served = channels::server_sharing(fair)
        .add_service(
            MetaServiceServer::new(MetaApi(node))
                .max_decoding_message_size(channels::META_MESSAGE_LIMIT)
                .max_encoding_message_size(channels::META_MESSAGE_LIMIT),
        )
        .add_service(tonic::service::interceptor::InterceptedService::new(
            RaftServiceServer::new(RaftRpc::new(
                raft.clone(),
                config.data.join("snapshots"),
                encoded,
            ))
            .max_decoding_message_size(channels::META_MESSAGE_LIMIT)
            .max_encoding_message_size(channels::META_MESSAGE_LIMIT),
            // Only metaservers take part in Raft.
            |request: tonic::Request<()>| {
                meridian_proto::tls::require_role(&request, &[meridian_proto::tls::META])
                    .map(|()| request)
            },
        ))
        .serve_with_incoming_shutdown(channels::incoming(listener), shutdown)
        .await;
    detector.abort();
    snapshot_task.abort();
    spare_task.abort();
    for t in region_tasks {
        t.abort();
    }
    for (_, (_, t)) in
        std::mem::take(&mut *relays.relayed.lock().unwrap_or_else(|p| p.into_inner()))
    {
        t.abort();
    }
    let _ = raft.shutdown().await;
    info!(member = config.id, "metaserver stopped");
    served.map_err(|e| MetaError::Io(format!("server failed: {e}")))
}
