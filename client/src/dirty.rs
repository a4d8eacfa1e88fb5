//! Data written to an open file but not yet committed: non-overlapping byte ranges, a later
//! write replacing what it overlaps.

use std::collections::BTreeMap;

/// No range crosses a multiple of this in the file: buffers stay block-sized, so the
/// allocator hands freed ones out again instead of mapping (and zeroing) fresh memory for
/// every commit of a long write.
const SEGMENT: u64 = 4 << 20;

/// Dirty ranges of one open file, keyed by file offset.
#[derive(Debug)]
pub struct DirtyRanges {
    ranges: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
    segment: u64,
}

impl Default for DirtyRanges {
    fn default() -> Self {
        DirtyRanges {
            ranges: BTreeMap::new(),
            bytes: 0,
            segment: SEGMENT,
        }
    }
}

impl DirtyRanges {
    /// Whether nothing is dirty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Dirty bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Dirty ranges held (each becomes an extent or more when committed).
    pub fn count(&self) -> usize {
        self.ranges.len()
    }

    /// One past the last dirty byte (0 if none).
    pub fn end(&self) -> u64 {
        self.ranges
            .iter()
            .next_back()
            .map_or(0, |(o, d)| o + d.len() as u64)
    }

    /// Records a write, merging it with the ranges it overlaps or touches. The range it
    /// merges into grows in place, so a file written front to back costs each byte one
    /// copy (not the whole range again per write).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let mut at = 0;
        while at < data.len() {
            let off = offset + at as u64;
            let room = (self.segment - off % self.segment) as usize;
            let n = room.min(data.len() - at);
            self.write_in_segment(off, &data[at..at + n]);
            at += n;
        }
    }

    /// [`write`](Self::write) of bytes inside one segment.
    fn write_in_segment(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        let first = offset - offset % self.segment;
        // Ranges of the segment that overlap or touch [offset, end), in offset order.
        let touching: Vec<u64> = self
            .ranges
            .range(first..(end + 1).min(first + self.segment))
            .filter(|(o, d)| *o + d.len() as u64 >= offset)
            .map(|(o, _)| *o)
            .collect();
        let start = touching.first().map_or(offset, |o| (*o).min(offset));
        let mut buf = match touching.first() {
            Some(o) if *o == start => self.ranges.remove(o).expect("present"),
            // A large write likely goes on to the segment's end (a sequential writer):
            // room for all of it at once, not a copy per doubling.
            _ if data.len() >= 64 << 10 => {
                Vec::with_capacity((first + self.segment - start) as usize)
            }
            _ => Vec::new(),
        };
        self.bytes -= buf.len();
        for o in touching.iter().filter(|o| **o != start) {
            let d = self.ranges.remove(o).expect("present");
            self.bytes -= d.len();
            place(&mut buf, (o - start) as usize, &d);
        }
        place(&mut buf, (offset - start) as usize, data);
        self.bytes += buf.len();
        self.ranges.insert(start, buf);
    }

    /// Takes every range out, in offset order.
    pub fn take(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.bytes = 0;
        std::mem::take(&mut self.ranges).into_iter().collect()
    }

    /// Copies dirty bytes over `buf`, which holds the file's bytes from `offset`.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        for (o, d) in self.ranges.range(..end) {
            let (s, e) = ((*o).max(offset), (o + d.len() as u64).min(end));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&d[(s - o) as usize..(e - o) as usize]);
            }
        }
    }

    /// Drops dirty bytes at or after `size` (a truncate).
    pub fn truncate(&mut self, size: u64) {
        let keys: Vec<u64> = self
            .ranges
            .range(..)
            .filter(|(o, d)| *o + d.len() as u64 > size)
            .map(|(o, _)| *o)
            .collect();
        for o in keys {
            let mut d = self.ranges.remove(&o).expect("present");
            self.bytes -= d.len();
            if o < size {
                d.truncate((size - o) as usize);
                self.bytes += d.len();
                self.ranges.insert(o, d);
            }
        }
    }
}

/// Writes `data` into `buf` at `at`, growing `buf` as needed (zeros fill any gap).
fn place(buf: &mut Vec<u8>, at: usize, data: &[u8]) {
    let end = at + data.len();
    if buf.len() < end {
        if buf.len() < at {
            buf.resize(at, 0);
        }
        let overlap = buf.len() - at;
        buf[at..].copy_from_slice(&data[..overlap]);
        buf.extend_from_slice(&data[overlap..]);
    } else {
        buf[at..end].copy_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Dirty ranges behave like writing into a flat buffer.
        #[test]
        fn matches_a_flat_buffer(writes in proptest::collection::vec((0u64..200, proptest::collection::vec(any::<u8>(), 1..40)), 1..30), cut in 0u64..260, segment in prop_oneof![Just(SEGMENT), 1u64..64]) {
            let mut flat = vec![None::<u8>; 300];
            let mut d = DirtyRanges { segment, ..DirtyRanges::default() };
            for (o, data) in &writes {
                d.write(*o, data);
                for (i, b) in data.iter().enumerate() { flat[*o as usize + i] = Some(*b); }
            }
            d.truncate(cut);
            for slot in flat.iter_mut().skip(cut as usize) { *slot = None; }
            let mut buf = vec![0xAAu8; 300];
            d.overlay(0, &mut buf);
            for (i, slot) in flat.iter().enumerate() {
                prop_assert_eq!(buf[i], slot.unwrap_or(0xAA), "byte {}", i);
            }
            prop_assert_eq!(d.bytes(), flat.iter().filter(|s| s.is_some()).count());
            let taken = d.take();
            for w in taken.windows(2) {
                let (end, next) = (w[0].0 + w[0].1.len() as u64, w[1].0);
                prop_assert!(end < next || (end == next && next % segment == 0), "ranges stay apart");
            }
            for (o, r) in &taken {
                prop_assert_eq!(o / segment, (o + r.len() as u64 - 1) / segment, "inside one segment");
            }
        }
    }
}
