//! Attribute changes of files this mount made in a directory it holds leased, and of the
//! leased directories themselves, answered alone and queued behind its creates
//! (docs/adr/0006, amended in issue 14's twenty-first round): chmod, chown and utimes
//! (tar and `cp -p` set them on every file and directory they make), and the commit of
//! what was written to the file before them, which must reach the servers first.
//!
//! Nobody else reaches such a file without a recall, which sends the queue before the
//! lease goes back, so what the mount answers is what the servers will apply: it follows
//! `ops/attrs.rs` and `ops/content.rs` in the metaserver, at the time the change is queued
//! with (the leader applies it at that time). Anything those could refuse, or decide by
//! what the mount does not know, goes to the servers as before: a caller who is neither
//! root nor the owner, a chown by anyone but root, setuid or setgid bits, a truncate.

use meridian_proto::InodeId;
use meridian_proto::ns::{Attr, Creds, FileKind, Op, Queued, SetAttr, SetTime};

use super::{Leases, MAX_QUEUED, State, now};
use crate::meta::MetaClient;

/// Whether `creds` may make `set` to kept file `a` exactly as the servers would, with no
/// permission question the mount cannot answer.
fn settles_alone(a: &Attr, set: &SetAttr, creds: &Creds) -> bool {
    let owner = creds.uid == 0 || creds.uid == a.uid;
    let chown = set.uid.is_some_and(|u| u != a.uid) || set.gid.is_some_and(|g| g != a.gid);
    matches!(a.kind, FileKind::File | FileKind::Dir)
        && set.size.is_none()
        && owner
        && (!chown || creds.uid == 0)
        && a.perm & 0o6000 == 0
        && set.perm.is_none_or(|p| p & 0o6000 == 0)
}

impl State {
    /// `q` was sent and answered: a lookup of its file no longer waits, unless a later
    /// change of it is queued.
    pub(super) fn sent_change(&mut self, q: &Queued) {
        for ino in self.touched_by.remove(&q.request).unwrap_or_default() {
            if let Some(n) = self.touching.get_mut(&ino) {
                *n -= 1;
                if *n == 0 {
                    self.touching.remove(&ino);
                }
            }
        }
        let inos = match &q.op {
            Op::SetAttr { ino, .. } | Op::CommitExtents { ino, .. } => std::slice::from_ref(ino),
            Op::AccessedBatch { inos } => inos.as_slice(),
            _ => return,
        };
        for ino in inos {
            if self.changed.get(ino) == Some(&q.request) {
                self.changed.remove(ino);
            }
        }
    }

    /// Change `request`, queued, also changes `ino`'s attributes (the link count and
    /// ctime of a file whose name it removes or moves).
    pub(super) fn also_touches(&mut self, request: u64, ino: InodeId) {
        if let Some(touched) = self.touched_by.get_mut(&request) {
            touched.push(ino);
            *self.touching.entry(ino).or_default() += 1;
        }
    }

    /// A kept file, or a directory leased here, with room in the queue for one more
    /// change of it.
    fn kept_with_room(&self, ino: InodeId) -> Option<&Attr> {
        if self.queue.len() >= MAX_QUEUED {
            return None;
        }
        match self.dirs.get(&ino) {
            Some(d) => Some(&d.attr),
            None => self.files.get(&ino),
        }
    }
}

impl Leases {
    /// Whether [`set_alone`](Self::set_alone) would answer `set` of `ino` now.
    pub(in crate::fs) fn may_set_alone(&self, ino: InodeId, set: &SetAttr, creds: &Creds) -> bool {
        self.lock()
            .kept_with_room(ino)
            .is_some_and(|a| settles_alone(a, set, creds))
    }

    /// `set` of kept file `ino` answered here and queued; `None` to ask the servers.
    pub(in crate::fs) fn set_alone(
        &self,
        meta: &MetaClient,
        ino: InodeId,
        set: &SetAttr,
        creds: &Creds,
    ) -> Option<Attr> {
        let mut s = self.lock();
        let mut a = s.kept_with_room(ino)?.clone();
        if !settles_alone(&a, set, creds) {
            return None;
        }
        let at = now();
        if let Some(perm) = set.perm {
            a.perm = perm & 0o7777;
        }
        if let Some(uid) = set.uid {
            a.uid = uid;
        }
        if let Some(gid) = set.gid {
            a.gid = gid;
        }
        let time = |t: SetTime| match t {
            SetTime::At(ts) => ts,
            SetTime::Now => at,
        };
        if let Some(t) = set.atime {
            a.atime = time(t);
        }
        if let Some(t) = set.mtime {
            a.mtime = time(t);
        }
        a.ctime = at;
        match s.dirs.get_mut(&ino) {
            Some(d) => d.attr = a.clone(),
            None => {
                s.files.insert(ino, a.clone());
            }
        }
        let op = Op::SetAttr {
            ino,
            set: set.clone(),
            creds: creds.clone(),
        };
        let request = self.enqueue(&mut s, meta, op, at, None);
        s.changed.insert(ino, request);
        Some(a)
    }

    /// The atimes of `inos` (a read found them due) that this mount keeps, queued as one
    /// batch and applied to what it keeps as the servers will apply them (relatime, at
    /// the time queued): a lookup of such a file is still answered here. Returns the
    /// others, for the servers.
    pub(in crate::fs) fn accessed_alone(
        &self,
        meta: &MetaClient,
        inos: &[InodeId],
    ) -> Vec<InodeId> {
        let mut s = self.lock();
        if s.queue.len() >= MAX_QUEUED {
            return inos.to_vec();
        }
        let at = now();
        let (mut kept, mut rest) = (Vec::new(), Vec::new());
        for &ino in inos {
            match s.files.get_mut(&ino) {
                Some(a) => {
                    if a.atime_due(at) && at > a.atime {
                        a.atime = at;
                    }
                    kept.push(ino);
                }
                None => rest.push(ino),
            }
        }
        if !kept.is_empty() {
            let request = self.enqueue(
                &mut s,
                meta,
                Op::AccessedBatch { inos: kept.clone() },
                at,
                None,
            );
            for ino in kept {
                s.changed.insert(ino, request);
            }
        }
        rest
    }

    /// A commit of kept file `ino` queued behind what was answered here, without waiting
    /// for it (a change answered alone follows it); the file's size after it, or the
    /// commit given back to send as any other. The servers apply it as `ops/content.rs` does:
    /// the size grows to the commit's, the times move, setuid and setgid do not apply
    /// (a file with them is not answered alone). What the servers refuse is reported at
    /// the next durability point, as a refused create is.
    pub(in crate::fs) fn commit_alone(&self, meta: &MetaClient, op: Op) -> Result<u64, Box<Op>> {
        let Op::CommitExtents {
            ino,
            extents,
            size,
            base_version: None,
            ..
        } = &op
        else {
            return Err(Box::new(op));
        };
        let ino = *ino;
        let mut s = self.lock();
        let mut a = match s.files.get(&ino) {
            Some(a) if s.queue.len() < MAX_QUEUED && a.kind == FileKind::File => a.clone(),
            _ => return Err(Box::new(op)),
        };
        if a.perm & 0o6000 != 0 {
            return Err(Box::new(op));
        }
        let end = extents
            .iter()
            .map(|e| e.offset.saturating_add(e.len))
            .max()
            .unwrap_or(0);
        let at = now();
        a.size = a.size.max(*size).max(end);
        a.mtime = at;
        a.ctime = at;
        // What an open reads: known exactly after a file's first commit, whole, with no
        // other commit of it under way (as `Leases::observed` keeps it); otherwise the
        // open asks the servers, after the queue.
        let written = super::first_write(&op, &a, s.extents.get(&ino))
            .filter(|_| !s.committing.contains_key(&ino));
        match written {
            Some(extents) => s.extents.insert(ino, std::sync::Arc::new(extents)),
            None => s.extents.remove(&ino),
        };
        s.files.insert(ino, a.clone());
        let request = self.enqueue(&mut s, meta, op, at, None);
        s.changed.insert(ino, request);
        Ok(a.size)
    }
}
