//! Applying records pulled from other regions: each batch merged into HLC order (newer
//! records undone and replayed around late ones), a volume's image installed, a backfill
//! given up. A replayed record applies what its origin decided: one that cannot apply any
//! more (its target is gone for good, a move would make a cycle, the record is malformed
//! or hostile) is skipped and recorded as a conflict, the same way in every region, and
//! never stops the state machine. Only a failing store (`NsError::Store`) does. Local
//! commands apply in `apply`.

use meridian_proto::RegionId;

use super::apply::{apply_op, op_name, op_volume};
use super::backfill::{self, Admission};
use super::ctx::{Ctx, find_volume_row, record_conflict};
use super::merge::{self, MergeOutcome, RemoteBatch};
use super::tables::WriteTables;
use super::types::*;

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
/// is refused and changes nothing. `split`: the piece came by the request that may carry
/// rows going on from a piece before (`image_pieces`).
pub fn install_image(
    t: &mut WriteTables<'_>,
    own: RegionId,
    part: &backfill::ImagePart,
    split: bool,
) -> Result<MergeOutcome, NsError> {
    let mut outcome = MergeOutcome::default();
    let Some(records) = backfill::install(t, part, split)? else {
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
