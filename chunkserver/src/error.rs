//! The chunkserver's errors, and the one place they become gRPC statuses.

use meridian_proto::{BlockError, BlockId, NodeId};
use tonic::Status;

use crate::format::FormatError;

/// Everything that can go wrong in the chunkserver.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// A request that can never succeed as sent.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A block sent to us does not match its id.
    #[error("rejected: {0}")]
    Rejected(#[from] BlockError),
    /// The block is not stored here.
    #[error("block {0} is not stored on this node")]
    NotFound(BlockId),
    /// The block belongs to a volume that does not live in this region.
    #[error("data residency: {0}")]
    Residency(String),
    /// The copy stored here is damaged; another replica must serve it.
    #[error("block {id} on {node} is corrupt: {reason}")]
    Corrupt {
        /// The block.
        id: BlockId,
        /// This node.
        node: NodeId,
        /// What is wrong with it.
        reason: String,
    },
    /// A byte range outside the block.
    #[error("block {id} has {len} bytes; range {offset}+{length} is outside it")]
    OutOfRange {
        /// The block.
        id: BlockId,
        /// Its plaintext length.
        len: u32,
        /// Asked offset.
        offset: u32,
        /// Asked length.
        length: u32,
    },
    /// The node has no room for the block.
    #[error("no space: block needs {need} bytes, {free} free of capacity")]
    NoSpace {
        /// Bytes needed.
        need: u64,
        /// Bytes free.
        free: u64,
    },
    /// Fewer than the minimum number of copies became durable.
    #[error(
        "block {id}: only {copies} of the required {min_copies} copies are durable (wanted {wanted}); {failures}"
    )]
    TooFewCopies {
        /// The block.
        id: BlockId,
        /// Durable copies.
        copies: usize,
        /// W.
        min_copies: u32,
        /// R.
        wanted: u32,
        /// What happened at each placement that failed.
        failures: String,
    },
    /// A local disk operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// On which file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state database failed.
    #[error("state database: {0}")]
    Db(String),
    /// Something this node needs to decide cannot be reached now; try again.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl ChunkError {
    /// Wraps an I/O error with what and where.
    pub fn io(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.display().to_string();
        move |source| ChunkError::Io { what, path, source }
    }

    /// A stored block that failed to parse.
    pub fn corrupt_format(id: BlockId, node: NodeId, e: FormatError) -> Self {
        ChunkError::Corrupt {
            id,
            node,
            reason: e.to_string(),
        }
    }
}

impl From<ChunkError> for Status {
    fn from(e: ChunkError) -> Self {
        let msg = e.to_string();
        match e {
            ChunkError::Invalid(_) | ChunkError::Rejected(_) => Status::invalid_argument(msg),
            ChunkError::NotFound(_) => Status::not_found(msg),
            ChunkError::Residency(_) => Status::failed_precondition(msg),
            ChunkError::Corrupt { .. } => Status::data_loss(msg),
            ChunkError::OutOfRange { .. } => Status::out_of_range(msg),
            ChunkError::NoSpace { .. } => Status::resource_exhausted(msg),
            ChunkError::TooFewCopies { .. } | ChunkError::Unavailable(_) => {
                Status::unavailable(msg)
            }
            ChunkError::Io { .. } | ChunkError::Db(_) => Status::internal(msg),
        }
    }
}
