//! Directory leases (docs/adr/0006): a directory leased to one client changes only through
//! that client, which answers changes of its entries alone and sends them later, in order,
//! as a write-back. The leases and the inode numbers reserved for such changes are Raft
//! state, so every member (and a new leader) knows them; a write-back whose lease is gone
//! (given back, expired, or the directory removed) is refused from that change on.
//!
//! Leases exist only in volumes that live in one region: the change records of other
//! regions' volumes are merged without passing through the leader's recall.

use meridian_proto::{InodeId, RegionId};
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use super::apply::apply;
use super::ctx::find_volume;
use super::lazy_table::LazyTable;
use super::tables::{
    WriteTables, counter, decode_dirent, dirent_end, dirent_key, read_dirent, read_inode, store_err,
};
use super::types::*;

/// directory inode (8 BE) -> the client holding its lease.
pub const LEASES: TableDefinition<&[u8], u64> = TableDefinition::new("leases");
/// client (8 BE) ++ first inode number (8 BE) -> one past the last: inode numbers the
/// servers set aside for the client's creates under a lease.
pub const RESERVED: TableDefinition<&[u8], u64> = TableDefinition::new("reserved_inodes");

/// Most inode numbers one write-back may reserve.
pub const RESERVE_MAX: u32 = 65_536;

/// The lease tables of a write transaction.
pub struct LeaseTables<'txn> {
    leases: LazyTable<'txn, &'static [u8], u64>,
    reserved: LazyTable<'txn, &'static [u8], u64>,
}

/// What a write-back did.
#[derive(Clone, PartialEq, Eq, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct WriteBackOutcome {
    /// One outcome per change.
    pub outcomes: Vec<Result<Reply, NsError>>,
    /// Inode numbers reserved: the first and how many.
    pub reserved: Option<(InodeId, u32)>,
    /// The leases of existing directories granted, each with every entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granted: Vec<Granted>,
}

/// A write-back as it goes through Raft.
#[derive(Clone, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
pub struct WriteBack {
    /// The client whose leases the changes rely on.
    pub client: u64,
    /// The changes, stamped by the leader, in the client's order.
    pub cmds: Vec<Command>,
    /// Leases given back after them.
    pub release: Vec<InodeId>,
    /// Inode numbers wanted.
    pub reserve: u32,
    /// Existing directories whose leases the client asks for, after the changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acquire: Vec<InodeId>,
}

fn reserved_key(client: u64, first: u64) -> [u8; 16] {
    super::tables::pair_key(client, first)
}

/// Up to `limit` leases, by directory inode number after `after`: each directory and the
/// client holding it (`Query::Leases`).
pub fn page(
    tx: &ReadTransaction,
    after: u64,
    limit: usize,
) -> Result<Vec<(InodeId, u64)>, NsError> {
    let table = match tx.open_table(LEASES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(store_err(e)),
    };
    let Some(from) = after.checked_add(1) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for row in table
        .range(from.to_be_bytes().as_slice()..)
        .map_err(store_err)?
        .take(limit)
    {
        let (k, v) = row.map_err(store_err)?;
        out.push((InodeId(super::tables::u64_of(k.value())?), v.value()));
    }
    Ok(out)
}

/// The client holding `dir`'s lease, read outside the state machine.
pub fn leaseholder(tx: &ReadTransaction, dir: InodeId) -> Result<Option<u64>, NsError> {
    let table = match tx.open_table(LEASES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(store_err(e)),
    };
    Ok(table
        .get(dir.0.to_be_bytes().as_slice())
        .map_err(store_err)?
        .map(|v| v.value()))
}

impl<'txn> LeaseTables<'txn> {
    /// The lease tables of `tx`, each opened (and created if missing) when first used.
    pub fn open(tx: &'txn WriteTransaction) -> Self {
        LeaseTables {
            leases: LazyTable::new(tx, LEASES),
            reserved: LazyTable::new(tx, RESERVED),
        }
    }

    /// Creates the lease tables missing in `tx` (when a store starts).
    pub fn create_all(tx: &'txn WriteTransaction) -> Result<(), NsError> {
        let t = Self::open(tx);
        t.leases.open()?;
        t.reserved.open()?;
        Ok(())
    }

    fn holder(&self, dir: InodeId) -> Result<Option<u64>, NsError> {
        Ok(self
            .leases
            .open()?
            .get(dir.0.to_be_bytes().as_slice())
            .map_err(store_err)?
            .map(|v| v.value()))
    }

    fn is_reserved(&self, client: u64, ino: InodeId) -> Result<bool, NsError> {
        let key = reserved_key(client, ino.0);
        let mut range = self
            .reserved
            .open()?
            .range(reserved_key(client, 0).as_slice()..=key.as_slice())
            .map_err(store_err)?;
        Ok(match range.next_back() {
            Some(row) => {
                let (_, end) = row.map_err(store_err)?;
                ino.0 < end.value()
            }
            None => false,
        })
    }

    /// Ends leases, whoever holds them (the leader's verdict on a holder that did not
    /// give them back in time).
    pub fn expire(&mut self, dirs: &[InodeId]) -> Result<(), NsError> {
        for d in dirs {
            self.leases
                .open_mut()?
                .remove(d.0.to_be_bytes().as_slice())
                .map_err(store_err)?;
        }
        Ok(())
    }

    fn release(&mut self, client: u64, dirs: &[InodeId]) -> Result<(), NsError> {
        for &d in dirs {
            if self.holder(d)? == Some(client) {
                self.leases
                    .open_mut()?
                    .remove(d.0.to_be_bytes().as_slice())
                    .map_err(store_err)?;
            }
        }
        Ok(())
    }

    /// Leases `dir` to `client` on demand, with every entry it holds: when it is a
    /// directory nobody else leases, in a volume that lives in one region, with at most
    /// [`ACQUIRE_MAX_ENTRIES`] entries. A lease the client holds already is granted again.
    fn acquire(
        &mut self,
        ns: &WriteTables<'_>,
        client: u64,
        dir: InodeId,
    ) -> Result<Option<Granted>, NsError> {
        let Some(node) = read_inode(ns.inodes()?, dir)? else {
            return Ok(None);
        };
        if node.attr.kind != FileKind::Dir
            || self.holder(dir)?.is_some_and(|c| c != client)
            || find_volume(ns, node.attr.volume)?.is_none_or(|v| v.policy.regions.len() > 1)
        {
            return Ok(None);
        }
        let (from, to) = (dirent_key(dir, b""), dirent_end(dir));
        let mut entries = Vec::new();
        for item in ns
            .dirents()?
            .range(from.as_slice()..to.as_slice())
            .map_err(store_err)?
        {
            if entries.len() == ACQUIRE_MAX_ENTRIES {
                return Ok(None);
            }
            let (k, v) = item.map_err(store_err)?;
            entries.push(decode_dirent(k.value(), v.value())?);
        }
        self.leases
            .open_mut()?
            .insert(dir.0.to_be_bytes().as_slice(), client)
            .map_err(store_err)?;
        Ok(Some(Granted {
            dir: node.attr,
            entries,
        }))
    }

    fn reserve(
        &mut self,
        ns: &mut WriteTables<'_>,
        region: RegionId,
        client: u64,
        count: u32,
    ) -> Result<(InodeId, u32), NsError> {
        let count = count.min(RESERVE_MAX);
        let first = ns.next_n(counter::NEXT_INODE, 1, u64::from(count))?;
        let first_ino = InodeId::new(region, first).map_err(|e| NsError::Store(e.to_string()))?;
        self.reserved
            .open_mut()?
            .insert(
                reserved_key(client, first_ino.0).as_slice(),
                first_ino.0 + u64::from(count),
            )
            .map_err(store_err)?;
        Ok((first_ino, count))
    }
}

/// The entries an operation removes or moves, as (directory, name): where a leased
/// directory may go away.
fn names_moved(op: &Op) -> Vec<(InodeId, &[u8])> {
    match op {
        Op::Rmdir { parent, name, .. } => vec![(*parent, name.as_slice())],
        Op::Rename {
            parent,
            name,
            new_parent,
            new_name,
            ..
        } => vec![
            (*parent, name.as_slice()),
            (*new_parent, new_name.as_slice()),
        ],
        _ => Vec::new(),
    }
}

/// The directory inodes an operation removes or moves (looked up before it applies).
fn dirs_moved(ns: &WriteTables<'_>, op: &Op) -> Result<Vec<InodeId>, NsError> {
    let mut out = Vec::new();
    for (parent, name) in names_moved(op) {
        if let Some(e) = read_dirent(ns.dirents()?, parent, name)?
            && e.kind == FileKind::Dir
        {
            out.push(e.ino);
        }
    }
    Ok(out)
}

/// The directories a mutation touches where a lease matters: those whose entries it
/// changes, the directories it removes or moves, and the inode it changes.
pub fn touched_dirs(ns_read: &super::NsReader<'_>, op: &Op) -> Vec<InodeId> {
    let mut dirs = op.dirs_changed();
    for (parent, name) in names_moved(op) {
        if let Ok(QueryReply::Attr(a)) = ns_read.query(&Query::Lookup {
            parent,
            name: name.to_vec(),
            creds: Creds::root(),
        }) && a.kind == FileKind::Dir
        {
            dirs.push(a.ino);
        }
    }
    if let Op::SetAttr { ino, .. } | Op::SetXattr { ino, .. } | Op::RemoveXattr { ino, .. } = op {
        dirs.push(*ino);
    }
    dirs
}

/// Applies a local command with what leases add to it: a create at a reserved inode
/// number must be the client's; a directory made with `lease` is leased to its maker;
/// a directory removed loses its lease.
pub fn apply_command(
    ns: &mut WriteTables<'_>,
    leases: &mut LeaseTables<'_>,
    cmd: &Command,
) -> Result<Reply, NsError> {
    let client = cmd.request.map(|(c, _)| c);
    if let Some(ino) = cmd.ino {
        let mine = match client {
            Some(c) => leases.is_reserved(c, ino)?,
            None => false,
        };
        if !mine || !creates(&cmd.op) {
            return Err(NsError::Perm(format!(
                "inode number {ino} is not reserved for this client"
            )));
        }
    }
    // A retry of a change that applied: its first outcome, and no lease granted again
    // (it may have been given back since).
    if already_applied(ns, cmd)? {
        return apply(ns, cmd);
    }
    let moved = dirs_moved(ns, &cmd.op)?;
    let reply = apply(ns, cmd)?;
    if let (
        true,
        Some(c),
        Op::Mknod {
            kind: FileKind::Dir,
            ..
        },
        Reply::Attr(a),
    ) = (cmd.lease, client, &cmd.op, &reply)
        && find_volume(ns, a.volume)?.is_some_and(|v| v.policy.regions.len() <= 1)
    {
        leases
            .leases
            .open_mut()?
            .insert(a.ino.0.to_be_bytes().as_slice(), c)
            .map_err(store_err)?;
    }
    for d in moved {
        if read_inode(ns.inodes()?, d)?.is_none() {
            leases
                .leases
                .open_mut()?
                .remove(d.0.to_be_bytes().as_slice())
                .map_err(store_err)?;
        }
    }
    Ok(reply)
}

/// Applies a write-back: each change in order, as long as every directory whose entries
/// it changes is still leased to the client; from the first change that is not (or that
/// fails), the rest are refused, since they may build on it. Then the leases given back
/// end, and inode numbers are reserved.
pub fn apply_write_back(
    ns: &mut WriteTables<'_>,
    leases: &mut LeaseTables<'_>,
    region: RegionId,
    wb: &WriteBack,
) -> Result<WriteBackOutcome, NsError> {
    let mut out = WriteBackOutcome::default();
    let mut broken: Option<String> = None;
    for cmd in &wb.cmds {
        if cmd.request.map(|(c, _)| c) != Some(wb.client) {
            out.outcomes.push(Err(NsError::Invalid(
                "a write-back change must carry its client's request".into(),
            )));
            continue;
        }
        if let Some(why) = &broken {
            out.outcomes.push(Err(NsError::Conflict(why.clone())));
            continue;
        }
        // Only what a mount answers alone under a lease, and the commits, atimes and
        // attribute changes that ride with it (of files, whose attributes recall no
        // lease, as through Mutate, and of directories leased to the client): anything
        // else goes through Mutate, which recalls other clients' leases.
        let carried = match &cmd.op {
            // A directory removed that another client holds goes through Mutate, which
            // recalls it.
            Op::Rmdir { parent, name, .. } => match read_dirent(ns.dirents()?, *parent, name)? {
                Some(e) if e.kind == FileKind::Dir => {
                    leases.holder(e.ino)?.is_none_or(|c| c == wb.client)
                }
                _ => true,
            },
            Op::Mknod { .. }
            | Op::Symlink { .. }
            | Op::Link { .. }
            | Op::Unlink { .. }
            | Op::CommitExtents { .. }
            | Op::AccessedBatch { .. } => true,
            // Within one directory or between two (the leases of both are checked
            // below). A directory moved or replaced must be leased to the client too
            // (nobody else knows it whole; a move into itself fails as through Mutate).
            Op::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
                ..
            } if !flags.exchange => {
                let moved = read_dirent(ns.dirents()?, *parent, name)?;
                let replaced = read_dirent(ns.dirents()?, *new_parent, new_name)?;
                let mut held = true;
                for e in moved.iter().chain(&replaced) {
                    if e.kind == FileKind::Dir {
                        held &= leases.holder(e.ino)? == Some(wb.client);
                    }
                }
                held
            }
            Op::SetAttr { ino, set, .. } if set.size.is_none() => {
                match read_inode(ns.inodes()?, *ino)?.map(|n| n.attr.kind) {
                    Some(FileKind::File) | None => true,
                    // Under the client's lease of it, as its entries' changes are.
                    Some(FileKind::Dir) => leases.holder(*ino)? == Some(wb.client),
                    Some(_) => false,
                }
            }
            _ => false,
        };
        if !carried {
            let e = NsError::Invalid(
                "a write-back holds creates, links, removals, renames within a directory or of files, commits, atimes and attribute changes of files and of leased directories only"
                    .into(),
            );
            broken = Some(format!("an earlier change of this write-back failed: {e}"));
            out.outcomes.push(Err(e));
            continue;
        }
        let mut unleased = None;
        for d in cmd.op.dirs_changed() {
            if leases.holder(d)? != Some(wb.client) {
                unleased = Some(d);
            }
        }
        // A change names an inode number only as a create at one reserved for its client
        // (apply_command checks it too; a retry's replay below would not).
        let stray_ino = match cmd.ino {
            Some(i) => !creates(&cmd.op) || !leases.is_reserved(wb.client, i)?,
            None => false,
        };
        let outcome = match unleased {
            Some(_) if stray_ino => Err(NsError::Invalid(
                "a change carries an inode number not reserved for this client's create".into(),
            )),
            // A retry of a change that applied: its first outcome.
            Some(_) if already_applied(ns, cmd)? => apply(ns, cmd),
            Some(d) => Err(NsError::Conflict(format!(
                "directory {d} is no longer leased to this client"
            ))),
            None => apply_command(ns, leases, cmd),
        };
        if let Err(e) = &outcome {
            if let NsError::Store(_) = e {
                return Err(e.clone());
            }
            broken = Some(format!("an earlier change of this write-back failed: {e}"));
        }
        out.outcomes.push(outcome);
    }
    leases.release(wb.client, &wb.release)?;
    for &dir in wb.acquire.iter().take(ACQUIRE_MAX) {
        if let Some(g) = leases.acquire(ns, wb.client, dir)? {
            out.granted.push(g);
        }
    }
    if wb.reserve > 0 {
        out.reserved = Some(leases.reserve(ns, region, wb.client, wb.reserve)?);
    }
    Ok(out)
}

/// Whether `op` makes an inode (the only changes that may name a reserved number).
fn creates(op: &Op) -> bool {
    matches!(op, Op::Mknod { .. } | Op::Symlink { .. })
}

fn already_applied(ns: &WriteTables<'_>, cmd: &Command) -> Result<bool, NsError> {
    match cmd.request {
        Some((c, op)) => ns.has_request(c, op),
        None => Ok(false),
    }
}
