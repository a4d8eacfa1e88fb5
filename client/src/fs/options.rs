//! The file layer's tunables.

use super::TTL_FED;

/// Tunables of the file layer.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Bytes of verified blocks kept in memory.
    pub cache_bytes: usize,
    /// How long the kernel may cache entries and attributes while the feed of other
    /// clients' changes answers (without it: [`TTL_ALONE`](super::TTL_ALONE)).
    pub cache_ttl: std::time::Duration,
    /// Dirty bytes an open file may hold before they are committed without a flush.
    pub max_dirty_bytes: usize,
    /// Writes held unflushed this long are committed without a flush (as a local disk
    /// writes its dirty pages back; Linux passes neither sync(1) nor syncfs to a FUSE
    /// mount); `None`: only at fsync, close, or `max_dirty_bytes`.
    pub commit_after: Option<std::time::Duration>,
    /// Blocks uploaded at once per flush.
    pub upload_parallelism: usize,
    /// How long a file written in pieces must have been closed here before its ranges
    /// are compacted.
    pub compact_after: std::time::Duration,
    /// Directories this mount creates are leased to it, and it answers mkdir, rmdir and
    /// unlink in them alone until another client needs them (docs/adr/0006).
    pub write_back: bool,
    /// Most names of leased directories the mount holds (about 400 bytes each); past it,
    /// the leases least recently used go back to the servers.
    pub leased_names: usize,
    /// The first file and directory handle number this process gives. A mount whose
    /// serving process was replaced (docs/adr/0008) starts each process's handles in a
    /// range of its own, so the kernel's handles of the one before never collide with
    /// new ones; and it takes on handles it does not know (`adopt_handles`).
    pub handle_base: u64,
    /// Handles this process did not open are taken on as they come, rather than refused.
    pub adopt_handles: bool,
    /// Every read reflects every change acknowledged anywhere before it began: queries
    /// are answered through the volume's home region, and nothing is answered from a
    /// cache, the kernel's included (no entry or attribute caching, direct I/O).
    pub linearizable: bool,
    /// The process before this one died (rather than handing over): an adopted handle
    /// that may have written reports EIO at its next flush or fsync.
    pub adopted_writes_lost: bool,
    /// Small range reads may go through the chunkservers' range ports (see
    /// `blocks/range_port.rs`) rather than gRPC.
    pub range_port: bool,
    /// Small blocks may be put through the chunkservers' range ports rather than gRPC.
    pub put_port: bool,
    /// An fsync's commit of a few kilobytes carries its blocks in the metadata commit and
    /// puts them afterwards (docs/adr/0018), rather than putting them first.
    pub stage_small: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            cache_bytes: 256 << 20,
            cache_ttl: TTL_FED,
            max_dirty_bytes: 64 << 20,
            commit_after: Some(std::time::Duration::from_secs(5)),
            upload_parallelism: 8,
            compact_after: std::time::Duration::from_secs(5),
            write_back: true,
            leased_names: super::MAX_NAMES,
            handle_base: 1,
            adopt_handles: false,
            adopted_writes_lost: false,
            linearizable: false,
            range_port: true,
            put_port: true,
            stage_small: true,
        }
    }
}
