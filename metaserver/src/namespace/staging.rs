//! Blocks held by the metadata until chunkservers hold them (docs/adr/0018): a small
//! commit's plaintext is kept here when the commit applies, and dropped when its writer
//! unstages it (its put done). A reader whose chunkservers lack such a block reads it here.
//! The rows are no namespace state: records never carry them (another region fetches the
//! block from this region's chunkservers), and undo leaves them alone.

use std::collections::HashMap;
use std::ops::Bound;

use meridian_proto::ns::{
    Op, Reply, STAGED_PAGE_BYTES, StagedBlock, StagedPlacement, StagedRow, UNSTAGE_MAX,
    check_staged,
};
use meridian_proto::{BlockId, InodeId};
use redb::{ReadTransaction, ReadableTable};

use super::read::{NsReader, missing_table};
use super::tables::{STAGED, counter, store_err, u64_of};
use super::types::NsError;
use super::write_tables::WriteTables;

/// The most plaintext bytes a region holds staged: past it a staged commit is refused
/// ([`NsError::TooBig`]) and its writer puts its blocks first, as any other commit.
pub const STAGED_REGION_MAX: u64 = 256 << 20;

fn row(ino: InodeId, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + data.len());
    v.extend_from_slice(&ino.0.to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn held(t: &WriteTables<'_>) -> Result<u64, NsError> {
    Ok(t.counters
        .open()?
        .get(counter::STAGED_BYTES)
        .map_err(store_err)?
        .map_or(0, |v| v.value()))
}

fn set_held(t: &mut WriteTables<'_>, bytes: u64) -> Result<(), NsError> {
    t.counters
        .open_mut()?
        .insert(counter::STAGED_BYTES, bytes)
        .map_err(store_err)?;
    Ok(())
}

/// Refuses a commit whose staged blocks are not what it writes (see
/// [`check_staged`](meridian_proto::ns::check_staged)), or would take the region past
/// [`STAGED_REGION_MAX`].
pub(super) fn check(t: &WriteTables<'_>, op: &Op) -> Result<(), NsError> {
    let Op::CommitExtents {
        extents, staged, ..
    } = op
    else {
        return Ok(());
    };
    if staged.is_empty() {
        return Ok(());
    }
    check_staged(staged, extents).map_err(NsError::Invalid)?;
    let adding: u64 = staged.iter().map(|b| b.data.len() as u64).sum();
    if held(t)?.saturating_add(adding) > STAGED_REGION_MAX {
        return Err(NsError::TooBig(format!(
            "the region holds {STAGED_REGION_MAX} bytes of small writes waiting for \
             chunkservers: put the blocks first"
        )));
    }
    Ok(())
}

/// Keeps what `op`, a commit that applied, carried staged.
pub(super) fn keep_for(t: &mut WriteTables<'_>, op: &Op) -> Result<(), NsError> {
    let Op::CommitExtents { ino, staged, .. } = op else {
        return Ok(());
    };
    if staged.is_empty() {
        return Ok(());
    }
    let ino = *ino;
    let mut bytes = held(t)?;
    for b in staged {
        let value = row(ino, &b.data);
        let old = t
            .staged
            .open_mut()?
            .insert(b.id.as_bytes().as_slice(), value.as_slice())
            .map_err(store_err)?
            .map(|v| v.value().len().saturating_sub(8) as u64);
        bytes = bytes.saturating_sub(old.unwrap_or(0)) + b.data.len() as u64;
    }
    set_held(t, bytes)
}

/// Drops the staged copies of `blocks` that a commit of `ino` made (others' stay).
pub(super) fn unstage(
    t: &mut WriteTables<'_>,
    ino: InodeId,
    blocks: &[BlockId],
) -> Result<Reply, NsError> {
    if blocks.len() > UNSTAGE_MAX {
        return Err(NsError::Invalid(format!(
            "{} blocks unstaged at once, at most {UNSTAGE_MAX}",
            blocks.len()
        )));
    }
    let mut bytes = held(t)?;
    let before = bytes;
    for b in blocks {
        let key = b.as_bytes().as_slice();
        let owner = match t.staged.open()?.get(key).map_err(store_err)? {
            Some(v) => {
                let v = v.value();
                (u64_of(&v[..8.min(v.len())])?, v.len() as u64 - 8)
            }
            None => continue,
        };
        if owner.0 != ino.0 {
            continue;
        }
        t.staged.open_mut()?.remove(key).map_err(store_err)?;
        bytes = bytes.saturating_sub(owner.1);
    }
    if bytes != before {
        set_held(t, bytes)?;
    }
    Ok(Reply::Done)
}

/// The staged plaintext of `block`, if the metadata holds it.
pub fn read(tx: &ReadTransaction, block: &BlockId) -> Result<Option<Vec<u8>>, NsError> {
    let t = match tx.open_table(STAGED) {
        Ok(t) => t,
        Err(e) => {
            missing_table(e)?;
            return Ok(None);
        }
    };
    Ok(t.get(block.as_bytes().as_slice())
        .map_err(store_err)?
        .map(|v| v.value().get(8..).unwrap_or_default().to_vec()))
}

/// The page of staged blocks after `after` (at most `limit`, and [`STAGED_PAGE_BYTES`] of
/// plaintext unless one block alone passes it), with where each goes: a chunkserver adopts
/// the ones whose writer has not put them.
pub fn page(
    r: &NsReader<'_>,
    after: Option<&BlockId>,
    limit: u32,
) -> Result<Vec<StagedRow>, NsError> {
    let t = match r.tx.open_table(STAGED) {
        Ok(t) => t,
        Err(e) => {
            missing_table(e)?;
            return Ok(Vec::new());
        }
    };
    let start = match after {
        Some(b) => Bound::Excluded(b.as_bytes().as_slice()),
        None => Bound::Unbounded,
    };
    // Every volume's policy (a handful of rows), and so where each block goes.
    let placements: HashMap<u32, StagedPlacement> = r
        .volumes_all()?
        .into_iter()
        .map(|v| {
            let placement = StagedPlacement {
                volume: v.id,
                replicas: v.policy.replicas,
                min_copies: v.policy.min_copies,
                regions: v.policy.regions,
            };
            (v.id, placement)
        })
        .collect();
    let (mut out, mut bytes) = (Vec::new(), 0);
    for row in t
        .range::<&[u8]>((start, Bound::Unbounded))
        .map_err(store_err)?
    {
        if out.len() >= limit as usize || bytes >= STAGED_PAGE_BYTES {
            break;
        }
        let (k, v) = row.map_err(store_err)?;
        let (id, v) = (k.value(), v.value());
        let id = BlockId::from_slice(id).map_err(|e| NsError::Store(format!("staged row: {e}")))?;
        let ino = InodeId(u64_of(&v[..8.min(v.len())])?);
        let data = v.get(8..).unwrap_or_default().to_vec();
        let placement = match r.inode(ino) {
            Ok(inode) => placements.get(&inode.attr.volume).cloned(),
            Err(NsError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        bytes += data.len();
        out.push(StagedRow {
            ino,
            placement,
            block: StagedBlock { id, data },
        });
    }
    Ok(out)
}
