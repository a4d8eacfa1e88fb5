//! The metaserver: one openraft group per region holding the namespace and the cluster map.

pub mod cluster;
pub mod namespace;
pub mod raft;
