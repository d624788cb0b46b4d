use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use super::{SendError, SendReceipt, SmsMessage, SmsSender};
use crate::secret::Code;

/// Keeps every message it is given, for tests; can be told to fail.
///
/// Clones share the same record, so a test keeps one clone and hands the
/// other to [`Recovery`](crate::Recovery).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use otp_recovery::sms::{MessageKind, RecordingSender, SmsMessage, SmsSender};
/// use otp_recovery::{PhoneNumber, SecretString};
///
/// let sender = RecordingSender::new();
/// let to = PhoneNumber::parse("+14155550123").unwrap();
/// let body = SecretString::new("123456 is your code".into());
/// sender.send(&SmsMessage::new(to, body, MessageKind::Code)).await.unwrap();
/// assert_eq!(sender.last_code().unwrap().expose_secret(), "123456");
/// # });
/// ```
#[derive(Debug, Clone, Default)]
pub struct RecordingSender {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    sent: Vec<SmsMessage>,
    failures: VecDeque<SendError>,
}

impl RecordingSender {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every message sent so far, oldest first.
    pub fn messages(&self) -> Vec<SmsMessage> {
        self.inner().sent.clone()
    }

    /// How many messages were sent.
    pub fn count(&self) -> usize {
        self.inner().sent.len()
    }

    /// The code in the last message: its first run of 6 to 10 digits.
    pub fn last_code(&self) -> Option<Code> {
        let inner = self.inner();
        let body = inner.sent.last()?.body.expose_secret();
        body.split(|c: char| !c.is_ascii_digit())
            .find(|run| (6..=10).contains(&run.len()))
            .and_then(|run| Code::parse(run).ok())
    }

    /// Makes the next send fail with `error` (queued: call it again to fail
    /// several sends). A failed send is not recorded.
    pub fn fail_next(&self, error: SendError) {
        self.inner().failures.push_back(error);
    }
}

#[async_trait]
impl SmsSender for RecordingSender {
    async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError> {
        let mut inner = self.inner();
        if let Some(error) = inner.failures.pop_front() {
            return Err(error);
        }
        inner.sent.push(message.clone());
        Ok(SendReceipt::with_id(format!("recorded-{}", inner.sent.len())))
    }
}
