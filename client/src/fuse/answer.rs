//! How a kernel request is answered: polled once on the thread that took it, and moved
//! with its reply into a tokio task only if it has to wait; the replies shared by several
//! requests (an entry, an empty answer, an extended attribute's bytes).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Wake;

use fuser::{Errno, Generation, ReplyEmpty, ReplyEntry, ReplyXattr, Request};
use meridian_proto::ns::Attr;

use super::FuseFs;
use super::convert::err;

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

/// A request's handling that had to wait after its first poll: moved into a task on the
/// mount's runtime when something wakes it, not before. What wakes it is mostly a runtime
/// worker (the answer of a call it made, read off the connection), and a task spawned
/// there runs on that worker next: spawned at once from the kernel's thread instead, the
/// task woke an idle worker only to find that it had to wait (a wake-up across
/// processors per request that waits: a close's durable round, an fsync).
struct Parked {
    state: Mutex<Park>,
    rt: tokio::runtime::Handle,
}

type Handling = Pin<Box<dyn Future<Output = ()> + Send>>;

enum Park {
    /// The first poll is under way on the kernel's thread.
    Polling,
    /// Woken during it: it goes to a task as soon as it returns.
    Woken,
    /// Waiting for a wake-up.
    Parked(Handling),
    /// In a task (which polls it from now on, with its own waker).
    Moved,
}

impl Parked {
    /// Polls `f` once on this thread (`around` makes the poll it is given), and if it did
    /// not finish, leaves it to go to a task on `rt` when something wakes it.
    fn poll_here(
        rt: &tokio::runtime::Handle,
        mut f: Handling,
        around: impl FnOnce(&mut dyn FnMut() -> bool) -> bool,
    ) {
        let parked = Arc::new(Parked {
            state: Mutex::new(Park::Polling),
            rt: rt.clone(),
        });
        let waker = std::task::Waker::from(parked.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        if !around(&mut || f.as_mut().poll(&mut cx).is_ready()) {
            parked.park(f);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Park> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a first poll that did not finish it: `f` waits for its wake-up, or goes to
    /// a task now if it came during the poll.
    fn park(&self, f: Handling) {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, Park::Moved) {
            Park::Polling => *state = Park::Parked(f),
            _ => {
                drop(state);
                self.rt.spawn(f);
            }
        }
    }
}

impl Wake for Parked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, Park::Moved) {
            Park::Polling | Park::Woken => *state = Park::Woken,
            Park::Parked(f) => {
                drop(state);
                self.rt.spawn(f);
            }
            Park::Moved => {}
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("answer-test-worker")
            .enable_all()
            .build()
            .unwrap()
    }

    /// Polls `f` once here as a kernel request thread does; the receiver hears the
    /// name of the thread it finished on.
    fn poll_here(
        rt: &tokio::runtime::Runtime,
        f: impl Future<Output = ()> + Send + 'static,
    ) -> std::sync::mpsc::Receiver<Option<String>> {
        let (done, finished) = std::sync::mpsc::channel();
        let f = Box::pin(async move {
            f.await;
            let _ = done.send(std::thread::current().name().map(String::from));
        });
        let _runtime = rt.enter();
        Parked::poll_here(rt.handle(), f, |poll| poll());
        finished
    }

    /// Returns Pending once, waking itself during that poll.
    struct WakesItself(bool);

    impl Future for WakesItself {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
            if std::mem::replace(&mut self.0, true) {
                return std::task::Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }

    #[test]
    fn a_request_ready_at_once_finishes_on_the_thread_that_took_it() {
        let rt = runtime();
        let finished = poll_here(&rt, async {});
        let on = finished.try_recv().expect("finished during the first poll");
        assert_eq!(on, std::thread::current().name().map(String::from));
    }

    #[test]
    fn a_request_woken_during_its_first_poll_goes_on_in_a_task() {
        let rt = runtime();
        let finished = poll_here(&rt, WakesItself(false));
        let on = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("a wake-up during the first poll is not lost");
        assert_eq!(on.as_deref(), Some("answer-test-worker"));
    }

    #[test]
    fn a_request_goes_to_a_task_when_a_runtime_worker_or_another_thread_wakes_it() {
        let rt = runtime();
        // Woken from a task on the runtime (an answer read off a connection).
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let finished = poll_here(&rt, async {
            rx.await.unwrap();
        });
        assert!(
            finished.recv_timeout(Duration::from_millis(50)).is_err(),
            "waits for its wake-up"
        );
        rt.spawn(async move { tx.send(()).unwrap() });
        let on = finished.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(on.as_deref(), Some("answer-test-worker"));
        // Woken from a thread outside the runtime.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let finished = poll_here(&rt, async {
            rx.await.unwrap();
        });
        std::thread::spawn(move || tx.send(()).unwrap());
        let on = finished.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(on.as_deref(), Some("answer-test-worker"));
    }
}
