//! Space written ahead with zeros, in pieces the page cache keeps small.
//!
//! The Raft log and the chunkservers' packs write their space ahead with zeros so that an
//! append overwrites blocks the file system has already allocated and its fdatasync
//! writes the data alone. The page cache keeps a range written at once in folios as large
//! as the write (ext4 has large folios since Linux 6.16), and every later small write into
//! such a folio, and its write-back, walks all of the folio's blocks: on the project's
//! test host a 900-byte append with its fdatasync took 227–234 µs in space zeroed by one
//! 4 MiB write and 146–182 µs in space zeroed 4 or 64 KiB at a time (the write alone 13.5
//! against 5 µs).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Zeros are written this much at a time.
pub const ZERO_PIECE: usize = 64 << 10;

/// Writes `len` zeros at `at` in `file`, [`ZERO_PIECE`] bytes per write.
pub fn write_zeros(file: &File, at: u64, len: u64) -> io::Result<()> {
    let zeros = [0u8; ZERO_PIECE];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ZERO_PIECE as u64) as usize;
        file.write_all_at(&zeros[..n], at + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn zeros_cover_exactly_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all_at(&[7u8; 10], 0).unwrap();
        let len = 3 * ZERO_PIECE as u64 + 5;
        write_zeros(&f, 3, len).unwrap();
        let mut all = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all.len() as u64, 3 + len);
        assert_eq!(&all[..3], &[7, 7, 7]);
        assert!(all[3..].iter().all(|b| *b == 0));
    }
}
