//! openraft glue: the type configuration, the log store (an append-only file), the state
//! machine (redb), the snapshot format, and the gRPC network between members.

mod append_parts;
mod applier;
mod background;
pub mod early;
pub mod encoded;
pub mod log_store;
pub mod network;
pub mod notices;
pub mod pacing;
pub mod snapshot;
pub mod snapshot_dir;
pub mod snapshot_policy;
pub mod spare;
pub mod state_machine;

use std::fmt;

use meridian_proto::ns::{Command, NsError, Reply};
use serde::{Deserialize, Serialize};

pub use crate::cluster::ClusterCmd;

/// The newest Raft requests this version reads, as a member reports it (`Status`): 1 reads
/// `CopyRemove` and `CopyRemoveStep`, and `CopyExtents` and `InstallImageSplit` before
/// them (a member that reports no level may or may not). A leader proposes those only
/// while every member that answers reports at least that, a majority of the voters among
/// them, and no member silent now last reported less (within
/// [`crate::service::LEVEL_MEMORY`]; [`crate::service::MetaNode::group_reads`]), and
/// otherwise what an older member reads (`CopyAbort`, a file's extents in its row, an
/// image cut with each inode whole): a group of older members could not read them and
/// would hold its region's log there.
pub const READS: u32 = 1;

/// One entry of the metaserver's Raft log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Request {
    /// A namespace mutation, stamped by the leader.
    Ns(Command),
    /// A cluster map change.
    Cluster(ClusterCmd),
    /// Records pulled from another region's change log, to merge.
    Remote(crate::namespace::RemoteBatch),
    /// The regions this one exchanges records with (from configuration).
    Peers(Vec<meridian_proto::RegionId>),
    /// A promise that every later local record is stamped after this: it lets an idle
    /// region's frontier move, so peers can settle past its last record.
    Promise(meridian_proto::Hlc),
    /// Changes a client answered alone under its directory leases, and leases it gives back.
    WriteBack(crate::namespace::lease::WriteBack),
    /// Leases the leader ended: their holder did not give them back when recalled.
    ExpireLeases(Vec<meridian_proto::InodeId>),
    /// What the leader noted about a peer region (how far it applied this region's
    /// records, the link detector's verdict), kept for the next leader.
    PeerNote(crate::namespace::links::PeerNote),
    /// A piece of the image of a volume this region is being brought into.
    InstallImage(crate::namespace::backfill::ImagePart),
    /// A piece of such an image with rows of an inode begun in the piece before, or with
    /// tombstones before the last piece (`namespace/image_pieces.rs`): a member of an
    /// earlier version cannot read it, rather than install it differently. Proposed only
    /// while the group reads it ([`READS`]).
    InstallImageSplit(crate::namespace::backfill::ImagePart),
    /// One step of dropping a volume that left this region.
    LeaveStep(u32),
    /// One step of dropping the extents a removed file left behind
    /// (`namespace/trim.rs`).
    TrimStep(meridian_proto::InodeId),
    /// Every block of a volume brought into this region is here.
    BlocksBroughtIn(u32),
    /// Bringing a volume into this region is given up: its image will never come.
    CancelBackfill(u32),
    /// The regions whose records reach this one through a peer.
    Relayed(Vec<(meridian_proto::RegionId, meridian_proto::RegionId)>),
    /// The start of a copy of a volume (snapshot or clone), made in steps.
    CopyBegin(crate::namespace::ops::copy::CopyBegin),
    /// A batch of a copy's rows.
    CopyRows(crate::namespace::ops::copy::CopyRows),
    /// A copy removed unfinished, at once: its maker went away (what a log written
    /// before `CopyRemove` replays).
    CopyAbort(crate::namespace::ops::copy::CopyAbort),
    /// More extents of a copy's file (a file of many is copied over several steps).
    /// Proposed only while the group reads it ([`READS`]).
    CopyExtents(crate::namespace::ops::copy::CopyExtents),
    /// A copy removed unfinished, in steps (`namespace/copy_drop.rs`): its row and a few
    /// of its rows now.
    CopyRemove(crate::namespace::ops::copy::CopyAbort),
    /// One step of such a removal, of the copy whose root this is.
    CopyRemoveStep(meridian_proto::InodeId),
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Ns(c) => write!(f, "ns@{}", c.hlc),
            Request::Cluster(c) => write!(f, "cluster:{c:?}"),
            Request::Remote(b) => write!(f, "remote:{}x{}", b.origin.0, b.records.len()),
            Request::Peers(p) => write!(f, "peers:{p:?}"),
            Request::Promise(h) => write!(f, "promise@{h}"),
            Request::WriteBack(w) => write!(f, "write-back:{}x{}", w.client, w.cmds.len()),
            Request::ExpireLeases(d) => write!(f, "expire-leases:{}", d.len()),
            Request::PeerNote(n) => write!(f, "peer-note:{}", n.region.0),
            Request::InstallImage(p) => write!(f, "install-image:{}", p.volume),
            Request::InstallImageSplit(p) => {
                write!(f, "install-image-split:{}:{}", p.volume, p.index)
            }
            Request::LeaveStep(v) => write!(f, "leave-step:{v}"),
            Request::TrimStep(ino) => write!(f, "trim-step:{ino}"),
            Request::BlocksBroughtIn(v) => write!(f, "blocks-brought-in:{v}"),
            Request::CancelBackfill(v) => write!(f, "cancel-backfill:{v}"),
            Request::Relayed(r) => write!(f, "relayed:{r:?}"),
            Request::CopyBegin(b) => write!(f, "copy-begin:{}->{}", b.source, b.name),
            Request::CopyRows(r) => write!(f, "copy-rows:{}x{}", r.volume, r.rows.len()),
            Request::CopyExtents(r) => {
                write!(f, "copy-extents:{}:{}x{}", r.volume, r.ino, r.extents.len())
            }
            Request::CopyAbort(a) => write!(f, "copy-abort:{}", a.volume),
            Request::CopyRemove(a) => write!(f, "copy-remove:{}", a.volume),
            Request::CopyRemoveStep(root) => write!(f, "copy-remove-step:{root}"),
        }
    }
}

/// What applying a log entry produced.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum Response {
    /// Blank and membership entries.
    #[default]
    None,
    /// A namespace outcome.
    Ns(Result<Reply, NsError>),
    /// The cluster map epoch after the change.
    Cluster(u64),
    /// What merging a remote batch did.
    Remote(Result<crate::namespace::MergeOutcome, NsError>),
    /// What a write-back did.
    WriteBack(Result<crate::namespace::lease::WriteBackOutcome, NsError>),
}

openraft::declare_raft_types!(
    /// Meridian's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// A metaserver's Raft handle.
pub type MetaRaft = openraft::Raft<TypeConfig, state_machine::StateMachine>;

/// Turns any error into the `io::Error` openraft's storage traits use.
pub(crate) fn io_err(e: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::type_config::TypeConfigExt;

    use super::TypeConfig;
    use super::log_store::LogStore;
    use super::state_machine::StateMachine;

    struct RedbBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
            let err = |e: std::io::Error| StorageError::read(TypeConfig::err_from_error(&e));
            let dir = tempfile::TempDir::new().map_err(err)?;
            let log = LogStore::open(&dir.path().join("raft-log"), None).map_err(err)?;
            let (sm, _) =
                StateMachine::open(dir.path(), meridian_proto::RegionId(1)).map_err(err)?;
            Ok((dir, log, sm))
        }
    }

    /// A log holding records a broken or hostile peer made up, that cannot apply here:
    /// the state machine applies it on every start (each such record skipped and listed
    /// with why), and a member applying the same log from scratch ends the same.
    #[test]
    fn a_log_of_records_that_cannot_apply_applies_on_every_start_and_says_why() {
        use meridian_proto::ns::*;
        use meridian_proto::{Hlc, InodeId, RegionId};
        use openraft::RaftTypeConfig;
        use openraft::entry::RaftEntry;
        use openraft::storage::RaftStateMachine;
        use openraft::type_config::alias::LogIdOf;
        use openraft::vote::RaftLeaderIdExt;
        use redb::ReadableDatabase;

        use super::Request;
        use crate::namespace::{NsReader, RemoteBatch};

        let log_id = |i: u64| {
            LogIdOf::<TypeConfig>::new(
                <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(1, 1),
                i,
            )
        };
        let stamp = |region: u16, ms: u64| Hlc {
            wall_ms: ms,
            counter: 0,
            region: RegionId(region),
        };
        let regions = vec![RegionId(1), RegionId(2)];
        let volume = (1 << 16) | 1;
        let root = InodeId::new(RegionId(1), 1).unwrap();
        let record = |ms: u64, op: Op, effects: Effects, volume: u32| Record {
            hlc: stamp(2, ms),
            now: Timespec::default(),
            op,
            effects,
            volume,
            regions: regions.clone(),
            deps: Vec::new(),
            client: None,
            epoch: 0,
        };
        let batch = RemoteBatch {
            origin: RegionId(2),
            records: vec![
                // A write to an inode of a volume nobody has.
                (
                    1,
                    record(
                        2000,
                        Op::CommitExtents {
                            ino: InodeId::new(RegionId(2), 99).unwrap(),
                            extents: Vec::new(),
                            size: 10,
                            base_version: None,
                            creds: Creds::root(),
                            staged: Vec::new(),
                        },
                        Effects::default(),
                        12345,
                    ),
                ),
                // An unlink of an inode that never was.
                (
                    2,
                    record(
                        2001,
                        Op::Unlink {
                            parent: root,
                            name: b"ghost".to_vec(),
                            creds: Creds::root(),
                        },
                        Effects {
                            target: Some(InodeId::new(RegionId(2), 7).unwrap()),
                            ..Effects::default()
                        },
                        volume,
                    ),
                ),
                // A create that claims the volume's root as the inode it made.
                (
                    3,
                    record(
                        2002,
                        Op::Mknod {
                            parent: root,
                            name: b"x".to_vec(),
                            kind: FileKind::File,
                            perm: 0o644,
                            rdev: 0,
                            exclusive: true,
                            creds: Creds::root(),
                        },
                        Effects {
                            created: Some(root),
                            ..Effects::default()
                        },
                        volume,
                    ),
                ),
            ],
            frontier: None,
            settled: None,
            scanned: 0,
            settled_by: Vec::new(),
        };
        let entries = [
            <TypeConfig as RaftTypeConfig>::Entry::new_normal(
                log_id(1),
                Request::Ns(Command {
                    op: Op::CreateVolume {
                        name: "shared".into(),
                        policy: VolumePolicy {
                            regions: regions.clone(),
                            ..VolumePolicy::default()
                        },
                    },
                    hlc: stamp(1, 1000),
                    now: Timespec::default(),
                    request: None,
                    ino: None,
                    lease: false,
                }),
            ),
            <TypeConfig as RaftTypeConfig>::Entry::new_normal(log_id(2), Request::Remote(batch)),
        ];
        TypeConfig::run(async move {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let dir = tempfile::TempDir::new().unwrap();
                let (mut sm, _) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
                let stream = futures::stream::iter(entries.iter().cloned().map(|e| Ok((e, None))));
                sm.apply(stream).await.expect("the state machine goes on");
                let db = sm.db();
                let conflicts = NsReader::new(&db.begin_read().unwrap())
                    .conflicts(None, 100)
                    .unwrap();
                assert_eq!(conflicts.len(), 3, "{conflicts:#?}");
                for c in &conflicts {
                    assert_eq!(c.kind, "skip");
                    assert!(c.detail.contains("not applied"), "{}", c.detail);
                }
                drop((sm, db));
                // Started again on the same state: it opens, and knows what it applied.
                let (mut sm, _) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
                let (applied, _) = sm.applied_state().await.unwrap();
                assert_eq!(applied, Some(log_id(2)));
                seen.push(conflicts);
            }
            assert_eq!(seen[0], seen[1], "two members agree");
        });
    }

    /// openraft's own conformance suite for log stores and state machines.
    #[test]
    fn redb_stores_pass_the_openraft_storage_suite() {
        TypeConfig::run(async {
            Suite::test_all(RedbBuilder).await.unwrap();
        });
    }
}
