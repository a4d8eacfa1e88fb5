//! Bringing volumes into this region, and serving their images to regions being brought
//! into one: the network side of `namespace::backfill` (which says what an image is and
//! why it is correct).
//!
//! The leader of a region added to a volume fetches the image from the region that made
//! the change, in pieces of 4 MiB (a failed piece is asked again, from where it stopped),
//! then installs it through its Raft log in bounded pieces. The serving region builds an
//! image once its settled bound has passed the change, keeps it while it is fetched, and
//! builds a new one when asked to start over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto::pb::meta::{Backfill as BackfillRow, VolumeImageRequest, VolumeImageResponse};
use meridian_proto::{Hlc, RegionId};
use redb::ReadableDatabase;
use tonic::{Code, Status};
use tracing::{info, warn};

use crate::error::{MetaError, store};
use crate::namespace::NsError;
use crate::namespace::WriteTables;
use crate::namespace::backfill::{self, Backfill, VolumeImage};
use crate::namespace::merge;
use crate::raft::{Request as RaftRequest, Response as RaftResponse};
use crate::service::MetaNode;

/// Most image bytes in one answer.
const PIECE: usize = 4 << 20;

/// Images served and received by this member.
#[derive(Default)]
pub struct Backfills {
    /// Served: (region, volume) -> (point, the image as JSON).
    images: Mutex<HashMap<(u16, u32), Served>>,
    /// Received, by volume.
    progress: Mutex<HashMap<u32, Progress>>,
    /// Which of the serving region's members to ask (the next one after an error).
    next_addr: std::sync::atomic::AtomicUsize,
    /// Where images are built (see [`build`]).
    scratch: std::path::PathBuf,
}

/// An image built for a region: its point, its JSON, and when it was built.
type Served = (Hlc, Arc<Vec<u8>>, std::time::Instant);

/// How long a served image is kept for the region fetching it.
const KEEP_IMAGE: Duration = Duration::from_secs(600);

#[derive(Default, Clone)]
struct Progress {
    state: &'static str,
    point: Vec<u8>,
    data: Vec<u8>,
    total: u64,
    error: String,
    blocks_total: u64,
    blocks_done: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Backfills {
    /// A member's backfills, building images in `scratch` (a folder of its own, whose
    /// leftovers from an earlier run are removed now).
    pub fn new(scratch: std::path::PathBuf) -> Self {
        clear_scratch(&scratch);
        Backfills {
            scratch,
            ..Default::default()
        }
    }

    /// The backfills of this region, for `admin regions`.
    pub fn rows(&self, db: &redb::Database) -> Vec<BackfillRow> {
        let tx = db.begin_read().ok();
        let known = tx
            .as_ref()
            .and_then(|tx| merge::state_table(tx).ok().flatten())
            .and_then(|t| backfill::all(&t).ok())
            .unwrap_or_default();
        let parked = tx
            .as_ref()
            .and_then(|tx| tx.open_table(crate::namespace::tables::PARKED).ok());
        let waiting = |volume: u32| {
            parked.as_ref().map_or(0, |t| {
                backfill::parked_count(t, volume, backfill::MAX_PARKED).unwrap_or(0) as u64
            })
        };
        let progress = lock(&self.progress);
        known
            .into_iter()
            .map(|b| {
                let p = progress.get(&b.volume).cloned().unwrap_or_default();
                BackfillRow {
                    volume: b.volume,
                    name: b.name,
                    from: u32::from(b.from.0),
                    state: if b.installed && b.blocks {
                        "done".into()
                    } else if b.installed {
                        "blocks".into()
                    } else if p.state.is_empty() {
                        "waiting".into()
                    } else {
                        p.state.into()
                    },
                    bytes_received: p.data.len() as u64,
                    bytes_total: p.total,
                    inodes_installed: b.inodes,
                    error: if b.installed && b.blocks {
                        String::new()
                    } else {
                        p.error
                    },
                    blocks_total: p.blocks_total,
                    blocks_done: p.blocks_done,
                    records_waiting: waiting(b.volume),
                }
            })
            .collect()
    }
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
    let (point, image) = match cached {
        Some((p, image, _)) if !req.point.is_empty() && req.point == p.to_key().as_slice() => {
            (p, image)
        }
        _ if !req.point.is_empty() => {
            return Err(Status::aborted(
                "the image being fetched is gone (a leader changed): start over",
            ));
        }
        _ => {
            let db = node.db.clone();
            let scratch = node.backfills.scratch.clone();
            let started = std::time::Instant::now();
            let built =
                tokio::task::spawn_blocking(move || build(&db, &scratch, req.volume, to, since))
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
                other => other?,
            };
            let Some((point, image)) = built else {
                return Err(Status::unavailable(format!(
                    "region {} has not settled past the change that added region {} yet",
                    node.shared.region.0, to.0
                )));
            };
            let image = Arc::new(image);
            let mut images = lock(&node.backfills.images);
            images.retain(|_, (_, _, at)| at.elapsed() < KEEP_IMAGE);
            images.insert(key, (point, image.clone(), std::time::Instant::now()));
            drop(images);
            info!(
                volume = req.volume,
                region = to.0,
                bytes = image.len(),
                %point,
                ms = started.elapsed().as_millis() as u64,
                "built a volume image"
            );
            (point, image)
        }
    };
    let from = (req.offset as usize).min(image.len());
    let to_byte = (from + PIECE).min(image.len());
    Ok(VolumeImageResponse {
        point: point.to_key().to_vec().into(),
        total: image.len() as u64,
        data: image[from..to_byte].to_vec().into(),
    })
}

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

/// The image, built in a scratch database under `scratch` (a folder) from a read
/// transaction of `db`: its tables are copied there, and the merged log is rewound to the
/// image's point in a transaction of the scratch database that is never committed.
///
/// Built in `db` itself, the rewind held its only write transaction (redb has one writer)
/// for the whole build: the region applied nothing meanwhile, about 0.5-1 s per 100,000
/// files. A read transaction holds nobody up; the state it sees is the one the write
/// transaction would have started from.
pub(crate) fn build(
    db: &redb::Database,
    scratch: &std::path::Path,
    volume: u32,
    to: RegionId,
    since: Hlc,
) -> Result<Option<(Hlc, Vec<u8>)>, MetaError> {
    let snap = db.begin_read().map_err(store)?;
    let file = Scratch::new(scratch)?;
    let work = redb::Database::builder().create(&file.0).map_err(store)?;
    let tx = work.begin_write().map_err(store)?;
    crate::raft::snapshot::copy(&snap, &tx, |name| IMAGE_TABLES.contains(&name))
        .map_err(|e| MetaError::Store(format!("copying the state for an image: {e}")))?;
    drop(snap);
    let image = {
        let mut t = WriteTables::open(&tx);
        backfill::build_image(&mut t, volume, to, since)?
    };
    tx.abort().map_err(store)?;
    Ok(match image {
        Some(img) => Some((
            img.point,
            serde_json::to_vec(&img).map_err(|e| MetaError::Store(e.to_string()))?,
        )),
        None => None,
    })
}

/// A scratch database's file, removed when dropped (and, left by a member that stopped
/// mid-build, when the member starts: [`clear_scratch`]).
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(dir: &std::path::Path) -> Result<Self, MetaError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        std::fs::create_dir_all(dir)
            .map_err(|e| MetaError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Scratch(
            dir.join(format!("image.{}.{n}.redb", std::process::id())),
        ))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(file = %self.0.display(), error = %e, "removing an image's scratch database");
        }
    }
}

/// Removes the scratch databases a member left when it stopped while building an image.
pub fn clear_scratch(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("image.") && name.ends_with(".redb") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// While this member leads, brings in every volume this region was added to.
pub async fn backfill_loop(node: Arc<MetaNode>) {
    if node.peers.is_empty() {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !node.is_leader() {
            continue;
        }
        let pending: Vec<Backfill> = node
            .db
            .begin_read()
            .ok()
            .and_then(|tx| merge::state_table(&tx).ok().flatten())
            .and_then(|t| backfill::all(&t).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|b| !b.installed || !b.blocks)
            .collect();
        let leaving: Vec<_> = node
            .db
            .begin_read()
            .ok()
            .and_then(|tx| merge::state_table(&tx).ok().flatten())
            .and_then(|t| crate::namespace::leave::all_leaving(&t).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|l| !l.done)
            .collect();
        let state = node
            .db
            .begin_read()
            .ok()
            .and_then(|tx| merge::state_table(&tx).ok().flatten());
        let leaving: Vec<_> = leaving
            .into_iter()
            .filter(|l| {
                state
                    .as_ref()
                    .is_some_and(|t| crate::namespace::leave::may_drop(t, l).unwrap_or(false))
            })
            .collect();
        for l in leaving {
            loop {
                match node
                    .propose_internal(RaftRequest::LeaveStep(l.volume))
                    .await
                {
                    Ok(RaftResponse::Remote(Ok(o))) if o.applied == 0 => continue,
                    Ok(RaftResponse::Remote(Ok(_))) => {
                        info!(volume = l.volume, name = %l.name, "volume dropped: it left this region");
                    }
                    Ok(other) => warn!(volume = l.volume, ?other, "dropping a volume that left"),
                    Err(e) => warn!(volume = l.volume, error = %e, "dropping a volume that left"),
                }
                break;
            }
        }
        for b in pending {
            if let Err(e) = bring(&node, &b).await {
                warn!(volume = b.volume, from = b.from.0, error = %e, "bringing a volume into this region");
                let mut progress = lock(&node.backfills.progress);
                progress.entry(b.volume).or_default().error = e;
            }
        }
    }
}

fn set_state(node: &MetaNode, volume: u32, state: &'static str) {
    lock(&node.backfills.progress)
        .entry(volume)
        .or_default()
        .state = state;
}

/// Brings in what is left of `b`: the image (fetched, then installed), then the blocks.
async fn bring(node: &MetaNode, b: &Backfill) -> Result<(), String> {
    if !b.installed {
        bring_image(node, b).await?;
    }
    bring_blocks(node, b.volume).await
}

/// Has every block the volume's files reference fetched into this region
/// ([`fetch_blocks`]). After a leader change the walk starts over, and finds the blocks
/// fetched already.
async fn bring_blocks(node: &MetaNode, volume: u32) -> Result<(), String> {
    let blocks = {
        let tx = node.db.begin_read().map_err(|e| e.to_string())?;
        backfill::volume_blocks(&tx, volume).map_err(|e| e.to_string())?
    };
    {
        let mut progress = lock(&node.backfills.progress);
        let p = progress.entry(volume).or_default();
        p.state = "blocks";
        p.blocks_total = blocks.len() as u64;
        p.blocks_done = 0;
    }
    fetch_blocks(node, volume, &blocks, || {
        lock(&node.backfills.progress)
            .entry(volume)
            .or_default()
            .blocks_done += 1;
    })
    .await?;
    node.propose_internal(RaftRequest::BlocksBroughtIn(volume))
        .await
        .map_err(|e| e.to_string())?;
    set_state(node, volume, "done");
    info!(
        volume,
        blocks = blocks.len(),
        "every block of a volume brought into this region"
    );
    Ok(())
}

/// Has each of `blocks` (referenced by `volume`) in this region: each is asked of the
/// first chunkserver placement names for it, which on a miss fetches it from another
/// region of the volume (verified) and keeps it; repair makes the other copies. `done`
/// after each.
pub(crate) async fn fetch_blocks(
    node: &MetaNode,
    volume: u32,
    blocks: &[meridian_proto::BlockId],
    mut done: impl FnMut(),
) -> Result<(), String> {
    use meridian_proto::pb::chunk::GetRequest;
    use meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient;
    for id in blocks {
        let map = node.shared.map.borrow().clone();
        let target = meridian_proto::placement(id, &map, 1)
            .first()
            .and_then(|n| map.nodes.iter().find(|x| x.id == *n))
            .map(|n| n.address.clone())
            .ok_or("no chunkserver to fetch blocks into")?;
        let ch = node
            .pool
            .get(&target)
            .map_err(|e| format!("{target}: {e}"))?;
        let mut stream = ChunkServiceClient::new(ch)
            .max_decoding_message_size(2 * meridian_proto::wire::CHUNK_LEN)
            .get(GetRequest {
                block_id: id.as_bytes().to_vec().into(),
                offset: 0,
                length: 1,
                volume,
                fetch_remote: true,
                ..Default::default()
            })
            .await
            .map_err(|s| format!("block {id} from {target}: {}", s.message()))?
            .into_inner();
        while stream
            .message()
            .await
            .map_err(|s| format!("block {id} from {target}: {}", s.message()))?
            .is_some()
        {}
        done();
    }
    Ok(())
}

/// Fetches the rest of the image of `b`, then installs it.
async fn bring_image(node: &MetaNode, b: &Backfill) -> Result<(), String> {
    let peer = node
        .peers
        .iter()
        .find(|p| p.region == b.from.0)
        .ok_or_else(|| {
            format!(
                "region {} serves the image but is not a peer of this region",
                b.from.0
            )
        })?;
    use std::sync::atomic::Ordering::Relaxed;
    loop {
        let (point, offset) = {
            let progress = lock(&node.backfills.progress);
            let p = progress.get(&b.volume).cloned().unwrap_or_default();
            if !p.point.is_empty() && p.total > 0 && p.data.len() as u64 >= p.total {
                break;
            }
            (p.point.clone(), p.data.len() as u64)
        };
        let target = &peer.meta[node.backfills.next_addr.load(Relaxed) % peer.meta.len()];
        let ch = node.pool.get(target).map_err(|e| {
            node.backfills.next_addr.fetch_add(1, Relaxed);
            format!("{target}: {e}")
        })?;
        let reply = meridian_proto::channels::meta_client(ch)
            .volume_image(VolumeImageRequest {
                region: u32::from(node.shared.region.0),
                volume: b.volume,
                since: b.since.to_key().to_vec().into(),
                point: point.into(),
                offset,
            })
            .await;
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::Aborted => {
                // The serving leader changed: its new image starts over.
                lock(&node.backfills.progress).insert(b.volume, Progress::default());
                continue;
            }
            Err(s) if s.code() == Code::NotFound => {
                warn!(volume = b.volume, from = b.from.0, error = %s.message(), "the volume's image will never come: giving up bringing it in");
                lock(&node.backfills.progress).insert(b.volume, Progress::default());
                node.propose_internal(RaftRequest::CancelBackfill(b.volume))
                    .await
                    .map_err(|e| e.to_string())?;
                return Err(format!("region {}: {}", b.from.0, s.message()));
            }
            Err(s) => {
                if s.code() == Code::Unavailable {
                    set_state(node, b.volume, "waiting");
                }
                node.backfills.next_addr.fetch_add(1, Relaxed);
                return Err(format!("region {}: {}", b.from.0, s.message()));
            }
        };
        let mut progress = lock(&node.backfills.progress);
        let p = progress.entry(b.volume).or_default();
        if p.point.is_empty() {
            p.point = reply.point.to_vec();
        }
        if reply.data.is_empty() && (p.data.len() as u64) < reply.total {
            return Err("the serving region sent an empty piece".into());
        }
        p.state = "receiving";
        p.total = reply.total;
        p.data.extend_from_slice(&reply.data);
        p.error.clear();
    }
    let data = {
        let mut progress = lock(&node.backfills.progress);
        let p = progress.entry(b.volume).or_default();
        p.state = "installing";
        p.data.clone()
    };
    let image: VolumeImage = match serde_json::from_slice(&data) {
        Ok(i) => i,
        Err(e) => {
            lock(&node.backfills.progress).insert(b.volume, Progress::default());
            return Err(format!("a damaged image: {e}"));
        }
    };
    if image.volume.id != b.volume {
        lock(&node.backfills.progress).insert(b.volume, Progress::default());
        return Err(format!(
            "asked for volume {} and was sent volume {}",
            b.volume, image.volume.id
        ));
    }
    let (name, inodes) = (image.volume.name.clone(), image.inodes.len());
    let parts = image.parts().map_err(|e| e.to_string())?;
    for part in parts {
        match node
            .propose_internal(RaftRequest::InstallImage(part))
            .await
            .map_err(|e| e.to_string())?
        {
            RaftResponse::Remote(Ok(_)) => {}
            RaftResponse::Remote(Err(e)) => {
                // Start over with a new image.
                lock(&node.backfills.progress).insert(b.volume, Progress::default());
                return Err(format!("the image does not install: {e}"));
            }
            _ => return Err("unexpected answer to an install".into()),
        }
    }
    info!(volume = b.volume, %name, inodes, from = b.from.0, "volume's namespace brought into this region");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_start_clears_the_scratch_databases_it_left() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        std::fs::write(scratch.join("image.41.0.redb"), b"left by a stopped build").unwrap();
        std::fs::write(scratch.join("notes.txt"), b"not ours").unwrap();
        let b = Backfills::new(scratch.clone());
        let left: Vec<_> = std::fs::read_dir(&scratch)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["notes.txt"]);
        // A build's own file goes when it is done with, the folder stays.
        let file = Scratch::new(&b.scratch).unwrap();
        std::fs::write(&file.0, b"a build").unwrap();
        drop(file);
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 1);
    }
}
