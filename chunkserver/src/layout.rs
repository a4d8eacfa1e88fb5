//! Where block files live: `blocks/ab/abcd…` (64 hex digits), one folder per first byte
//! of the id. A put makes a folder only the first time its byte comes up (256 in all), not
//! one for nearly every block, as the two-level layout of earlier versions did
//! (`blocks/ab/cd/abcd…`: 65,536 folders, each a new inode and a folder fsync). A store in
//! that layout is moved into this one when it is opened: a rename per block, resumed at the
//! next open if interrupted.

use std::fs;
use std::path::{Path, PathBuf};

use meridian_proto::BlockId;
use tracing::{info, warn};

use crate::error::ChunkError;

/// The block files under one folder.
#[derive(Debug)]
pub struct Layout {
    blocks: PathBuf,
}

impl Layout {
    /// The layout under `blocks` (which exists), moving files of the earlier layout in.
    pub fn open(blocks: &Path) -> Result<Layout, ChunkError> {
        let layout = Layout {
            blocks: blocks.to_path_buf(),
        };
        layout.migrate()?;
        Ok(layout)
    }

    /// The file that holds `id`.
    pub fn path(&self, id: &BlockId) -> PathBuf {
        let hex = id.to_hex();
        self.blocks.join(&hex[0..2]).join(hex)
    }

    /// Every entry of the fan-out folders, blocks or not (sorted per folder).
    pub fn files(&self) -> Result<Vec<PathBuf>, ChunkError> {
        let mut out = Vec::new();
        for (fan, is_dir) in entries(&self.blocks)? {
            if is_dir {
                out.extend(entries(&fan)?.into_iter().map(|(p, _)| p));
            } else {
                out.push(fan);
            }
        }
        Ok(out)
    }

    /// The id of the block `file` holds, if it is a block file where it belongs.
    pub fn block_of(&self, file: &Path) -> Option<BlockId> {
        file.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<BlockId>().ok())
            .filter(|id| self.path(id) == file)
    }

    /// Moves `blocks/ab/cd/<id>` files to `blocks/ab/<id>` and removes the emptied folders.
    fn migrate(&self) -> Result<(), ChunkError> {
        let mut moved = 0u64;
        for (fan, _) in entries(&self.blocks)?.into_iter().filter(|e| e.1) {
            let mut changed = false;
            for (inner, _) in entries(&fan)?.into_iter().filter(|e| e.1) {
                for (file, _) in entries(&inner)? {
                    let Some(name) = file.file_name() else {
                        continue;
                    };
                    let to = fan.join(name);
                    if self.block_of(&to).is_none() {
                        warn!(file = %file.display(), "not a block file of the earlier layout; left alone");
                        continue;
                    }
                    fs::rename(&file, &to)
                        .map_err(ChunkError::io("move into the new layout", &file))?;
                    moved += 1;
                    changed = true;
                }
                if changed {
                    sync_dir(&fan)?;
                }
                match fs::remove_dir(&inner) {
                    Ok(()) => changed = true,
                    Err(e) => {
                        warn!(folder = %inner.display(), error = %e, "a folder of the earlier layout is not empty; left alone")
                    }
                }
            }
            if changed {
                sync_dir(&fan)?;
            }
        }
        if moved > 0 {
            info!(
                blocks = moved,
                "block files moved into the one-level layout"
            );
        }
        Ok(())
    }
}

/// The entries of `dir`, sorted, each with whether it is a folder (from the listing, no
/// stat per entry).
fn entries(dir: &Path) -> Result<Vec<(PathBuf, bool)>, ChunkError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(ChunkError::io("list", dir))? {
        let entry = entry.map_err(ChunkError::io("list", dir))?;
        let is_dir = entry
            .file_type()
            .map_err(ChunkError::io("list", dir))?
            .is_dir();
        out.push((entry.path(), is_dir));
    }
    out.sort();
    Ok(out)
}

/// fsync of a folder, so renames and new entries in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ChunkError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(ChunkError::io("fsync folder", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_proto::EncodedBlock;

    #[test]
    fn a_store_of_the_two_level_layout_is_moved_into_the_one_level_one() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = dir.path().join("blocks");
        let ids: Vec<BlockId> = (0..20u8)
            .map(|i| EncodedBlock::encode(&[i; 100]).unwrap().id)
            .collect();
        for id in &ids {
            let hex = id.to_hex();
            let old = blocks.join(&hex[0..2]).join(&hex[2..4]);
            fs::create_dir_all(&old).unwrap();
            fs::write(old.join(&hex), hex.as_bytes()).unwrap();
        }
        // A stray file in an old folder stays, and keeps its folder.
        let hex = ids[0].to_hex();
        fs::write(
            blocks.join(&hex[0..2]).join(&hex[2..4]).join("notes.txt"),
            b"x",
        )
        .unwrap();

        let layout = Layout::open(&blocks).unwrap();
        for id in &ids {
            let hex = id.to_hex();
            assert_eq!(fs::read(layout.path(id)).unwrap(), hex.as_bytes());
            assert_eq!(layout.path(id), blocks.join(&hex[0..2]).join(&hex));
        }
        let found: Vec<BlockId> = layout
            .files()
            .unwrap()
            .iter()
            .filter_map(|f| layout.block_of(f))
            .collect();
        assert_eq!(found.len(), ids.len());
        let old_dirs = layout
            .files()
            .unwrap()
            .iter()
            .filter(|p| p.is_dir())
            .count();
        assert_eq!(
            old_dirs, 1,
            "only the folder holding the stray file is left"
        );
        // Opening again finds nothing more to move.
        Layout::open(&blocks).unwrap();
        assert_eq!(
            fs::read(layout.path(&ids[3])).unwrap(),
            ids[3].to_hex().as_bytes()
        );
    }
}
