//! Blocks staged in the metadata by small commits (docs/adr/0018): kept when the commit
//! applies, read back by a reader of the file, never in a record, dropped by the writer's
//! unstaging, and a commit whose staged blocks are not what it claims changes nothing.

use meridian_proto::ns::{Query, QueryReply, StagedBlock, StagedRow};
use meridian_proto::{BlockId, InodeId};
use redb::{ReadableDatabase, ReadableTable};

use super::test_regions::*;

/// A commit of `data` at 0 of `ino`, carrying `staged`.
fn staged_commit(ino: InodeId, data: &[u8], staged: Vec<StagedBlock>) -> Op {
    Op::CommitExtents {
        ino,
        extents: vec![Extent {
            offset: 0,
            len: data.len() as u64,
            block: BlockId::of(data),
            block_offset: 0,
            block_len: data.len() as u32,
        }],
        size: data.len() as u64,
        base_version: None,
        creds: root_creds(),
        staged,
    }
}

fn staged_of(data: &[u8]) -> StagedBlock {
    StagedBlock {
        id: BlockId::of(data),
        data: data.to_vec(),
    }
}

fn read_staged(r: &Region, ino: InodeId, offset: u64, block: BlockId) -> Result<Vec<u8>, NsError> {
    match r.read(|x| x.query(&Query::Staged { ino, offset, block }))? {
        QueryReply::Bytes(b) => Ok(b),
        other => panic!("unexpected reply {other:?}"),
    }
}

/// How many blocks and plaintext bytes the region holds staged.
fn held(r: &Region) -> (u64, u64) {
    let tx = r.db.begin_read().unwrap();
    let Ok(t) = tx.open_table(STAGED) else {
        return (0, 0);
    };
    let mut out = (0, 0);
    for item in t.iter().unwrap() {
        let (_, v) = item.unwrap();
        out.0 += 1;
        out.1 += v.value().len().saturating_sub(8) as u64;
    }
    out
}

#[test]
fn a_staged_block_is_kept_read_back_never_recorded_and_dropped_by_its_writer() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let (f, g) = (file(r, "f"), file(r, "g"));
    let data = b"an fsync'd small write".repeat(10);
    let id = BlockId::of(&data);
    r.run(staged_commit(f, &data, vec![staged_of(&data)]))
        .unwrap();
    assert_eq!(file_extents(r, f).0, data.len() as u64);
    assert_eq!(read_staged(r, f, 0, id).unwrap(), data);
    assert_eq!(held(r), (1, data.len() as u64));
    // Only through the extent that names it.
    assert!(matches!(
        read_staged(r, f, 1, id),
        Err(NsError::NotFound(_))
    ));
    assert!(matches!(
        read_staged(r, g, 0, id),
        Err(NsError::NotFound(_))
    ));
    // fsck learns the block needs no chunkserver yet.
    let page = match r
        .read(|x| {
            x.query(&Query::Check {
                from: 0,
                limit: 1000,
            })
        })
        .unwrap()
    {
        QueryReply::Check(p) => p,
        other => panic!("unexpected reply {other:?}"),
    };
    assert!(page.blocks.iter().any(|b| b.block == id && b.staged));
    // The record other regions get has the extents, not the bytes.
    let records = r.changes(0, 100);
    let last = &records.last().unwrap().1;
    assert!(matches!(&last.op, Op::CommitExtents { staged, extents, .. }
        if staged.is_empty() && extents.len() == 1));
    let json = serde_json::to_string(&records).unwrap();
    assert!(!json.contains("staged"), "{json}");

    // Another file's unstaging leaves it; its writer's drops it, once.
    let unstage = |ino| Op::Unstage {
        ino,
        blocks: vec![id],
    };
    r.run(unstage(g)).unwrap();
    assert_eq!(read_staged(r, f, 0, id).unwrap(), data);
    let before = r.changes(0, 1000).len();
    r.run(unstage(f)).unwrap();
    assert!(matches!(
        read_staged(r, f, 0, id),
        Err(NsError::NotFound(_))
    ));
    assert_eq!(held(r), (0, 0));
    r.run(unstage(f)).unwrap();
    assert_eq!(r.changes(0, 1000).len(), before, "no unstaging is recorded");
    assert_eq!(file_extents(r, f).1.len(), 1, "the file keeps its extent");
    assert_consistent(r);
}

#[test]
fn a_staged_commit_that_is_not_what_it_claims_changes_nothing() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "f");
    let data = b"the bytes written".to_vec();
    let id = BlockId::of(&data);
    let forged = StagedBlock {
        id,
        data: b"other bytes instead".to_vec(),
    };
    let elsewhere = staged_of(b"not in the commit");
    let too_many: Vec<StagedBlock> = (0..=meridian_proto::ns::STAGED_BLOCKS_MAX)
        .map(|i| staged_of(&[i as u8; 8]))
        .collect();
    for (staged, why) in [
        (vec![forged], "hashes to"),
        (vec![elsewhere], "not among"),
        (vec![staged_of(&data), staged_of(&data)], "twice"),
        (too_many, "at most"),
    ] {
        match r.run(staged_commit(f, &data, staged)) {
            Err(NsError::Invalid(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("{why}: {other:?}"),
        }
        assert_eq!(file_extents(r, f), (0, Vec::new()), "{why}");
        assert!(read_staged(r, f, 0, id).is_err(), "{why}");
        assert_eq!(held(r), (0, 0), "{why}");
    }
    // An unstaging of too many blocks at once is refused too.
    let many = vec![id; meridian_proto::ns::UNSTAGE_MAX + 1];
    assert!(matches!(
        r.run(Op::Unstage {
            ino: f,
            blocks: many
        }),
        Err(NsError::Invalid(_))
    ));
    assert_consistent(r);
}

fn staged_page(r: &Region, after: Option<BlockId>, limit: u32) -> Vec<StagedRow> {
    match r.read(|x| x.query(&Query::StagedBlocks { after, limit })) {
        Ok(QueryReply::StagedBlocks(rows)) => rows,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn staged_blocks_are_listed_in_pages_with_where_they_go() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let (f, g) = (file(r, "f"), file(r, "g"));
    let (a, b) = (b"f's small write".to_vec(), b"g's small write".to_vec());
    r.run(staged_commit(f, &a, vec![staged_of(&a)])).unwrap();
    r.run(staged_commit(g, &b, vec![staged_of(&b)])).unwrap();
    let root = r.volume_root();
    r.run(unlink(root, "g")).unwrap();

    // By id, one at a time when asked so, and none after the last.
    let all = staged_page(r, None, 100);
    let mut ids = vec![BlockId::of(&a), BlockId::of(&b)];
    ids.sort();
    assert_eq!(all.iter().map(|x| x.block.id).collect::<Vec<_>>(), ids);
    let first = staged_page(r, None, 1);
    assert_eq!(first, all[..1]);
    assert_eq!(staged_page(r, Some(first[0].block.id), 1), all[1..]);
    assert!(staged_page(r, Some(ids[1]), 100).is_empty());
    assert_eq!(
        staged_page(r, None, 0).len(),
        1,
        "a page holds one block at least"
    );

    // The live file's block goes by its volume's policy; the removed file's by none.
    let row = |ino| all.iter().find(|x| x.ino == ino).unwrap();
    let placed = row(f).placement.as_ref().expect("f's volume");
    assert_eq!(row(f).block, staged_of(&a));
    assert!(placed.replicas >= 1 && placed.min_copies <= placed.replicas);
    assert_eq!(row(g).placement, None);
    assert_eq!(row(g).block, staged_of(&b));
    assert_consistent(r);
}
