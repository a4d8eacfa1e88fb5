//! Code generated from `proto/meridian/*.proto`.

/// The chunkserver service and its messages.
pub mod chunk {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("meridian.chunk.v1");
}
