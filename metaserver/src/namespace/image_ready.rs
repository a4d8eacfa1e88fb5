//! When a volume's image for a region joining it can be built (`backfill`): its point,
//! once the region has settled past the change that added the other, and the records
//! from that point on it would carry, bounded. Read from a snapshot of the state before
//! anything is copied for the image (`backfill/serve.rs`).

use meridian_proto::ns::Record;
use meridian_proto::{Hlc, RegionId};

use super::backfill::json_err;
use super::merge;
use super::tables::store_err;
use super::types::NsError;

/// Most bytes of records (as JSON) an image carries: the records of its volume from its
/// point on that the receiving region is not sent go in its last piece, one Raft entry of
/// about four times their JSON, and a member takes at most 64 MiB in one message.
pub const RECORDS_MAX: usize = 8 << 20;

/// The point an image of `volume` for region `to` is of, from the region's state: `None`
/// while the region has not settled past `since` (the change that added `to`).
pub(super) fn image_point(
    state: &impl merge::StateTable,
    volume: u32,
    to: RegionId,
    since: Hlc,
) -> Result<Option<Hlc>, NsError> {
    // The receiver holds nothing of the volume, so wrote nothing of it: it holds nothing
    // back (its own marks wait for the image, and would wait for ever).
    let Some(mut point) = merge::settled_bound_without(state, Some(to))? else {
        return Ok(None);
    };
    if point <= since {
        return Ok(None);
    }
    // Records of the volume that left the merged log on its own bound stay applied: the
    // image is of a point after the last of them (every record of the volume older than
    // that bound is here, so this point is as settled as the other).
    if let Some(p) = super::settle::pruned(state, volume)? {
        // The stamp right after it.
        let next = match p.region.0.checked_add(1) {
            Some(r) => Hlc {
                region: RegionId(r),
                ..p
            },
            None => Hlc {
                wall_ms: p.wall_ms,
                counter: p.counter.saturating_add(1),
                region: RegionId(0),
            },
        };
        point = point.max(next);
    }
    Ok(Some(point))
}

/// Whether an image of `volume` for region `to` can be built now ([`readiness`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// The region has not settled past the change that added `to`.
    Unsettled,
    /// The records the image would carry (those of the volume from its point on that `to`
    /// is not sent: written before `to` was added, after the point) pass `max` bytes: at
    /// least `records` of them, `bytes` bytes. They are fewer as the regions settle and
    /// the point passes them; a region cut off long holds the point back.
    TooManyRecords {
        /// The records counted before the count stopped.
        records: usize,
        /// Their bytes as JSON.
        bytes: usize,
    },
    /// It can: of this point.
    Ready(Hlc),
}

/// Whether an image of `volume` for region `to` can be built from `tx` now, read before
/// anything is copied for it: its point, and the bytes of records its last piece would
/// carry, at most `max` (the count stops past it).
pub fn readiness(
    tx: &redb::ReadTransaction,
    volume: u32,
    to: RegionId,
    since: Hlc,
    max: usize,
) -> Result<Readiness, NsError> {
    let Some(state) = merge::state_table(tx)? else {
        return Ok(Readiness::Unsettled);
    };
    let Some(point) = image_point(&state, volume, to, since)? else {
        return Ok(Readiness::Unsettled);
    };
    let oplog = match tx.open_table(super::tables::OPLOG) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Readiness::Ready(point)),
        Err(e) => return Err(store_err(e)),
    };
    // As a JSON array: the brackets, and a comma between two.
    let (mut records, mut bytes) = (0usize, 1usize);
    let from = point.to_key();
    for item in oplog.range(from.as_slice()..).map_err(store_err)? {
        let (_, v) = item.map_err(store_err)?;
        let record: Record = serde_json::from_slice(v.value()).map_err(json_err)?;
        if record.volume != volume || record.allowed_in(to) {
            continue;
        }
        records += 1;
        bytes += v.value().len() + 1;
        if bytes > max {
            return Ok(Readiness::TooManyRecords { records, bytes });
        }
    }
    Ok(Readiness::Ready(point))
}
