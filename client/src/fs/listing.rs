//! A directory's entries as one listing: every name in one buffer, beside a table of the
//! entries, rather than an allocation per name. A listing of 5,000 names was 5,000
//! allocations made at opendir and 5,000 frees at releasedir, about a third of the mount's
//! time for a cold `ls` of such a directory.

use meridian_proto::InodeId;
use meridian_proto::ns::FileKind;

/// Entries in the order they were pushed (a directory's: name order).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listing {
    names: Vec<u8>,
    /// Each entry: where its name ends in `names`, its inode and kind.
    entries: Vec<(usize, InodeId, FileKind)>,
}

impl Listing {
    /// An empty listing with room for `entries` entries.
    pub fn with_capacity(entries: usize) -> Self {
        Listing {
            names: Vec::with_capacity(entries * 16),
            entries: Vec::with_capacity(entries),
        }
    }

    /// Adds an entry at the end.
    pub fn push(&mut self, name: &[u8], ino: InodeId, kind: FileKind) {
        self.names.extend_from_slice(name);
        self.entries.push((self.names.len(), ino, kind));
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries from the `from`th on: name, inode, kind.
    pub fn starting_at(&self, from: usize) -> impl Iterator<Item = (&[u8], InodeId, FileKind)> {
        let start = |i: usize| match i {
            0 => 0,
            i => self.entries[i - 1].0,
        };
        (from.min(self.len())..self.len()).map(move |i| {
            let (end, ino, kind) = self.entries[i];
            (&self.names[start(i)..end], ino, kind)
        })
    }

    /// Every entry: name, inode, kind.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], InodeId, FileKind)> {
        self.starting_at(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_gives_back_each_name_with_its_inode_from_any_entry_on() {
        let mut l = Listing::with_capacity(1);
        assert!(l.is_empty());
        l.push(b"a", InodeId(2), FileKind::File);
        l.push(b"", InodeId(3), FileKind::Dir);
        l.push(b"longer name", InodeId(4), FileKind::Symlink);
        assert_eq!(l.len(), 3);
        let all: Vec<_> = l.iter().collect();
        assert_eq!(
            all,
            [
                (&b"a"[..], InodeId(2), FileKind::File),
                (&b""[..], InodeId(3), FileKind::Dir),
                (&b"longer name"[..], InodeId(4), FileKind::Symlink),
            ]
        );
        assert_eq!(l.starting_at(2).collect::<Vec<_>>(), all[2..]);
        assert_eq!(l.starting_at(3).count(), 0);
        assert_eq!(l.starting_at(9).count(), 0);
    }
}
