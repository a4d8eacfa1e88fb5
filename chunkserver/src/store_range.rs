//! Range reads of stored blocks: only the 16 KiB groups covering a range (and the
//! block's outboard, kept for recently read blocks) are read from disk and verified
//! against the block id. Block files of an older format, or compressed whole, are read
//! whole.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use meridian_proto::block::FrameTable;
use meridian_proto::{BlockId, Compression, Outboard, tree};

use super::BlockStore;
use crate::error::ChunkError;
use crate::format;
use crate::packs::read_at;

/// Verified groups of a block, as [`BlockStore::read_range`] returns them.
#[derive(Clone, Debug)]
pub struct RangeRead {
    /// The block's plaintext length.
    pub raw_len: u32,
    /// The block's outboard (checked against the id).
    pub outboard: Arc<Outboard>,
    /// Plaintext offset of `plain` (a group boundary).
    pub offset: u64,
    /// The groups' plaintext.
    pub plain: Bytes,
}

/// The header and verified outboard of recently range-read blocks: the outboard is fixed by
/// the id, so a range read needs only its groups once the outboard was checked.
pub(super) type RangeCache =
    meridian_proto::recent::Recent<BlockId, (format::Header, Arc<Outboard>)>;

/// Blocks whose outboards a store keeps (8 KiB each for 4 MiB blocks).
pub(super) const RANGE_CACHE: usize = 1024;

/// Block files up to this long are read whole by a range read that knows nothing of them.
const READ_WHOLE_BELOW: u64 = 256 << 10;

impl BlockStore {
    /// Reads and verifies the 16 KiB groups of a block covering `[offset, offset + len)`
    /// of its plaintext, reading only those groups (and the outboard) from disk. Returns
    /// the block's length, its outboard, and the groups' offset and plaintext; a caller can
    /// verify them again with [`Outboard::verify`]. Files written before outboards existed
    /// are read whole.
    pub fn read_range(&self, id: &BlockId, offset: u64, len: u64) -> Result<RangeRead, ChunkError> {
        let known = self.ranges.get(id);
        let kept = known.is_some();
        let read = self.read_range_with(id, offset, len, known);
        if kept && read.is_err() {
            // Read the header and outboard from disk next time: the file may have been
            // replaced meanwhile.
            self.ranges.forget(id);
        }
        read
    }

    fn read_range_with(
        &self,
        id: &BlockId,
        offset: u64,
        len: u64,
        known: Option<(format::Header, Arc<Outboard>)>,
    ) -> Result<RangeRead, ChunkError> {
        let located = self.locate(id)?;
        let (f, base, path) = (&located.file, located.base, &located.path);
        let corrupt = |reason: String| ChunkError::Corrupt {
            id: *id,
            node: self.node,
            reason,
        };
        // A small file nothing is known of yet is read whole at once: one disk read where
        // the header, the outboard and the groups would each be one (a cold small file's
        // read is three of them otherwise).
        let file_len = match &known {
            None => Some(located.len()?),
            Some(_) => None,
        };
        // So is a file most of which is asked for (a whole block's read, as a sequential
        // reader's): one read where the header, the outboard at the file's end and the
        // groups would each be one, one after the other, on a disk that is cold.
        let whole = match file_len {
            Some(file)
                if file <= READ_WHOLE_BELOW || (offset == 0 && file <= len.saturating_mul(2)) =>
            {
                Some(located.read_all(file)?)
            }
            _ => None,
        };
        let at = |at: u64, n: usize| -> Result<Bytes, ChunkError> {
            if let Some(w) = &whole {
                return usize::try_from(at)
                    .ok()
                    .and_then(|a| w.get(a..a.checked_add(n)?))
                    .map(|part| w.slice_ref(part))
                    .ok_or_else(|| corrupt("file cut short".into()));
            }
            read_at(f, base + at, n)
                .map(Bytes::from)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => corrupt("file cut short".into()),
                    _ => ChunkError::io("read", path)(e),
                })
        };
        let h = match (&known, file_len) {
            (Some((h, _)), _) => *h,
            (None, None) => unreachable!("the length is read when nothing is known"),
            (None, Some(file_len)) => {
                let head = at(0, (format::HEADER_LEN as u64).min(file_len) as usize)?;
                let h = format::parse_header(&head)
                    .map_err(|e| ChunkError::corrupt_format(*id, self.node, e))?;
                self.check_id(id, &h.id)?;
                if h.file_len() != file_len {
                    return Err(corrupt(format!(
                        "file is {file_len} bytes, header announces {}",
                        h.file_len()
                    )));
                }
                h
            }
        };
        let raw_len = u64::from(h.raw_len);
        if offset >= raw_len && !(offset == 0 && raw_len == 0) {
            return Err(ChunkError::OutOfRange {
                id: *id,
                len: h.raw_len,
                offset: offset as u32,
                length: len as u32,
            });
        }
        let (start, end) = tree::aligned(raw_len, offset, len.max(1));
        let payload_at = h.len as u64;
        let ranged =
            h.version >= 2 && matches!(h.compression, Compression::None | Compression::Lz4Frames);
        if !ranged {
            let (_, plain, ob) = self.read_whole(id)?;
            metrics::counter!("meridian_chunk_verified_range_reads_total").increment(1);
            return Ok(RangeRead {
                raw_len: h.raw_len,
                outboard: Arc::new(ob),
                offset: start,
                plain: plain.slice(start as usize..end as usize),
            });
        }
        let outboard = match &known {
            Some((_, ob)) => ob.clone(),
            None => {
                let ob_bytes = at(
                    payload_at + u64::from(h.payload_len),
                    h.outboard_len as usize,
                )?;
                let ob =
                    Outboard::from_bytes(raw_len, &ob_bytes).map_err(|e| corrupt(e.to_string()))?;
                Arc::new(ob)
            }
        };
        let plain = match h.compression {
            Compression::Lz4Frames => {
                let table_len = FrameTable::table_len(h.raw_len).min(h.payload_len as usize);
                let table =
                    FrameTable::parse(&at(payload_at, table_len)?, h.raw_len).map_err(&corrupt)?;
                let g = tree::GROUP_LEN as u64;
                let (first, last) = ((start / g) as usize, end.div_ceil(g) as usize);
                let span = table.span(first, last.max(first + 1).min(table.frames()));
                if span.end > h.payload_len as usize {
                    return Err(corrupt("frames run past the payload".into()));
                }
                let bytes = at(payload_at + span.start as u64, span.len())?;
                Bytes::from(table.decode(first, &bytes).map_err(&corrupt)?)
            }
            _ => {
                if whole.is_none() {
                    read_around(f, base + payload_at, u64::from(h.payload_len), start, end);
                }
                at(payload_at + start, (end - start) as usize)?
            }
        };
        if known.is_some() {
            outboard.verify_groups(id, raw_len, start, &plain)
        } else {
            outboard.verify(id, raw_len, start, &plain)
        }
        .map_err(|e| corrupt(e.to_string()))?;
        if known.is_none() {
            self.ranges.insert(*id, (h, outboard.clone()));
        }
        metrics::counter!("meridian_chunk_verified_range_reads_total").increment(1);
        Ok(RangeRead {
            raw_len: h.raw_len,
            outboard,
            offset: start,
            plain,
        })
    }
}

/// Bytes around a range read that the kernel is asked to read with it: the next reads of
/// a random reader often land near the last ones, and then find them in the page cache
/// (MooseFS reads 64 KiB blocks for the same reason).
const READ_AROUND: u64 = 64 << 10;

/// Asks the kernel to read the [`READ_AROUND`]-aligned span holding payload bytes
/// `[start, end)` (the payload starts at `payload_at` in `f`) into the page cache, in one
/// request with the read that follows.
fn read_around(f: &File, payload_at: u64, payload_len: u64, start: u64, end: u64) {
    use std::os::fd::AsRawFd;
    let from = start / READ_AROUND * READ_AROUND;
    let to = end
        .div_ceil(READ_AROUND)
        .saturating_mul(READ_AROUND)
        .min(payload_len);
    if to <= from || to - from <= end - start {
        return;
    }
    // SAFETY: the descriptor is open for the call; the advice changes no memory of ours.
    unsafe {
        libc::posix_fadvise(
            f.as_raw_fd(),
            (payload_at + from) as libc::off_t,
            (to - from) as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        );
    }
}
