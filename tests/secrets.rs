//! No code or token appears in the `Debug` output of any public type, in
//! any error message, or in a stored record.

mod common;

use std::sync::Arc;
use std::time::Duration;

use otp_recovery::record::FlowRecord;
use otp_recovery::sms::{MessageKind, RecordingSender, SendError, SendErrorKind, SmsMessage};
use otp_recovery::store::{CodeStore, StoreError};
use otp_recovery::{
    Account, AccountId, Code, Error, InputError, KeyRing, ManualClock, PhoneNumber, Policy, Recovery,
    RequestContext, ResetToken, SecretString, ServerKey, Timestamp,
};

/// Calls come from this client, so IP limits and detectors run too.
fn ctx() -> RequestContext {
    RequestContext::from_ip("203.0.113.77".parse().unwrap())
}

/// Every rendering a host might log: `Debug`, pretty `Debug`, `Display`.
fn renderings(value: &(impl std::fmt::Debug + ?Sized)) -> [String; 2] {
    [format!("{value:?}"), format!("{value:#?}")]
}

fn assert_clean(text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "secret {secret:?} leaked in: {text}"
        );
    }
}

#[tokio::test]
async fn no_secret_in_debug_errors_or_stored_records_over_whole_flows() {
    let store = Arc::new(common::Observed::default());
    let sender = RecordingSender::new();
    let clock = ManualClock::new(Timestamp::from_unix_millis(1_800_000_000_000));
    let key_bytes = vec![0x5a; 32];
    let keys = KeyRing::new(1, ServerKey::from_bytes(key_bytes.clone()).unwrap());
    let events = otp_recovery::events::RecordingSink::new();
    let recovery = Recovery::new(store.clone(), sender.clone(), keys)
        .with_policy(
            Policy::builder()
                .account_failures(6, std::time::Duration::from_secs(3600))
                .build()
                .unwrap(),
        )
        .with_events(events.clone())
        .with_clock(clock.clone());
    let account = Account::new(
        AccountId::new("carol").unwrap(),
        PhoneNumber::parse("+4915112345678").unwrap(),
    );

    let mut secrets: Vec<String> = Vec::new();
    let mut rendered: Vec<String> = Vec::new();
    let mut stored: Vec<FlowRecord> = Vec::new();

    // A flow that completes, with wrong codes, a resend and a replayed token.
    let requested = recovery
        .request("carol@example.com", Some(account.clone()), &ctx())
        .await
        .unwrap();
    rendered.extend(renderings(&requested));
    let first = sender.last_code().unwrap();
    secrets.push(first.expose_secret().to_owned());
    clock.advance(Duration::from_secs(30));
    let resent = recovery.resend(&requested.flow_id, &ctx()).await.unwrap();
    rendered.extend(renderings(&resent));
    let code = sender.last_code().unwrap();
    secrets.push(code.expose_secret().to_owned());
    let mut errors: Vec<Error> = Vec::new();
    errors.push(
        recovery
            .verify(&requested.flow_id, first.expose_secret(), &ctx())
            .await
            .unwrap_err(),
    );
    errors.push(
        recovery
            .verify(&requested.flow_id, "12345x", &ctx())
            .await
            .unwrap_err(),
    );
    let verified = recovery
        .verify(&requested.flow_id, code.expose_secret(), &ctx())
        .await
        .unwrap();
    let token = verified.token.expose_secret().to_string();
    secrets.push(token.clone());
    secrets.push(token[32..].to_owned()); // the random part on its own
    rendered.extend(renderings(&verified));
    rendered.extend(renderings(&verified.token));
    errors.push(
        recovery
            .verify(&requested.flow_id, code.expose_secret(), &ctx())
            .await
            .unwrap_err(),
    );
    let mut tampered = token.clone();
    tampered.replace_range(95.., if token.ends_with('0') { "1" } else { "0" });
    errors.push(recovery.reset(&tampered, &ctx()).await.unwrap_err());
    stored.push(store.get_flow(&requested.flow_id).await.unwrap().unwrap());
    let done = recovery.reset(&token, &ctx()).await.unwrap();
    rendered.extend(renderings(&done));
    errors.push(recovery.reset(&token, &ctx()).await.unwrap_err());
    stored.push(store.get_flow(&requested.flow_id).await.unwrap().unwrap());

    sender.fail_next(SendError::new(SendErrorKind::Unavailable, "gateway timeout"));
    // A failed send answers like a sent one; its flow is kept for the scan.
    let unsent = recovery
        .request("carol@example.com", Some(account.clone()), &ctx())
        .await
        .unwrap();
    rendered.extend(renderings(&unsent));
    stored.push(store.get_flow(&unsent.flow_id).await.unwrap().unwrap());
    // A flow that locks, one whose send fails, and an unknown identifier.
    let locked = recovery
        .request("carol@example.com", Some(account.clone()), &ctx())
        .await
        .unwrap();
    let code = sender.last_code().unwrap();
    secrets.push(code.expose_secret().to_owned());
    let wrong = if code.expose_secret() == "000000" {
        "000001"
    } else {
        "000000"
    };
    for _ in 0..6 {
        errors.push(recovery.verify(&locked.flow_id, wrong, &ctx()).await.unwrap_err());
    }
    stored.push(store.get_flow(&locked.flow_id).await.unwrap().unwrap());
    // Locked now: the next request is refused with the reference.
    errors.push(
        recovery
            .request("carol@example.com", Some(account.clone()), &ctx())
            .await
            .unwrap_err(),
    );
    let decoy = recovery
        .request("nobody@example.com", None, &ctx())
        .await
        .unwrap();
    rendered.extend(renderings(&decoy));
    errors.push(recovery.resend(&decoy.flow_id, &ctx()).await.unwrap_err());
    stored.push(store.get_flow(&decoy.flow_id).await.unwrap().unwrap());

    // Every message body the sender got is a secret-bearing value too.
    for message in sender.messages() {
        rendered.extend(renderings(&message));
    }
    // The support desk's views and the audit trail.
    let agent = otp_recovery::support::Agent::new("dana").unwrap();
    let case = recovery
        .support()
        .lookup_account(&agent, "scan", &account.id)
        .await
        .unwrap();
    assert!(case.locked_until.is_some(), "the run must include a lockout");
    rendered.extend(renderings(&case));
    // Every event, in every form a host might log it.
    let all_events = events.events();
    for event in &all_events {
        rendered.extend(renderings(event));
        rendered.push(event.to_string());
    }
    let kinds = events.kinds();
    for expected in [
        "Requested",
        "CodeSent",
        "VerifyFailed",
        "Verified",
        "FlowLocked",
        "AccountLocked",
        "ResetCompleted",
        "NotificationSent",
        "SendFailed",
        "Resent",
        "Support",
    ] {
        assert!(
            kinds.iter().any(|k| format!("{k:?}").starts_with(expected)),
            "no {expected} event in the run"
        );
    }
    // Messages: a code message carries its own code and nothing else
    // secret; a notice carries none.
    let codes: Vec<String> = secrets.iter().filter(|s| s.len() == 6).cloned().collect();
    for message in sender.messages() {
        let body = message.body.expose_secret();
        let own: Vec<&String> = codes.iter().filter(|c| body.contains(c.as_str())).collect();
        match message.kind {
            otp_recovery::sms::MessageKind::Code => assert_eq!(own.len(), 1, "{body}"),
            _ => assert!(own.is_empty(), "a notice carries a code: {body}"),
        }
        for secret in secrets.iter().filter(|s| s.len() > 6) {
            assert!(
                !body.contains(secret.as_str()),
                "a message carries a token or key: {body}"
            );
        }
    }
    rendered.extend(renderings(&sender));
    rendered.extend(renderings(&recovery));
    rendered.extend(renderings(&*store));
    for error in &errors {
        rendered.push(error.to_string());
        rendered.extend(renderings(error));
    }
    for record in &stored {
        rendered.extend(renderings(record));
    }

    let key_hex: String = key_bytes.iter().map(|b| format!("{b:02x}")).collect();
    secrets.push(key_hex);
    secrets.push("90, 90, 90, 90".into()); // the key's bytes as Debug prints a slice
    for text in &rendered {
        assert_clean(text, &secrets);
        assert!(
            !text.contains("+4915112345678"),
            "a phone number leaked in: {text}"
        );
    }
    for record in &stored {
        let bytes = record.to_bytes();
        for secret in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "secret {secret:?} is in a stored record"
            );
        }
        assert!(!bytes.windows(32).any(|w| w == key_bytes.as_slice()));
    }
    assert!(rendered.len() > 40, "the test must look at many renderings");
    // Counter keys hold personal data only as pseudonyms.
    let keys = store.keys();
    assert!(keys.len() > 50, "the run must write many counters");
    for key in &keys {
        for personal in [
            "+4915112345678",
            "4915112345",
            "203.0.113.77",
            "carol",
            "nobody@example.com",
        ] {
            assert!(!key.contains(personal), "counter key {key:?} holds {personal:?}");
        }
    }
}

#[test]
fn secret_types_and_inputs_errors_are_redacted() {
    let code = Code::parse("987654").unwrap();
    let token_text = "ab".repeat(48);
    let token = ResetToken::parse(&token_text).unwrap();
    let key = ServerKey::from_bytes(vec![0x77; 32]).unwrap();
    let body = SecretString::new("987654 is your code".into());
    let message = SmsMessage::new(
        PhoneNumber::parse("+14155550199").unwrap(),
        body.clone(),
        MessageKind::Code,
    );
    let errors: Vec<String> = vec![
        InputError::MalformedCode.to_string(),
        Error::from(Code::parse("98765x").unwrap_err()).to_string(),
        Error::from(ResetToken::parse("zz").unwrap_err()).to_string(),
        Error::from(StoreError::backend("connection reset", true)).to_string(),
        Error::from(SendError::new(SendErrorKind::Rejected, "21610")).to_string(),
    ];
    let secrets = ["987654".to_string(), token_text.clone(), "119, 119".to_string()];
    for text in renderings(&code)
        .into_iter()
        .chain(renderings(&token))
        .chain(renderings(&key))
        .chain(renderings(&body))
        .chain(renderings(&message))
        .chain(errors)
    {
        assert_clean(&text, &secrets);
    }
    assert!(format!("{code:?}").contains("[redacted]"));
}
