//! The chunkserver: stores content-addressed blocks durably on local disk, verifies every
//! block it receives or serves, and replicates puts synchronously to the block's other
//! placements inside the region.

mod adopt;
pub mod config;
mod direct;
pub mod error;
pub mod format;
pub mod gc;
pub mod journal;
pub mod layout;
pub mod ledger;
pub mod maintain;
pub mod map;
mod open_files;
pub mod packs;
pub mod put_port;
pub mod range_port;
pub mod replicate;
pub mod residency;
pub mod server;
pub mod service;
pub mod ship;
pub mod store;
mod tasks;
pub mod tokens;

pub use config::ChunkConfig;
pub use error::ChunkError;
pub use server::run;
