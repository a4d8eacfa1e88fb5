//! openraft glue: the type configuration, the log store and state machine on redb, the
//! snapshot format, and the gRPC network between members.

pub mod log_store;
pub mod network;
pub mod snapshot;
pub mod state_machine;

use std::fmt;

use meridian_proto::NodeInfo;
use meridian_proto::ns::{Command, NsError, Reply};
use meridian_proto::{NodeId, NodeState};
use serde::{Deserialize, Serialize};

/// A change to the cluster map of chunkservers.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ClusterCmd {
    /// A chunkserver joins (or comes back with a new address or capacity); it is up.
    Register(NodeInfo),
    /// The leader's failure detector (or an operator) changes a node's state.
    SetState {
        /// The node.
        id: NodeId,
        /// Its new state.
        state: NodeState,
    },
}

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
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Ns(c) => write!(f, "ns@{}", c.hlc),
            Request::Cluster(c) => write!(f, "cluster:{c:?}"),
            Request::Remote(b) => write!(f, "remote:{}x{}", b.origin.0, b.records.len()),
            Request::Peers(p) => write!(f, "peers:{p:?}"),
            Request::Promise(h) => write!(f, "promise@{h}"),
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
            let log = LogStore::open(&dir.path().join("log.redb")).map_err(err)?;
            let (sm, _) =
                StateMachine::open(dir.path(), meridian_proto::RegionId(1)).map_err(err)?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for log stores and state machines.
    #[test]
    fn redb_stores_pass_the_openraft_storage_suite() {
        TypeConfig::run(async {
            Suite::test_all(RedbBuilder).await.unwrap();
        });
    }
}
