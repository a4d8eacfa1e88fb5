//! Sending what the mount answered alone: the queue of changes goes to the servers in
//! order, in batches (`MetaService.WriteBack`, one Raft entry each), with the leases given
//! back and the inode numbers asked for; durability points and requests that must come
//! after the queue wait here for it (docs/adr/0006).

use std::sync::{Arc, Weak};

use meridian_proto::InodeId;
use meridian_proto::ns::{ACQUIRE_MAX, NsError, Op, Queued, Reply, Timespec, libc_errno};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::{Errno, Leases, RESERVE, RESERVE_LOW, State, now};
use crate::meta::{MetaClient, WrittenBack};

/// Most changes sent in one batch.
const BATCH_MAX: usize = 2048;
/// Changes queued with nobody waiting for them are sent this long after the first (or
/// after the batch before them was answered), or once this many are queued, so that a
/// file's create goes with its first commit and a loop's changes go in batches; a
/// durability point, a recall or a caller that waits sends the queue at once.
const LINGER: std::time::Duration = std::time::Duration::from_millis(10);
const SEND_AT: usize = 256;

/// What one write-back sends: changes, leases given back, numbers asked for, leases asked
/// for.
pub(in crate::fs) type Batch = (Vec<Queued>, Vec<InodeId>, u32, Vec<InodeId>);

/// A batch's sending, run to its end ([`Leases::settle_here`]).
pub(in crate::fs) type Sending = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl State {
    /// Whether the next batch would send something (more or less: leases asked for may
    /// turn out to be held already).
    fn to_send(&self) -> bool {
        !self.queue.is_empty()
            || !self.release.is_empty()
            || self.reserving
            || !self.acquire.is_empty()
    }

    /// Takes the next batch off the queue, with the leases that may go back with it.
    pub(super) fn next_batch(&mut self) -> Batch {
        let n = self.queue.len().min(BATCH_MAX);
        let ops: Vec<Queued> = self.queue.drain(..n).collect();
        // A lease goes back with the batch holding the last change queued in it, or that
        // moves or replaces it (the leader takes a directory renamed only under its
        // lease).
        let later: std::collections::HashSet<InodeId> = self
            .queue
            .iter()
            .flat_map(|q| {
                let touched = self.touched_by.get(&q.request).into_iter().flatten();
                q.op.dirs_changed().into_iter().chain(touched.copied())
            })
            .collect();
        let release: Vec<InodeId> = self
            .release
            .iter()
            .copied()
            .filter(|d| !later.contains(d))
            .collect();
        for d in &release {
            self.release.remove(d);
        }
        let reserve = if self.reserving { RESERVE } else { 0 };
        self.reserving = false;
        // Not a lease still to be given back (its release may go in a later batch, after
        // the grant).
        let acquire: Vec<InodeId> = std::mem::take(&mut self.acquire)
            .into_iter()
            .filter(|d| !self.release.contains(d) && !self.dirs.contains_key(d))
            .take(ACQUIRE_MAX)
            .collect();
        for d in &acquire {
            self.acquiring.insert(*d, false);
            self.recalled.remove(d);
        }
        (ops, release, reserve, acquire)
    }
}

impl Leases {
    pub(super) fn enqueue(
        &self,
        s: &mut State,
        meta: &MetaClient,
        op: Op,
        at: Timespec,
        ino: Option<InodeId>,
    ) -> u64 {
        let request = meta.next_request_id();
        if let Some(ino) = ino {
            s.unsent.insert(ino);
        }
        for dir in op.dirs_changed() {
            s.use_dir(dir);
        }
        let mut touched = op.inodes();
        touched.extend(ino);
        for i in &touched {
            *s.touching.entry(*i).or_default() += 1;
        }
        s.touched_by.insert(request, touched);
        s.queue.push(Queued {
            request,
            op,
            now: at,
            ino,
        });
        s.queued += 1;
        if s.reserved_left() < RESERVE_LOW {
            s.reserving = true;
        }
        if s.reserving || s.queue.len() >= SEND_AT {
            self.work.notify_one();
        } else {
            self.pending.notify_one();
        }
        request
    }

    /// Queues `op` after what is queued, to go in the same batch if it can, when something
    /// is queued (otherwise `None`: send it directly, it is as fast). The receiver gets
    /// its outcome; the caller sends the queue ([`Leases::send_here`]).
    pub(in crate::fs) fn submit(
        &self,
        meta: &MetaClient,
        op: Op,
    ) -> Option<oneshot::Receiver<Result<Reply, NsError>>> {
        let mut s = self.lock();
        if s.queue.is_empty() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let request = self.enqueue(&mut s, meta, op, now(), None);
        s.waiters.insert(request, tx);
        Some(rx)
    }

    /// The count of refused changes so far (see [`Leases::sync`]).
    pub(in crate::fs) fn failures(&self) -> u64 {
        self.lock().failures
    }

    /// Waits until every change queued so far has been sent and answered.
    pub(in crate::fs) async fn settle(&self) {
        let target = {
            let s = self.lock();
            if *self.sent.borrow() >= s.queued {
                return;
            }
            s.queued
        };
        self.work.notify_one();
        let mut rx = self.sent.subscribe();
        while *rx.borrow_and_update() < target {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// A durability point: [`settle`](Self::settle), then EIO if a change was refused
    /// since `seen` (the caller's last look at [`Leases::failures`]; updated).
    pub(in crate::fs) async fn sync(&self, seen: &mut u64) -> Result<(), Errno> {
        self.settle().await;
        let s = self.lock();
        if s.failures > *seen {
            *seen = s.failures;
            warn!(
                last = s.last_failure.as_deref().unwrap_or(""),
                "namespace changes answered here were refused by the servers"
            );
            return Err(libc_errno::EIO);
        }
        Ok(())
    }

    /// fsyncdir: [`sync`](Self::sync) with what fsyncdir last saw.
    pub(in crate::fs) async fn sync_dirs(&self) -> Result<(), Errno> {
        let mut seen = self.lock().dir_seen;
        let r = self.sync(&mut seen).await;
        let mut s = self.lock();
        s.dir_seen = s.dir_seen.max(seen);
        r
    }

    /// Takes the next batch to send ([`Next::Batch`], then nobody else sends until
    /// [`Leases::send_batch`] is done with it), unless one is out or there is nothing.
    pub(super) fn take_batch(&self) -> Next {
        let mut s = self.lock();
        if s.sending {
            return Next::Out;
        }
        let batch = s.next_batch();
        let (ops, release, reserve, acquire) = &batch;
        if ops.is_empty() && release.is_empty() && *reserve == 0 && acquire.is_empty() {
            return Next::Nothing;
        }
        s.sending = true;
        Next::Batch(batch)
    }

    /// Sends the queue's next batch by `send` if none is out (a future run to its end, in
    /// a task of its own if this caller is dropped first), else wakes the sending task
    /// to send it after the one out: a caller waiting for the queue sends it from its own
    /// thread (a kernel request thread's first poll writes the write-back to the calls
    /// port itself), not through a hand-off to the sending task, which a close's durable
    /// round waited for.
    pub(in crate::fs) async fn send_here(&self, send: impl FnOnce(Batch) -> Sending) {
        match self.take_batch() {
            Next::Batch(batch) => {
                let rt = tokio::runtime::Handle::try_current().ok();
                Detached(Some(send(batch)), rt).await;
            }
            Next::Out => self.work.notify_one(),
            Next::Nothing => {}
        }
    }

    /// [`settle`](Self::settle), sending the queue by `send` first if none of it is out
    /// ([`send_here`](Self::send_here)).
    pub(in crate::fs) async fn settle_here(&self, send: impl FnOnce(Batch) -> Sending) {
        let queued = self.lock().queued;
        if *self.sent.borrow() < queued {
            self.send_here(send).await;
        }
        self.settle().await;
    }

    /// Sends `batch` (taken by [`Leases::take_batch`]; `by_loop`: by the sending task)
    /// and takes its answer: outcomes to their waiters, failures counted, leases granted
    /// and numbers reserved kept. Returns the directories given back, whose names the
    /// kernel is to forget.
    pub(in crate::fs) async fn send_batch(
        &self,
        meta: &MetaClient,
        batch: Batch,
        by_loop: bool,
    ) -> Vec<InodeId> {
        let (ops, release, reserve, acquire) = batch;
        let result = meta.write_back(&ops, &release, reserve, &acquire).await;
        let mut s = self.lock();
        let mut over_budget = Vec::new();
        let mut forget = Vec::new();
        match result {
            Ok(WrittenBack {
                outcomes,
                reserved,
                granted,
                level,
            }) => {
                s.level = level;
                self.granted(&mut s, &acquire, granted);
                if let Some((first, n)) = reserved {
                    s.reserved.push_back((first.0, first.0 + u64::from(n)));
                }
                let mut refused = false;
                for q in &ops {
                    if let Some(ino) = q.ino {
                        s.unsent.remove(&ino);
                    }
                    s.sent_change(q);
                }
                for (q, outcome) in ops.iter().zip(outcomes) {
                    refused |= outcome.is_err();
                    match s.waiters.remove(&q.request) {
                        // Its caller reports it.
                        Some(w) => {
                            let _ = w.send(outcome);
                        }
                        None => {
                            if let Err(e) = outcome {
                                s.failures += 1;
                                s.last_failure = Some(format!("{:?}: {e}", q.op));
                            }
                        }
                    }
                }
                if refused {
                    forget = s.give_up();
                }
                over_budget = s.over_budget(self.max_names);
            }
            Err(e) => {
                warn!(error = %e, changes = ops.len(), "could not send namespace changes answered here");
                for q in &ops {
                    if let Some(ino) = q.ino {
                        s.unsent.remove(&ino);
                    }
                    s.sent_change(q);
                    match s.waiters.remove(&q.request) {
                        Some(w) => {
                            let _ = w.send(Err(NsError::Store(format!("not sent: {e}"))));
                        }
                        None => s.failures += 1,
                    }
                }
                s.last_failure = Some(format!("{} changes not sent: {e}", ops.len()));
                forget = s.give_up();
                // The releases may not have reached the servers: they expire. Leases
                // asked for may have been granted: they go back.
                s.release.clear();
                for d in &acquire {
                    s.acquiring.remove(d);
                    s.release.insert(*d);
                }
            }
        }
        s.sending = false;
        // Sent by a caller: what was queued meanwhile (or did not fit) is the sending
        // task's.
        let wake = !by_loop && s.to_send();
        let sent = *self.sent.borrow() + ops.len() as u64;
        drop(s);
        self.sent.send_replace(sent);
        if wake {
            self.work.notify_one();
        }
        if !over_budget.is_empty() {
            debug!(
                leases = over_budget.len(),
                "leases given back: more names held than the budget"
            );
            forget.extend(self.give_back(&over_budget));
        }
        forget
    }

    /// Sends the queue, releases and reservations, until the file system is dropped.
    pub(in crate::fs) async fn send_loop(me: Weak<crate::fs::FileSystem>, meta: Arc<MetaClient>) {
        // Whether a batch was just sent: changes queued meanwhile, nobody waiting for them,
        // wait their linger too. Sent at once instead, a loop's changes went in batches of
        // one write-back's time (a few changes each), and the servers' work per batch (a
        // Raft round) was most of their work per change.
        let mut just_sent = false;
        loop {
            let Some(fs) = me.upgrade() else { return };
            let leases = &fs.leases;
            if std::mem::take(&mut just_sent) && !leases.lock().queue.is_empty() {
                let work = leases.work.clone();
                drop(fs);
                tokio::select! {
                    _ = work.notified() => {}
                    _ = tokio::time::sleep(LINGER) => {}
                }
                continue;
            }
            let batch = match leases.take_batch() {
                Next::Batch(batch) => batch,
                // Nothing, or a batch out from a caller waiting for it: that caller wakes
                // this when done if something is left to send.
                Next::Out | Next::Nothing => {
                    let (work, pending) = (leases.work.clone(), leases.pending.clone());
                    drop(fs);
                    tokio::select! {
                        _ = work.notified() => {}
                        _ = pending.notified() => {
                            // Queued with nobody waiting: more may follow (a file's commit).
                            tokio::select! {
                                _ = work.notified() => {}
                                _ = tokio::time::sleep(LINGER) => {}
                            }
                        }
                    }
                    continue;
                }
            };
            just_sent = !batch.0.is_empty();
            fs.known
                .forget(&leases.send_batch(&meta, batch, true).await);
        }
    }
}

/// What [`Leases::take_batch`] found.
pub(super) enum Next {
    /// A batch to send.
    Batch(Batch),
    /// A batch is out (its sender takes its answer first).
    Out,
    /// Nothing to send.
    Nothing,
}

/// A future run to its end: dropped before it (its caller gone), the rest goes on in a
/// task. A batch taken off the queue is sent and its answer taken whatever becomes of the
/// caller that sent it.
struct Detached(Option<Sending>, Option<tokio::runtime::Handle>);

impl std::future::Future for Detached {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let Some(f) = self.0.as_mut() else {
            return std::task::Poll::Ready(());
        };
        let done = f.as_mut().poll(cx);
        if done.is_ready() {
            self.0 = None;
        }
        done
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let (Some(f), Some(rt)) = (self.0.take(), &self.1) {
            rt.spawn(f);
        }
    }
}
