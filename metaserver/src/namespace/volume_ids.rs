//! Volumes found by id. The volumes table is keyed by name, and an inode names its volume
//! by id: every mutation looks its volume up by id (three or four times), and so does
//! every change's check for a home region. Scanning the table, each row decoded, made
//! every one of them cost as much as the volumes before it: with 400 volumes, creates
//! ran at a third of their rate, and a cluster serving a Kubernetes volume per claim has
//! hundreds.
//!
//! Which name an id was last found under is remembered in memory, process-wide, as a
//! hint only: the row under that name is read and used only if it still carries the id.
//! A volume's id never changes, no two rows share one (ids come from a counter, a
//! replayed one that exists is refused), and a name is freed only when its row goes, so
//! a hint is right or its row says it is wrong, and a wrong or missing hint falls back
//! to the scan, which finds the same row the scan always found. Nothing written to the
//! store depends on the hint, so the members' states cannot drift through it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use redb::ReadableTable;

use super::tables::{json_err, read_volume_row, store_err};
use super::types::{NsError, Volume};

/// Hints kept at most (more volumes than this: the hints start over).
const HINTS_MAX: usize = 1 << 16;

static NAMES: Mutex<Option<HashMap<u32, String>>> = Mutex::new(None);

fn names() -> MutexGuard<'static, Option<HashMap<u32, String>>> {
    NAMES.lock().unwrap_or_else(|p| p.into_inner())
}

/// The row of volume `id` in `t`: live ones only (`Some(false)`), deleted ones only
/// (`Some(true)`), or either (`None`).
pub(crate) fn volume_row_by_id(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    id: u32,
    deleted: Option<bool>,
) -> Result<Option<Volume>, NsError> {
    let wanted = |v: Volume| {
        deleted
            .is_none_or(|d| v.deleted.is_some() == d)
            .then_some(v)
    };
    let hint = names().as_ref().and_then(|m| m.get(&id).cloned());
    if let Some(name) = hint
        && let Some(vol) = read_volume_row(t, &name)?
        && vol.id == id
    {
        return Ok(wanted(vol));
    }
    for item in t.iter().map_err(store_err)? {
        let (name, v) = item.map_err(store_err)?;
        let vol: Volume = serde_json::from_slice(v.value()).map_err(json_err)?;
        if vol.id == id {
            let mut names = names();
            let map = names.get_or_insert_with(HashMap::new);
            if map.len() >= HINTS_MAX {
                map.clear();
            }
            map.insert(id, name.value().to_string());
            return Ok(wanted(vol));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableDatabase, TableDefinition};

    use super::*;

    const VOLS: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");

    fn put(db: &Database, name: &str, id: u32, deleted: bool) {
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(VOLS).unwrap();
            let v = Volume {
                id,
                name: name.into(),
                root: meridian_proto::InodeId(1),
                policy: Default::default(),
                used_bytes: 0,
                used_inodes: 1,
                deleted: deleted.then(Default::default),
                read_only: false,
                origin: None,
                copying: None,
            };
            t.insert(name, serde_json::to_vec(&v).unwrap().as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }

    fn find(db: &Database, id: u32, deleted: Option<bool>) -> Option<String> {
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(VOLS).unwrap();
        volume_row_by_id(&t, id, deleted).unwrap().map(|v| v.name)
    }

    #[test]
    fn a_hint_is_used_only_while_its_row_still_carries_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("v.redb")).unwrap();
        // Ids no other test in this process uses (the hints are process-wide).
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            put(&db, name, 0xfff0_0000 + i as u32, false);
        }
        assert_eq!(find(&db, 0xfff0_0003, None).as_deref(), Some("d"));
        assert_eq!(find(&db, 0xfff0_0003, Some(false)).as_deref(), Some("d"));
        assert_eq!(find(&db, 0xfff0_0003, Some(true)), None);
        // The row under the hinted name now holds another volume (as in another store of
        // this process): the hint is not trusted, the scan finds the id where it is.
        put(&db, "d", 0xfff0_0009, false);
        put(&db, "e", 0xfff0_0003, true);
        assert_eq!(find(&db, 0xfff0_0003, None).as_deref(), Some("e"));
        assert_eq!(find(&db, 0xfff0_0003, Some(false)), None);
        assert_eq!(find(&db, 0xfff0_0003, Some(true)).as_deref(), Some("e"));
        assert_eq!(find(&db, 0xfff0_0009, None).as_deref(), Some("d"));
        // Gone altogether: none, hint or not.
        let tx = db.begin_write().unwrap();
        tx.open_table(VOLS).unwrap().remove("e").unwrap();
        tx.commit().unwrap();
        assert_eq!(find(&db, 0xfff0_0003, None), None);
        assert_eq!(find(&db, 0xfff0_0777, None), None);
    }
}
