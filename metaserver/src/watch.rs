//! The feed mounts follow to keep their kernel caches honest: what each change of a volume
//! made stale, read from the change log (every local change is there, in order).

use meridian_proto::ns::{Record, Touched};
use redb::{ReadTransaction, ReadableTable};

use crate::error::MetaError;
use crate::namespace::tables::CHANGELOG;

/// The most change-log records one answer reads (whatever volume they belong to).
const SCAN_LIMIT: usize = 4096;

/// One answer of the feed.
#[derive(Debug, Default)]
pub struct WatchAnswer {
    /// What changed in the volume.
    pub touched: Touched,
    /// The sequence to ask from next.
    pub next: u64,
    /// Records between the asked sequence and the oldest kept are gone.
    pub gap: bool,
}

/// The changes of `volume` from change-log sequence `from` (0: none, only where "now" is),
/// but those client `own` asked for (0: none is left out).
pub fn changes(
    tx: &ReadTransaction,
    volume: u32,
    from: u64,
    own: u64,
) -> Result<WatchAnswer, MetaError> {
    let store = |e: redb::Error| MetaError::Store(e.to_string());
    let table = match tx.open_table(CHANGELOG) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Ok(WatchAnswer {
                next: from.max(1),
                ..WatchAnswer::default()
            });
        }
        Err(e) => return Err(store(e.into())),
    };
    let head = table
        .last()
        .map_err(|e| store(e.into()))?
        .map_or(0, |(k, _)| k.value());
    if from == 0 {
        return Ok(WatchAnswer {
            next: head + 1,
            ..WatchAnswer::default()
        });
    }
    let first = table
        .first()
        .map_err(|e| store(e.into()))?
        .map_or(head + 1, |(k, _)| k.value());
    let mut answer = WatchAnswer {
        next: from,
        gap: from < first && from <= head,
        ..WatchAnswer::default()
    };
    for item in table
        .range(from.max(first)..)
        .map_err(|e| store(e.into()))?
        .take(SCAN_LIMIT)
    {
        let (k, v) = item.map_err(|e| store(e.into()))?;
        answer.next = k.value() + 1;
        let record: Record = serde_json::from_slice(v.value())
            .map_err(|e| MetaError::Store(format!("damaged change record {}: {e}", k.value())))?;
        if record.volume != volume || (own != 0 && record.client == Some(own)) {
            continue;
        }
        let touches = record.touches();
        if !touches.is_empty() {
            answer.touched.changes.push((record.client, touches));
        }
    }
    answer.next = answer.next.max(from.max(first));
    Ok(answer)
}
