//! The snapshot folder: one data file per snapshot, and `current.json` naming the current
//! one together with its meta. One rename of `current.json` makes a snapshot current, so
//! a crash never pairs one snapshot's meta with another's data. A build and an install
//! may run at once: the switch is serialized, and an older snapshot never replaces a
//! newer one.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::type_config::alias::SnapshotMetaOf;
use serde::{Deserialize, Serialize};

use super::{TypeConfig, io_err};

/// A snapshot's bytes: a file, streamed (never held whole in memory).
pub type SnapshotData = std::fs::File;

type Meta = SnapshotMetaOf<TypeConfig>;

const CURRENT: &str = "current.json";
/// The layout before `current.json`: fixed names for the data and the meta.
const LEGACY_DATA: &str = "current.snap";
const LEGACY_META: &str = "current.meta.json";
const DATA_PREFIX: &str = "snap-";

/// What `current.json` holds.
#[derive(Serialize, Deserialize)]
struct Current {
    meta: Meta,
    /// The data file's name in the folder.
    data: String,
}

/// Bytes of the current snapshot's data in the snapshot folder `dir` (0 if there is none
/// or it cannot be read). Reads only; safe while snapshots are being taken.
pub fn current_len(dir: &Path) -> u64 {
    let Ok(bytes) = std::fs::read(dir.join(CURRENT)) else {
        return 0;
    };
    serde_json::from_slice::<Current>(&bytes)
        .ok()
        .and_then(|c| std::fs::metadata(dir.join(c.data)).ok())
        .map_or(0, |m| m.len())
}

/// The snapshot folder of one member.
#[derive(Clone, Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
    /// Serializes switching the current snapshot and reading which one it is.
    switch: Arc<Mutex<()>>,
}

impl SnapshotDir {
    /// The folder at `dir`, created if missing; files a crash left behind (data never made
    /// current, temporary files, spooled transfers) are removed.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let folder = SnapshotDir {
            dir,
            switch: Arc::default(),
        };
        let keep = folder.current()?.map(|(_, data)| data);
        for entry in std::fs::read_dir(&folder.dir)? {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let orphan = (file.starts_with(DATA_PREFIX) && Some(&file) != keep.as_ref())
                || file.ends_with(".tmp");
            if orphan {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(folder)
    }

    /// Where an incoming snapshot is spooled while it arrives.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The current snapshot's meta and data file name (the caller holds `switch`).
    fn current(&self) -> io::Result<Option<(Meta, String)>> {
        match std::fs::read(self.dir.join(CURRENT)) {
            Ok(bytes) => {
                let c: Current = serde_json::from_slice(&bytes).map_err(io_err)?;
                Ok(Some((c.meta, c.data)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match std::fs::read(self.dir.join(LEGACY_META)) {
                    Ok(bytes) => Ok(Some((
                        serde_json::from_slice(&bytes).map_err(io_err)?,
                        LEGACY_DATA.to_string(),
                    ))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The current snapshot, its data opened for reading.
    pub fn open_current(&self) -> io::Result<Option<(Meta, SnapshotData)>> {
        let _switch = self.switch.lock().unwrap_or_else(|p| p.into_inner());
        match self.current()? {
            Some((meta, data)) => Ok(Some((meta, std::fs::File::open(self.dir.join(data))?))),
            None => Ok(None),
        }
    }

    /// Writes a snapshot's data (streamed by `write`) durably and makes it current, unless
    /// a newer one is current already. Returns the data, opened for reading.
    pub fn save(
        &self,
        meta: &Meta,
        write: impl FnOnce(&mut BufWriter<std::fs::File>) -> io::Result<()>,
    ) -> io::Result<SnapshotData> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{DATA_PREFIX}{}-{}-{}.data",
            meta.last_log_id.as_ref().map_or(0, |l| l.index),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.dir.join(&name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut out = BufWriter::new(file);
        let written = write(&mut out)
            .and_then(|()| out.flush())
            .and_then(|()| out.get_ref().sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let mut data = out.into_inner().map_err(|e| e.into_error())?;
        std::io::Seek::rewind(&mut data)?;

        let _switch = self.switch.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current()?;
        if current
            .as_ref()
            .is_some_and(|(current, _)| current.last_log_id > meta.last_log_id)
        {
            // Still a valid snapshot for its meta (the caller may send it), never current.
            std::fs::remove_file(&path)?;
            return Ok(data);
        }
        let next = Current {
            meta: meta.clone(),
            data: name.clone(),
        };
        let tmp = self.dir.join(format!("{CURRENT}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&next).map_err(io_err)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(CURRENT))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        // The data it replaces (open readers keep theirs until they close them).
        if let Some((_, old)) = current
            && old != name
        {
            let _ = std::fs::remove_file(self.dir.join(old));
        }
        let _ = std::fs::remove_file(self.dir.join(LEGACY_META));
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn meta(index: u64) -> Meta {
        Meta {
            last_log_id: Some(openraft::testing::log_id::<TypeConfig>(1, 1, index)),
            last_membership: Default::default(),
        }
    }

    fn contents(mut f: std::fs::File) -> Vec<u8> {
        let mut out = Vec::new();
        f.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn the_newest_snapshot_stays_current_and_crash_leftovers_go() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path().join("s")).unwrap();
        assert!(dir.open_current().unwrap().is_none());

        let nine = dir.save(&meta(9), |w| w.write_all(b"nine")).unwrap();
        assert_eq!(contents(nine), b"nine");
        // An older one finishing later (a build racing an install) is not made current,
        // though the caller still gets its data.
        let five = dir.save(&meta(5), |w| w.write_all(b"five")).unwrap();
        assert_eq!(contents(five), b"five");
        let (m, data) = dir.open_current().unwrap().unwrap();
        assert_eq!(m, meta(9));
        assert_eq!(contents(data), b"nine");

        // A newer one replaces it; a reader of the old data keeps reading it.
        let (_, reader) = dir.open_current().unwrap().unwrap();
        dir.save(&meta(12), |w| w.write_all(b"twelve")).unwrap();
        assert_eq!(contents(reader), b"nine");
        let (m, data) = dir.open_current().unwrap().unwrap();
        assert_eq!((m, contents(data)), (meta(12), b"twelve".to_vec()));

        // A failed write leaves nothing; leftovers of a crash are removed at open.
        assert!(
            dir.save(&meta(20), |_| Err(io::Error::other("disk full")))
                .is_err()
        );
        std::fs::write(tmp.path().join("s/snap-99-1-1.data"), b"half").unwrap();
        std::fs::write(tmp.path().join("s/current.json.tmp"), b"{").unwrap();
        let dir = SnapshotDir::open(tmp.path().join("s")).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "current.json and its data only: {names:?}");
        let (m, data) = dir.open_current().unwrap().unwrap();
        assert_eq!((m, contents(data)), (meta(12), b"twelve".to_vec()));
    }

    #[test]
    fn a_snapshot_in_the_old_layout_is_read_and_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join(LEGACY_DATA), b"old").unwrap();
        std::fs::write(
            path.join(LEGACY_META),
            serde_json::to_vec(&meta(3)).unwrap(),
        )
        .unwrap();
        let dir = SnapshotDir::open(path.clone()).unwrap();
        let (m, data) = dir.open_current().unwrap().unwrap();
        assert_eq!((m, contents(data)), (meta(3), b"old".to_vec()));
        dir.save(&meta(4), |w| w.write_all(b"new")).unwrap();
        assert!(!path.join(LEGACY_DATA).exists() && !path.join(LEGACY_META).exists());
        let (m, data) = dir.open_current().unwrap().unwrap();
        assert_eq!((m, contents(data)), (meta(4), b"new".to_vec()));
    }
}
