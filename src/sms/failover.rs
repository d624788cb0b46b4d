//! Failover between two senders (being written).

/// A primary sender and a secondary one.
#[derive(Debug)]
pub struct Failover<P, S> {
    /// The sender tried first.
    pub primary: P,
    /// The sender tried when the primary fails in a way a retry may help.
    pub secondary: S,
}
