use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{SendError, SendErrorKind, SendReceipt, SmsMessage, SmsSender};

/// Prints each message to standard output instead of sending it. For
/// development only: it prints the code, which is its purpose. The number
/// is printed masked.
#[derive(Debug, Default)]
pub struct ConsoleSender {
    sent: AtomicU64,
}

impl ConsoleSender {
    /// A console sender.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SmsSender for ConsoleSender {
    async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError> {
        let n = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "    [sms #{n} to {}]\n    | {}",
            message.to.masked(),
            message.body.expose_secret().replace('\n', "\n    | ")
        )
        .map_err(|e| SendError::new(SendErrorKind::Unavailable, format!("stdout: {e}")))?;
        Ok(SendReceipt::with_id(format!("console-{n}")))
    }
}
