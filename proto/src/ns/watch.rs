//! What a change to the namespace makes stale in a client's kernel caches: the feed a
//! mount follows so that it can let the kernel keep entries and attributes for longer.

use serde::{Deserialize, Serialize};

use super::{Op, Record};
use crate::InodeId;

/// One thing a change made stale.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Touch {
    /// The name `name` in directory `parent` now means something else (or nothing): the
    /// kernel must forget the entry, negative or not, and the directory's attributes.
    Entry {
        /// The directory.
        parent: InodeId,
        /// The name.
        name: Vec<u8>,
    },
    /// The attributes of an inode changed (owner, mode, times, link count, xattrs).
    Attrs(InodeId),
    /// The content and size of a file changed: its cached pages are stale too.
    Content(InodeId),
}

/// The changes of one answer of the feed.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Touched {
    /// (client that made it, if known; what it made stale), in log order.
    pub changes: Vec<(Option<u64>, Vec<Touch>)>,
}

impl Record {
    /// What this change made stale in other clients' caches.
    pub fn touches(&self) -> Vec<Touch> {
        let entry = |parent: &InodeId, name: &[u8]| Touch::Entry {
            parent: *parent,
            name: name.to_vec(),
        };
        let mut out = Vec::new();
        match &self.op {
            Op::CreateVolume { .. }
            | Op::DeleteVolume { .. }
            | Op::SetVolumeQuota { .. }
            | Op::SetVolumeRegions { .. }
            | Op::SetVolumeHome { .. }
            | Op::CloneVolume { .. }
            | Op::Compact { .. }
            | Op::Unstage { .. } => {}
            Op::Mknod { parent, name, .. } | Op::Symlink { parent, name, .. } => {
                out.push(entry(parent, name));
            }
            Op::Link {
                ino,
                new_parent,
                new_name,
                ..
            } => {
                out.push(entry(new_parent, new_name));
                out.push(Touch::Attrs(*ino));
            }
            Op::Unlink { parent, name, .. } | Op::Rmdir { parent, name, .. } => {
                out.push(entry(parent, name));
                out.extend(self.effects.target.map(Touch::Attrs));
            }
            Op::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            } => {
                out.push(entry(parent, name));
                out.push(entry(new_parent, new_name));
                out.extend(self.effects.target.map(Touch::Attrs));
                out.extend(self.effects.replaced.map(Touch::Attrs));
            }
            Op::SetAttr { ino, set, .. } => out.push(if set.size.is_some() {
                Touch::Content(*ino)
            } else {
                Touch::Attrs(*ino)
            }),
            Op::SetXattr { ino, .. } | Op::RemoveXattr { ino, .. } | Op::Accessed { ino } => {
                out.push(Touch::Attrs(*ino));
            }
            Op::AccessedBatch { inos } => out.extend(inos.iter().copied().map(Touch::Attrs)),
            Op::CommitExtents { ino, .. } | Op::PunchHole { ino, .. } => {
                out.push(Touch::Content(*ino));
            }
            Op::CopyRange { dst, .. } => out.push(Touch::Content(*dst)),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::{Creds, Effects, RenameFlags, Timespec};
    use crate::{Hlc, RegionId};

    fn record(op: Op, effects: Effects) -> Record {
        Record {
            hlc: Hlc {
                wall_ms: 1,
                counter: 0,
                region: RegionId(1),
            },
            now: Timespec::default(),
            op,
            effects,
            volume: 1,
            regions: Vec::new(),
            epoch: 0,
            deps: Vec::new(),
            client: None,
        }
    }

    #[test]
    fn a_rename_makes_both_names_and_both_inodes_stale() {
        let ino = |n| InodeId::new(RegionId(1), n).unwrap();
        let r = record(
            Op::Rename {
                parent: ino(1),
                name: b"a".to_vec(),
                new_parent: ino(2),
                new_name: b"b".to_vec(),
                flags: RenameFlags::default(),
                creds: Creds::root(),
            },
            Effects {
                target: Some(ino(3)),
                replaced: Some(ino(4)),
                ..Effects::default()
            },
        );
        assert_eq!(
            r.touches(),
            vec![
                Touch::Entry {
                    parent: ino(1),
                    name: b"a".to_vec()
                },
                Touch::Entry {
                    parent: ino(2),
                    name: b"b".to_vec()
                },
                Touch::Attrs(ino(3)),
                Touch::Attrs(ino(4)),
            ]
        );
    }

    #[test]
    fn a_write_makes_content_stale_and_a_chmod_only_attributes() {
        let ino = InodeId::new(RegionId(1), 9).unwrap();
        let write = record(
            Op::CommitExtents {
                ino,
                extents: Vec::new(),
                size: 5,
                base_version: None,
                creds: Creds::root(),
                staged: Vec::new(),
            },
            Effects::default(),
        );
        assert_eq!(write.touches(), vec![Touch::Content(ino)]);
        let chmod = record(
            Op::SetAttr {
                ino,
                set: crate::ns::SetAttr {
                    perm: Some(0o600),
                    ..Default::default()
                },
                creds: Creds::root(),
            },
            Effects::default(),
        );
        assert_eq!(chmod.touches(), vec![Touch::Attrs(ino)]);
    }
}
