use super::*;
use crate::raft::encoded::tests::{entry, id, request};
use openraft::type_config::alias::EntryOf;

fn parts(enc: &Arc<Encoded>, req: &AppendEntriesRequest<TypeConfig>, max: usize) -> Vec<Part> {
    AppendParts::new(enc.clone(), req.clone(), max).collect()
}

fn decoded(part: &Part) -> AppendEntriesRequest<TypeConfig> {
    serde_json::from_slice(&part.json).expect("a part is an append")
}

#[test]
fn an_append_within_the_bound_is_the_document_the_whole_request_encodes_to() {
    let enc = Arc::new(Encoded::default());
    let req = request(vec![entry(3, 10, &[7; 4096]), entry(3, 11, b"two")]);
    // Nothing kept: every entry encoded here.
    let cold = parts(&enc, &req, APPEND_MAX_BYTES);
    assert_eq!(cold.len(), 1);
    assert_eq!(cold[0].json, serde_json::to_vec(&req).unwrap());
    assert_eq!((cold[0].last, cold[0].more), (Some(id(3, 11)), false));
    // Kept (as a follower keeps them): the same bytes.
    let decoded = enc
        .decode_append(&serde_json::to_vec(&req).unwrap())
        .unwrap();
    assert_eq!(decoded.entries, req.entries);
    assert!(enc.get(&id(3, 11)).is_some());
    assert_eq!(
        parts(&enc, &req, APPEND_MAX_BYTES)[0].json,
        serde_json::to_vec(&req).unwrap()
    );
    // A heartbeat (no entries): one part, its last log id the request's previous one.
    let beat = request(Vec::new());
    let p = parts(&enc, &beat, APPEND_MAX_BYTES);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].json, serde_json::to_vec(&beat).unwrap());
    assert_eq!((p[0].last, p[0].more), (beat.prev_log_id, false));
}

#[test]
fn a_large_append_goes_in_parts_that_follow_on_from_each_other() {
    let enc = Arc::new(Encoded::default());
    // Twelve entries of about 6 KiB of JSON, and one of about 40 KiB alone past the bound.
    let mut entries: Vec<EntryOf<TypeConfig>> =
        (10..22).map(|i| entry(3, i, &[i as u8; 4096])).collect();
    entries.insert(5, entry(3, 99, &[1; 30_000]));
    for (i, e) in entries.iter_mut().enumerate() {
        e.log_id = id(3, 10 + i as u64);
    }
    let req = request(entries);
    let max = 16 << 10;
    let got = parts(&enc, &req, max);
    assert!(got.len() > 3, "{} parts", got.len());
    let mut prev = req.prev_log_id;
    let mut carried = Vec::new();
    for (i, p) in got.iter().enumerate() {
        let a = decoded(p);
        // Each within the bound, unless one entry alone is larger.
        assert!(
            p.json.len() <= max || a.entries.len() == 1,
            "part {i}: {}",
            p.json.len()
        );
        assert!(!a.entries.is_empty());
        assert_eq!((a.vote, a.leader_commit), (req.vote, req.leader_commit));
        assert_eq!(
            a.prev_log_id, prev,
            "part {i} follows on from the one before"
        );
        prev = a.entries.last().map(|e| e.log_id);
        assert_eq!(p.last, prev);
        assert_eq!(p.more, i + 1 < got.len());
        carried.extend(a.entries);
    }
    // Every entry once, in order.
    assert_eq!(carried, req.entries);
    // The large entry went alone.
    assert!(
        got.iter()
            .any(|p| decoded(p).entries.len() == 1 && p.json.len() > max)
    );
}
