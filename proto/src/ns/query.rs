//! The queries that read the namespace, and their replies.

use serde::{Deserialize, Serialize};

use super::*;

/// A directory entry as readdir returns it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DirEntry {
    /// Name.
    pub name: Vec<u8>,
    /// Inode.
    pub ino: InodeId,
    /// Kind.
    pub kind: FileKind,
}

/// A read of the namespace.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Query {
    /// The entry `name` in `parent`.
    Lookup {
        /// Directory.
        parent: InodeId,
        /// Name.
        name: Vec<u8>,
        /// Caller.
        creds: Creds,
    },
    /// Attributes of an inode.
    GetAttr {
        /// Inode.
        ino: InodeId,
    },
    /// A page of a directory.
    ReadDir {
        /// Directory.
        ino: InodeId,
        /// Continue after this name.
        after: Option<Vec<u8>>,
        /// Most entries to return.
        limit: u32,
        /// Caller.
        creds: Creds,
    },
    /// A symlink's target.
    ReadLink {
        /// Symlink.
        ino: InodeId,
    },
    /// An xattr value.
    GetXattr {
        /// Inode.
        ino: InodeId,
        /// Name.
        name: Vec<u8>,
        /// Caller.
        creds: Creds,
    },
    /// Xattr names.
    ListXattr {
        /// Inode.
        ino: InodeId,
        /// Caller.
        creds: Creds,
    },
    /// A file's attributes and the extents overlapping a range of it below its size, read
    /// together (what a read needs, in one round trip).
    View {
        /// File.
        ino: InodeId,
        /// Range start.
        offset: u64,
        /// Range length.
        len: u64,
    },
    /// Extents overlapping a range.
    Extents {
        /// File.
        ino: InodeId,
        /// Range start.
        offset: u64,
        /// Range length.
        len: u64,
        /// At most this many, the first from `offset` on (none: all; a server older than
        /// this field returns all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// A volume by name.
    Volume {
        /// Name.
        name: String,
    },
    /// Every volume.
    Volumes,
    /// Conflicts met while merging regions, oldest first, after a stamp.
    Conflicts {
        /// Continue after this stamp.
        after: Option<Hlc>,
        /// Most records.
        limit: u32,
    },
    /// Committed operations from a change log sequence number on.
    Changes {
        /// First sequence number.
        from: u64,
        /// Most records.
        limit: u32,
    },
    /// How many extents reference each block (garbage collection asks).
    BlockRefs {
        /// Blocks.
        blocks: Vec<BlockId>,
    },
    /// The plaintext of `block`, which the extent of `ino` at `offset` names, while the
    /// metadata holds it staged (docs/adr/0018): what a reader asks when no chunkserver
    /// has the block yet. Answers [`QueryReply::Bytes`], or not found.
    Staged {
        /// The file read.
        ino: InodeId,
        /// Where its extent naming `block` starts.
        offset: u64,
        /// The block.
        block: BlockId,
    },
    /// A page of the blocks the metadata holds staged, by id after `after` (at most
    /// `limit`, and [`STAGED_PAGE_BYTES`](super::STAGED_PAGE_BYTES) of plaintext): what a
    /// chunkserver adopts when their writer has not put them. Answers
    /// [`QueryReply::StagedBlocks`].
    StagedBlocks {
        /// Start after this block.
        after: Option<BlockId>,
        /// Most blocks.
        limit: u32,
    },
    /// The directory leases held (docs/adr/0006), by directory inode after `after`, at
    /// most `limit`. Answers [`QueryReply::Leases`].
    Leases {
        /// Start after this directory inode number.
        after: u64,
        /// Most leases.
        limit: u32,
    },
    /// Checks one page of the namespace, by inode number (`meridian admin fsck`).
    Check {
        /// Start at this inode number.
        from: u64,
        /// Most inodes to check.
        limit: u32,
    },
    /// The link count of each of `inodes` (files, not directories) and the names that
    /// lead to it, counted over every directory entry in one read (`meridian admin fsck`,
    /// for the files whose link counts its pages did not balance: a page reads one range
    /// of inodes, a file's names may be in others). At most [`LINKS_MAX`] inodes: each
    /// query reads every entry once. Answers
    /// [`QueryReply::Links`].
    Links {
        /// The inodes.
        inodes: Vec<u64>,
    },
}

/// Most inodes one [`Query::Links`] asks about.
pub const LINKS_MAX: usize = 10_000;

impl Query {
    /// The inode the query reads, for the queries that read one (the others read volumes,
    /// or the region's bookkeeping).
    pub fn inode(&self) -> Option<InodeId> {
        match self {
            Query::Lookup { parent, .. } => Some(*parent),
            Query::GetAttr { ino }
            | Query::ReadDir { ino, .. }
            | Query::ReadLink { ino }
            | Query::GetXattr { ino, .. }
            | Query::ListXattr { ino, .. }
            | Query::View { ino, .. }
            | Query::Extents { ino, .. }
            | Query::Staged { ino, .. } => Some(*ino),
            Query::Volume { .. }
            | Query::Volumes
            | Query::Conflicts { .. }
            | Query::Changes { .. }
            | Query::BlockRefs { .. }
            | Query::StagedBlocks { .. }
            | Query::Leases { .. }
            | Query::Check { .. }
            | Query::Links { .. } => None,
        }
    }

    /// The inode whose entries or attributes this reads, where another client's change of
    /// a directory's entries would show (a leased directory is recalled first).
    pub fn reads_dir(&self) -> Option<InodeId> {
        match self {
            Query::Lookup { parent, .. } => Some(*parent),
            Query::GetAttr { ino } | Query::ReadDir { ino, .. } => Some(*ino),
            _ => None,
        }
    }
}

/// The answer to a [`Query`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum QueryReply {
    /// Attributes.
    Attr(Attr),
    /// A page of directory entries and the cursor to continue from.
    Dir {
        /// Entries.
        entries: Vec<DirEntry>,
        /// Next cursor, if there is more.
        next: Option<Vec<u8>>,
    },
    /// Bytes (symlink target, xattr value).
    Bytes(Vec<u8>),
    /// Names (xattrs).
    Names(Vec<Vec<u8>>),
    /// Staged blocks, by id ([`Query::StagedBlocks`]); fewer than asked when none follow
    /// or the page is full of bytes.
    StagedBlocks(Vec<StagedRow>),
    /// Extents.
    Extents(Vec<Extent>),
    /// A file's attributes and extents (`Query::View`).
    View {
        /// Attributes.
        attr: Attr,
        /// Extents overlapping the range asked, below the size.
        extents: Vec<Extent>,
    },
    /// One volume.
    Volume(Volume),
    /// Volumes.
    Volumes(Vec<Volume>),
    /// Conflicts.
    Conflicts(Vec<Conflict>),
    /// Change log records (sequence, JSON).
    Changes(Vec<(u64, Vec<u8>)>),
    /// Reference counts, one per asked block, and how settled the region's metadata is.
    BlockRefs {
        /// Extents referencing each block, in the order asked.
        refs: Vec<u64>,
        /// The oldest wall time any peer region's records have reached here (ms since the
        /// epoch); `u64::MAX` with no peers. Kept for chunkservers of earlier versions: a
        /// peer's wall clock says nothing about this region's, so it is not a safe bound.
        settled_ms: u64,
        /// The newest stamp of anything applied here (local records, promises, and every
        /// peer's frontier). A block unreferenced when this was read can be deleted once
        /// `settled` reaches it: every record written without knowledge of that state has
        /// arrived by then. `None` until the region has stamped anything.
        #[serde(default)]
        now: Option<Hlc>,
        /// The settled bound: every record of any region written without knowledge of a
        /// record older than this has been applied here. `None` until every peer has sent
        /// its marks.
        #[serde(default)]
        settled: Option<Hlc>,
    },
    /// One page of a namespace check.
    Check(CheckPage),
    /// Leased directories and the client holding each ([`Query::Leases`]).
    Leases(Vec<(InodeId, u64)>),
    /// Link counts and names, one per inode asked, in the order asked ([`Query::Links`]).
    Links(Vec<LinkCount>),
}

/// A file's link count against the directory entries naming it ([`Query::Links`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LinkCount {
    /// The inode.
    pub ino: u64,
    /// Its link count; `None` if it is not a live file (gone, or a directory).
    pub nlink: Option<u32>,
    /// The directory entries that name it.
    pub names: u32,
}

/// A block referenced by extents of a checked page.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CheckedBlock {
    /// The block.
    pub block: BlockId,
    /// The most copies any of the volumes referencing it wants.
    pub replicas: u32,
    /// One inode that references it (for the report).
    pub inode: InodeId,
    /// The metadata holds its plaintext staged (docs/adr/0018): no chunkserver need hold
    /// it yet.
    #[serde(default)]
    pub staged: bool,
}

/// What one page of `Query::Check` found.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct CheckPage {
    /// Inodes checked (live and removed ones kept as tombstones).
    pub inodes: u64,
    /// Directory entries checked.
    pub dirents: u64,
    /// Extents checked.
    pub extents: u64,
    /// Every block the page's extents reference.
    pub blocks: Vec<CheckedBlock>,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
    /// The inode number to continue from, if there is more.
    pub next: Option<u64>,
    /// Per file (not directory) of the page or named by one of its directories: its link
    /// count (where it is of the page) less the names of it in the page's directories,
    /// where that is not zero. Summed over every page, a file whose link count matches its
    /// names comes to zero. `None` from a server that does not count them.
    #[serde(default)]
    pub links: Option<Vec<(u64, i64)>>,
}
