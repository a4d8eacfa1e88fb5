//! The Meridian client library: block I/O against chunkservers, metadata calls against the
//! metaservers, the file layer that combines them, and (with the `fuse` feature) the FUSE
//! adapter. The mount, the CSI driver and the admin CLI build on it; the chunkservers use
//! it without FUSE to reach the metaservers and each other.

pub mod blocks;
pub mod cache;
pub mod caps;
pub mod dirty;
pub mod fs;
#[cfg(feature = "fuse")]
pub mod fuse;
pub mod meta;

pub use blocks::{BlockClient, ClientError, PutReceipt};
pub use fs::{FileSystem, FsOptions};
pub use meta::{MetaClient, MetaError};
