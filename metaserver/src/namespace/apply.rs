//! Applying operations to the namespace: a local command as its region's leader stamped
//! it (here), and batches of records pulled from other regions, merged into HLC order
//! (`apply_remote`). The operations themselves live in `ops`, what a replay does about
//! concurrent changes in `conflict`, and the merged log in `merge`.
//!
//! A local operation checks everything first and only then writes; a refusal changes
//! nothing. A replayed record applies what its origin decided: one that cannot apply any
//! more (its target is gone for good, a move would make a cycle, the record is malformed
//! or hostile) is skipped and recorded as a conflict, the same way in every region, and
//! never stops the state machine. Only a failing store (`NsError::Store`) does.

use redb::ReadableTable;

pub use super::apply_remote::{apply_remote, cancel_backfill, install_image};
use super::ctx::{Ctx, find_volume};
use super::history;
use super::merge;
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
    if let Some(first) = answered(t, cmd.request)? {
        return first;
    }
    // Stamps only grow along the merged log: a command stamped before a remote record
    // that applied ahead of it, or before a promise to the peers, takes the next stamp
    // after it (deterministic, so every member agrees).
    let hlc = match merge::horizon(t.region_state.open()?)? {
        Some(head) if cmd.hlc <= head => head.successor(cmd.hlc.region),
        _ => cmd.hlc,
    };
    let volume = op_volume(t, &cmd.op)?;
    let of_deleted = volume.is_none() && of_deleted_volume(t, &cmd.op)?;
    let mut ctx = Ctx::new(hlc, cmd.now, None, 0);
    ctx.given = cmd.ino;
    let logged = merge::enters_log(t)?;
    t.begin_record(hlc, logged);
    let outcome = match &volume {
        None if of_deleted => Err(NsError::NotFound(
            "the volume of this inode was deleted".into(),
        )),
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
    remember(t, cmd.request, cmd.hlc.wall_ms, &outcome)?;
    history::prune_requests(t, cmd.hlc.wall_ms)?;
    outcome
}

/// The first outcome of `request` (a client and its operation id), if it was applied.
pub(crate) fn answered(
    t: &WriteTables<'_>,
    request: Option<(u64, u64)>,
) -> Result<Option<Result<Reply, NsError>>, NsError> {
    let Some((client, op)) = request else {
        return Ok(None);
    };
    let key = super::tables::pair_key(client, op);
    match t.requests.open()?.get(key.as_slice()).map_err(store_err)? {
        Some(v) => serde_json::from_slice::<Result<Reply, NsError>>(v.value())
            .map(Some)
            .map_err(|e| NsError::Store(format!("damaged request record: {e}"))),
        None => Ok(None),
    }
}

/// Keeps `outcome` as `request`'s (stamped at `wall_ms`), for its retries.
pub(crate) fn remember(
    t: &mut WriteTables<'_>,
    request: Option<(u64, u64)>,
    wall_ms: u64,
    outcome: &Result<Reply, NsError>,
) -> Result<(), NsError> {
    let Some((client, op)) = request else {
        return Ok(());
    };
    let key = super::tables::pair_key(client, op);
    let bytes = serde_json::to_vec(outcome).map_err(|e| NsError::Store(e.to_string()))?;
    t.requests
        .open_mut()?
        .insert(key.as_slice(), bytes.as_slice())
        .map_err(store_err)?;
    let mut by_time = wall_ms.to_be_bytes().to_vec();
    by_time.extend_from_slice(&key);
    t.request_times
        .open_mut()?
        .insert(by_time.as_slice(), ())
        .map_err(store_err)?;
    Ok(())
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
pub(super) fn op_volume(t: &WriteTables<'_>, op: &Op) -> Result<Option<Volume>, NsError> {
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

/// Whether `op`, for which [`op_volume`] found no volume, changes an inode that is there:
/// then its volume is not (`op_volume` looked it up from that inode), as for a deleted
/// snapshot's tree, which the steps remove (`tree_drop`) and a mount that had it mounted
/// may still name. No record may change it: a rewind of the merged log would undo such a
/// record over rows the steps removed, and bring them back.
fn of_deleted_volume(t: &WriteTables<'_>, op: &Op) -> Result<bool, NsError> {
    let inos = match op {
        Op::AccessedBatch { inos } => inos.clone(),
        _ => op.inode_changed().into_iter().collect(),
    };
    for ino in inos {
        if read_inode(t.inodes()?, ino)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
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
