//! Chunkserver configuration: a TOML file with defaults for everything, every field
//! overridable on the command line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How one chunkserver runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChunkConfig {
    /// Node id, unique in the region (1 or more).
    pub id: u64,
    /// Folder holding blocks and state.
    pub data: PathBuf,
    /// gRPC listen address; port 0 picks a free port (the bound address is printed).
    pub listen: String,
    /// Failure domain of this node.
    pub zone: String,
    /// Region id.
    pub region: u16,
    /// Cluster map file (TOML), re-read when it changes, until the metaserver serves maps.
    pub cluster_map: Option<PathBuf>,
    /// Metaserver addresses: register there, heartbeat, and take the cluster map from them.
    pub meta: Vec<String>,
    /// Address peers and clients use for this node (default: the bound address).
    pub advertise: Option<String>,
    /// Heartbeat interval to the metaservers, in milliseconds.
    pub heartbeat_ms: u64,
    /// How often to look at the cluster map file for changes, in milliseconds.
    pub map_poll_ms: u64,
    /// Bytes this node may use; default: the size of the data folder's filesystem.
    pub capacity: Option<u64>,
    /// Largest plaintext block accepted, in bytes.
    pub max_block_len: u32,
    /// Copies a coordinated put needs when the client does not say (W).
    pub default_min_copies: u32,
    /// Timeout for connecting to a peer, in milliseconds.
    pub peer_connect_timeout_ms: u64,
    /// Timeout for one forwarded put, in milliseconds.
    pub peer_request_timeout_ms: u64,
    /// Where to serve Prometheus metrics over HTTP (none: not served).
    pub metrics_listen: Option<String>,
    /// Other regions: where blocks of volumes living there are shipped, and fetched from.
    pub peers: Vec<meridian_proto::PeerRegion>,
    /// Other regions' chunkserver addresses reached through another address (a gateway,
    /// a tunnel, a fault proxy): address -> address to dial.
    pub routes: std::collections::BTreeMap<String, String>,
    /// Copies of a block whose put does not say (the volumes' usual R).
    pub default_replicas: u32,
    /// Time between repair passes, in milliseconds.
    pub repair_interval_ms: u64,
    /// Bytes per second repair may push to other nodes (0: unlimited).
    pub repair_bytes_per_sec: u64,
    /// Time between scrub passes, in milliseconds.
    pub scrub_interval_ms: u64,
    /// Bytes per second the scrub may re-hash (0: unlimited).
    pub scrub_bytes_per_sec: u64,
    /// Time between garbage collection passes, in milliseconds.
    pub gc_interval_ms: u64,
    /// How long an unreferenced block waits before it is condemned, and again before it
    /// is deleted, in milliseconds: longer than any upload takes to commit.
    pub gc_grace_ms: u64,
    /// How long a block stays staged in the metadata (a small fsync'd write, ADR 0018)
    /// before its first home puts it to chunkservers itself, in milliseconds: its writer
    /// normally has within a second; one that died never will.
    pub adopt_staged_after_ms: u64,
    /// Largest size of a pack of small blocks, in MiB (0: no packs; every block is
    /// fsync'd as a file of its own, and blocks packed before stay readable).
    #[serde(alias = "journal_segment_mib")]
    pub pack_mib: u64,
    /// A replica of a block of a volume that lives in other regions queues it too, to be
    /// shipped after this many milliseconds if the coordinator has not (it then finds the
    /// block there already): a coordinator lost with its disk loses no shipment.
    pub ship_replica_delay_ms: u64,
    /// Serve range reads on a second TCP port (chosen by the system, on the gRPC listen
    /// address's IP, announced in the cluster map): a small random read then costs the
    /// client and this node no hand-off between tasks. With TLS, the port speaks it too,
    /// with the same certificates. Clients fall back to gRPC.
    pub range_port: bool,
    /// Take puts of small blocks on the range port too (answered on the connection's
    /// thread, forwarded to the replicas' ports). Clients fall back to gRPC.
    pub put_port: bool,
    /// Where the range port listens (default: the gRPC listen address's IP, a port the
    /// system chooses). Its host is announced as `advertise`'s, with this port.
    pub range_listen: Option<String>,
    /// Client requests handled at once, in all (more wait; other servers' are not
    /// counted).
    pub max_requests: usize,
    /// Requests of one client (a certificate, or a plaintext connection) handled at once:
    /// one noisy client waits in its own queue while the others go on.
    pub max_requests_per_client: usize,
    /// How long a client's request may take before it is answered DEADLINE_EXCEEDED
    /// (waiting for its share included); other servers' requests have no such limit.
    pub request_timeout_ms: u64,
    /// Requests one client may start per second (0: no limit); more are held back, not
    /// refused.
    pub max_requests_per_client_per_sec: u32,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig {
            id: 0,
            data: PathBuf::from("./meridian-chunk"),
            listen: "127.0.0.1:7500".to_string(),
            zone: "default".to_string(),
            region: 1,
            cluster_map: None,
            meta: Vec::new(),
            advertise: None,
            heartbeat_ms: 1000,
            map_poll_ms: 1000,
            capacity: None,
            max_block_len: meridian_proto::block::MAX_BLOCK_LEN,
            default_min_copies: 2,
            peer_connect_timeout_ms: 2000,
            peer_request_timeout_ms: 60_000,
            metrics_listen: None,
            peers: Vec::new(),
            routes: Default::default(),
            default_replicas: 3,
            repair_interval_ms: 60_000,
            repair_bytes_per_sec: 64 << 20,
            scrub_interval_ms: 24 * 3600 * 1000,
            scrub_bytes_per_sec: 16 << 20,
            gc_interval_ms: 10 * 60 * 1000,
            gc_grace_ms: 3600 * 1000,
            adopt_staged_after_ms: 60_000,
            pack_mib: crate::packs::PACK_LEN >> 20,
            ship_replica_delay_ms: 30_000,
            range_port: true,
            put_port: true,
            range_listen: None,
            max_requests: meridian_proto::fair::Limits::default().total,
            max_requests_per_client: meridian_proto::fair::Limits::default().per_client,
            request_timeout_ms: meridian_proto::fair::Limits::default().timeout.as_millis() as u64,
            max_requests_per_client_per_sec: 0,
        }
    }
}

impl ChunkConfig {
    /// Reads a config file; fields it leaves out keep their defaults.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config {} is invalid: {e}", path.display()))
    }

    /// Checks the values that have no safe default.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("a chunkserver needs a node id of 1 or more (--id)".into());
        }
        if self.zone.trim().is_empty() {
            return Err("the zone must not be empty (--zone)".into());
        }
        if self.max_block_len == 0 || self.max_block_len > meridian_proto::block::MAX_BLOCK_LEN {
            return Err(format!(
                "max_block_len must be between 1 and {}",
                meridian_proto::block::MAX_BLOCK_LEN
            ));
        }
        if !self.meta.is_empty() && self.cluster_map.is_some() {
            return Err(
                "give either metaserver addresses (--meta) or a cluster map file, not both".into(),
            );
        }
        if !(1..=16).contains(&self.default_replicas) {
            return Err("default_replicas must be between 1 and 16".into());
        }
        if self.repair_interval_ms == 0 || self.scrub_interval_ms == 0 {
            return Err("repair_interval_ms and scrub_interval_ms must be above 0".into());
        }
        if self.pack_mib > 4096 {
            return Err("pack_mib must be at most 4096".into());
        }
        if self.default_min_copies == 0 {
            return Err("default_min_copies must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_sets_fields_and_keeps_defaults_for_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunk.toml");
        std::fs::write(&path, "id = 4\nzone = \"rack-2\"\ncapacity = 1000000\n").unwrap();
        let c = ChunkConfig::load(&path).unwrap();
        assert_eq!(
            (c.id, c.zone.as_str(), c.capacity),
            (4, "rack-2", Some(1_000_000))
        );
        assert_eq!(c.default_min_copies, 2);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_missing_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunk.toml");
        std::fs::write(&path, "id = 1\nreplicaton = 3\n").unwrap();
        assert!(ChunkConfig::load(&path).unwrap_err().contains("replicaton"));
        assert!(
            ChunkConfig::default()
                .validate()
                .unwrap_err()
                .contains("--id")
        );
    }
}
