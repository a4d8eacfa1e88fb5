//! A thread whose work nothing waits for runs only when a processor is otherwise idle
//! (Linux's `SCHED_IDLE`), and is hurried back to a normal share when something does.
//!
//! The thread applying behind (see `applier.rs`) applies a follower's entries in batches
//! that take a millisecond or more. Where the members share the processors (a small
//! machine, or one node running several services), the scheduler queued the tasks a round
//! wakes (the leader's answer, a mount's) behind such a batch, even with another processor
//! idle: a tenth of the rounds of a loop of fsync'd writes took twice as long. A thread at
//! `SCHED_IDLE` is preempted by any other on waking, and its processor counts as free
//! when a task waking is placed.
//!
//! Such a thread gets almost no processor time while others keep every processor busy, so
//! whoever waits for what it holds (the applier's lock) first puts it back to a normal
//! share ([`Background::hurry`]) and then blocks on the lock, and a thread does not lower
//! itself while anyone waits: a batch never waits for an idle processor while something
//! waits for the batch. (The waiter used to poll the lock every 50 µs, hurrying each time:
//! on a leader, whose commit waits for the log's flusher applying ahead under the same
//! lock, a sixth of the fsync'd writes slept 100 µs or more for a lock freed sooner.) A
//! thread may leave `SCHED_IDLE` only with the right to raise its priority
//! (`CAP_SYS_NICE`, or an `RLIMIT_NICE` of 20); without it the thread keeps its normal
//! share, as before.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};

/// A background thread, as others see it.
#[derive(Debug, Default)]
pub(super) struct Background {
    /// Its thread id while it is lowered (0: it is not).
    tid: AtomicI32,
    /// Threads blocked in [`Background::lock`]: while any is, the thread stays at a normal
    /// share.
    waiting: AtomicUsize,
}

/// The calling thread lowered to `SCHED_IDLE` until this is dropped. It should hold no
/// lock meanwhile that others take without [`Background::lock`].
#[must_use]
pub(super) struct Lowered<'b>(&'b Background);

impl Drop for Lowered<'_> {
    fn drop(&mut self) {
        self.0.tid.store(0, Ordering::Release);
        set_policy(0, libc::SCHED_OTHER);
    }
}

impl Background {
    /// Lowers the calling thread to `SCHED_IDLE` until the guard goes, if it could be
    /// hurried back meanwhile and nobody waits in [`Background::lock`].
    pub(super) fn lowered(&self) -> Option<Lowered<'_>> {
        if !reversible()
            || self.waiting.load(Ordering::SeqCst) > 0
            || !set_policy(0, libc::SCHED_IDLE)
        {
            return None;
        }
        // SAFETY: gettid has no preconditions.
        self.tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
        // A waiter that came before the id was published did not hurry this thread, and
        // it is counted by now: back to a normal share (sequentially consistent: either it
        // saw the id or this sees it).
        if self.waiting.load(Ordering::SeqCst) > 0 {
            drop(Lowered(self));
            return None;
        }
        Some(Lowered(self))
    }

    /// Puts the thread lowered, if any, back to a normal share.
    pub(super) fn hurry(&self) {
        let tid = self.tid.load(Ordering::SeqCst);
        // SAFETY: gettid has no preconditions.
        if tid != 0 && tid != unsafe { libc::gettid() } {
            set_policy(tid, libc::SCHED_OTHER);
        }
    }

    /// Locks `m`, which the lowered thread may hold: hurries it first, then blocks.
    pub(super) fn lock<'m, T>(&self, m: &'m Mutex<T>) -> MutexGuard<'m, T> {
        match m.try_lock() {
            Ok(guard) => return guard,
            Err(TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(TryLockError::WouldBlock) => {}
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.hurry();
        let guard = m.lock().unwrap_or_else(|p| p.into_inner());
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        guard
    }
}

/// Sets `tid`'s (0: the calling thread's) scheduling policy; whether it took.
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain system call with a valid parameter; a thread id that is gone
    // fails with ESRCH.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

/// Whether a thread of this process may leave `SCHED_IDLE` again (tried once, on a
/// thread of its own).
fn reversible() -> bool {
    static REVERSIBLE: OnceLock<bool> = OnceLock::new();
    *REVERSIBLE.get_or_init(|| {
        std::thread::spawn(|| set_policy(0, libc::SCHED_IDLE) && set_policy(0, libc::SCHED_OTHER))
            .join()
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, mpsc};
    use std::time::Duration;

    use super::*;

    fn policy() -> libc::c_int {
        // SAFETY: no preconditions.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn a_lowered_thread_is_hurried_by_whoever_waits_for_its_lock() {
        if !reversible() {
            eprintln!("this process may not leave SCHED_IDLE: nothing to test");
            return;
        }
        let bg = Arc::new(Background::default());
        let lock = Arc::new(Mutex::new(0u32));
        let (held, is_held) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let (seen, policies) = mpsc::channel();
        let thread = {
            let (bg, lock) = (bg.clone(), lock.clone());
            std::thread::spawn(move || {
                let mut g = lock.lock().unwrap();
                let lowered = bg.lowered().expect("reversible");
                seen.send(policy()).unwrap();
                held.send(()).unwrap();
                // Holds the lock until told, then reports its policy, and again once
                // no longer lowered.
                released.recv().unwrap();
                *g += 1;
                seen.send(policy()).unwrap();
                drop(lowered);
                seen.send(policy()).unwrap();
            })
        };
        assert_eq!(policies.recv().unwrap(), libc::SCHED_IDLE);
        is_held.recv().unwrap();
        let waiter = {
            let (bg, lock) = (bg.clone(), lock.clone());
            std::thread::spawn(move || *bg.lock(&lock) + 1)
        };
        // The waiter hurries the holder while it waits.
        let tid = bg.tid.load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // SAFETY: no preconditions; the thread lives until released.
        while unsafe { libc::sched_getscheduler(tid) } != libc::SCHED_OTHER {
            assert!(
                std::time::Instant::now() < deadline,
                "the holder was not hurried"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        release.send(()).unwrap();
        assert_eq!(policies.recv().unwrap(), libc::SCHED_OTHER);
        assert_eq!(waiter.join().unwrap(), 2);
        assert_eq!(policies.recv().unwrap(), libc::SCHED_OTHER);
        assert_eq!(bg.tid.load(Ordering::Acquire), 0, "no longer lowered");
        thread.join().unwrap();
    }

    #[test]
    fn a_thread_holding_the_lock_stays_at_a_normal_share_while_another_waits() {
        if !reversible() {
            eprintln!("this process may not leave SCHED_IDLE: nothing to test");
            return;
        }
        let bg = Arc::new(Background::default());
        let lock = Arc::new(Mutex::new(0u32));
        let guard = lock.lock().unwrap();
        let waiter = {
            let (bg, lock) = (bg.clone(), lock.clone());
            std::thread::spawn(move || *bg.lock(&lock) + 1)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while bg.waiting.load(Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the waiter never waited"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // The holder would lower itself now (a batch beginning): not while one waits.
        assert!(
            bg.lowered().is_none(),
            "lowered with a waiter blocked on its lock"
        );
        assert_eq!(policy(), libc::SCHED_OTHER);
        drop(guard);
        assert_eq!(waiter.join().unwrap(), 1);
        assert_eq!(bg.waiting.load(Ordering::SeqCst), 0);
        // And once nobody waits, it may.
        let lowered = bg.lowered().expect("reversible, nobody waiting");
        assert_eq!(policy(), libc::SCHED_IDLE);
        drop(lowered);
        assert_eq!(policy(), libc::SCHED_OTHER);
    }
}
