//! The operations that change the namespace, and what can be told of one before it is
//! applied (the directories and inodes it touches, the blocks it adds, whether a volume's
//! home decides it).

use serde::{Deserialize, Serialize};

use super::*;

/// A namespace mutation. Each is one Raft command, applied atomically.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Op {
    /// Create a volume with an empty root directory.
    CreateVolume {
        /// Name: 1-63 of [a-z0-9-_].
        name: String,
        /// Policy.
        policy: VolumePolicy,
    },
    /// Delete an empty volume.
    DeleteVolume {
        /// Name.
        name: String,
    },
    /// Copy a volume's whole namespace, at this instant, into a new volume: a snapshot
    /// (`read_only`) or a writable clone. The copy shares every block with the source
    /// (content addressing: only the references count up), so it costs metadata only.
    /// Volumes of one region only.
    CloneVolume {
        /// The volume copied.
        source: String,
        /// The new volume's name.
        name: String,
        /// A snapshot: every change to the copy is refused (EROFS).
        read_only: bool,
    },
    /// Set a volume's byte quota (none: unlimited). A quota below what the volume holds
    /// already is allowed: writes that would grow it fail until it shrinks.
    SetVolumeQuota {
        /// Name.
        name: String,
        /// Largest sum of file sizes, in bytes.
        quota_bytes: Option<u64>,
    },
    /// Set the regions a volume lives in. A region added is backfilled from the region
    /// that made the change (namespace, then blocks) and then takes part like the others;
    /// a region removed stops receiving the volume and drops its copy. The record goes to
    /// the regions of both the old and the new set.
    SetVolumeRegions {
        /// Name.
        name: String,
        /// The new set.
        regions: Vec<RegionId>,
    },
    /// Change a volume's consistency: a home region (one of its regions) or none
    /// (active-active); raises the volume's epoch. Planned, it is decided by the current
    /// home (forwarded there like any change), and the new home takes over once it has
    /// applied everything the old one accepted. Forced (`force`), it is made by the
    /// region that becomes the home, without the old one: what the old home accepted
    /// after it and never sent is kept apart, not applied (see `epoch`).
    SetVolumeHome {
        /// Volume name.
        name: String,
        /// The new home; none for active-active.
        home: Option<RegionId>,
        /// Made without the current home.
        force: bool,
    },
    /// Create a file, directory, device node, fifo or socket.
    Mknod {
        /// Parent directory.
        parent: InodeId,
        /// Entry name.
        name: Vec<u8>,
        /// Kind (not a symlink).
        kind: FileKind,
        /// Permission bits, already masked by the caller's umask.
        perm: u16,
        /// Device number.
        rdev: u32,
        /// For regular files: fail with EEXIST if the name exists (O_EXCL). Otherwise an
        /// existing regular file is returned as is.
        exclusive: bool,
        /// Caller.
        creds: Creds,
    },
    /// Create a symbolic link.
    Symlink {
        /// Parent directory.
        parent: InodeId,
        /// Entry name.
        name: Vec<u8>,
        /// Target.
        target: Vec<u8>,
        /// Caller.
        creds: Creds,
    },
    /// Add a hard link.
    Link {
        /// Existing inode.
        ino: InodeId,
        /// Directory of the new name.
        new_parent: InodeId,
        /// New name.
        new_name: Vec<u8>,
        /// Caller.
        creds: Creds,
    },
    /// Remove a non-directory entry.
    Unlink {
        /// Directory.
        parent: InodeId,
        /// Name.
        name: Vec<u8>,
        /// Caller.
        creds: Creds,
    },
    /// Remove an empty directory.
    Rmdir {
        /// Directory.
        parent: InodeId,
        /// Name.
        name: Vec<u8>,
        /// Caller.
        creds: Creds,
    },
    /// Move or rename an entry.
    Rename {
        /// Source directory.
        parent: InodeId,
        /// Source name.
        name: Vec<u8>,
        /// Destination directory.
        new_parent: InodeId,
        /// Destination name.
        new_name: Vec<u8>,
        /// renameat2 flags.
        flags: RenameFlags,
        /// Caller.
        creds: Creds,
    },
    /// Change attributes.
    SetAttr {
        /// Inode.
        ino: InodeId,
        /// Changes.
        set: SetAttr,
        /// Caller.
        creds: Creds,
    },
    /// Set an extended attribute.
    SetXattr {
        /// Inode.
        ino: InodeId,
        /// Name, with its namespace prefix (user., trusted., security.).
        name: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// Create/replace semantics.
        mode: XattrMode,
        /// Caller.
        creds: Creds,
    },
    /// Remove an extended attribute.
    RemoveXattr {
        /// Inode.
        ino: InodeId,
        /// Name.
        name: Vec<u8>,
        /// Caller.
        creds: Creds,
    },
    /// Add written extents to a file and grow its size: the commit of a flush or fsync.
    CommitExtents {
        /// File.
        ino: InodeId,
        /// New extents, in write order (later ones shadow earlier ones).
        extents: Vec<Extent>,
        /// The file size the writer saw after its writes; the file grows to it if larger.
        size: u64,
        /// The content version the writer started from (for cross-region conflicts).
        base_version: Option<u64>,
        /// Caller.
        creds: Creds,
        /// Blocks of `extents` whose plaintext the commit carries (a small commit's, not
        /// put yet: docs/adr/0018); the region keeps them until the writer unstages them.
        /// Never part of a record another region receives.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        staged: Vec<StagedBlock>,
    },
    /// Make `[offset, offset + len)` of a file a hole (reads as zeros, holds no block),
    /// keeping its size: fallocate's PUNCH_HOLE, and ZERO_RANGE.
    PunchHole {
        /// File.
        ino: InodeId,
        /// Range start.
        offset: u64,
        /// Range length.
        len: u64,
        /// Caller.
        creds: Creds,
    },
    /// Copy `len` bytes of `src` from `src_offset` to `dst` at `dst_offset` by sharing
    /// extents (no bytes move, like a reflink); holes copy as holes. The copy stops at
    /// the end of `src`; `dst` grows to hold what was copied.
    CopyRange {
        /// Source file.
        src: InodeId,
        /// Offset in the source.
        src_offset: u64,
        /// Destination file (may be the source).
        dst: InodeId,
        /// Offset in the destination.
        dst_offset: u64,
        /// Bytes to copy at most.
        len: u64,
        /// Caller.
        creds: Creds,
    },
    /// A read happened: update atime as ext4's default `relatime` does (only if atime is
    /// not newer than mtime or ctime, or is a day old). Needs no write permission.
    Accessed {
        /// The inode read.
        ino: InodeId,
    },
    /// [`Op::Accessed`] for several files of one volume at once (at most
    /// [`ACCESSED_BATCH_MAX`]): a client gathers the reads of a moment into one write, as
    /// Linux's `lazytime` does. A file removed meanwhile is passed over.
    AccessedBatch {
        /// The inodes read.
        inos: Vec<InodeId>,
    },
    /// Replace the extents of `[offset, offset + len)` by `replacement`, only if they are
    /// still exactly `expected` (the compactor's read); otherwise fail with EAGAIN.
    Compact {
        /// File.
        ino: InodeId,
        /// Range start.
        offset: u64,
        /// Range length.
        len: u64,
        /// The extents overlapping the range when the compactor read it.
        expected: Vec<Extent>,
        /// Whole-block extents covering the same bytes.
        replacement: Vec<Extent>,
    },
    /// Blocks a commit of `ino` staged (see [`Op::CommitExtents`]) are held by the
    /// chunkservers now: the metadata lets go of their bytes. Bookkeeping of this region
    /// only: it changes no file and is never recorded.
    Unstage {
        /// The file whose commit staged them.
        ino: InodeId,
        /// The blocks (at most [`UNSTAGE_MAX`](super::UNSTAGE_MAX)).
        blocks: Vec<BlockId>,
    },
}

impl Op {
    /// The directories whose entries the operation changes (so their size, times and,
    /// for subdirectories, link count), each once.
    pub fn dirs_changed(&self) -> Vec<InodeId> {
        match self {
            Op::Mknod { parent, .. }
            | Op::Symlink { parent, .. }
            | Op::Unlink { parent, .. }
            | Op::Rmdir { parent, .. } => vec![*parent],
            Op::Link { new_parent, .. } => vec![*new_parent],
            Op::Rename {
                parent, new_parent, ..
            } if parent != new_parent => vec![*parent, *new_parent],
            Op::Rename { parent, .. } => vec![*parent],
            _ => Vec::new(),
        }
    }

    /// Whether the operation acts on a volume as a whole (named by volume, not by inode).
    pub fn is_volume_level(&self) -> bool {
        matches!(
            self,
            Op::CreateVolume { .. }
                | Op::DeleteVolume { .. }
                | Op::CloneVolume { .. }
                | Op::SetVolumeQuota { .. }
                | Op::SetVolumeRegions { .. }
                | Op::SetVolumeHome { .. }
        )
    }

    /// Whether a volume's home region decides this change (when the volume has one):
    /// every change of its namespace and content, and a planned move of the home itself;
    /// not the other volume-level changes, nor bookkeeping that needs no single truth
    /// (access times, compaction).
    pub fn decided_at_home(&self) -> bool {
        match self {
            Op::SetVolumeHome { force, .. } => !force,
            Op::Accessed { .. }
            | Op::AccessedBatch { .. }
            | Op::Compact { .. }
            | Op::Unstage { .. } => false,
            op => !op.is_volume_level(),
        }
    }

    /// The inode whose volume the operation changes (a directory for an entry, the file
    /// itself otherwise); none for a volume-level operation, named by volume, and for a
    /// batch of access times.
    pub fn inode_changed(&self) -> Option<InodeId> {
        match self {
            Op::CreateVolume { .. }
            | Op::DeleteVolume { .. }
            | Op::CloneVolume { .. }
            | Op::SetVolumeQuota { .. }
            | Op::SetVolumeRegions { .. }
            | Op::SetVolumeHome { .. }
            | Op::AccessedBatch { .. } => None,
            Op::Mknod { parent, .. }
            | Op::Symlink { parent, .. }
            | Op::Unlink { parent, .. }
            | Op::Rmdir { parent, .. }
            | Op::Rename { parent, .. } => Some(*parent),
            Op::Link { new_parent, .. } => Some(*new_parent),
            Op::SetAttr { ino, .. }
            | Op::SetXattr { ino, .. }
            | Op::RemoveXattr { ino, .. }
            | Op::CommitExtents { ino, .. }
            | Op::PunchHole { ino, .. }
            | Op::Accessed { ino }
            | Op::Compact { ino, .. }
            | Op::Unstage { ino, .. } => Some(*ino),
            Op::CopyRange { dst, .. } => Some(*dst),
        }
    }
}

impl Op {
    /// Every inode the operation names (none for a volume-level one): whoever may change
    /// them all may make it.
    pub fn inodes(&self) -> Vec<InodeId> {
        match self {
            Op::CreateVolume { .. }
            | Op::DeleteVolume { .. }
            | Op::CloneVolume { .. }
            | Op::SetVolumeQuota { .. }
            | Op::SetVolumeRegions { .. }
            | Op::SetVolumeHome { .. } => Vec::new(),
            Op::Mknod { parent, .. }
            | Op::Symlink { parent, .. }
            | Op::Unlink { parent, .. }
            | Op::Rmdir { parent, .. } => vec![*parent],
            Op::Link {
                ino, new_parent, ..
            } => vec![*ino, *new_parent],
            Op::Rename {
                parent, new_parent, ..
            } => vec![*parent, *new_parent],
            Op::SetAttr { ino, .. }
            | Op::SetXattr { ino, .. }
            | Op::RemoveXattr { ino, .. }
            | Op::CommitExtents { ino, .. }
            | Op::PunchHole { ino, .. }
            | Op::Accessed { ino }
            | Op::Compact { ino, .. }
            | Op::Unstage { ino, .. } => vec![*ino],
            Op::CopyRange { src, dst, .. } => vec![*src, *dst],
            Op::AccessedBatch { inos } => inos.clone(),
        }
    }

    /// The blocks the operation makes its file reference (a commit's extents, a
    /// compaction's replacement).
    pub fn blocks_added(&self) -> Vec<BlockId> {
        match self {
            Op::CommitExtents { extents, .. } => extents.iter().map(|e| e.block).collect(),
            Op::Compact { replacement, .. } => replacement.iter().map(|e| e.block).collect(),
            _ => Vec::new(),
        }
    }

    /// The blocks the operation carries staged (see [`Op::CommitExtents`]).
    pub fn staged(&self) -> &[StagedBlock] {
        match self {
            Op::CommitExtents { staged, .. } => staged,
            _ => &[],
        }
    }

    /// The operation without the blocks it carries staged: what is recorded.
    pub fn without_staged(&self) -> Op {
        match self {
            Op::CommitExtents {
                ino,
                extents,
                size,
                base_version,
                creds,
                staged: _,
            } => Op::CommitExtents {
                ino: *ino,
                extents: extents.clone(),
                size: *size,
                base_version: *base_version,
                creds: creds.clone(),
                staged: Vec::new(),
            },
            op => op.clone(),
        }
    }

    /// Whether a reader may make it: recording that a read happened (atime).
    pub fn is_read_side_effect(&self) -> bool {
        matches!(self, Op::Accessed { .. } | Op::AccessedBatch { .. })
    }
}

/// The most inodes one [`Op::AccessedBatch`] names.
pub const ACCESSED_BATCH_MAX: usize = 1024;
