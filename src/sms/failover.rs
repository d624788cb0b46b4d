//! Failover between two senders: a primary gateway and a secondary one.
//!
//! The sender lives here, its documentation on [`Failover`] (this module
//! is private; the type is re-exported from [`crate::sms`]).

use std::fmt;

use async_trait::async_trait;

use super::{SendError, SendReceipt, SmsMessage, SmsSender};

/// A primary sender and a secondary one, tried when the primary fails
/// retryably.
///
/// [`Failover`] sends through the primary. If the primary fails in a way
/// that trying again may help ([`SendError::is_retryable`]: rate limited,
/// unavailable, timed out), it sends through the secondary and returns the
/// secondary's result. A failure that another try cannot fix (an invalid
/// number, a rejected message, a configuration error) is returned as it is,
/// and the secondary is never asked: a number one gateway calls invalid
/// would not become valid at the other, and sending it again only costs.
///
/// It needs no runtime and no feature. Each side can be any [`SmsSender`],
/// including a retrying one, so that each gateway is retried before the
/// other is tried (feature `http`):
/// `Failover::new(Retrying::new(primary), Retrying::new(secondary))`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use otp_recovery::sms::{
///     Failover, MessageKind, RecordingSender, SendError, SendErrorKind, SmsMessage, SmsSender,
/// };
/// use otp_recovery::{PhoneNumber, SecretString};
///
/// let primary = RecordingSender::new();
/// let secondary = RecordingSender::new();
/// let sender = Failover::new(primary.clone(), secondary.clone());
///
/// // The primary is down: the secondary delivers.
/// primary.fail_next(SendError::new(SendErrorKind::Unavailable, "HTTP 503"));
/// let to = PhoneNumber::parse("+14155550123").unwrap();
/// let message = SmsMessage::new(to, SecretString::new("123456 is your code".into()), MessageKind::Code);
/// sender.send(&message).await.unwrap();
/// assert_eq!((primary.count(), secondary.count()), (0, 1));
///
/// // The number is invalid: the secondary is not asked.
/// primary.fail_next(SendError::new(SendErrorKind::InvalidNumber, "invalid number"));
/// let err = sender.send(&message).await.unwrap_err();
/// assert_eq!(err.kind(), SendErrorKind::InvalidNumber);
/// assert_eq!(secondary.count(), 1);
/// # });
/// ```
pub struct Failover<P, S> {
    primary: P,
    secondary: S,
}

impl<P, S> Failover<P, S> {
    /// Sends through `primary`, and through `secondary` when the primary's
    /// failure is retryable.
    pub fn new(primary: P, secondary: S) -> Self {
        Failover { primary, secondary }
    }

    /// The sender tried first.
    pub fn primary(&self) -> &P {
        &self.primary
    }

    /// The sender tried when the primary fails retryably.
    pub fn secondary(&self) -> &S {
        &self.secondary
    }

    /// The two senders, primary first.
    pub fn into_parts(self) -> (P, S) {
        (self.primary, self.secondary)
    }
}

/// Prints neither sender: their configuration is the host's business, and
/// may hold credentials of senders that do not redact them.
impl<P, S> fmt::Debug for Failover<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failover").finish_non_exhaustive()
    }
}

#[async_trait]
impl<P: SmsSender, S: SmsSender> SmsSender for Failover<P, S> {
    /// The primary's receipt; or, when the primary fails retryably, the
    /// secondary's result; or the primary's non-retryable error.
    async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError> {
        match self.primary.send(message).await {
            Ok(receipt) => Ok(receipt),
            Err(error) if error.is_retryable() => {
                // The error's kind and text carry no body and no credential.
                tracing::warn!(
                    kind = ?error.kind(),
                    error = %error,
                    "the primary SMS sender failed; trying the secondary"
                );
                self.secondary.send(message).await
            }
            Err(error) => Err(error),
        }
    }
}
