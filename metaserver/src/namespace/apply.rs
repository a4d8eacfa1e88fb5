//! Applying operations to the namespace: a local command as its region's leader stamped
//! it, and batches of records pulled from other regions, merged into HLC order. The
//! operations themselves live in `ops`, what a replay does about concurrent changes in
//! `conflict`, and the merged log in `merge`.
//!
//! A local operation checks everything first and only then writes; a refusal changes
//! nothing. A replayed record applies what its origin decided: one that cannot apply any
//! more (its target is gone for good, a move would make a cycle, the record is malformed
//! or hostile) is skipped and recorded as a conflict, the same way in every region, and
//! never stops the state machine. Only a failing store (`NsError::Store`) does.

use meridian_proto::RegionId;
use redb::ReadableTable;

use super::backfill::{self, Admission};
use super::ctx::{Ctx, find_volume, find_volume_row, record_conflict};
use super::history;
use super::merge::{self, MergeOutcome, RemoteBatch};
use super::ops::{attrs, content, copy, entries, volumes, xattrs};
use super::staging;
use super::tables::{WriteTables, counter, read_inode, read_volume, store_err};
use super::types::*;

/// Applies `cmd`, a local operation stamped by this region's leader. Returns the outcome of
/// the operation; a retried request (same client and operation id) returns the first
/// outcome without applying again. Only `NsError::Store` means the transaction itself is
/// unusable.
///
/// A successful operation becomes a [`Record`]: it joins the merged log (with what it
/// overwrote, so a late record from another region can be ordered before it) and this
/// region's change log, which the other regions pull.
pub fn apply(t: &mut WriteTables<'_>, cmd: &Command) -> Result<Reply, NsError> {
    // Bookkeeping of this region's staged blocks: no record, nothing to undo or repeat.
    if let Op::Unstage { ino, blocks } = &cmd.op {
        return staging::unstage(t, *ino, blocks);
    }
    if let Some((client, op)) = cmd.request {
        let key = super::tables::pair_key(client, op);
        if let Some(v) = t.requests.open()?.get(key.as_slice()).map_err(store_err)? {
            return serde_json::from_slice::<Result<Reply, NsError>>(v.value())
                .map_err(|e| NsError::Store(format!("damaged request record: {e}")))?;
        }
    }
    // Stamps only grow along the merged log: a command stamped before a remote record
    // that applied ahead of it, or before a promise to the peers, takes the next stamp
    // after it (deterministic, so every member agrees).
    let hlc = match merge::horizon(t.region_state.open()?)? {
        Some(head) if cmd.hlc <= head => head.successor(cmd.hlc.region),
        _ => cmd.hlc,
    };
    let volume = op_volume(t, &cmd.op)?;
    let mut ctx = Ctx::new(hlc, cmd.now, None, 0);
    ctx.given = cmd.ino;
    let logged = merge::enters_log(t)?;
    t.begin_record(hlc, logged);
    let outcome = match &volume {
        // A copy still being made changes only by its own steps (or goes).
        Some(v) if v.copying.is_some() && !matches!(cmd.op, Op::DeleteVolume { .. }) => Err(
            NsError::ReadOnly(format!("volume {} is still being copied", v.name)),
        ),
        Some(v) if v.read_only && !allowed_when_read_only(&cmd.op) => Err(NsError::ReadOnly(
            format!("volume {} is a snapshot", v.name),
        )),
        Some(v)
            if cmd.op.decided_at_home()
                && !cmd.op.is_volume_level()
                && v.policy.home.is_some_and(|h| h != hlc.region) =>
        {
            Err(NsError::ReadOnly(format!(
                "volume {}'s home is region {}: its changes are made there",
                v.name,
                v.policy.home.map_or(0, |h| h.0)
            )))
        }
        Some(v) if !v.policy.regions.is_empty() && !v.policy.regions.contains(&hlc.region) => {
            Err(NsError::Perm(format!(
                "volume {} no longer lives in region {}",
                v.name, hlc.region.0
            )))
        }
        _ => staging::check(t, &cmd.op).and_then(|()| apply_op(t, &cmd.op, &ctx)),
    };
    let images = t.end_record();
    match &outcome {
        Err(NsError::Store(_)) => return outcome,
        // A refusal changes nothing, even if the operation wrote before it found out.
        Err(_) => t.restore(&images)?,
        Ok(_) => {}
    }
    if let Ok(reply) = &outcome {
        staging::keep_for(t, &cmd.op)?;
        let before = volume.as_ref().map(|v| v.policy.regions.clone());
        let volume = match (reply, volume) {
            (Reply::Volume(v), _) => Some(v.clone()),
            (_, v) => v,
        };
        let mut regions = volume
            .as_ref()
            .map(|v| v.policy.regions.clone())
            .unwrap_or_default();
        if matches!(cmd.op, Op::SetVolumeRegions { .. }) {
            // The regions that leave learn it too.
            regions.extend(before.unwrap_or_default());
            regions.sort();
            regions.dedup();
        }
        // What the record may depend on, for the regions it goes to (none for a volume
        // that lives here only: the record never leaves).
        let mut deps = Vec::new();
        if regions.len() > 1 {
            for p in merge::origins(t.region_state.open()?)? {
                let wm = merge::watermark(t.region_state.open()?, p)?;
                if wm > 0 {
                    deps.push((p, wm));
                }
            }
        }
        let record = Record {
            hlc,
            now: cmd.now,
            op: cmd.op.without_staged(),
            effects: ctx.out.take(),
            volume: volume.as_ref().map_or(0, |v| v.id),
            regions,
            deps,
            client: cmd.request.map(|(client, _)| client),
            epoch: volume
                .as_ref()
                .filter(|v| v.policy.home.is_some() && cmd.op.decided_at_home())
                .map_or(0, |v| v.policy.epoch),
        };
        if logged {
            merge::log_applied(t, &record, &images)?;
        } else {
            // Promised too: a rewind after a peer is added resets the head to the newest
            // record in the log, and this one is not there; the horizon must not go back.
            merge::promise(t, hlc)?;
            merge::applied_past(t, hlc)?;
        }
        let seq = t.next(counter::NEXT_CHANGE, 1)?;
        let bytes = serde_json::to_vec(&record).map_err(|e| NsError::Store(e.to_string()))?;
        t.changelog
            .open_mut()?
            .insert(seq, bytes.as_slice())
            .map_err(store_err)?;
        if seq % history::TRIM_EVERY == 0 {
            history::trim_changelog(t, cmd.hlc.wall_ms)?;
        }
    }
    if let Some((client, op)) = cmd.request {
        let key = super::tables::pair_key(client, op);
        let bytes = serde_json::to_vec(&outcome).map_err(|e| NsError::Store(e.to_string()))?;
        t.requests
            .open_mut()?
            .insert(key.as_slice(), bytes.as_slice())
            .map_err(store_err)?;
        let mut by_time = cmd.hlc.wall_ms.to_be_bytes().to_vec();
        by_time.extend_from_slice(&key);
        t.request_times
            .open_mut()?
            .insert(by_time.as_slice(), ())
            .map_err(store_err)?;
    }
    history::prune_requests(t, cmd.hlc.wall_ms)?;
    outcome
}

/// What a snapshot (a read-only volume) still lets through: its own deletion and quota,
/// and copies made of it (a clone or a restore).
fn allowed_when_read_only(op: &Op) -> bool {
    matches!(
        op,
        Op::DeleteVolume { .. } | Op::SetVolumeQuota { .. } | Op::CloneVolume { .. }
    )
}

/// The volume an operation changes, as it is before the operation (none for a new volume
/// or a missing inode, where the operation fails or says itself).
fn op_volume(t: &WriteTables<'_>, op: &Op) -> Result<Option<Volume>, NsError> {
    let ino = match op {
        Op::DeleteVolume { name }
        | Op::SetVolumeQuota { name, .. }
        | Op::SetVolumeRegions { name, .. }
        | Op::SetVolumeHome { name, .. } => {
            return read_volume(t.volumes()?, name);
        }
        Op::CloneVolume { source, .. } => return read_volume(t.volumes()?, source),
        // Every inode of a batch is of one volume (checked when it applies): that of the
        // first one still there.
        Op::AccessedBatch { inos } => {
            for ino in inos {
                if let Some(node) = read_inode(t.inodes()?, *ino)? {
                    return find_volume(t, node.attr.volume);
                }
            }
            return Ok(None);
        }
        _ => match op.inode_changed() {
            Some(ino) => ino,
            None => return Ok(None),
        },
    };
    match read_inode(t.inodes()?, ino)? {
        Some(node) => Ok(find_volume(t, node.attr.volume)?),
        None => Ok(None),
    }
}

/// Whether the record's origin may change what the record changes here: the volume must
/// live in the origin's region (by this region's own state, not the record's word), and
/// the record must name the volume its inode belongs to.
fn origin_may_change(
    t: &WriteTables<'_>,
    record: &Record,
    vol: Option<&Volume>,
) -> Result<(), NsError> {
    // (A copy checks its source's home itself: its own volume does not exist yet.)
    if matches!(record.op, Op::CreateVolume { .. } | Op::CloneVolume { .. }) {
        return Ok(());
    }
    let origin = record.hlc.region;
    let vol = vol.ok_or_else(|| NsError::NotFound(format!("volume {}", record.volume)))?;
    // A volume that names no regions lives in the one that made it (its id's top half):
    // its own records replay there after a rewind.
    let made_in = RegionId((vol.id >> 16) as u16);
    let lives_there = if vol.policy.regions.is_empty() {
        origin == made_in
    } else {
        vol.policy.regions.contains(&origin)
    };
    if !lives_there {
        return Err(NsError::Perm(format!(
            "volume {:?} does not live in region {}",
            vol.name, origin.0
        )));
    }
    // (A volume's deletion replays by id: its name may belong to another volume by now.)
    if !record.op.is_volume_level()
        && let Some(v) = op_volume(t, &record.op)?
        && v.id != vol.id
    {
        return Err(NsError::Invalid(format!(
            "the record names volume {} but changes volume {}",
            vol.id, v.id
        )));
    }
    Ok(())
}

/// Applies records pulled from another region: each exactly once (the per-origin
/// watermark advances in the same transaction), merged into HLC order. A batch that
/// claims records of another origin, or carries a record of a volume that does not live in
/// `own`, is refused whole and changes nothing.
///
/// Delivery is causal: a record that depends on records of a third region (one this
/// region pulls from) not applied here yet is held back with everything after it, and
/// comes again in a later pull.
pub fn apply_remote(
    t: &mut WriteTables<'_>,
    own: RegionId,
    batch: &RemoteBatch,
) -> Result<MergeOutcome, NsError> {
    if batch.origin == own {
        return Err(NsError::Invalid(format!(
            "records of region {} sent to itself",
            own.0
        )));
    }
    let wm = merge::watermark(t.region_state.open()?, batch.origin)?;
    for (_, record) in &batch.records {
        if record.hlc.region != batch.origin {
            return Err(NsError::Invalid(format!(
                "record {} in a batch from region {}",
                record.hlc, batch.origin.0
            )));
        }
        if !record.allowed_in(own) {
            return Err(NsError::Perm(format!(
                "volume {} does not live in region {} (data residency): record {} refused",
                record.volume, own.0, record.hlc
            )));
        }
    }
    let origins = merge::origins(t.region_state.open()?)?;
    let mut known = std::collections::BTreeMap::new();
    for p in &origins {
        known.insert(*p, merge::watermark(t.region_state.open()?, *p)?);
    }
    let mut fresh: Vec<Record> = Vec::new();
    let mut last_seq = wm;
    let mut held = 0;
    let mut parked = 0;
    // Records waiting apart, per volume (counted once per batch).
    let mut waiting = std::collections::BTreeMap::new();
    // Volumes whose image has not arrived yet (see `backfill`).
    let mut awaiting = std::collections::BTreeSet::new();
    for (seq, record) in &batch.records {
        if *seq <= last_seq {
            continue;
        }
        let missing = record.deps.iter().any(|(region, needed)| {
            *region != own
                && *region != batch.origin
                && known.get(region).is_some_and(|have| have < needed)
        });
        let admission = backfill::admission(t.region_state.open()?, own, record)?;
        let waits = admission == Admission::Wait || awaiting.contains(&record.volume);
        if held == 0 && !missing && waits && parkable(t, record.volume, &awaiting, &mut waiting)? {
            // Its volume's image is on its way: the record waits apart, and the origin's
            // later records of other volumes go on.
            backfill::park(t, record)?;
            parked += 1;
            last_seq = *seq;
            continue;
        }
        if held > 0 || missing || waits {
            if held == 0 {
                // The origin left out records before this one only because they may not
                // come here: they count as applied, so records that depend on them are
                // not held back for ever.
                last_seq = last_seq.max(seq - 1);
            }
            held += 1;
            continue;
        }
        last_seq = *seq;
        if matches!(admission, Admission::InImage | Admission::Left) {
            continue;
        }
        if backfill::wanted(t, own, record)? {
            awaiting.insert(record.volume);
        }
        if !merge::holds(t, record.hlc)? && !fresh.iter().any(|r| r.hlc == record.hlc) {
            fresh.push(record.clone());
        }
    }
    let marks = if held > 0 {
        // Records of the origin older than its marks are still to come.
        merge::Marks {
            frontier: fresh.last().map(|r| r.hlc),
            ..merge::Marks::default()
        }
    } else {
        last_seq = last_seq.max(batch.scanned.saturating_sub(1));
        merge::Marks {
            frontier: batch.frontier,
            settled: batch.settled,
            settled_by: batch.settled_by.clone(),
        }
    };
    let mut outcome = MergeOutcome {
        watermark: last_seq,
        held,
        parked,
        ..MergeOutcome::default()
    };
    merge_fresh(t, own, fresh, &mut outcome)?;
    super::relay::keep_for_relay(t, batch, wm, last_seq)?;
    merge::note_batch(t, own, batch.origin, last_seq, &marks)?;
    Ok(outcome)
}

/// Whether a record of `volume`, which waits for the volume's image, may wait apart: the
/// volume is being brought in (not waiting for its earlier copy to be dropped), and not
/// too many of its records wait already (`waiting` counts them, and this one if it may).
fn parkable(
    t: &WriteTables<'_>,
    volume: u32,
    awaiting: &std::collections::BTreeSet<u32>,
    waiting: &mut std::collections::BTreeMap<u32, usize>,
) -> Result<bool, NsError> {
    let bringing = awaiting.contains(&volume)
        || backfill::get(t.region_state.open()?, volume)?.is_some_and(|b| !b.installed);
    if !bringing {
        return Ok(false);
    }
    let n = match waiting.get_mut(&volume) {
        Some(n) => n,
        None => waiting.entry(volume).or_insert(backfill::parked_count(
            t.parked.open()?,
            volume,
            backfill::MAX_PARKED,
        )?),
    };
    if *n >= backfill::MAX_PARKED {
        return Ok(false);
    }
    *n += 1;
    Ok(true)
}

/// Merges records new here into HLC order: everything newer is undone, and replayed after.
fn merge_fresh(
    t: &mut WriteTables<'_>,
    own: RegionId,
    fresh: Vec<Record>,
    outcome: &mut MergeOutcome,
) -> Result<(), NsError> {
    let Some(low) = fresh.iter().map(|r| r.hlc).min() else {
        return Ok(());
    };
    let n = fresh.len();
    outcome.applied += n as u64;
    if full_merge_forced() {
        outcome.redone += replay_all_from(t, own, low, fresh)?;
        return Ok(());
    }
    // Only the newer records that do not commute with these are undone and redone.
    let (mut all, replayed) = merge::rewind_meeting(t, &fresh)?;
    outcome.redone += all.len() as u64;
    all.extend(fresh);
    replay_in_order(t, own, &mut all)?;
    if merge::kept_still_commute(t, &all, &replayed)? {
        return Ok(());
    }
    // A replay wrote where a record left applied had written: that one must come after
    // it after all. The replays go back first (in the reverse of the order they were
    // made: their images were taken over the records left applied), then everything from
    // the oldest late record on, and all of it is redone in order.
    // (A record that left the log as it applied, below the settled bound, is final: it
    // stays, and is not replayed again.)
    let mut again = Vec::with_capacity(all.len());
    for r in all.into_iter().rev() {
        if merge::holds(t, r.hlc)? {
            merge::unapply(t, r.hlc)?;
            again.push(r);
        }
    }
    let replayed = again.len() as u64;
    outcome.redone += replay_all_from(t, own, low, again)? + replayed;
    Ok(())
}

/// Undoes every record from `low` on and replays them with `more`, all in HLC order;
/// returns how many were undone.
fn replay_all_from(
    t: &mut WriteTables<'_>,
    own: RegionId,
    low: meridian_proto::Hlc,
    more: Vec<Record>,
) -> Result<u64, NsError> {
    let mut all = merge::rewind(t, low)?;
    let undone = all.len() as u64;
    all.extend(more);
    replay_in_order(t, own, &mut all)?;
    Ok(undone)
}

/// Replays `records` in HLC order.
fn replay_in_order(
    t: &mut WriteTables<'_>,
    own: RegionId,
    records: &mut [Record],
) -> Result<(), NsError> {
    records.sort_by_key(|r| r.hlc);
    for record in records.iter() {
        replay(t, own, record)?;
    }
    Ok(())
}

/// `MERIDIAN_MERGE_FULL=1` in a metaserver's environment makes it undo and redo every
/// newer record around late ones, as before issue 16: for measuring the difference
/// (`benches/region_lag.rs`). Both ways end in the same state, but not always through
/// the same intermediate one: every member of a region must run with the same setting
/// (`meridian dev` passes its environment to all of them).
fn full_merge_forced() -> bool {
    static FULL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FULL.get_or_init(|| std::env::var("MERIDIAN_MERGE_FULL").is_ok_and(|v| v == "1"))
}

/// Installs one piece of the image of a volume this region is being brought into (see
/// `backfill`); the last piece's records merge like a batch. A piece that does not fit
/// is refused and changes nothing.
pub fn install_image(
    t: &mut WriteTables<'_>,
    own: RegionId,
    part: &backfill::ImagePart,
) -> Result<MergeOutcome, NsError> {
    let mut outcome = MergeOutcome::default();
    let Some(records) = backfill::install(t, part)? else {
        return Ok(outcome);
    };
    let mut fresh: Vec<Record> = Vec::new();
    // The image's late records, and this volume's records that waited for it.
    let waited = backfill::take_parked(t, part.volume)?;
    for record in records.into_iter().chain(waited) {
        // Only the image's own volume, from its point on (hostile or not, nothing else).
        if record.volume != part.volume || record.hlc < part.point || record.hlc.region == own {
            continue;
        }
        if !merge::holds(t, record.hlc)? && !fresh.iter().any(|r| r.hlc == record.hlc) {
            fresh.push(record);
        }
    }
    // (The log stays unpruned past what waited until it is merged.)
    merge_fresh(t, own, fresh, &mut outcome)?;
    backfill::note_parked_low(t)?;
    Ok(outcome)
}

/// Gives up bringing `volume` in (see [`backfill::cancel`]); the records of it that
/// waited apart are merged now, and skipped (the volume is not here), or start a new
/// backfill if one of them brings this region in again.
pub fn cancel_backfill(
    t: &mut WriteTables<'_>,
    own: RegionId,
    volume: u32,
) -> Result<MergeOutcome, NsError> {
    backfill::cancel(t, volume)?;
    let mut outcome = MergeOutcome::default();
    let mut fresh = Vec::new();
    for record in backfill::take_parked(t, volume)? {
        if !merge::holds(t, record.hlc)? {
            fresh.push(record);
        }
    }
    merge_fresh(t, own, fresh, &mut outcome)?;
    backfill::note_parked_low(t)?;
    Ok(outcome)
}

/// Replays one record: conflicts are resolved, and a record that cannot apply any more is
/// skipped and recorded. Only a failing store is an error.
fn replay(t: &mut WriteTables<'_>, own: RegionId, record: &Record) -> Result<(), NsError> {
    if backfill::wanted(t, own, record)? {
        // This region is added to a volume it does not hold: the volume comes as an image,
        // which holds this change too.
        backfill::start(t, record)?;
        return merge::log_applied(t, record, &[]);
    }
    if matches!(
        backfill::admission(t.region_state.open()?, own, record)?,
        Admission::Left | Admission::InImage
    ) {
        // The volume left this region, or the record is in the image it came as.
        return merge::log_applied(t, record, &[]);
    }
    let ctx = Ctx::new(record.hlc, record.now, Some(&record.effects), record.volume);
    // The record's volume as it stands here (a deleted one too), read once: what its
    // origin may change, and whether its home fences the record.
    let vol = find_volume_row(t, record.volume, None)?;
    if let Some(why) = super::fence::fenced(record, vol.as_ref()) {
        // Accepted by a home that was replaced: kept apart, applied nowhere.
        t.begin_record(record.hlc, true);
        let kept = super::fence::keep_apart(t, &ctx, record, &why);
        let mut images = t.end_record();
        match kept {
            Err(e @ NsError::Store(_)) => return Err(e),
            Err(e) => {
                t.restore(&images)?;
                t.begin_record(record.hlc, true);
                let what = op_name(&record.op);
                record_conflict(
                    t,
                    &ctx,
                    "fenced",
                    None,
                    format!("{what} not applied: {why} ({e})"),
                )?;
                images = t.end_record();
            }
            Ok(()) => {}
        }
        return merge::log_applied(t, record, &images);
    }
    t.begin_record(record.hlc, true);
    let outcome = match origin_may_change(t, record, vol.as_ref()) {
        Ok(()) => apply_op(t, &record.op, &ctx),
        Err(e) => Err(e),
    };
    let mut images = t.end_record();
    match outcome {
        Err(e @ NsError::Store(_)) => return Err(e),
        Err(e) => {
            t.restore(&images)?;
            t.begin_record(record.hlc, true);
            // Losing an atime update or a compaction is no conflict anybody cares about.
            if !matches!(
                record.op,
                Op::Accessed { .. } | Op::AccessedBatch { .. } | Op::Compact { .. }
            ) {
                record_conflict(t, &ctx, "skip", None, skip_detail(record, &e))?;
            }
            images = t.end_record();
        }
        Ok(_) => super::leave::note_removal(t, own, record)?,
    }
    merge::log_applied(t, record, &images)
}

/// Why a record was skipped, in words that are the same in every region. What a record
/// acts on may be missing for several reasons at once (a removed inode, and a volume
/// whose tombstone one region has purged already and another not yet), so a missing
/// thing is described from the record alone.
fn skip_detail(record: &Record, e: &NsError) -> String {
    let what = op_name(&record.op);
    let from = record.hlc.region.0;
    match e {
        NsError::NotFound(_) => {
            let target = match &record.op {
                Op::CreateVolume { name, .. }
                | Op::DeleteVolume { name }
                | Op::SetVolumeQuota { name, .. }
                | Op::SetVolumeRegions { name, .. }
                | Op::SetVolumeHome { name, .. }
                | Op::CloneVolume { name, .. } => {
                    format!("volume {name:?}")
                }
                Op::Mknod { parent, name, .. }
                | Op::Symlink { parent, name, .. }
                | Op::Unlink { parent, name, .. }
                | Op::Rmdir { parent, name, .. }
                | Op::Rename { parent, name, .. } => {
                    format!("{:?} in {parent}", String::from_utf8_lossy(name))
                }
                Op::Link { ino, .. }
                | Op::SetAttr { ino, .. }
                | Op::SetXattr { ino, .. }
                | Op::RemoveXattr { ino, .. }
                | Op::CommitExtents { ino, .. }
                | Op::PunchHole { ino, .. }
                | Op::Accessed { ino }
                | Op::Compact { ino, .. }
                | Op::Unstage { ino, .. } => ino.to_string(),
                Op::CopyRange { src, dst, .. } => format!("{src} to {dst}"),
                Op::AccessedBatch { inos } => format!("{} files", inos.len()),
            };
            format!(
                "{what} of {target} from region {from} not applied: what it acts on no longer exists"
            )
        }
        other => format!("{what} from region {from} not applied: {other}"),
    }
}

/// A short name of an operation, for conflict records.
pub fn op_name(op: &Op) -> &'static str {
    match op {
        Op::CreateVolume { .. } => "create volume",
        Op::DeleteVolume { .. } => "delete volume",
        Op::SetVolumeQuota { .. } => "set volume quota",
        Op::SetVolumeRegions { .. } => "set volume regions",
        Op::SetVolumeHome { .. } => "set volume home",
        Op::CloneVolume { .. } => "copy volume",
        Op::Mknod { .. } => "create",
        Op::Symlink { .. } => "symlink",
        Op::Link { .. } => "link",
        Op::Unlink { .. } => "unlink",
        Op::Rmdir { .. } => "rmdir",
        Op::Rename { .. } => "rename",
        Op::SetAttr { .. } => "setattr",
        Op::SetXattr { .. } => "setxattr",
        Op::RemoveXattr { .. } => "removexattr",
        Op::CommitExtents { .. } => "write",
        Op::PunchHole { .. } => "punch hole",
        Op::CopyRange { .. } => "copy range",
        Op::Accessed { .. } | Op::AccessedBatch { .. } => "access",
        Op::Compact { .. } => "compaction",
        Op::Unstage { .. } => "unstage",
    }
}

/// Applies one operation: strictly (checks fail it) when `ctx.replay` is `None`, or as a
/// replay of a record that succeeded at its origin, resolving conflicts with what other
/// regions did concurrently.
pub(crate) fn apply_op(t: &mut WriteTables<'_>, op: &Op, ctx: &Ctx<'_>) -> Result<Reply, NsError> {
    match op {
        Op::CreateVolume { name, policy } => volumes::create_volume(t, ctx, name, policy),
        Op::DeleteVolume { name } => volumes::delete_volume(t, ctx, name),
        Op::CloneVolume {
            source,
            name,
            read_only,
        } => copy::clone_volume(t, ctx, source, name, *read_only),
        Op::SetVolumeQuota { name, quota_bytes } => {
            volumes::set_volume_quota(t, ctx, name, *quota_bytes)
        }
        Op::SetVolumeRegions { name, regions } => {
            volumes::set_volume_regions(t, ctx, name, regions)
        }
        Op::SetVolumeHome { name, home, force } => {
            volumes::set_volume_home(t, ctx, name, *home, *force)
        }
        Op::Mknod {
            parent,
            name,
            kind,
            perm,
            rdev,
            exclusive,
            creds,
        } => {
            if *kind == FileKind::Symlink {
                return Err(NsError::Invalid(
                    "use symlink to create symbolic links".into(),
                ));
            }
            let new = entries::NewInode {
                kind: *kind,
                perm: *perm,
                rdev: *rdev,
                target: None,
            };
            entries::make(t, ctx, *parent, name, new, *exclusive, creds)
        }
        Op::Symlink {
            parent,
            name,
            target,
            creds,
        } => {
            if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
                return Err(NsError::Invalid(format!(
                    "symlink target of {} bytes",
                    target.len()
                )));
            }
            let new = entries::NewInode {
                kind: FileKind::Symlink,
                perm: 0o777,
                rdev: 0,
                target: Some(target.clone()),
            };
            entries::make(t, ctx, *parent, name, new, true, creds)
        }
        Op::Link {
            ino,
            new_parent,
            new_name,
            creds,
        } => entries::link(t, ctx, *ino, *new_parent, new_name, creds),
        Op::Unlink {
            parent,
            name,
            creds,
        } => entries::remove(t, ctx, *parent, name, false, creds),
        Op::Rmdir {
            parent,
            name,
            creds,
        } => entries::remove(t, ctx, *parent, name, true, creds),
        Op::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
            creds,
        } => entries::rename(t, ctx, *parent, name, *new_parent, new_name, *flags, creds),
        Op::SetAttr { ino, set, creds } => attrs::setattr(t, ctx, *ino, set, creds),
        Op::SetXattr {
            ino,
            name,
            value,
            mode,
            creds,
        } => xattrs::setxattr(t, ctx, *ino, name, value, *mode, creds),
        Op::RemoveXattr { ino, name, creds } => xattrs::removexattr(t, ctx, *ino, name, creds),
        Op::CommitExtents {
            ino,
            extents,
            size,
            base_version: _,
            creds,
            staged: _,
        } => content::commit(t, ctx, *ino, extents, *size, creds),
        Op::PunchHole {
            ino,
            offset,
            len,
            creds,
        } => content::punch_hole(t, ctx, *ino, *offset, *len, creds),
        Op::CopyRange {
            src,
            src_offset,
            dst,
            dst_offset,
            len,
            creds,
        } => content::copy_range(
            t,
            ctx,
            (*src, *src_offset),
            (*dst, *dst_offset),
            *len,
            creds,
        ),
        Op::Accessed { ino } => attrs::accessed(t, ctx, *ino),
        Op::AccessedBatch { inos } => attrs::accessed_batch(t, ctx, inos),
        Op::Compact {
            ino,
            offset,
            len,
            expected,
            replacement,
        } => content::compact(t, *ino, *offset, *len, expected, replacement),
        // Never recorded, so never replayed: a record that names one is hostile.
        Op::Unstage { .. } => Err(NsError::Invalid("an unstaging is never recorded".into())),
    }
}
