//! Delivery of SMS messages: the [`SmsSender`] trait and the development
//! senders.
//!
//! A sender delivers one rendered message to one E.164 number and says,
//! when it fails, whether trying again may help. Gateway adapters live in
//! the `otp-recovery-gateways` crate; for development, [`ConsoleSender`] prints messages and
//! [`RecordingSender`] keeps them for tests.
//!
//! Your own gateway is one method:
//!
//! ```
//! use async_trait::async_trait;
//! use otp_recovery::sms::{SendError, SendErrorKind, SendReceipt, SmsMessage, SmsSender};
//!
//! struct MyGateway;
//!
//! #[async_trait]
//! impl SmsSender for MyGateway {
//!     async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError> {
//!         let _to = message.to.as_str();
//!         let _body = message.body.expose_secret(); // only ever into the request body
//!         Err(SendError::new(SendErrorKind::Unavailable, "gateway returned 503"))
//!     }
//! }
//! ```

mod console;
mod failover;
pub(crate) mod recording;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use console::ConsoleSender;
pub use failover::Failover;
pub use recording::RecordingSender;

use crate::phone::PhoneNumber;
use crate::secret::SecretString;

/// What a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// Carries a one-time code.
    Code,
    /// A notice that carries no secret (e.g. "your password was changed").
    Notice,
}

/// One SMS to send. The body may carry a code, so it is a [`SecretString`]:
/// a sender reads it only to put it into the gateway request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SmsMessage {
    /// Recipient, E.164.
    pub to: PhoneNumber,
    /// The rendered text.
    pub body: SecretString,
    /// What the message is for.
    pub kind: MessageKind,
}

impl SmsMessage {
    /// A message to `to`.
    pub fn new(to: PhoneNumber, body: SecretString, kind: MessageKind) -> Self {
        SmsMessage { to, body, kind }
    }
}

/// The gateway's acknowledgement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendReceipt {
    /// The gateway's message id, if it gives one.
    pub id: Option<String>,
}

impl SendReceipt {
    /// A receipt with the gateway's message id.
    pub fn with_id(id: impl Into<String>) -> Self {
        SendReceipt { id: Some(id.into()) }
    }
}

/// Why a send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// The number is not a valid mobile number for the gateway.
    InvalidNumber,
    /// The recipient cannot receive it (unsubscribed, blocked, landline).
    Unreachable,
    /// The gateway refused the message (region not permitted, content).
    Rejected,
    /// The gateway's credentials or configuration are wrong.
    Configuration,
    /// The gateway asks us to slow down.
    RateLimited,
    /// The gateway is down or answered with a server error.
    Unavailable,
    /// No answer in time.
    Timeout,
}

impl SendErrorKind {
    /// Whether sending again later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            SendErrorKind::RateLimited | SendErrorKind::Unavailable | SendErrorKind::Timeout
        )
    }
}

/// A failed send. The message describes the failure (a gateway error code,
/// a status) and must never contain the message body or a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct SendError {
    kind: SendErrorKind,
    message: String,
    retry_after: Option<Duration>,
}

impl SendError {
    /// A failure of `kind`, described by `message`.
    pub fn new(kind: SendErrorKind, message: impl Into<String>) -> Self {
        SendError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds the wait the gateway asked for.
    #[must_use]
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// What kind of failure.
    pub fn kind(&self) -> SendErrorKind {
        self.kind
    }

    /// Whether sending again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The wait the gateway asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// Delivers one SMS.
#[async_trait]
pub trait SmsSender: Send + Sync {
    /// Sends `message`; returns the gateway's receipt.
    ///
    /// # Errors
    /// A [`SendError`] saying whether a retry may help.
    async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError>;
}

#[async_trait]
impl<T: SmsSender + ?Sized> SmsSender for Arc<T> {
    async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError> {
        (**self).send(message).await
    }
}
