//! Metaserver configuration: a TOML file with defaults, every field overridable by a flag.

use crate::error::MetaError;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How one metaserver runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetaConfig {
    /// Member id, unique in the region, 1 or more. Never reuse the id of a removed member.
    pub id: u64,
    /// Folder for the Raft log, the state database and snapshots.
    pub data: PathBuf,
    /// gRPC listen address (MetaService and RaftService); port 0 picks a free port.
    pub listen: String,
    /// Address other members and clients use for this one (default: the bound address).
    pub advertise: Option<String>,
    /// Region id.
    pub region: u16,
    /// Start a new group with this member as its only voter, if it has no state yet.
    pub init: bool,
    /// Raft heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout, in milliseconds.
    pub election_min_ms: u64,
    /// Upper bound of the election timeout, in milliseconds.
    pub election_max_ms: u64,
    /// Take a snapshot after at least this many applied entries (more once the namespace
    /// is large: see `raft::snapshot_policy`).
    pub snapshot_logs: u64,
    /// Entries kept in the log behind a snapshot (for followers that lag a little).
    pub keep_logs: u64,
    /// How long a spare follower (one whose copy a commit does not wait for first:
    /// `raft::spare`) gathers appends before it syncs them, in microseconds; 0: every
    /// follower syncs each append as it comes.
    pub spare_sync_us: u64,
    /// How long the leader gathers a spare follower's entries into one append, in
    /// microseconds (`raft::pacing`); 0: each is sent as it comes.
    pub spare_batch_us: u64,
    /// Memory for the state database's page cache, in MiB (redb's default: 1,024). Reads of
    /// pages not cached go to the page cache of the kernel, then the disk.
    pub state_cache_mib: u64,
    /// A chunkserver silent this long is suspect at the latest, in milliseconds (sooner
    /// when its silence stands out from its own rhythm: `crate::liveness`).
    pub suspect_after_ms: u64,
    /// A chunkserver silent this long is down at the latest, in milliseconds.
    pub down_after_ms: u64,
    /// Where to serve Prometheus metrics over HTTP (none: not served).
    pub metrics_listen: Option<String>,
    /// The other regions this one replicates with.
    pub peers: Vec<PeerRegion>,
    /// A peer region that has not answered a pull for this long is unreachable, in
    /// milliseconds (lenient: across regions a verdict only shows, it decides nothing).
    pub peer_unreachable_after_ms: u64,
    /// A pause between the steps of a volume copy, in milliseconds (tests that stop a copy
    /// half way; 0 in production).
    #[serde(default)]
    pub copy_pause_ms: u64,
    /// Act as a member older than the `Calls` stream: answer it as unimplemented, so that
    /// clients use unary calls, and report reading no newer Raft requests (`raft::READS`):
    /// tests of a group of mixed versions; never in production.
    #[serde(default)]
    pub no_calls_stream: bool,
    /// Serve no calls port (clients then make their calls on gRPC's `Calls` stream):
    /// deployments that filter ports. With TLS on, there is none anyway.
    #[serde(default)]
    pub no_calls_port: bool,
    /// Where the calls port listens (IP:PORT); by default the listen IP, at a port the
    /// system chooses.
    #[serde(default)]
    pub calls_listen: Option<String>,
    /// Added to every fdatasync of the Raft log, in microseconds, as a slow disk would:
    /// tests of a slow member; 0 in production.
    #[serde(default)]
    pub fault_sync_delay_us: u64,
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

pub use meridian_proto::PeerRegion;

/// The longest a spare follower may gather appends, or the leader a spare's entries, in
/// microseconds (a commit may wait that much longer while a prompt follower is down).
pub const SPARE_SYNC_US_MAX: u64 = 100_000;
/// The state database's page cache unless configured, in MiB (redb's own default).
pub const STATE_CACHE_MIB: u64 = 1024;
/// The least page cache the state database may be given, in MiB.
pub const STATE_CACHE_MIB_MIN: u64 = 16;
/// The most, in MiB (1 TiB: a typing error rather than a machine).
pub const STATE_CACHE_MIB_MAX: u64 = 1 << 20;

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            id: 0,
            data: PathBuf::from("./meridian-meta"),
            listen: "127.0.0.1:7400".into(),
            advertise: None,
            region: 1,
            init: false,
            heartbeat_ms: 100,
            election_min_ms: 500,
            election_max_ms: 1000,
            snapshot_logs: 10_000,
            keep_logs: 1000,
            spare_sync_us: crate::raft::spare::GATHER.as_micros() as u64,
            spare_batch_us: crate::raft::pacing::BATCH.as_micros() as u64,
            state_cache_mib: STATE_CACHE_MIB,
            suspect_after_ms: 3000,
            down_after_ms: 10_000,
            metrics_listen: None,
            peers: Vec::new(),
            peer_unreachable_after_ms: 10_000,
            copy_pause_ms: 0,
            no_calls_stream: false,
            no_calls_port: false,
            calls_listen: None,
            fault_sync_delay_us: 0,
            max_requests: meridian_proto::fair::Limits::default().total,
            max_requests_per_client: meridian_proto::fair::Limits::default().per_client,
            request_timeout_ms: meridian_proto::fair::Limits::default().timeout.as_millis() as u64,
            max_requests_per_client_per_sec: 0,
        }
    }
}

impl MetaConfig {
    /// Reads a config file; fields it leaves out keep their defaults.
    pub fn load(path: &Path) -> Result<Self, MetaError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            MetaError::Config(format!("cannot read config {}: {e}", path.display()))
        })?;
        toml::from_str(&text)
            .map_err(|e| MetaError::Config(format!("config {} is invalid: {e}", path.display())))
    }

    /// Checks values that have no safe default.
    pub fn validate(&self) -> Result<(), MetaError> {
        self.check().map_err(MetaError::Config)
    }

    fn check(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("a metaserver needs a member id of 1 or more (--id)".into());
        }
        if self.election_min_ms <= self.heartbeat_ms || self.election_max_ms <= self.election_min_ms
        {
            return Err("need heartbeat_ms < election_min_ms < election_max_ms".into());
        }
        for p in &self.peers {
            if p.region == self.region {
                return Err(format!("region {} lists itself as a peer", p.region));
            }
        }
        if self.peer_unreachable_after_ms == 0 {
            return Err("need peer_unreachable_after_ms > 0".into());
        }
        if self.suspect_after_ms >= self.down_after_ms {
            return Err("need suspect_after_ms < down_after_ms".into());
        }
        if self.spare_sync_us > SPARE_SYNC_US_MAX {
            return Err(format!(
                "spare_sync_us must be at most {SPARE_SYNC_US_MAX}, not {}",
                self.spare_sync_us
            ));
        }
        if self.spare_batch_us > SPARE_SYNC_US_MAX {
            return Err(format!(
                "spare_batch_us must be at most {SPARE_SYNC_US_MAX}, not {}",
                self.spare_batch_us
            ));
        }
        if !(STATE_CACHE_MIB_MIN..=STATE_CACHE_MIB_MAX).contains(&self.state_cache_mib) {
            return Err(format!(
                "state_cache_mib must be {STATE_CACHE_MIB_MIN} to {STATE_CACHE_MIB_MAX}, not {}",
                self.state_cache_mib
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state database's page cache comes from the file or the default, and a size no
    /// member could run with (or a typing error) is refused.
    #[test]
    fn the_state_cache_is_read_and_bounded() {
        let ok = |c: &MetaConfig| c.validate().is_ok();
        let with = |mib| MetaConfig {
            id: 1,
            state_cache_mib: mib,
            ..MetaConfig::default()
        };
        assert_eq!(with(STATE_CACHE_MIB).state_cache_mib, 1024);
        assert!(ok(&with(STATE_CACHE_MIB)));
        assert!(ok(&with(64)));
        assert!(!ok(&with(STATE_CACHE_MIB_MIN - 1)));
        assert!(!ok(&with(STATE_CACHE_MIB_MAX + 1)));
        let read: MetaConfig = toml::from_str("id = 1\nstate_cache_mib = 256\n").unwrap();
        assert_eq!(read.state_cache_mib, 256);
        let unset: MetaConfig = toml::from_str("id = 1\n").unwrap();
        assert_eq!(unset.state_cache_mib, STATE_CACHE_MIB);
    }

    /// A spare's gather and the leader's batches for spares come from the file or their
    /// defaults, and either longer than a commit should ever wait more is refused.
    #[test]
    fn the_spares_gather_and_batch_are_read_and_bounded() {
        let unset: MetaConfig = toml::from_str("id = 1\n").unwrap();
        assert_eq!(unset.spare_sync_us, 500);
        assert_eq!(unset.spare_batch_us, 10_000);
        assert!(unset.validate().is_ok());
        let read: MetaConfig = toml::from_str("id = 1\nspare_batch_us = 0\n").unwrap();
        assert_eq!(read.spare_batch_us, 0);
        assert!(read.validate().is_ok());
        let long = MetaConfig {
            id: 1,
            spare_batch_us: SPARE_SYNC_US_MAX + 1,
            ..MetaConfig::default()
        };
        assert!(long.validate().is_err());
        let long = MetaConfig {
            id: 1,
            spare_sync_us: SPARE_SYNC_US_MAX + 1,
            ..MetaConfig::default()
        };
        assert!(long.validate().is_err());
    }
}
