//! A kernel request's handling that had to wait after its first poll, on the kernel
//! request thread that took it (`answer.rs`): moved into a runtime task when something
//! wakes it, not before.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Wake;

/// A request's handling that had to wait after its first poll: moved into a task on the
/// mount's runtime when something wakes it, not before. What wakes it is mostly a runtime
/// worker (the answer of a call it made, read off the connection), and a task spawned
/// there runs on that worker next: spawned at once from the kernel's thread instead, the
/// task woke an idle worker only to find that it had to wait (a wake-up across
/// processors per request that waits: a close's durable round, an fsync).
pub(super) struct Parked {
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
    pub(super) fn poll_here(
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
