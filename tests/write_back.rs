//! Namespace write-back under directory leases (docs/adr/0006), through real mounts of
//! one region: a mount answers creates, mkdir, symlinks, rmdir, unlink and renames within
//! one directory alone in directories leased to it, and another mount that looks at or
//! changes such a directory sees every one of them first.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use anyhow::Result;
use common::{Region, wait_for};

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .unwrap_or(-1)
}

fn names(dir: &std::path::Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    v.sort();
    Ok(v)
}

/// What one mount answered alone is what another mount finds, at once: a lookup, a
/// listing and a change there wait for it. Two mounts making one name: exactly one wins.
#[test]
fn another_mount_finds_at_once_what_a_mount_answered_alone_and_one_name_is_made_once() -> Result<()>
{
    let region = Region::start()?;
    let (here, there) = (region.mount("here")?, region.mount("there")?);
    let d = here.path.join("d");
    fs::create_dir(&d)?;
    // Changes in a directory made here, answered here.
    for i in 0..50 {
        fs::create_dir(d.join(format!("sub{i:02}")))?;
        fs::create_dir(d.join(format!("sub{i:02}")).join("inner"))?;
    }
    for i in 0..25 {
        fs::remove_dir(d.join(format!("sub{i:02}")).join("inner"))?;
        fs::remove_dir(d.join(format!("sub{i:02}")))?;
    }
    fs::write(d.join("file"), b"data")?;
    fs::write(d.join("gone"), b"data")?;
    fs::remove_file(d.join("gone"))?;
    assert_eq!(errno_of(fs::remove_dir(d.join("sub30"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::create_dir(d.join("sub30"))), libc::EEXIST);
    let excl = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(d.join("file"));
    assert_eq!(errno_of(excl), libc::EEXIST);
    // A file made and written here alone, then closed: its content is durable and whole.
    fs::write(d.join("second"), vec![7u8; 100_000])?;
    fs::remove_file(d.join("second"))?;
    fs::write(d.join("second"), b"again")?;
    // With the kernel's entries dropped, this mount finds again what it made alone.
    fs::write("/proc/sys/vm/drop_caches", "2")?;
    let here_file = fs::metadata(d.join("second"))?;
    assert_eq!(fs::read(d.join("file"))?, b"data");
    assert!(fs::metadata(d.join("sub49").join("inner"))?.is_dir());
    assert_eq!(errno_of(fs::metadata(d.join("gone"))), libc::ENOENT);
    let here_meta = fs::metadata(&d)?;
    assert_eq!(
        here_meta.nlink(),
        2 + 25,
        "the directory's links as answered here"
    );

    // The listing here is answered from what this mount knows, queued changes included.
    let mut want: Vec<String> = (25..50).map(|i| format!("sub{i:02}")).collect();
    want.push("file".into());
    want.push("second".into());
    want.sort();
    assert_eq!(names(&d)?, want);
    assert!(names(&d.join("sub30"))? == ["inner"] && names(&d.join("sub30/inner"))?.is_empty());

    // There, at once (no waiting for a feed): a lookup, then a listing of the directory.
    let td = there.path.join("d");
    assert!(fs::metadata(td.join("sub40").join("inner"))?.is_dir());
    assert_eq!(errno_of(fs::metadata(td.join("sub10"))), libc::ENOENT);
    assert_eq!(names(&td)?, want);
    assert_eq!(fs::read(td.join("file"))?, b"data");
    assert_eq!(fs::read(td.join("second"))?, b"again");
    // What this mount said of a file it made alone is what the servers say.
    let there_file = fs::metadata(td.join("second"))?;
    let seen = |m: &fs::Metadata| (m.ino(), m.size(), m.mode(), m.nlink(), m.uid(), m.gid());
    assert_eq!(seen(&here_file), seen(&there_file));
    assert_eq!(
        (
            here_file.mtime(),
            here_file.mtime_nsec(),
            here_file.ctime(),
            here_file.ctime_nsec()
        ),
        (
            there_file.mtime(),
            there_file.mtime_nsec(),
            there_file.ctime(),
            there_file.ctime_nsec()
        )
    );
    let there_meta = fs::metadata(&td)?;
    assert_eq!(there_meta.ino(), here_meta.ino());
    assert_eq!(there_meta.nlink(), here_meta.nlink());
    assert_eq!(
        fs::metadata(td.join("sub49"))?.ino(),
        fs::metadata(d.join("sub49"))?.ino(),
        "a directory made here alone has the inode number the servers keep"
    );

    // One name made by both mounts: the one answered here first wins; there it exists.
    let e = here.path.join("e");
    fs::create_dir(&e)?;
    fs::create_dir(e.join("same"))?;
    assert_eq!(
        errno_of(fs::create_dir(there.path.join("e").join("same"))),
        libc::EEXIST
    );
    // The lease went back: a name made there is found here, and made once.
    fs::create_dir(there.path.join("e").join("theirs"))?;
    assert_eq!(errno_of(fs::create_dir(e.join("theirs"))), libc::EEXIST);
    fs::create_dir(e.join("mine"))?;
    assert!(fs::metadata(there.path.join("e").join("mine"))?.is_dir());
    Ok(())
}

/// A file a mount made and wrote once under its lease opens from what the mount kept (no
/// query to the servers): it reads back whole with the kernel's pages dropped, and so do
/// files changed again (appended, cut, written with a hole), whose kept extents go. Once
/// another mount writes the file, this one reads the new bytes.
#[test]
fn a_file_made_here_opens_from_what_the_mount_kept_until_it_changes() -> Result<()> {
    let region = Region::start()?;
    let (here, there) = (region.mount("here")?, region.mount("there")?);
    let d = here.path.join("d");
    fs::create_dir(&d)?;
    let first: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let more: Vec<u8> = (0..5_000u32).map(|i| (i % 13) as u8 + 1).collect();
    fs::write(d.join("a"), &first)?;
    fs::write(d.join("empty"), b"")?;
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = File::create(d.join("hole"))?;
        f.seek(SeekFrom::Start(20_000))?;
        f.write_all(b"tail")?;
    }
    let drop_pages = || fs::write("/proc/sys/vm/drop_caches", "3");
    drop_pages()?;
    assert_eq!(fs::read(d.join("a"))?, first);
    assert_eq!(fs::read(d.join("empty"))?, b"");
    let mut holed = vec![0u8; 20_000];
    holed.extend_from_slice(b"tail");
    assert_eq!(fs::read(d.join("hole"))?, holed);

    // Appended: a second commit, whose extents alone are not the file.
    {
        use std::io::Write;
        fs::OpenOptions::new()
            .append(true)
            .open(d.join("a"))?
            .write_all(&more)?;
    }
    drop_pages()?;
    let mut whole = first.clone();
    whole.extend_from_slice(&more);
    assert_eq!(fs::read(d.join("a"))?, whole);
    // Cut short.
    File::options().write(true).open(d.join("a"))?.set_len(10)?;
    drop_pages()?;
    assert_eq!(fs::read(d.join("a"))?, &first[..10]);

    // Written by the other mount (the lease is recalled): read here afresh.
    fs::write(there.path.join("d").join("hole"), b"theirs")?;
    drop_pages()?;
    assert_eq!(fs::read(d.join("hole"))?, b"theirs");
    assert_eq!(fs::read(there.path.join("d").join("a"))?, &first[..10]);
    Ok(())
}

/// A directory a mount made in a directory it does not lease (the root) is found there
/// again after the kernel dropped its caches, from what the mount kept of the name; the
/// name it kept follows every change: this mount's rename at once, another mount's rename
/// once the feed tells.
#[test]
fn a_name_kept_outside_the_leases_follows_renames_here_and_there() -> Result<()> {
    let region = Region::start()?;
    let (here, there) = (region.mount("here")?, region.mount("there")?);
    let drop_entries = || fs::write("/proc/sys/vm/drop_caches", "2");
    let w = here.path.join("w");
    fs::create_dir(&w)?;
    fs::write(w.join("f"), b"in w")?;
    let ino = fs::metadata(&w)?.ino();
    drop_entries()?;
    assert_eq!(fs::metadata(&w)?.ino(), ino);
    assert_eq!(fs::read(w.join("f"))?, b"in w");

    // Renamed here: the old name is gone at once, the new one names the directory.
    fs::rename(&w, here.path.join("w2"))?;
    drop_entries()?;
    assert_eq!(errno_of(fs::metadata(&w)), libc::ENOENT);
    assert_eq!(fs::metadata(here.path.join("w2"))?.ino(), ino);

    // Renamed by the other mount: this one follows once the feed tells it.
    fs::rename(there.path.join("w2"), there.path.join("w3"))?;
    wait_for(
        Duration::from_secs(30),
        "the rename there seen here",
        || {
            drop_entries().ok()?;
            let gone = fs::metadata(here.path.join("w2"))
                .is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT));
            (gone && fs::metadata(here.path.join("w3")).ok()?.ino() == ino).then_some(())
        },
    )?;
    assert_eq!(fs::read(here.path.join("w3").join("f"))?, b"in w");
    Ok(())
}

/// A mount killed with kill -9: what it made before an fsync of the directory survives,
/// and after the recall times out, another mount changes the directory freely; changes
/// the dead mount still held are lost as unsynced changes on a local disk are, never
/// half-applied.
#[test]
fn a_killed_mount_keeps_what_it_synced_and_its_directory_is_usable_after_the_recall_times_out()
-> Result<()> {
    let region = Region::start()?;
    let mut here = region.mount("here")?;
    let there = region.mount("there")?;
    let d = here.path.join("d");
    fs::create_dir(&d)?;
    for i in 0..20 {
        fs::create_dir(d.join(format!("kept{i:02}")))?;
    }
    File::open(&d)?.sync_all()?;
    for i in 0..20 {
        fs::create_dir(d.join(format!("maybe{i:02}")))?;
    }
    here.kill();

    let td = there.path.join("d");
    // The lease is the dead mount's until the recall times out (5 s): the lookup waits.
    let listed = wait_for(Duration::from_secs(60), "the directory there", || {
        names(&td).ok()
    })?;
    for i in 0..20 {
        assert!(listed.contains(&format!("kept{i:02}")), "{listed:?}");
    }
    // What was not synced is there whole or not at all, in order: a prefix.
    let maybe: Vec<&String> = listed.iter().filter(|n| n.starts_with("maybe")).collect();
    for (i, n) in maybe.iter().enumerate() {
        assert_eq!(**n, format!("maybe{i:02}"), "{listed:?}");
    }
    fs::create_dir(td.join("after"))?;
    fs::remove_dir(td.join("kept00"))?;
    assert!(fs::metadata(td.join("after"))?.is_dir());
    Ok(())
}

/// What tar and `cp -p` do to every file they make (write it, set its times, owner and
/// mode, close it) is answered by the mount alone in a directory it leases, queued behind
/// the file's data, and so is a change of the leased directory's own mode: seen here at once, by a lookup here that reaches the servers, and by
/// another mount as soon as it looks (its lookup recalls the lease, which sends the queue
/// first), before the close too. A write after the times moves the mtime on again.
#[test]
fn attribute_changes_of_files_made_under_a_lease_are_answered_here_and_seen_everywhere()
-> Result<()> {
    use std::fs::{FileTimes, Permissions};
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{SystemTime, UNIX_EPOCH};

    let region = Region::start()?;
    let (here, there) = (region.mount("here")?, region.mount("there")?);
    let d = here.path.join("d");
    fs::create_dir(&d)?;
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 241) as u8).collect();
    let old = UNIX_EPOCH + Duration::from_secs(1_153_704_088);
    let times = FileTimes::new().set_accessed(old).set_modified(old);
    let mut f = File::create(d.join("f"))?;
    f.write_all(&data)?;
    f.set_times(times)?;
    std::os::unix::fs::fchown(&f, Some(1234), Some(5678))?;
    f.set_permissions(Permissions::from_mode(0o640))?;
    let check = |m: &fs::Metadata, what: &str| {
        assert_eq!(
            (
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                m.mtime(),
                m.atime(),
                m.size()
            ),
            (0o640, 1234, 5678, 1_153_704_088, 1_153_704_088, 10_000),
            "{what}"
        );
    };
    check(&fs::metadata(d.join("f"))?, "here, from the kernel's cache");
    fs::write("/proc/sys/vm/drop_caches", "3")?;
    check(&fs::metadata(d.join("f"))?, "here, through a lookup");

    // Times set between writes: the later write moves the mtime again.
    let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let mut g = File::create(d.join("g"))?;
    g.write_all(b"first ")?;
    g.set_times(times)?;
    g.write_all(b"second")?;
    drop(g);
    assert!(fs::metadata(d.join("g"))?.mtime() >= started);

    // The leased directory's own mode, answered here too; its lease holds (an entry
    // removed after it is one more change answered here).
    fs::write(d.join("h"), b"soon gone")?;
    fs::set_permissions(&d, Permissions::from_mode(0o750))?;
    fs::remove_file(d.join("h"))?;
    assert_eq!(fs::metadata(&d)?.mode() & 0o7777, 0o750);

    let (f_there, g_there) = (
        there.path.join("d").join("f"),
        there.path.join("d").join("g"),
    );
    assert_eq!(fs::metadata(there.path.join("d"))?.mode() & 0o7777, 0o750);
    assert_eq!(names(&there.path.join("d"))?, ["f", "g"]);
    check(
        &fs::metadata(&f_there)?,
        "there, while the file is open here",
    );
    assert_eq!(fs::read(&f_there)?, data);
    assert!(fs::metadata(&g_there)?.mtime() >= started);
    assert_eq!(fs::read(&g_there)?, b"first second");
    drop(f);
    fs::write("/proc/sys/vm/drop_caches", "3")?;
    check(&fs::metadata(&f_there)?, "there, after the close");
    Ok(())
}

/// The directories leased now, by inode, from `meridian admin leases`.
fn leased_dirs(region: &Region) -> Result<Vec<u64>> {
    let out = std::process::Command::new(common::MERIDIAN)
        .args(["admin", "leases", "--json", "--meta", &region.meta_addrs()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "admin leases: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    Ok(rows.iter().filter_map(|r| r["dir"].as_u64()).collect())
}

/// A directory made before a mount started (here, by a mount without write-back) is
/// leased to a mount that keeps changing its entries, as a database's journal does in a
/// volume's root: the lease brings every entry the directory held, so names made before
/// are known here (an exclusive create of one fails, a lookup finds it, an unlink of it is
/// answered here), and another mount that looks sees every change made here at once and
/// takes the directory back from this mount.
#[test]
fn an_existing_directory_is_leased_on_demand_to_a_mount_that_keeps_changing_it() -> Result<()> {
    let region = Region::start()?;
    let old = {
        let maker = region.mount_with("maker", &["--no-write-back"])?;
        let old = maker.path.join("old");
        fs::create_dir(&old)?;
        fs::write(old.join("before"), b"made before")?;
        fs::create_dir(old.join("sub"))?;
        fs::write(old.join("sub").join("inner"), b"inside")?;
        File::open(&old)?.sync_all()?;
        fs::metadata(&old)?.ino()
    };
    assert!(
        !leased_dirs(&region)?.contains(&old),
        "made without write-back, so not leased at birth"
    );
    let (here, there) = (region.mount("here")?, region.mount("there")?);
    let d = here.path.join("old");
    // A journal made and removed per transaction, as SQLite does in rollback mode.
    let mut rounds = 0;
    wait_for(
        Duration::from_secs(60),
        "the directory leased on demand",
        || {
            rounds += 1;
            fs::write(d.join("db-journal"), b"journal").ok()?;
            fs::remove_file(d.join("db-journal")).ok()?;
            leased_dirs(&region).ok()?.contains(&old).then_some(())
        },
    )?;
    assert!(rounds <= 20, "leased only after {rounds} rounds");

    // What the directory held before is known here, and answered here.
    let excl = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(d.join("before"));
    assert_eq!(errno_of(excl), libc::EEXIST);
    assert_eq!(fs::read(d.join("before"))?, b"made before");
    assert_eq!(errno_of(fs::create_dir(d.join("sub"))), libc::EEXIST);
    assert_eq!(errno_of(fs::remove_dir(d.join("sub"))), libc::ENOTEMPTY);
    assert_eq!(fs::read(d.join("sub").join("inner"))?, b"inside");
    fs::write(d.join("new"), b"made here")?;
    fs::create_dir(d.join("newdir"))?;
    fs::remove_file(d.join("before"))?;
    assert_eq!(errno_of(fs::metadata(d.join("before"))), libc::ENOENT);
    assert_eq!(names(&d)?, ["new", "newdir", "sub"]);
    assert!(leased_dirs(&region)?.contains(&old), "still leased here");

    // Another mount sees all of it at once: its lookup takes the lease back first.
    let td = there.path.join("old");
    assert_eq!(errno_of(fs::metadata(td.join("before"))), libc::ENOENT);
    assert_eq!(names(&td)?, ["new", "newdir", "sub"]);
    assert_eq!(fs::read(td.join("new"))?, b"made here");
    assert!(
        !leased_dirs(&region)?.contains(&old),
        "given back when another mount looked"
    );
    // And changes it there; this mount finds them (nothing it kept is stale).
    fs::write(td.join("theirs"), b"made there")?;
    assert_eq!(fs::read(d.join("theirs"))?, b"made there");
    assert_eq!(
        errno_of(
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(d.join("theirs"))
        ),
        libc::EEXIST
    );
    assert_eq!(names(&d)?, ["new", "newdir", "sub", "theirs"]);
    Ok(())
}

/// A file a mount made is unlinked while still open (a database's journal, whose close
/// the kernel often reports after the unlink that follows it): in a directory the mount
/// leases, it is hidden here without giving the lease back; the descriptor keeps reading
/// and writing it, no listing shows it, and it is removed at its last close.
#[test]
fn a_file_unlinked_while_open_in_a_leased_directory_is_hidden_here_and_removed_at_its_close()
-> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let region = Region::start()?;
    let (here, there) = (region.mount("here")?, region.mount("there")?);
    let d = here.path.join("d");
    fs::create_dir(&d)?;
    let dir_ino = fs::metadata(&d)?.ino();
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(d.join("journal"))?;
    f.write_all(b"still here")?;
    f.sync_all()?;
    fs::remove_file(d.join("journal"))?;
    assert_eq!(errno_of(fs::metadata(d.join("journal"))), libc::ENOENT);
    assert!(names(&d)?.is_empty(), "{:?}", names(&d)?);
    // (Listed by whichever member answers, which may not have applied the grant yet on
    // a loaded host: a lease given back at the unlink would not come back.)
    wait_for(
        Duration::from_secs(10),
        "hidden here: the lease stays",
        || {
            leased_dirs(&region)
                .ok()
                .filter(|l| l.contains(&dir_ino))
                .map(drop)
        },
    )?;
    f.seek(SeekFrom::Start(0))?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    assert_eq!(text, "still here");
    f.write_all(b", and more")?;
    f.sync_all()?;
    // Another mount sees no such name, hidden or not.
    assert!(names(&there.path.join("d"))?.is_empty());
    f.seek(SeekFrom::Start(0))?;
    text.clear();
    f.read_to_string(&mut text)?;
    assert_eq!(text, "still here, and more");
    drop(f);
    // At the last close (reported after close() returns) it goes for real: the servers'
    // listing of the directory, hidden names included, empties.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let meta = region.meta.client();
    let list = meridian_proto::ns::Query::ReadDir {
        ino: meridian_proto::InodeId(dir_ino),
        after: None,
        limit: 100,
        creds: meridian_proto::ns::Creds::root(),
    };
    wait_for(
        Duration::from_secs(30),
        "the hidden file removed",
        || match rt.block_on(meta.query(&list, false)) {
            Ok(meridian_proto::ns::QueryReply::Dir { entries, .. }) if entries.is_empty() => {
                Some(())
            }
            _ => None,
        },
    )?;
    Ok(())
}

/// A stat that reaches the servers waits for the changes queued here only when one of
/// them changes what it reads: a file's other link, removed here alone, shows its link
/// count and ctime moved at once, from the servers.
#[test]
fn a_stat_through_the_servers_sees_a_link_removed_here_alone() -> Result<()> {
    let region = Region::start()?;
    let here = region.mount("here")?;
    let d = here.path.join("d");
    fs::create_dir(&d)?;
    fs::write(d.join("f"), b"two names")?;
    fs::hard_link(d.join("f"), here.path.join("g"))?;
    let before = fs::metadata(here.path.join("g"))?;
    assert_eq!(before.nlink(), 2);
    fs::remove_file(d.join("f"))?;
    let after = fs::metadata(here.path.join("g"))?;
    assert_eq!(after.nlink(), 1, "the unlink answered here is seen");
    assert!(
        (after.ctime(), after.ctime_nsec()) >= (before.ctime(), before.ctime_nsec()),
        "the ctime did not go back"
    );
    assert_eq!(fs::read(here.path.join("g"))?, b"two names");
    Ok(())
}

/// A file written under a temporary name and put in place with a rename, as rsync and
/// editors do, in a directory leased here: answered here without giving the lease back;
/// the replaced file's bytes are gone, another mount finds the new ones under the name,
/// and an exclusive rename onto a taken name fails.
#[test]
fn a_rename_within_a_leased_directory_is_answered_here_and_keeps_the_lease() -> Result<()> {
    let region = Region::start()?;
    let (here, there) = (region.mount("here")?, region.mount("there")?);
    let d = here.path.join("d");
    fs::create_dir(&d)?;
    let dir_ino = fs::metadata(&d)?.ino();
    fs::write(d.join(".config.tmp1"), b"first")?;
    fs::rename(d.join(".config.tmp1"), d.join("config"))?;
    fs::write(d.join(".config.tmp2"), b"second")?;
    let moved = fs::metadata(d.join(".config.tmp2"))?.ino();
    fs::rename(d.join(".config.tmp2"), d.join("config"))?;
    fs::create_dir(d.join("sub"))?;
    assert_eq!(
        errno_of(fs::rename(d.join("config"), d.join("sub"))),
        libc::EISDIR
    );
    assert_eq!(
        errno_of(fs::rename(d.join("absent"), d.join("other"))),
        libc::ENOENT
    );
    fs::write(d.join("taken"), b"taken")?;
    let (from, to) = (
        std::ffi::CString::new(d.join("config").as_os_str().as_encoded_bytes())?,
        std::ffi::CString::new(d.join("taken").as_os_str().as_encoded_bytes())?,
    );
    // SAFETY: two NUL-terminated paths; renameat2 only reads them.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    assert_eq!(fs::read(d.join("config"))?, b"second");
    assert_eq!(fs::metadata(d.join("config"))?.ino(), moved);
    assert_eq!(names(&d)?, ["config", "sub", "taken"]);
    assert!(
        leased_dirs(&region)?.contains(&dir_ino),
        "answered here: the lease stays"
    );
    // Another mount: the name holds the second file, and nothing else is left.
    let td = there.path.join("d");
    assert_eq!(fs::read(td.join("config"))?, b"second");
    assert_eq!(fs::metadata(td.join("config"))?.ino(), moved);
    assert_eq!(names(&td)?, ["config", "sub", "taken"]);
    Ok(())
}

/// A symlink made in a directory leased here (answered here: `fs::lease::tests`) is read
/// here, through the kernel and after its caches are dropped, and elsewhere, under the
/// same number; a name taken is refused here; the lease stays.
#[test]
fn a_symlink_in_a_leased_directory_is_made_here_and_read_here_and_elsewhere() -> Result<()> {
    let region = Region::start()?;
    let (here, there) = (region.mount("here")?, region.mount("there")?);
    let d = here.path.join("d");
    fs::create_dir(&d)?;
    let dir_ino = fs::metadata(&d)?.ino();
    fs::write(d.join("file"), b"data")?;
    std::os::unix::fs::symlink("file", d.join("link"))?;
    std::os::unix::fs::symlink("../elsewhere/x", d.join("dangling"))?;
    let link = fs::symlink_metadata(d.join("link"))?;
    assert!(link.file_type().is_symlink());
    assert_eq!((link.len(), link.uid()), (4, 0));
    for taken in ["link", "file"] {
        assert_eq!(
            errno_of(std::os::unix::fs::symlink("other", d.join(taken))),
            libc::EEXIST
        );
    }
    fs::remove_file(d.join("dangling"))?;
    fs::write("/proc/sys/vm/drop_caches", "2")?;
    assert_eq!(fs::read_link(d.join("link"))?, std::path::Path::new("file"));
    assert_eq!(fs::read(d.join("link"))?, b"data");
    assert_eq!(fs::symlink_metadata(d.join("link"))?.ino(), link.ino());
    assert_eq!(names(&d)?, ["file", "link"]);
    assert!(
        leased_dirs(&region)?.contains(&dir_ino),
        "answered here: the lease stays"
    );
    // Another mount: the same link, number and target; nothing else.
    let td = there.path.join("d");
    assert_eq!(
        fs::read_link(td.join("link"))?,
        std::path::Path::new("file")
    );
    assert_eq!(fs::symlink_metadata(td.join("link"))?.ino(), link.ino());
    assert_eq!(fs::read(td.join("link"))?, b"data");
    assert_eq!(names(&td)?, ["file", "link"]);
    Ok(())
}

/// Mail delivered as maildir does it (written in tmp/, then renamed into new/), both
/// directories leased here: answered here, the leases stay, and another mount finds every
/// message in new/ and none in tmp/; a directory moved between them too.
#[test]
fn a_file_renamed_between_two_leased_directories_is_answered_here_and_seen_elsewhere() -> Result<()>
{
    let region = Region::start()?;
    let (here, there) = (region.mount("here")?, region.mount("there")?);
    let m = here.path.join("Maildir");
    fs::create_dir(&m)?;
    let (tmp, new) = (m.join("tmp"), m.join("new"));
    fs::create_dir(&tmp)?;
    fs::create_dir(&new)?;
    let mut inos = Vec::new();
    for i in 0..20 {
        let name = format!("1700000000.{i}.host");
        fs::write(tmp.join(&name), format!("message {i}"))?;
        inos.push(fs::metadata(tmp.join(&name))?.ino());
        fs::rename(tmp.join(&name), new.join(&name))?;
    }
    // Onto a name taken in new/: the message there is replaced.
    fs::write(tmp.join("again"), b"second")?;
    fs::write(new.join("again"), b"first")?;
    fs::rename(tmp.join("again"), new.join("again"))?;
    assert!(names(&tmp)?.is_empty());
    assert_eq!(names(&new)?.len(), 21);
    let leased = leased_dirs(&region)?;
    for d in [&tmp, &new] {
        assert!(
            leased.contains(&fs::metadata(d)?.ino()),
            "{d:?}: files moved here alone keep the lease"
        );
    }
    // A directory made here moves too, alone, with what it holds; moving it into itself
    // is refused here.
    fs::create_dir(tmp.join("dir"))?;
    fs::create_dir(tmp.join("dir/sub"))?;
    assert_eq!(
        errno_of(fs::rename(tmp.join("dir"), tmp.join("dir/sub/dir"))),
        libc::EINVAL
    );
    fs::rename(tmp.join("dir"), new.join("dir"))?;
    assert_eq!(fs::metadata(&tmp)?.nlink(), 2);
    assert_eq!(fs::metadata(&new)?.nlink(), 3);
    // fsyncdir: what was answered here reached the servers (the directory's birth and its
    // lease with it), before they are asked whom they lease it to.
    File::open(&new)?.sync_all()?;
    let leased = leased_dirs(&region)?;
    for d in [&tmp, &new, &new.join("dir")] {
        assert!(
            leased.contains(&fs::metadata(d)?.ino()),
            "{d:?}: a directory moved alone keeps the leases"
        );
    }
    let (ttmp, tnew) = (
        there.path.join("Maildir/tmp"),
        there.path.join("Maildir/new"),
    );
    assert!(names(&ttmp)?.is_empty());
    let found = names(&tnew)?;
    assert_eq!(found.len(), 22);
    for (i, ino) in inos.iter().enumerate() {
        let p = tnew.join(format!("1700000000.{i}.host"));
        assert_eq!(fs::read(&p)?, format!("message {i}").into_bytes());
        assert_eq!(fs::metadata(&p)?.ino(), *ino);
    }
    assert_eq!(fs::read(tnew.join("again"))?, b"second");
    assert!(fs::metadata(tnew.join("dir/sub"))?.is_dir());
    assert_eq!(fs::metadata(&tnew)?.nlink(), 3);
    Ok(())
}

/// A directory filled under a temporary name and renamed into place (as package managers
/// install), then onto an empty directory: answered here, the leases stay, and another
/// mount finds the contents under the final names.
#[test]
fn a_directory_renamed_within_a_leased_directory_is_answered_here_and_seen_elsewhere() -> Result<()>
{
    let region = Region::start()?;
    let (here, there) = (region.mount("here")?, region.mount("there")?);
    let d = here.path.join("node_modules");
    fs::create_dir(&d)?;
    let staged = d.join(".pkg-1234");
    fs::create_dir(&staged)?;
    fs::write(staged.join("index.js"), b"module.exports = 1;\n")?;
    let pkg_ino = fs::metadata(&staged)?.ino();
    fs::rename(&staged, d.join("pkg"))?;
    fs::create_dir(d.join("empty"))?;
    fs::create_dir(d.join("full"))?;
    fs::write(d.join("full").join("x"), b"x")?;
    assert_eq!(
        errno_of(fs::rename(d.join("pkg"), d.join("full"))),
        libc::ENOTEMPTY
    );
    fs::rename(d.join("pkg"), d.join("empty"))?;
    fs::rename(d.join("empty"), d.join("pkg"))?;
    assert_eq!(names(&d)?, ["full", "pkg"]);
    assert_eq!(fs::read(d.join("pkg/index.js"))?, b"module.exports = 1;\n");
    let leased = leased_dirs(&region)?;
    for dir in [&d, &d.join("pkg")] {
        assert!(
            leased.contains(&fs::metadata(dir)?.ino()),
            "{dir:?}: renamed here alone, the lease stays"
        );
    }
    let td = there.path.join("node_modules");
    assert_eq!(names(&td)?, ["full", "pkg"]);
    assert_eq!(fs::metadata(td.join("pkg"))?.ino(), pkg_ino);
    assert_eq!(fs::read(td.join("pkg/index.js"))?, b"module.exports = 1;\n");
    assert_eq!(fs::metadata(&td)?.nlink(), 4);
    Ok(())
}

/// A hard link made between two leased directories (as backups and package stores share
/// files) is answered here: both names reach one file, counted twice, here and on another
/// mount; the leases stay; removing one name leaves the other.
#[test]
fn a_hard_link_between_leased_directories_is_answered_here_and_seen_elsewhere() -> Result<()> {
    let region = Region::start()?;
    let (here, there) = (region.mount("here")?, region.mount("there")?);
    let (store, project) = (here.path.join("store"), here.path.join("project"));
    fs::create_dir(&store)?;
    fs::create_dir(&project)?;
    fs::write(store.join("pkg.js"), b"shared")?;
    fs::hard_link(store.join("pkg.js"), project.join("pkg.js"))?;
    assert_eq!(
        errno_of(fs::hard_link(store.join("pkg.js"), project.join("pkg.js"))),
        libc::EEXIST
    );
    let (a, b) = (
        fs::metadata(store.join("pkg.js"))?,
        fs::metadata(project.join("pkg.js"))?,
    );
    assert_eq!((a.ino(), a.nlink(), b.nlink()), (b.ino(), 2, 2));
    let leased = leased_dirs(&region)?;
    for d in [&store, &project] {
        assert!(
            leased.contains(&fs::metadata(d)?.ino()),
            "{d:?}: linked here alone, the lease stays"
        );
    }
    let tp = there.path.join("project/pkg.js");
    assert_eq!(fs::read(&tp)?, b"shared");
    let seen = fs::metadata(&tp)?;
    assert_eq!((seen.ino(), seen.nlink()), (a.ino(), 2));
    fs::remove_file(store.join("pkg.js"))?;
    assert_eq!(fs::read(project.join("pkg.js"))?, b"shared");
    assert_eq!(fs::metadata(project.join("pkg.js"))?.nlink(), 1);
    Ok(())
}

/// A name this mount kept from its own change through the servers, before the directory
/// was leased to it, names something else once renames answered alone moved it: a
/// lookup after the kernel dropped its entries finds what the name holds now.
#[test]
fn a_name_kept_before_a_lease_does_not_outlive_renames_answered_alone() -> Result<()> {
    let region = Region::start()?;
    let maker = region.mount_with("maker", &["--no-write-back"])?;
    let here = region.mount("here")?;
    fs::create_dir(maker.path.join("p"))?;
    let p = here.path.join("p");
    let p_ino = fs::metadata(&p)?.ino();
    for i in 0..3 {
        fs::write(p.join(format!("y{i}")), b"y")?;
    }
    // The fourth change: the lease of p is asked for; d is leased here at birth.
    fs::create_dir(p.join("d"))?;
    wait_for(Duration::from_secs(20), "p leased here", || {
        leased_dirs(&region).ok().filter(|l| l.contains(&p_ino))
    })?;
    let file = fs::metadata(p.join("y0"))?.ino();
    fs::rename(p.join("d"), p.join("e"))?;
    fs::rename(p.join("y0"), p.join("d"))?;
    fs::write("/proc/sys/vm/drop_caches", "2")?;
    let found = fs::symlink_metadata(p.join("d"))?;
    assert!(found.is_file(), "p/d is the file now");
    assert_eq!(found.ino(), file);
    assert!(fs::metadata(p.join("e"))?.is_dir());
    Ok(())
}

/// A mount holds at most `--leased-names` names of the directories leased to it: past
/// them, the leases it used least recently go back to the servers, with every change
/// made under them, and what it made there stays as it was, here and on another mount;
/// changes there go on (through the servers).
#[test]
fn past_its_budget_of_names_a_mount_gives_back_the_leases_it_used_least_recently() -> Result<()> {
    let region = Region::start()?;
    let here = region.mount_with("here", &["--leased-names", "1000"])?;
    let mut inos = Vec::new();
    for name in ["a", "b", "c"] {
        let d = here.path.join(name);
        fs::create_dir(&d)?;
        inos.push(fs::metadata(&d)?.ino());
        for i in 0..400 {
            fs::write(d.join(format!("f{i:03}")), format!("{name}{i}"))?;
        }
    }
    // 1,200 names: a, the least recently used, went back once c passed the budget.
    wait_for(
        Duration::from_secs(60),
        "the oldest lease given back",
        || {
            let held = leased_dirs(&region).ok()?;
            (!held.contains(&inos[0])).then_some(held)
        },
    )
    .map(|held| {
        assert!(
            held.contains(&inos[1]) && held.contains(&inos[2]),
            "b and c, within the budget, are still leased: {held:?}"
        );
    })?;
    let there = region.mount("there")?;
    for (name, mount) in [("a", &here), ("c", &here), ("a", &there), ("c", &there)] {
        let d = mount.path.join(name);
        let listed = names(&d)?;
        assert_eq!(listed.len(), 400, "{name} on {:?}", mount.path);
        for i in [0, 199, 399] {
            assert_eq!(
                fs::read_to_string(d.join(format!("f{i:03}")))?,
                format!("{name}{i}")
            );
        }
    }
    // The directory given back still takes changes here, and they are seen there.
    fs::write(here.path.join("a").join("later"), b"after the lease")?;
    fs::remove_file(here.path.join("a").join("f000"))?;
    assert_eq!(
        fs::read(there.path.join("a").join("later"))?,
        b"after the lease"
    );
    assert_eq!(
        errno_of(fs::metadata(there.path.join("a").join("f000"))),
        libc::ENOENT
    );
    Ok(())
}
