//! The cluster map: a region's chunkservers with their zone, address, capacity and state,
//! stamped with an epoch that grows on every change.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, RegionId, ZoneId};

/// A cluster map that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The file could not be read.
    #[error("cannot read cluster map {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not a valid cluster map.
    #[error("cluster map {path} is not valid TOML: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Two nodes share an id.
    #[error("cluster map lists node {0} twice")]
    DuplicateNode(NodeId),
    /// A node has no usable address.
    #[error("cluster map node {0} has an empty address")]
    EmptyAddress(NodeId),
    /// A node has zero capacity.
    #[error("cluster map node {0} has zero capacity")]
    ZeroCapacity(NodeId),
}

/// What a chunkserver may be asked to do.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Serving and accepting new blocks.
    #[default]
    Up,
    /// Missed heartbeats; still placed on, but readers try it last.
    Suspect,
    /// Not reachable; not placed on.
    Down,
    /// Being emptied before removal; serves reads, takes no new blocks.
    Draining,
}

impl NodeState {
    /// Whether new blocks may be placed on a node in this state.
    pub fn accepts_blocks(self) -> bool {
        matches!(self, NodeState::Up | NodeState::Suspect)
    }
}

/// One chunkserver as the cluster map knows it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id, unique in the region.
    pub id: NodeId,
    /// Its failure domain.
    pub zone: ZoneId,
    /// Where its ChunkService listens (`host:port`).
    pub address: String,
    /// Where its range port listens (`host:port`; empty: it has none): range reads and
    /// puts over TCP (TLS with the deployment's certificates when it has them), see
    /// [`crate::range_wire`] and [`crate::port_conn`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub range_address: String,
    /// Bytes it may store; placement weight.
    pub capacity: u64,
    /// What it may be asked to do.
    #[serde(default)]
    pub state: NodeState,
}

/// A region's chunkservers, stamped with an epoch.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Grows on every change; a reader keeps the map with the larger epoch.
    pub epoch: u64,
    /// The region these chunkservers belong to.
    #[serde(default)]
    pub region: RegionId,
    /// The nodes, sorted by id.
    #[serde(default)]
    pub nodes: Vec<NodeInfo>,
}

impl ClusterMap {
    /// Builds a map, sorting the nodes and checking them.
    pub fn new(epoch: u64, region: RegionId, mut nodes: Vec<NodeInfo>) -> Result<Self, MapError> {
        nodes.sort_by_key(|n| n.id);
        let map = ClusterMap {
            epoch,
            region,
            nodes,
        };
        map.validate()?;
        Ok(map)
    }

    /// Parses and checks a map written as TOML.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, MapError> {
        let map: ClusterMap = toml::from_str(text).map_err(|e| MapError::Parse {
            path: origin.to_string(),
            reason: e.to_string(),
        })?;
        ClusterMap::new(map.epoch, map.region, map.nodes)
    }

    /// Reads a map from a TOML file.
    pub fn load(path: &Path) -> Result<Self, MapError> {
        let text = std::fs::read_to_string(path).map_err(|source| MapError::Read {
            path: path.display().to_string(),
            source,
        })?;
        ClusterMap::from_toml(&text, &path.display().to_string())
    }

    /// The map as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a cluster map always serializes")
    }

    fn validate(&self) -> Result<(), MapError> {
        let mut seen = BTreeSet::new();
        for n in &self.nodes {
            if !seen.insert(n.id) {
                return Err(MapError::DuplicateNode(n.id));
            }
            if n.address.trim().is_empty() {
                return Err(MapError::EmptyAddress(n.id));
            }
            if n.capacity == 0 {
                return Err(MapError::ZeroCapacity(n.id));
            }
        }
        Ok(())
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes
            .binary_search_by_key(&id, |n| n.id)
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// Nodes that may receive new blocks.
    pub fn placeable(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().filter(|n| n.state.accepts_blocks())
    }
}

/// Another region: its id and its metaservers' addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRegion {
    /// Region id.
    pub region: u16,
    /// Its metaservers.
    pub meta: Vec<String>,
}

impl std::str::FromStr for PeerRegion {
    type Err = String;

    /// `REGION=ADDR[,ADDR...]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (region, addrs) = s
            .split_once('=')
            .ok_or_else(|| format!("peer {s:?}: expected REGION=ADDR[,ADDR...]"))?;
        let region = region
            .trim()
            .parse()
            .map_err(|e| format!("peer {s:?}: region: {e}"))?;
        let meta: Vec<String> = addrs
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if meta.is_empty() {
            return Err(format!("peer {s:?}: no metaserver address"));
        }
        Ok(PeerRegion { region, meta })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
epoch = 7
region = 1

[[nodes]]
id = 2
zone = "b"
address = "127.0.0.1:7002"
capacity = 1000

[[nodes]]
id = 1
zone = "a"
address = "127.0.0.1:7001"
capacity = 1000
state = "draining"
"#;

    #[test]
    fn parses_toml_and_sorts_nodes() {
        let map = ClusterMap::from_toml(SAMPLE, "sample").unwrap();
        assert_eq!(map.epoch, 7);
        assert_eq!(map.region, RegionId(1));
        assert_eq!(map.nodes[0].id, NodeId(1));
        assert_eq!(map.node(NodeId(1)).unwrap().state, NodeState::Draining);
        assert_eq!(map.node(NodeId(2)).unwrap().state, NodeState::Up);
        assert_eq!(
            map.placeable().map(|n| n.id).collect::<Vec<_>>(),
            vec![NodeId(2)]
        );
        let again = ClusterMap::from_toml(&map.to_toml(), "again").unwrap();
        assert_eq!(again, map);
    }

    #[test]
    fn rejects_duplicates_and_zero_capacity() {
        let dup = SAMPLE.replace("id = 2", "id = 1");
        assert!(matches!(
            ClusterMap::from_toml(&dup, "x"),
            Err(MapError::DuplicateNode(NodeId(1)))
        ));
        let zero = SAMPLE.replacen("capacity = 1000", "capacity = 0", 1);
        assert!(matches!(
            ClusterMap::from_toml(&zero, "x"),
            Err(MapError::ZeroCapacity(_))
        ));
        assert!(matches!(
            ClusterMap::from_toml("epoch = [", "x"),
            Err(MapError::Parse { .. })
        ));
    }
}
