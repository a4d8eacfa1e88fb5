//! A table of a write transaction, opened the first time a command uses it.
//!
//! A metaserver applies every Raft entry in a write transaction of its own. Opening a
//! redb table costs a lookup in the table tree (and a few allocations), and every table
//! opened is flushed again at commit, used or not: opening all of the namespace's tables
//! for every entry was about a tenth of a metaserver's CPU on a small-file workload, while
//! an entry uses a handful. Every table exists from the state machine's start
//! (`WriteTables::create_all` and `LeaseTables::create_all` make them then), so opening
//! one later fails only on a storage error, returned to the command like any other.

use std::cell::OnceCell;

use redb::{Key, Table, TableDefinition, Value, WriteTransaction};

use super::tables::store_err;
use super::types::NsError;

/// One table of `tx`, opened on first use.
pub(crate) struct LazyTable<'txn, K: Key + 'static, V: Value + 'static> {
    tx: &'txn WriteTransaction,
    def: TableDefinition<'static, K, V>,
    table: OnceCell<Table<'txn, K, V>>,
}

impl<'txn, K: Key + 'static, V: Value + 'static> LazyTable<'txn, K, V> {
    /// The table `def` of `tx`, not opened yet.
    pub(crate) fn new(tx: &'txn WriteTransaction, def: TableDefinition<'static, K, V>) -> Self {
        LazyTable {
            tx,
            def,
            table: OnceCell::new(),
        }
    }

    /// The table, to read.
    pub(crate) fn open(&self) -> Result<&Table<'txn, K, V>, NsError> {
        if let Some(t) = self.table.get() {
            return Ok(t);
        }
        let t = self.tx.open_table(self.def).map_err(store_err)?;
        Ok(self.table.get_or_init(|| t))
    }

    /// The table, to write.
    pub(crate) fn open_mut(&mut self) -> Result<&mut Table<'txn, K, V>, NsError> {
        self.open()?;
        Ok(self.table.get_mut().expect("opened just above"))
    }
}
