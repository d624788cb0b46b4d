//! The in-memory store passes the conformance suite.

use std::sync::Arc;

use otp_recovery::store::MemoryStore;

otp_recovery::code_store_conformance! {
    store: async { MemoryStore::new() },
    two_instances: async {
        let shared = Arc::new(MemoryStore::new());
        (shared.clone(), shared)
    },
}
