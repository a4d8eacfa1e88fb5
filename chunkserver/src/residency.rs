//! Data residency, decided from this region's own replicated knowledge of each volume's
//! policy, never from what a request says: a put or a remote fetch names its volume, and
//! this node asks its region's metaservers (through a short-lived cache) which regions
//! that volume may live in. A volume this region does not know does not live here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_client::MetaClient;
use meridian_proto::ns::{Query, QueryReply};
use tracing::warn;

use crate::error::ChunkError;
use crate::tasks::lock;

/// How long the volumes' policies are trusted before they are asked again.
const FRESH_FOR: Duration = Duration::from_secs(10);
/// Least time between two refreshes caused by a volume not known yet (a request for one
/// waits for the next).
const MISS_PAUSE: Duration = Duration::from_millis(500);

/// The regions each volume may live in, as this region's metadata says.
#[derive(Debug)]
pub struct Residency {
    own: u16,
    meta: Option<Arc<MetaClient>>,
    known: Mutex<Known>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Known {
    regions: HashMap<u32, Vec<u32>>,
    /// Volume names by id: tokens grant volumes by name.
    names: HashMap<u32, String>,
    at: Option<Instant>,
}

/// The regions a volume lives in: its policy's, or (none named) the region that made it,
/// whose id is the top half of the volume's.
pub fn volume_regions(volume: u32, named: &[meridian_proto::RegionId]) -> Vec<u32> {
    if named.is_empty() {
        vec![volume >> 16]
    } else {
        named.iter().map(|r| u32::from(r.0)).collect()
    }
}

impl Residency {
    /// Residency for a node of region `own`, asking `meta` (without metaservers nothing is
    /// known, and only blocks that stay in this region are taken).
    pub fn new(own: u16, meta: Option<Arc<MetaClient>>) -> Self {
        Residency {
            own,
            meta,
            known: Mutex::new(Known::default()),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self, volume: u32, max_age: Duration) -> Option<Vec<u32>> {
        let k = lock(&self.known);
        let fresh = k.at.is_some_and(|at| at.elapsed() < max_age);
        fresh.then(|| k.regions.get(&volume).cloned()).flatten()
    }

    async fn refresh(&self) -> Result<(), ChunkError> {
        let Some(meta) = &self.meta else {
            return Ok(());
        };
        let asked = Instant::now();
        let _one = self.refreshing.lock().await;
        let last = lock(&self.known).at;
        if last.is_some_and(|at| at >= asked) {
            return Ok(()); // refreshed by another request meanwhile
        }
        // At most one refresh per pause: a volume made a moment after the last refresh
        // waits for the next one rather than being taken for unknown.
        if let Some(wait) = last.and_then(|at| MISS_PAUSE.checked_sub(at.elapsed())) {
            tokio::time::sleep(wait).await;
        }
        // When the answer was asked for: a request that came later may need a newer one.
        let started = Instant::now();
        let volumes = match meta.query(&Query::Volumes, false).await {
            Ok(QueryReply::Volumes(v)) => v,
            Ok(other) => {
                return Err(ChunkError::Invalid(format!(
                    "unexpected answer to a volume query: {other:?}"
                )));
            }
            Err(e) => {
                warn!(error = %e, "cannot learn the volumes' regions");
                return Err(ChunkError::Unavailable(format!(
                    "this region's metaservers did not say where volumes live: {e}"
                )));
            }
        };
        let regions = volumes
            .iter()
            .filter(|v| v.deleted.is_none())
            .map(|v| (v.id, volume_regions(v.id, &v.policy.regions)))
            .collect();
        let names = volumes
            .iter()
            .filter(|v| v.deleted.is_none())
            .map(|v| (v.id, v.name.clone()))
            .collect();
        *lock(&self.known) = Known {
            regions,
            names,
            at: Some(started),
        };
        Ok(())
    }

    /// The regions `volume` lives in, as this region's metadata says (`None`: unknown here).
    /// While the metaservers do not answer, what they said last stands.
    pub async fn regions_of(&self, volume: u32) -> Result<Option<Vec<u32>>, ChunkError> {
        if let Some(r) = self.cached(volume, FRESH_FOR) {
            return Ok(Some(r));
        }
        match self.refresh().await {
            Ok(()) => Ok(self.cached(volume, Duration::MAX)),
            Err(e) => match self.cached(volume, Duration::MAX) {
                Some(r) => Ok(Some(r)),
                None => Err(e),
            },
        }
    }

    /// The name of volume `volume`, as this region's metadata says (`None`: unknown here).
    pub async fn name_of(&self, volume: u32) -> Result<Option<String>, ChunkError> {
        let known = |max_age: Duration| {
            let k = lock(&self.known);
            let fresh = k.at.is_some_and(|at| at.elapsed() < max_age);
            fresh.then(|| k.names.get(&volume).cloned()).flatten()
        };
        if let Some(n) = known(FRESH_FOR) {
            return Ok(Some(n));
        }
        match self.refresh().await {
            Ok(()) => Ok(known(Duration::MAX)),
            Err(e) => known(Duration::MAX).map(Some).ok_or(e),
        }
    }

    /// The regions `volume` lives in, if this region is one of them; a residency error
    /// naming `what` otherwise.
    pub async fn check(&self, volume: u32, what: &str) -> Result<Vec<u32>, ChunkError> {
        match self.regions_of(volume).await? {
            Some(r) if r.contains(&u32::from(self.own)) => Ok(r),
            Some(r) => {
                metrics::counter!("meridian_chunk_residency_refusals_total").increment(1);
                Err(ChunkError::Residency(format!(
                    "{what}: volume {volume} lives in regions {r:?}, not in region {}",
                    self.own
                )))
            }
            None => {
                metrics::counter!("meridian_chunk_residency_refusals_total").increment(1);
                Err(ChunkError::Residency(format!(
                    "{what}: volume {volume} is not known in region {}",
                    self.own
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_proto::RegionId;

    #[test]
    fn a_volume_naming_no_regions_lives_where_it_was_made() {
        assert_eq!(volume_regions(3 << 16 | 7, &[]), vec![3]);
        assert_eq!(
            volume_regions(3 << 16 | 7, &[RegionId(1), RegionId(2)]),
            vec![1, 2]
        );
    }
}
