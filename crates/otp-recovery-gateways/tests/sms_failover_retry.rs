//! Failover between two senders, bounded retries with backoff and a per-try
//! timeout, and both around the webhook sender against a local server.
//!
//! Waits are real but short (tens of milliseconds): the assertions bound
//! them from below, which the timer guarantees, and from above only
//! loosely, so a busy machine does not make them flaky.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use otp_recovery::sms::{
    Failover, MessageKind, RecordingSender, SendError, SendErrorKind, SendReceipt, SmsMessage, SmsSender,
};
use otp_recovery::{PhoneNumber, SecretString};

fn message() -> SmsMessage {
    let to = PhoneNumber::parse("+14155550123").unwrap();
    SmsMessage::new(
        to,
        SecretString::new("123456 is your code".into()),
        MessageKind::Code,
    )
}

fn error(kind: SendErrorKind, text: &str) -> SendError {
    SendError::new(kind, text)
}

const RETRYABLE: [SendErrorKind; 3] = [
    SendErrorKind::RateLimited,
    SendErrorKind::Unavailable,
    SendErrorKind::Timeout,
];
const FINAL: [SendErrorKind; 4] = [
    SendErrorKind::InvalidNumber,
    SendErrorKind::Unreachable,
    SendErrorKind::Rejected,
    SendErrorKind::Configuration,
];

/// What a [`Scripted`] sender does on one call.
enum Step {
    Fail(SendError),
    Sleep(Duration),
}

/// A sender that follows a script, then succeeds; it notes when it was
/// called, failures included (a `RecordingSender` records only successes).
#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<(VecDeque<Step>, Vec<Instant>)>>);

impl Scripted {
    fn then(self, step: Step) -> Self {
        self.0.lock().unwrap().0.push_back(step);
        self
    }

    fn failing(kind: SendErrorKind, times: usize) -> Self {
        (1..=times).fold(Scripted::default(), |s, n| {
            s.then(Step::Fail(error(kind, &format!("failure #{n}"))))
        })
    }

    fn calls(&self) -> Vec<Instant> {
        self.0.lock().unwrap().1.clone()
    }

    fn gaps(&self) -> Vec<Duration> {
        self.calls().windows(2).map(|w| w[1] - w[0]).collect()
    }
}

#[async_trait]
impl SmsSender for Scripted {
    async fn send(&self, _message: &SmsMessage) -> Result<SendReceipt, SendError> {
        let (step, n) = {
            let mut state = self.0.lock().unwrap();
            state.1.push(Instant::now());
            (state.0.pop_front(), state.1.len())
        };
        match step {
            Some(Step::Fail(error)) => Err(error),
            Some(Step::Sleep(wait)) => {
                tokio::time::sleep(wait).await;
                Ok(SendReceipt::with_id(format!("slow-{n}")))
            }
            None => Ok(SendReceipt::with_id(format!("scripted-{n}"))),
        }
    }
}

// --- Failover ---------------------------------------------------------------

#[tokio::test]
async fn a_working_primary_is_the_only_one_used() {
    let (primary, secondary) = (RecordingSender::new(), RecordingSender::new());
    let sender = Failover::new(primary.clone(), secondary.clone());
    let receipt = sender.send(&message()).await.unwrap();
    assert_eq!(receipt.id.as_deref(), Some("recorded-1"));
    assert_eq!((primary.count(), secondary.count()), (1, 0));
}

#[tokio::test]
async fn a_slow_primary_success_is_a_success() {
    // Failover adds no timeout of its own: wrap a side in `Retrying` for that.
    let primary = Scripted::default().then(Step::Sleep(Duration::from_millis(20)));
    let secondary = Scripted::default();
    let receipt = Failover::new(primary.clone(), secondary.clone())
        .send(&message())
        .await
        .unwrap();
    assert_eq!(receipt.id.as_deref(), Some("slow-1"));
    assert!(secondary.calls().is_empty());
}

#[tokio::test]
async fn a_retryable_primary_failure_fails_over_to_the_secondary() {
    for kind in RETRYABLE {
        let (primary, secondary) = (RecordingSender::new(), RecordingSender::new());
        primary.fail_next(error(kind, "primary down"));
        let sender = Failover::new(primary.clone(), secondary.clone());
        let receipt = sender.send(&message()).await.unwrap();
        assert_eq!(receipt.id.as_deref(), Some("recorded-1"), "{kind:?}");
        assert_eq!((primary.count(), secondary.count()), (0, 1), "{kind:?}");
        assert_eq!(
            secondary.last_code().unwrap().expose_secret(),
            "123456",
            "the same message"
        );
    }
}

#[tokio::test]
async fn a_non_retryable_primary_failure_does_not_touch_the_secondary() {
    for kind in FINAL {
        let primary = RecordingSender::new();
        primary.fail_next(error(kind, "primary says no"));
        let secondary = Scripted::default();
        let sender = Failover::new(primary.clone(), secondary.clone());
        let err = sender.send(&message()).await.unwrap_err();
        assert_eq!(err.kind(), kind);
        assert_eq!(err.to_string(), format!("{kind:?}: primary says no"));
        assert!(secondary.calls().is_empty(), "{kind:?}");

        // Tried once, not again.
        let primary = Scripted::failing(kind, 1);
        let sender = Failover::new(primary.clone(), secondary.clone());
        assert_eq!(sender.send(&message()).await.unwrap_err().kind(), kind);
        assert_eq!((primary.calls().len(), secondary.calls().len()), (1, 0));
    }
}

#[tokio::test]
async fn when_both_fail_the_secondary_error_is_returned() {
    let (primary, secondary) = (RecordingSender::new(), RecordingSender::new());
    primary.fail_next(error(SendErrorKind::Unavailable, "primary 503"));
    secondary.fail_next(error(SendErrorKind::Timeout, "secondary timed out"));
    let err = Failover::new(primary.clone(), secondary.clone())
        .send(&message())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::Timeout);
    assert!(err.to_string().contains("secondary"), "{err}");

    // A non-retryable secondary failure is returned just the same.
    primary.fail_next(error(SendErrorKind::Unavailable, "primary 503"));
    secondary.fail_next(error(SendErrorKind::InvalidNumber, "secondary: invalid"));
    let err = Failover::new(primary, secondary)
        .send(&message())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::InvalidNumber);
}

#[test]
fn failover_debug_shows_no_contents() {
    let sender = Failover::new(RecordingSender::new(), RecordingSender::new());
    assert_eq!(format!("{sender:?}"), "Failover { .. }");
    let (_primary, _secondary) = sender.into_parts();
}

// --- Retrying ---------------------------------------------------------------

mod retrying {
    use otp_recovery_gateways::retry::Retrying;

    use super::*;

    fn quick<S>(inner: S) -> Retrying<S> {
        Retrying::new(inner).with_backoff(Duration::ZERO, Duration::ZERO)
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_up_to_the_attempts_and_the_last_is_returned() {
        for kind in RETRYABLE {
            for attempts in [1, 3, 5] {
                let inner = Scripted::failing(kind, 10);
                let err = quick(inner.clone())
                    .with_attempts(attempts)
                    .send(&message())
                    .await
                    .unwrap_err();
                assert_eq!(inner.calls().len(), attempts as usize, "{kind:?}");
                assert_eq!(err.kind(), kind);
                assert!(
                    err.to_string().ends_with(&format!("failure #{attempts}")),
                    "{err}"
                );
            }
        }
    }

    #[tokio::test]
    async fn the_default_is_three_tries() {
        let inner = Scripted::failing(SendErrorKind::Unavailable, 10);
        let sender = Retrying::new(inner.clone()).with_backoff(Duration::ZERO, Duration::from_secs(2));
        assert_eq!(sender.attempts(), 3);
        sender.send(&message()).await.unwrap_err();
        assert_eq!(inner.calls().len(), 3);
    }

    #[tokio::test]
    async fn a_retry_that_succeeds_returns_its_receipt() {
        let inner = Scripted::failing(SendErrorKind::Unavailable, 2);
        let receipt = quick(inner.clone()).send(&message()).await.unwrap();
        assert_eq!(receipt.id.as_deref(), Some("scripted-3"));
        assert_eq!(inner.calls().len(), 3);
    }

    #[tokio::test]
    async fn non_retryable_errors_are_not_retried() {
        for kind in FINAL {
            let inner = Scripted::failing(kind, 1);
            let err = quick(inner.clone())
                .with_attempts(5)
                .send(&message())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), kind);
            assert_eq!(inner.calls().len(), 1, "{kind:?}");
        }
        // A retry that meets a non-retryable error stops there.
        let inner = Scripted::default()
            .then(Step::Fail(error(SendErrorKind::Unavailable, "503")))
            .then(Step::Fail(error(SendErrorKind::InvalidNumber, "invalid")));
        let err = quick(inner.clone())
            .with_attempts(5)
            .send(&message())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::InvalidNumber);
        assert_eq!(inner.calls().len(), 2);
    }

    #[tokio::test]
    async fn the_backoff_doubles_between_tries() {
        let inner = Scripted::failing(SendErrorKind::Unavailable, 10);
        let started = Instant::now();
        quick(inner.clone())
            .with_attempts(4)
            .with_backoff(Duration::from_millis(40), Duration::from_millis(100))
            .send(&message())
            .await
            .unwrap_err();
        let gaps = inner.gaps();
        assert_eq!(gaps.len(), 3);
        // 40 ms, then 80 ms, then 100 ms (160 ms capped).
        for (gap, least) in gaps.iter().zip([40, 80, 100]) {
            assert!(*gap >= Duration::from_millis(least), "{gaps:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_longer_retry_after_is_waited_for_or_returned_when_over_the_cap() {
        let asked = |ms| error(SendErrorKind::RateLimited, "429").with_retry_after(Duration::from_millis(ms));
        // Longer than the backoff: waited for.
        let inner = Scripted::default().then(Step::Fail(asked(250)));
        quick(inner.clone())
            .with_backoff(Duration::from_millis(10), Duration::from_secs(2))
            .send(&message())
            .await
            .unwrap();
        assert!(
            inner.gaps()[0] >= Duration::from_millis(250),
            "{:?}",
            inner.gaps()
        );

        // Far longer than the cap: not retried early; the error, with the
        // gateway's wait, goes back after one try.
        let inner = Scripted::default().then(Step::Fail(asked(60_000)));
        let err = quick(inner.clone())
            .with_backoff(Duration::from_millis(10), Duration::from_millis(150))
            .send(&message())
            .await
            .unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
        assert_eq!(inner.calls().len(), 1, "no early retry");

        // Shorter than the backoff: the backoff wins.
        let inner = Scripted::default().then(Step::Fail(asked(1)));
        quick(inner.clone())
            .with_backoff(Duration::from_millis(120), Duration::from_secs(1))
            .send(&message())
            .await
            .unwrap();
        assert!(
            inner.gaps()[0] >= Duration::from_millis(120),
            "{:?}",
            inner.gaps()
        );
    }

    #[tokio::test]
    async fn a_try_past_the_timeout_fails_as_timeout_and_is_retried() {
        let inner = Scripted::default()
            .then(Step::Sleep(Duration::from_secs(30)))
            .then(Step::Sleep(Duration::from_secs(30)));
        let started = Instant::now();
        let err = quick(inner.clone())
            .with_attempts(2)
            .with_timeout(Duration::from_millis(50))
            .send(&message())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::Timeout);
        assert!(err.is_retryable());
        assert!(!err.to_string().contains("123456"), "{err}");
        assert_eq!(inner.calls().len(), 2);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(100) && elapsed < Duration::from_secs(10),
            "{elapsed:?}"
        );

        // A slow try, then a quick one: delivered on the second.
        let inner = Scripted::default().then(Step::Sleep(Duration::from_secs(30)));
        let receipt = quick(inner.clone())
            .with_timeout(Duration::from_millis(50))
            .send(&message())
            .await
            .unwrap();
        assert_eq!(receipt.id.as_deref(), Some("scripted-2"));
    }

    #[tokio::test]
    async fn retries_compose_with_failover() {
        // Each gateway is retried before the other is tried.
        let primary = Scripted::failing(SendErrorKind::Unavailable, 10);
        let secondary = Scripted::failing(SendErrorKind::Timeout, 1);
        let sender = Failover::new(
            quick(primary.clone()).with_attempts(2),
            quick(secondary.clone()).with_attempts(2),
        );
        let receipt = sender.send(&message()).await.unwrap();
        assert_eq!(receipt.id.as_deref(), Some("scripted-2"));
        assert_eq!((primary.calls().len(), secondary.calls().len()), (2, 2));

        // A non-retryable primary failure: one try, no failover.
        let primary = Scripted::failing(SendErrorKind::InvalidNumber, 1);
        let secondary = Scripted::default();
        let sender = Failover::new(quick(primary.clone()), quick(secondary.clone()));
        assert_eq!(
            sender.send(&message()).await.unwrap_err().kind(),
            SendErrorKind::InvalidNumber
        );
        assert_eq!((primary.calls().len(), secondary.calls().len()), (1, 0));
    }

    #[test]
    fn retrying_debug_shows_settings_only() {
        let dbg = format!("{:?}", Retrying::new(RecordingSender::new()));
        assert!(dbg.starts_with("Retrying { attempts: 3,"), "{dbg}");
        assert!(!dbg.contains("RecordingSender"), "{dbg}");
    }
}

// --- Through the webhook sender, against a local server ----------------------

#[cfg(feature = "webhook")]
mod webhook {
    use otp_recovery::ServerKey;
    use otp_recovery_gateways::retry::Retrying;
    use otp_recovery_gateways::webhook::WebhookSender;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    fn webhook(server: &MockServer) -> WebhookSender {
        let key = ServerKey::from_bytes(b"webhook-test-secret-0123456789-abcdef".to_vec()).unwrap();
        WebhookSender::new(&format!("{}/sms", server.uri()), key).unwrap()
    }

    async fn server(template: ResponseTemplate) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(template)
            .mount(&server)
            .await;
        server
    }

    async fn hits(server: &MockServer) -> usize {
        server.received_requests().await.unwrap().len()
    }

    #[tokio::test]
    async fn a_503_then_200_succeeds_on_the_second_try() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        let sender = Retrying::new(webhook(&server))
            .with_backoff(Duration::from_millis(10), Duration::from_millis(10));
        let receipt = sender.send(&message()).await.unwrap();

        let requests = server.received_requests().await.unwrap();
        assert_eq!(requests.len(), 2);
        let ids: Vec<_> = requests
            .iter()
            .map(|r| r.headers.get("x-otp-id").unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_ne!(ids[0], ids[1], "each try is a new, freshly signed request");
        assert_eq!(receipt.id.as_deref(), Some(ids[1].as_str()));
    }

    #[tokio::test]
    async fn a_4xx_is_not_retried() {
        let server = server(ResponseTemplate::new(400)).await;
        let err = Retrying::new(webhook(&server))
            .send(&message())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::Rejected);
        assert_eq!(hits(&server).await, 1);
    }

    #[tokio::test]
    async fn a_slow_webhook_times_out_and_is_retried() {
        let server = server(ResponseTemplate::new(200).set_delay(Duration::from_secs(5))).await;
        let err = Retrying::new(webhook(&server))
            .with_attempts(2)
            .with_backoff(Duration::ZERO, Duration::ZERO)
            .with_timeout(Duration::from_millis(150))
            .send(&message())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::Timeout);
        assert_eq!(hits(&server).await, 2);
    }

    #[tokio::test]
    async fn a_5xx_or_a_timeout_fails_over_and_a_4xx_does_not() {
        for (primary_answer, fails_over) in [
            (ResponseTemplate::new(500), true),
            (ResponseTemplate::new(503), true),
            (ResponseTemplate::new(429), true),
            (ResponseTemplate::new(200).set_delay(Duration::from_secs(5)), true),
            (ResponseTemplate::new(400), false),
            (ResponseTemplate::new(401), false),
            (ResponseTemplate::new(422), false),
        ] {
            let primary = server(primary_answer).await;
            let secondary = server(ResponseTemplate::new(202)).await;
            let sender = Failover::new(
                webhook(&primary).with_timeout(Duration::from_millis(150)),
                webhook(&secondary),
            );
            let result = sender.send(&message()).await;
            assert_eq!(result.is_ok(), fails_over, "{result:?}");
            assert_eq!(hits(&primary).await, 1);
            assert_eq!(hits(&secondary).await, usize::from(fails_over));
        }
    }
}
