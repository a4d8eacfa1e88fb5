//! Stopping a serving process from answering, so another can take the mount over
//! (docs/adr/0008).

/// Stops a serving process from answering, for a handover (docs/adr/0008): once
/// started, every request that arrives is left unanswered (the kernel sends it again to
/// the process taking over), while those already under way finish and answer.
#[derive(Default)]
pub struct Drain {
    draining: std::sync::atomic::AtomicBool,
    pub(super) in_flight: std::sync::atomic::AtomicUsize,
}

impl Drain {
    /// Stops taking requests.
    pub fn start(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Requests under way.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(super) fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Leaves the request unanswered while draining (see [`Drain`]).
macro_rules! unless_draining {
    ($self:ident, $reply:ident) => {
        if $self.drain.draining() {
            std::mem::forget($reply);
            return;
        }
    };
}
