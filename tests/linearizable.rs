//! Linearizability (issue 17): clients in two regions read and write a few files of a
//! volume with a home region, through `--linearizable` mounts, while the link is delayed,
//! cut and healed and the home moves; the history they record is checked by a small
//! Wing–Gong checker and must pass. The same kind of history on an active-active volume
//! is shown not to be linearizable, as expected.
//!
//! Each file is a register: a write puts a whole new file in place with a rename (atomic),
//! a read reads the file. Every file holds "init" before the clients start.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::linearizability::{Event, Kind, check};
use common::pair::Pair;
use common::wait_for;

const KEYS: [&str; 3] = ["x", "y", "z"];
/// What every key holds before the clients start.
const INIT: &str = "init";

/// What every client did, against one clock.
struct Recorder {
    origin: Instant,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            origin: Instant::now(),
            events: Mutex::new(Vec::new()),
        })
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn write(&self, client: usize, dir: &Path, key: &str, value: &str) {
        let tmp = dir.join(format!(".w-{client}-{value}"));
        let called = self.now();
        // The new content is in a file of its own before it is put in place.
        if fs::write(&tmp, value).is_err() {
            return; // nothing was put in place
        }
        let returned = fs::rename(&tmp, dir.join(key)).ok().map(|_| self.now());
        self.events.lock().unwrap().push(Event {
            client,
            key: key.into(),
            kind: Kind::Write,
            value: Some(value.into()),
            called,
            returned,
        });
    }

    fn read(&self, client: usize, dir: &Path, key: &str) -> Option<String> {
        let called = self.now();
        // Every key holds a value from the start and is never removed, so a read that
        // fails, NotFound included, tells nothing: a file replaced by another client
        // between this open and its read is gone (its data is not kept for handles open
        // in other mounts).
        let value = match fs::read_to_string(dir.join(key)) {
            Ok(v) => Some(v),
            Err(_) => return None,
        };
        let returned = Some(self.now());
        self.events.lock().unwrap().push(Event {
            client,
            key: key.into(),
            kind: Kind::Read,
            value: value.clone(),
            called,
            returned,
        });
        value
    }

    fn history(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

/// `ops` reads and writes of client `client` in `dir`, drawn from `seed`.
fn client(rec: Arc<Recorder>, client: usize, dir: PathBuf, ops: usize, seed: u64) {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for i in 0..ops {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let key = KEYS[(x >> 33) as usize % KEYS.len()];
        if (x >> 40).is_multiple_of(2) {
            rec.write(client, &dir, key, &format!("c{client}-{seed}-{i}"));
        } else {
            rec.read(client, &dir, key);
        }
    }
}

/// Two clients in each of `dirs` (one mount per region), `ops` operations each.
fn round(rec: &Arc<Recorder>, dirs: &[(&Path, usize)], seed: u64) {
    let mut threads = Vec::new();
    for (r, (dir, ops)) in dirs.iter().enumerate() {
        for k in 0..2 {
            let (rec, dir, ops) = (rec.clone(), dir.to_path_buf(), *ops);
            let id = r * 2 + k;
            threads.push(thread::spawn(move || {
                client(rec, id, dir, ops, seed * 10 + id as u64)
            }));
        }
    }
    for t in threads {
        t.join().expect("client");
    }
}

#[test]
fn the_checker_accepts_linearizable_histories_and_refuses_others() {
    let ev = |client, key: &str, kind, value: Option<&str>, called, returned| Event {
        client,
        key: key.into(),
        kind,
        value: value.map(str::to_string),
        called,
        returned,
    };
    use Kind::{Read, Write};
    // Sequential: a read after a write sees it.
    let ok = [
        ev(0, "k", Write, Some("1"), 0, Some(10)),
        ev(1, "k", Read, Some("1"), 20, Some(30)),
    ];
    assert!(check(&ok, None).is_ok());
    // A read that begins after a write returned and misses it: stale.
    let stale = [
        ev(0, "k", Write, Some("1"), 0, Some(10)),
        ev(1, "k", Read, None, 20, Some(30)),
    ];
    assert!(check(&stale, None).is_err());
    // Overlapping, a read may see either.
    for seen in [None, Some("1")] {
        let overlap = [
            ev(0, "k", Write, Some("1"), 0, Some(30)),
            ev(1, "k", Read, seen, 10, Some(20)),
        ];
        assert!(check(&overlap, None).is_ok());
    }
    // Two reads after two concurrent writes must agree on which came last.
    let disagree = [
        ev(0, "k", Write, Some("1"), 0, Some(10)),
        ev(1, "k", Write, Some("2"), 0, Some(10)),
        ev(2, "k", Read, Some("1"), 20, Some(30)),
        ev(3, "k", Read, Some("2"), 40, Some(50)),
    ];
    assert!(check(&disagree, None).is_err());
    let agree = [
        ev(0, "k", Write, Some("1"), 0, Some(10)),
        ev(1, "k", Write, Some("2"), 0, Some(10)),
        ev(2, "k", Read, Some("2"), 20, Some(30)),
        ev(3, "k", Read, Some("2"), 40, Some(50)),
    ];
    assert!(check(&agree, None).is_ok());
    // A write that failed may or may not have happened, but not both ways at once.
    for seen in [None, Some("1")] {
        let failed = [
            ev(0, "k", Write, Some("1"), 0, None),
            ev(1, "k", Read, seen, 20, Some(30)),
        ];
        assert!(check(&failed, None).is_ok());
    }
    let flip = [
        ev(0, "k", Write, Some("1"), 0, None),
        ev(1, "k", Read, Some("1"), 20, Some(30)),
        ev(2, "k", Read, None, 40, Some(50)),
    ];
    assert!(check(&flip, None).is_err());
    // Keys are independent.
    let two = [
        ev(0, "a", Write, Some("1"), 0, Some(10)),
        ev(1, "b", Read, None, 20, Some(30)),
    ];
    assert!(check(&two, None).is_ok());
}

#[test]
fn clients_of_a_home_volume_in_two_regions_see_one_linearizable_history_and_active_active_does_not()
-> Result<()> {
    let pair = Pair::start()?;
    pair.a
        .admin(&["volume-create", "ledger", "--regions", "1,2", "--home", "1"])?;
    pair.a
        .admin(&["volume-create", "shared", "--regions", "1,2"])?;
    wait_for(Duration::from_secs(30), "the volumes in region 2", || {
        let listed = pair.b.admin(&["volumes"]).ok()?;
        (listed.contains("ledger") && listed.contains("shared")).then_some(())
    })?;
    // A linearizable mount of an active-active volume is refused, saying why.
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(common::MERIDIAN)
        .args(["mount", "--meta", &pair.b.addrs(), "--volume", "shared"])
        .args(["--linearizable", "--no-supervisor"])
        .arg(dir.path())
        .output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && said.contains("active-active"),
        "--linearizable on an active-active volume: {said}"
    );
    pair.delay(20)?;
    let one = pair.a.mount_with("ledger", "one", &["--linearizable"])?;
    let two = pair.b.mount_with("ledger", "two", &["--linearizable"])?;
    for key in KEYS {
        fs::write(one.path.join(key), INIT)?;
    }
    let rec = Recorder::new();

    // Linked, 20 ms each way.
    round(&rec, &[(&one.path, 25), (&two.path, 25)], 1);
    // Cut: region 2 can neither write nor read linearizably (both fail: not recorded,
    // or recorded as writes that may have happened); region 1 goes on.
    pair.cut(true)?;
    round(&rec, &[(&one.path, 15), (&two.path, 2)], 2);
    pair.cut(false)?;
    wait_for(Duration::from_secs(60), "region 2 reading again", || {
        fs::read_dir(&two.path).ok()
    })?;
    // The home moves to region 2 while clients run.
    let mover = {
        let b = pair.b.addrs();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            common::admin_at(&b, &["volume-promote", "ledger", "--to", "2"])
        })
    };
    round(&rec, &[(&one.path, 25), (&two.path, 25)], 3);
    let moved = mover.join().expect("promote")?;
    ensure!(moved.contains("home=2"), "{moved}");
    round(&rec, &[(&one.path, 10), (&two.path, 10)], 4);

    // A file the home (region 2 now) just made is changed at once from region 1, which
    // learnt it through the home and may not have pulled it yet: the change goes to the
    // home all the same.
    for i in 0..5 {
        let name = format!("fresh-{i}");
        fs::write(two.path.join(&name), "made at the home;")?;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(one.path.join(&name))?;
        std::io::Write::write_all(&mut f, b" changed in region 1")?;
        f.sync_all()?;
        drop(f);
        ensure!(
            fs::read_to_string(two.path.join(&name))? == "made at the home; changed in region 1",
            "{name} at the home"
        );
    }

    let history = rec.history();
    let reads = history.iter().filter(|e| e.kind == Kind::Read).count();
    let writes = history.len() - reads;
    ensure!(
        reads > 40 && writes > 40,
        "too few operations recorded: {reads} reads, {writes} writes"
    );
    if let Err(e) = check(&history, Some(INIT)) {
        anyhow::bail!("the home volume's history is not linearizable: {e}");
    }

    // Active-active: a write in region 1, then a read in region 2 as soon as it returned.
    let one_aa = pair.a.mount("shared", "one-aa")?;
    let two_aa = pair.b.mount("shared", "two-aa")?;
    fs::write(one_aa.path.join("x"), INIT)?;
    wait_for(
        Duration::from_secs(30),
        "the first value in region 2",
        || (fs::read_to_string(two_aa.path.join("x")).ok()? == INIT).then_some(()),
    )?;
    let rec = Recorder::new();
    for i in 0..5 {
        rec.write(0, &one_aa.path, "x", &format!("v{i}"));
        rec.read(1, &two_aa.path, "x");
    }
    let history = rec.history();
    ensure!(
        check(&history, Some(INIT)).is_err(),
        "a region reading its own replica of an active-active volume right after another region's write should read stale values: {history:?}"
    );
    Ok(())
}
