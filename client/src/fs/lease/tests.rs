//! What the mount answers alone under its leases, checked without servers.

use super::*;
use crate::fs::test_attr as attr;
use crate::meta::MetaClient;
use meridian_proto::ns::{RenameFlags, SYMLINK_MAX, WRITE_BACK_LEVEL};

use super::send::Next;

/// A name a rename answered here gave a file the servers do not know there yet: a
/// lookup of it that reaches the servers waits for the queue until the rename is
/// answered; the name it replaced no longer keeps the replaced file's attributes.
#[test]
fn a_name_renamed_here_is_looked_up_at_the_servers_only_after_the_queue() {
    let leases = Leases::new(true, MAX_NAMES);
    let meta = MetaClient::new(vec!["127.0.0.1:1".into()]);
    let (dir, a, b) = (InodeId(10), InodeId(11), InodeId(12));
    {
        let mut s = leases.lock();
        s.level = WRITE_BACK_LEVEL;
        let mut d = LeasedDir::born(attr(10, FileKind::Dir));
        d.entries.insert(b"a".to_vec(), (a, FileKind::File));
        d.entries.insert(b"b".to_vec(), (b, FileKind::File));
        s.dirs.insert(dir, d);
        s.keep_file(&attr(12, FileKind::File));
    }
    assert!(leases.lookup_is_current(dir, b"a"));
    let creds = Creds::root();
    let asked = Asked {
        parent: dir,
        name: b"a",
        creds: &creds,
    };
    let flags = RenameFlags::default();
    assert_eq!(
        leases.rename(&meta, &asked, dir, b"b", flags, false),
        Some(Ok(()))
    );
    assert_eq!(leases.entry(dir, b"b"), Some((a, FileKind::File)));
    assert_eq!(leases.entry(dir, b"a"), None);
    assert!(
        !leases.lookup_is_current(dir, b"b"),
        "queued: the servers would still answer the replaced file"
    );
    assert!(leases.kept_file(b).is_none());
    // An exclusive rename onto a taken name, a rename of an absent name, and one
    // onto a file open here (left to the servers).
    let noreplace = RenameFlags {
        noreplace: true,
        ..RenameFlags::default()
    };
    let again = Asked {
        parent: dir,
        name: b"b",
        creds: &creds,
    };
    assert_eq!(
        leases.rename(&meta, &asked, dir, b"c", flags, false),
        Some(Err(libc_errno::ENOENT))
    );
    leases
        .lock()
        .dirs
        .get_mut(&dir)
        .unwrap()
        .entries
        .insert(b"c".to_vec(), (InodeId(13), FileKind::File));
    assert_eq!(
        leases.rename(&meta, &again, dir, b"c", noreplace, false),
        Some(Err(libc_errno::EEXIST))
    );
    assert_eq!(leases.rename(&meta, &again, dir, b"c", flags, true), None);
    // Sent and answered: the servers know it.
    let sent: Vec<Queued> = leases.lock().queue.drain(..).collect();
    assert_eq!(sent.len(), 1);
    for q in &sent {
        leases.lock().sent_change(q);
    }
    assert!(leases.lookup_is_current(dir, b"b"));
}

/// A symlink in a leased directory is made here at a reserved number, its target read
/// here until the file is forgotten, and queued for the servers; a name taken, or a
/// target they would refuse, is not.
#[test]
fn a_symlink_is_made_here_at_a_reserved_number_and_its_target_read_here() {
    let leases = Leases::new(true, MAX_NAMES);
    let meta = MetaClient::new(vec!["127.0.0.1:1".into()]);
    let dir = InodeId(10);
    {
        let mut s = leases.lock();
        s.level = WRITE_BACK_LEVEL;
        let mut d = LeasedDir::born(attr(10, FileKind::Dir));
        d.entries
            .insert(b"taken".to_vec(), (InodeId(11), FileKind::File));
        s.dirs.insert(dir, d);
        s.reserved.push_back((100, 102));
    }
    let creds = Creds::root();
    let asked = |name: &'static [u8]| Asked {
        parent: dir,
        name,
        creds: &creds,
    };
    let made = leases
        .symlink(&meta, &asked(b"l"), b"../target")
        .expect("answered here")
        .expect("made");
    assert_eq!(
        (made.ino, made.kind, made.size, made.perm),
        (InodeId(100), FileKind::Symlink, 9, 0o777)
    );
    assert_eq!(
        leases.entry(dir, b"l"),
        Some((InodeId(100), FileKind::Symlink))
    );
    assert_eq!(leases.lookup(dir, b"l"), Some(Ok(made.clone())));
    assert_eq!(
        leases.target(InodeId(100)).as_deref(),
        Some(&b"../target"[..])
    );
    assert_eq!(
        leases.symlink(&meta, &asked(b"taken"), b"x"),
        Some(Err(libc_errno::EEXIST))
    );
    for target in [&b""[..], b"a\0b", &[b'a'; SYMLINK_MAX + 1]] {
        assert_eq!(leases.symlink(&meta, &asked(b"bad"), target), None);
    }
    let queued: Vec<Queued> = leases.lock().queue.clone();
    assert_eq!(queued.len(), 1);
    assert!(matches!(
        &queued[0],
        Queued { op: Op::Symlink { name, target, .. }, ino: Some(InodeId(100)), .. }
            if name == b"l" && target == b"../target"
    ));
    // Unlinked: neither its attributes nor its target are kept.
    assert_eq!(
        leases.unlink(&meta, &asked(b"l"), Some(InodeId(100))),
        Some(Ok(()))
    );
    assert_eq!(leases.target(InodeId(100)), None);
    assert_eq!(leases.lookup(dir, b"l"), Some(Err(libc_errno::ENOENT)));
}

/// A file renamed from one leased directory to another is answered here: it leaves the
/// first and replaces what the second named; a directory moved, or a destination not
/// leased here, goes to the servers.
#[test]
fn a_file_renamed_between_two_leased_directories_is_answered_here() {
    let leases = Leases::new(true, MAX_NAMES);
    let meta = MetaClient::new(vec!["127.0.0.1:1".into()]);
    let (tmp, new, sub, mail, old) = (
        InodeId(10),
        InodeId(20),
        InodeId(11),
        InodeId(12),
        InodeId(21),
    );
    {
        let mut s = leases.lock();
        s.level = WRITE_BACK_LEVEL;
        let mut d = LeasedDir::born(attr(10, FileKind::Dir));
        d.entries.insert(b"mail".to_vec(), (mail, FileKind::File));
        d.entries.insert(b"sub".to_vec(), (sub, FileKind::Dir));
        s.dirs.insert(tmp, d);
        let mut d = LeasedDir::born(attr(20, FileKind::Dir));
        d.entries.insert(b"1".to_vec(), (old, FileKind::File));
        s.dirs.insert(new, d);
        s.keep_file(&attr(21, FileKind::File));
    }
    let creds = Creds::root();
    let asked = |name: &'static [u8]| Asked {
        parent: tmp,
        name,
        creds: &creds,
    };
    let flags = RenameFlags::default();
    assert_eq!(
        leases.rename(&meta, &asked(b"sub"), new, b"sub", flags, false),
        None,
        "a directory moved"
    );
    assert_eq!(
        leases.rename(&meta, &asked(b"mail"), InodeId(30), b"1", flags, false),
        None,
        "to a directory not leased here"
    );
    assert_eq!(
        leases.rename(&meta, &asked(b"mail"), new, b"1", flags, false),
        Some(Ok(()))
    );
    assert_eq!(leases.entry(tmp, b"mail"), None);
    assert_eq!(leases.entry(new, b"1"), Some((mail, FileKind::File)));
    assert!(leases.kept_file(old).is_none(), "the file replaced");
    assert_eq!(
        leases.rename(&meta, &asked(b"mail"), new, b"2", flags, false),
        Some(Err(libc_errno::ENOENT))
    );
    let queued: Vec<Queued> = leases.lock().queue.clone();
    assert!(matches!(
        &queued[..],
        [Queued { op: Op::Rename { parent, new_parent, .. }, .. }]
            if *parent == tmp && *new_parent == new
    ));
    assert!(!leases.lookup_is_current(new, b"1"));
}

/// A directory leased here is renamed here, onto a free name or an empty directory
/// leased here, within its directory or to another leased here; not onto a file, a
/// directory not empty, nor into itself; a directory not leased here, or with one under
/// it that is not, goes to the servers.
#[test]
fn a_directory_leased_here_is_renamed_here() {
    let leases = Leases::new(true, MAX_NAMES);
    let meta = MetaClient::new(vec!["127.0.0.1:1".into()]);
    let (top, other, x, empty, full, unleased, file) = (
        InodeId(10),
        InodeId(20),
        InodeId(11),
        InodeId(12),
        InodeId(13),
        InodeId(14),
        InodeId(15),
    );
    {
        let mut s = leases.lock();
        s.level = WRITE_BACK_LEVEL;
        let mut d = LeasedDir::born(attr(10, FileKind::Dir));
        for (name, ino, kind) in [
            (&b"x"[..], x, FileKind::Dir),
            (b"empty", empty, FileKind::Dir),
            (b"full", full, FileKind::Dir),
            (b"unleased", unleased, FileKind::Dir),
            (b"file", file, FileKind::File),
        ] {
            d.entries.insert(name.to_vec(), (ino, kind));
        }
        d.attr.nlink = 6;
        s.dirs.insert(top, d);
        s.dirs
            .insert(other, LeasedDir::born(attr(20, FileKind::Dir)));
        for ino in [x, empty] {
            s.dirs
                .insert(ino, LeasedDir::born(attr(ino.0, FileKind::Dir)));
        }
        let mut f = LeasedDir::born(attr(13, FileKind::Dir));
        f.entries
            .insert(b"in".to_vec(), (InodeId(16), FileKind::Dir));
        s.dirs.insert(full, f);
    }
    let creds = Creds::root();
    let asked = |name: &'static [u8]| Asked {
        parent: top,
        name,
        creds: &creds,
    };
    let flags = RenameFlags::default();
    let rename = |name: &'static [u8], to: InodeId, new_name: &[u8]| {
        leases.rename(&meta, &asked(name), to, new_name, flags, false)
    };
    assert_eq!(
        rename(b"full", other, b"full"),
        None,
        "moved elsewhere with a directory under it not leased here"
    );
    assert_eq!(rename(b"unleased", top, b"y"), None, "not leased here");
    assert_eq!(rename(b"x", top, b"file"), Some(Err(libc_errno::ENOTDIR)));
    assert_eq!(rename(b"file", top, b"x"), Some(Err(libc_errno::EISDIR)));
    assert_eq!(rename(b"x", top, b"full"), Some(Err(libc_errno::ENOTEMPTY)));
    assert!(leases.lock().queue.is_empty());
    assert_eq!(rename(b"x", top, b"y"), Some(Ok(())));
    assert_eq!(leases.entry(top, b"y"), Some((x, FileKind::Dir)));
    assert_eq!(leases.attr(top).map(|a| a.nlink), Some(6));
    assert_eq!(rename(b"y", top, b"empty"), Some(Ok(())));
    assert_eq!(leases.entry(top, b"empty"), Some((x, FileKind::Dir)));
    assert_eq!(leases.entry(top, b"y"), None);
    assert!(
        leases.attr(empty).is_none(),
        "the directory replaced is gone"
    );
    assert_eq!(leases.attr(top).map(|a| a.nlink), Some(5));
    assert!(leases.attr(x).is_some(), "the one moved stays leased");
    assert_eq!(leases.lock().queue.len(), 2);
    // To another leased directory: the links move with it; into itself: EINVAL.
    assert_eq!(
        rename(b"empty", x, b"inside"),
        Some(Err(libc_errno::EINVAL))
    );
    assert_eq!(rename(b"empty", other, b"x"), Some(Ok(())));
    assert_eq!(leases.entry(other, b"x"), Some((x, FileKind::Dir)));
    assert_eq!(leases.attr(top).map(|a| a.nlink), Some(4));
    assert_eq!(leases.attr(other).map(|a| a.nlink), Some(3));
}

/// A hard link of a file kept here, into a leased directory, is made here: the name is
/// added and the file's links counted; a name taken is refused; a file not kept here, or
/// a directory not leased here, goes to the servers.
#[test]
fn a_hard_link_of_a_file_kept_here_is_made_here() {
    let leases = Leases::new(true, MAX_NAMES);
    let meta = MetaClient::new(vec!["127.0.0.1:1".into()]);
    let (a, b, file, stranger) = (InodeId(10), InodeId(20), InodeId(11), InodeId(12));
    {
        let mut s = leases.lock();
        s.level = WRITE_BACK_LEVEL;
        let mut d = LeasedDir::born(attr(10, FileKind::Dir));
        d.entries.insert(b"f".to_vec(), (file, FileKind::File));
        s.dirs.insert(a, d);
        s.dirs.insert(b, LeasedDir::born(attr(20, FileKind::Dir)));
        let mut f = attr(11, FileKind::File);
        f.nlink = 1;
        s.keep_file(&f);
    }
    let creds = Creds::root();
    let asked = |parent: InodeId, name: &'static [u8]| Asked {
        parent,
        name,
        creds: &creds,
    };
    assert_eq!(leases.link(&meta, &asked(b, b"g"), stranger), None);
    assert_eq!(leases.link(&meta, &asked(InodeId(30), b"g"), file), None);
    assert_eq!(
        leases.link(&meta, &asked(a, b"f"), file),
        Some(Err(libc_errno::EEXIST))
    );
    let linked = leases
        .link(&meta, &asked(b, b"g"), file)
        .expect("answered here")
        .expect("linked");
    assert_eq!((linked.ino, linked.nlink), (file, 2));
    assert_eq!(leases.kept_file(file).map(|f| f.nlink), Some(2));
    assert_eq!(leases.entry(b, b"g"), Some((file, FileKind::File)));
    assert_eq!(leases.lookup(b, b"g"), Some(Ok(linked)));
    let queued: Vec<Queued> = leases.lock().queue.clone();
    assert!(matches!(
        &queued[..],
        [Queued { op: Op::Link { ino, new_parent, .. }, .. }] if *ino == file && *new_parent == b
    ));
}

/// A mount newer than its leader answers alone only what the leader's last write-back
/// answer said it takes: nothing beyond creates and removals from an older leader (level
/// 0), renames of files within a directory from level 1, the rest from level 2.
#[test]
fn what_the_leader_would_refuse_is_not_answered_here() {
    let leases = Leases::new(true, MAX_NAMES);
    let meta = MetaClient::new(vec!["127.0.0.1:1".into()]);
    let (dir, other, file, sub) = (InodeId(10), InodeId(20), InodeId(11), InodeId(12));
    {
        let mut s = leases.lock();
        let mut d = LeasedDir::born(attr(10, FileKind::Dir));
        d.entries.insert(b"f".to_vec(), (file, FileKind::File));
        d.entries.insert(b"sub".to_vec(), (sub, FileKind::Dir));
        s.dirs.insert(dir, d);
        s.dirs
            .insert(other, LeasedDir::born(attr(20, FileKind::Dir)));
        s.dirs.insert(sub, LeasedDir::born(attr(12, FileKind::Dir)));
        s.keep_file(&attr(11, FileKind::File));
        s.reserved.push_back((100, 200));
    }
    let creds = Creds::root();
    let asked = |name: &'static [u8]| Asked {
        parent: dir,
        name,
        creds: &creds,
    };
    let flags = RenameFlags::default();
    for level in [0, 1] {
        leases.lock().level = level;
        assert_eq!(leases.symlink(&meta, &asked(b"l"), b"f"), None);
        assert_eq!(leases.link(&meta, &asked(b"g"), file), None);
        assert_eq!(
            leases.rename(&meta, &asked(b"f"), other, b"f", flags, false),
            None
        );
        assert_eq!(
            leases.rename(&meta, &asked(b"sub"), dir, b"sub2", flags, false),
            None
        );
    }
    leases.lock().level = 0;
    assert_eq!(
        leases.rename(&meta, &asked(b"f"), dir, b"f2", flags, false),
        None
    );
    assert!(leases.lock().queue.is_empty());
    leases.lock().level = 1;
    assert_eq!(
        leases.rename(&meta, &asked(b"f"), dir, b"f2", flags, false),
        Some(Ok(()))
    );
    leases.lock().level = WRITE_BACK_LEVEL;
    assert!(matches!(
        leases.symlink(&meta, &asked(b"l"), b"f2"),
        Some(Ok(_))
    ));
}

/// A directory renamed alone, recalled while its rename waits beyond the first batch of a
/// long queue, goes back with the batch holding the rename, not before it (the leader
/// takes a directory renamed only under its lease).
#[test]
fn a_lease_goes_back_after_the_batch_that_renames_its_directory() {
    let leases = Leases::new(true, MAX_NAMES);
    let meta = MetaClient::new(vec!["127.0.0.1:1".into()]);
    let (top, x) = (InodeId(10), InodeId(11));
    {
        let mut s = leases.lock();
        s.level = WRITE_BACK_LEVEL;
        let mut d = LeasedDir::born(attr(10, FileKind::Dir));
        d.entries.insert(b"x".to_vec(), (x, FileKind::Dir));
        s.dirs.insert(top, d);
        s.dirs.insert(x, LeasedDir::born(attr(11, FileKind::Dir)));
        s.reserved.push_back((100, 100 + MAX_QUEUED as u64));
    }
    let creds = Creds::root();
    let name = |i: usize| format!("f{i}").into_bytes();
    for i in 0..2100 {
        let n = name(i);
        let asked = Asked {
            parent: top,
            name: &n,
            creds: &creds,
        };
        assert!(matches!(
            leases.create(&meta, &asked, 0o644, true),
            Some(Ok(_))
        ));
    }
    let asked = Asked {
        parent: top,
        name: b"x",
        creds: &creds,
    };
    let flags = RenameFlags::default();
    assert_eq!(
        leases.rename(&meta, &asked, top, b"y", flags, false),
        Some(Ok(()))
    );
    // Another client looks at the directory renamed: it goes back.
    assert_eq!(leases.give_back(&[x]), vec![x]);
    let mut s = leases.lock();
    let (first, release, _, _) = s.next_batch();
    assert_eq!(first.len(), 2048);
    assert!(release.is_empty(), "the rename is in the next batch");
    let (second, release, _, _) = s.next_batch();
    assert!(matches!(
        second.last(),
        Some(Queued {
            op: Op::Rename { .. },
            ..
        })
    ));
    assert_eq!(release, vec![x]);
}

/// Past the budget of names, the leases go back in order: a directory too large to hold
/// alone first, then the least recently used (looked up, listed or changed here), until
/// three quarters of the budget are left; empty directories stay.
#[test]
fn past_the_budget_of_names_the_least_recently_used_leases_go_back() {
    let leases = Leases::new(true, MAX_NAMES);
    let fill = |s: &mut State, dir: u64, names: usize| {
        let mut d = LeasedDir::born(attr(dir, FileKind::Dir));
        for i in 0..names {
            let ino = InodeId(dir * 10_000 + i as u64);
            d.entries
                .insert(format!("f{i}").into_bytes(), (ino, FileKind::File));
        }
        s.hold(InodeId(dir), d);
    };
    let (a, b, c, empty) = (InodeId(1), InodeId(2), InodeId(3), InodeId(4));
    {
        let mut s = leases.lock();
        fill(&mut s, 1, 300);
        fill(&mut s, 2, 300);
        fill(&mut s, 3, 300);
        fill(&mut s, 4, 0);
        assert!(s.over_budget(900).is_empty(), "within the budget");
        assert_eq!(s.over_budget(800), vec![a]);
        assert_eq!(s.over_budget(500), vec![a, b]);
    }
    // Used since: a lookup of a, a listing of b; c is the oldest now.
    assert_eq!(leases.lookup(a, b"absent"), Some(Err(libc_errno::ENOENT)));
    assert!(leases.listing(b, |_| true).is_some());
    let mut s = leases.lock();
    assert_eq!(s.over_budget(800), vec![c]);
    // A directory larger than the budget goes first, however recently used.
    fill(&mut s, 5, 1000);
    assert_eq!(s.over_budget(800), vec![InodeId(5), c]);
    // Below every directory's size, each goes (by use), but not the empty one.
    assert_eq!(s.over_budget(100), vec![c, a, b, InodeId(5)]);
    assert!(!s.over_budget(0).contains(&empty));
}

/// Queues an unlink in `dir` with nobody waiting for it.
fn queue_unlink(leases: &Leases, meta: &MetaClient, dir: InodeId, name: &[u8]) {
    let op = Op::Unlink {
        parent: dir,
        name: name.to_vec(),
        creds: Creds::root(),
    };
    let mut s = leases.lock();
    leases.enqueue(&mut s, meta, op, now(), None);
}

/// A durability point finds no batch out: it sends the queue itself, with no sending task
/// running (none is started here), and its answer is taken as the task takes one (here
/// nobody answers: the change counts as a failure); a batch out keeps it from sending
/// another beside it. A change sent after the queue goes with it, sent by its caller.
#[tokio::test]
async fn a_durability_point_sends_the_queue_itself_when_no_batch_is_out() {
    let leases = Arc::new(Leases::new(true, MAX_NAMES));
    let meta = Arc::new(
        MetaClient::new(vec!["127.0.0.1:1".into()]).with_retry_for(Duration::from_millis(100)),
    );
    let send = |leases: &Arc<Leases>, meta: &Arc<MetaClient>| {
        let (leases, meta) = (leases.clone(), meta.clone());
        move |batch| -> Sending {
            Box::pin(async move {
                leases.send_batch(&meta, batch, false).await;
            })
        }
    };
    queue_unlink(&leases, &meta, InodeId(10), b"a");
    queue_unlink(&leases, &meta, InodeId(10), b"b");
    tokio::time::timeout(
        Duration::from_secs(20),
        leases.settle_here(send(&leases, &meta)),
    )
    .await
    .expect("settled with no sending task");
    assert_eq!(leases.failures(), 2, "both changes sent, and refused");
    assert!(leases.lock().queue.is_empty());
    assert!(!leases.lock().sending);

    // A batch out (the sending task's): the caller does not send beside it, and waits.
    queue_unlink(&leases, &meta, InodeId(10), b"c");
    let out = leases.take_batch();
    assert!(matches!(out, Next::Batch(_)));
    queue_unlink(&leases, &meta, InodeId(10), b"d");
    let waiting = tokio::time::timeout(
        Duration::from_millis(300),
        leases.settle_here(send(&leases, &meta)),
    )
    .await;
    assert!(waiting.is_err(), "did not settle while a batch was out");
    assert_eq!(
        leases.lock().queue.len(),
        1,
        "the queue left to the batch's sender"
    );
    let Next::Batch(batch) = out else {
        unreachable!()
    };
    leases.send_batch(&meta, batch, true).await;
    // The next durability point sends what is left itself.
    tokio::time::timeout(
        Duration::from_secs(20),
        leases.settle_here(send(&leases, &meta)),
    )
    .await
    .expect("settled");
    assert_eq!(leases.failures(), 4);

    // A change sent after the queue, whose caller waits for its outcome: sent with the
    // queue by that caller.
    queue_unlink(&leases, &meta, InodeId(10), b"e");
    let op = Op::Unlink {
        parent: InodeId(10),
        name: b"f".to_vec(),
        creds: Creds::root(),
    };
    let outcome = leases.submit(&meta, op).expect("something is queued");
    leases.send_here(send(&leases, &meta)).await;
    let outcome = tokio::time::timeout(Duration::from_secs(1), outcome)
        .await
        .expect("answered when its sender was done")
        .expect("an outcome");
    assert!(outcome.is_err(), "nobody answered: {outcome:?}");
    assert_eq!(leases.failures(), 5, "the change queued before it");
    assert!(!leases.lock().sending);
}

/// A batch taken off the queue is sent and answered even if the caller that sends it is
/// dropped first: the rest goes on in a task.
#[tokio::test]
async fn a_batch_whose_sender_is_dropped_is_still_sent_and_answered() {
    let leases = Arc::new(Leases::new(true, MAX_NAMES));
    let meta = Arc::new(
        MetaClient::new(vec!["127.0.0.1:1".into()]).with_retry_for(Duration::from_millis(100)),
    );
    queue_unlink(&leases, &meta, InodeId(10), b"a");
    let (gate_tx, gate) = tokio::sync::oneshot::channel::<()>();
    let (l, m) = (leases.clone(), meta.clone());
    let send = move |batch| -> Sending {
        Box::pin(async move {
            let _ = gate.await;
            l.send_batch(&m, batch, false).await;
        })
    };
    // Dropped while its batch waits at the gate.
    let dropped = tokio::time::timeout(Duration::from_millis(100), leases.settle_here(send)).await;
    assert!(dropped.is_err());
    assert!(leases.lock().sending, "the batch is out");
    gate_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), leases.settle())
        .await
        .expect("the batch answered after its sender was dropped");
    assert_eq!(leases.failures(), 1);
    assert!(!leases.lock().sending);
}
