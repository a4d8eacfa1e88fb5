//! Changes a replaced home accepted (issue 17, ADR 0011). A volume with a home takes its
//! changes from that home alone, under the volume's epoch. A forced move of the home
//! raises the epoch without the old home, which may go on accepting changes while it is
//! cut off. Merged in stamp order, a change that was not accepted by the home in force at
//! its stamp, under that epoch, is fenced: it does not apply, in any region. Nothing of
//! it is dropped silently: it is listed with the conflicts, and the bytes a fenced write
//! carried are kept in a file of the volume's root, `fenced-<inode>-<region>-<ms>`.

use super::conflict::{copy_ino, new_root_file};
use super::ctx::*;
use super::tables::{WriteTables, read_inode};
use super::types::*;

/// Why `record` may not apply here: its volume (`vol`, as it stands here) has a home,
/// and the record was not accepted by that home under the epoch in force at the record's
/// stamp.
pub(crate) fn fenced(record: &Record, vol: Option<&Volume>) -> Option<String> {
    if !record.op.decided_at_home() || record.op.is_volume_level() {
        return None;
    }
    let vol = vol.filter(|v| v.deleted.is_none())?;
    let home = vol.policy.home?;
    if record.hlc.region == home && record.epoch == vol.policy.epoch {
        return None;
    }
    Some(format!(
        "{} accepted it under epoch {} of volume {:?}, whose home is {} under epoch {} at that point",
        region_name(record.hlc.region),
        record.epoch,
        vol.name,
        region_name(home),
        vol.policy.epoch
    ))
}

/// Keeps a fenced change apart instead of applying it (see the module).
pub(crate) fn keep_apart(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    record: &Record,
    why: &str,
) -> Result<(), NsError> {
    let what = super::apply::op_name(&record.op);
    let Op::CommitExtents {
        ino,
        extents,
        size,
        creds,
        ..
    } = &record.op
    else {
        let ino = record.op.inode_changed();
        let on = ino.map(|i| format!(" of {i}")).unwrap_or_default();
        return record_conflict(
            t,
            ctx,
            "fenced",
            ino,
            format!("{what}{on} not applied: {why}"),
        );
    };
    let mut vol = volume_of(t, record.volume)?;
    let kept = copy_ino(*ino, record.hlc)?;
    if read_inode(t.inodes()?, kept)?.is_some() {
        return Ok(()); // kept already (a replay of the same record)
    }
    let stamp = record.hlc;
    let mut base = format!("fenced-{ino}-{}-{}", stamp.region.0, stamp.wall_ms);
    if stamp.counter > 0 {
        base.push_str(&format!("-{}", stamp.counter));
    }
    let end = extents.iter().map(|e| e.end()).max().unwrap_or(0);
    let size = (*size).max(end);
    let (_, name) = new_root_file(t, ctx, &mut vol, kept, &base, (creds, size, stamp))?;
    // In write order: later extents shadow earlier ones.
    for e in extents {
        super::ops::content::overlay(t, kept, e)?;
    }
    record_conflict(
        t,
        ctx,
        "fenced",
        Some(kept),
        format!(
            "{what} of {ino} not applied: {why}; its bytes are kept as {:?}",
            name_str(&name)
        ),
    )
}
