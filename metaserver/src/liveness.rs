//! The failure detector for chunkservers inside a region: phi accrual. The leader keeps the
//! recent intervals between each node's heartbeats and, from their mean and spread, how
//! unlikely the current silence is (phi = -log10 of the probability that a heartbeat is
//! still to come). A node that heartbeats regularly is suspect as soon as its silence
//! stands out from its own rhythm (and has lasted two intervals and a second: a busy host
//! must not make nodes flap), not after a fixed time; down needs both a high phi and a
//! silence of several intervals and 5 s (down starts repair, which moves data). The configured
//! suspect and down times stay as upper bounds, and apply alone until a node has sent a
//! few heartbeats.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use meridian_proto::{NodeId, NodeState};

/// Intervals kept per node.
const WINDOW: usize = 100;
/// Intervals needed before phi is trusted.
const MIN_SAMPLES: usize = 3;
/// Phi from which a node is suspect (about one false suspicion in 10^8 heartbeats, were
/// the intervals normal).
pub const SUSPECT_PHI: f64 = 8.0;
/// Phi from which a node may be down.
pub const DOWN_PHI: f64 = 12.0;
/// A node is suspect only after this many of its mean intervals of silence...
const SUSPECT_INTERVALS: u32 = 2;
/// ...and never before this much silence: every change of state is a Raft entry and a new
/// cluster map, and a busy host must not make its nodes flap.
const SUSPECT_FLOOR: Duration = Duration::from_secs(1);
/// A node is down only after this many of its mean intervals of silence...
const DOWN_INTERVALS: u32 = 4;
/// ...and never before this much silence: a loaded host can miss a few heartbeats, and a
/// node marked down starts repair (data moves).
const DOWN_FLOOR: Duration = Duration::from_secs(5);
/// The spread assumed is at least this share of the mean (jitter the window has not seen).
const MIN_SPREAD: f64 = 0.25;

/// One node's heartbeats.
#[derive(Debug, Clone)]
pub struct Arrivals {
    last: Instant,
    intervals: VecDeque<f64>,
}

impl Arrivals {
    /// A node first heard of at `now`.
    pub fn new(now: Instant) -> Self {
        Arrivals {
            last: now,
            intervals: VecDeque::with_capacity(WINDOW),
        }
    }

    /// A heartbeat at `now`.
    pub fn heartbeat(&mut self, now: Instant) {
        let interval = now.saturating_duration_since(self.last).as_secs_f64() * 1000.0;
        if self.intervals.len() == WINDOW {
            self.intervals.pop_front();
        }
        self.intervals.push_back(interval);
        self.last = now;
    }

    /// Silence at `now`.
    pub fn silent(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last)
    }

    fn mean_ms(&self) -> Option<f64> {
        (self.intervals.len() >= MIN_SAMPLES)
            .then(|| self.intervals.iter().sum::<f64>() / self.intervals.len() as f64)
    }

    /// How unlikely the silence at `now` is (`None` until enough heartbeats were seen).
    pub fn phi(&self, now: Instant) -> Option<f64> {
        let mean = self.mean_ms()?;
        let n = self.intervals.len() as f64;
        let var = self
            .intervals
            .iter()
            .map(|x| (x - mean).powi(2))
            .sum::<f64>()
            / n;
        let spread = var.sqrt().max(mean * MIN_SPREAD).max(1.0);
        let t = self.silent(now).as_secs_f64() * 1000.0;
        // The normal distribution's tail, by its logistic approximation.
        let y = (t - mean) / spread;
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        let p_later = if t > mean {
            e / (1.0 + e)
        } else {
            1.0 - 1.0 / (1.0 + e)
        };
        Some(-p_later.max(f64::MIN_POSITIVE).log10())
    }

    /// The state the node should be in at `now`, given the configured upper bounds (`None`:
    /// up, as far as silence goes).
    pub fn verdict(
        &self,
        now: Instant,
        suspect_after: Duration,
        down_after: Duration,
    ) -> Option<NodeState> {
        let silent = self.silent(now);
        let phi = self.phi(now).unwrap_or(0.0);
        let intervals = |n: u32, otherwise: Duration, floor: Duration| {
            self.mean_ms()
                .map(|m| Duration::from_secs_f64(m * f64::from(n) / 1000.0))
                .unwrap_or(otherwise)
                .max(floor)
        };
        let down_floor = intervals(DOWN_INTERVALS, down_after, DOWN_FLOOR);
        let suspect_floor = intervals(SUSPECT_INTERVALS, suspect_after, SUSPECT_FLOOR);
        if silent >= down_after || (phi >= DOWN_PHI && silent >= down_floor) {
            Some(NodeState::Down)
        } else if silent >= suspect_after || (phi >= SUSPECT_PHI && silent >= suspect_floor) {
            Some(NodeState::Suspect)
        } else {
            None
        }
    }
}

/// Every node's heartbeats, as the leader heard them.
#[derive(Debug, Default)]
pub struct Liveness {
    nodes: HashMap<NodeId, Arrivals>,
}

impl Liveness {
    /// A heartbeat (or a registration) of `id` at `now`.
    pub fn heard(&mut self, id: NodeId, now: Instant) {
        self.nodes
            .entry(id)
            .and_modify(|a| a.heartbeat(now))
            .or_insert_with(|| Arrivals::new(now));
    }

    /// Forgets everything (a member that becomes leader gives every node a fresh start).
    pub fn clear(&mut self) {
        self.nodes.clear();
    }

    /// `id`'s heartbeats, starting them at `now` if it was never heard.
    pub fn of(&mut self, id: NodeId, now: Instant) -> &Arrivals {
        self.nodes.entry(id).or_insert_with(|| Arrivals::new(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beating(every_ms: u64, beats: u32) -> (Arrivals, Instant) {
        let start = Instant::now();
        let mut a = Arrivals::new(start);
        let mut t = start;
        for i in 0..beats {
            // A little jitter, as a real node has.
            t += Duration::from_millis(every_ms + u64::from(i % 3) * every_ms / 50);
            a.heartbeat(t);
        }
        (a, t)
    }

    #[test]
    fn phi_follows_each_nodes_own_rhythm() {
        let bounds = (Duration::from_secs(3), Duration::from_secs(10));
        // Every 100 ms: half a second of silence already stands out, and a second (the
        // floor against flapping) makes it suspect; five seconds is down (half the
        // configured bound).
        let (fast, at) = beating(100, 50);
        assert_eq!(
            fast.verdict(at + Duration::from_millis(80), bounds.0, bounds.1),
            None
        );
        assert!(fast.phi(at + Duration::from_millis(500)).unwrap() >= SUSPECT_PHI);
        assert_eq!(
            fast.verdict(at + Duration::from_millis(500), bounds.0, bounds.1),
            None
        );
        assert_eq!(
            fast.verdict(at + Duration::from_millis(1100), bounds.0, bounds.1),
            Some(NodeState::Suspect)
        );
        assert_eq!(
            fast.verdict(at + Duration::from_millis(2100), bounds.0, bounds.1),
            Some(NodeState::Suspect)
        );
        assert_eq!(
            fast.verdict(at + Duration::from_millis(5100), bounds.0, bounds.1),
            Some(NodeState::Down)
        );
        // Every second: the same half second is nothing.
        let (slow, at) = beating(1000, 50);
        assert_eq!(
            slow.verdict(at + Duration::from_millis(500), bounds.0, bounds.1),
            None
        );
        assert!(slow.phi(at + Duration::from_millis(500)).unwrap() < 1.0);
        assert_eq!(
            slow.verdict(at + Duration::from_millis(2500), bounds.0, bounds.1),
            Some(NodeState::Suspect)
        );
        // Phi grows with the silence.
        let phis: Vec<f64> = [1000, 1200, 1500, 2000]
            .iter()
            .map(|ms| slow.phi(at + Duration::from_millis(*ms)).unwrap())
            .collect();
        assert!(phis.windows(2).all(|w| w[0] < w[1]), "{phis:?}");
    }

    #[test]
    fn without_history_the_configured_bounds_decide() {
        let start = Instant::now();
        let a = Arrivals::new(start);
        let (s, d) = (Duration::from_secs(3), Duration::from_secs(10));
        assert_eq!(a.verdict(start + Duration::from_secs(2), s, d), None);
        assert_eq!(
            a.verdict(start + Duration::from_secs(4), s, d),
            Some(NodeState::Suspect)
        );
        assert_eq!(
            a.verdict(start + Duration::from_secs(11), s, d),
            Some(NodeState::Down)
        );
    }
}
