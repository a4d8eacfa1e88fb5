//! Hybrid logical clock stamps: wall time plus a counter plus the origin region, totally
//! ordered, so that operations from every region can be put in one order.
//!
//! The clock is pure: physical time is passed in, never read here, so state machines that
//! replay operations stay deterministic.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::RegionId;

/// One HLC stamp. Ordered by wall time, then counter, then region (the tie-breaker that
/// makes the order total across regions).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (the largest physical time seen).
    pub wall_ms: u64,
    /// Logical counter among stamps with the same wall time.
    pub counter: u32,
    /// The region that issued the stamp.
    pub region: RegionId,
}

impl Hlc {
    /// Bytes of a stamp as a key: sorting the bytes sorts the stamps.
    pub const KEY_LEN: usize = 14;

    /// The stamp as a sortable key.
    pub fn to_key(self) -> [u8; Self::KEY_LEN] {
        let mut k = [0u8; Self::KEY_LEN];
        k[..8].copy_from_slice(&self.wall_ms.to_be_bytes());
        k[8..12].copy_from_slice(&self.counter.to_be_bytes());
        k[12..].copy_from_slice(&self.region.0.to_be_bytes());
        k
    }

    /// The stamp a key was made from; `None` for a key of the wrong length.
    pub fn from_key(k: &[u8]) -> Option<Hlc> {
        if k.len() < Self::KEY_LEN {
            return None;
        }
        Some(Hlc {
            wall_ms: u64::from_be_bytes(k[..8].try_into().ok()?),
            counter: u32::from_be_bytes(k[8..12].try_into().ok()?),
            region: RegionId(u16::from_be_bytes(k[12..14].try_into().ok()?)),
        })
    }

    /// The smallest stamp of `region` after `self`.
    pub fn successor(self, region: RegionId) -> Hlc {
        if region > self.region {
            Hlc { region, ..self }
        } else {
            Hlc {
                wall_ms: self.wall_ms,
                counter: self.counter + 1,
                region,
            }
        }
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.wall_ms, self.counter, self.region.0)
    }
}

/// A shift of this process's physical clock, in ms (0 but in tests of clock skew).
static CLOCK_OFFSET_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Shifts this process's physical clock by `ms` (tests: a region whose clock is wrong).
pub fn set_clock_offset_ms(ms: i64) {
    CLOCK_OFFSET_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// Physical time in ns since the Unix epoch, as this process's clock reads it (shifted by
/// [`set_clock_offset_ms`]).
pub fn physical_ns() -> u64 {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i128;
    let offset = i128::from(CLOCK_OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed)) * 1_000_000;
    (ns + offset).clamp(0, i128::from(u64::MAX)) as u64
}

/// Physical time in ms since the Unix epoch, as [`physical_ns`].
pub fn physical_ms() -> u64 {
    physical_ns() / 1_000_000
}

/// The clock of one region: hands out strictly increasing stamps and absorbs stamps it
/// receives from other regions, so causality is preserved.
#[derive(Clone, Debug)]
pub struct HlcClock {
    region: RegionId,
    last: Hlc,
}

impl HlcClock {
    /// A clock for `region` that has seen nothing yet.
    pub fn new(region: RegionId) -> Self {
        HlcClock {
            region,
            last: Hlc {
                wall_ms: 0,
                counter: 0,
                region,
            },
        }
    }

    /// The last stamp this clock issued or absorbed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A new stamp, greater than every stamp issued or absorbed before, given the current
    /// physical time.
    pub fn now(&mut self, physical_ms: u64) -> Hlc {
        let stamp = if physical_ms > self.last.wall_ms {
            Hlc {
                wall_ms: physical_ms,
                counter: 0,
                region: self.region,
            }
        } else {
            self.bump(self.last.wall_ms, self.last.counter)
        };
        self.last = stamp;
        stamp
    }

    /// Absorbs a stamp received from elsewhere and returns a local stamp greater than both it
    /// and everything this clock issued before.
    pub fn observe(&mut self, remote: Hlc, physical_ms: u64) -> Hlc {
        let wall = physical_ms.max(self.last.wall_ms).max(remote.wall_ms);
        let stamp = if wall == self.last.wall_ms && wall == remote.wall_ms {
            self.bump(wall, self.last.counter.max(remote.counter))
        } else if wall == self.last.wall_ms {
            self.bump(wall, self.last.counter)
        } else if wall == remote.wall_ms {
            self.bump(wall, remote.counter)
        } else {
            Hlc {
                wall_ms: wall,
                counter: 0,
                region: self.region,
            }
        };
        self.last = stamp;
        stamp
    }

    fn bump(&self, wall_ms: u64, counter: u32) -> Hlc {
        match counter.checked_add(1) {
            Some(c) => Hlc {
                wall_ms,
                counter: c,
                region: self.region,
            },
            // Four billion stamps in one millisecond: borrow the next millisecond instead.
            None => Hlc {
                wall_ms: wall_ms + 1,
                counter: 0,
                region: self.region,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn region_breaks_ties() {
        let a = Hlc {
            wall_ms: 5,
            counter: 1,
            region: RegionId(1),
        };
        let b = Hlc {
            wall_ms: 5,
            counter: 1,
            region: RegionId(2),
        };
        assert!(a < b);
        assert!(
            Hlc {
                wall_ms: 5,
                counter: 2,
                region: RegionId(1)
            } > b
        );
    }

    #[test]
    fn clock_moves_forward_when_wall_time_stalls_or_goes_back() {
        let mut c = HlcClock::new(RegionId(3));
        let a = c.now(100);
        let b = c.now(100);
        let d = c.now(50);
        assert!(a < b && b < d);
        assert_eq!(d.wall_ms, 100);
        assert_eq!(d.region, RegionId(3));
    }

    proptest! {
        #[test]
        fn stamps_strictly_increase_and_dominate_observed(
            events in proptest::collection::vec((any::<bool>(), 0u64..1000, 0u64..1000, 0u32..5, 0u16..4), 1..200)
        ) {
            let mut c = HlcClock::new(RegionId(1));
            let mut prev = c.last();
            for (remote, phys, rwall, rcounter, rregion) in events {
                let stamp = if remote {
                    let r = Hlc { wall_ms: rwall, counter: rcounter, region: RegionId(rregion) };
                    let s = c.observe(r, phys);
                    prop_assert!(s > r);
                    s
                } else {
                    c.now(phys)
                };
                prop_assert!(stamp > prev);
                prop_assert!(stamp.wall_ms >= phys);
                prev = stamp;
            }
        }
    }
}
