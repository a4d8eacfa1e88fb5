//! File content changes beside writes: holes punched, ranges copied by sharing extents,
//! setuid/setgid dropped by writers without the privilege.

use meridian_proto::{BlockId, InodeId};

use super::test_regions::*;

/// A write of one 100-byte block holding `seed`, at `offset`.
fn write(r: &mut Region, ino: InodeId, offset: u64, seed: &[u8]) -> BlockId {
    let (op, block) = write_op(ino, offset, seed);
    r.run(op).unwrap();
    block
}

fn layout(r: &Region, ino: InodeId) -> (u64, Vec<(u64, u64, u32, BlockId)>) {
    let (size, ext) = file_extents(r, ino);
    let ext = ext
        .into_iter()
        .map(|e| (e.offset, e.len, e.block_offset, e.block))
        .collect();
    (size, ext)
}

#[test]
fn a_punched_hole_drops_the_bytes_and_keeps_the_size() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "f");
    let a = write(r, f, 0, b"a");
    let b = write(r, f, 100, b"b");
    let c = write(r, f, 200, b"c");
    let punch = |offset, len| Op::PunchHole {
        ino: f,
        offset,
        len,
        creds: root_creds(),
    };
    r.run(punch(50, 200)).unwrap();
    assert_eq!(
        layout(r, f),
        (300, vec![(0, 50, 0, a), (250, 50, 50, c)]),
        "the middle block is gone, its neighbours cut"
    );
    assert_eq!(refs(r, &b), 0, "a block no extent uses is released");
    // Past the end of the file: nothing changes, the size stays.
    r.run(punch(1000, 10)).unwrap();
    assert_eq!(layout(r, f).0, 300);
    assert!(r.run(punch(u64::MAX, 2)).is_err(), "a range that overflows");
    assert_consistent(r);
}

#[test]
fn a_copied_range_shares_blocks_holes_included_and_grows_the_destination() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let src = file(r, "src");
    let dst = file(r, "dst");
    let a = write(r, src, 0, b"a");
    let c = write(r, src, 200, b"c");
    let x = write(r, dst, 0, b"x");
    let copy = |src_offset, dst, dst_offset, len| Op::CopyRange {
        src,
        src_offset,
        dst,
        dst_offset,
        len,
        creds: root_creds(),
    };
    // Bytes 50..1000 of a 300-byte file: 250 copied, the hole at 100..200 included.
    match r.run(copy(50, dst, 40, 1000)).unwrap() {
        Reply::Copied(n, attr) => {
            assert_eq!(n, 250);
            assert_eq!(attr.size, 290);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        layout(r, dst),
        (290, vec![(0, 40, 0, x), (40, 50, 50, a), (190, 100, 0, c)])
    );
    assert_eq!((refs(r, &a), refs(r, &c), refs(r, &x)), (2, 2, 1));
    // Within one file, overlapping: reads the source before it writes.
    r.run(copy(0, src, 50, 100)).unwrap();
    assert_eq!(
        layout(r, src),
        (300, vec![(0, 50, 0, a), (50, 100, 0, a), (200, 100, 0, c)])
    );
    // From past the end: nothing.
    match r.run(copy(5000, dst, 0, 10)).unwrap() {
        Reply::Copied(n, _) => assert_eq!(n, 0),
        other => panic!("{other:?}"),
    }
    assert_consistent(r);
}

#[test]
fn writes_and_truncates_by_other_users_drop_setuid_and_setgid() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "f");
    let user = Creds {
        uid: 1000,
        gid: 1000,
        groups: Vec::new(),
    };
    let set = |perm| Op::SetAttr {
        ino: f,
        set: SetAttr {
            perm: Some(perm),
            ..SetAttr::default()
        },
        creds: root_creds(),
    };
    let perm = |r: &Region| r.read(|x| x.getattr(f)).unwrap().perm;
    // Root keeps the bits (CAP_FSETID).
    r.run(set(0o6777)).unwrap();
    write(r, f, 0, b"root");
    assert_eq!(perm(r), 0o6777);
    // Another user's truncate drops both (setgid is a real one: group-executable).
    r.run(Op::SetAttr {
        ino: f,
        set: SetAttr {
            size: Some(10),
            ..SetAttr::default()
        },
        creds: user.clone(),
    })
    .unwrap();
    assert_eq!(perm(r), 0o0777);
    // And so does its write.
    r.run(set(0o6777)).unwrap();
    let (mut op, _) = write_op(f, 0, b"user");
    if let Op::CommitExtents { creds, .. } = &mut op {
        *creds = user.clone();
    }
    r.run(op).unwrap();
    assert_eq!(perm(r), 0o0777);
}
