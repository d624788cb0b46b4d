//! Malformed input: what the crate refuses before anything is looked up.

/// Malformed input, refused before anything is looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A code must be 6 to 10 ASCII digits (and exactly the policy's length
    /// to be checked).
    #[error("a code is 6 to 10 digits")]
    MalformedCode,
    /// An identifier is at most
    /// [`MAX_IDENTIFIER_BYTES`](crate::MAX_IDENTIFIER_BYTES) bytes (an
    /// email address's longest).
    #[error("an identifier is at most 320 bytes")]
    IdentifierTooLong,
    /// A reset token is 96 lowercase hex characters.
    #[error("malformed reset token")]
    MalformedToken,
    /// A flow id is 32 lowercase hex characters.
    #[error("malformed recovery id")]
    MalformedFlowId,
    /// An account id is 1 to 128 bytes without control characters.
    #[error("malformed account id")]
    MalformedAccountId,
    /// A phone number must be E.164: `+` and 7 to 15 digits.
    #[error("malformed phone number: expected E.164 such as +14155550123")]
    MalformedPhone,
    /// A server key must have at least `min` bytes.
    #[error("server key too short: at least {min} bytes are required")]
    KeyTooShort {
        /// The minimum length in bytes.
        min: usize,
    },
    /// A support reference is 8 characters of Crockford base 32.
    #[error("malformed support reference: expected e.g. ABCD-1234")]
    MalformedReference,
    /// An agent name is 1 to 64 printable characters.
    #[error("malformed support agent name")]
    MalformedAgent,
    /// A support reason is 1 to 500 characters.
    #[error("a support action needs a reason of 1 to 500 characters")]
    MalformedReason,
    /// A key ring needs keys with distinct ids.
    #[error("duplicate key id {0} in the key ring")]
    DuplicateKeyId(u32),
    /// An authenticator secret must have at least `min` bytes.
    #[error("authenticator secret too short: at least {min} bytes are required")]
    TotpSecretTooShort {
        /// The minimum length in bytes.
        min: usize,
    },
    /// An authenticator parameter out of range.
    #[error("invalid authenticator setting: {0}")]
    TotpParameters(&'static str),
    /// A recovery code is 16 characters of Crockford base 32, in groups.
    #[error("malformed recovery code: expected e.g. ABCD-EFGH-JKMN-PQRS")]
    MalformedRecoveryCode,
    /// A set has 1 to 20 recovery codes.
    #[error("a set has 1 to 20 recovery codes")]
    RecoveryCodeCount,
    /// A second-channel address is malformed.
    #[error("malformed address")]
    MalformedAddress,
}
