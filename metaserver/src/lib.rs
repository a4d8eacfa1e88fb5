//! The metaserver: one openraft group per region holding the namespace and the cluster map.
//!
//! Not built yet (issue 3). Until then chunkservers and clients read the cluster map from a
//! TOML file (see `meridian_proto::ClusterMap::load`).
