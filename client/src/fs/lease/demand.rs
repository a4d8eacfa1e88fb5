//! Leases of existing directories, asked for on demand (docs/adr/0006): a directory made
//! before the mount started, or by a mount without write-back (a volume's root, where a
//! database keeps its journal), is leased to a mount that keeps changing its entries
//! through the servers. The grant brings every entry the directory holds; a lease that
//! goes back (another client takes it back, a rename in it) or is refused is not asked
//! for again for a while, whether it was asked for or granted at the directory's birth.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use meridian_proto::InodeId;
use meridian_proto::ns::{Granted, Op};
use tracing::debug;

use super::{LeasedDir, Leases, MAX_LEASED, RESERVE_LOW, State};

/// An existing directory's lease is asked for once this mount has sent the servers this
/// many changes of its entries within [`WANT_WITHIN`] (a database's journal made and
/// removed per transaction, a log rotated, files made in a directory made elsewhere).
const WANT_AFTER: u32 = 4;
const WANT_WITHIN: Duration = Duration::from_secs(10);
/// Most directories counted towards a lease at once.
const MAX_COUNTED: usize = 1024;
/// After a lease ends here (another client wanted the directory, a change this mount
/// cannot follow in it) or is not granted, it is not asked for again for this long, doubled each time up to
/// [`BACK_OFF_MAX`]: two clients working in one directory do not pass its lease to and
/// fro at every change.
const BACK_OFF: Duration = Duration::from_secs(5);
const BACK_OFF_MAX: Duration = Duration::from_secs(300);

impl State {
    pub(super) fn back_off(&mut self, dir: InodeId) {
        if self.backed_off.len() >= MAX_COUNTED && !self.backed_off.contains_key(&dir) {
            let now = Instant::now();
            self.backed_off.retain(|_, (until, _)| *until > now);
            if self.backed_off.len() >= MAX_COUNTED {
                return;
            }
        }
        let wait = match self.backed_off.get(&dir) {
            Some((_, last)) => (*last * 2).min(BACK_OFF_MAX),
            None => BACK_OFF,
        };
        self.backed_off.insert(dir, (Instant::now() + wait, wait));
    }

    /// A change of `dir`'s entries this mount sent the servers was answered: the entries
    /// a grant under way brings may miss it.
    pub(super) fn changed_through_servers(&mut self, dir: InodeId) {
        if let Some(spoiled) = self.acquiring.get_mut(&dir) {
            *spoiled = true;
        }
    }
}

impl Leases {
    /// A change of entries this mount sent the servers was answered: once an unleased
    /// directory has seen [`WANT_AFTER`] of them within [`WANT_WITHIN`], its lease is asked
    /// for with the next batch (docs/adr/0006, leases on demand).
    pub(in crate::fs) fn count_change(&self, op: &Op) {
        if !self.enabled
            || !matches!(
                op,
                Op::Mknod { .. } | Op::Unlink { .. } | Op::Rmdir { .. } | Op::Symlink { .. }
            )
        {
            return;
        }
        let mut s = self.lock();
        let now = Instant::now();
        for dir in op.dirs_changed() {
            if s.dirs.contains_key(&dir)
                || s.acquire.contains(&dir)
                || s.acquiring.contains_key(&dir)
                || s.release.contains(&dir)
                || s.dirs.len() >= MAX_LEASED
                || s.backed_off
                    .get(&dir)
                    .is_some_and(|(until, _)| *until > now)
            {
                continue;
            }
            if s.counted.len() >= MAX_COUNTED && !s.counted.contains_key(&dir) {
                s.counted
                    .retain(|_, (_, since)| now.duration_since(*since) < WANT_WITHIN);
                if s.counted.len() >= MAX_COUNTED {
                    continue;
                }
            }
            let (n, since) = s.counted.entry(dir).or_insert((0, now));
            if now.duration_since(*since) >= WANT_WITHIN {
                (*n, *since) = (0, now);
            }
            *n += 1;
            if *n >= WANT_AFTER {
                s.counted.remove(&dir);
                s.acquire.insert(dir);
                self.work.notify_one();
            }
        }
    }

    /// The leases `asked` for were answered with `granted`: each takes effect unless a
    /// change of its directory this mount sent, or a recall, came meanwhile (it goes back
    /// then). Those not granted are not asked for again for a while.
    pub(super) fn granted(&self, s: &mut State, asked: &[InodeId], granted: Vec<Granted>) {
        let mut got = HashSet::new();
        for g in granted {
            let dir = g.dir.ino;
            got.insert(dir);
            let spoiled = s.acquiring.remove(&dir).unwrap_or(true);
            let recalled = s.recalled.remove(&dir);
            if s.dirs.contains_key(&dir) {
                continue;
            }
            if spoiled || recalled || s.dirs.len() >= MAX_LEASED {
                s.release.insert(dir);
                self.work.notify_one();
                continue;
            }
            debug!(%dir, entries = g.entries.len(), "directory leased on demand");
            let entries = g
                .entries
                .into_iter()
                .map(|e| (e.name, (e.ino, e.kind)))
                .collect();
            s.hold(
                dir,
                LeasedDir {
                    attr: g.dir,
                    entries,
                    used: 0,
                },
            );
        }
        for dir in asked {
            if !got.contains(dir) {
                debug!(%dir, "lease of a directory not granted");
                s.acquiring.remove(dir);
                s.back_off(*dir);
            }
        }
        if !got.is_empty() && s.reserved_left() < RESERVE_LOW {
            s.reserving = true;
            self.work.notify_one();
        }
    }
}
