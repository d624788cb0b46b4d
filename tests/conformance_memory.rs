//! The in-memory store passes the conformance suite.

use otp_recovery::store::MemoryStore;

otp_recovery::code_store_conformance!(async { MemoryStore::new() });
