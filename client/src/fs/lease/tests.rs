//! What the mount answers alone under its leases, checked without servers.

use super::*;
use crate::fs::test_attr as attr;
use crate::meta::MetaClient;
use meridian_proto::ns::RenameFlags;

/// A name a rename answered here gave a file the servers do not know there yet: a
/// lookup of it that reaches the servers waits for the queue until the rename is
/// answered; the name it replaced no longer keeps the replaced file's attributes.
#[test]
fn a_name_renamed_here_is_looked_up_at_the_servers_only_after_the_queue() {
    let leases = Leases::new(true);
    let meta = MetaClient::new(vec!["127.0.0.1:1".into()]);
    let (dir, a, b) = (InodeId(10), InodeId(11), InodeId(12));
    {
        let mut s = leases.lock();
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
        leases.rename(&meta, &asked, b"b", flags, false),
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
        leases.rename(&meta, &asked, b"c", flags, false),
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
        leases.rename(&meta, &again, b"c", noreplace, false),
        Some(Err(libc_errno::EEXIST))
    );
    assert_eq!(leases.rename(&meta, &again, b"c", flags, true), None);
    // Sent and answered: the servers know it.
    let sent: Vec<Queued> = leases.lock().queue.drain(..).collect();
    assert_eq!(sent.len(), 1);
    for q in &sent {
        leases.lock().sent_change(q);
    }
    assert!(leases.lookup_is_current(dir, b"b"));
}
