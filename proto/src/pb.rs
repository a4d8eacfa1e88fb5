//! Code generated from `proto/meridian/*.proto` and `proto/csi/v1/csi.proto`.

/// The chunkserver service and its messages.
pub mod chunk {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("meridian.chunk.v1");
}

/// The metaserver services (namespace, cluster map, administration, Raft) and messages.
pub mod meta {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("meridian.meta.v1");
}

/// Control of the TCP fault proxy.
pub mod proxy {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("meridian.proxy.v1");
}

/// The Container Storage Interface v1 (identity, controller and node services), served by
/// `meridian csi`.
pub mod csi {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("csi.v1");
}
