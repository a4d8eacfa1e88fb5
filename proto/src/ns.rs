//! The namespace's contract: inodes, volumes, extents, the operations that change them,
//! the queries that read them, and the errors both can fail with (each mapped to one errno).
//! The metaserver applies these; clients send them; all are serde-encoded on the wire.

use crate::{BlockId, Hlc, InodeId, RegionId};
use serde::{Deserialize, Serialize};

mod op;
mod query;
mod staged;
mod watch;
pub use op::{ACCESSED_BATCH_MAX, Op};
pub use query::{CheckPage, CheckedBlock, DirEntry, LINKS_MAX, LinkCount, Query, QueryReply};
pub use staged::{
    STAGED_BLOCKS_MAX, STAGED_MAX, STAGED_PAGE_BYTES, STAGED_PAGE_MAX, StagedBlock,
    StagedPlacement, StagedRow, UNSTAGE_MAX, check_staged,
};
pub use watch::{Touch, Touched};

/// Longest name of one directory entry, in bytes (as ext4).
pub const NAME_MAX: usize = 255;
/// Most hard links to one inode (and subdirectories of one directory).
pub const LINK_MAX: u32 = 65_000;
/// Longest symlink target, in bytes.
pub const SYMLINK_MAX: usize = 4096;
/// Longest extended attribute name, in bytes.
pub const XATTR_NAME_MAX: usize = 255;
/// Largest extended attribute value, in bytes.
pub const XATTR_VALUE_MAX: usize = 64 * 1024;
/// Most bytes of one inode's extended attribute names, each with its terminating NUL (as
/// Linux's listxattr buffer, `XATTR_LIST_MAX`), past which a new name is refused where a
/// client's change is proposed: so a listing fits, and an inode holds a bounded number of
/// rows (what its removal, copy or leaving drops at once). Inodes named past it before
/// this bound, or by concurrent changes in two regions, may hold more.
pub const XATTR_LIST_MAX: usize = 64 * 1024;
/// Most extents one commit may add: a commit is one Raft entry, applied while every other
/// change waits. (A mount commits at 4,096 dirty ranges of a file.)
pub const COMMIT_EXTENTS_MAX: usize = 65_536;

/// Seconds and nanoseconds since the Unix epoch.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Timespec {
    /// Whole seconds.
    pub sec: i64,
    /// Nanoseconds, below 1e9.
    pub nsec: u32,
}

impl Timespec {
    /// From nanoseconds since the epoch.
    pub fn from_nanos(ns: u64) -> Self {
        Timespec {
            sec: (ns / 1_000_000_000) as i64,
            nsec: (ns % 1_000_000_000) as u32,
        }
    }
}

/// What an inode is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl FileKind {
    /// The S_IFMT bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => 0o100000,
            FileKind::Dir => 0o040000,
            FileKind::Symlink => 0o120000,
            FileKind::CharDev => 0o020000,
            FileKind::BlockDev => 0o060000,
            FileKind::Fifo => 0o010000,
            FileKind::Socket => 0o140000,
        }
    }
}

/// An inode's attributes, as getattr returns them.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Attr {
    /// Inode number.
    pub ino: InodeId,
    /// Kind.
    pub kind: FileKind,
    /// Permission bits, including setuid, setgid and sticky (mode & 0o7777).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Bytes (files), target length (symlinks), 0 otherwise.
    pub size: u64,
    /// Hard links; for directories 2 plus the number of subdirectories.
    pub nlink: u32,
    /// Last access.
    pub atime: Timespec,
    /// Last content change.
    pub mtime: Timespec,
    /// Last attribute change.
    pub ctime: Timespec,
    /// Creation.
    pub crtime: Timespec,
    /// Device number (device nodes).
    pub rdev: u32,
    /// The volume the inode belongs to.
    pub volume: u32,
}

/// How old an atime may get before a read refreshes it even if it is newer than mtime
/// and ctime (relatime's rule).
const RELATIME_MAX_AGE_SECS: i64 = 24 * 60 * 60;

impl Attr {
    /// Whether a read at `now` moves the atime, as Linux's relatime decides: the atime is
    /// not past the last change, or is a day old.
    pub fn atime_due(&self, now: Timespec) -> bool {
        self.atime <= self.mtime
            || self.atime <= self.ctime
            || now.sec.saturating_sub(self.atime.sec) >= RELATIME_MAX_AGE_SECS
    }
}

/// An inode as stored.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Inode {
    /// Attributes.
    pub attr: Attr,
    /// The directory holding it (directories have exactly one; for other kinds, the
    /// directory it was created in).
    pub parent: InodeId,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Vec<u8>>,
    /// Bumped by every content commit: a commit names the version it was written against.
    #[serde(default)]
    pub version: u64,
    /// The stamp of the last change of content (a commit or a truncate). Merging regions
    /// compares it with what a commit's origin saw, to find concurrent writes.
    #[serde(default)]
    pub content: Hlc,
    /// For a conflict copy: the file whose version it keeps (its content stamp names a
    /// version of that file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<InodeId>,
    /// For a file: the stretches whose extents a truncate or a punched hole cut off, left
    /// for the metaservers to drop in steps (nothing reads them meanwhile). In offset
    /// order, apart. Each region of a volume keeps its own (it drops them at its own
    /// pace); an image of the volume for another region carries none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cuts: Vec<Cut>,
}

/// A stretch `[from, to)` of a file whose extents are leftovers of a punched hole, or
/// from `from` on (`to` is `u64::MAX`) of a truncate: none of them is the file's content
/// any more, and none reaches past `to`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Cut {
    /// Where it starts.
    pub from: u64,
    /// One past where it ends.
    pub to: u64,
}

impl Cut {
    /// Whether file offset `at` is in it.
    pub fn holds(&self, at: u64) -> bool {
        (self.from..self.to).contains(&at)
    }
}

/// A piece of a file: `len` bytes at file offset `offset` are bytes
/// `[block_offset, block_offset + len)` of block `block` (whose plaintext has `block_len`
/// bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Extent {
    /// File offset.
    pub offset: u64,
    /// Length in bytes (at least 1).
    pub len: u64,
    /// The block holding the bytes.
    pub block: BlockId,
    /// Offset of the bytes inside the block.
    pub block_offset: u32,
    /// Plaintext length of the whole block.
    pub block_len: u32,
}

impl Extent {
    /// One past the last file offset covered.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// A volume's policy.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct VolumePolicy {
    /// Copies of every block (R).
    pub replicas: u32,
    /// Copies without which a write fails (W).
    pub min_copies: u32,
    /// Largest block, in bytes.
    pub block_size: u32,
    /// Largest sum of file sizes, in bytes (none: unlimited).
    pub quota_bytes: Option<u64>,
    /// Most inodes (none: unlimited).
    pub quota_inodes: Option<u64>,
    /// Regions the volume lives in; its blocks and metadata never leave them. Empty: only
    /// the region that created it.
    pub regions: Vec<RegionId>,
    /// Consistency: none for active-active (every region writes locally and converges);
    /// a home region, one of `regions`, for a volume whose namespace and content commits
    /// are decided there alone (other regions forward every change to it, and refuse
    /// changes while it is unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<RegionId>,
    /// Raised by every change of `home`: a change of the volume is accepted only under
    /// the epoch in force at its stamp, so a home that was replaced while cut off cannot
    /// have its later changes taken as the volume's (they are kept apart instead).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Default for VolumePolicy {
    fn default() -> Self {
        VolumePolicy {
            replicas: 3,
            min_copies: 2,
            block_size: 4 << 20,
            quota_bytes: None,
            quota_inodes: None,
            regions: Vec::new(),
            home: None,
            epoch: 0,
        }
    }
}

/// A volume: a named tree with its own policy.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Volume {
    /// Its id (inodes carry it).
    pub id: u32,
    /// Its name.
    pub name: String,
    /// Its root directory.
    pub root: InodeId,
    /// Its policy.
    pub policy: VolumePolicy,
    /// Sum of file sizes.
    pub used_bytes: u64,
    /// Inodes, the root included.
    pub used_inodes: u64,
    /// When the volume was deleted, for a deleted volume kept as a tombstone (so a
    /// concurrent change from another region can bring it back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Hlc>,
    /// A snapshot: frozen, every change refused with EROFS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// The volume it was copied from (a snapshot's source, a clone's snapshot), by name
    /// as of the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// A copy (snapshot or clone) still being made, in steps: it cannot be mounted yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copying: Option<Copying>,
}

/// How far the copy that makes a volume has come (`Volume::copying`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Copying {
    /// The volume copied, by name as of the copy.
    pub source: String,
    /// Inodes to copy (the root's other than the volume's own root).
    pub inodes: u64,
    /// Inodes copied so far.
    pub copied: u64,
    /// The first of the inode numbers reserved for the copy.
    pub base: u64,
    /// The metaserver (member id) making the copy; another member that leads finds the
    /// copy orphaned and removes it.
    pub by: u64,
}

/// Who is asking: the credentials of the calling process.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Creds {
    /// Effective user.
    pub uid: u32,
    /// Effective group.
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub groups: Vec<u32>,
}

impl Creds {
    /// The superuser.
    pub fn root() -> Self {
        Creds::default()
    }

    /// Whether the caller is in group `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// A time to set: a given one, or the command's own time.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum SetTime {
    /// This time.
    At(Timespec),
    /// The time of the command.
    Now,
}

/// Attribute changes; `None` leaves a field alone.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct SetAttr {
    /// New permission bits (mode & 0o7777).
    pub perm: Option<u16>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend with a hole).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// The caller holds the file open for writing (ftruncate): no write-permission check.
    #[serde(default)]
    pub via_handle: bool,
}

/// Rename flags (renameat2).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct RenameFlags {
    /// Fail with EEXIST instead of replacing the destination.
    pub noreplace: bool,
    /// Swap source and destination atomically; both must exist.
    pub exchange: bool,
}

/// setxattr mode.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum XattrMode {
    /// Create or replace.
    #[default]
    Any,
    /// Fail with EEXIST if present.
    Create,
    /// Fail with ENODATA if absent.
    Replace,
}

/// A command as it goes through Raft: the operation plus what the leader stamped on it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Command {
    /// The operation.
    pub op: Op,
    /// HLC stamp; its region is the origin region.
    pub hlc: Hlc,
    /// Wall time for the timestamps the operation sets.
    pub now: Timespec,
    /// (client id, operation id): a retried command with the same pair is applied once.
    pub request: Option<(u64, u64)>,
    /// The inode number a create takes: one the servers reserved for the client
    /// (`request`), which answered the create alone under a directory lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<InodeId>,
    /// A directory this creates is leased to the client (`request`), in a volume that lives
    /// in one region.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lease: bool,
}

/// A change a mount answered alone under a directory lease, as it sends it later.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Queued {
    /// The client's operation id (a retried batch applies each change once).
    pub request: u64,
    /// The operation.
    pub op: Op,
    /// The time the mount answered it (the leader takes it if its own clock is close).
    pub now: Timespec,
    /// For a create: the reserved inode number it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<InodeId>,
}

/// Most changes in one write-back.
pub const WRITE_BACK_MAX: usize = 4096;
/// Most existing directories one write-back asks the leases of.
pub const ACQUIRE_MAX: usize = 64;

/// What a leader takes in a write-back beyond creates, removals, commits and attribute
/// changes (`WriteBackResponse.level`): this leader's level. An older leader answers 0.
pub const WRITE_BACK_LEVEL: u32 = WRITE_BACK_ALL;
/// The level from which a leader takes renames of files within a directory.
pub const WRITE_BACK_RENAMES: u32 = 1;
/// The level from which it also takes symlinks, hard links, renames between directories
/// and of directories.
pub const WRITE_BACK_ALL: u32 = 2;
/// Most entries of an existing directory leased on demand: its holder is sent them all,
/// and keeps them.
pub const ACQUIRE_MAX_ENTRIES: usize = 10_000;

/// The lease of an existing directory, granted on demand (docs/adr/0006): the directory
/// and every entry it holds at the grant, which the holder keeps from then on.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Granted {
    /// The directory's attributes.
    pub dir: Attr,
    /// Its entries, in name order.
    pub entries: Vec<DirEntry>,
}

/// What an operation did where it was first applied, which a replay in another region (or
/// after reordering) needs to reproduce it and to recognise concurrent changes.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Effects {
    /// The inode it created (creates; a volume's root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<InodeId>,
    /// The volume it created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_volume: Option<u32>,
    /// The inode a rename replaced at its destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<InodeId>,
    /// The content stamp of the file it wrote or removed, as it was at the origin: the
    /// version this change was based on. Two changes based on one version did not see each
    /// other and are concurrent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<Hlc>,
    /// The inode an unlink, rmdir or rename acted on, so a replay acts on that inode
    /// whatever name it has by then, never on another one that took the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<InodeId>,
    /// The content stamp of the file a rename replaced, as it was at the origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_seen: Option<Hlc>,
    /// The link count the inode an unlink or a rename removed a name of had at the origin:
    /// a removal that did not take the last name there never takes it in a replay (where
    /// another region removed the other names concurrently).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<u32>,
    /// What a range copy copied at the origin (bytes, and the extents at their new
    /// offsets): a replay copies exactly that, whatever the source holds by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied: Option<(u64, Vec<Extent>)>,
    /// A content change of a conflict copy: the file it copies (whose version `seen` is),
    /// so a replay can make the copy again where the merged order did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<InodeId>,
    /// A volume copy: the first of the inode numbers it took (one each, in the order the
    /// copy meets them), so a replay gives the copied inodes the same ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_base: Option<u64>,
}

/// A committed operation as regions exchange it: what ran, when (its HLC stamp names the
/// origin region), what it did there, and where its volume may live.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Stamp; its region is the origin.
    pub hlc: Hlc,
    /// Wall time for the timestamps the operation sets.
    pub now: Timespec,
    /// The operation.
    pub op: Op,
    /// What it did at the origin.
    pub effects: Effects,
    /// The volume it changed.
    pub volume: u32,
    /// The regions that volume lives in (residency): nobody else may receive the record.
    pub regions: Vec<RegionId>,
    /// What the origin had applied of each peer region when it ran the operation (the
    /// peer's change-log sequence): the records this one may depend on. A region applies
    /// it only once it holds those too (causal delivery), so no region ever builds on a
    /// view that the merged order will not have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<(RegionId, u64)>,
    /// The client that asked for it, where it was first applied: the feed of changes a
    /// mount follows leaves out its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<u64>,
    /// For a change of a volume with a home: the volume's epoch its origin accepted it
    /// under.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
}

impl Record {
    /// Whether `region` may hold this record.
    pub fn allowed_in(&self, region: RegionId) -> bool {
        self.regions.contains(&region) || (self.regions.is_empty() && self.hlc.region == region)
    }
}

/// A conflict found while merging the operations of several regions, and how it ended.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Conflict {
    /// The stamp of the operation that met the conflict.
    pub hlc: Hlc,
    /// What happened: `create`, `write`, `delete`, `move`, `resurrect`, `skip`.
    pub kind: String,
    /// The inode concerned, if any.
    pub ino: Option<InodeId>,
    /// A sentence for people.
    pub detail: String,
}

/// What a successful mutation returns.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Nothing to return.
    Done,
    /// The attributes of the created or changed inode.
    Attr(Attr),
    /// A volume.
    Volume(Volume),
    /// Bytes copied by a `CopyRange`, and the destination's attributes after it.
    Copied(u64, Attr),
}

/// Why a namespace operation failed; each maps to one errno.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error, Serialize, Deserialize)]
pub enum NsError {
    /// ENOENT.
    #[error("not found: {0}")]
    NotFound(String),
    /// EEXIST.
    #[error("already exists: {0}")]
    Exists(String),
    /// ENOTDIR.
    #[error("not a directory: {0}")]
    NotDir(String),
    /// EISDIR.
    #[error("is a directory: {0}")]
    IsDir(String),
    /// ENOTEMPTY.
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    /// EINVAL.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// ENAMETOOLONG.
    #[error("name too long: {0} bytes, at most {NAME_MAX}")]
    NameTooLong(usize),
    /// EMLINK.
    #[error("too many links: {0}")]
    TooManyLinks(String),
    /// EXDEV.
    #[error("cross-volume link or rename: {0}")]
    CrossVolume(String),
    /// EPERM.
    #[error("operation not permitted: {0}")]
    Perm(String),
    /// EACCES.
    #[error("permission denied: {0}")]
    Access(String),
    /// EDQUOT.
    #[error("quota exceeded: {0}")]
    Quota(String),
    /// ENODATA.
    #[error("no such attribute: {0}")]
    NoData(String),
    /// E2BIG / ERANGE.
    #[error("too large: {0}")]
    TooBig(String),
    /// EOPNOTSUPP.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// EAGAIN: a conditional change lost a race; read again and retry.
    #[error("changed concurrently: {0}")]
    Conflict(String),
    /// EIO: the store itself failed.
    #[error("metadata store: {0}")]
    Store(String),
    /// EROFS: the volume is a snapshot.
    #[error("read-only volume: {0}")]
    ReadOnly(String),
    /// ENOSPC: no room left where the change goes (an inode's extended attribute names).
    #[error("no space: {0}")]
    NoSpace(String),
    /// EIO: a region the answer must come from cannot be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
}

impl NsError {
    /// The errno a filesystem client returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            NsError::NotFound(_) => libc_errno::ENOENT,
            NsError::Exists(_) => libc_errno::EEXIST,
            NsError::NotDir(_) => libc_errno::ENOTDIR,
            NsError::IsDir(_) => libc_errno::EISDIR,
            NsError::NotEmpty(_) => libc_errno::ENOTEMPTY,
            NsError::Invalid(_) => libc_errno::EINVAL,
            NsError::NameTooLong(_) => libc_errno::ENAMETOOLONG,
            NsError::TooManyLinks(_) => libc_errno::EMLINK,
            NsError::CrossVolume(_) => libc_errno::EXDEV,
            NsError::Perm(_) => libc_errno::EPERM,
            NsError::Access(_) => libc_errno::EACCES,
            NsError::Quota(_) => libc_errno::EDQUOT,
            NsError::NoData(_) => libc_errno::ENODATA,
            NsError::TooBig(_) => libc_errno::E2BIG,
            NsError::NotSupported(_) => libc_errno::EOPNOTSUPP,
            NsError::Conflict(_) => libc_errno::EAGAIN,
            NsError::Store(_) => libc_errno::EIO,
            NsError::ReadOnly(_) => libc_errno::EROFS,
            NsError::NoSpace(_) => libc_errno::ENOSPC,
            NsError::Unreachable(_) => libc_errno::EIO,
        }
    }
}

/// Linux errno values (stable ABI numbers), so this crate needs no libc binding.
pub mod libc_errno {
    #![allow(missing_docs)]
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EBADF: i32 = 9;
    pub const E2BIG: i32 = 7;
    pub const EAGAIN: i32 = 11;
    pub const EACCES: i32 = 13;
    pub const EEXIST: i32 = 17;
    pub const EXDEV: i32 = 18;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const ERANGE: i32 = 34;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EMLINK: i32 = 31;
    pub const EROFS: i32 = 30;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOTEMPTY: i32 = 39;
    pub const ENODATA: i32 = 61;
    pub const ENOSYS: i32 = 38;
    pub const EOPNOTSUPP: i32 = 95;
    pub const EDQUOT: i32 = 122;
}
