//! What a record may read or write, for the merge to tell which records commute (ADR
//! 0009): a late record undoes only the newer records whose footprint meets its own.

use std::collections::BTreeSet;

use meridian_proto::InodeId;

use super::tables::{Before, Tab};
use super::types::*;

/// What a record may read or write, for deciding which records commute: the inodes it
/// names or whose rows it wrote (a directory's entries count as the directory), whether
/// it moves something between directories (which reads ancestry: every such move meets
/// every other), and whether it touches something shared by everything (a volume's row
/// beyond its usage, or a count written whole by an older version).
#[derive(Clone, Debug, Default)]
pub(crate) struct Footprint {
    all: bool,
    tree: bool,
    inodes: BTreeSet<u64>,
}

impl Footprint {
    /// Whether two records touching these may not be reordered.
    pub(crate) fn meets(&self, other: &Footprint) -> bool {
        self.all
            || other.all
            || (self.tree && other.tree)
            || !self.inodes.is_disjoint(&other.inodes)
    }

    pub(crate) fn add(&mut self, other: &Footprint) {
        self.all |= other.all;
        self.tree |= other.tree;
        self.inodes.extend(other.inodes.iter().copied());
    }

    /// What the operation and what it did at its origin name.
    pub(crate) fn of_record(record: &Record) -> Footprint {
        let mut f = Footprint::default();
        let mut name = |i: &InodeId| {
            f.inodes.insert(i.0);
        };
        match &record.op {
            Op::CreateVolume { .. }
            | Op::DeleteVolume { .. }
            | Op::CloneVolume { .. }
            | Op::SetVolumeQuota { .. }
            | Op::SetVolumeRegions { .. } => {
                return Footprint {
                    all: true,
                    ..Footprint::default()
                };
            }
            Op::Mknod { parent, .. }
            | Op::Symlink { parent, .. }
            | Op::Unlink { parent, .. }
            | Op::Rmdir { parent, .. } => name(parent),
            Op::Rename {
                parent, new_parent, ..
            } => {
                name(parent);
                name(new_parent);
            }
            Op::Link {
                ino, new_parent, ..
            } => {
                name(ino);
                name(new_parent);
            }
            Op::SetAttr { ino, .. }
            | Op::SetXattr { ino, .. }
            | Op::RemoveXattr { ino, .. }
            | Op::CommitExtents { ino, .. }
            | Op::PunchHole { ino, .. }
            | Op::Accessed { ino }
            | Op::Compact { ino, .. } => name(ino),
            Op::CopyRange { src, dst, .. } => {
                name(src);
                name(dst);
            }
            Op::AccessedBatch { inos } => inos.iter().for_each(&mut name),
        }
        let fx = &record.effects;
        // (A write to a conflict copy may make the copy again from the file it copies.)
        for i in [fx.created, fx.target, fx.replaced, fx.copy_of]
            .into_iter()
            .flatten()
        {
            name(&i);
        }
        // Every rename: one within a directory acts as a move when an earlier record
        // moved the entry's directory, and then walks ancestry.
        if matches!(record.op, Op::Rename { .. }) {
            f.tree = true;
        }
        f
    }

    /// Adds what a record's undo images say it wrote.
    pub(crate) fn add_images(&mut self, images: &[Before]) {
        for Before(tab, key, _) in images {
            match tab {
                Tab::Inodes | Tab::Dirents | Tab::Extents | Tab::Xattrs | Tab::Tombs => {
                    if let Some(b) = key.get(..8).and_then(|b| b.try_into().ok()) {
                        self.inodes.insert(u64::from_be_bytes(b));
                    }
                }
                // Written whole: undoing it would take back what others changed since.
                Tab::Volumes | Tab::Refs => self.all = true,
                Tab::RefsBy | Tab::UsageBy | Tab::Conflicts | Tab::Unref => {}
            }
        }
    }
}
