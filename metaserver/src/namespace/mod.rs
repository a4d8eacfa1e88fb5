//! The namespace state machine: volumes, inodes, directory entries, extent maps, xattrs and
//! block reference counts, over a redb transaction. Pure: no networking, no clocks, no
//! async; time and HLC stamps arrive inside each command, so every Raft member (and every
//! replay) computes the same state.

pub mod access;
pub mod apply;
mod apply_remote;
pub mod backfill;
pub mod check;
pub mod conflict;
pub mod copy_drop;
pub(crate) mod ctx;
pub mod dir_times;
pub(crate) mod fence;
pub(crate) mod footprint;
pub mod history;
mod image;
mod image_pieces;
mod image_read;
mod image_ready;
pub(crate) mod lazy_table;
pub mod lease;
pub mod leave;
pub mod links;
pub mod merge;
pub(crate) mod ops;
pub mod read;
pub mod relay;
pub mod settle;
pub mod staging;
pub mod tables;
pub(crate) mod tree_drop;
pub mod trim;
mod volume_ids;
mod write_tables;

/// The namespace types live in the shared contract crate.
pub use meridian_proto::ns as types;

pub use apply::{apply, apply_remote, install_image};
pub use merge::{MergeOutcome, RemoteBatch};
pub use read::{DirPage, NsReader};
pub use tables::WriteTables;
pub use types::*;

/// Creates every table of the namespace and of its leases that `tx` lacks: what a store
/// does when it starts, so that read transactions find each (a write transaction opens a
/// table only when an entry uses it).
pub fn create_tables(tx: &redb::WriteTransaction) -> Result<(), NsError> {
    WriteTables::create_all(tx)?;
    lease::LeaseTables::create_all(tx)
}

/// A state database in memory with every table, for tests.
#[cfg(test)]
fn memory_db() -> redb::Database {
    let db = redb::Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .unwrap();
    let tx = db.begin_write().unwrap();
    create_tables(&tx).unwrap();
    tx.commit().unwrap();
    db
}

#[cfg(test)]
mod backfill_tests;
#[cfg(test)]
mod content_tests;
#[cfg(test)]
mod convergence_tests;
#[cfg(test)]
mod copy_drop_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod lease_tests;
#[cfg(test)]
mod leave_tests;
#[cfg(test)]
mod merge_tests;
#[cfg(test)]
mod relay_tests;
#[cfg(test)]
mod settle_tests;
#[cfg(test)]
mod staging_tests;
#[cfg(test)]
mod test_regions;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tree_drop_tests;
#[cfg(test)]
mod trim_model_tests;
#[cfg(test)]
mod trim_regions_tests;
#[cfg(test)]
mod trim_tests;
