//! The cluster map of chunkservers as replicated state: registrations and state changes are
//! Raft commands; every change bumps the epoch.

use meridian_proto::{ClusterMap, NodeId, NodeInfo, NodeState, RegionId};
use redb::{ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{MetaError, store};

/// "map" -> ClusterMap (JSON).
pub const CLUSTER: TableDefinition<&str, &[u8]> = TableDefinition::new("cluster");
const KEY: &str = "map";

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

/// The map in `t`, or an empty one for `region`.
pub fn read(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    region: RegionId,
) -> Result<ClusterMap, MetaError> {
    match t.get(KEY).map_err(store)? {
        Some(v) => serde_json::from_slice(v.value())
            .map_err(|e| MetaError::Store(format!("damaged cluster map: {e}"))),
        None => Ok(ClusterMap {
            epoch: 0,
            region,
            nodes: Vec::new(),
        }),
    }
}

/// Applies a cluster command; returns the new map (epoch unchanged when nothing changed).
pub fn apply(
    t: &mut Table<'_, &'static str, &'static [u8]>,
    region: RegionId,
    cmd: &ClusterCmd,
) -> Result<ClusterMap, MetaError> {
    let mut map = read(t, region)?;
    let changed = match cmd {
        ClusterCmd::Register(info) => {
            let mut info = info.clone();
            info.state = NodeState::Up;
            match map.nodes.iter_mut().find(|n| n.id == info.id) {
                Some(n) if *n == info => false,
                Some(n) => {
                    // A draining node stays draining when it re-registers.
                    if n.state == NodeState::Draining {
                        info.state = NodeState::Draining;
                    }
                    *n = info;
                    true
                }
                None => {
                    map.nodes.push(info);
                    map.nodes.sort_by_key(|n| n.id);
                    true
                }
            }
        }
        ClusterCmd::SetState { id, state } => match map.nodes.iter_mut().find(|n| n.id == *id) {
            Some(n) if n.state != *state => {
                n.state = *state;
                true
            }
            _ => false,
        },
    };
    if changed {
        map.epoch += 1;
        let bytes = serde_json::to_vec(&map).map_err(|e| MetaError::Store(e.to_string()))?;
        t.insert(KEY, bytes.as_slice()).map_err(store)?;
    }
    Ok(map)
}
