//! The metaserver: one openraft group per region holding the namespace and the cluster map.

pub mod backfill;
pub mod calls;
pub mod calls_port;
pub mod cluster;
pub mod config;
pub mod copy;
pub mod error;
pub mod home;
pub mod leases;
pub mod link_detector;
pub mod liveness;
pub mod namespace;
pub mod raft;
pub mod regions;
pub mod server;
pub mod service;
pub mod tokens;
pub mod trim;
pub mod watch;

pub use config::MetaConfig;
pub use error::MetaError;
pub use server::run;
