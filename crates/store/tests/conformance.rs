#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Both backends against the conformance suite.

use std::cell::Cell;

use cutover_store::conformance::run_all;
use cutover_store::{MemoryStore, SqliteStore, Store};

#[test]
fn memory_store_conforms() {
    run_all(&|| Box::new(MemoryStore::new()) as Box<dyn Store>);
}

#[test]
fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let n = Cell::new(0);
    run_all(&|| {
        n.set(n.get() + 1);
        // A nested path, so opening also has to create the directories.
        let path = dir.path().join(format!("check-{}", n.get())).join("state.db");
        Box::new(SqliteStore::open(&path).unwrap()) as Box<dyn Store>
    });
}
