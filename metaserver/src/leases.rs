//! Directory leases on the leader (docs/adr/0006): the write-back of a lease's holder,
//! and recalls. A request of another client that reads or
//! changes a leased directory waits on the leader until the holder has sent what it
//! answered alone and given the lease back. The holder learns of the recall from the
//! change feed it long-polls; one that does not answer within [`RECALL_WAIT`] loses the
//! lease by the leader's verdict, a Raft entry, after which its late changes are refused.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use meridian_proto::InodeId;
use redb::ReadableDatabase;
use tokio::sync::watch;
use tonic::Status;
use tracing::warn;

use meridian_proto::ns::{ACQUIRE_MAX, FileKind, Op, Queued, WRITE_BACK_MAX};
use meridian_proto::pb::meta::{WriteBackRequest, WriteBackResponse, call_reply};
use tonic::{Request, Response};

use crate::error::{MetaError, store};
use crate::namespace::lease::{leaseholder, touched_dirs};
use crate::raft::{Request as RaftRequest, Response as RaftResponse};
use crate::service::{MetaNode, decode, json, naming};

/// How long a recall waits for the holder before the leader ends the lease itself.
pub const RECALL_WAIT: Duration = Duration::from_secs(5);

/// Leases recalled and not given back yet, by holder.
pub struct Recalls {
    pending: Mutex<HashMap<u64, BTreeSet<InodeId>>>,
    changed: watch::Sender<u64>,
}

impl Default for Recalls {
    fn default() -> Self {
        Recalls {
            pending: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Recalls {
    fn post(&self, holder: u64, dirs: &[InodeId]) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let set = p.entry(holder).or_default();
        let before = set.len();
        set.extend(dirs.iter().copied());
        if set.len() != before {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Drops recalls of `dirs` (their leases ended).
    pub fn forget(&self, dirs: &[InodeId]) {
        self.clear(dirs);
    }

    fn clear(&self, dirs: &[InodeId]) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for set in p.values_mut() {
            for d in dirs {
                set.remove(d);
            }
        }
        p.retain(|_, s| !s.is_empty());
    }

    /// The leases recalled from `client`.
    pub fn of(&self, client: u64) -> Vec<InodeId> {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.get(&client)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Wakes when a recall is posted.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Which of `dirs` are leased to a client other than `client`, with their holders.
fn held_by_others(
    tx: &redb::ReadTransaction,
    client: u64,
    dirs: &[InodeId],
) -> Result<Vec<(InodeId, u64)>, Status> {
    let mut out = Vec::new();
    for &d in dirs {
        match leaseholder(tx, d) {
            Ok(Some(h)) if h != client => out.push((d, h)),
            Ok(_) => {}
            Err(e) => return Err(Status::from(MetaError::Ns(e))),
        }
    }
    Ok(out)
}

impl MetaNode {
    /// Which of `dirs` are leased to a client other than `client`, in this member's state.
    pub(crate) fn leased_to_others(
        &self,
        client: u64,
        dirs: &[InodeId],
    ) -> Result<Vec<(InodeId, u64)>, Status> {
        if dirs.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read().map_err(|e| Status::from(store(e)))?;
        held_by_others(&tx, client, dirs)
    }

    /// The directories `query` reads that a client other than `client` holds leased: the
    /// one it looks in, lists or stats, and the directory a lookup finds (its holder may
    /// have changed its attributes and not sent the change yet). Read in one transaction.
    pub(crate) fn query_leased(
        &self,
        client: u64,
        query: &meridian_proto::ns::Query,
    ) -> Result<Vec<InodeId>, Status> {
        let Some(dir) = query.reads_dir() else {
            return Ok(Vec::new());
        };
        let tx = self.db.begin_read().map_err(|e| Status::from(store(e)))?;
        let mut dirs = vec![dir];
        if let meridian_proto::ns::Query::Lookup {
            parent,
            name,
            creds,
        } = query
            && let Ok(found) = crate::namespace::NsReader::new(&tx).lookup(*parent, name, creds)
            && found.kind == meridian_proto::ns::FileKind::Dir
        {
            dirs.push(found.ino);
        }
        Ok(held_by_others(&tx, client, &dirs)?
            .into_iter()
            .map(|(d, _)| d)
            .collect())
    }

    /// The directories `op` touches where a lease matters, and whether a client other
    /// than `client` holds one of them: read in one transaction.
    pub(crate) fn touched_leased(
        &self,
        client: u64,
        op: &Op,
    ) -> Result<(Vec<InodeId>, bool), Status> {
        let tx = self.db.begin_read().map_err(|e| Status::from(store(e)))?;
        let touched = touched_dirs(&crate::namespace::NsReader::new(&tx), op);
        let others = !held_by_others(&tx, client, &touched)?.is_empty();
        Ok((touched, others))
    }

    /// On the leader: recalls every lease of `dirs` held by a client other than `client`
    /// and waits until each is given back, or ends it after [`RECALL_WAIT`].
    pub(crate) async fn await_leases(&self, client: u64, dirs: &[InodeId]) -> Result<(), Status> {
        let deadline = Instant::now() + RECALL_WAIT;
        let mut applied = self.shared.applied.subscribe();
        loop {
            let held = self.leased_to_others(client, dirs)?;
            if held.is_empty() {
                self.recalls.clear(dirs);
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                let gone: Vec<InodeId> = held.iter().map(|(d, _)| *d).collect();
                warn!(
                    dirs = ?gone,
                    holders = ?held.iter().map(|(_, h)| *h).collect::<BTreeSet<_>>(),
                    "a recalled directory lease was not given back in time: ending it; \
                     the holder's later changes under it are refused"
                );
                self.propose_internal(RaftRequest::ExpireLeases(gone))
                    .await
                    .map_err(Status::from)?;
                continue;
            }
            for (d, h) in &held {
                self.recalls.post(*h, &[*d]);
            }
            let _ = tokio::time::timeout(deadline - now, applied.changed()).await;
        }
    }

    /// `MetaService.WriteBack`: changes a client answered alone under its leases, as one
    /// Raft entry (on the leader; a follower forwards).
    pub(crate) async fn write_back(
        &self,
        request: Request<WriteBackRequest>,
    ) -> Result<Response<WriteBackResponse>, Status> {
        metrics::counter!("meridian_meta_write_backs_total").increment(1);
        let r = request.get_ref();
        if r.client_id == 0 {
            return Err(Status::from(MetaError::Invalid(
                "a write-back needs a client id".into(),
            )));
        }
        let queued: Vec<Queued> = decode(&r.ops, "write-back")?;
        if queued.len() > WRITE_BACK_MAX || r.release.len() > WRITE_BACK_MAX {
            return Err(Status::from(MetaError::Invalid(format!(
                "a write-back holds at most {WRITE_BACK_MAX} changes and releases"
            ))));
        }
        if r.acquire.len() > ACQUIRE_MAX {
            return Err(Status::from(MetaError::Invalid(format!(
                "a write-back asks for at most {ACQUIRE_MAX} leases"
            ))));
        }
        if !self.is_leader() {
            let (mut leader, addr) = self.leader_client(&request)?;
            return naming(leader.write_back(MetaNode::forward(request)).await, &addr);
        }
        let restricted = crate::tokens::restricted(&request)?;
        if restricted.is_some() {
            // The checks below read the state: it holds what was answered early.
            self.settle_early().await;
        }
        if let Some((claims, keys)) = &restricted
            && let crate::tokens::Checked::Missing(ino) =
                self.check_write_back(claims, keys, r.client_id, &queued, r.reserve, &r.caps)?
        {
            return Err(Status::failed_precondition(format!(
                "a write-back names inode {ino}, which the leader does not hold"
            )));
        }
        // A lease is asked for only to change the directory: a grant to write it.
        let acquire: Vec<InodeId> = r.acquire.iter().map(|&d| InodeId(d)).collect();
        if let Some((claims, _)) = &restricted
            && let crate::tokens::Checked::Missing(ino) =
                self.check_inodes(claims, &acquire, true, &Default::default())?
        {
            return Err(Status::failed_precondition(format!(
                "a write-back names inode {ino}, which the leader does not hold"
            )));
        }
        let client = r.client_id;
        let cmds = queued
            .into_iter()
            .map(|q| {
                let lease = matches!(
                    q.op,
                    Op::Mknod {
                        kind: FileKind::Dir,
                        ..
                    }
                );
                let mut cmd = self.stamp(q.op, Some((client, q.request)));
                // The time the mount told the kernel, unless its clock is far off.
                if q.now.sec.abs_diff(cmd.now.sec) <= 60 {
                    cmd.now = q.now;
                }
                cmd.ino = q.ino;
                cmd.lease = lease;
                cmd
            })
            .collect();
        let wb = crate::namespace::lease::WriteBack {
            client,
            cmds,
            release: r
                .release
                .iter()
                .map(|&d| meridian_proto::InodeId(d))
                .collect(),
            reserve: r.reserve,
            acquire,
        };
        let key = crate::raft::early::write_back_key(&wb);
        let sink = request.extensions().get::<crate::service::EarlySink>();
        let early = |done: &RaftResponse, _| match done {
            RaftResponse::WriteBack(Ok(out)) => {
                Some(call_reply::Reply::WriteBack(written_back(out)))
            }
            _ => None,
        };
        match self
            .propose_early(RaftRequest::WriteBack(wb), key, sink, early)
            .await
        {
            Ok((RaftResponse::WriteBack(Ok(out)), _)) => Ok(Response::new(written_back(&out))),
            Ok((RaftResponse::WriteBack(Err(e)), _)) => Err(Status::from(MetaError::Ns(e))),
            Ok((other, _)) => Err(Status::from(MetaError::Store(format!(
                "unexpected apply result {other:?}"
            )))),
            Err(Some(status)) => Err(status),
            Err(None) => {
                let (mut leader, addr) = self.leader_client(&request)?;
                naming(leader.write_back(MetaNode::forward(request)).await, &addr)
            }
        }
    }
}

/// A write-back's answer.
fn written_back(out: &crate::namespace::lease::WriteBackOutcome) -> WriteBackResponse {
    let (from, n) = out.reserved.map_or((0, 0), |(i, n)| (i.0, n));
    WriteBackResponse {
        outcomes: json(&out.outcomes),
        reserved_from: from,
        reserved: n,
        granted: if out.granted.is_empty() {
            Default::default()
        } else {
            json(&out.granted)
        },
        level: meridian_proto::ns::WRITE_BACK_LEVEL,
    }
}
