//! Entries' JSON, kept by log id for a short while, so that a member encodes an entry once.
//!
//! An entry's JSON was made up to four times on its way: the leader encoded it for its log
//! and again for each follower's append, and each follower decoded it from the append and
//! encoded it again for its own log. A small fsync'd write's entry carries its block (4 KiB
//! as base64), and those encodings were a tenth of a follower's processor time and sat on
//! the write's critical path. Now the leader's log keeps the JSON it wrote here, the
//! appends to the followers are spliced from it (the same bytes the whole request's
//! encoding gives, so a member of an earlier version reads them as before), and a follower
//! keeps each entry's JSON as it arrived for its own log's record.
//!
//! A log id names one entry for good (Raft's log matching: two entries with the same index
//! and term are the same entry), so JSON kept under an entry's log id is that entry's,
//! whoever made it. What is kept is bounded ([`MAX_ENTRIES`], [`MAX_BYTES`]; the oldest
//! index goes first): an entry not found is encoded again, as before.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use openraft::raft::AppendEntriesRequest;
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::TypeConfig;

/// The most entries kept.
pub const MAX_ENTRIES: usize = 4096;
/// The most bytes of JSON kept.
pub const MAX_BYTES: usize = 16 << 20;

/// Entries' JSON by log id (shared by a member's log, its Raft client and its Raft server).
#[derive(Debug, Default)]
pub struct Encoded {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    by_index: BTreeMap<u64, (LogIdOf<TypeConfig>, Bytes)>,
    bytes: usize,
}

impl Encoded {
    /// Keeps `json` as the entry `id`'s.
    pub fn put(&self, id: LogIdOf<TypeConfig>, json: Bytes) {
        let mut k = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        k.bytes += json.len();
        if let Some((_, old)) = k.by_index.insert(id.index, (id, json)) {
            k.bytes -= old.len();
        }
        while k.by_index.len() > MAX_ENTRIES || k.bytes > MAX_BYTES {
            let Some((_, (_, gone))) = k.by_index.pop_first() else {
                break;
            };
            k.bytes -= gone.len();
        }
    }

    /// The JSON kept for the entry `id`, if any.
    pub fn get(&self, id: &LogIdOf<TypeConfig>) -> Option<Bytes> {
        let k = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        k.by_index
            .get(&id.index)
            .filter(|(kept, _)| kept == id)
            .map(|(_, json)| json.clone())
    }

    /// The entry's JSON: kept, or encoded now.
    pub fn entry_json(&self, entry: &EntryOf<TypeConfig>) -> Bytes {
        self.get(&entry.log_id).unwrap_or_else(|| {
            Bytes::from(serde_json::to_vec(entry).expect("raft entries serialize"))
        })
    }

    /// Decodes an append's JSON, keeping each entry's JSON as it came.
    pub fn decode_append(
        &self,
        data: &[u8],
    ) -> serde_json::Result<AppendEntriesRequest<TypeConfig>> {
        let raw: RawAppend<'_> = serde_json::from_slice(data)?;
        let mut entries = Vec::with_capacity(raw.entries.len());
        for json in raw.entries {
            let entry: EntryOf<TypeConfig> = serde_json::from_str(json.get())?;
            self.put(entry.log_id, Bytes::copy_from_slice(json.get().as_bytes()));
            entries.push(entry);
        }
        Ok(AppendEntriesRequest {
            vote: raw.vote,
            prev_log_id: raw.prev_log_id,
            entries,
            leader_commit: raw.leader_commit,
        })
    }
}

/// An append with its entries left as JSON.
#[derive(Deserialize)]
struct RawAppend<'a> {
    vote: VoteOf<TypeConfig>,
    prev_log_id: Option<LogIdOf<TypeConfig>>,
    #[serde(borrow)]
    entries: Vec<&'a RawValue>,
    leader_commit: Option<LogIdOf<TypeConfig>>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::raft::Request;
    use meridian_proto::ns::{Command, Creds, Op, StagedBlock, Timespec};
    use meridian_proto::{BlockId, Hlc, InodeId, RegionId};
    use openraft::RaftTypeConfig;
    use openraft::entry::RaftEntry;
    use openraft::vote::{RaftLeaderIdExt, RaftVote};

    pub(crate) fn id(term: u64, index: u64) -> LogIdOf<TypeConfig> {
        LogIdOf::<TypeConfig>::new(
            <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(term, 1),
            index,
        )
    }

    /// A small fsync'd write's entry: a commit carrying its block.
    pub(crate) fn entry(term: u64, index: u64, data: &[u8]) -> EntryOf<TypeConfig> {
        let cmd = Command {
            op: Op::CommitExtents {
                ino: InodeId::new(RegionId(1), 9).unwrap(),
                extents: Vec::new(),
                size: data.len() as u64,
                base_version: None,
                creds: Creds::root(),
                staged: vec![StagedBlock {
                    id: BlockId(*blake3::hash(data).as_bytes()),
                    data: data.to_vec(),
                }],
            },
            hlc: Hlc {
                wall_ms: 1000 + index,
                counter: 0,
                region: RegionId(1),
            },
            now: Timespec::default(),
            request: Some((5, index)),
            ino: None,
            lease: false,
        };
        EntryOf::<TypeConfig>::new_normal(id(term, index), Request::Ns(cmd))
    }

    pub(crate) fn request(entries: Vec<EntryOf<TypeConfig>>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: VoteOf::<TypeConfig>::from_leader_id(
                <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(3, 1),
                true,
            ),
            prev_log_id: Some(id(2, 9)),
            entries,
            leader_commit: Some(id(3, 10)),
        }
    }

    #[test]
    fn kept_json_is_found_only_under_its_own_log_id_and_stays_bounded() {
        let enc = Encoded::default();
        enc.put(id(3, 10), Bytes::from_static(b"{\"a\":1}"));
        assert!(enc.get(&id(3, 10)).is_some());
        // Another term's entry at the same index is another entry.
        assert!(enc.get(&id(4, 10)).is_none());
        // A new leader's entry at that index replaces it.
        enc.put(id(4, 10), Bytes::from_static(b"{\"b\":2}"));
        assert!(enc.get(&id(3, 10)).is_none());
        assert_eq!(
            enc.get(&id(4, 10)).unwrap(),
            Bytes::from_static(b"{\"b\":2}")
        );
        for i in 0..(MAX_ENTRIES as u64 + 10) {
            enc.put(id(5, 100 + i), Bytes::from_static(b"{}"));
        }
        let k = enc.inner.lock().unwrap();
        assert_eq!(k.by_index.len(), MAX_ENTRIES);
        assert_eq!(k.bytes, 2 * MAX_ENTRIES);
        // The oldest went first.
        assert!(!k.by_index.contains_key(&10));
        assert!(k.by_index.contains_key(&(100 + MAX_ENTRIES as u64 + 9)));
        drop(k);
        // Large ones by bytes.
        enc.put(id(6, 1 << 20), Bytes::from(vec![b' '; MAX_BYTES]));
        let k = enc.inner.lock().unwrap();
        assert!(k.bytes <= MAX_BYTES);
    }

    #[test]
    fn a_damaged_append_is_refused_and_keeps_nothing() {
        let enc = Encoded::default();
        let req = request(vec![entry(3, 10, b"one")]);
        let mut data = serde_json::to_vec(&req).unwrap();
        let n = data.len();
        data.truncate(n - 5);
        assert!(enc.decode_append(&data).is_err());
        assert!(enc.get(&id(3, 10)).is_none());
    }
}
