//! Creating and deleting volumes, and changing their quotas and regions. Copies
//! (snapshots and clones) are `copy`'s.

use meridian_proto::{Hlc, InodeId};
use redb::ReadableTable;

use crate::namespace::conflict::volume_conflict_name;
use crate::namespace::ctx::*;
use crate::namespace::tables::{
    Tab, Tomb, WriteTables, counter, decode_dirent, dirent_end, dirent_key, read_inode,
    read_volume, store_err,
};
use crate::namespace::types::*;

fn check_volume_name(name: &str) -> Result<(), NsError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NsError::Invalid(format!(
            "volume name {name:?}: use 1-63 of a-z 0-9 - _"
        )))
    }
}

fn check_policy(policy: &VolumePolicy) -> Result<(), NsError> {
    if !(1..=16).contains(&policy.replicas)
        || policy.min_copies == 0
        || policy.min_copies > policy.replicas
    {
        return Err(NsError::Invalid(format!(
            "replicas {} and min_copies {} must satisfy 1 <= min_copies <= replicas <= 16",
            policy.replicas, policy.min_copies
        )));
    }
    if let Some(home) = policy.home
        && !policy.regions.contains(&home)
    {
        return Err(NsError::Invalid(format!(
            "home region {} is not one of the volume's regions",
            home.0
        )));
    }
    if !policy.block_size.is_power_of_two()
        || !(64 << 10..=meridian_proto::block::MAX_BLOCK_LEN).contains(&policy.block_size)
    {
        return Err(NsError::Invalid(format!(
            "block size {} must be a power of two from 64 KiB to 64 MiB",
            policy.block_size
        )));
    }
    Ok(())
}

/// The ids a replayed volume creation brings: its origin's, and not in use here (a record
/// naming ids that exist is malformed or hostile, and is skipped).
fn replayed_ids(
    t: &WriteTables<'_>,
    ctx: &Ctx<'_>,
    fx: &Effects,
) -> Result<(u32, InodeId), NsError> {
    let (Some(id), Some(root)) = (fx.created_volume, fx.created) else {
        return Err(NsError::Invalid("volume record without its ids".into()));
    };
    if id >> 16 != u32::from(ctx.region().0) || root.region() != ctx.region() {
        return Err(NsError::Invalid(format!(
            "volume {id} with root {root} is not of the record's region {}",
            ctx.region().0
        )));
    }
    if find_volume_row(t, id, None)?.is_some()
        || read_inode(t.inodes()?, root)?.is_some()
        || t.tomb(root)?.is_some()
    {
        return Err(NsError::Invalid(format!(
            "volume {id} or its root {root} exists already"
        )));
    }
    Ok((id, root))
}

pub(crate) fn create_volume(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    name: &str,
    policy: &VolumePolicy,
) -> Result<Reply, NsError> {
    check_volume_name(name)?;
    check_policy(policy)?;
    // A volume lives in the region that makes it: its id and root carry that region, and
    // its records start there. (Checked when made here; a record replayed from elsewhere
    // was checked where it was made.)
    if !ctx.replaying() && !policy.regions.is_empty() && !policy.regions.contains(&ctx.region()) {
        return Err(NsError::Invalid(format!(
            "volume {name:?} may live only in regions {}, and this is region {}: create it in one of them",
            policy
                .regions
                .iter()
                .map(|r| r.0.to_string())
                .collect::<Vec<_>>()
                .join(","),
            ctx.region().0
        )));
    }
    if !ctx.replaying() {
        crate::namespace::merge::check_reachable(
            t.region_state.open()?,
            ctx.region(),
            &policy.regions,
            true,
        )?;
    }
    let mut name = name.to_string();
    if read_volume(t.volumes()?, &name)?.is_some() {
        if !ctx.replaying() {
            return Err(NsError::Exists(format!("volume {name}")));
        }
        // Two regions created the name concurrently: the later (by HLC) takes another.
        let other = volume_conflict_name(t, &name, ctx.hlc)?;
        record_conflict(
            t,
            ctx,
            "create volume",
            None,
            format!(
                "volume {name:?} was created concurrently in two regions: {}'s is {other:?}",
                region_name(ctx.region())
            ),
        )?;
        name = other;
    }
    let (id, root) = match ctx.replay {
        Some(fx) => replayed_ids(t, ctx, fx)?,
        None => {
            // Volume ids carry the creating region in their top half: unique everywhere.
            let local = t.next(counter::NEXT_VOLUME, 1)? as u32 & 0xffff;
            (
                (u32::from(ctx.region().0) << 16) | local,
                new_inode_id(t, ctx.region())?,
            )
        }
    };
    {
        let mut out = ctx.out.borrow_mut();
        out.created_volume = Some(id);
        out.created = Some(root);
    }
    let inode = Inode {
        attr: Attr {
            ino: root,
            kind: FileKind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 2,
            atime: ctx.now,
            mtime: ctx.now,
            ctime: ctx.now,
            crtime: ctx.now,
            rdev: 0,
            volume: id,
        },
        parent: root,
        target: None,
        version: 0,
        content: Hlc::default(),
        copy_of: None,
        cuts: Vec::new(),
    };
    let vol = Volume {
        id,
        name,
        root,
        policy: policy.clone(),
        used_bytes: 0,
        used_inodes: 1,
        deleted: None,
        read_only: false,
        origin: None,
        copying: None,
    };
    t.put_inode(&inode)?;
    t.put_volume(&vol)?;
    Ok(Reply::Volume(vol))
}

/// Deletes an empty volume. One that lives in several regions is kept as a tombstone (its
/// record under a name no live volume has, its root as a removed inode), so that a change
/// another region made concurrently brings it back; the tombstone goes with the root's
/// once every region has settled past the deletion.
pub(crate) fn delete_volume(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    name: &str,
) -> Result<Reply, NsError> {
    // A replay names the volume by id: a concurrent create may have given its name to
    // another volume.
    let vol = match ctx.replay {
        // The same words as when the volume's tombstone is gone (see `apply`), so every
        // region records the same conflict whether or not it purged the tombstone yet.
        Some(_) => find_volume(t, ctx.volume)?
            .ok_or_else(|| NsError::NotFound(format!("volume {}", ctx.volume)))?,
        None => read_volume(t.volumes()?, name)?
            .ok_or_else(|| NsError::NotFound(format!("volume {name}")))?,
    };
    if vol.copying.is_some() {
        // A copy still being made goes with everything it has so far (nothing can empty
        // it first), at once: its tree may not be whole yet (`tree_drop`). (The leader
        // removes one in steps instead, `copy_drop.rs`, when every member reads them.)
        crate::namespace::tree_drop::remove_tree(t, vol.root)?;
    } else if vol.read_only {
        // A snapshot likewise; a large one in steps, its root with the last.
        if !crate::namespace::tree_drop::remove_or_mark(t, vol.root, vol.id)? {
            t.del_volume(&vol.name)?;
            return Ok(Reply::Done);
        }
    } else if !is_empty_dir(t, vol.root)? {
        return Err(NsError::NotEmpty(format!(
            "volume {} still has files",
            vol.name
        )));
    }
    let root = get(t, vol.root)?;
    t.del_inode(vol.root)?;
    t.del_volume(&vol.name)?;
    if vol.policy.regions.len() > 1 {
        t.put_tomb(&Tomb {
            inode: root,
            dir: vol.root,
            name: Vec::new(),
            at: ctx.hlc,
        })?;
        let key = deleted_volume_key(vol.id);
        let gone = Volume {
            deleted: Some(ctx.hlc),
            ..vol
        };
        let bytes = serde_json::to_vec(&gone).map_err(|e| NsError::Store(e.to_string()))?;
        t.write(Tab::Volumes, key.as_bytes(), Some(&bytes))?;
    } else {
        t.del_xattrs(vol.root)?;
    }
    Ok(Reply::Done)
}

/// The volume a change of its policy acts on: by name where it is made, by id in a
/// replay (its name may belong to another volume by then), as a deletion's does.
fn volume_changed(t: &WriteTables<'_>, ctx: &Ctx<'_>, name: &str) -> Result<Volume, NsError> {
    match ctx.replay {
        Some(_) => find_volume(t, ctx.volume)?
            .ok_or_else(|| NsError::NotFound(format!("volume {}", ctx.volume))),
        None => read_volume(t.volumes()?, name)?
            .ok_or_else(|| NsError::NotFound(format!("volume {name}"))),
    }
}

/// Sets a volume's byte quota. A replay names the volume by id, as a deletion's does.
pub(crate) fn set_volume_quota(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    name: &str,
    quota_bytes: Option<u64>,
) -> Result<Reply, NsError> {
    let mut vol = volume_changed(t, ctx, name)?;
    vol.policy.quota_bytes = quota_bytes;
    t.put_volume(&vol)?;
    Ok(Reply::Volume(vol))
}

/// Changes a volume's home region (none: active-active) and raises its epoch. Made here,
/// a planned change is made at the current home (changes are forwarded there) or, for an
/// active-active volume, anywhere it lives; a forced one only by the region it makes the
/// home. The home must be one of the volume's regions, and a snapshot has none.
pub(crate) fn set_volume_home(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    name: &str,
    home: Option<meridian_proto::RegionId>,
    force: bool,
) -> Result<Reply, NsError> {
    let mut vol = volume_changed(t, ctx, name)?;
    if !ctx.replaying() {
        if vol.read_only {
            return Err(NsError::ReadOnly(format!("volume {name} is a snapshot")));
        }
        let regions = if vol.policy.regions.is_empty() {
            vec![ctx.region()]
        } else {
            vol.policy.regions.clone()
        };
        if let Some(h) = home
            && !regions.contains(&h)
        {
            return Err(NsError::Invalid(format!(
                "region {} is not one of volume {name:?}'s regions",
                h.0
            )));
        }
        match (force, vol.policy.home) {
            (true, _) if home != Some(ctx.region()) => {
                return Err(NsError::Invalid(format!(
                    "a forced move of volume {name:?}'s home is made by the region it moves to, not region {}",
                    ctx.region().0
                )));
            }
            (true, None) => {
                return Err(NsError::Invalid(format!(
                    "volume {name:?} is active-active: there is no home to take over from (a planned change will do)"
                )));
            }
            (false, Some(h)) if h != ctx.region() => {
                return Err(NsError::ReadOnly(format!(
                    "volume {name:?}'s home is region {}: a planned change is made there",
                    h.0
                )));
            }
            _ => {}
        }
    }
    vol.policy.home = home;
    vol.policy.epoch = vol.policy.epoch.saturating_add(1);
    t.put_volume(&vol)?;
    Ok(Reply::Volume(vol))
}

/// Sets the regions a volume lives in. Made here, the change must keep this region (remove
/// it from another one), may name only regions this one exchanges records with, and only
/// for a volume that lives in several regions or may: not a snapshot. A replay names the
/// volume by id, as a deletion's does.
pub(crate) fn set_volume_regions(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    name: &str,
    regions: &[meridian_proto::RegionId],
) -> Result<Reply, NsError> {
    let mut vol = volume_changed(t, ctx, name)?;
    let mut set = regions.to_vec();
    set.sort();
    set.dedup();
    if set.is_empty() || set.len() > 16 || set.len() != regions.len() {
        return Err(NsError::Invalid(format!(
            "regions {regions:?}: name 1 to 16 distinct regions"
        )));
    }
    if !ctx.replaying() {
        if !set.contains(&ctx.region()) {
            return Err(NsError::Invalid(format!(
                "volume {name:?} would leave region {}, where this change is made: remove a region from one that keeps the volume",
                ctx.region().0
            )));
        }
        crate::namespace::merge::check_reachable(
            t.region_state.open()?,
            ctx.region(),
            &set,
            false,
        )?;
        if vol.read_only {
            return Err(NsError::ReadOnly(format!("volume {name} is a snapshot")));
        }
        if let Some(home) = vol.policy.home
            && !set.contains(&home)
        {
            return Err(NsError::Invalid(format!(
                "volume {name:?} would leave its home region {}, which decides its changes",
                home.0
            )));
        }
        // One region brought in at a time: each waits for the others to settle past
        // the change, and two waiting for each other would never see it happen.
        let before = if vol.policy.regions.is_empty() {
            vec![ctx.region()]
        } else {
            vol.policy.regions.clone()
        };
        if set.iter().filter(|r| !before.contains(r)).count() > 1 {
            return Err(NsError::Invalid(format!(
                "volume {name:?}: add one region at a time"
            )));
        }
    }
    vol.policy.regions = set;
    t.put_volume(&vol)?;
    Ok(Reply::Volume(vol))
}

/// The entries of a directory.
pub(crate) fn list_dir(t: &WriteTables<'_>, dir: InodeId) -> Result<Vec<DirEntry>, NsError> {
    entries_of(t.dirents()?, dir)
}

/// The entries of directory `dir` in `dirents` (of a write or a read transaction).
pub(crate) fn entries_of(
    dirents: &impl ReadableTable<&'static [u8], &'static [u8]>,
    dir: InodeId,
) -> Result<Vec<DirEntry>, NsError> {
    first_entries(dirents, dir, usize::MAX)
}

/// The first `n` entries of directory `dir` in `dirents`.
pub(crate) fn first_entries(
    dirents: &impl ReadableTable<&'static [u8], &'static [u8]>,
    dir: InodeId,
    n: usize,
) -> Result<Vec<DirEntry>, NsError> {
    let (from, to) = (dirent_key(dir, b""), dirent_end(dir));
    let mut out = Vec::new();
    for item in dirents
        .range(from.as_slice()..to.as_slice())
        .map_err(store_err)?
        .take(n)
    {
        let (k, v) = item.map_err(store_err)?;
        out.push(decode_dirent(k.value(), v.value())?);
    }
    Ok(out)
}
