//! How a kernel request is answered: polled once on the thread that took it, and moved
//! with its reply into a tokio task only if it has to wait, once it is woken
//! (`parked.rs`); the replies shared by several requests (an entry, an empty answer, an
//! extended attribute's bytes).

use fuser::{Errno, Generation, ReplyEmpty, ReplyEntry, ReplyXattr, Request};
use meridian_proto::ns::Attr;

use super::FuseFs;
use super::convert::err;
use super::parked::Parked;

impl FuseFs {
    /// Answers a request: polled once here, on the kernel's thread, so what the mount
    /// answers alone (a lookup, a create or the attributes under a lease, a read from the
    /// cache) needs no hand-off to another thread; what has to wait goes on as a task
    /// once what it waits for wakes it ([`Parked`]).
    /// Then the thread stands by while another reads the kernel's queue (`standby.rs`,
    /// which counts `req`'s caller); every request's handling ends with this.
    pub(super) fn spawn(
        &self,
        req: &Request,
        f: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        use std::sync::atomic::Ordering::SeqCst;
        self.standby.enter(req.pid());
        let drain = self.drain.clone();
        drain.in_flight.fetch_add(1, SeqCst);
        let f = Box::pin(async move {
            f.await;
            drain.in_flight.fetch_sub(1, SeqCst);
        });
        let _runtime = self.rt.enter();
        // Nothing else runs on this thread meanwhile: a range read may wait here on a
        // chunkserver's range port rather than go through a task.
        Parked::poll_here(&self.rt, f, |poll| {
            crate::blocks::blocking_reads_telling(&self.before_wait, poll)
        });
        self.standby.leave();
    }

    /// Runs `work` and answers with the entry it produces (or its errno).
    pub(super) fn reply_entry<F>(&self, req: &Request, reply: ReplyEntry, work: F)
    where
        F: std::future::Future<Output = Result<Attr, i32>> + Send + 'static,
    {
        let this = self.clone_view();
        let epoch = self.fs.cache_epoch();
        let fs = self.fs.clone();
        self.spawn(req, async move {
            match work.await {
                Ok(a) => fs.reply_cached(epoch, |ttl| {
                    reply.entry(&ttl, &this.attr(&a), Generation(0))
                }),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    /// Runs `work` and answers ok (or its errno).
    pub(super) fn reply_empty<F>(&self, req: &Request, reply: ReplyEmpty, work: F)
    where
        F: std::future::Future<Output = Result<(), i32>> + Send + 'static,
    {
        self.spawn(req, async move {
            match work.await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    /// A cheap copy for use inside a task (shares the file layer).
    pub(super) fn clone_view(&self) -> FuseFs {
        FuseFs {
            fs: self.fs.clone(),
            rt: self.rt.clone(),
            root: self.root,
            dirs: self.dirs.clone(),
            drain: self.drain.clone(),
            standby: self.standby.clone(),
            before_wait: self.before_wait.clone(),
        }
    }
}

/// Answers a getxattr or listxattr asking for at most `size` bytes with `bytes`: their
/// length when `size` is 0, ERANGE when they do not fit.
pub(super) fn reply_xattr(reply: ReplyXattr, size: u32, bytes: &[u8]) {
    if size == 0 {
        reply.size(bytes.len() as u32)
    } else if bytes.len() > size as usize {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(bytes)
    }
}
