//! An append cut into appends of bounded size on its way to a follower.
//!
//! Openraft sends a follower that is behind up to 300 entries in one append, whatever
//! their size, and a member takes at most [`META_MESSAGE_LIMIT`] (64 MiB) in one message.
//! Entries of a few hundred KiB each (extended attributes of 64 KiB, an image's pieces)
//! made an append larger than that for a follower a few hundred entries behind: it
//! refused the same append at every try and never caught up. An append's JSON is now
//! made a part at a time, each part at most [`APPEND_MAX_BYTES`] unless one entry alone
//! is larger, and sent as an append of its own: the same vote and commit index, its
//! `prev_log_id` the last entry of the part before. This is what openraft itself does
//! when it cuts a long log into appends of 300 entries; the follower commits no further
//! than the entries it holds from this leader, and acknowledges each part by its last
//! log id (on a stream, openraft counts acknowledgements per log id; a unary call answers
//! the first part's as a partial success).
//!
//! [`META_MESSAGE_LIMIT`]: meridian_proto::channels::META_MESSAGE_LIMIT

use std::sync::Arc;

use openraft::raft::AppendEntriesRequest;
use openraft::type_config::alias::LogIdOf;

use super::TypeConfig;
use super::encoded::Encoded;

/// The most bytes of JSON an append carries when it holds more than one entry: a quarter
/// of what a member takes in one message.
pub const APPEND_MAX_BYTES: usize = 16 << 20;

/// One append of a request cut in parts.
#[derive(Debug)]
pub struct Part {
    /// The append's JSON (a whole request's, when it is not cut).
    pub json: Vec<u8>,
    /// The last log id it carries (its `prev_log_id` when it carries no entry).
    pub last: Option<LogIdOf<TypeConfig>>,
    /// Whether entries of the request follow in later parts.
    pub more: bool,
}

/// A request's appends, made a part at a time as they are taken.
pub struct AppendParts {
    encoded: Arc<Encoded>,
    request: AppendEntriesRequest<TypeConfig>,
    max_bytes: usize,
    /// The first entry of the next part.
    next: usize,
    /// The next part's `prev_log_id`.
    prev: Option<LogIdOf<TypeConfig>>,
    /// Every part was given.
    done: bool,
}

impl AppendParts {
    /// `request`'s appends, each at most `max_bytes` of JSON unless one entry alone is
    /// larger; entries' JSON taken from `encoded` where kept. A request within
    /// `max_bytes` is one part, the document `serde_json::to_vec(request)` gives.
    pub fn new(
        encoded: Arc<Encoded>,
        request: AppendEntriesRequest<TypeConfig>,
        max_bytes: usize,
    ) -> Self {
        let prev = request.prev_log_id;
        AppendParts {
            encoded,
            request,
            max_bytes,
            next: 0,
            prev,
            done: false,
        }
    }
}

impl Iterator for AppendParts {
    type Item = Part;

    fn next(&mut self) -> Option<Part> {
        if self.done {
            return None;
        }
        let r = &self.request;
        let mut tail = b"],\"leader_commit\":".to_vec();
        write_json(&r.leader_commit, &mut tail);
        tail.push(b'}');
        let mut json = Vec::with_capacity(256 + (r.entries.len() - self.next).min(64) * 512);
        json.extend_from_slice(b"{\"vote\":");
        write_json(&r.vote, &mut json);
        json.extend_from_slice(b",\"prev_log_id\":");
        write_json(&self.prev, &mut json);
        json.extend_from_slice(b",\"entries\":[");
        let first = self.next;
        while let Some(entry) = r.entries.get(self.next) {
            let entry_json = self.encoded.entry_json(entry);
            let taken = self.next - first;
            if taken > 0 && json.len() + 1 + entry_json.len() + tail.len() > self.max_bytes {
                break;
            }
            if taken > 0 {
                json.push(b',');
            }
            json.extend_from_slice(&entry_json);
            self.next += 1;
        }
        json.extend_from_slice(&tail);
        if self.next > first {
            self.prev = Some(r.entries[self.next - 1].log_id);
        }
        let more = self.next < r.entries.len();
        self.done = !more;
        Some(Part {
            json,
            last: self.prev,
            more,
        })
    }
}

/// `v`'s JSON, written at the end of `out`.
fn write_json<T: serde::Serialize>(v: &T, out: &mut Vec<u8>) {
    serde_json::to_writer(out, v).expect("raft messages serialize");
}

#[cfg(test)]
#[path = "append_parts_tests.rs"]
mod tests;
