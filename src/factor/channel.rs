//! A code on a second channel (email, or any channel the host can reach):
//! the [`ChannelSender`] trait the host implements over its mailer, the
//! [`ChannelAddress`] it sends to, and [`RecordingChannel`] for tests.
//!
//! The code follows the SMS code's rules: drawn from the OS CSPRNG, only its
//! MAC stored (under its own label, so an SMS code can never pass for it),
//! valid for the policy's code lifetime, compared in constant time, single
//! use; a failed send voids it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::input::InputError;
use crate::secret::{Code, SecretString};
use crate::sms::recording::Recorder;
use crate::sms::{SendError, SendReceipt};

/// Where second-channel codes go, and how to show it masked.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelAddress {
    address: String,
    masked: String,
}

impl ChannelAddress {
    /// An email address: one `@`, a non-empty local part and a domain with
    /// a dot, no spaces or control characters, at most 254 bytes. Masked as
    /// `a***@example.com`.
    ///
    /// # Errors
    /// [`InputError::MalformedAddress`] otherwise.
    pub fn email(address: &str) -> Result<Self, InputError> {
        let address = address.trim();
        let (local, domain) = address.split_once('@').ok_or(InputError::MalformedAddress)?;
        let valid = !local.is_empty()
            && address.len() <= 254
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && address.chars().all(|c| !c.is_whitespace() && !c.is_control());
        if !valid {
            return Err(InputError::MalformedAddress);
        }
        let first = local.chars().next().expect("the local part is not empty");
        Ok(ChannelAddress {
            address: address.to_owned(),
            masked: format!("{first}***@{domain}"),
        })
    }

    /// Any other channel's address, with the masked form the user may see
    /// (the host knows how its channel's addresses are best masked).
    ///
    /// # Errors
    /// [`InputError::MalformedAddress`] for an empty address or mask, or one
    /// over 254 bytes.
    pub fn other(address: impl Into<String>, masked: impl Into<String>) -> Result<Self, InputError> {
        let (address, masked) = (address.into(), masked.into());
        if address.is_empty() || masked.is_empty() || address.len() > 254 || masked.len() > 254 {
            return Err(InputError::MalformedAddress);
        }
        Ok(ChannelAddress { address, masked })
    }

    /// The address, for the sender.
    pub fn as_str(&self) -> &str {
        &self.address
    }

    /// The masked form, safe to show and log.
    pub fn masked(&self) -> &str {
        &self.masked
    }
}

/// Personal data: `Debug` shows the masked form only.
impl fmt::Debug for ChannelAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ChannelAddress").field(&self.masked).finish()
    }
}

/// One second-channel message carrying a code.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChannelMessage {
    /// The recipient.
    pub to: ChannelAddress,
    /// A subject line (the app name), for channels that have one.
    pub subject: String,
    /// The rendered text, carrying the code.
    pub body: SecretString,
}

impl ChannelMessage {
    /// A message to `to`.
    pub fn new(to: ChannelAddress, subject: impl Into<String>, body: SecretString) -> Self {
        ChannelMessage {
            to,
            subject: subject.into(),
            body,
        }
    }
}

/// Delivers second-channel codes: the host's mailer, or any other channel.
/// Like [`SmsSender`](crate::sms::SmsSender), it must not log the body.
#[async_trait]
pub trait ChannelSender: Send + Sync {
    /// Sends one message; an error says whether a retry may help.
    async fn send(&self, message: &ChannelMessage) -> Result<SendReceipt, SendError>;
}

#[async_trait]
impl<T: ChannelSender + ?Sized> ChannelSender for Arc<T> {
    async fn send(&self, message: &ChannelMessage) -> Result<SendReceipt, SendError> {
        (**self).send(message).await
    }
}

/// Keeps every message it is given, for tests and development; can be told
/// to fail. Clones share one record.
#[derive(Debug, Clone, Default)]
pub struct RecordingChannel {
    inner: Recorder<ChannelMessage>,
}

impl RecordingChannel {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message sent so far, oldest first.
    pub fn messages(&self) -> Vec<ChannelMessage> {
        self.inner.messages()
    }

    /// How many messages were sent.
    pub fn count(&self) -> usize {
        self.inner.count()
    }

    /// The code in the last message: its first run of 6 to 10 digits.
    pub fn last_code(&self) -> Option<Code> {
        self.inner.last_code(|m| m.body.expose_secret())
    }

    /// Makes the next send fail with `error` (queued).
    pub fn fail_next(&self, error: SendError) {
        self.inner.fail_next(error);
    }
}

#[async_trait]
impl ChannelSender for RecordingChannel {
    async fn send(&self, message: &ChannelMessage) -> Result<SendReceipt, SendError> {
        self.inner.record(message)?;
        Ok(SendReceipt::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_addresses_are_checked_and_masked() {
        let a = ChannelAddress::email(" alice@example.com ").unwrap();
        assert_eq!(a.as_str(), "alice@example.com");
        assert_eq!(a.masked(), "a***@example.com");
        assert_eq!(format!("{a:?}"), "ChannelAddress(\"a***@example.com\")");
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a@b@c.d",
            "al ice@x.io",
            "a@.x.io",
        ] {
            assert_eq!(
                ChannelAddress::email(bad),
                Err(InputError::MalformedAddress),
                "{bad:?}"
            );
        }
        assert!(ChannelAddress::other("", "x").is_err());
        assert_eq!(ChannelAddress::other("U123", "U***").unwrap().masked(), "U***");
    }
}
