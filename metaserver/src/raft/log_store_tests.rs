//! Tests of the Raft log store (log_store.rs).

use super::records::{RECORD_HEAD, next_record};
use super::*;
use crate::raft::Request;
use openraft::RaftTypeConfig;
use openraft::entry::RaftEntry;
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderIdExt;

fn id(term: u64, i: u64) -> LogIdOf<TypeConfig> {
    LogIdOf::<TypeConfig>::new(
        <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(term, 1),
        i,
    )
}

fn entry(term: u64, i: u64) -> EntryOf<TypeConfig> {
    <TypeConfig as RaftTypeConfig>::Entry::new_normal(id(term, i), Request::Peers(vec![]))
}

async fn append(log: &mut LogStore, entries: Vec<EntryOf<TypeConfig>>) {
    log.append(entries, IOFlushed::noop()).await.unwrap();
}

async fn indexes(log: &mut LogStore) -> Vec<(u64, u64)> {
    log.try_get_log_entries(0..)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.log_id.index, e.log_id.leader_id.term))
        .collect()
}

#[test]
fn appends_truncates_and_purges_survive_a_reopen_and_a_torn_tail_is_cut() {
    TypeConfig::run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        {
            let mut log = LogStore::open(&path, None).unwrap();
            append(&mut log, (1..=6).map(|i| entry(1, i)).collect()).await;
            log.truncate_after(Some(id(1, 4))).await.unwrap();
            append(&mut log, vec![entry(2, 5)]).await;
            log.purge(id(1, 2)).await.unwrap();
        }
        let want = vec![(3, 1), (4, 1), (5, 2)];
        let mut log = LogStore::open(&path, None).unwrap();
        assert_eq!(indexes(&mut log).await, want);
        assert_eq!(log.read_committed().await.unwrap(), None);
        log.save_committed(Some(id(2, 5))).await.unwrap();
        drop(log);
        let mut log = LogStore::open(&path, None).unwrap();
        assert_eq!(log.read_committed().await.unwrap(), Some(id(2, 5)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(id(1, 2)));
        assert_eq!(state.last_log_id, Some(id(2, 5)));
        drop(log);

        // A crash in the middle of an append leaves part of a record: it is cut off
        // (the append was never acknowledged), and the next append lands after it.
        let file = path.join("log");
        let whole = fs::read(&file).unwrap();
        let extra = record(ENTRY, &entry(2, 6)).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(&extra[..extra.len() - 3]);
        fs::write(&file, &torn).unwrap();
        let mut log = LogStore::open(&path, None).unwrap();
        assert_eq!(indexes(&mut log).await, want);
        let now = fs::read(&file).unwrap();
        let records = whole.iter().rposition(|&b| b != 0).unwrap() + 1;
        assert_eq!(now[..records], whole[..records], "the records are kept");
        assert!(
            now[records..].iter().all(|&b| b == 0),
            "the torn record is gone"
        );
        append(&mut log, vec![entry(2, 6)]).await;
        drop(log);
        let mut log = LogStore::open(&path, None).unwrap();
        assert_eq!(indexes(&mut log).await.last(), Some(&(6, 2)));
    });
}

#[test]
fn a_followers_appends_are_durable_when_append_returns_and_its_own_go_through_the_flusher() {
    TypeConfig::run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        let (ahead, led) = mpsc::channel();
        let ahead = Mutex::new(ahead);
        {
            let mut log = LogStore::open(&path, None)
                .unwrap()
                .for_member(2)
                .apply_ahead(AheadHook::new(
                    |_| true,
                    move |entries, durable| {
                        assert!(durable, "not asked to apply before the sync");
                        let entries: Vec<_> = entries.iter().map(|e| (*e).clone()).collect();
                        let _ = ahead.lock().unwrap().send(entries);
                        true
                    },
                ));
            // Led by member 1: this member follows, and the append is synced in place.
            let (tx, mut rx) = TypeConfig::oneshot();
            log.append(vec![entry(1, 1), entry(1, 2)], IOFlushed::signal(tx))
                .await
                .unwrap();
            assert!(
                matches!(rx.try_recv(), Ok(Ok(()))),
                "a follower's append is flushed when append returns"
            );
            // Led by this member: the flusher reports it.
            let own = <TypeConfig as RaftTypeConfig>::Entry::new_normal(
                LogIdOf::<TypeConfig>::new(
                    <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(2, 2),
                    3,
                ),
                Request::Peers(vec![]),
            );
            let (tx, rx) = TypeConfig::oneshot();
            log.append(vec![own], IOFlushed::signal(tx)).await.unwrap();
            rx.await.unwrap().unwrap();
            // Led by member 1 again, right behind: synced in place or by the flusher,
            // reported either way.
            let (tx, rx) = TypeConfig::oneshot();
            log.append(vec![entry(3, 4)], IOFlushed::signal(tx))
                .await
                .unwrap();
            rx.await.unwrap().unwrap();
        }
        // Given once durable, after it is reported flushed.
        let mut given: Vec<u64> = led
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        given.extend(led.try_iter().flatten().map(|e| e.log_id.index));
        assert_eq!(given, [3], "only its own entries go to apply ahead");
        let mut log = LogStore::open(&path, None).unwrap();
        assert_eq!(
            indexes(&mut log).await,
            vec![(1, 1), (2, 1), (3, 2), (4, 3)]
        );
    });
}

/// While the hook asks for it, the entries this member leads go to it before the
/// fdatasync (not durable yet), the hook hears once that sync returned, and what it did
/// not take then goes to it again after.
#[test]
fn own_entries_apply_before_the_sync_while_the_hook_asks() {
    TypeConfig::run(async {
        let dir = tempfile::tempdir().unwrap();
        let (tx, given) = mpsc::channel();
        let synced_tx = Mutex::new(tx.clone());
        let tx = Mutex::new(tx);
        let take = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let takes = take.clone();
        // A sync's return is told as no entries, durable.
        let hook = AheadHook::new(
            |_| true,
            move |entries, durable| {
                let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
                tx.lock().unwrap().send((indexes, durable)).unwrap();
                durable || takes.load(Ordering::Acquire)
            },
        )
        .before_sync(
            || true,
            move |ok| synced_tx.lock().unwrap().send((Vec::new(), ok)).unwrap(),
        );
        // Entries of term 1 are led by member 1: this member.
        let mut log = LogStore::open(&dir.path().join("raft-log"), None)
            .unwrap()
            .for_member(1)
            .apply_ahead(hook);
        let wait = std::time::Duration::from_secs(30);
        let (t, r) = TypeConfig::oneshot();
        log.append(vec![entry(1, 1)], IOFlushed::signal(t))
            .await
            .unwrap();
        r.await.unwrap().unwrap();
        assert_eq!(given.recv_timeout(wait).unwrap(), (vec![1], false));
        assert_eq!(given.recv_timeout(wait).unwrap(), (vec![], true), "synced");
        // Not taken before the sync: given again once durable.
        take.store(false, Ordering::Release);
        let (t, r) = TypeConfig::oneshot();
        log.append(vec![entry(1, 2)], IOFlushed::signal(t))
            .await
            .unwrap();
        r.await.unwrap().unwrap();
        assert_eq!(given.recv_timeout(wait).unwrap(), (vec![2], false));
        assert_eq!(given.recv_timeout(wait).unwrap(), (vec![], true), "synced");
        assert_eq!(given.recv_timeout(wait).unwrap(), (vec![2], true));
        drop(log);
        assert!(given.recv_timeout(wait).is_err(), "nothing given twice");
    });
}

#[test]
fn appends_overwrite_zeroed_space_that_stays_ahead_of_them() {
    TypeConfig::run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        let file = path.join("log");
        {
            let mut log = LogStore::open(&path, None).unwrap();
            let (len, zeroed) = {
                let inner = log.lock();
                (inner.file_len, inner.zeroed)
            };
            assert_eq!(len, 0);
            assert_eq!(zeroed, GROW, "a new log starts with zeroed space");
            assert_eq!(fs::metadata(&file).unwrap().len(), GROW);
            // A small stretch, so that appends cross it many times.
            log.lock().grow = 4096;
            log.lock().zeroed = 0;
            log.lock().file.set_len(0).unwrap();
            for i in 1..=300 {
                append(&mut log, vec![entry(1, i)]).await;
            }
            let (len, zeroed) = {
                let inner = log.lock();
                (inner.file_len, inner.zeroed)
            };
            let bytes = fs::read(&file).unwrap();
            assert_eq!(bytes.len() as u64, zeroed);
            assert!(
                zeroed - len >= 2048,
                "zeroed space is kept ahead ({len}, {zeroed})"
            );
            assert!(bytes[len as usize..].iter().all(|&b| b == 0));
            assert!(len > 4 * 4096, "appends crossed several stretches");
        }
        let mut log = LogStore::open(&path, None).unwrap();
        let got = indexes(&mut log).await;
        assert_eq!(got, (1..=300).map(|i| (i, 1)).collect::<Vec<_>>());
    });
}

#[test]
fn the_vote_is_kept_and_a_purged_file_is_rewritten_smaller() {
    TypeConfig::run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        let vote = VoteOf::<TypeConfig>::new(3, 2);
        {
            let mut log = LogStore::open(&path, None).unwrap();
            log.save_vote(&vote).await.unwrap();
            append(&mut log, (1..=10).map(|i| entry(1, i)).collect()).await;
            // No slack, so the purge rewrites the file.
            let before = log.lock().file_len;
            log.lock().rewrite_slack = 0;
            log.purge(id(1, 9)).await.unwrap();
            assert!(log.lock().file_len < before);
            append(&mut log, vec![entry(1, 11)]).await;
        }
        let mut log = LogStore::open(&path, None).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(indexes(&mut log).await, vec![(10, 1), (11, 1)]);
        assert_eq!(
            log.get_log_state().await.unwrap().last_purged_log_id,
            Some(id(1, 9))
        );
    });
}

/// Entries held decoded in `log`.
fn held(log: &LogStore) -> usize {
    let inner = log.lock();
    inner.entries.values().filter(|s| s.entry.is_some()).count()
}

fn json(entries: &[EntryOf<TypeConfig>]) -> Vec<Vec<u8>> {
    entries
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect()
}

/// Only the latest entries are held decoded; the others are read back from the file, as
/// they were appended, through a purge that rewrites the file, a truncate and a reopen.
#[test]
fn only_the_latest_entries_are_held_and_the_others_are_read_back_from_the_file() {
    TypeConfig::run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        let mut appended: Vec<_> = (1..=40).map(|i| entry(1 + i / 10, i)).collect();
        {
            let mut log = LogStore::open(&path, None).unwrap();
            append(&mut log, appended[..1].to_vec()).await;
            let one = log.lock().live_bytes;
            log.lock().held_limit = 5 * one;
            append(&mut log, appended[1..20].to_vec()).await;
            for e in &appended[20..] {
                append(&mut log, vec![e.clone()]).await;
            }
            // Records of later entries are a little longer than the first one's.
            assert!((3..=5).contains(&held(&log)), "held {}", held(&log));
            assert!(log.lock().held_bytes <= 5 * one);
            let all = log.try_get_log_entries(0..).await.unwrap();
            assert_eq!(json(&all), json(&appended));
            let some = log.try_get_log_entries(3..7).await.unwrap();
            assert_eq!(json(&some), json(&appended[2..6]));

            // A purge that rewrites the file: the records moved, and read back from there.
            let before = log.lock().file_len;
            log.lock().rewrite_slack = 0;
            log.purge(appended[29].log_id).await.unwrap();
            assert!(log.lock().file_len < before);
            appended.drain(..30);
            let all = log.try_get_log_entries(0..).await.unwrap();
            assert_eq!(json(&all), json(&appended));

            // Entries dropped by a truncate are gone, held or not; the next append is held.
            log.truncate_after(Some(appended[4].log_id)).await.unwrap();
            appended.truncate(5);
            appended.push(entry(9, 36));
            append(&mut log, vec![entry(9, 36)]).await;
            assert!((1..=5).contains(&held(&log)), "held {}", held(&log));
            let all = log.try_get_log_entries(0..).await.unwrap();
            assert_eq!(json(&all), json(&appended));
            // Everything purged: nothing is held.
            log.purge(id(9, 36)).await.unwrap();
            assert_eq!((held(&log), log.lock().held_bytes), (0, 0));
            append(&mut log, vec![entry(9, 37)]).await;
            appended = vec![entry(9, 37)];
        }
        let mut log = LogStore::open(&path, None).unwrap();
        let all = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(json(&all), json(&appended));
    });
}

/// An entry read back from the file whose record was damaged there is an error, never
/// another entry; a rewrite that meets it fails rather than copy it.
#[test]
fn a_damaged_record_read_back_is_an_error() {
    TypeConfig::run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        let mut log = LogStore::open(&path, None).unwrap();
        append(&mut log, vec![entry(1, 1)]).await;
        let one = log.lock().live_bytes;
        log.lock().held_limit = 2 * one;
        append(&mut log, (2..=8).map(|i| entry(1, i)).collect()).await;
        let at = log.lock().entries[&2].at;
        assert!(
            log.lock().entries[&2].entry.is_none(),
            "entry 2 is not held"
        );
        let file = fs::OpenOptions::new()
            .write(true)
            .open(path.join("log"))
            .unwrap();
        file.write_all_at(b"X", at + RECORD_HEAD as u64 + 3)
            .unwrap();
        let err = log.try_get_log_entries(2..3).await.unwrap_err();
        assert!(err.to_string().contains("does not check out"), "{err}");
        assert_eq!(log.try_get_log_entries(3..4).await.unwrap().len(), 1);
        let rewritten = log.lock().rewrite();
        assert!(rewritten.is_err(), "the damage is not copied");
        let all = log.try_get_log_entries(3..).await.unwrap();
        assert_eq!(
            json(&all),
            json(&(3..=8).map(|i| entry(1, i)).collect::<Vec<_>>())
        );
    });
}

#[test]
fn a_log_of_an_earlier_version_is_imported() {
    use redb::{Database, TableDefinition};
    TypeConfig::run(async {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("log.redb");
        {
            let db = Database::create(&old).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx
                    .open_table(TableDefinition::<u64, &[u8]>::new("raft_log"))
                    .unwrap();
                for i in 3..=5 {
                    t.insert(i, serde_json::to_vec(&entry(1, i)).unwrap().as_slice())
                        .unwrap();
                }
                let mut m = tx
                    .open_table(TableDefinition::<&str, &[u8]>::new("raft_log_meta"))
                    .unwrap();
                let vote = serde_json::to_vec(&VoteOf::<TypeConfig>::new(1, 1)).unwrap();
                m.insert("vote", vote.as_slice()).unwrap();
                let purged = serde_json::to_vec(&Some(id(1, 2))).unwrap();
                m.insert("last_purged", purged.as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let path = dir.path().join("raft-log");
        let mut log = LogStore::open(&path, Some(&old)).unwrap();
        assert_eq!(indexes(&mut log).await, vec![(3, 1), (4, 1), (5, 1)]);
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(VoteOf::<TypeConfig>::new(1, 1))
        );
        assert_eq!(
            log.get_log_state().await.unwrap().last_purged_log_id,
            Some(id(1, 2))
        );
        assert!(!old.exists());
    });
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: meridian_proto::mutate::cases(128), ..Default::default() })]

    /// A fuzz target for the log's record decoder: a log file damaged in any way
    /// (edits of a valid one reach the lengths, checksums, kinds and JSON bodies)
    /// opens as an error or as a log whose entries are ones that were appended,
    /// never with a panic; and a log that opens takes appends again.
    #[test]
    fn a_damaged_log_opens_as_an_error_or_with_only_appended_entries(
        n in 1u64..12,
        purge in 0u64..4,
        edits in proptest::collection::vec(
            (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>(), proptest::prelude::any::<u8>()),
            1..6,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        let appended: Vec<_> = (1..=n).map(|i| entry(1 + i / 4, i)).collect();
        let reopened = TypeConfig::run(async {
            {
                let mut log = LogStore::open(&path, None).unwrap();
                append(&mut log, appended.clone()).await;
                log.save_committed(Some(appended[appended.len() / 2].log_id)).await.unwrap();
                if purge > 0 && purge < n {
                    log.purge(appended[purge as usize - 1].log_id).await.unwrap();
                }
            }
            let file = path.join("log");
            fs::write(&file, meridian_proto::mutate::mutate(&fs::read(&file).unwrap(), &edits)).unwrap();
            let Ok(mut log) = LogStore::open(&path, None) else {
                return None;
            };
            let got = log.try_get_log_entries(0..).await.unwrap();
            let last = got.last().map_or(0, |e| e.log_id.index);
            append(&mut log, vec![entry(9, last + 1)]).await;
            Some(got)
        });
        for e in reopened.into_iter().flatten() {
            let want = appended.iter().find(|a| a.log_id == e.log_id);
            proptest::prop_assert!(want.is_some(), "entry {:?} was never appended", e.log_id);
            proptest::prop_assert_eq!(
                serde_json::to_vec(&e).unwrap(),
                serde_json::to_vec(want.unwrap()).unwrap()
            );
        }
    }
}

/// A follower writes an entry's JSON as it came in the leader's append (not encoded
/// again), and what it writes reads back as the entry; an entry that did not come that way
/// is encoded and kept for the appends this member sends when it leads.
#[test]
fn an_entry_is_written_as_its_append_carried_it_and_kept_once_encoded() {
    TypeConfig::run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        let encoded = Arc::new(Encoded::default());
        // The append's JSON of entry 1, laid out as no encoder here would (spaces): the
        // record holds these very bytes.
        let carried = serde_json::to_string_pretty(&entry(1, 1)).unwrap();
        assert_ne!(carried, serde_json::to_string(&entry(1, 1)).unwrap());
        encoded.put(id(1, 1), bytes::Bytes::from(carried.clone()));
        {
            let mut log = LogStore::open(&path, None)
                .unwrap()
                .for_member(2)
                .share_encoded(encoded.clone());
            append(&mut log, vec![entry(1, 1), entry(1, 2)]).await;
        }
        let file = fs::read(path.join("log")).unwrap();
        let (kind, body, len) = next_record(&file).unwrap();
        assert_eq!((kind, body), (ENTRY, carried.as_bytes()));
        // The second was not carried: encoded here, and kept.
        let (kind, body, _) = next_record(&file[len..]).unwrap();
        assert_eq!(kind, ENTRY);
        assert_eq!(encoded.get(&id(1, 2)).unwrap(), body);
        // Both read back as the entries.
        let mut log = LogStore::open(&path, None).unwrap();
        let read = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(read, vec![entry(1, 1), entry(1, 2)]);
    });
}

/// A prompt follower syncs each append where it is made (reported when append returns); a
/// spare one's appends are reported by the flusher, after one fdatasync for several.
#[test]
fn a_spare_followers_appends_share_a_sync_and_a_prompt_ones_each_have_their_own() {
    TypeConfig::run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        {
            // Member 3; member 1 leads every entry.
            let mut log = LogStore::open(&path, None)
                .unwrap()
                .for_member(3)
                .spare_gather(std::time::Duration::from_millis(300));
            let before = log.syncs();
            for i in 1..=3 {
                let (tx, mut rx) = TypeConfig::oneshot();
                log.append(vec![entry(1, i)], IOFlushed::signal(tx))
                    .await
                    .unwrap();
                assert!(
                    matches!(rx.try_recv(), Ok(Ok(()))),
                    "a prompt follower's append is flushed when append returns"
                );
            }
            assert_eq!(log.syncs() - before, 3, "one fdatasync per prompt append");

            log.set_spare(true);
            let before = log.syncs();
            let mut reports = Vec::new();
            for i in 4..=8 {
                let (tx, mut rx) = TypeConfig::oneshot();
                log.append(vec![entry(1, i)], IOFlushed::signal(tx))
                    .await
                    .unwrap();
                if i == 4 {
                    assert!(
                        rx.try_recv().is_err(),
                        "a spare's append is not reported before its gathered sync"
                    );
                }
                reports.push(rx);
            }
            for rx in reports {
                rx.await.unwrap().unwrap();
            }
            let synced = log.syncs() - before;
            assert!(
                (1..5).contains(&synced),
                "{synced} fdatasyncs for five appends a spare gathered"
            );
        }
        let mut log = LogStore::open(&path, None).unwrap();
        let want: Vec<(u64, u64)> = (1..=8).map(|i| (i, 1)).collect();
        assert_eq!(indexes(&mut log).await, want);
    });
}
