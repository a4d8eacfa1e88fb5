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

use meridian_proto::Hlc;
use meridian_proto::pb::meta::{Backfill as BackfillRow, VolumeImageRequest};
use redb::ReadableDatabase;
use tonic::Code;
use tracing::{info, warn};

use crate::namespace::backfill::{self, Backfill, NEEDS_SPLIT};
use crate::namespace::merge;
use crate::raft::{Request as RaftRequest, Response as RaftResponse};
use crate::service::MetaNode;

pub(crate) mod serve;

use serve::{ScratchFile, Served};
pub use serve::{clear_scratch, serve_image};

/// Most image bytes in one answer.
const PIECE: usize = 4 << 20;

/// Images served and received by this member.
pub struct Backfills {
    /// Served: (region, volume) -> (point, the image as JSON in a file).
    images: Arc<Mutex<HashMap<(u16, u32), Served>>>,
    /// The images being built, by (region, volume): one at a time each.
    building: Arc<Mutex<std::collections::HashSet<(u16, u32)>>>,
    /// Received, by volume.
    progress: Mutex<HashMap<u32, Progress>>,
    /// Which of the serving region's members to ask (the next one after an error).
    next_addr: std::sync::atomic::AtomicUsize,
    /// Where images are built, served from and received into (see [`serve::build`]).
    scratch: std::path::PathBuf,
}

/// An image being received.
#[derive(Default, Clone)]
struct Progress {
    state: &'static str,
    point: Vec<u8>,
    /// The image's bytes received so far, in `file`.
    received: u64,
    /// Where they are (removed with the last clone of the progress).
    file: Option<Arc<ScratchFile>>,
    total: u64,
    error: String,
    /// When the image was found to need pieces that members of an older version cannot
    /// take: it is fetched again once every member reads them, or after
    /// [`UPGRADE_WAIT`] (a new image may need none).
    wait_upgrade: Option<std::time::Instant>,
    /// The serving region said to wait (the image not ready yet: the regions have not
    /// settled past the change, or the records it would carry are too many): asked again
    /// no sooner than this, later after each such answer in a row (`waits`).
    ask_after: Option<std::time::Instant>,
    waits: u32,
    blocks_total: u64,
    blocks_done: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Backfills {
    /// A member's backfills, with images in `scratch` (a folder of its own, whose
    /// leftovers from an earlier run are removed now).
    pub fn new(scratch: std::path::PathBuf) -> Self {
        clear_scratch(&scratch);
        Backfills {
            images: Default::default(),
            building: Default::default(),
            progress: Default::default(),
            next_addr: Default::default(),
            scratch,
        }
    }

    /// Lets go of the files no longer needed: served images kept `keep_for`, and images
    /// received for volumes `receiving` no longer names (this member stopped leading, or
    /// the backfill ended or was given up elsewhere: whoever goes on starts over). Returns
    /// them, to be removed off the runtime's threads.
    fn sweep(&self, receiving: impl Fn(u32) -> bool, keep_for: Duration) -> Vec<Box<dyn Send>> {
        let mut gone: Vec<Box<dyn Send>> = Vec::new();
        lock(&self.images).retain(|_, (_, image, at)| {
            let keep = at.elapsed() < keep_for;
            if !keep {
                gone.push(Box::new(image.clone()));
            }
            keep
        });
        for (volume, p) in lock(&self.progress).iter_mut() {
            if p.file.is_some()
                && !receiving(*volume)
                && let Some(f) = std::mem::take(p).file
            {
                gone.push(Box::new(f));
            }
        }
        gone
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
                    bytes_received: p.received,
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

/// While this member leads, brings in every volume this region was added to.
pub async fn backfill_loop(node: Arc<MetaNode>) {
    if node.peers.is_empty() {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !node.is_leader() {
            let gone = node.backfills.sweep(|_| false, serve::KEEP_IMAGE);
            if !gone.is_empty() {
                remove_later(gone);
            }
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
        let gone = node.backfills.sweep(
            |v| pending.iter().any(|b| b.volume == v && !b.installed),
            serve::KEEP_IMAGE,
        );
        if !gone.is_empty() {
            remove_later(gone);
        }
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

/// After the serving region says to wait, the first wait before asking again; each such
/// answer in a row doubles it, up to [`ASK_AGAIN_MAX`].
const ASK_AGAIN_FIRST: Duration = Duration::from_millis(500);
const ASK_AGAIN_MAX: Duration = Duration::from_secs(4);

/// The wait before asking again after `waits` answers in a row that said to wait.
fn ask_again_after(waits: u32) -> Duration {
    (ASK_AGAIN_FIRST.saturating_mul(1 << waits.clamp(1, 8)) / 2).min(ASK_AGAIN_MAX)
}

/// How long an install waits for the members' upgrade before it tries a new image.
const UPGRADE_WAIT: Duration = Duration::from_secs(600);

/// Forgets what was received of `volume`'s image: the next fetch starts over.
fn start_over(node: &MetaNode, volume: u32) {
    let old = lock(&node.backfills.progress).insert(volume, Progress::default());
    remove_later(old.and_then(|p| p.file));
}

/// Lets go of `file` off the runtime's threads (removing a file of hundreds of MiB is
/// the file system's work).
fn remove_later(file: impl Send + 'static) {
    tokio::task::spawn_blocking(move || drop(file));
}

fn set_state(node: &MetaNode, volume: u32, state: &'static str) {
    lock(&node.backfills.progress)
        .entry(volume)
        .or_default()
        .state = state;
}

/// Whether the serving region said to wait for `volume`'s image, and it is too soon to
/// ask again.
fn asked_too_soon(node: &MetaNode, volume: u32) -> bool {
    lock(&node.backfills.progress)
        .get(&volume)
        .and_then(|p| p.ask_after)
        .is_some_and(|t| std::time::Instant::now() < t)
}

/// Notes an answer to a request for `volume`'s image: one that said to wait puts the next
/// request off, later after each in a row; any other ends the waits.
fn note_answer(node: &MetaNode, volume: u32, told_to_wait: bool) {
    let mut progress = lock(&node.backfills.progress);
    let p = progress.entry(volume).or_default();
    if told_to_wait {
        p.waits = p.waits.saturating_add(1);
        p.ask_after = Some(std::time::Instant::now() + ask_again_after(p.waits));
    } else {
        (p.ask_after, p.waits) = (None, 0);
    }
}

/// Brings in what is left of `b`: the image (fetched, then installed), then the blocks.
async fn bring(node: &MetaNode, b: &Backfill) -> Result<(), String> {
    if !b.installed {
        if asked_too_soon(node, b.volume) {
            // The last answer's reason stays shown.
            return Ok(());
        }
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
    let waiting = lock(&node.backfills.progress)
        .get(&b.volume)
        .and_then(|p| p.wait_upgrade);
    if let Some(since) = waiting {
        if since.elapsed() < UPGRADE_WAIT && !node.group_reads(1).await {
            return Err(format!(
                "the image of volume {} needs split pieces: waiting for every member to be upgraded",
                b.volume
            ));
        }
        start_over(node, b.volume);
    }
    let started = std::time::Instant::now();
    loop {
        let (point, offset) = {
            let progress = lock(&node.backfills.progress);
            let (point, received, total) = progress
                .get(&b.volume)
                .map(|p| (p.point.clone(), p.received, p.total))
                .unwrap_or_default();
            if !point.is_empty() && total > 0 && received >= total {
                break;
            }
            (point, received)
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
            Ok(r) => {
                note_answer(node, b.volume, false);
                r.into_inner()
            }
            Err(s) if s.code() == Code::Aborted => {
                // The serving leader changed: its new image starts over.
                start_over(node, b.volume);
                continue;
            }
            Err(s) if s.code() == Code::NotFound => {
                warn!(volume = b.volume, from = b.from.0, error = %s.message(), "the volume's image will never come: giving up bringing it in");
                start_over(node, b.volume);
                node.propose_internal(RaftRequest::CancelBackfill(b.volume))
                    .await
                    .map_err(|e| e.to_string())?;
                return Err(format!("region {}: {}", b.from.0, s.message()));
            }
            Err(s) => {
                if s.code() == Code::Unavailable {
                    set_state(node, b.volume, "waiting");
                }
                note_answer(node, b.volume, serve::told_to_wait(&s));
                node.backfills.next_addr.fetch_add(1, Relaxed);
                return Err(format!("region {}: {}", b.from.0, s.message()));
            }
        };
        if reply.data.is_empty() && offset < reply.total {
            return Err("the serving region sent an empty piece".into());
        }
        let file = {
            let mut progress = lock(&node.backfills.progress);
            let p = progress.entry(b.volume).or_default();
            match &p.file {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(
                        ScratchFile::new(&node.backfills.scratch, "image-received")
                            .map_err(|e| e.to_string())?,
                    );
                    p.file = Some(f.clone());
                    f
                }
            }
        };
        // Kept on disk, not in memory: an image of a million files is hundreds of MiB.
        let (data, into) = (reply.data, file.clone());
        let written = tokio::task::spawn_blocking(move || {
            let out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&into.0)?;
            std::os::unix::fs::FileExt::write_all_at(&out, &data, offset)?;
            Ok::<_, std::io::Error>(data.len() as u64)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("keeping the image received: {e}"))?;
        let mut progress = lock(&node.backfills.progress);
        let p = progress.entry(b.volume).or_default();
        if p.received != offset || !p.file.as_ref().is_some_and(|f| Arc::ptr_eq(f, &file)) {
            continue; // started over meanwhile
        }
        if p.point.is_empty() {
            p.point = reply.point.to_vec();
        }
        p.state = "receiving";
        p.total = reply.total;
        p.received += written;
        p.error.clear();
    }
    let file = {
        let mut progress = lock(&node.backfills.progress);
        let p = progress.entry(b.volume).or_default();
        p.state = "installing";
        info!(
            volume = b.volume,
            bytes = p.received,
            ms = started.elapsed().as_millis() as u64,
            "received a volume image"
        );
        match p.file.clone() {
            Some(f) => f,
            None => {
                drop(progress);
                start_over(node, b.volume);
                return Err("an image received into no file: starting over".into());
            }
        }
    };
    // A group with a member older than `InstallImageSplit` gets the image cut with each
    // inode whole in a piece: that member could not read a split piece, and its region's
    // log would stop there. An install of this image going on goes on cut as it began.
    let received = lock(&node.backfills.progress)
        .get(&b.volume)
        .and_then(|p| Hlc::from_key(&p.point));
    let going_on = b.parts > 0 && b.point.is_some() && b.point == received;
    let whole = !node.group_reads(1).await || (going_on && b.whole);
    if whole {
        info!(
            volume = b.volume,
            "cutting the image with each inode whole in a piece: a member does not read split pieces"
        );
    }
    if whole && !going_on {
        // Cut once without installing first: an image a piece cut whole cannot hold is
        // refused before any piece is installed, so that the install begins afresh, and
        // split, once the members are upgraded (begun whole at this point, it would go
        // on whole and be refused again).
        let (volume, file) = (b.volume, file.clone());
        let dry = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&file.0).map_err(|e| e.to_string())?;
            let f = std::io::BufReader::with_capacity(1 << 20, f);
            backfill::read_pieces(f, volume, backfill::PART_JSON, true, |_| true)
        })
        .await
        .map_err(|e| format!("cutting the image: {e}"))
        .and_then(|r| r);
        if let Err(e) = dry {
            start_over(node, b.volume);
            if e.contains(NEEDS_SPLIT) {
                lock(&node.backfills.progress)
                    .entry(b.volume)
                    .or_default()
                    .wait_upgrade = Some(std::time::Instant::now());
            }
            return Err(e);
        }
    }
    // Read and cut on a thread of its own, a piece at a time (the image is never whole
    // in memory), while the pieces already cut are installed here.
    let (give, mut cut) = tokio::sync::mpsc::channel(1);
    let volume = b.volume;
    let read = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&file.0).map_err(|e| e.to_string())?;
        let f = std::io::BufReader::with_capacity(1 << 20, f);
        backfill::read_pieces(f, volume, backfill::PART_JSON, whole, |piece| {
            give.blocking_send(piece).is_ok()
        })
    });
    let (mut pieces, mut split) = (0, 0);
    let mut refused = None;
    // An install going on at the same point skips the pieces it installed already, by
    // their index: they must be the pieces cut here (a member of another version may have
    // cut the image otherwise, and rows would be skipped unseen). The inodes they began
    // tell, at best (ADR 0009: an install does not span an upgrade).
    let resuming = |point| b.point == Some(point) && b.parts > 0;
    let (mut began, mut resumed, mut reached) = (0, false, false);
    // Refused for a member that reads no split piece: wait for its upgrade.
    let mut wait = false;
    while let Some(piece) = cut.recv().await {
        pieces += 1;
        split += u32::from(piece.split);
        if resuming(piece.part.point) {
            if b.whole != whole {
                // Begun split, and a member that reads no split piece came meanwhile:
                // neither cut may go on (the same image comes again while the settled
                // bound stays), so the install waits for that member's upgrade.
                wait = true;
                refused = Some(
                    "the image's pieces installed so far were cut otherwise, and a member \
                     reads no split piece: the install waits for its upgrade"
                        .into(),
                );
                break;
            }
            resumed = true;
            if piece.part.index < b.parts {
                // Installed already: not proposed again.
                began += piece.heads;
                continue;
            }
            reached = true;
            if piece.part.index == b.parts && began != b.inodes {
                refused = Some(format!(
                    "the {} pieces of the image installed so far began {} inodes, and the same \
                     pieces cut here begin {began}: they were cut otherwise (by a member of \
                     another version); the install starts over with a new image",
                    b.parts, b.inodes
                ));
                break;
            }
        }
        let request = if piece.split {
            RaftRequest::InstallImageSplit(piece.part)
        } else {
            RaftRequest::InstallImage(piece.part)
        };
        match node.propose_internal(request).await {
            Ok(RaftResponse::Remote(Ok(_))) => {}
            Ok(RaftResponse::Remote(Err(e))) => {
                refused = Some(format!("the image does not install: {e}"));
                break;
            }
            Ok(_) => {
                refused = Some("unexpected answer to an install".into());
                break;
            }
            Err(e) => {
                // Not refused (this member stopped leading, say): the pieces go again
                // from the first, and those installed already are skipped.
                drop(cut);
                let _ = read.await;
                return Err(e.to_string());
            }
        }
    }
    drop(cut);
    let read = match read.await {
        Ok(read) => read,
        Err(e) => Err(format!("reading the image: {e}")),
    };
    let read = match (refused, read) {
        (None, Ok(_)) if resumed && !reached => {
            // Every piece was installed before, and the image's last was not among them:
            // cut otherwise.
            start_over(node, b.volume);
            return Err(format!(
                "the image cut here has {pieces} pieces, and {} were installed: cut otherwise \
                 (by a member of another version); the install starts over",
                b.parts
            ));
        }
        (Some(e), _) | (None, Err(e)) => {
            // Start over with a new image.
            start_over(node, b.volume);
            if wait || (whole && e.contains(NEEDS_SPLIT)) {
                // Not before the members can take it.
                lock(&node.backfills.progress)
                    .entry(b.volume)
                    .or_default()
                    .wait_upgrade = Some(std::time::Instant::now());
            }
            return Err(e);
        }
        (None, Ok(read)) => read,
    };
    let backfill::ImageRead { name, inodes } = read;
    // The image's file goes (the progress keeps its counts for `admin regions`).
    let file = lock(&node.backfills.progress)
        .get_mut(&b.volume)
        .and_then(|p| p.file.take());
    remove_later(file);
    info!(volume = b.volume, %name, inodes, pieces, split, from = b.from.0, "volume's namespace brought into this region");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_answer_saying_to_wait_makes_the_next_ask_later_and_later() {
        let waits: Vec<u64> = (1..=6)
            .map(|n| ask_again_after(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, vec![500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(ask_again_after(u32::MAX), ASK_AGAIN_MAX);
        assert!(serve::told_to_wait(&serve::wait("not settled".into())));
        // A member down, or no leader: asked again at once, elsewhere.
        assert!(!serve::told_to_wait(&tonic::Status::unavailable("refused")));
        assert!(!serve::told_to_wait(&tonic::Status::internal("x")));
    }

    #[test]
    fn a_members_start_clears_the_scratch_files_it_left() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        let left = ScratchFile::new(&scratch, "image-served").unwrap();
        std::fs::write(&left.0, b"left by a member that stopped").unwrap();
        std::mem::forget(left);
        std::fs::write(scratch.join("notes.txt"), b"not ours").unwrap();
        let b = Backfills::new(scratch.clone());
        let names = || -> Vec<String> {
            std::fs::read_dir(&scratch)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        };
        assert_eq!(names(), ["notes.txt"]);
        // A file goes when it is done with, the folder stays.
        let file = ScratchFile::new(&b.scratch, "image-state").unwrap();
        std::fs::write(&file.0, b"a build").unwrap();
        assert_eq!(names().len(), 2);
        drop(file);
        assert_eq!(names(), ["notes.txt"]);
    }

    #[test]
    fn files_no_longer_needed_are_swept_and_the_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backfills::new(dir.path().to_path_buf());
        let made = |kind| {
            let f = ScratchFile::new(&b.scratch, kind).unwrap();
            std::fs::write(&f.0, b"bytes").unwrap();
            f
        };
        for volume in [7, 8] {
            let p = Progress {
                state: "receiving",
                received: 5,
                file: Some(Arc::new(made("image-received"))),
                ..Default::default()
            };
            lock(&b.progress).insert(volume, p);
        }
        let image = Arc::new(serve::ImageFile {
            file: made("image-served"),
            len: 5,
            served: Default::default(),
        });
        lock(&b.images).insert(
            (2, 1),
            (
                meridian_proto::Hlc::default(),
                image,
                std::time::Instant::now(),
            ),
        );
        let count = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(count(), 3);
        // Volume 7 is still being received, 8 no longer (given up, or installed with an
        // answer lost); the served image is young.
        drop(b.sweep(|v| v == 7, Duration::from_secs(3600)));
        assert_eq!(count(), 2, "8's image went");
        {
            let progress = lock(&b.progress);
            let received = (progress[&7].received, progress[&8].received);
            assert_eq!(received, (5, 0), "8 starts over, from nothing");
        }
        assert!(lock(&b.images).contains_key(&(2, 1)));
        // Past its time the served image goes; a member that stops leading receives
        // nothing.
        drop(b.sweep(|_| false, Duration::ZERO));
        assert_eq!(count(), 0);
        assert!(lock(&b.images).is_empty());
    }
}
