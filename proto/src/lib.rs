//! Meridian's shared contract: the generated gRPC code and the small pure types every
//! component must agree on bit for bit.

/// The protobuf runtime the generated messages use (for `Message::encoded_len`).
pub use prost;
pub mod block;
pub mod calls_wire;
pub mod channels;
pub mod cluster;
pub mod disk;
pub mod fair;
pub mod hlc;
pub mod ids;
pub mod mutate;
pub mod net;
pub mod ns;
pub mod pb;
pub mod placement;
pub mod port_conn;
pub mod put_wire;
pub mod range_wire;
pub mod recent;
pub mod reload;
pub mod tls;
pub mod tls_incoming;
pub mod tls_stream;
pub mod token;
pub mod tree;
pub mod wire;

pub use block::{BlockError, Compression, EncodedBlock};
pub use cluster::{ClusterMap, MapError, NodeInfo, NodeState, PeerRegion};
pub use hlc::{Hlc, HlcClock, physical_ms, physical_ns, set_clock_offset_ms};
pub use ids::{BlockId, CLIENT_KEY_LEN, IdError, InodeId, NodeId, RegionId, ZoneId, client_id_of};
pub use placement::placement;
pub use tree::Outboard;

/// Response header a metaserver follower sets on a reply it forwarded from the leader: the
/// leader's address, which the client then asks first (one hop less per call).
pub const LEADER_HEADER: &str = "x-meridian-leader";
