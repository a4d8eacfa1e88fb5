//! The Meridian client library. Today: block I/O against a region's chunkservers (put
//! through a coordinating placement, verified reads with replica fallback). The file layer,
//! the FUSE adapter, the CSI driver and the admin CLI build on it in later issues.

pub mod blocks;
pub mod meta;

pub use blocks::{BlockClient, ClientError, PutReceipt};
pub use meta::{MetaClient, MetaError};
