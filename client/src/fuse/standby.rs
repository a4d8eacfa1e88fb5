//! Kernel request threads standing by, so that one reads the kernel's queue at a time.
//!
//! Every thread of a FUSE session reads the one queue of the kernel's requests, and the
//! kernel hands each request to the thread that has waited longest. With four threads
//! waiting, a loop of calls (a `mkdir`, an `unlink` after another) is answered by each in
//! turn, and the scheduler, finding the caller's processor busy at each hand-over, wakes
//! each on the other processor: a wake-up across processors, both ways, per request. On
//! a virtual machine each costs tens of µs (a loop of `rmdir` ran at a quarter of its
//! rate with four threads against one). One thread alone loses the other use of the
//! threads: a read may wait on a chunkserver on the thread that took it (see
//! `blocks/range_port.rs`), and meanwhile nothing else would be taken.
//!
//! So a thread done with a request stands by (waits here, not in the kernel) while
//! another reads the queue, and is called back to read when the thread reading is about
//! to wait on a chunkserver with nobody else reading. A thread stands by for at most
//! [`STAND_BY_AT_MOST`], then reads again (so that the session's threads all come back to
//! the kernel when the mount ends).
//!
//! One reader serves one caller, but not several calling at once (four processes reading
//! from the mount's cache got a fifth less done with one reader than with four). The
//! kernel names each request's caller (its thread id), so the threads count the callers
//! whose requests came within [`CALLING_FOR`] and keep as many threads out of standing by
//! as there are callers: a lone caller's next request has the same id as its last, where
//! a queue found busy says nothing of whose requests wait.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The longest a thread stands by before it reads the kernel's queue again.
const STAND_BY_AT_MOST: Duration = Duration::from_millis(200);

/// How long a caller counts as calling after its last request.
const CALLING_FOR: Duration = Duration::from_millis(1);

/// The session's kernel request threads (see the module's doc).
pub struct Standby {
    threads: usize,
    counts: Mutex<Counts>,
    called: Condvar,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Counts {
    /// Threads handling a request (between [`Standby::enter`] and [`Standby::leave`]).
    busy: usize,
    /// Threads standing by, those called back among them.
    standing: usize,
    /// Threads called back to read, not yet gone.
    called: usize,
    /// The latest callers and when each last called (at most one per thread).
    callers: Vec<(u32, Instant)>,
}

impl Counts {
    /// Threads reading the kernel's queue, or about to (a request handled without
    /// [`Standby::enter`] is counted here too: it is short).
    fn reading(&self, threads: usize) -> usize {
        threads.saturating_sub(self.busy + self.standing - self.called)
    }

    /// Threads not standing by: busy or reading.
    fn out(&self, threads: usize) -> usize {
        threads.saturating_sub(self.standing - self.called)
    }

    /// Notes a request of `caller` (0: the kernel's own, which counts for nobody), keeping
    /// at most `threads` callers (the least recent goes).
    fn saw(&mut self, caller: u32, now: Instant, threads: usize) {
        if caller == 0 {
            return;
        }
        if let Some(c) = self.callers.iter_mut().find(|c| c.0 == caller) {
            c.1 = now;
        } else if self.callers.len() < threads {
            self.callers.push((caller, now));
        } else if let Some(oldest) = self.callers.iter_mut().min_by_key(|c| c.1) {
            *oldest = (caller, now);
        }
    }

    /// The callers that called within [`CALLING_FOR`] of `now`, at least one.
    fn calling(&self, now: Instant) -> usize {
        let recent = |c: &&(u32, Instant)| now.saturating_duration_since(c.1) < CALLING_FOR;
        self.callers.iter().filter(recent).count().max(1)
    }
}

impl Standby {
    /// For a session of `threads` kernel request threads (with one, nobody stands by: a
    /// session whose threads all read is given one here).
    pub fn new(threads: usize) -> Self {
        Standby {
            threads: threads.max(1),
            counts: Mutex::default(),
            called: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The calling thread took a request from the kernel, made by `caller` (the thread id
    /// the kernel names; 0 for its own requests). Several callers at once call back as
    /// many threads standing by, one per request, until each caller has one.
    pub fn enter(&self, caller: u32) {
        if self.threads > 1 {
            self.enter_at(caller, Instant::now());
        }
    }

    fn enter_at(&self, caller: u32, now: Instant) {
        let mut c = self.lock();
        c.busy += 1;
        c.saw(caller, now, self.threads);
        if c.out(self.threads) < c.calling(now) {
            self.call_back_one(c);
        }
    }

    /// The calling thread, busy with a request, is about to wait (on a chunkserver): if
    /// nobody else reads the kernel's queue, a thread standing by is called back to.
    pub fn waits(&self) {
        self.call_back_below(1);
    }

    /// The calling thread, which reads the kernel's queue, finds it busy (forgets come by
    /// the thousand when the kernel evicts inodes, and the kernel gives them before other
    /// requests): if it reads alone, one thread standing by is called back to read too.
    pub fn wanted(&self) {
        self.call_back_below(2);
    }

    /// Calls back one thread standing by if fewer than `readers` read the kernel's queue.
    fn call_back_below(&self, readers: usize) {
        if self.threads == 1 {
            return;
        }
        let c = self.lock();
        if c.reading(self.threads) < readers {
            self.call_back_one(c);
        }
    }

    /// Calls back one thread standing by, if one is not called already.
    fn call_back_one(&self, mut c: MutexGuard<'_, Counts>) {
        if c.standing > c.called {
            c.called += 1;
            drop(c);
            self.called.notify_one();
        }
    }

    /// The calling thread is done with its request: it stands by while another thread
    /// reads the kernel's queue (until called back, or [`STAND_BY_AT_MOST`]), and returns
    /// to read it.
    pub fn leave(&self) {
        if self.threads > 1 {
            self.leave_at(Instant::now());
        }
    }

    fn leave_at(&self, now: Instant) {
        let mut c = self.lock();
        c.busy = c.busy.saturating_sub(1);
        // This thread counts as reading now: stand by only if another does, and if as
        // many threads as there are callers stay out.
        if c.reading(self.threads) < 2 || c.out(self.threads) <= c.calling(now) {
            return;
        }
        c.standing += 1;
        let until = Instant::now() + STAND_BY_AT_MOST;
        loop {
            if c.called > 0 {
                c.called -= 1;
                break;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            c = self
                .called
                .wait_timeout(c, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        c.standing -= 1;
    }

    #[cfg(test)]
    fn counts(&self) -> Counts {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Threads busy, standing by and called back.
    fn idle(s: &Standby) -> (usize, usize, usize) {
        let c = s.counts();
        (c.busy, c.standing, c.called)
    }

    /// Waits (a bounded number of short sleeps) until `f` holds of the counts.
    fn until(s: &Standby, f: impl Fn(Counts) -> bool) -> Counts {
        for _ in 0..2000 {
            let c = s.counts();
            if f(c.clone()) {
                return c;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("counts never came to what was expected: {:?}", s.counts());
    }

    #[test]
    fn one_thread_reads_while_the_others_stand_by_until_it_waits() {
        let s = Arc::new(Standby::new(3));
        let handles = |s: &Arc<Standby>| {
            let s = s.clone();
            std::thread::spawn(move || {
                s.enter(1);
                s.leave();
            })
        };
        // Two threads take a request each and are done: each stands by, the other
        // threads reading.
        let a = handles(&s);
        until(&s, |c| c.standing == 1);
        let b = handles(&s);
        until(&s, |c| c.standing == 2);
        // The third (this one) takes a request, reading alone, and is about to wait on a
        // chunkserver: one of the two is called back and goes to read.
        s.enter(1);
        s.waits();
        let c = until(&s, |c| c.standing == 1 && c.called == 0);
        assert_eq!(c.busy, 1);
        // Another wait while that one reads calls nobody.
        s.waits();
        assert_eq!(s.counts(), c, "the called thread reads");
        // Done: this thread stands by too, the called one reading.
        let done = {
            let s = s.clone();
            std::thread::spawn(move || s.leave())
        };
        until(&s, |c| c.standing == 2 && c.busy == 0);
        // Each stands by at most its while, then reads again.
        for t in [a, b, done] {
            t.join().unwrap();
        }
        assert_eq!(idle(&s), (0, 0, 0));
    }

    #[test]
    fn a_busy_queue_calls_back_those_standing_by_one_at_a_time() {
        let s = Arc::new(Standby::new(3));
        let stand = || {
            let s = s.clone();
            std::thread::spawn(move || {
                s.enter(1);
                s.leave();
            })
        };
        let (a, b) = (stand(), {
            until(&s, |c| c.standing == 1);
            stand()
        });
        until(&s, |c| c.standing == 2);
        // Reading alone, this thread finds the queue busy: one more reads.
        s.wanted();
        until(&s, |c| c.standing == 1 && c.called == 0);
        // Two read now: nobody more.
        s.wanted();
        assert_eq!(s.counts().standing, 1);
        for t in [a, b] {
            t.join().unwrap();
        }
    }

    #[test]
    fn several_callers_at_once_keep_a_thread_each_out_of_standing_by() {
        let s = Arc::new(Standby::new(3));
        let t0 = Instant::now();
        let at = move |us: u64| t0 + Duration::from_micros(us);
        let request = |caller: u32, us: u64| {
            let s = s.clone();
            std::thread::spawn(move || {
                s.enter_at(caller, at(us));
                s.leave_at(at(us));
            })
        };
        // One caller: two threads done with its requests stand by, one reads.
        let a = request(10, 0);
        until(&s, |c| c.standing == 1);
        let b = request(10, 10);
        until(&s, |c| c.standing == 2);
        // The kernel's own requests (caller 0) count for nobody: no thread is called.
        s.enter_at(0, at(20));
        assert_eq!(idle(&s), (1, 2, 0));
        // A second caller within the while: a thread standing by is called back to read,
        // and the thread done with the request does not stand by (two callers, two
        // threads out).
        s.leave_at(at(20));
        s.enter_at(20, at(100));
        until(&s, |c| c.standing == 1 && c.called == 0);
        s.leave_at(at(100));
        assert_eq!(idle(&s), (0, 1, 0));
        // A third caller: the last thread standing by is called back too.
        s.enter_at(30, at(200));
        until(&s, |c| c.standing == 0 && c.called == 0);
        s.leave_at(at(200));
        // Past the while, one caller is left: a thread done stands by again.
        let c = request(30, 5_000);
        until(&s, |c| c.standing == 1);
        for t in [a, b, c] {
            t.join().unwrap();
        }
        assert_eq!(idle(&s), (0, 0, 0));
    }

    #[test]
    fn a_single_thread_never_stands_by() {
        let s = Standby::new(1);
        s.enter(1);
        s.waits();
        s.wanted();
        s.leave();
        assert_eq!(idle(&s), (0, 0, 0));
    }
}
