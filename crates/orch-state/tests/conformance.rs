//! Every store runs the same conformance suite.

use std::sync::Arc;

use orch_core::StateStore;
use orch_state::{MemoryStore, SqliteStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let open = move || Arc::clone(&store);
    conformance::run_all(&open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orch.db");
    // Every call opens the file afresh: durability across reopen is real.
    let open = move || Arc::new(SqliteStore::open(&path).unwrap()) as Arc<dyn StateStore>;
    conformance::run_all(&open).await;
}
