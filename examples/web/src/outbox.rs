//! The development SMS sender: prints every message on the console and, in
//! development mode only, keeps it for the `/dev/messages` page.
//!
//! In production, put a gateway sender here instead (e.g.
//! `otp_recovery_gateways::twilio::TwilioSender`, feature `twilio`): nothing
//! in the rest of the application changes.

use std::sync::Arc;

use async_trait::async_trait;
use otp_recovery::sms::{ConsoleSender, RecordingSender, SendError, SendReceipt, SmsMessage, SmsSender};

/// Prints messages; keeps them when development mode is on.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    console: Arc<ConsoleSender>,
    kept: Option<RecordingSender>,
}

impl Outbox {
    /// An outbox that keeps messages only if `keep` (development mode).
    pub fn new(keep: bool) -> Self {
        Outbox {
            console: Arc::new(ConsoleSender::new()),
            kept: keep.then(RecordingSender::new),
        }
    }

    /// The kept messages, newest first; empty outside development mode.
    pub fn messages(&self) -> Vec<SmsMessage> {
        let mut messages = self
            .kept
            .as_ref()
            .map(RecordingSender::messages)
            .unwrap_or_default();
        messages.reverse();
        messages
    }
}

#[async_trait]
impl SmsSender for Outbox {
    async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError> {
        let receipt = self.console.send(message).await?;
        if let Some(kept) = &self.kept {
            kept.send(message).await?;
        }
        Ok(receipt)
    }
}
