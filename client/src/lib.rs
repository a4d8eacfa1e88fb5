//! The Meridian client library: block I/O against chunkservers, metadata calls against the
//! metaservers, the file layer that combines them, and the FUSE adapter. The CSI driver
//! and the admin CLI build on it.

pub mod blocks;
pub mod cache;
pub mod dirty;
pub mod fs;
pub mod fuse;
pub mod meta;

pub use blocks::{BlockClient, ClientError, PutReceipt};
pub use fs::{FileSystem, FsOptions};
pub use meta::{MetaClient, MetaError};
