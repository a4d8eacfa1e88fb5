//! The metaserver: one openraft group per region holding the namespace and the cluster map.

pub mod namespace;
