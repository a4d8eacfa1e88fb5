//! A file's space beyond plain writes: fallocate's modes, holes and where they are
//! (SEEK_DATA, SEEK_HOLE), and copies of ranges that share extents on the servers (no
//! bytes pass through the client). Each first commits what this client has buffered for
//! the files involved, so the servers' extent map is the one authority.

use meridian_proto::InodeId;
use meridian_proto::ns::{Creds, Op, Reply, libc_errno};

use super::{Errno, FileSystem, attr_of};

/// fallocate(2) mode bits Linux FUSE passes through.
pub const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
/// Deallocate the range (with KEEP_SIZE).
pub const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
/// Zero the range.
pub const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

/// Where `lseek` looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    /// The first byte of data at or after the offset (SEEK_DATA).
    Data,
    /// The first byte of a hole at or after the offset (SEEK_HOLE); the end of the file is
    /// one.
    Hole,
}

impl FileSystem {
    /// fallocate(2): mode 0 grows the file to cover the range (space is not reserved ahead
    /// on a distributed store); KEEP_SIZE alone changes nothing; PUNCH_HOLE (with
    /// KEEP_SIZE) makes the range a hole; ZERO_RANGE makes it a hole and, without
    /// KEEP_SIZE, grows the file to cover it. Other modes: EOPNOTSUPP.
    pub async fn fallocate(
        &self,
        ino: InodeId,
        offset: u64,
        len: u64,
        mode: i32,
        creds: &Creds,
    ) -> Result<(), Errno> {
        let known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
        let punch = mode & FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & FALLOC_FL_ZERO_RANGE != 0;
        let keep = mode & FALLOC_FL_KEEP_SIZE != 0;
        if mode & !known != 0 || (punch && (zero || !keep)) {
            return Err(libc_errno::EOPNOTSUPP);
        }
        if len == 0 {
            return Err(libc_errno::EINVAL);
        }
        let end = offset.checked_add(len).ok_or(libc_errno::EFBIG)?;
        self.flush_inode(ino).await?;
        // Before and after: a read view taken while the change lands is stale too.
        self.changing(ino);
        let result = self.allocate(ino, offset, len, end, mode, creds).await;
        self.changing(ino);
        result
    }

    async fn allocate(
        &self,
        ino: InodeId,
        offset: u64,
        len: u64,
        end: u64,
        mode: i32,
        creds: &Creds,
    ) -> Result<(), Errno> {
        let punch = mode & FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & FALLOC_FL_ZERO_RANGE != 0;
        let keep = mode & FALLOC_FL_KEEP_SIZE != 0;
        if punch || zero {
            self.mutate(Op::PunchHole {
                ino,
                offset,
                len,
                creds: creds.clone(),
            })
            .await?;
        }
        if !keep {
            // Grows only: a commit of no extents never makes a file smaller, whatever
            // size this client believed it had.
            self.mutate(Op::CommitExtents {
                ino,
                extents: Vec::new(),
                size: end,
                base_version: None,
                creds: creds.clone(),
                staged: Vec::new(),
            })
            .await?;
        } else if !(punch || zero) {
            // KEEP_SIZE alone: the file must exist and be a file; nothing to reserve.
            let attr = self.committed_attr(ino).await?;
            if attr.kind != meridian_proto::ns::FileKind::File {
                return Err(libc_errno::EINVAL);
            }
        }
        Ok(())
    }

    /// lseek(2) with SEEK_DATA or SEEK_HOLE from `offset`: ENXIO at or past the end.
    pub async fn seek(&self, ino: InodeId, offset: u64, whence: Seek) -> Result<u64, Errno> {
        self.flush_inode(ino).await?;
        let size = self.committed_attr(ino).await?.size;
        if offset >= size {
            return Err(ENXIO);
        }
        match whence {
            // The first extent from `offset` on is all it takes.
            Seek::Data => self
                .committed_extents(ino, offset, size - offset, Some(1))
                .await?
                .iter()
                .find(|e| e.end() > offset)
                .map(|e| e.offset.max(offset))
                .filter(|&at| at < size)
                .ok_or(ENXIO),
            // The extents from `offset` on, a page at a time (a file of a million
            // extents does not fit one answer), until one leaves a gap.
            Seek::Hole => {
                let mut at = offset;
                loop {
                    let page = self
                        .committed_extents(ino, at, size - at, Some(SEEK_PAGE))
                        .await?;
                    match hole_from(at, &page, page.len() >= SEEK_PAGE as usize) {
                        Walk::Hole(hole) => return Ok(hole.min(size)),
                        Walk::On(next) if next < size => at = next,
                        Walk::On(_) => return Ok(size),
                    }
                }
            }
        }
    }

    /// copy_file_range(2): copies up to `len` bytes on the servers by sharing extents;
    /// returns how many were copied (0 at or past the end of the source).
    #[allow(clippy::too_many_arguments)]
    pub async fn copy_range(
        &self,
        src: InodeId,
        src_offset: u64,
        dst: InodeId,
        dst_offset: u64,
        len: u64,
        creds: &Creds,
    ) -> Result<u64, Errno> {
        self.flush_inode(src).await?;
        if dst != src {
            self.flush_inode(dst).await?;
        }
        // Before and after: a read view taken while the copy lands is stale too.
        self.changing(dst);
        let result = self
            .mutate(Op::CopyRange {
                src,
                src_offset,
                dst,
                dst_offset,
                len,
                creds: creds.clone(),
            })
            .await;
        self.changing(dst);
        match result? {
            Reply::Copied(n, _) => Ok(n),
            other => attr_of(other).map(|_| 0),
        }
    }
}

/// No such device or address: lseek past the data.
const ENXIO: Errno = 6;

/// Most extents a SEEK_HOLE asks for at a time.
const SEEK_PAGE: u32 = 16_384;

/// Where a walk for a hole from `at` is after a page of the extents from `at` on.
#[derive(Debug, PartialEq, Eq)]
enum Walk {
    /// The hole starts here.
    Hole(u64),
    /// The page held data up to here, and more may follow (it was `full`).
    On(u64),
}

fn hole_from(mut at: u64, page: &[meridian_proto::ns::Extent], full: bool) -> Walk {
    for e in page {
        if e.offset > at {
            return Walk::Hole(at);
        }
        at = at.max(e.end());
    }
    if full { Walk::On(at) } else { Walk::Hole(at) }
}

#[cfg(test)]
mod tests {
    use meridian_proto::BlockId;
    use meridian_proto::ns::Extent;

    use super::{Walk, hole_from};

    fn at(offset: u64, len: u64) -> Extent {
        Extent {
            offset,
            len,
            block: BlockId::of(b"b"),
            block_offset: 0,
            block_len: len as u32,
        }
    }

    #[test]
    fn a_hole_is_found_in_a_page_or_the_walk_goes_on_past_a_full_one() {
        // A gap inside the page, one at its end, the page's first extent across `at`.
        assert_eq!(hole_from(0, &[at(0, 10), at(20, 5)], true), Walk::Hole(10));
        assert_eq!(hole_from(5, &[at(0, 10), at(10, 5)], false), Walk::Hole(15));
        assert_eq!(hole_from(3, &[], false), Walk::Hole(3));
        // A full page of data with no gap: the next starts where it ends.
        assert_eq!(hole_from(0, &[at(0, 10), at(10, 5)], true), Walk::On(15));
        // Data starting past `at`: `at` is in a hole.
        assert_eq!(hole_from(2, &[at(4, 1)], true), Walk::Hole(2));
    }
}
