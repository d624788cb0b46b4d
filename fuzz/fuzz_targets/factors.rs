//! The second factor's parsers of untrusted input: a stored
//! `RecoveryCodeSet` (the host's column), a typed recovery code, a typed
//! TOTP code, and a second-channel email address.
//!
//! A decoded set re-encodes to exactly the input and keeps its length; a
//! typed recovery code matches only the code it normalises to; a TOTP code
//! matches only if it is the window's code; an accepted email address is
//! masked without its local part.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use otp_recovery::factor::{ChannelAddress, RecoveryCodeSet, RecoveryCodes, Totp, TotpSecret};
use otp_recovery::{AccountId, KeyRing, ServerKey, Timestamp};

struct Fixture {
    keys: KeyRing,
    account: AccountId,
    issued: RecoveryCodes,
    totp: Totp,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let keys = KeyRing::new(1, ServerKey::from_bytes(vec![7; 32]).unwrap());
        let account = AccountId::new("fuzz").unwrap();
        let issued = RecoveryCodes::issue(&keys, &account, 3).unwrap();
        let totp = Totp::new(TotpSecret::from_bytes(b"12345678901234567890".to_vec()).unwrap());
        Fixture {
            keys,
            account,
            issued,
            totp,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    // A stored set.
    if let Ok(set) = RecoveryCodeSet::from_bytes(data) {
        assert_eq!(set.to_bytes(), data, "a set with two encodings");
        assert!(set.len() <= 20);
        let _ = set.find(&f.keys, &f.account, "AAAA-AAAA-AAAA-AAAA");
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A typed recovery code: only the issued codes match, each at its index.
    if let Ok(Some(i)) = f.issued.set().find(&f.keys, &f.account, text) {
        let canonical: String = text
            .trim()
            .chars()
            .filter(|c| *c != '-' && *c != ' ')
            .map(|c| match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            })
            .collect();
        assert_eq!(canonical, f.issued.codes()[i].expose_secret().replace('-', ""));
    }
    // A typed TOTP code, at a time taken from the input's length.
    let at = Timestamp::from_unix_millis(1_800_000_000_000 + 7_919 * data.len() as u64);
    if let Some(step) = f.totp.matching_step(text, at) {
        let now = f.totp.step_at(at);
        assert!(step + 1 >= now && step <= now + 1);
        let code_at_step = f.totp.code_at(Timestamp::from_unix_millis(step * 30_000));
        assert_eq!(code_at_step.expose_secret(), text);
    }
    // An email address.
    if let Ok(address) = ChannelAddress::email(text) {
        let (local, domain) = address.as_str().split_once('@').unwrap();
        assert!(address.masked().ends_with(&format!("***@{domain}")));
        assert_eq!(
            format!("{address:?}"),
            format!("ChannelAddress({:?})", address.masked())
        );
        if local.chars().count() > 1 && !domain.contains(local) && !local.contains('*') {
            assert!(!address.masked().contains(local));
        }
    }
});
