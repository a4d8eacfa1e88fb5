//! Changes of a leased directory's entries answered alone: creates, mkdir, symlinks, links, rmdir,
//! unlink, and renames within it or to another leased directory (of directories leased
//! here too) (a file unlinked while open here is renamed out of sight). Each is decided from
//! what the mount knows of the directory (all of it), applied to that, and queued.

use meridian_proto::InodeId;
use meridian_proto::ns::{
    Attr, FileKind, LINK_MAX, NAME_MAX, Op, RenameFlags, SYMLINK_MAX, WRITE_BACK_ALL,
    WRITE_BACK_RENAMES, libc_errno,
};

use super::{Asked, Errno, LeasedDir, Leases, MAX_LEASED, MAX_QUEUED, State, now, plain_name};
use crate::meta::MetaClient;

/// The attributes of leased `asked.parent`, if `asked.name` is free in it; the error a
/// name too long or taken gets; `None` if the parent is not leased here.
fn free_name<'s>(s: &'s State, asked: &Asked<'_>) -> Option<Result<&'s Attr, Errno>> {
    let parent = s.dirs.get(&asked.parent)?;
    if asked.name.len() > NAME_MAX {
        return Some(Err(libc_errno::ENAMETOOLONG));
    }
    if parent.entries.contains_key(asked.name) {
        return Some(Err(libc_errno::EEXIST));
    }
    Some(Ok(&parent.attr))
}

impl Leases {
    /// Makes `asked.name` in leased `parent` here, at reserved number `ino`, as the
    /// servers will (ops/entries.rs: a setgid directory passes on its group, and to a
    /// directory its setgid bit), and queues the create. A directory made is leased here.
    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        s: &mut State,
        meta: &MetaClient,
        asked: &Asked<'_>,
        parent: &Attr,
        ino: InodeId,
        kind: FileKind,
        perm: u16,
        exclusive: bool,
        target: Option<&[u8]>,
    ) -> Attr {
        let at = now();
        let dir = kind == FileKind::Dir;
        let setgid = parent.perm & 0o2000 != 0;
        let attr = Attr {
            ino,
            kind,
            perm: (perm & 0o7777) | if dir && setgid { 0o2000 } else { 0 },
            uid: asked.creds.uid,
            gid: if setgid { parent.gid } else { asked.creds.gid },
            size: target.map_or(0, |t| t.len() as u64),
            nlink: if dir { 2 } else { 1 },
            atime: at,
            mtime: at,
            ctime: at,
            crtime: at,
            rdev: 0,
            volume: parent.volume,
        };
        s.dirs
            .get_mut(&asked.parent)
            .expect("the caller checked the parent is leased")
            .entries
            .insert(asked.name.to_vec(), (ino, kind));
        s.touch(asked.parent, at, i32::from(dir));
        if dir {
            s.hold(ino, LeasedDir::born(attr.clone()));
        } else {
            s.keep_file(&attr);
        }
        let op = match target {
            Some(target) => {
                s.keep_target(ino, target);
                Op::Symlink {
                    parent: asked.parent,
                    name: asked.name.to_vec(),
                    target: target.to_vec(),
                    creds: asked.creds.clone(),
                }
            }
            None => Op::Mknod {
                parent: asked.parent,
                name: asked.name.to_vec(),
                kind,
                perm,
                rdev: 0,
                exclusive,
                creds: asked.creds.clone(),
            },
        };
        self.enqueue(s, meta, op, at, Some(ino));
        attr
    }

    /// A create answered alone, if `parent` is leased here, `name` is not in it and a
    /// reserved number is left (an existing name goes to the servers: a create without
    /// O_EXCL opens it).
    pub(in crate::fs) fn create(
        &self,
        meta: &MetaClient,
        asked: &Asked<'_>,
        perm: u16,
        exclusive: bool,
    ) -> Option<Result<Attr, Errno>> {
        if !plain_name(asked.name) || asked.name.len() > NAME_MAX {
            return None;
        }
        let mut s = self.lock();
        let parent = s.dirs.get(&asked.parent)?;
        if parent.entries.contains_key(asked.name) || s.queue.len() >= MAX_QUEUED {
            return None;
        }
        let parent = parent.attr.clone();
        let ino = s.take_ino()?;
        let attr = self.make(
            &mut s,
            meta,
            asked,
            &parent,
            ino,
            FileKind::File,
            perm,
            exclusive,
            None,
        );
        Some(Ok(attr))
    }

    /// mkdir answered alone, if `parent` is leased here and a reserved number is left.
    pub(in crate::fs) fn mkdir(
        &self,
        meta: &MetaClient,
        asked: &Asked<'_>,
        perm: u16,
    ) -> Option<Result<Attr, Errno>> {
        if !plain_name(asked.name) {
            return None;
        }
        let mut s = self.lock();
        let parent = match free_name(&s, asked)? {
            Ok(parent) => parent.clone(),
            Err(e) => return Some(Err(e)),
        };
        if parent.nlink >= LINK_MAX || s.queue.len() >= MAX_QUEUED || s.dirs.len() >= MAX_LEASED {
            return None;
        }
        let ino = s.take_ino()?;
        let attr = self.make(
            &mut s,
            meta,
            asked,
            &parent,
            ino,
            FileKind::Dir,
            perm,
            true,
            None,
        );
        Some(Ok(attr))
    }

    /// A symlink made alone, if `parent` is leased here and a reserved number is left. A
    /// target the servers would refuse goes to them for their error.
    pub(in crate::fs) fn symlink(
        &self,
        meta: &MetaClient,
        asked: &Asked<'_>,
        target: &[u8],
    ) -> Option<Result<Attr, Errno>> {
        if !plain_name(asked.name)
            || target.is_empty()
            || target.len() > SYMLINK_MAX
            || target.contains(&0)
        {
            return None;
        }
        let mut s = self.lock();
        if s.level < WRITE_BACK_ALL {
            return None;
        }
        let parent = match free_name(&s, asked)? {
            Ok(parent) => parent.clone(),
            Err(e) => return Some(Err(e)),
        };
        if s.queue.len() >= MAX_QUEUED {
            return None;
        }
        let ino = s.take_ino()?;
        let attr = self.make(
            &mut s,
            meta,
            asked,
            &parent,
            ino,
            FileKind::Symlink,
            0o777,
            true,
            Some(target),
        );
        Some(Ok(attr))
    }

    /// A hard link answered alone: `asked.name` in leased `asked.parent` made a name of
    /// file `ino`, whose attributes are kept here (it is reached through leased
    /// directories). Returns the file's attributes as linked.
    pub(in crate::fs) fn link(
        &self,
        meta: &MetaClient,
        asked: &Asked<'_>,
        ino: InodeId,
    ) -> Option<Result<Attr, Errno>> {
        if !plain_name(asked.name) {
            return None;
        }
        let mut s = self.lock();
        if s.level < WRITE_BACK_ALL {
            return None;
        }
        if let Err(e) = free_name(&s, asked)? {
            return Some(Err(e));
        }
        let file = s.files.get(&ino)?;
        if file.kind == FileKind::Dir || file.nlink >= LINK_MAX || s.queue.len() >= MAX_QUEUED {
            return None;
        }
        let at = now();
        let kind = file.kind;
        let attr = {
            let file = s.files.get_mut(&ino).expect("checked");
            file.nlink += 1;
            file.ctime = at;
            file.clone()
        };
        s.dirs
            .get_mut(&asked.parent)
            .expect("checked")
            .entries
            .insert(asked.name.to_vec(), (ino, kind));
        s.touch(asked.parent, at, 0);
        let op = Op::Link {
            ino,
            new_parent: asked.parent,
            new_name: asked.name.to_vec(),
            creds: asked.creds.clone(),
        };
        let request = self.enqueue(&mut s, meta, op, at, None);
        s.also_touches(request, ino);
        Some(Ok(attr))
    }

    /// rmdir answered alone, if `parent` and the directory removed are leased here.
    pub(in crate::fs) fn rmdir(
        &self,
        meta: &MetaClient,
        asked: &Asked<'_>,
    ) -> Option<Result<(), Errno>> {
        if !plain_name(asked.name) {
            return None;
        }
        let mut s = self.lock();
        if s.queue.len() >= MAX_QUEUED {
            return None;
        }
        let parent = s.dirs.get(&asked.parent)?;
        let (ino, kind) = match parent.entries.get(asked.name) {
            None => return Some(Err(libc_errno::ENOENT)),
            Some(e) => *e,
        };
        if kind != FileKind::Dir {
            return Some(Err(libc_errno::ENOTDIR));
        }
        if !s.dirs.get(&ino)?.entries.is_empty() {
            return Some(Err(libc_errno::ENOTEMPTY));
        }
        s.dirs.remove(&ino);
        s.dirs
            .get_mut(&asked.parent)
            .expect("checked")
            .entries
            .remove(asked.name);
        let at = now();
        s.touch(asked.parent, at, -1);
        let op = Op::Rmdir {
            parent: asked.parent,
            name: asked.name.to_vec(),
            creds: asked.creds.clone(),
        };
        let request = self.enqueue(&mut s, meta, op, at, None);
        s.also_touches(request, ino);
        Some(Ok(()))
    }

    /// unlink answered alone, if `parent` is leased here and the entry is `expected` (the
    /// caller made sure the file is not open here).
    pub(in crate::fs) fn unlink(
        &self,
        meta: &MetaClient,
        asked: &Asked<'_>,
        expected: Option<InodeId>,
    ) -> Option<Result<(), Errno>> {
        if !plain_name(asked.name) {
            return None;
        }
        let mut s = self.lock();
        if s.queue.len() >= MAX_QUEUED {
            return None;
        }
        let parent = s.dirs.get(&asked.parent)?;
        let (ino, kind) = match parent.entries.get(asked.name) {
            None => return Some(Err(libc_errno::ENOENT)),
            Some(e) => *e,
        };
        if kind == FileKind::Dir {
            return Some(Err(libc_errno::EISDIR));
        }
        if Some(ino) != expected {
            return None;
        }
        s.dirs
            .get_mut(&asked.parent)
            .expect("checked")
            .entries
            .remove(asked.name);
        s.forget_file(ino);
        let at = now();
        s.touch(asked.parent, at, 0);
        let op = Op::Unlink {
            parent: asked.parent,
            name: asked.name.to_vec(),
            creds: asked.creds.clone(),
        };
        let request = self.enqueue(&mut s, meta, op, at, None);
        s.also_touches(request, ino);
        Some(Ok(()))
    }

    /// A rename answered alone, within leased `asked.parent` or from it to leased
    /// `new_parent`, of a file or of a directory leased here (to another directory only
    /// with every directory under it leased here), to
    /// `new_name` absent or naming an entry of the same kind (replaced: a file,
    /// `target_open` says whether it is open here, which the servers are left to handle;
    /// a directory, empty and leased here); `None` to ask the servers (a directory not
    /// leased here or with one under it that is not, an exchange, a name the servers
    /// would refuse, a destination not leased here). Permissions are the kernel's
    /// (default_permissions,
    /// sticky directories included), as for unlink.
    pub(in crate::fs) fn rename(
        &self,
        meta: &MetaClient,
        asked: &Asked<'_>,
        new_parent: InodeId,
        new_name: &[u8],
        flags: RenameFlags,
        target_open: bool,
    ) -> Option<Result<(), Errno>> {
        if !plain_name(asked.name)
            || !plain_name(new_name)
            || new_name.len() > NAME_MAX
            || (asked.parent == new_parent && asked.name == new_name)
            || flags.exchange
        {
            return None;
        }
        let mut s = self.lock();
        if s.queue.len() >= MAX_QUEUED || !s.dirs.contains_key(&new_parent) {
            return None;
        }
        let (ino, kind) = match s.dirs.get(&asked.parent)?.entries.get(asked.name) {
            None => return Some(Err(libc_errno::ENOENT)),
            Some(e) => *e,
        };
        let dir = kind == FileKind::Dir;
        // What the leader takes (a mount newer than its metaservers).
        let needs = if dir || asked.parent != new_parent {
            WRITE_BACK_ALL
        } else {
            WRITE_BACK_RENAMES
        };
        if s.level < needs {
            return None;
        }
        // A directory only if leased here (its attributes, its ".." included, are this
        // mount's to change); to another directory only if every directory under it is
        // leased here too, so that a move into itself is refused here as the servers
        // would (the kernel checks it against what it caches, which another client may
        // have changed above), and if the new parent can take another link.
        let moved_dir = dir && asked.parent != new_parent;
        if dir && !s.dirs.contains_key(&ino) {
            return None;
        }
        if moved_dir {
            match s.subtree_holds(ino, new_parent) {
                None => return None,
                Some(true) => return Some(Err(libc_errno::EINVAL)),
                Some(false) => {}
            }
        }
        let replaced = s.dirs[&new_parent].entries.get(new_name).copied();
        if let Some((target, target_kind)) = replaced {
            if flags.noreplace {
                return Some(Err(libc_errno::EEXIST));
            }
            if target == ino || target_open {
                return None;
            }
            match (dir, target_kind == FileKind::Dir) {
                (true, false) => return Some(Err(libc_errno::ENOTDIR)),
                (false, true) => return Some(Err(libc_errno::EISDIR)),
                // An empty directory leased here is replaced, as rmdir would remove it.
                (true, true) => match s.dirs.get(&target) {
                    None => return None,
                    Some(t) if !t.entries.is_empty() => {
                        return Some(Err(libc_errno::ENOTEMPTY));
                    }
                    Some(_) => {}
                },
                (false, false) => {}
            }
        }
        let gains = i32::from(moved_dir);
        if moved_dir && replaced.is_none() && s.dirs[&new_parent].attr.nlink >= LINK_MAX {
            return None;
        }
        let at = now();
        let from = &mut s.dirs.get_mut(&asked.parent).expect("checked").entries;
        from.remove(asked.name);
        let to = &mut s.dirs.get_mut(&new_parent).expect("checked").entries;
        to.insert(new_name.to_vec(), (ino, kind));
        s.touch(asked.parent, at, -gains);
        if let Some(a) = s.files.get_mut(&ino) {
            a.ctime = at;
        }
        if let Some(d) = s.dirs.get_mut(&ino) {
            d.attr.ctime = at;
        }
        match replaced {
            Some((target, FileKind::Dir)) => {
                s.dirs.remove(&target);
                s.touch(new_parent, at, gains - 1);
            }
            Some((target, _)) => {
                s.forget_file(target);
                s.touch(new_parent, at, gains);
            }
            None => s.touch(new_parent, at, gains),
        }
        let op = Op::Rename {
            parent: asked.parent,
            name: asked.name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
            creds: asked.creds.clone(),
        };
        let request = self.enqueue(&mut s, meta, op, at, None);
        s.also_touches(request, ino);
        if let Some((target, _)) = replaced {
            s.also_touches(request, target);
        }
        Some(Ok(()))
    }
}
