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
    inner: Recorder<SmsMessage>,
}

impl RecordingSender {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message sent so far, oldest first.
    pub fn messages(&self) -> Vec<SmsMessage> {
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

    /// Makes the next send fail with `error` (queued: call it again to fail
    /// several sends). A failed send is not recorded.
    pub fn fail_next(&self, error: SendError) {
        self.inner.fail_next(error);
    }
}

#[async_trait]
impl SmsSender for RecordingSender {
    async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError> {
        let n = self.inner.record(message)?;
        Ok(SendReceipt::with_id(format!("recorded-{n}")))
    }
}

/// What a recording sender keeps, for any kind of message: the messages
/// sent and the failures queued for the next sends. Clones share it.
#[derive(Debug)]
pub(crate) struct Recorder<M> {
    inner: Arc<Mutex<Recorded<M>>>,
}

#[derive(Debug)]
struct Recorded<M> {
    sent: Vec<M>,
    failures: VecDeque<SendError>,
}

impl<M> Clone for Recorder<M> {
    fn clone(&self) -> Self {
        Recorder {
            inner: self.inner.clone(),
        }
    }
}

impl<M> Default for Recorder<M> {
    fn default() -> Self {
        Recorder {
            inner: Arc::new(Mutex::new(Recorded {
                sent: Vec::new(),
                failures: VecDeque::new(),
            })),
        }
    }
}

impl<M: Clone> Recorder<M> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded<M>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn messages(&self) -> Vec<M> {
        self.lock().sent.clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.lock().sent.len()
    }

    /// The first run of 6 to 10 digits in the last message's body.
    pub(crate) fn last_code(&self, body: impl Fn(&M) -> &str) -> Option<Code> {
        let inner = self.lock();
        body(inner.sent.last()?)
            .split(|c: char| !c.is_ascii_digit())
            .find(|run| (6..=10).contains(&run.len()))
            .and_then(|run| Code::parse(run).ok())
    }

    pub(crate) fn fail_next(&self, error: SendError) {
        self.lock().failures.push_back(error);
    }

    /// Records `message`, or fails with the next queued failure; returns
    /// how many messages are recorded.
    pub(crate) fn record(&self, message: &M) -> Result<usize, SendError> {
        let mut inner = self.lock();
        if let Some(error) = inner.failures.pop_front() {
            return Err(error);
        }
        inner.sent.push(message.clone());
        Ok(inner.sent.len())
    }
}
