//! Serving a volume's image to a region being brought into it: built in a scratch copy of
//! the state (never in the state's only write transaction), written to a file, and read
//! back a piece at a time while the region fetches it. Also the scratch files themselves,
//! which the receiving side uses for the image it fetches.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meridian_proto::pb::meta::{VolumeImageRequest, VolumeImageResponse};
use meridian_proto::{Hlc, RegionId};
use redb::ReadableDatabase;
use tonic::Status;
use tracing::{info, warn};

use super::{PIECE, lock};
use crate::error::{MetaError, store};
use crate::namespace::NsError;
use crate::namespace::WriteTables;
use crate::namespace::backfill;
use crate::service::MetaNode;

/// How long a served image is kept for the region fetching it.
pub(super) const KEEP_IMAGE: std::time::Duration = std::time::Duration::from_secs(600);

/// An image built for a region: its point, its file, and when it was built.
pub(super) type Served = (Hlc, Arc<ImageFile>, std::time::Instant);

/// A file in a member's scratch folder, removed when dropped (and, left by a member that
/// stopped, when the member starts: [`clear_scratch`]).
pub(crate) struct ScratchFile(pub(crate) PathBuf);

impl ScratchFile {
    /// A new name in `dir` (made if missing): `kind.<process>.<n>`.
    pub(crate) fn new(dir: &Path, kind: &str) -> Result<Self, MetaError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        std::fs::create_dir_all(dir)
            .map_err(|e| MetaError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(ScratchFile(dir.join(format!(
            "{kind}.{}.{n}{SCRATCH_END}",
            std::process::id()
        ))))
    }
}

/// How every scratch file's name ends, so a member's start knows its own.
const SCRATCH_END: &str = ".scratch";

impl Drop for ScratchFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(file = %self.0.display(), error = %e, "removing a scratch file");
        }
    }
}

/// Removes the scratch files a member left when it stopped (an image being built, served
/// or received).
pub fn clear_scratch(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().ends_with(SCRATCH_END) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// An image being built, named in `Backfills::building` until dropped.
struct Building(
    Arc<std::sync::Mutex<std::collections::HashSet<(u16, u32)>>>,
    (u16, u32),
);

impl Drop for Building {
    fn drop(&mut self) {
        lock(&self.0).remove(&self.1);
    }
}

/// An image as JSON, in a scratch file.
pub(crate) struct ImageFile {
    pub(crate) file: ScratchFile,
    pub(crate) len: u64,
    /// Whether a piece of it was served: a fetch starting over gets another image then
    /// (the one it had may be what failed), and this one until then (a fetch that gave
    /// up waiting for the build asks again, and takes what the build left).
    pub(crate) served: std::sync::atomic::AtomicBool,
}

impl ImageFile {
    /// At most [`PIECE`] bytes from `offset`.
    fn piece(&self, offset: u64) -> std::io::Result<Vec<u8>> {
        self.served
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let from = offset.min(self.len);
        let mut buf = vec![0; (self.len - from).min(PIECE as u64) as usize];
        std::fs::File::open(&self.file.0)?.read_exact_at(&mut buf, from)?;
        Ok(buf)
    }
}

/// What a fetch asking from `point` (empty: from the start) gets of the image `cached`:
/// the image it is fetching; from the start, one built and not yet served (what a fetch
/// that gave up waiting for the build asks again for); else nothing (`Ok(None)`: build
/// one), or `Err` when the image it was fetching is gone.
#[allow(clippy::result_unit_err)]
pub(super) fn from_cache(
    point: &[u8],
    cached: Option<Served>,
) -> Result<Option<(Hlc, Arc<ImageFile>)>, ()> {
    match cached {
        Some((p, image, _)) if !point.is_empty() && point == p.to_key().as_slice() => {
            Ok(Some((p, image)))
        }
        _ if !point.is_empty() => Err(()),
        Some((p, image, at))
            if !image.served.load(std::sync::atomic::Ordering::Relaxed)
                && at.elapsed() < KEEP_IMAGE =>
        {
            Ok(Some((p, image)))
        }
        _ => Ok(None),
    }
}

/// Metadata key on an answer that says to ask again later (the image is not ready yet):
/// the receiving leader waits longer after each in a row. Other unavailability (a member
/// down, no leader) is tried again at once, at another address.
const WAIT: &str = "x-meridian-wait";

/// An answer saying to ask again later, for `why`.
pub(super) fn wait(why: String) -> Status {
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert(WAIT, tonic::metadata::MetadataValue::from_static("1"));
    Status::with_metadata(tonic::Code::Unavailable, why, md)
}

/// Whether `s` is an answer saying to ask again later.
pub(super) fn told_to_wait(s: &Status) -> bool {
    s.code() == tonic::Code::Unavailable && s.metadata().get(WAIT).is_some()
}

/// Answers a region being brought into a volume: a piece of the volume's image.
pub async fn serve_image(
    node: &MetaNode,
    req: VolumeImageRequest,
) -> Result<VolumeImageResponse, Status> {
    let to = u16::try_from(req.region)
        .map(RegionId)
        .map_err(|_| Status::invalid_argument(format!("region {} out of range", req.region)))?;
    if !node.peers.iter().any(|p| p.region == to.0) || to == node.shared.region {
        return Err(Status::permission_denied(format!(
            "region {} is not a peer of region {}",
            to.0, node.shared.region.0
        )));
    }
    let since = Hlc::from_key(&req.since)
        .ok_or_else(|| Status::invalid_argument("the change's stamp is not a stamp"))?;
    let key = (to.0, req.volume);
    let cached = lock(&node.backfills.images).get(&key).cloned();
    let (point, image) = match from_cache(&req.point, cached) {
        Ok(Some(found)) => found,
        Err(()) => {
            return Err(Status::aborted(
                "the image being fetched is gone (a leader changed): start over",
            ));
        }
        Ok(None) => {
            // One build at a time for an image: a client that gave up on a long build asks
            // again, and must not start a second copy of the state beside the first.
            if !lock(&node.backfills.building).insert(key) {
                return Err(wait(format!(
                    "the image of volume {} for region {} is being built",
                    req.volume, to.0
                )));
            }
            let building = Building(node.backfills.building.clone(), key);
            let (db, images) = (node.db.clone(), node.backfills.images.clone());
            let scratch = node.backfills.scratch.clone();
            let started = std::time::Instant::now();
            // Kept by the task itself: a build outlives a client that gave up waiting.
            let built = tokio::task::spawn_blocking(move || {
                let built = build(&db, &scratch, req.volume, to, since, backfill::RECORDS_MAX)?;
                let Some((point, image)) = built else {
                    return Ok(None);
                };
                let image = Arc::new(image);
                let mut images = lock(&images);
                images.retain(|_, (_, _, at)| at.elapsed() < KEEP_IMAGE);
                images.insert(key, (point, image.clone(), std::time::Instant::now()));
                drop(building);
                Ok::<_, MetaError>(Some((point, image)))
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
            let built = match built {
                // The volume is gone, or no longer lives there: the image will never come.
                Err(MetaError::Ns(e @ (NsError::NotFound(_) | NsError::Perm(_)))) => {
                    return Err(Status::not_found(format!(
                        "no image of volume {} for region {}: {e}",
                        req.volume, to.0
                    )));
                }
                // Not ready: too many records to carry yet.
                Err(MetaError::Unavailable(why)) => return Err(wait(why)),
                other => other?,
            };
            let Some((point, image)) = built else {
                return Err(wait(format!(
                    "region {} has not settled past the change that added region {} yet",
                    node.shared.region.0, to.0
                )));
            };
            info!(
                volume = req.volume,
                region = to.0,
                bytes = image.len,
                %point,
                ms = started.elapsed().as_millis() as u64,
                "built a volume image"
            );
            (point, image)
        }
    };
    let total = image.len;
    let data = tokio::task::spawn_blocking(move || image.piece(req.offset))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(format!("reading the volume's image: {e}")))?;
    Ok(VolumeImageResponse {
        point: point.to_key().to_vec().into(),
        total,
        data: data.into(),
    })
}

/// The cache of an image's scratch database.
const SCRATCH_CACHE: usize = 64 << 20;

/// The tables an image is built from (the namespace, the merged log, the region's state
/// and the directories' time registers, which a rewind reads); the rest of the state
/// (change log, requests, leases, block references, ...) is not copied.
const IMAGE_TABLES: &[&str] = &[
    "inodes",
    "dirents",
    "extents",
    "xattrs",
    "volumes",
    "tombs",
    "region_state",
    "oplog",
    "undo",
    "dir_times",
];

/// The image of `volume` for region `to` (`None` while this region has not settled past
/// `since`), written as JSON to a file under `scratch` (a folder). An image whose records
/// would pass `records_max` bytes is not built yet (`Unavailable`): its last piece would
/// be a Raft entry larger than a member takes. Both are found before anything is copied.
///
/// It is built in a scratch database there, from a read transaction of `db`: the tables
/// it needs are copied, and the merged log is rewound to the image's point in a
/// transaction of the scratch database that is never committed. Built in `db` itself,
/// the rewind held its only write transaction (redb has one writer) for the whole build:
/// the region applied nothing meanwhile, about 0.4-0.6 s per 100,000 files. A read
/// transaction holds nobody up; the state it sees is the one the write transaction would
/// have started from. The image goes to a file, not memory: the region fetching it may
/// take minutes.
pub(crate) fn build(
    db: &redb::Database,
    scratch: &Path,
    volume: u32,
    to: RegionId,
    since: Hlc,
    records_max: usize,
) -> Result<Option<(Hlc, ImageFile)>, MetaError> {
    let snap = db.begin_read().map_err(store)?;
    match backfill::readiness(&snap, volume, to, since, records_max)? {
        backfill::Readiness::Unsettled => return Ok(None),
        backfill::Readiness::TooManyRecords { records, bytes } => {
            return Err(MetaError::Unavailable(format!(
                "the image of volume {volume} would carry more than {records} records ({bytes} \
                 bytes, at most {records_max}) written before region {} was added and not yet \
                 settled everywhere: it waits for the regions to settle further (a region long \
                 cut off holds them back)",
                to.0
            )));
        }
        backfill::Readiness::Ready(_) => {}
    }
    let work_file = ScratchFile::new(scratch, "image-state")?;
    // Written once and read once: a small cache (redb's default is 1 GiB, half of which
    // a write transaction may fill before it writes pages out).
    let work = redb::Database::builder()
        .set_cache_size(SCRATCH_CACHE)
        .create(&work_file.0)
        .map_err(store)?;
    let tx = work.begin_write().map_err(store)?;
    crate::raft::snapshot::copy(&snap, &tx, |name| IMAGE_TABLES.contains(&name))
        .map_err(|e| MetaError::Store(format!("copying the state for an image: {e}")))?;
    drop(snap);
    // Written as it is built: never whole in memory.
    let file = ScratchFile::new(scratch, "image-served")?;
    let io = |e: std::io::Error| MetaError::Io(format!("{}: {e}", file.0.display()));
    let out = std::fs::File::create(&file.0).map_err(io)?;
    let mut json = backfill::JsonImage::new(std::io::BufWriter::with_capacity(1 << 20, out));
    let point = {
        let mut t = WriteTables::open(&tx);
        backfill::build_image_into(&mut t, volume, to, since, &mut json)?
    };
    tx.abort().map_err(store)?;
    drop(work);
    drop(work_file);
    let Some(point) = point else {
        return Ok(None);
    };
    let out = json
        .into_inner()
        .into_inner()
        .map_err(|e| io(e.into_error()))?;
    let len = out.metadata().map_err(io)?.len();
    Ok(Some((
        point,
        ImageFile {
            file,
            len,
            served: Default::default(),
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_gets_its_image_or_one_nobody_fetched_or_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let point = Hlc {
            wall_ms: 5,
            counter: 0,
            region: RegionId(1),
        };
        let file = ScratchFile::new(dir.path(), "image-served").unwrap();
        std::fs::write(&file.0, b"{}").unwrap();
        let image = Arc::new(ImageFile {
            file,
            len: 2,
            served: Default::default(),
        });
        let now = std::time::Instant::now();
        let cached = Some((point, image.clone(), now));
        let key = point.to_key();
        let got = |asked: &[u8]| from_cache(asked, cached.clone()).map(|f| f.map(|f| f.0));
        // From the start, before any piece went: the image the build left.
        assert_eq!(got(b""), Ok(Some(point)));
        assert_eq!(got(&key), Ok(Some(point)));
        assert_eq!(got(b"another point"), Err(()));
        // Once a piece went, a fetch from the start gets a new one (the first may be what
        // failed); one going on still gets its own.
        assert_eq!(image.piece(0).unwrap(), b"{}");
        assert_eq!(got(b""), Ok(None));
        assert_eq!(got(&key), Ok(Some(point)));
        assert_eq!(from_cache(b"", None).map(|f| f.is_none()), Ok(true));
    }

    #[test]
    fn every_table_an_image_is_built_from_is_one_a_copy_knows() {
        let known = crate::raft::snapshot::table_names();
        for name in IMAGE_TABLES {
            assert!(known.iter().any(|k| k == name), "{name}");
        }
    }
}
