//! Directory leases in the state machine: a write-back applies only under its client's
//! leases, creates only take inode numbers reserved for their client, and a lease that
//! ended fences every later change that relied on it.

use meridian_proto::{Hlc, InodeId, RegionId};
use redb::Database;
use redb::ReadableDatabase;

use super::lease::{LeaseTables, WriteBack, apply_command, apply_write_back, leaseholder};
use super::*;

const HOLDER: u64 = 7;
const OTHER: u64 = 8;

struct Ns {
    db: Database,
    clock: u64,
    request: u64,
}

impl Ns {
    fn new() -> (Self, InodeId) {
        let db = super::memory_db();
        let mut ns = Ns {
            db,
            clock: 1_000,
            request: 1,
        };
        let root = match ns
            .run(
                Op::CreateVolume {
                    name: "v".into(),
                    policy: VolumePolicy::default(),
                },
                0,
                None,
                false,
            )
            .unwrap()
        {
            Reply::Volume(v) => v.root,
            other => panic!("unexpected {other:?}"),
        };
        (ns, root)
    }

    fn cmd(&mut self, op: Op, client: u64, ino: Option<InodeId>, lease: bool) -> Command {
        self.clock += 1;
        self.request += 1;
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
            request: (client != 0).then_some((client, self.request)),
            ino,
            lease,
        }
    }

    fn run(
        &mut self,
        op: Op,
        client: u64,
        ino: Option<InodeId>,
        lease: bool,
    ) -> Result<Reply, NsError> {
        let cmd = self.cmd(op, client, ino, lease);
        self.run_cmd(&cmd)
    }

    fn run_cmd(&mut self, cmd: &Command) -> Result<Reply, NsError> {
        let cmd = cmd.clone();
        let tx = self.db.begin_write().unwrap();
        let out = {
            let mut t = WriteTables::open(&tx);
            let mut l = LeaseTables::open(&tx);
            apply_command(&mut t, &mut l, &cmd)
        };
        tx.commit().unwrap();
        out
    }

    /// The holder's write-back of `cmds`, with nothing released or reserved.
    fn holders_write_back(&mut self, cmds: Vec<Command>) -> lease::WriteBackOutcome {
        self.write_back(&WriteBack {
            client: HOLDER,
            cmds,
            release: vec![],
            reserve: 0,
            acquire: vec![],
        })
    }

    fn write_back(&mut self, wb: &WriteBack) -> lease::WriteBackOutcome {
        let tx = self.db.begin_write().unwrap();
        let out = {
            let mut t = WriteTables::open(&tx);
            let mut l = LeaseTables::open(&tx);
            apply_write_back(&mut t, &mut l, RegionId(1), wb).unwrap()
        };
        tx.commit().unwrap();
        out
    }

    fn expire(&mut self, dirs: &[InodeId]) {
        let tx = self.db.begin_write().unwrap();
        LeaseTables::open(&tx).expire(dirs).unwrap();
        tx.commit().unwrap();
    }

    fn holder(&self, dir: InodeId) -> Option<u64> {
        leaseholder(&self.db.begin_read().unwrap(), dir).unwrap()
    }

    fn lookup(&self, parent: InodeId, name: &str) -> Result<Attr, NsError> {
        let tx = self.db.begin_read().unwrap();
        NsReader::new(&tx).lookup(parent, name.as_bytes(), &Creds::root())
    }
}

fn mkdir(parent: InodeId, name: &str) -> Op {
    node(parent, name, FileKind::Dir)
}

fn node(parent: InodeId, name: &str, kind: FileKind) -> Op {
    Op::Mknod {
        parent,
        name: name.into(),
        kind,
        perm: 0o755,
        rdev: 0,
        exclusive: true,
        creds: Creds::root(),
    }
}

fn attr(r: Result<Reply, NsError>) -> Attr {
    match r {
        Ok(Reply::Attr(a)) => a,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_write_back_applies_under_its_clients_lease_at_reserved_numbers_and_is_fenced_once_the_lease_ends()
 {
    let (mut ns, root) = Ns::new();
    let d = attr(ns.run(mkdir(root, "d"), HOLDER, None, true));
    assert_eq!(
        ns.holder(d.ino),
        Some(HOLDER),
        "a directory made with a lease is its maker's"
    );
    let plain = attr(ns.run(mkdir(root, "plain"), HOLDER, None, false));
    assert_eq!(ns.holder(plain.ino), None);

    // Reserve numbers, then make d/a and d/a/b at them in one write-back.
    let reserved = ns
        .write_back(&WriteBack {
            client: HOLDER,
            cmds: vec![],
            release: vec![],
            reserve: 16,
            acquire: vec![],
        })
        .reserved
        .expect("reserved");
    assert_eq!(reserved.1, 16);
    let (a, b) = (reserved.0, InodeId(reserved.0.0 + 1));
    let c1 = ns.cmd(mkdir(d.ino, "a"), HOLDER, Some(a), true);
    let c2 = ns.cmd(mkdir(a, "b"), HOLDER, Some(b), true);
    let out = ns.holders_write_back(vec![c1.clone(), c2]);
    assert_eq!(attr(out.outcomes[0].clone()).ino, a);
    assert_eq!(attr(out.outcomes[1].clone()).ino, b);
    assert_eq!(ns.lookup(d.ino, "a").unwrap().ino, a);
    assert_eq!(
        ns.holder(b),
        Some(HOLDER),
        "directories made under a lease are leased too"
    );

    // A retry of an applied change returns its first outcome.
    let again = ns.holders_write_back(vec![c1]);
    assert_eq!(attr(again.outcomes[0].clone()).ino, a);

    // Another client's write-back in the holder's directory is refused, and so is
    // everything after it.
    let c3 = ns.cmd(mkdir(d.ino, "x"), OTHER, None, false);
    let c4 = ns.cmd(mkdir(plain.ino, "y"), OTHER, None, false);
    let out = ns.write_back(&WriteBack {
        client: OTHER,
        cmds: vec![c3, c4],
        release: vec![],
        reserve: 0,
        acquire: vec![],
    });
    assert!(
        matches!(out.outcomes[0], Err(NsError::Conflict(_))),
        "{out:?}"
    );
    assert!(
        matches!(out.outcomes[1], Err(NsError::Conflict(_))),
        "{out:?}"
    );
    assert!(ns.lookup(d.ino, "x").is_err() && ns.lookup(plain.ino, "y").is_err());

    // The leader ended the lease: the holder's late changes are refused, whole.
    ns.expire(&[d.ino]);
    let late = ns.cmd(mkdir(d.ino, "late"), HOLDER, Some(InodeId(a.0 + 2)), true);
    let out = ns.holders_write_back(vec![late]);
    assert!(
        matches!(out.outcomes[0], Err(NsError::Conflict(_))),
        "{out:?}"
    );
    assert!(ns.lookup(d.ino, "late").is_err());

    // Giving a lease back ends it; removing a leased directory ends its lease.
    ns.write_back(&WriteBack {
        client: HOLDER,
        cmds: vec![],
        release: vec![a],
        reserve: 0,
        acquire: vec![],
    });
    assert_eq!(ns.holder(a), None);
    let rm = Op::Rmdir {
        parent: a,
        name: b"b".to_vec(),
        creds: Creds::root(),
    };
    ns.run(rm, OTHER, None, false).unwrap();
    assert_eq!(ns.holder(b), None);
}

#[test]
fn a_create_at_an_inode_number_not_reserved_for_its_client_is_refused_and_changes_nothing() {
    let (mut ns, root) = Ns::new();
    let reserved = ns
        .write_back(&WriteBack {
            client: HOLDER,
            cmds: vec![],
            release: vec![],
            reserve: 4,
            acquire: vec![],
        })
        .reserved
        .unwrap();
    // Another client's reserved number, a number never reserved, and no client at all.
    for (client, ino) in [
        (OTHER, reserved.0),
        (HOLDER, InodeId(reserved.0.0 + 4)),
        (0, reserved.0),
    ] {
        let out = ns.run(mkdir(root, "stolen"), client, Some(ino), false);
        assert!(
            matches!(out, Err(NsError::Perm(_))),
            "{client} {ino}: {out:?}"
        );
        assert!(ns.lookup(root, "stolen").is_err());
    }
    // A number used once is not free twice.
    attr(ns.run(mkdir(root, "one"), HOLDER, Some(reserved.0), false));
    let out = ns.run(mkdir(root, "two"), HOLDER, Some(reserved.0), false);
    assert!(matches!(out, Err(NsError::Invalid(_))), "{out:?}");
    // The counter skipped the reserved range: a plain create takes a number after it.
    let plain = attr(ns.run(mkdir(root, "plain"), OTHER, None, false));
    assert!(
        plain.ino.0 >= reserved.0.0 + 4,
        "{} {}",
        plain.ino,
        reserved.0
    );
}

#[test]
fn a_retried_create_grants_no_lease_again_and_a_write_back_holds_only_what_a_mount_answers_alone() {
    let (mut ns, root) = Ns::new();
    let made = ns.cmd(mkdir(root, "d"), HOLDER, None, true);
    let d = attr(ns.run_cmd(&made));
    ns.write_back(&WriteBack {
        client: HOLDER,
        cmds: vec![],
        release: vec![d.ino],
        reserve: 0,
        acquire: vec![],
    });
    assert_eq!(ns.holder(d.ino), None);
    // The same request again (a retry after a leader change): the first answer, no lease.
    assert_eq!(attr(ns.run_cmd(&made)).ino, d.ino);
    assert_eq!(
        ns.holder(d.ino),
        None,
        "a retry gave the lease back to its maker"
    );

    // An attribute change of a directory leased to another client rides in no
    // write-back, and what follows it is refused too.
    let e = attr(ns.run(mkdir(root, "e"), OTHER, None, true));
    let chmod = ns.cmd(
        Op::SetAttr {
            ino: e.ino,
            set: SetAttr {
                perm: Some(0o700),
                ..SetAttr::default()
            },
            creds: Creds::root(),
        },
        HOLDER,
        None,
        false,
    );
    let after = ns.cmd(mkdir(e.ino, "x"), HOLDER, None, true);
    let out = ns.holders_write_back(vec![chmod, after]);
    assert!(
        matches!(out.outcomes[0], Err(NsError::Invalid(_))),
        "{out:?}"
    );
    assert!(
        matches!(out.outcomes[1], Err(NsError::Conflict(_))),
        "{out:?}"
    );
    let tx = ns.db.begin_read().unwrap();
    assert_eq!(NsReader::new(&tx).getattr(e.ino).unwrap().perm, e.perm);
    assert!(ns.lookup(e.ino, "x").is_err());
}

#[test]
fn attribute_changes_and_atimes_of_files_and_leased_directories_ride_in_a_write_back_and_a_truncate_does_not()
 {
    let (mut ns, root) = Ns::new();
    let d = attr(ns.run(mkdir(root, "d"), HOLDER, None, true));
    let f = attr(ns.run(
        Op::Mknod {
            parent: d.ino,
            name: "f".into(),
            kind: FileKind::File,
            perm: 0o600,
            rdev: 0,
            exclusive: true,
            creds: Creds::root(),
        },
        HOLDER,
        None,
        false,
    ));
    let set = |set: SetAttr| Op::SetAttr {
        ino: f.ino,
        set,
        creds: Creds::root(),
    };
    let chmod = ns.cmd(
        set(SetAttr {
            perm: Some(0o644),
            uid: Some(7),
            ..SetAttr::default()
        }),
        HOLDER,
        None,
        false,
    );
    let out = ns.holders_write_back(vec![chmod]);
    assert!(out.outcomes[0].is_ok(), "{out:?}");
    let tx = ns.db.begin_read().unwrap();
    let now = NsReader::new(&tx).getattr(f.ino).unwrap();
    assert_eq!((now.perm, now.uid), (0o644, 7));
    drop(tx);
    // And a batch of atimes (a read of it found its atime due).
    let read = ns.cmd(Op::AccessedBatch { inos: vec![f.ino] }, HOLDER, None, false);
    let out = ns.holders_write_back(vec![read]);
    assert!(out.outcomes[0].is_ok(), "{out:?}");
    // So does one of the directory leased to the client.
    let chmod_dir = ns.cmd(
        Op::SetAttr {
            ino: d.ino,
            set: SetAttr {
                perm: Some(0o750),
                ..SetAttr::default()
            },
            creds: Creds::root(),
        },
        HOLDER,
        None,
        false,
    );
    let out = ns.holders_write_back(vec![chmod_dir]);
    assert!(out.outcomes[0].is_ok(), "{out:?}");
    let tx = ns.db.begin_read().unwrap();
    assert_eq!(NsReader::new(&tx).getattr(d.ino).unwrap().perm, 0o750);
    drop(tx);
    let truncate = ns.cmd(
        set(SetAttr {
            size: Some(0),
            ..SetAttr::default()
        }),
        HOLDER,
        None,
        false,
    );
    let out = ns.holders_write_back(vec![truncate]);
    assert!(
        matches!(out.outcomes[0], Err(NsError::Invalid(_))),
        "{out:?}"
    );
}

#[test]
fn a_retried_change_carrying_an_inode_number_not_reserved_for_its_client_is_refused() {
    let (mut ns, root) = Ns::new();
    // Another client's file, and a change of this client's that applied once.
    let victim = attr(ns.run(
        Op::Mknod {
            parent: root,
            name: "victim".into(),
            kind: FileKind::File,
            perm: 0o644,
            rdev: 0,
            exclusive: true,
            creds: Creds::root(),
        },
        OTHER,
        None,
        false,
    ));
    let done = ns.cmd(mkdir(root, "d"), HOLDER, None, false);
    attr(ns.run_cmd(&done));
    // The same request again, now naming the victim's inode number, in a write-back (the
    // root is not leased: it would be answered as a retry), then a change of that inode.
    let mut replay = done.clone();
    replay.ino = Some(victim.ino);
    let commit = ns.cmd(
        Op::SetAttr {
            ino: victim.ino,
            set: SetAttr {
                perm: Some(0o777),
                ..SetAttr::default()
            },
            creds: Creds::root(),
        },
        HOLDER,
        None,
        false,
    );
    let out = ns.holders_write_back(vec![replay, commit]);
    assert!(
        matches!(out.outcomes[0], Err(NsError::Invalid(_))),
        "{out:?}"
    );
    assert!(out.outcomes[1].is_err(), "{out:?}");
    let tx = ns.db.begin_read().unwrap();
    let after = NsReader::new(&tx).getattr(victim.ino).unwrap();
    assert_eq!(after.perm, 0o644, "the victim's file changed");
}

fn file(parent: InodeId, name: &str) -> Op {
    node(parent, name, FileKind::File)
}

#[test]
fn an_existing_directory_is_leased_on_demand_with_every_entry_when_nobody_holds_it_and_it_is_not_too_big()
 {
    let (mut ns, root) = Ns::new();
    // Made without a lease (by a mount that wanted none, or before the mount started).
    let shared = attr(ns.run(mkdir(root, "shared"), OTHER, None, false));
    let f = attr(ns.run(file(shared.ino, "f"), OTHER, None, false));
    let sub = attr(ns.run(mkdir(shared.ino, "sub"), OTHER, None, false));
    let nothing = InodeId(shared.ino.0 + 1_000_000);
    let ask = |ns: &mut Ns, client: u64, dirs: Vec<InodeId>, cmds: Vec<Command>| {
        ns.write_back(&WriteBack {
            client,
            cmds,
            release: vec![],
            reserve: 0,
            acquire: dirs,
        })
    };

    // A file, an inode that does not exist: nothing granted. The directory: all of it.
    let out = ask(&mut ns, HOLDER, vec![f.ino, nothing, shared.ino], vec![]);
    assert_eq!(out.granted.len(), 1, "{out:?}");
    let g = &out.granted[0];
    let tx = ns.db.begin_read().unwrap();
    assert_eq!(g.dir, NsReader::new(&tx).getattr(shared.ino).unwrap());
    drop(tx);
    let listed: Vec<(&[u8], InodeId, FileKind)> = g
        .entries
        .iter()
        .map(|e| (e.name.as_slice(), e.ino, e.kind))
        .collect();
    assert_eq!(
        listed,
        [
            (&b"f"[..], f.ino, FileKind::File),
            (&b"sub"[..], sub.ino, FileKind::Dir)
        ]
    );
    assert_eq!(ns.holder(shared.ino), Some(HOLDER));
    assert_eq!(ns.holder(f.ino), None);

    // Held: another client is granted nothing; the holder is granted it again, after the
    // changes of its write-back, which apply under it (an entry it did not make goes).
    assert!(
        ask(&mut ns, OTHER, vec![shared.ino], vec![])
            .granted
            .is_empty()
    );
    assert_eq!(ns.holder(shared.ino), Some(HOLDER));
    let unlink = ns.cmd(
        Op::Unlink {
            parent: shared.ino,
            name: b"f".to_vec(),
            creds: Creds::root(),
        },
        HOLDER,
        None,
        false,
    );
    let out = ask(&mut ns, HOLDER, vec![shared.ino], vec![unlink]);
    assert!(out.outcomes[0].is_ok(), "{out:?}");
    let names: Vec<&[u8]> = out.granted[0]
        .entries
        .iter()
        .map(|e| e.name.as_slice())
        .collect();
    assert_eq!(names, [&b"sub"[..]]);

    // The leases are listed, by directory.
    let tx = ns.db.begin_read().unwrap();
    let page = super::lease::page(&tx, 0, 100).unwrap();
    assert_eq!(page, [(shared.ino, HOLDER)]);
    assert!(
        super::lease::page(&tx, shared.ino.0, 100)
            .unwrap()
            .is_empty()
    );
    drop(tx);

    // Given back, it is another's to ask for.
    ns.write_back(&WriteBack {
        client: HOLDER,
        cmds: vec![],
        release: vec![shared.ino],
        reserve: 0,
        acquire: vec![],
    });
    assert_eq!(
        ask(&mut ns, OTHER, vec![shared.ino], vec![]).granted.len(),
        1
    );
    assert_eq!(ns.holder(shared.ino), Some(OTHER));

    // A directory with more entries than a holder keeps is not leased.
    let big = attr(ns.run(mkdir(root, "big"), 0, None, false));
    let tx = ns.db.begin_write().unwrap();
    {
        let mut t = WriteTables::open(&tx);
        let mut l = LeaseTables::open(&tx);
        for i in 0..=ACQUIRE_MAX_ENTRIES {
            let c = ns.cmd(file(big.ino, &format!("f{i}")), 0, None, false);
            apply_command(&mut t, &mut l, &c).unwrap();
        }
    }
    tx.commit().unwrap();
    assert!(
        ask(&mut ns, HOLDER, vec![big.ino], vec![])
            .granted
            .is_empty()
    );
    assert_eq!(ns.holder(big.ino), None);
}

#[test]
fn a_symlink_in_a_write_back_takes_a_reserved_number_under_the_lease_and_nothing_else() {
    let (mut ns, root) = Ns::new();
    let d = attr(ns.run(mkdir(root, "d"), HOLDER, None, true));
    let reserved = ns
        .write_back(&WriteBack {
            client: HOLDER,
            cmds: vec![],
            release: vec![],
            reserve: 4,
            acquire: vec![],
        })
        .reserved
        .expect("reserved");
    let symlink = |parent: InodeId, name: &str| Op::Symlink {
        parent,
        name: name.into(),
        target: b"../elsewhere".to_vec(),
        creds: Creds::root(),
    };
    let made = ns.cmd(symlink(d.ino, "l"), HOLDER, Some(reserved.0), false);
    let out = ns.holders_write_back(vec![made]);
    let a = attr(out.outcomes[0].clone());
    assert_eq!((a.ino, a.kind, a.size), (reserved.0, FileKind::Symlink, 12));
    let tx = ns.db.begin_read().unwrap();
    assert_eq!(
        NsReader::new(&tx).query(&Query::ReadLink { ino: a.ino }),
        Ok(QueryReply::Bytes(b"../elsewhere".to_vec()))
    );
    drop(tx);
    // The name taken, a number never reserved, a directory not leased: refused, nothing
    // made.
    let second = InodeId(reserved.0.0 + 1);
    for (parent, name, ino) in [
        (d.ino, "l", second),
        (d.ino, "stray", InodeId(reserved.0.0 + 4)),
        (root, "unleased", second),
    ] {
        let cmd = ns.cmd(symlink(parent, name), HOLDER, Some(ino), false);
        let out = ns.holders_write_back(vec![cmd]);
        assert!(out.outcomes[0].is_err(), "{name}: {out:?}");
    }
    assert!(ns.lookup(d.ino, "stray").is_err() && ns.lookup(root, "unleased").is_err());
    assert_eq!(ns.lookup(d.ino, "l").unwrap().ino, reserved.0);
    // The number refused stays free for the holder.
    let cmd = ns.cmd(symlink(d.ino, "m"), HOLDER, Some(second), false);
    assert_eq!(
        attr(ns.holders_write_back(vec![cmd]).outcomes[0].clone()).ino,
        second
    );
}

#[test]
fn a_write_back_moves_between_two_leased_directories_only_what_is_not_another_clients() {
    let (mut ns, root) = Ns::new();
    let a = attr(ns.run(mkdir(root, "a"), HOLDER, None, true));
    let b = attr(ns.run(mkdir(root, "b"), HOLDER, None, true));
    let c = attr(ns.run(mkdir(root, "c"), HOLDER, None, false));
    let f = attr(ns.run(node(a.ino, "f", FileKind::File), HOLDER, None, false));
    let sub = attr(ns.run(mkdir(a.ino, "sub"), HOLDER, None, false));
    let rename = |parent: InodeId, name: &str, new_parent: InodeId, new_name: &str| Op::Rename {
        parent,
        name: name.into(),
        new_parent,
        new_name: new_name.into(),
        flags: RenameFlags::default(),
        creds: Creds::root(),
    };
    let moved = ns.cmd(rename(a.ino, "f", b.ino, "g"), HOLDER, None, false);
    let out = ns.holders_write_back(vec![moved]);
    assert!(out.outcomes[0].is_ok(), "{out:?}");
    assert_eq!(ns.lookup(b.ino, "g").unwrap().ino, f.ino);
    assert!(ns.lookup(a.ino, "f").is_err());
    // Into a directory not leased to the holder; a directory moved, even between two
    // leased to it: refused, nothing moved.
    for (op, what) in [
        (rename(b.ino, "g", c.ino, "h"), "into an unleased directory"),
        (
            rename(a.ino, "sub", b.ino, "sub"),
            "a directory not leased to it",
        ),
    ] {
        let cmd = ns.cmd(op, HOLDER, None, false);
        let out = ns.holders_write_back(vec![cmd]);
        assert!(out.outcomes[0].is_err(), "{what}: {out:?}");
    }
    assert_eq!(ns.lookup(b.ino, "g").unwrap().ino, f.ino);
    assert_eq!(ns.lookup(a.ino, "sub").unwrap().ino, sub.ino);
    assert!(ns.lookup(c.ino, "h").is_err() && ns.lookup(b.ino, "sub").is_err());
    // A directory leased to it moves, and its links with it; into itself it does not.
    let mine = attr(ns.run(mkdir(a.ino, "mine"), HOLDER, None, true));
    let inner = attr(ns.run(mkdir(mine.ino, "inner"), HOLDER, None, true));
    let cmd = ns.cmd(rename(a.ino, "mine", inner.ino, "x"), HOLDER, None, false);
    let out = ns.holders_write_back(vec![cmd]);
    assert!(out.outcomes[0].is_err(), "into itself: {out:?}");
    let cmd = ns.cmd(rename(a.ino, "mine", b.ino, "mine"), HOLDER, None, false);
    let out = ns.holders_write_back(vec![cmd]);
    assert!(out.outcomes[0].is_ok(), "{out:?}");
    assert_eq!(ns.lookup(b.ino, "mine").unwrap().ino, mine.ino);
    assert_eq!(ns.lookup(root, "a").unwrap().nlink, 3, "a keeps sub");
    assert_eq!(ns.lookup(root, "b").unwrap().nlink, 3, "b gained mine");
}

#[test]
fn a_write_back_renames_a_directory_within_its_directory_only_when_it_is_leased_to_the_client() {
    let (mut ns, root) = Ns::new();
    let top = attr(ns.run(mkdir(root, "top"), HOLDER, None, true));
    let mine = attr(ns.run(mkdir(top.ino, "mine"), HOLDER, None, true));
    let theirs = attr(ns.run(mkdir(top.ino, "theirs"), OTHER, None, true));
    let nobodys = attr(ns.run(mkdir(top.ino, "nobodys"), HOLDER, None, false));
    let empty = attr(ns.run(mkdir(top.ino, "empty"), HOLDER, None, true));
    let rename = |name: &str, new_name: &str| Op::Rename {
        parent: top.ino,
        name: name.into(),
        new_parent: top.ino,
        new_name: new_name.into(),
        flags: RenameFlags::default(),
        creds: Creds::root(),
    };
    // Another client's directory, nobody's, or onto a directory not leased to the
    // holder: refused, nothing renamed.
    for (name, new_name) in [
        ("theirs", "a"),
        ("nobodys", "b"),
        ("mine", "theirs"),
        ("mine", "nobodys"),
    ] {
        let cmd = ns.cmd(rename(name, new_name), HOLDER, None, false);
        let out = ns.holders_write_back(vec![cmd]);
        assert!(out.outcomes[0].is_err(), "{name} -> {new_name}: {out:?}");
    }
    assert_eq!(ns.lookup(top.ino, "theirs").unwrap().ino, theirs.ino);
    assert_eq!(ns.lookup(top.ino, "nobodys").unwrap().ino, nobodys.ino);
    assert_eq!(ns.lookup(top.ino, "mine").unwrap().ino, mine.ino);
    // Its own, onto its own empty directory: renamed, the replaced one's lease gone.
    let cmd = ns.cmd(rename("mine", "empty"), HOLDER, None, false);
    let out = ns.holders_write_back(vec![cmd]);
    assert!(out.outcomes[0].is_ok(), "{out:?}");
    assert_eq!(ns.lookup(top.ino, "empty").unwrap().ino, mine.ino);
    assert!(ns.lookup(top.ino, "mine").is_err());
    assert_eq!(ns.holder(empty.ino), None);
    assert_eq!(ns.holder(mine.ino), Some(HOLDER));
}

#[test]
fn a_write_back_links_a_file_into_a_directory_leased_to_the_client_only() {
    let (mut ns, root) = Ns::new();
    let a = attr(ns.run(mkdir(root, "a"), HOLDER, None, true));
    let b = attr(ns.run(mkdir(root, "b"), HOLDER, None, true));
    let c = attr(ns.run(mkdir(root, "c"), HOLDER, None, false));
    let f = attr(ns.run(node(a.ino, "f", FileKind::File), HOLDER, None, false));
    let link = |new_parent: InodeId, ino: InodeId| Op::Link {
        ino,
        new_parent,
        new_name: b"g".to_vec(),
        creds: Creds::root(),
    };
    for (op, what) in [
        (
            link(c.ino, f.ino),
            "into a directory not leased to the holder",
        ),
        (link(b.ino, a.ino), "a directory"),
    ] {
        let cmd = ns.cmd(op, HOLDER, None, false);
        let out = ns.holders_write_back(vec![cmd]);
        assert!(out.outcomes[0].is_err(), "{what}: {out:?}");
    }
    assert!(ns.lookup(c.ino, "g").is_err() && ns.lookup(b.ino, "g").is_err());
    let cmd = ns.cmd(link(b.ino, f.ino), HOLDER, None, false);
    let linked = attr(ns.holders_write_back(vec![cmd]).outcomes[0].clone());
    assert_eq!((linked.ino, linked.nlink), (f.ino, 2));
    assert_eq!(ns.lookup(b.ino, "g").unwrap().ino, f.ino);
}

#[test]
fn a_write_back_removes_no_directory_another_client_holds_and_exchanges_nothing() {
    let (mut ns, root) = Ns::new();
    let top = attr(ns.run(mkdir(root, "top"), HOLDER, None, true));
    let theirs = attr(ns.run(mkdir(top.ino, "theirs"), OTHER, None, true));
    attr(ns.run(mkdir(top.ino, "nobodys"), HOLDER, None, false));
    attr(ns.run(node(top.ino, "f", FileKind::File), HOLDER, None, false));
    let rmdir = |name: &str| Op::Rmdir {
        parent: top.ino,
        name: name.into(),
        creds: Creds::root(),
    };
    let exchange = Op::Rename {
        parent: top.ino,
        name: b"f".to_vec(),
        new_parent: top.ino,
        new_name: b"nobodys".to_vec(),
        flags: RenameFlags {
            exchange: true,
            ..RenameFlags::default()
        },
        creds: Creds::root(),
    };
    for (op, what) in [
        (rmdir("theirs"), "another client's"),
        (exchange, "an exchange"),
    ] {
        let cmd = ns.cmd(op, HOLDER, None, false);
        let out = ns.holders_write_back(vec![cmd]);
        assert!(out.outcomes[0].is_err(), "{what}: {out:?}");
    }
    assert_eq!(ns.lookup(top.ino, "theirs").unwrap().ino, theirs.ino);
    assert_eq!(ns.holder(theirs.ino), Some(OTHER));
    assert_eq!(
        ns.lookup(top.ino, "nobodys").unwrap().kind,
        FileKind::Dir,
        "not exchanged"
    );
    // One nobody holds is removed.
    let cmd = ns.cmd(rmdir("nobodys"), HOLDER, None, false);
    assert!(ns.holders_write_back(vec![cmd]).outcomes[0].is_ok());
    assert!(ns.lookup(top.ino, "nobodys").is_err());
}
