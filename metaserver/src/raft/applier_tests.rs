//! Tests of the applier (applier.rs).

use std::time::Duration;

use futures::stream;
use meridian_proto::ns::{Command, Op, Timespec, VolumePolicy};
use meridian_proto::{Hlc, RegionId};
use openraft::RaftTypeConfig;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use openraft::type_config::TypeConfigExt;
use openraft::type_config::alias::{EntryOf, LogIdOf};
use openraft::vote::RaftLeaderIdExt;
use redb::ReadableDatabase;

use super::super::state_machine::StateMachine;
use super::super::{Request, TypeConfig};
use super::{AHEAD_MAX, Applier, lock};
use crate::namespace::NsReader;

/// Entry `index`, led by member `leader`: creates volume `name`.
fn create(leader: u64, index: u64, name: &str) -> EntryOf<TypeConfig> {
    let id = LogIdOf::<TypeConfig>::new(
        <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(1, leader),
        index,
    );
    EntryOf::<TypeConfig>::new_normal(
        id,
        Request::Ns(Command {
            op: Op::CreateVolume {
                name: name.into(),
                policy: VolumePolicy::default(),
            },
            hlc: Hlc {
                wall_ms: 1000 + index,
                counter: 0,
                region: RegionId(1),
            },
            now: Timespec::default(),
            request: None,
            ino: None,
            lease: false,
        }),
    )
}

fn volumes(sm: &StateMachine) -> Vec<String> {
    let db = sm.db();
    let tx = db.begin_read().unwrap();
    let mut names: Vec<String> = NsReader::new(&tx)
        .volumes()
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    names.sort();
    names
}

async fn apply(sm: &mut StateMachine, entries: Vec<EntryOf<TypeConfig>>) {
    sm.apply(stream::iter(entries.into_iter().map(|e| Ok((e, None)))))
        .await
        .unwrap();
}

/// A follower's entries wait (and apply together), and everything this member leads,
/// a snapshot and a restart see them applied first; the thread applies them when the
/// oldest has waited the lag, with nothing else happening.
#[test]
fn entries_another_member_leads_apply_behind_and_first_when_anything_needs_them() {
    TypeConfig::run(async {
        let dir = tempfile::TempDir::new().unwrap();
        let (sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
        // A lag no test outlasts: nothing applies them but what the test does.
        let mut sm = sm.behind_by(1, Duration::from_secs(3600)).unwrap();
        apply(&mut sm, vec![create(2, 1, "a"), create(2, 2, "b")]).await;
        assert!(volumes(&sm).is_empty(), "led by member 2: they wait");
        assert_eq!(
            *shared.applied.borrow(),
            0,
            "published as the state has them"
        );
        assert!(
            shared.clock.lock().unwrap().last().wall_ms >= 1002,
            "the clock observed their stamps"
        );
        apply(&mut sm, vec![create(1, 3, "c")]).await;
        assert_eq!(
            volumes(&sm),
            ["a", "b", "c"],
            "this member's own: all, in order"
        );
        assert_eq!(*shared.applied.borrow(), 3);

        apply(&mut sm, vec![create(2, 4, "d")]).await;
        assert_eq!(volumes(&sm).len(), 3);
        let _ = sm.get_snapshot_builder().await;
        assert_eq!(volumes(&sm), ["a", "b", "c", "d"], "a snapshot holds them");

        apply(&mut sm, vec![create(2, 5, "e")]).await;
        drop(sm);
        // Restarted: the state says what it applied; Raft applies the rest again from
        // its log.
        let (sm, _) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
        let mut sm = sm.behind_by(1, Duration::from_secs(3600)).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|id| id.index), Some(4));
        drop(sm);

        // A lag of 50 ms: applied with nothing else happening.
        let (sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
        let mut sm = sm.behind_by(1, Duration::from_millis(50)).unwrap();
        let mut applied = shared.applied.subscribe();
        apply(&mut sm, vec![create(2, 5, "e"), create(2, 6, "f")]).await;
        tokio::time::timeout(Duration::from_secs(30), applied.wait_for(|i| *i == 6))
            .await
            .expect("applied within the lag")
            .unwrap();
        assert_eq!(volumes(&sm), ["a", "b", "c", "d", "e", "f"]);
    });
}

/// A member that takes over as the leader brings its state up to what Raft counts
/// applied before it acts on it (`Shared::catch_up_to`, from `MetaNode::is_leader`);
/// a member starts with the applied index its state holds.
#[test]
fn a_member_catches_up_before_it_acts_as_the_leader() {
    TypeConfig::run(async {
        let dir = tempfile::TempDir::new().unwrap();
        let (sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
        let mut sm = sm.behind_by(1, Duration::from_secs(3600)).unwrap();
        apply(&mut sm, vec![create(2, 1, "a"), create(2, 2, "b")]).await;
        assert!(volumes(&sm).is_empty());
        shared.catch_up_to(2);
        assert_eq!(volumes(&sm), ["a", "b"]);
        assert_eq!(*shared.applied.borrow(), 2);
        drop(sm);
        let (_sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
        assert_eq!(
            *shared.applied.borrow(),
            2,
            "published from the state at start"
        );
    });
}

/// Once an apply failed, nothing applies past it: every later apply, queued or not,
/// reports the failure (Raft then stops the member) and changes nothing.
#[test]
fn after_a_failed_apply_nothing_applies_past_it() {
    let dir = tempfile::TempDir::new().unwrap();
    let (sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
    let applier = Applier::new(sm.db(), shared.clone());
    let entry = |e: EntryOf<TypeConfig>| (e, None);
    applier.apply(vec![entry(create(1, 1, "a"))]).unwrap();
    applier.defer(vec![entry(create(2, 2, "b"))]).unwrap();
    lock(&applier.queue)
        .failed
        .get_or_insert_with(|| "a store failure".into());
    for outcome in [
        applier.apply(vec![entry(create(1, 3, "c"))]),
        applier.defer(vec![entry(create(2, 3, "c"))]),
        applier.catch_up(),
        applier.replace(|| Ok(())),
    ] {
        let e = outcome.expect_err("the failure is kept");
        assert!(e.to_string().contains("a store failure"), "{e}");
    }
    assert_eq!(volumes(&sm), ["a"]);
    assert_eq!(*shared.applied.borrow(), 1);
}

/// Gives `entries` to apply ahead, durable in the leader's log; whether they applied.
fn ahead(applier: &Applier, entries: Vec<EntryOf<TypeConfig>>) -> bool {
    applier.apply_ahead(&entries.iter().collect::<Vec<_>>(), true)
}

/// Entries this member leads apply into a transaction before they commit, unseen until
/// they do; the commit uses it when it starts with them and drops it otherwise (a
/// catch-up applying nothing keeps it); only small namespace changes apply ahead, and
/// nothing applies ahead of entries waiting to apply.
#[test]
fn entries_this_member_leads_apply_ahead_unseen_until_they_commit() {
    let dir = tempfile::TempDir::new().unwrap();
    let (sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
    let applier = Applier::new(sm.db(), shared.clone());
    let entry = |e: EntryOf<TypeConfig>| (e, None);
    let held = |a: &Applier| lock(&a.ahead).as_ref().map(|a| a.applied.ids.len());

    assert!(ahead(&applier, vec![create(1, 1, "a"), create(1, 2, "b")]));
    assert_eq!(held(&applier), Some(2));
    assert!(volumes(&sm).is_empty(), "not committed: unseen");
    assert_eq!(*shared.applied.borrow(), 0);
    // One more commits with them: applied into the same transaction.
    applier
        .apply(vec![
            entry(create(1, 1, "a")),
            entry(create(1, 2, "b")),
            entry(create(1, 3, "c")),
        ])
        .unwrap();
    assert_eq!(held(&applier), None);
    assert_eq!(volumes(&sm), ["a", "b", "c"]);
    assert_eq!(*shared.applied.borrow(), 3);

    // Only the run that follows what the state holds.
    ahead(
        &applier,
        vec![create(1, 3, "c"), create(1, 4, "d"), create(1, 6, "f")],
    );
    assert_eq!(held(&applier), Some(1));
    // What commits is another leader's entry at that index: the transaction is dropped.
    applier.apply(vec![entry(create(2, 4, "e"))]).unwrap();
    assert_eq!(held(&applier), None);
    assert_eq!(volumes(&sm), ["a", "b", "c", "e"]);

    // Less than it holds commits: dropped too, and applied again.
    ahead(&applier, vec![create(1, 5, "f"), create(1, 6, "g")]);
    assert_eq!(held(&applier), Some(2));
    applier.apply(vec![entry(create(1, 5, "f"))]).unwrap();
    assert_eq!(held(&applier), None);
    assert_eq!(volumes(&sm), ["a", "b", "c", "e", "f"]);

    // Applying nothing (a catch-up with nothing queued) keeps it.
    ahead(&applier, vec![create(1, 6, "g")]);
    assert_eq!(held(&applier), Some(1));
    applier.catch_up().unwrap();
    assert_eq!(held(&applier), Some(1));
    applier.replace(|| Ok(())).unwrap();
    assert_eq!(held(&applier), None);

    // Not what the log's flusher should spend its time on: merges, images, copies.
    let peers = EntryOf::<TypeConfig>::new_normal(
        LogIdOf::<TypeConfig>::new(
            <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(1, 1),
            6,
        ),
        Request::Peers(vec![]),
    );
    assert!(!ahead(&applier, vec![peers]));
    assert_eq!(held(&applier), None);

    // Entries waiting to apply come first: nothing applies ahead of them.
    applier.defer(vec![entry(create(2, 6, "g"))]).unwrap();
    assert!(!ahead(&applier, vec![create(1, 7, "h")]));
    assert_eq!(held(&applier), None);
    applier.catch_up().unwrap();
    assert_eq!(volumes(&sm), ["a", "b", "c", "e", "f", "g"]);

    // Replacing the state drops it.
    ahead(&applier, vec![create(1, 7, "h")]);
    assert_eq!(held(&applier), Some(1));
    applier.replace(|| Ok(())).unwrap();
    assert_eq!(held(&applier), None);
    assert_eq!(*shared.applied.borrow(), 6);
}

/// Entries applied ahead that never commit (the leader lost its leadership) do not
/// hold redb's writer past [`AHEAD_MAX`]: the thread applying behind drops them.
#[test]
fn entries_applied_ahead_that_never_commit_are_dropped() {
    let dir = tempfile::TempDir::new().unwrap();
    let (sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
    let applier = std::sync::Arc::new(Applier::new(sm.db(), shared.clone()));
    ahead(&applier, vec![create(1, 1, "a")]);
    let since = lock(&applier.ahead)
        .as_ref()
        .map(|a| a.since)
        .expect("held");
    let thread = {
        let applier = applier.clone();
        std::thread::spawn(move || applier.run_behind())
    };
    // Another writer waits for the thread to drop them.
    let (done, wait) = std::sync::mpsc::channel();
    let db = sm.db();
    std::thread::spawn(move || {
        let tx = db.begin_write().unwrap();
        tx.abort().unwrap();
        let _ = done.send(since.elapsed());
    });
    let waited = wait
        .recv_timeout(Duration::from_secs(60))
        .expect("a writer gets redb's writer once they are dropped");
    assert!(waited >= AHEAD_MAX, "held until dropped ({waited:?})");
    assert!(lock(&applier.ahead).is_none());
    assert!(volumes(&sm).is_empty(), "never committed: never seen");
    assert_eq!(*shared.applied.borrow(), 0);
    applier.stop();
    thread.join().unwrap();
}

/// Entry `index`, led by member 2, that names the peer regions (cheap to apply).
fn peers(
    index: u64,
) -> (
    EntryOf<TypeConfig>,
    Option<openraft::storage::ApplyResponder<TypeConfig>>,
) {
    let id = LogIdOf::<TypeConfig>::new(
        <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(1, 2),
        index,
    );
    (
        EntryOf::<TypeConfig>::new_normal(id, Request::Peers(Vec::new())),
        None,
    )
}

/// Waits (60 s at most) until the state holds entry `index`.
fn wait_applied(shared: &super::Shared, index: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while *shared.applied.borrow() < index {
        assert!(
            std::time::Instant::now() < deadline,
            "entry {index} never applied"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A follower that falls [`MAX_BEHIND`] entries behind has the thread applying behind
/// apply them at once, and its appends (the Raft worker) do not wait for that: only
/// past [`MAX_QUEUED`] does an append apply the queue itself.
#[test]
fn a_full_queue_applies_on_the_thread_behind_and_the_append_does_not_wait_for_it() {
    use super::{MAX_BEHIND, MAX_QUEUED};
    let dir = tempfile::TempDir::new().unwrap();
    let (sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
    let applier = std::sync::Arc::new(Applier::new(sm.db(), shared.clone()));
    // A lag no test outlasts: only a full queue makes the thread apply.
    applier.set_lag(Duration::from_secs(3600));
    let thread = {
        let applier = applier.clone();
        std::thread::spawn(move || applier.run_behind())
    };
    // The thread is busy (holds the applier's lock) when the queue fills.
    let busy = lock(&applier.applying);
    let (done, returned) = std::sync::mpsc::channel();
    {
        let applier = applier.clone();
        std::thread::spawn(move || {
            let r = applier.defer((1..=MAX_BEHIND as u64).map(peers).collect());
            let _ = done.send(r.is_ok());
        });
    }
    assert!(
        returned
            .recv_timeout(Duration::from_secs(60))
            .expect("the append waited for the applier"),
        "queued"
    );
    assert_eq!(*shared.applied.borrow(), 0);
    drop(busy);
    // Applied now, not after the lag.
    wait_applied(&shared, MAX_BEHIND as u64);
    applier.stop();
    thread.join().unwrap();

    // Without that thread (starved), the append that passes MAX_QUEUED applies them.
    let applier = Applier::new(sm.db(), shared.clone());
    applier.set_lag(Duration::from_secs(3600));
    let first = MAX_BEHIND as u64 + 1;
    applier
        .defer((first..first + MAX_QUEUED as u64 - 1).map(peers).collect())
        .unwrap();
    assert_eq!(*shared.applied.borrow(), MAX_BEHIND as u64, "queued");
    applier
        .defer(vec![peers(first + MAX_QUEUED as u64 - 1)])
        .unwrap();
    assert_eq!(
        *shared.applied.borrow(),
        (MAX_BEHIND + MAX_QUEUED) as u64,
        "applied by the append"
    );
}
