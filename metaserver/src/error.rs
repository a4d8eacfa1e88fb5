//! The metaserver's one error type, and the one place it becomes a gRPC status. What the
//! caller should do follows from the kind: retry elsewhere (`Unavailable`), fix the
//! request (`Invalid`), or report a server fault (`Store`, `Config`, `Io`). Namespace
//! refusals (`NsError`) travel inside replies with their errno; as a status they are a
//! failed precondition.

use meridian_proto::ns::NsError;
use tonic::Status;

/// Why a metaserver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The namespace refused the operation.
    #[error(transparent)]
    Ns(#[from] NsError),
    /// A request that can never succeed as sent.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Not the leader, no leader yet, or leadership changing: retry, maybe elsewhere.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No such thing (a node, a member).
    #[error("not found: {0}")]
    NotFound(String),
    /// The work did not finish in time; it may still finish.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The local store failed, or holds damaged data.
    #[error("store: {0}")]
    Store(String),
    /// Configuration that cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// Listening, files, the runtime.
    #[error("{0}")]
    Io(String),
}

impl From<MetaError> for Status {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Invalid(m) => Status::invalid_argument(m),
            MetaError::Unavailable(m) => Status::unavailable(m),
            MetaError::NotFound(m) => Status::not_found(m),
            MetaError::Timeout(m) => Status::deadline_exceeded(m),
            MetaError::Ns(NsError::Store(m)) | MetaError::Store(m) => Status::internal(m),
            MetaError::Ns(ns) => Status::failed_precondition(ns.to_string()),
            MetaError::Config(m) | MetaError::Io(m) => Status::internal(m),
        }
    }
}

impl From<redb::Error> for MetaError {
    fn from(e: redb::Error) -> Self {
        MetaError::Store(e.to_string())
    }
}

/// A store failure (any redb error type) as a [`MetaError`].
pub fn store(e: impl Into<redb::Error>) -> MetaError {
    MetaError::Store(e.into().to_string())
}
