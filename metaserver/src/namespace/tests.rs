//! Tests of the namespace state machine: targeted POSIX cases, and a model-based property
//! test comparing random operation sequences against a small in-memory POSIX model.

use std::collections::{BTreeMap, BTreeSet};

use meridian_proto::{BlockId, Hlc, InodeId, RegionId};
use proptest::prelude::*;
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableHandle};

use super::*;

struct Fs {
    db: Database,
    clock: u64,
    root: InodeId,
    next_request: u64,
}

fn user(uid: u32) -> Creds {
    Creds {
        uid,
        gid: uid,
        groups: vec![],
    }
}

impl Fs {
    fn new() -> Self {
        let db = super::memory_db();
        let mut fs = Fs {
            db,
            clock: 1_000_000,
            root: InodeId(0),
            next_request: 1,
        };
        let vol = fs.volume("main", VolumePolicy::default()).unwrap();
        fs.root = vol.root;
        fs
    }

    fn command(&mut self, op: Op, request: Option<(u64, u64)>) -> Command {
        self.clock += 1;
        Command {
            op,
            hlc: Hlc {
                wall_ms: self.clock,
                counter: 0,
                region: RegionId(1),
            },
            now: Timespec {
                sec: self.clock as i64,
                nsec: 0,
            },
            request,
            ino: None,
            lease: false,
        }
    }

    fn run_command(&mut self, cmd: &Command) -> Result<Reply, NsError> {
        let tx = self.db.begin_write().unwrap();
        let out = {
            let mut t = WriteTables::open(&tx);
            apply(&mut t, cmd)
        };
        tx.commit().unwrap();
        out
    }

    /// Runs `f` in one write transaction, committed.
    fn write<T>(&mut self, f: impl FnOnce(&mut WriteTables<'_>) -> T) -> T {
        let tx = self.db.begin_write().unwrap();
        let out = {
            let mut t = WriteTables::open(&tx);
            f(&mut t)
        };
        tx.commit().unwrap();
        out
    }

    fn run(&mut self, op: Op) -> Result<Reply, NsError> {
        let cmd = self.command(op, None);
        self.run_command(&cmd)
    }

    fn read<T>(&self, f: impl FnOnce(&NsReader<'_>) -> T) -> T {
        let tx = self.db.begin_read().unwrap();
        f(&NsReader::new(&tx))
    }

    fn volume(&mut self, name: &str, policy: VolumePolicy) -> Result<Volume, NsError> {
        match self.run(Op::CreateVolume {
            name: name.into(),
            policy,
        })? {
            Reply::Volume(v) => Ok(v),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn mk(
        &mut self,
        parent: InodeId,
        name: &str,
        kind: FileKind,
        creds: &Creds,
    ) -> Result<Attr, NsError> {
        let op = Op::Mknod {
            parent,
            name: name.into(),
            kind,
            perm: 0o755,
            rdev: 0,
            exclusive: true,
            creds: creds.clone(),
        };
        match self.run(op)? {
            Reply::Attr(a) => Ok(a),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn mkdir(&mut self, parent: InodeId, name: &str) -> Attr {
        self.mk(parent, name, FileKind::Dir, &Creds::root())
            .unwrap()
    }

    fn create(&mut self, parent: InodeId, name: &str) -> Attr {
        self.mk(parent, name, FileKind::File, &Creds::root())
            .unwrap()
    }

    fn attr(&self, ino: InodeId) -> Attr {
        self.read(|r| r.getattr(ino)).unwrap()
    }

    fn lookup(&self, parent: InodeId, name: &str) -> Result<Attr, NsError> {
        self.read(|r| r.lookup(parent, name.as_bytes(), &Creds::root()))
    }

    fn rename(
        &mut self,
        p: InodeId,
        n: &str,
        np: InodeId,
        nn: &str,
        flags: RenameFlags,
    ) -> Result<Reply, NsError> {
        self.run(Op::Rename {
            parent: p,
            name: n.into(),
            new_parent: np,
            new_name: nn.into(),
            flags,
            creds: Creds::root(),
        })
    }
}

fn errno<T: std::fmt::Debug>(r: Result<T, NsError>) -> i32 {
    r.expect_err("expected an error").errno()
}

use types::libc_errno::*;

#[test]
fn create_lookup_and_directory_link_counts() {
    let mut fs = Fs::new();
    let root = fs.root;
    let a = fs.mkdir(root, "a");
    fs.mkdir(a.ino, "b");
    fs.create(a.ino, "f");
    assert_eq!(fs.attr(root).nlink, 3);
    assert_eq!(fs.attr(a.ino).nlink, 3);
    assert_eq!(fs.lookup(a.ino, "f").unwrap().nlink, 1);
    assert_eq!(fs.lookup(a.ino, "..").unwrap().ino, root);
    assert_eq!(errno(fs.lookup(a.ino, "missing")), ENOENT);
    assert_eq!(
        errno(fs.mk(a.ino, "f", FileKind::File, &Creds::root())),
        EEXIST
    );
    // Non-exclusive create of an existing file opens it.
    let op = Op::Mknod {
        parent: a.ino,
        name: b"f".to_vec(),
        kind: FileKind::File,
        perm: 0o644,
        rdev: 0,
        exclusive: false,
        creds: Creds::root(),
    };
    assert!(matches!(fs.run(op), Ok(Reply::Attr(_))));
    let f = fs.lookup(a.ino, "f").unwrap();
    assert_eq!(
        errno(fs.mk(f.ino, "x", FileKind::File, &Creds::root())),
        ENOTDIR
    );
    assert_eq!(
        errno(fs.mk(root, &"n".repeat(256), FileKind::File, &Creds::root())),
        ENAMETOOLONG
    );
    assert!(
        fs.mk(root, &"n".repeat(255), FileKind::File, &Creds::root())
            .is_ok()
    );
    for bad in ["", ".", "..", "a/b"] {
        assert_eq!(
            errno(fs.mk(root, bad, FileKind::File, &Creds::root())),
            EINVAL,
            "{bad:?}"
        );
    }
}

#[test]
fn unlink_rmdir_errors() {
    let mut fs = Fs::new();
    let root = fs.root;
    let d = fs.mkdir(root, "d");
    fs.create(d.ino, "f");
    let unlink = |name: &str, parent| Op::Unlink {
        parent,
        name: name.into(),
        creds: Creds::root(),
    };
    let rmdir = |name: &str, parent| Op::Rmdir {
        parent,
        name: name.into(),
        creds: Creds::root(),
    };
    assert_eq!(errno(fs.run(unlink("d", root))), EISDIR);
    assert_eq!(errno(fs.run(rmdir("d", root))), ENOTEMPTY);
    assert_eq!(errno(fs.run(rmdir("f", d.ino))), ENOTDIR);
    assert_eq!(errno(fs.run(unlink("nope", root))), ENOENT);
    assert_eq!(errno(fs.run(rmdir(".", d.ino))), EINVAL);
    fs.run(unlink("f", d.ino)).unwrap();
    fs.run(rmdir("d", root)).unwrap();
    assert_eq!(fs.attr(root).nlink, 2);
    assert_eq!(errno(fs.read(|r| r.getattr(d.ino))), ENOENT);
}

#[test]
fn rename_rules() {
    let mut fs = Fs::new();
    let root = fs.root;
    let none = RenameFlags::default();
    let a = fs.mkdir(root, "a");
    let b = fs.mkdir(a.ino, "b");
    fs.create(root, "f");
    fs.create(root, "g");
    fs.mkdir(root, "empty");
    let full = fs.mkdir(root, "full");
    fs.create(full.ino, "x");

    assert_eq!(
        errno(fs.rename(root, "a", b.ino, "a2", none)),
        EINVAL,
        "into own subtree"
    );
    assert_eq!(errno(fs.rename(root, "a", a.ino, "a2", none)), EINVAL);
    assert_eq!(errno(fs.rename(root, "f", root, "empty", none)), EISDIR);
    assert_eq!(errno(fs.rename(root, "a", root, "f", none)), ENOTDIR);
    assert_eq!(errno(fs.rename(root, "a", root, "full", none)), ENOTEMPTY);
    assert_eq!(
        errno(fs.rename(
            root,
            "f",
            root,
            "g",
            RenameFlags {
                noreplace: true,
                exchange: false
            }
        )),
        EEXIST
    );
    assert_eq!(
        errno(fs.rename(
            root,
            "f",
            root,
            "zz",
            RenameFlags {
                noreplace: false,
                exchange: true
            }
        )),
        ENOENT
    );

    // Over an empty directory, and over a file.
    let before = fs.attr(a.ino).ctime;
    fs.rename(root, "a", root, "empty", none).unwrap();
    assert_eq!(fs.lookup(root, "empty").unwrap().ino, a.ino);
    assert!(
        fs.attr(a.ino).ctime > before,
        "rename changes the moved inode's ctime"
    );
    let g = fs.lookup(root, "g").unwrap();
    fs.rename(root, "f", root, "g", none).unwrap();
    assert_eq!(
        errno(fs.read(|r| r.getattr(g.ino))),
        ENOENT,
        "the replaced file is gone"
    );

    // A directory moving between parents moves a link count with it.
    let root_links = fs.attr(root).nlink;
    fs.rename(root, "empty", full.ino, "moved", none).unwrap();
    assert_eq!(fs.attr(root).nlink, root_links - 1);
    assert_eq!(fs.attr(full.ino).nlink, 3);
    assert_eq!(fs.lookup(a.ino, "..").unwrap().ino, full.ino);

    // Exchange swaps a file and a directory in different parents.
    fs.rename(
        root,
        "g",
        full.ino,
        "moved",
        RenameFlags {
            noreplace: false,
            exchange: true,
        },
    )
    .unwrap();
    assert_eq!(fs.lookup(root, "g").unwrap().ino, a.ino);
    assert_eq!(fs.lookup(full.ino, "moved").unwrap().kind, FileKind::File);
    assert_eq!(fs.attr(root).nlink, root_links);
    assert_eq!(fs.attr(full.ino).nlink, 2);
}

#[test]
fn hard_links_and_symlinks() {
    let mut fs = Fs::new();
    let root = fs.root;
    let f = fs.create(root, "f");
    let d = fs.mkdir(root, "d");
    let link = |ino, name: &str| Op::Link {
        ino,
        new_parent: root,
        new_name: name.into(),
        creds: Creds::root(),
    };
    fs.run(link(f.ino, "f2")).unwrap();
    assert_eq!(fs.attr(f.ino).nlink, 2);
    assert_eq!(errno(fs.run(link(f.ino, "f2"))), EEXIST);
    assert_eq!(errno(fs.run(link(d.ino, "d2"))), EPERM);
    fs.run(Op::Unlink {
        parent: root,
        name: b"f".to_vec(),
        creds: Creds::root(),
    })
    .unwrap();
    assert_eq!(fs.attr(f.ino).nlink, 1);
    let s = match fs
        .run(Op::Symlink {
            parent: root,
            name: b"s".to_vec(),
            target: b"../x/y".to_vec(),
            creds: Creds::root(),
        })
        .unwrap()
    {
        Reply::Attr(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(s.kind, FileKind::Symlink);
    assert_eq!(s.size, 6);
    assert_eq!(fs.read(|r| r.readlink(s.ino)).unwrap(), b"../x/y");
    assert_eq!(errno(fs.read(|r| r.readlink(f.ino))), EINVAL);
}

#[test]
fn permissions_sticky_bits_and_ownership() {
    let mut fs = Fs::new();
    let root = fs.root;
    let alice = user(1000);
    let bob = user(1001);
    assert_eq!(
        errno(fs.mk(root, "x", FileKind::File, &alice)),
        EACCES,
        "root dir is 0755 root-owned"
    );
    let tmp = fs.mkdir(root, "tmp");
    fs.run(Op::SetAttr {
        ino: tmp.ino,
        set: SetAttr {
            perm: Some(0o1777),
            ..Default::default()
        },
        creds: Creds::root(),
    })
    .unwrap();
    let af = fs
        .mk(tmp.ino, "alice-file", FileKind::File, &alice)
        .unwrap();
    assert_eq!((af.uid, af.gid), (1000, 1000));
    assert_eq!(
        errno(fs.run(Op::Unlink {
            parent: tmp.ino,
            name: b"alice-file".to_vec(),
            creds: bob.clone()
        })),
        EPERM
    );
    let chmod = |ino, perm, creds: &Creds| Op::SetAttr {
        ino,
        set: SetAttr {
            perm: Some(perm),
            ..Default::default()
        },
        creds: creds.clone(),
    };
    assert_eq!(errno(fs.run(chmod(af.ino, 0o777, &bob))), EPERM);
    fs.run(chmod(af.ino, 0o600, &alice)).unwrap();
    let chown = |ino, uid, creds: &Creds| Op::SetAttr {
        ino,
        set: SetAttr {
            uid: Some(uid),
            ..Default::default()
        },
        creds: creds.clone(),
    };
    assert_eq!(errno(fs.run(chown(af.ino, 1001, &alice))), EPERM);
    fs.run(chown(af.ino, 1001, &Creds::root())).unwrap();
    // bob owns it now; alice may no longer write it.
    let trunc = |ino, creds: &Creds| Op::SetAttr {
        ino,
        set: SetAttr {
            size: Some(0),
            ..Default::default()
        },
        creds: creds.clone(),
    };
    assert_eq!(errno(fs.run(trunc(af.ino, &alice))), EACCES);
    fs.run(trunc(af.ino, &bob)).unwrap();
    // A private directory hides its entries.
    let private = fs.mk(tmp.ino, "private", FileKind::Dir, &alice).unwrap();
    fs.run(chmod(private.ino, 0o700, &alice)).unwrap();
    fs.mk(private.ino, "secret", FileKind::File, &alice)
        .unwrap();
    assert_eq!(
        errno(fs.read(|r| r.lookup(private.ino, b"secret", &bob))),
        EACCES
    );
    assert_eq!(
        errno(fs.read(|r| r.readdir(private.ino, None, 10, &bob))),
        EACCES
    );
    // setgid directories hand their group down.
    let shared = fs.mkdir(root, "shared");
    fs.run(Op::SetAttr {
        ino: shared.ino,
        set: SetAttr {
            perm: Some(0o2777),
            gid: Some(50),
            ..Default::default()
        },
        creds: Creds::root(),
    })
    .unwrap();
    let sub = fs.mk(shared.ino, "sub", FileKind::Dir, &alice).unwrap();
    assert_eq!(sub.gid, 50);
    assert_eq!(sub.perm & 0o2000, 0o2000);
}

#[test]
fn cross_volume_links_and_renames_fail_with_exdev() {
    let mut fs = Fs::new();
    let other = fs.volume("other", VolumePolicy::default()).unwrap();
    let root = fs.root;
    let f = fs.create(root, "f");
    assert_eq!(
        errno(fs.rename(root, "f", other.root, "f", RenameFlags::default())),
        EXDEV
    );
    assert_eq!(
        errno(fs.run(Op::Link {
            ino: f.ino,
            new_parent: other.root,
            new_name: b"f".to_vec(),
            creds: Creds::root()
        })),
        EXDEV
    );
    assert_eq!(errno(fs.volume("other", VolumePolicy::default())), EEXIST);
    assert_eq!(
        errno(fs.volume("Bad Name", VolumePolicy::default())),
        EINVAL
    );
    assert_eq!(
        errno(fs.run(Op::DeleteVolume {
            name: "main".into()
        })),
        ENOTEMPTY
    );
    fs.run(Op::DeleteVolume {
        name: "other".into(),
    })
    .unwrap();
    assert_eq!(errno(fs.read(|r| r.volume("other"))), ENOENT);
}

fn extent(offset: u64, len: u64, seed: &str, block_offset: u32) -> Extent {
    Extent {
        offset,
        len,
        block: BlockId::of(seed.as_bytes()),
        block_offset,
        block_len: 1 << 20,
    }
}

fn commit(fs: &mut Fs, ino: InodeId, extents: Vec<Extent>, size: u64) -> Result<Reply, NsError> {
    fs.run(Op::CommitExtents {
        ino,
        extents,
        size,
        base_version: None,
        creds: Creds::root(),
        staged: Vec::new(),
    })
}

#[test]
fn extent_maps_shadow_truncate_and_count_block_references() {
    let mut fs = Fs::new();
    let root = fs.root;
    let f = fs.create(root, "f");
    let (a, b) = (BlockId::of(b"A"), BlockId::of(b"B"));
    commit(&mut fs, f.ino, vec![extent(0, 1000, "A", 0)], 1000).unwrap();
    // A small write in the middle shadows part of the first extent.
    commit(&mut fs, f.ino, vec![extent(400, 100, "B", 0)], 0).unwrap();
    let map = fs.read(|r| r.extents(f.ino, 0, u64::MAX)).unwrap();
    assert_eq!(
        map,
        vec![
            extent(0, 400, "A", 0),
            extent(400, 100, "B", 0),
            extent(500, 500, "A", 500)
        ]
    );
    assert_eq!(fs.attr(f.ino).size, 1000, "size never shrinks on a commit");
    assert_eq!(fs.read(|r| r.block_refs(&a)).unwrap(), 2);
    assert_eq!(
        fs.read(|r| r.extents(f.ino, 450, 10)).unwrap(),
        vec![extent(400, 100, "B", 0)]
    );

    // Truncate into the B extent, then extend with a hole.
    let size = |s| Op::SetAttr {
        ino: f.ino,
        set: SetAttr {
            size: Some(s),
            ..Default::default()
        },
        creds: Creds::root(),
    };
    fs.run(size(450)).unwrap();
    let map = fs.read(|r| r.extents(f.ino, 0, u64::MAX)).unwrap();
    assert_eq!(map, vec![extent(0, 400, "A", 0), extent(400, 50, "B", 0)]);
    assert_eq!(fs.read(|r| r.block_refs(&a)).unwrap(), 1);
    fs.run(size(5000)).unwrap();
    assert_eq!(fs.attr(f.ino).size, 5000);
    assert!(
        fs.read(|r| r.extents(f.ino, 450, 4550)).unwrap().is_empty(),
        "a hole"
    );

    // Deleting the file releases every reference.
    fs.run(Op::Unlink {
        parent: root,
        name: b"f".to_vec(),
        creds: Creds::root(),
    })
    .unwrap();
    assert_eq!(fs.read(|r| r.block_refs(&a)).unwrap(), 0);
    assert_eq!(fs.read(|r| r.block_refs(&b)).unwrap(), 0);
    assert_eq!(fs.read(|r| r.volume("main")).unwrap().used_bytes, 0);
    // ... and leaves no row behind for them: the block tables do not grow with deletes.
    let tx = fs.db.begin_read().unwrap();
    for table in [tables::BLOCK_REFS, tables::UNREFERENCED] {
        let rows = tx.open_table(table).map(|t| t.len().unwrap()).unwrap_or(0);
        assert_eq!(rows, 0, "{} keeps rows of deleted blocks", table.name());
    }
    drop(tx);

    // Extents that do not fit their block are refused; directories cannot be written.
    let g = fs.create(root, "g");
    assert_eq!(
        errno(commit(
            &mut fs,
            g.ino,
            vec![extent(0, 10, "A", (1 << 20) - 5)],
            10
        )),
        EINVAL
    );
    assert_eq!(
        errno(commit(&mut fs, root, vec![extent(0, 10, "A", 0)], 10)),
        EISDIR
    );
}

#[test]
fn compaction_applies_only_over_unchanged_extents() {
    let mut fs = Fs::new();
    let f = fs.create(fs.root, "f");
    commit(
        &mut fs,
        f.ino,
        vec![extent(0, 100, "A", 0), extent(100, 100, "B", 0)],
        200,
    )
    .unwrap();
    let seen = fs.read(|r| r.extents(f.ino, 0, 200)).unwrap();
    let whole = vec![extent(0, 200, "C", 0)];
    let compact = |expected: Vec<Extent>| Op::Compact {
        ino: f.ino,
        offset: 0,
        len: 200,
        expected,
        replacement: whole.clone(),
    };
    // A write lands between the compactor's read and its commit: the compaction loses.
    commit(&mut fs, f.ino, vec![extent(50, 10, "D", 0)], 0).unwrap();
    assert_eq!(errno(fs.run(compact(seen))), EAGAIN);
    let seen = fs.read(|r| r.extents(f.ino, 0, 200)).unwrap();
    fs.run(compact(seen)).unwrap();
    assert_eq!(fs.read(|r| r.extents(f.ino, 0, 200)).unwrap(), whole);
    assert_eq!(fs.read(|r| r.block_refs(&BlockId::of(b"D"))).unwrap(), 0);
}

#[test]
fn quotas_refuse_with_edquot() {
    let mut fs = Fs::new();
    let policy = VolumePolicy {
        quota_bytes: Some(1000),
        quota_inodes: Some(3),
        ..Default::default()
    };
    let vol = fs.volume("small", policy).unwrap();
    let f = fs.create(vol.root, "f");
    fs.create(vol.root, "g");
    assert_eq!(
        errno(fs.mk(vol.root, "h", FileKind::File, &Creds::root())),
        EDQUOT
    );
    commit(&mut fs, f.ino, vec![extent(0, 800, "A", 0)], 800).unwrap();
    assert_eq!(
        errno(commit(&mut fs, f.ino, vec![extent(800, 300, "B", 0)], 1100)),
        EDQUOT
    );
    let grow = Op::SetAttr {
        ino: f.ino,
        set: SetAttr {
            size: Some(2000),
            ..Default::default()
        },
        creds: Creds::root(),
    };
    assert_eq!(errno(fs.run(grow.clone())), EDQUOT);
    assert_eq!(fs.read(|r| r.volume("small")).unwrap().used_bytes, 800);

    // Raising the quota (CSI expansion) lets the same change through; an unknown volume
    // is refused and changes nothing.
    let raise = |name: &str, quota| Op::SetVolumeQuota {
        name: name.into(),
        quota_bytes: quota,
    };
    assert_eq!(errno(fs.run(raise("nope", Some(1)))), ENOENT);
    fs.run(raise("small", Some(4000))).unwrap();
    assert_eq!(
        fs.read(|r| r.volume("small")).unwrap().policy.quota_bytes,
        Some(4000)
    );
    fs.run(grow).unwrap();
    assert_eq!(fs.read(|r| r.volume("small")).unwrap().used_bytes, 2000);
    // Lowering it below what the volume holds refuses growth, not what is there.
    fs.run(raise("small", Some(100))).unwrap();
    assert_eq!(
        errno(commit(&mut fs, f.ino, vec![extent(2000, 10, "C", 0)], 2010)),
        EDQUOT
    );
    assert_eq!(fs.read(|r| r.volume("small")).unwrap().used_bytes, 2000);
}

#[test]
fn xattrs_follow_create_and_replace_flags() {
    let mut fs = Fs::new();
    let f = fs.create(fs.root, "f");
    let set = |name: &str, value: &str, mode| Op::SetXattr {
        ino: f.ino,
        name: name.into(),
        value: value.into(),
        mode,
        creds: Creds::root(),
    };
    fs.run(set("user.a", "1", XattrMode::Any)).unwrap();
    assert_eq!(errno(fs.run(set("user.a", "2", XattrMode::Create))), EEXIST);
    assert_eq!(
        errno(fs.run(set("user.b", "2", XattrMode::Replace))),
        ENODATA
    );
    fs.run(set("user.a", "3", XattrMode::Replace)).unwrap();
    assert_eq!(
        errno(fs.run(set("bogus.a", "3", XattrMode::Any))),
        EOPNOTSUPP
    );
    assert_eq!(
        fs.read(|r| r.getxattr(f.ino, b"user.a", &Creds::root()))
            .unwrap(),
        b"3"
    );
    assert_eq!(
        fs.read(|r| r.listxattr(f.ino, &Creds::root())).unwrap(),
        vec![b"user.a".to_vec()]
    );
    let rm = Op::RemoveXattr {
        ino: f.ino,
        name: b"user.a".to_vec(),
        creds: Creds::root(),
    };
    fs.run(rm.clone()).unwrap();
    assert_eq!(errno(fs.run(rm)), ENODATA);
    assert_eq!(
        errno(fs.read(|r| r.getxattr(f.ino, b"user.a", &Creds::root()))),
        ENODATA
    );
}

#[test]
fn an_inodes_xattr_names_stay_within_what_a_listing_holds() {
    let mut fs = Fs::new();
    let f = fs.create(fs.root, "f");
    let set = |name: &[u8], mode| Op::SetXattr {
        ino: f.ino,
        name: name.to_vec(),
        value: b"v".to_vec(),
        mode,
        creds: Creds::root(),
    };
    // Names of 255 bytes, 256 with their NUL: 256 of them fill 64 KiB exactly.
    let name = |i: usize| {
        let mut n = format!("user.{i:05}").into_bytes();
        n.resize(XATTR_NAME_MAX, b'x');
        n
    };
    let fit = XATTR_LIST_MAX / (XATTR_NAME_MAX + 1);
    // As the leader proposes a client's change (`NsReader::bounded`).
    let propose = |fs: &mut Fs, op: Op| {
        let op = fs.read(|r| r.bounded(op))?;
        fs.run(op)
    };
    for i in 0..fit {
        propose(&mut fs, set(&name(i), XattrMode::Create)).unwrap();
    }
    assert_eq!(
        errno(propose(&mut fs, set(b"user.one-more", XattrMode::Any))),
        ENOSPC
    );
    let names = fs.read(|r| r.listxattr(f.ino, &Creds::root())).unwrap();
    assert_eq!(names.len(), fit, "the refused name changed nothing");
    assert_eq!(
        names.iter().map(|n| n.len() + 1).sum::<usize>(),
        XATTR_LIST_MAX
    );
    // A value replaced takes no more room; a name removed makes room for another.
    propose(&mut fs, set(&name(0), XattrMode::Replace)).unwrap();
    propose(
        &mut fs,
        Op::RemoveXattr {
            ino: f.ino,
            name: name(1),
            creds: Creds::root(),
        },
    )
    .unwrap();
    propose(&mut fs, set(b"user.one-more", XattrMode::Create)).unwrap();
    // Where the change applies, nothing is decided: every member applies the same.
    let over = set(&name(fit), XattrMode::Create);
    assert!(fs.read(|r| r.bounded(over.clone())).is_err());
    fs.run(over).unwrap();
}

#[test]
fn a_retried_request_is_applied_once() {
    let mut fs = Fs::new();
    let op = Op::Mknod {
        parent: fs.root,
        name: b"once".to_vec(),
        kind: FileKind::Dir,
        perm: 0o755,
        rdev: 0,
        exclusive: true,
        creds: Creds::root(),
    };
    let id = (7, fs.next_request);
    fs.next_request += 1;
    let first = fs.command(op.clone(), Some(id));
    let a = fs.run_command(&first).unwrap();
    let retry = fs.command(op.clone(), Some(id));
    assert_eq!(
        fs.run_command(&retry).unwrap(),
        a,
        "same outcome, not EEXIST"
    );
    assert_eq!(fs.attr(fs.root).nlink, 3, "applied once");
    let other = fs.command(op, Some((7, 99)));
    assert_eq!(errno(fs.run_command(&other)), EEXIST);
    // Every successful command is in the change log, in order, with its stamp.
    let changes = fs.read(|r| r.changes(0, 100)).unwrap();
    assert_eq!(changes.len(), 2, "create volume + one mkdir");
}

#[test]
fn reads_update_atime_like_relatime() {
    let mut fs = Fs::new();
    let f = fs.create(fs.root, "f");
    commit(&mut fs, f.ino, vec![extent(0, 10, "A", 0)], 10).unwrap();
    let written = fs.attr(f.ino);
    // The first read after a write moves atime past mtime; a second read right after does not.
    fs.run(Op::Accessed { ino: f.ino }).unwrap();
    let read1 = fs.attr(f.ino);
    assert!(read1.atime > written.mtime);
    assert_eq!(
        (read1.mtime, read1.ctime),
        (written.mtime, written.ctime),
        "a read changes only atime"
    );
    fs.run(Op::Accessed { ino: f.ino }).unwrap();
    assert_eq!(fs.attr(f.ino).atime, read1.atime);
    // A day later, a read refreshes it again.
    fs.clock += 24 * 3600 * 1000;
    let later = fs.command(Op::Accessed { ino: f.ino }, None);
    let mut later = later;
    later.now = Timespec {
        sec: read1.atime.sec + 24 * 3600,
        nsec: 0,
    };
    fs.run_command(&later).unwrap();
    assert!(fs.attr(f.ino).atime > read1.atime);
    // Anyone who can read may cause it: no permission check, unlike utimens.
    assert!(
        fs.run(Op::Accessed {
            ino: InodeId(999_999)
        })
        .is_err()
    );
}

#[test]
fn an_access_batch_moves_each_due_atime_passes_over_removed_files_and_refuses_mixed_volumes() {
    let mut fs = Fs::new();
    let a = fs.create(fs.root, "a");
    let b = fs.create(fs.root, "b");
    let gone = fs.create(fs.root, "gone");
    fs.run(Op::Unlink {
        parent: fs.root,
        name: b"gone".to_vec(),
        creds: Creds::root(),
    })
    .unwrap();
    let before = (fs.attr(a.ino), fs.attr(b.ino));
    fs.run(Op::AccessedBatch {
        inos: vec![a.ino, gone.ino, b.ino],
    })
    .unwrap();
    assert!(fs.attr(a.ino).atime > before.0.atime);
    assert!(fs.attr(b.ino).atime > before.1.atime);
    assert_eq!(fs.attr(a.ino).mtime, before.0.mtime, "only atime moves");

    // Two volumes in one batch: refused, nothing changes.
    let other = fs.volume("other", VolumePolicy::default()).unwrap();
    let c = fs.create(other.root, "c");
    let c_before = fs.attr(c.ino);
    let a_before = fs.attr(a.ino);
    fs.clock += 24 * 3600 * 1000;
    assert_eq!(
        errno(fs.run(Op::AccessedBatch {
            inos: vec![c.ino, a.ino],
        })),
        EINVAL
    );
    assert_eq!((fs.attr(a.ino), fs.attr(c.ino)), (a_before, c_before));
    // Too many: refused.
    assert_eq!(
        errno(fs.run(Op::AccessedBatch {
            inos: vec![a.ino; meridian_proto::ns::ACCESSED_BATCH_MAX + 1],
        })),
        EINVAL
    );
}

#[test]
fn the_feed_lists_what_changes_of_a_volume_made_stale_without_the_watchers_own() {
    let mut fs = Fs::new();
    let other = fs.volume("other", VolumePolicy::default()).unwrap();
    let now = {
        let tx = fs.db.begin_read().unwrap();
        crate::watch::changes(&tx, 1, 0, 0).unwrap()
    };
    assert!(now.touched.changes.is_empty() && !now.gap);
    let dir = fs.mkdir(fs.root, "d");
    fs.create(other.root, "elsewhere");
    let mine = fs.command(
        Op::Mknod {
            parent: dir.ino,
            name: b"mine".to_vec(),
            kind: FileKind::File,
            perm: 0o644,
            rdev: 0,
            exclusive: true,
            creds: Creds::root(),
        },
        Some((42, 1)),
    );
    fs.run_command(&mine).unwrap();
    let volume = fs.read(|r| r.volume("main")).unwrap().id;
    let tx = fs.db.begin_read().unwrap();
    let all = crate::watch::changes(&tx, volume, now.next, 0).unwrap();
    let entry = |parent: InodeId, name: &str| Touch::Entry {
        parent,
        name: name.as_bytes().to_vec(),
    };
    assert_eq!(
        all.touched.changes,
        vec![
            (None, vec![entry(fs.root, "d")]),
            (Some(42), vec![entry(dir.ino, "mine")]),
        ],
        "the other volume's create is not there"
    );
    let others = crate::watch::changes(&tx, volume, now.next, 42).unwrap();
    assert_eq!(
        others.touched.changes,
        vec![(None, vec![entry(fs.root, "d")])]
    );
    assert_eq!(others.next, all.next);
    // Nothing new: the next answer is empty, from where this one ended.
    let none = crate::watch::changes(&tx, volume, all.next, 0).unwrap();
    assert!(none.touched.changes.is_empty() && !none.gap);
    assert_eq!(none.next, all.next);
}

#[test]
fn old_request_outcomes_are_pruned_by_hlc_time() {
    let mut fs = Fs::new();
    let op = |name: &str| Op::Mknod {
        parent: InodeId(0),
        name: name.into(),
        kind: FileKind::File,
        perm: 0o644,
        rdev: 0,
        exclusive: true,
        creds: Creds::root(),
    };
    let first = fs.command(op("x"), Some((1, 1)));
    fs.run_command(&first).unwrap_err();
    let count = |fs: &Fs| {
        let tx = fs.db.begin_read().unwrap();
        redb::ReadableTableMetadata::len(&tx.open_table(tables::REQUESTS).unwrap()).unwrap()
    };
    assert_eq!(count(&fs), 1);
    // Fifteen minutes of HLC time later, the next command forgets it.
    fs.clock += history::REQUEST_RETENTION_MS + 1;
    let later = fs.command(op("y"), Some((1, 2)));
    fs.run_command(&later).unwrap_err();
    assert_eq!(count(&fs), 1, "the old record went, the new one stays");
}

#[test]
fn readdir_pages_through_many_entries_with_a_cursor() {
    let mut fs = Fs::new();
    let d = fs.mkdir(fs.root, "d");
    let mut names: BTreeSet<Vec<u8>> = BTreeSet::new();
    for i in 0..1000 {
        let name = format!("file-{i:04}");
        fs.create(d.ino, &name);
        names.insert(name.into_bytes());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page = fs
            .read(|r| r.readdir(d.ino, cursor.as_deref(), 128, &Creds::root()))
            .unwrap();
        seen.extend(page.entries.into_iter().map(|e| e.name));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, names.into_iter().collect::<Vec<_>>());
}

// ---- model-based property test ----------------------------------------------------------

/// A tiny POSIX model: inodes with kinds and directory children.
#[derive(Clone, Debug, Default)]
struct Model {
    next: u64,
    kinds: BTreeMap<u64, FileKind>,
    children: BTreeMap<u64, BTreeMap<String, u64>>,
    parent: BTreeMap<u64, u64>,
}

impl Model {
    fn new() -> Self {
        let mut m = Model::default();
        m.kinds.insert(0, FileKind::Dir);
        m.children.insert(0, BTreeMap::new());
        m.parent.insert(0, 0);
        m.next = 1;
        m
    }

    /// Directories as paths, sorted; ops pick among them by index.
    fn dirs(&self) -> Vec<(String, u64)> {
        let mut out = vec![(String::new(), 0)];
        let mut i = 0;
        while i < out.len() {
            let (path, id) = out[i].clone();
            for (name, child) in &self.children[&id] {
                if self.kinds[child] == FileKind::Dir {
                    out.push((format!("{path}/{name}"), *child));
                }
            }
            i += 1;
        }
        out.sort();
        out
    }

    fn within(&self, mut ino: u64, ancestor: u64) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            if ino == 0 {
                return false;
            }
            ino = self.parent[&ino];
        }
    }

    fn links(&self, ino: u64) -> u32 {
        if self.kinds[&ino] == FileKind::Dir {
            2 + self.children[&ino]
                .values()
                .filter(|c| self.kinds[c] == FileKind::Dir)
                .count() as u32
        } else {
            self.children
                .values()
                .flat_map(|c| c.values())
                .filter(|c| **c == ino)
                .count() as u32
        }
    }

    fn gc(&mut self, ino: u64) {
        if self.kinds[&ino] != FileKind::Dir && self.links(ino) == 0 {
            self.kinds.remove(&ino);
        }
    }

    fn make(&mut self, dir: u64, name: &str, kind: FileKind) -> Result<(), i32> {
        if self.children[&dir].contains_key(name) {
            return Err(EEXIST);
        }
        let id = self.next;
        self.next += 1;
        self.kinds.insert(id, kind);
        if kind == FileKind::Dir {
            self.children.insert(id, BTreeMap::new());
        }
        self.parent.insert(id, dir);
        self.children.get_mut(&dir).unwrap().insert(name.into(), id);
        Ok(())
    }

    fn unlink(&mut self, dir: u64, name: &str) -> Result<(), i32> {
        let id = *self.children[&dir].get(name).ok_or(ENOENT)?;
        if self.kinds[&id] == FileKind::Dir {
            return Err(EISDIR);
        }
        self.children.get_mut(&dir).unwrap().remove(name);
        self.gc(id);
        Ok(())
    }

    fn rmdir(&mut self, dir: u64, name: &str) -> Result<(), i32> {
        let id = *self.children[&dir].get(name).ok_or(ENOENT)?;
        if self.kinds[&id] != FileKind::Dir {
            return Err(ENOTDIR);
        }
        if !self.children[&id].is_empty() {
            return Err(ENOTEMPTY);
        }
        self.children.get_mut(&dir).unwrap().remove(name);
        self.children.remove(&id);
        self.kinds.remove(&id);
        Ok(())
    }

    fn link(&mut self, sdir: u64, name: &str, ddir: u64, new: &str) -> Result<(), i32> {
        let id = *self.children[&sdir].get(name).ok_or(ENOENT)?;
        if self.kinds[&id] == FileKind::Dir {
            return Err(EPERM);
        }
        if self.children[&ddir].contains_key(new) {
            return Err(EEXIST);
        }
        self.children.get_mut(&ddir).unwrap().insert(new.into(), id);
        Ok(())
    }

    fn rename(
        &mut self,
        sdir: u64,
        name: &str,
        ddir: u64,
        new: &str,
        flags: RenameFlags,
    ) -> Result<(), i32> {
        let src = *self.children[&sdir].get(name).ok_or(ENOENT)?;
        let dst = self.children[&ddir].get(new).copied();
        if flags.exchange && dst.is_none() {
            return Err(ENOENT);
        }
        if flags.noreplace && dst.is_some() {
            return Err(EEXIST);
        }
        if dst == Some(src) {
            return Ok(());
        }
        let src_dir = self.kinds[&src] == FileKind::Dir;
        if src_dir && self.within(ddir, src) {
            return Err(EINVAL);
        }
        if flags.exchange {
            let dst = dst.unwrap();
            if self.kinds[&dst] == FileKind::Dir && self.within(sdir, dst) {
                return Err(EINVAL);
            }
            self.children
                .get_mut(&sdir)
                .unwrap()
                .insert(name.into(), dst);
            self.children
                .get_mut(&ddir)
                .unwrap()
                .insert(new.into(), src);
            self.parent.insert(src, ddir);
            self.parent.insert(dst, sdir);
            return Ok(());
        }
        if let Some(d) = dst {
            let d_dir = self.kinds[&d] == FileKind::Dir;
            if src_dir && !d_dir {
                return Err(ENOTDIR);
            }
            if !src_dir && d_dir {
                return Err(EISDIR);
            }
            if d_dir && !self.children[&d].is_empty() {
                return Err(ENOTEMPTY);
            }
        }
        self.children.get_mut(&sdir).unwrap().remove(name);
        self.children
            .get_mut(&ddir)
            .unwrap()
            .insert(new.into(), src);
        self.parent.insert(src, ddir);
        if let Some(d) = dst {
            if self.kinds[&d] == FileKind::Dir {
                self.children.remove(&d);
                self.kinds.remove(&d);
            } else {
                self.gc(d);
            }
        }
        Ok(())
    }

    /// path -> (kind, nlink, index of the first path naming the same inode)
    fn listing(&self) -> BTreeMap<String, (FileKind, u32, String)> {
        let mut first: BTreeMap<u64, String> = BTreeMap::new();
        let mut out = BTreeMap::new();
        let mut stack = vec![(String::new(), 0u64)];
        let mut all = Vec::new();
        while let Some((path, id)) = stack.pop() {
            for (name, child) in &self.children[&id] {
                let p = format!("{path}/{name}");
                all.push((p.clone(), *child));
                if self.kinds[child] == FileKind::Dir {
                    stack.push((p, *child));
                }
            }
        }
        all.sort();
        for (p, id) in all {
            let f = first.entry(id).or_insert_with(|| p.clone()).clone();
            out.insert(p, (self.kinds[&id], self.links(id), f));
        }
        out
    }
}

fn sut_listing(fs: &Fs) -> BTreeMap<String, (FileKind, u32, String)> {
    let mut all = Vec::new();
    let mut stack = vec![(String::new(), fs.root)];
    while let Some((path, ino)) = stack.pop() {
        let page = fs
            .read(|r| r.readdir(ino, None, 100_000, &Creds::root()))
            .unwrap();
        for e in page.entries {
            let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
            let attr = fs.attr(e.ino);
            assert_eq!(attr.kind, e.kind, "entry kind matches inode at {p}");
            all.push((p.clone(), e.ino, attr.kind, attr.nlink));
            if e.kind == FileKind::Dir {
                assert_eq!(fs.lookup(e.ino, "..").unwrap().ino, ino, "parent of {p}");
                stack.push((p, e.ino));
            }
        }
    }
    all.sort();
    let mut first: BTreeMap<InodeId, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (p, ino, kind, nlink) in all {
        let f = first.entry(ino).or_insert_with(|| p.clone()).clone();
        out.insert(p, (kind, nlink, f));
    }
    out
}

#[derive(Clone, Debug)]
enum MOp {
    Create(usize, u8),
    Mkdir(usize, u8),
    Symlink(usize, u8),
    Unlink(usize, u8),
    Rmdir(usize, u8),
    Link(usize, u8, usize, u8),
    Rename(usize, u8, usize, u8, u8),
}

fn arb_op() -> impl Strategy<Value = MOp> {
    let d = 0usize..8;
    let n = 0u8..4;
    prop_oneof![
        3 => (d.clone(), n.clone()).prop_map(|(a, b)| MOp::Create(a, b)),
        3 => (d.clone(), n.clone()).prop_map(|(a, b)| MOp::Mkdir(a, b)),
        1 => (d.clone(), n.clone()).prop_map(|(a, b)| MOp::Symlink(a, b)),
        2 => (d.clone(), n.clone()).prop_map(|(a, b)| MOp::Unlink(a, b)),
        2 => (d.clone(), n.clone()).prop_map(|(a, b)| MOp::Rmdir(a, b)),
        2 => (d.clone(), n.clone(), d.clone(), n.clone()).prop_map(|(a, b, c, e)| MOp::Link(a, b, c, e)),
        4 => (d.clone(), n.clone(), d, n, 0u8..3).prop_map(|(a, b, c, e, f)| MOp::Rename(a, b, c, e, f)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn state_machine_matches_the_posix_model(ops in proptest::collection::vec(arb_op(), 1..60)) {
        let mut fs = Fs::new();
        let mut model = Model::new();
        let names = ["a", "b", "c", "d"];
        for op in ops {
            let dirs = model.dirs();
            // Resolve model directories to inodes by path, through the system under test.
            let resolve = |fs: &Fs, i: usize| -> (u64, InodeId) {
                let (path, id) = &dirs[i % dirs.len()];
                let mut ino = fs.root;
                for part in path.split('/').filter(|p| !p.is_empty()) {
                    ino = fs.lookup(ino, part).unwrap().ino;
                }
                (*id, ino)
            };
            let root = Creds::root();
            let (want, got): (Result<(), i32>, Result<Reply, NsError>) = match op.clone() {
                MOp::Create(d, n) | MOp::Mkdir(d, n) => {
                    let (m, s) = resolve(&fs, d);
                    let kind = if matches!(op, MOp::Mkdir(..)) { FileKind::Dir } else { FileKind::File };
                    (model.make(m, names[n as usize], kind),
                     fs.run(Op::Mknod { parent: s, name: names[n as usize].into(), kind, perm: 0o755, rdev: 0, exclusive: true, creds: root }))
                }
                MOp::Symlink(d, n) => {
                    let (m, s) = resolve(&fs, d);
                    (model.make(m, names[n as usize], FileKind::Symlink),
                     fs.run(Op::Symlink { parent: s, name: names[n as usize].into(), target: b"t".to_vec(), creds: root }))
                }
                MOp::Unlink(d, n) => {
                    let (m, s) = resolve(&fs, d);
                    (model.unlink(m, names[n as usize]), fs.run(Op::Unlink { parent: s, name: names[n as usize].into(), creds: root }))
                }
                MOp::Rmdir(d, n) => {
                    let (m, s) = resolve(&fs, d);
                    (model.rmdir(m, names[n as usize]), fs.run(Op::Rmdir { parent: s, name: names[n as usize].into(), creds: root }))
                }
                MOp::Link(d1, n1, d2, n2) => {
                    let ((m1, s1), (m2, s2)) = (resolve(&fs, d1), resolve(&fs, d2));
                    let want = model.link(m1, names[n1 as usize], m2, names[n2 as usize]);
                    let got = match fs.lookup(s1, names[n1 as usize]) {
                        Ok(a) => fs.run(Op::Link { ino: a.ino, new_parent: s2, new_name: names[n2 as usize].into(), creds: root }),
                        Err(e) => Err(e),
                    };
                    (want, got)
                }
                MOp::Rename(d1, n1, d2, n2, f) => {
                    let ((m1, s1), (m2, s2)) = (resolve(&fs, d1), resolve(&fs, d2));
                    let flags = RenameFlags { noreplace: f == 1, exchange: f == 2 };
                    (model.rename(m1, names[n1 as usize], m2, names[n2 as usize], flags),
                     fs.rename(s1, names[n1 as usize], s2, names[n2 as usize], flags))
                }
            };
            prop_assert_eq!(want, got.map(|_| ()).map_err(|e| e.errno()), "op {:?}", op);
            prop_assert_eq!(model.listing(), sut_listing(&fs), "trees differ after {:?}", op);
        }
        // fsck, in pages of three inodes: every file's links and names balance.
        let (problems, unbalanced) = checked_in_pages(&fs, 3);
        prop_assert!(problems.is_empty(), "{:?}", problems);
        prop_assert!(unbalanced.is_empty(), "{:?}", unbalanced);
    }
}

/// fsck's namespace check of `fs` in pages of `page` inodes: the problems the pages
/// found, and the files whose links and names did not come to zero over the pages.
fn checked_in_pages(fs: &Fs, page: u32) -> (Vec<String>, Vec<u64>) {
    let tx = fs.db.begin_read().unwrap();
    let (mut problems, mut sums) = (Vec::new(), BTreeMap::<u64, i64>::new());
    let mut from = 0;
    loop {
        let p = super::check::check(&tx, from, page).unwrap();
        problems.extend(p.problems);
        for (ino, d) in p.links.expect("the pages count links") {
            *sums.entry(ino).or_default() += d;
        }
        match p.next {
            Some(n) => from = n,
            None => break,
        }
    }
    let unbalanced = sums
        .into_iter()
        .filter(|(_, d)| *d != 0)
        .map(|(i, _)| i)
        .collect();
    (problems, unbalanced)
}

#[test]
fn fsck_counts_a_files_names_in_other_pages_against_its_links() {
    let mut fs = Fs::new();
    let root = fs.root;
    let a = fs.mkdir(root, "a");
    let f = fs.create(a.ino, "f");
    let b = fs.mkdir(root, "b");
    let link = |ino, parent, name: &str| Op::Link {
        ino,
        new_parent: parent,
        new_name: name.into(),
        creds: Creds::root(),
    };
    fs.run(link(f.ino, b.ino, "g")).unwrap();
    fs.run(link(f.ino, root, "h")).unwrap();
    fs.create(b.ino, "alone");
    // One inode a page: f's record and each of its names in a page of its own.
    assert_eq!(checked_in_pages(&fs, 1), (vec![], vec![]));
    let counts = |fs: &Fs, inodes: &[u64]| {
        let tx = fs.db.begin_read().unwrap();
        super::check::link_counts(&tx, inodes)
    };
    let at = |nlink, names| meridian_proto::ns::LinkCount {
        ino: f.ino.0,
        nlink,
        names,
    };
    assert_eq!(counts(&fs, &[f.ino.0]).unwrap(), vec![at(Some(3), 3)]);

    // A link count one too many: no page shows it, the pages together do, and a count
    // over every entry says by how much.
    // The link count set behind the names' back.
    let set_links = |t: &mut WriteTables<'_>, nlink| {
        let mut node = super::tables::read_inode(t.inodes().unwrap(), f.ino)
            .unwrap()
            .unwrap();
        node.attr.nlink = nlink;
        t.put_inode(&node).unwrap();
    };
    fs.write(|t| set_links(t, 4));
    for page in [1, 2, 1000] {
        let (problems, unbalanced) = checked_in_pages(&fs, page);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(unbalanced, vec![f.ino.0], "pages of {page}");
    }
    assert_eq!(counts(&fs, &[f.ino.0]).unwrap(), vec![at(Some(4), 3)]);

    // A name removed behind its back: one too few.
    fs.write(|t| {
        set_links(t, 3);
        t.del_dirent(b.ino, b"g").unwrap();
    });
    assert_eq!(checked_in_pages(&fs, 2).1, vec![f.ino.0]);
    assert_eq!(counts(&fs, &[f.ino.0]).unwrap(), vec![at(Some(3), 2)]);

    // An entry under no live directory is counted by no page, nor here.
    fs.write(|t| {
        t.set_dirent(InodeId(888_888), b"stray", f.ino, FileKind::File)
            .unwrap();
    });
    assert_eq!(counts(&fs, &[f.ino.0]).unwrap(), vec![at(Some(3), 2)]);

    // A page with more files out of balance than it gives balances for gives none.
    let tx = fs.db.begin_read().unwrap();
    let bounded = |max| super::check::check_within(&tx, 0, 1000, max).unwrap().links;
    assert_eq!(bounded(1), Some(vec![(f.ino.0, 1)]));
    assert_eq!(bounded(0), None);
    drop(tx);

    // A directory or an inode that does not exist has no link count here; too many asked
    // is refused.
    let none = counts(&fs, &[a.ino.0, 999_999]).unwrap();
    assert!(none.iter().all(|c| c.nlink.is_none()), "{none:?}");
    let many: Vec<u64> = (0..=meridian_proto::ns::LINKS_MAX as u64).collect();
    assert!(matches!(counts(&fs, &many), Err(NsError::Invalid(_))));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(meridian_proto::mutate::cases(128)))]

    /// A fuzz target for the namespace commands' decoder, as the metaserver's Mutate
    /// takes them: operations' bytes damaged (edits of valid encodings reach inode
    /// numbers, names, kinds, extents and the enum's tags) either fail to decode or decode
    /// to an operation the namespace takes or refuses; it never panics, the tree stays
    /// whole (every entry's inode of its kind, every directory's `..` its parent), and it
    /// takes operations afterwards.
    #[test]
    fn damaged_operation_bytes_decode_to_an_error_or_an_operation_the_namespace_survives(
        ops in proptest::collection::vec((0u8..7, 0usize..4), 1..12),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let mut fs = Fs::new();
        let root = fs.root;
        let creds = Creds::root();
        let dir = fs.mk(root, "d", FileKind::Dir, &creds).unwrap();
        let file = fs.create(dir.ino, "f");
        for (kind, n) in ops {
            let name = ["a", "b", "c", "d"][n].as_bytes().to_vec();
            let creds = creds.clone();
            let op = match kind {
                0 => Op::Mknod { parent: root, name, kind: FileKind::File, perm: 0o644, rdev: 0, exclusive: true, creds },
                1 => Op::Mknod { parent: dir.ino, name, kind: FileKind::Dir, perm: 0o755, rdev: 0, exclusive: true, creds },
                2 => Op::Unlink { parent: root, name, creds },
                3 => Op::Symlink { parent: dir.ino, name, target: b"t".to_vec(), creds },
                4 => Op::Link { ino: file.ino, new_parent: root, new_name: name, creds },
                5 => Op::SetXattr { ino: file.ino, name: b"user.k".to_vec(), value: name, mode: XattrMode::Any, creds },
                _ => Op::CommitExtents { ino: file.ino, extents: vec![extent(0, 100, "A", 0)], size: 100, base_version: None, creds, staged: Vec::new() },
            };
            let bytes = serde_json::to_vec(&op).unwrap();
            if let Ok(op) = serde_json::from_slice::<Op>(&meridian_proto::mutate::mutate(&bytes, &edits))
                && let Err(NsError::Store(e)) = fs.run(op.clone())
            {
                prop_assert!(false, "{:?} stopped the state machine: {}", op, e);
            }
        }
        let _ = sut_listing(&fs);
        fs.run(Op::Mknod { parent: root, name: b"still-works".to_vec(), kind: FileKind::File, perm: 0o644, rdev: 0, exclusive: true, creds: Creds::root() }).unwrap();
    }
}

#[test]
fn snapshots_and_clones_copy_the_namespace_at_once_and_share_blocks() {
    let mut fs = Fs::new();
    let unlink = |name: &str, parent| Op::Unlink {
        parent,
        name: name.into(),
        creds: Creds::root(),
    };
    let src = fs.volume("src", VolumePolicy::default()).unwrap();
    let d = fs.mk(src.root, "d", FileKind::Dir, &Creds::root()).unwrap();
    let f = fs.create(d.ino, "f");
    commit(&mut fs, f.ino, vec![extent(0, 100, "A", 0)], 100).unwrap();
    fs.run(Op::Link {
        ino: f.ino,
        new_parent: src.root,
        new_name: b"hard".to_vec(),
        creds: Creds::root(),
    })
    .unwrap();
    fs.run(Op::Symlink {
        parent: src.root,
        name: b"s".to_vec(),
        target: b"d/f".to_vec(),
        creds: Creds::root(),
    })
    .unwrap();
    fs.run(Op::SetXattr {
        ino: f.ino,
        name: b"user.k".to_vec(),
        value: b"v".to_vec(),
        mode: XattrMode::Any,
        creds: Creds::root(),
    })
    .unwrap();
    let copy = |source: &str, name: &str, read_only| Op::CloneVolume {
        source: source.into(),
        name: name.into(),
        read_only,
    };
    let Reply::Volume(snap) = fs.run(copy("src", "snap", true)).unwrap() else {
        panic!("no volume")
    };
    assert!(snap.read_only && snap.origin.as_deref() == Some("src"));
    assert_eq!((snap.used_bytes, snap.used_inodes), (100, 4));

    // The source changes after the snapshot; the snapshot does not.
    commit(&mut fs, f.ino, vec![extent(0, 200, "B", 0)], 200).unwrap();
    fs.run(unlink("hard", src.root)).unwrap();
    let sd = fs.lookup(snap.root, "d").unwrap();
    let sf = fs.lookup(sd.ino, "f").unwrap();
    let hard = fs.lookup(snap.root, "hard").unwrap();
    assert_eq!(sf.ino, hard.ino, "a hard link stays one inode");
    assert_ne!(sf.ino, f.ino);
    assert_eq!((sf.size, sf.nlink, sf.volume), (100, 2, snap.id));
    assert_eq!(
        fs.read(|r| r.extents(sf.ino, 0, 1000)).unwrap(),
        vec![extent(0, 100, "A", 0)]
    );
    let s = fs.lookup(snap.root, "s").unwrap();
    assert_eq!(fs.read(|r| r.readlink(s.ino)).unwrap(), b"d/f");
    assert_eq!(
        fs.read(|r| r.getxattr(sf.ino, b"user.k", &Creds::root()))
            .unwrap(),
        b"v"
    );

    // A snapshot refuses every change, and can be copied again (a restore).
    assert_eq!(
        errno(fs.mk(snap.root, "x", FileKind::File, &Creds::root())),
        EROFS
    );
    assert_eq!(errno(fs.run(unlink("hard", snap.root))), EROFS);
    let Reply::Volume(clone) = fs.run(copy("snap", "clone", false)).unwrap() else {
        panic!("no volume")
    };
    assert!(!clone.read_only);
    let cd = fs.lookup(clone.root, "d").unwrap();
    let cf = fs.lookup(cd.ino, "f").unwrap();
    commit(&mut fs, cf.ino, vec![extent(0, 50, "C", 0)], 100).unwrap();
    fs.create(clone.root, "new");
    // Copies share blocks: A is the snapshot's and the clone's (the source moved to B).
    assert_eq!(fs.read(|r| r.block_refs(&BlockId::of(b"A"))).unwrap(), 2);

    // The source goes; the snapshot keeps its blocks.
    fs.run(unlink("f", d.ino)).unwrap();
    fs.run(unlink("s", src.root)).unwrap();
    fs.run(Op::Rmdir {
        parent: src.root,
        name: b"d".to_vec(),
        creds: Creds::root(),
    })
    .unwrap();
    fs.run(Op::DeleteVolume { name: "src".into() }).unwrap();
    assert_eq!(fs.read(|r| r.block_refs(&BlockId::of(b"A"))).unwrap(), 2);
    assert_eq!(fs.lookup(sd.ino, "f").unwrap().size, 100);

    // Bad copies change nothing.
    assert_eq!(errno(fs.run(copy("nope", "x", true))), ENOENT);
    assert_eq!(errno(fs.run(copy("snap", "clone", true))), EEXIST);
    assert_eq!(errno(fs.run(copy("snap", "Bad Name", true))), EINVAL);
    assert_eq!(fs.read(|r| r.volumes()).unwrap().len(), 3);

    // A snapshot is deleted with everything in it; its blocks lose its references.
    fs.run(Op::DeleteVolume {
        name: "snap".into(),
    })
    .unwrap();
    assert_eq!(errno(fs.read(|r| r.getattr(sf.ino))), ENOENT);
    assert_eq!(fs.read(|r| r.block_refs(&BlockId::of(b"A"))).unwrap(), 1);
    assert_eq!(fs.read(|r| r.volumes()).unwrap().len(), 2);
}

#[test]
fn copies_in_steps_read_one_point_in_time_and_go_when_unfinished() {
    use super::ops::copy::{self, CopyAbort, CopyBegin, CopyDone, CopyRows, Cursor, Numbering};
    let mut fs = Fs::new();
    let src = fs.volume("src", VolumePolicy::default()).unwrap();
    let d = fs.mkdir(src.root, "d");
    let mut files = Vec::new();
    for i in 0..25 {
        let f = fs.create(d.ino, &format!("f{i}"));
        commit(&mut fs, f.ino, vec![extent(0, 10, "A", 0)], 10).unwrap();
        files.push(f);
    }
    fs.run(Op::SetXattr {
        ino: d.ino,
        name: b"user.k".to_vec(),
        value: b"v".to_vec(),
        mode: XattrMode::Any,
        creds: Creds::root(),
    })
    .unwrap();
    let a = BlockId::of(b"A");
    let gc_refs = |fs: &Fs, block: BlockId| match fs
        .read(|r| {
            r.query(&Query::BlockRefs {
                blocks: vec![block],
            })
        })
        .unwrap()
    {
        QueryReply::BlockRefs { refs, .. } => refs[0],
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(gc_refs(&fs, BlockId::of(b"nothing")), 0);

    // The point in time: one read, however many steps follow.
    let tx = fs.db.begin_read().unwrap();
    let plan = copy::plan(&tx, "src", RegionId(1)).unwrap();
    assert_eq!(plan.order.len(), 26);
    let (used_bytes, used_inodes) = (plan.source.used_bytes, plan.source.used_inodes);
    let begin = |fs: &mut Fs, name: &str| {
        let cmd = fs.command(
            Op::DeleteVolume {
                name: String::new(),
            },
            None,
        );
        let b = CopyBegin {
            source: "src".into(),
            name: name.into(),
            read_only: true,
            hlc: cmd.hlc,
            now: cmd.now,
            by: 7,
        };
        match fs.write(|t| copy::begin(t, &b)) {
            Ok(Reply::Volume(v)) => Ok(v),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => Err(e),
        }
    };
    // The numbers the copy's rows take, reserved once.
    let reserve = |fs: &mut Fs, vol: &Volume| {
        let step = CopyRows {
            volume: vol.id,
            reserve: 26,
            rows: Vec::new(),
            done: None,
        };
        match fs.write(|t| copy::rows(t, &step)) {
            Ok(Reply::Volume(v)) => Ok(v),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => Err(e),
        }
    };
    let snap = begin(&mut fs, "snap").unwrap();
    assert!(snap.copying.is_some() && snap.read_only);
    assert_eq!(errno(begin(&mut fs, "snap")), EEXIST);
    let snap = reserve(&mut fs, &snap).unwrap();
    assert_eq!(errno(reserve(&mut fs, &snap)), EINVAL);

    // The source changes between the read and the steps.
    let unlink = |name: &str, parent| Op::Unlink {
        parent,
        name: name.into(),
        creds: Creds::root(),
    };
    fs.run(unlink("f0", d.ino)).unwrap();
    commit(&mut fs, files[1].ino, vec![extent(0, 20, "B", 0)], 20).unwrap();
    fs.create(d.ino, "new");

    // Steps of at most 10 inodes and 7 entries, extents and xattrs, as the leader would
    // send them (d's 25 entries span batches); nothing but the steps changes the copy
    // meanwhile, it cannot be copied, and nothing is collected.
    let numbering = Numbering::new(&plan, &snap, snap.copying.as_ref().unwrap().base).unwrap();
    let mut cur = Cursor::default();
    let (mut steps, mut continued) = (0, 0);
    while !plan.done(&cur) {
        let (batch, next) = copy::read_rows(
            &tx,
            &plan,
            &snap,
            &numbering,
            cur,
            copy::Limits::new(10, 7),
            Timespec::default(),
        )
        .unwrap();
        let copy::Batch::Rows(rows) = batch else {
            panic!("no file here has more than one extent")
        };
        cur = next;
        continued += rows.iter().filter(|r| r.continued).count();
        assert_eq!(gc_refs(&fs, BlockId::of(b"nothing")), 1);
        assert_eq!(
            errno(fs.mk(snap.root, "x", FileKind::File, &Creds::root())),
            EROFS
        );
        let step = CopyRows {
            volume: snap.id,
            reserve: 0,
            rows,
            done: None,
        };
        let Reply::Volume(v) = fs.write(|t| copy::rows(t, &step)).unwrap() else {
            panic!("no volume")
        };
        steps += 1;
        // Every position before the cursor is copied, and the one it is in the middle of.
        let begun = cur.pos + usize::from(cur.after.is_some() || cur.extents_from.is_some());
        assert_eq!(v.copying.as_ref().unwrap().copied as usize, begun - 1);
    }
    assert!(
        steps > 3 && continued >= 3,
        "{steps} steps, {continued} continued"
    );
    let last = CopyRows {
        volume: snap.id,
        reserve: 0,
        rows: Vec::new(),
        done: Some(CopyDone {
            used_bytes,
            used_inodes,
        }),
    };
    let Reply::Volume(v) = fs.write(|t| copy::rows(t, &last)).unwrap() else {
        panic!("no volume")
    };
    assert!(v.copying.is_none());
    assert_eq!(gc_refs(&fs, BlockId::of(b"nothing")), 0);

    // The copy is the source as it was read.
    let snap = fs
        .read(|r| r.volumes())
        .unwrap()
        .into_iter()
        .find(|v| v.name == "snap")
        .unwrap();
    assert_eq!(
        (snap.used_bytes, snap.used_inodes),
        (used_bytes, used_inodes)
    );
    let sd = fs.lookup(snap.root, "d").unwrap();
    assert_eq!(sd.volume, snap.id);
    assert!(fs.lookup(sd.ino, "new").is_err());
    let listed = fs
        .read(|r| r.readdir(sd.ino, None, 1000, &Creds::root()))
        .unwrap();
    assert_eq!(listed.entries.len(), 25);
    let f0 = fs.lookup(sd.ino, "f0").unwrap();
    let f1 = fs.lookup(sd.ino, "f1").unwrap();
    assert_eq!((f0.size, f1.size), (10, 10));
    assert_eq!(
        fs.read(|r| r.extents(f1.ino, 0, 100)).unwrap(),
        vec![extent(0, 10, "A", 0)]
    );
    assert_eq!(
        fs.read(|r| r.getxattr(sd.ino, b"user.k", &Creds::root()))
            .unwrap(),
        b"v"
    );
    // The source's 23 files still on A, and the copy's 25.
    assert_eq!(fs.read(|r| r.block_refs(&a)).unwrap(), 48);
    assert_eq!(
        errno(fs.mk(snap.root, "x", FileKind::File, &Creds::root())),
        EROFS
    );

    // A step naming an inode that is not the copy's changes nothing.
    let half = begin(&mut fs, "half").unwrap();
    let half = reserve(&mut fs, &half).unwrap();
    let (batch, _) = copy::read_rows(
        &tx,
        &plan,
        &half,
        &Numbering::new(&plan, &half, half.copying.as_ref().unwrap().base).unwrap(),
        Cursor::default(),
        copy::Limits::new(5, 1000),
        Timespec::default(),
    )
    .unwrap();
    let copy::Batch::Rows(mut rows) = batch else {
        panic!("rows first")
    };
    let mut hostile = rows.clone();
    hostile[1].inode.attr.ino = files[3].ino;
    let step = CopyRows {
        volume: half.id,
        reserve: 0,
        rows: hostile,
        done: None,
    };
    assert_eq!(errno(fs.write(|t| copy::rows(t, &step))), EINVAL);
    assert_eq!(fs.attr(files[3].ino).volume, src.id);

    // An unfinished copy is removed with what it has, and gives its references back.
    rows.truncate(5);
    let step = CopyRows {
        volume: half.id,
        reserve: 0,
        rows,
        done: None,
    };
    fs.write(|t| copy::rows(t, &step)).unwrap();
    // (The root, d, and three files: the root counts among the batch's rows.)
    assert_eq!(fs.read(|r| r.block_refs(&a)).unwrap(), 48 + 3);
    let cmd = fs.command(
        Op::DeleteVolume {
            name: String::new(),
        },
        None,
    );
    let abort = CopyAbort {
        volume: half.id,
        hlc: cmd.hlc,
        now: cmd.now,
        request: None,
    };
    fs.write(|t| copy::abort(t, &abort)).unwrap();
    assert_eq!(fs.read(|r| r.block_refs(&a)).unwrap(), 48);
    assert!(
        fs.read(|r| r.volumes())
            .unwrap()
            .iter()
            .all(|v| v.name != "half")
    );
    // A finished copy is not removed so.
    let abort = CopyAbort {
        volume: snap.id,
        ..abort
    };
    assert_eq!(errno(fs.write(|t| copy::abort(t, &abort))), EINVAL);
}

#[test]
fn a_commit_of_more_extents_than_one_entry_takes_is_refused_and_changes_nothing() {
    let mut fs = Fs::new();
    let root = fs.root;
    let f = fs.create(root, "f");
    let many: Vec<Extent> = (0..=COMMIT_EXTENTS_MAX as u64)
        .map(|i| extent(i * 2, 1, "A", 0))
        .collect();
    let end = many.last().map_or(0, Extent::end);
    assert_eq!(errno(commit(&mut fs, f.ino, many.clone(), end)), EINVAL);
    assert_eq!(fs.attr(f.ino).size, 0);
    assert_eq!(fs.read(|r| r.block_refs(&BlockId::of(b"A"))).unwrap(), 0);
    // One fewer is taken.
    let taken = many[..COMMIT_EXTENTS_MAX].to_vec();
    let end = taken.last().map_or(0, Extent::end);
    commit(&mut fs, f.ino, taken, end).unwrap();
    assert_eq!(fs.attr(f.ino).size, end);
}
