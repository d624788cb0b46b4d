//! The text of the messages the crate sends: templates with placeholders,
//! built-in locales, links, and SMS segment counting.
//!
//! A template is text with placeholders in braces:
//!
//! | placeholder | value |
//! |---|---|
//! | `{app}` | the app name |
//! | `{code}` | the one-time code (code messages only; required there) |
//! | `{minutes}` | how long the code is valid |
//! | `{link}` | the configured base URL followed by the flow id |
//! | `{support}` | the configured support contact (or the locale's "our support team") |
//! | `{until}` | when a lock ends, `2026-11-24 18:30 UTC` |
//! | `{reference}` | the support reference of a lock, `ABCD-1234` |
//!
//! Code messages end with the WebOTP origin-bound line, `@example.com
//! #123456`, when a domain is configured, so browsers offer the code for
//! autofill on that origin only. Every template is rendered with the
//! longest values it can take (a 10-digit code) when [`MessagesBuilder::build`]
//! runs, and refused if it would need more SMS segments than the budget
//! (one by default). Links are built from the configured base URL and the
//! flow id only, never from request data, and never contain the code.
//!
//! ```
//! use otp_recovery::{Locale, Messages};
//!
//! let messages = Messages::builder("Acme")
//!     .webotp_domain("acme.example")
//!     .support_contact("help@acme.example")
//!     .build()
//!     .unwrap();
//! let spanish = Messages::builder("Acme").locale(Locale::ES).build().unwrap();
//! assert_eq!(messages.locale(), Locale::EN);
//! # let _ = spanish;
//! ```

use std::fmt::{self, Write as _};
use std::time::Duration;

use crate::clock::Timestamp;
use crate::id::FlowId;
use crate::reference::SupportReference;
use crate::secret::{Code, SecretString};

mod builder;
mod locale;
mod segments;

pub use builder::{MessageError, MessagesBuilder};
pub use locale::{Locale, Templates};
pub use segments::{Encoding, Segments};

/// Longest app name, in characters.
pub const MAX_APP_NAME_CHARS: usize = 30;

/// Which text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Code,
    ChannelCode,
    PasswordChanged,
    Locked,
    HardLocked,
}

const PLACEHOLDERS: &[&str] = &["app", "code", "minutes", "link", "support", "until", "reference"];

/// What the messages say. Build with [`Messages::builder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Messages {
    app_name: String,
    locale: Locale,
    templates: Vec<(Locale, Templates)>,
    webotp_domain: Option<String>,
    link_base: Option<String>,
    support_contact: Option<String>,
    max_segments: u8,
}

impl Default for Messages {
    fn default() -> Self {
        Messages::builder("your account")
            .build()
            .expect("the defaults are valid")
    }
}

/// The values a message is rendered with.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Values<'a> {
    pub(crate) code: Option<&'a Code>,
    pub(crate) ttl: Duration,
    pub(crate) flow: Option<&'a FlowId>,
    pub(crate) until: Option<Timestamp>,
    pub(crate) reference: Option<&'a SupportReference>,
}

impl Messages {
    /// The app name.
    pub fn app_name(&self) -> &str {
        &self.app_name
    }

    /// The default locale.
    pub fn locale(&self) -> Locale {
        self.locale
    }

    /// The support contact, if configured.
    pub fn support_contact(&self) -> Option<&str> {
        self.support_contact.as_deref()
    }

    fn templates_for(&self, locale: Option<Locale>) -> &Templates {
        let wanted = locale.unwrap_or(self.locale);
        let find = |l: Locale| self.templates.iter().find(|(t, _)| *t == l).map(|(_, t)| t);
        find(wanted)
            .or_else(|| find(wanted.language()))
            .or_else(|| find(self.locale))
            .or_else(|| find(self.locale.language()))
            .or_else(|| find(Locale::EN))
            .expect("the built-in templates are installed")
    }

    /// The message carrying `code`, valid for `ttl`, for `flow`.
    pub fn code_message(
        &self,
        code: &Code,
        ttl: Duration,
        flow: &FlowId,
        locale: Option<Locale>,
    ) -> SecretString {
        self.code_of_kind(Kind::Code, code, ttl, flow, locale)
    }

    /// The second-channel message carrying `code` (e.g. an email body): the
    /// code template, without the WebOTP line, which is for SMS only.
    pub fn channel_code_message(
        &self,
        code: &Code,
        ttl: Duration,
        flow: &FlowId,
        locale: Option<Locale>,
    ) -> SecretString {
        self.code_of_kind(Kind::ChannelCode, code, ttl, flow, locale)
    }

    /// A message of `kind` carrying `code`, valid for `ttl`, for `flow`.
    fn code_of_kind(
        &self,
        kind: Kind,
        code: &Code,
        ttl: Duration,
        flow: &FlowId,
        locale: Option<Locale>,
    ) -> SecretString {
        let values = Values {
            code: Some(code),
            ttl,
            flow: Some(flow),
            ..Values::default()
        };
        self.render(kind, self.templates_for(locale), &values)
    }

    /// The notice after a reset.
    pub fn password_changed_message(&self, locale: Option<Locale>) -> SecretString {
        self.render(
            Kind::PasswordChanged,
            self.templates_for(locale),
            &Values::default(),
        )
    }

    /// The notice after an account lock.
    pub fn locked_message(
        &self,
        until: Timestamp,
        reference: &SupportReference,
        locale: Option<Locale>,
    ) -> SecretString {
        let values = Values {
            until: Some(until),
            reference: Some(reference),
            ..Values::default()
        };
        self.render(Kind::Locked, self.templates_for(locale), &values)
    }

    /// The notice sent when wrong codes in a row lock the account until
    /// support unlocks it.
    pub fn hard_locked_message(&self, reference: &SupportReference, locale: Option<Locale>) -> SecretString {
        let values = Values {
            reference: Some(reference),
            ..Values::default()
        };
        self.render(Kind::HardLocked, self.templates_for(locale), &values)
    }

    fn render(&self, kind: Kind, templates: &Templates, v: &Values<'_>) -> SecretString {
        let template = match kind {
            Kind::Code | Kind::ChannelCode => &templates.code,
            Kind::PasswordChanged => &templates.password_changed,
            Kind::Locked => &templates.locked,
            Kind::HardLocked => &templates.hard_locked,
        };
        // Sized up front so the buffer holding the code never reallocates
        // (a reallocation would free a copy of the code without zeroizing
        // it): templates are checked to fit 4 segments at most (4 x 160
        // characters of up to 3 bytes), below this.
        let mut out = String::with_capacity(2048);
        let mut rest = template.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
            let name = rest.get(open + 1..close).unwrap_or_default();
            match name {
                "app" => out.push_str(&self.app_name),
                "code" => out.push_str(v.code.map(Code::expose_secret).unwrap_or_default()),
                "minutes" => {
                    let _ = write!(out, "{}", v.ttl.as_secs().div_ceil(60));
                }
                "link" => {
                    if let (Some(base), Some(flow)) = (&self.link_base, v.flow) {
                        let _ = write!(out, "{base}{flow}");
                    }
                }
                "support" => out.push_str(
                    self.support_contact
                        .as_deref()
                        .unwrap_or(&templates.support_fallback),
                ),
                "until" => {
                    if let Some(until) = v.until {
                        let _ = write!(out, "{}", Utc(until));
                    }
                }
                "reference" => {
                    if let Some(r) = v.reference {
                        let _ = write!(out, "{r}");
                    }
                }
                _ => {}
            }
            rest = rest.get(close + 1..).unwrap_or_default();
        }
        out.push_str(rest);
        if kind == Kind::Code
            && let (Some(domain), Some(code)) = (&self.webotp_domain, v.code)
        {
            let _ = write!(out, "\n\n@{domain} #{}", code.expose_secret());
        }
        SecretString::new(out)
    }
}

/// An instant as `2026-11-24 18:30 UTC`.
struct Utc(Timestamp);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_unix_millis() / 1000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // Howard Hinnant's civil-from-days.
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
            rem / 3600,
            rem % 3600 / 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(digits: &str) -> Code {
        Code::parse(digits).unwrap()
    }

    const FLOW: FlowId = FlowId::from_bytes([0xab; 16]);

    #[test]
    fn every_built_in_message_fits_one_segment_with_a_ten_digit_code_and_a_30_character_name() {
        let app = "A".repeat(30);
        for &locale in Locale::BUILT_IN {
            let m = Messages::builder(app.as_str())
                .locale(locale)
                .webotp_domain("a".repeat(30))
                .support_contact("s".repeat(30))
                .build();
            assert!(m.is_ok(), "{locale:?}: {m:?}");
            let m = m.unwrap();
            let body = m.code_message(&code("1234567890"), Duration::from_secs(600), &FLOW, None);
            let segments = Segments::of(body.expose_secret());
            assert_eq!(
                segments.count,
                1,
                "{locale:?}: {segments:?} {}",
                body.expose_secret()
            );
            assert_eq!(segments.encoding, Encoding::Gsm7, "{locale:?}");
            let reference = SupportReference::from_bits([1; 5]);
            for notice in [
                m.password_changed_message(None),
                m.locked_message(Timestamp::from_unix_millis(1_800_000_000_000), &reference, None),
            ] {
                assert_eq!(
                    Segments::of(notice.expose_secret()).count,
                    1,
                    "{locale:?}: {}",
                    notice.expose_secret()
                );
            }
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let m = Messages::builder("Acme")
            .webotp_domain("acme.example")
            .link_base("https://acme.example/r/")
            .support_contact("help@acme.example")
            .templates(
                Locale::EN,
                Templates::new(
                    "{code} for {app}, {minutes} min: {link}",
                    "{app} reset. {support}",
                    "{app} locked until {until}, ref {reference}, {support}",
                    "support",
                ),
            )
            .max_segments(2)
            .build()
            .unwrap();
        let body = m.code_message(&code("123456"), Duration::from_secs(300), &FLOW, None);
        assert_eq!(
            body.expose_secret(),
            format!("123456 for Acme, 5 min: https://acme.example/r/{FLOW}\n\n@acme.example #123456")
        );
        let reference = SupportReference::from_bits([0; 5]);
        let locked = m.locked_message(Timestamp::from_unix_millis(1_764_008_400_000), &reference, None);
        assert_eq!(
            locked.expose_secret(),
            "Acme locked until 2025-11-24 18:20 UTC, ref 0000-0000, help@acme.example"
        );
        assert_eq!(
            m.password_changed_message(None).expose_secret(),
            "Acme reset. help@acme.example"
        );
    }

    #[test]
    fn a_request_locale_picks_its_templates_and_unknown_ones_fall_back() {
        let m = Messages::builder("Acme").build().unwrap();
        let es = m.code_message(&code("123456"), Duration::from_secs(600), &FLOW, Some(Locale::ES));
        assert!(es.expose_secret().contains("codigo"), "{}", es.expose_secret());
        assert_eq!(Locale::from_tag("pt-BR").map(|l| l.language()), Some(Locale::PT));
        assert_eq!(Locale::from_tag("de_AT").unwrap().as_str(), "de-at");
        assert_eq!(Locale::from_tag("x"), None);
        assert_eq!(Locale::from_tag("en us"), None);
        // A regional tag falls back to its language's templates.
        let br = m.code_message(
            &code("123456"),
            Duration::from_secs(600),
            &FLOW,
            Locale::from_tag("pt-BR"),
        );
        assert!(br.expose_secret().contains("codigo"), "{}", br.expose_secret());
        // A host-supplied language.
        let ja = Locale::from_tag("ja").unwrap();
        let m = Messages::builder("Acme")
            .templates(
                ja,
                Templates::new(
                    "{code} は {app} の確認コードです",
                    "{app} のパスワードが変更されました",
                    "{app} はロックされました {until} {reference}",
                    "サポート",
                ),
            )
            .max_segments(2)
            .build()
            .unwrap();
        let body = m.code_message(&code("123456"), Duration::from_secs(600), &FLOW, Some(ja));
        assert_eq!(body.expose_secret(), "123456 は Acme の確認コードです");
        let en = m.code_message(&code("123456"), Duration::from_secs(600), &FLOW, None);
        assert!(en.expose_secret().starts_with("123456 is your Acme"));
    }

    #[test]
    fn templates_over_budget_or_malformed_are_refused() {
        let long = Templates::new(
            "{code} ".to_owned() + &"x".repeat(160),
            "ok {app}",
            "ok {until}",
            "s",
        );
        let err = Messages::builder("Acme")
            .templates(Locale::EN, long.clone())
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            MessageError::TooLong {
                locale: Locale::EN,
                segments: 2,
                budget: 1
            }
        );
        assert!(
            Messages::builder("Acme")
                .templates(Locale::EN, long)
                .max_segments(2)
                .build()
                .is_ok()
        );
        // A non-GSM character turns the message into UCS-2: 70 units a segment.
        let ucs2 = Templates::new(
            "{code} コード {app}".to_owned() + &"x".repeat(60),
            "ok",
            "ok",
            "s",
        );
        assert!(matches!(
            Messages::builder("Acme").templates(Locale::FR, ucs2).build(),
            Err(MessageError::TooLong {
                locale: Locale::FR,
                ..
            })
        ));
        for (bad, why) in [
            (Templates::new("no code here", "ok", "ok", "s"), "code"),
            (Templates::new("{code} {nope}", "ok", "ok", "s"), "unknown"),
            (Templates::new("{code} {app", "ok", "ok", "s"), "braces"),
            (Templates::new("{code}", "leak {code}", "ok", "s"), "code"),
            (Templates::new("{code} {link}", "ok", "ok", "s"), "link"),
        ] {
            let err = Messages::builder("Acme")
                .templates(Locale::DE, bad)
                .build()
                .unwrap_err();
            assert!(
                err.to_string().contains(why) || matches!(err, MessageError::Template(..)),
                "{why}: {err}"
            );
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        assert_eq!(Messages::builder("").build(), Err(MessageError::AppName));
        assert_eq!(
            Messages::builder("A".repeat(31)).build(),
            Err(MessageError::AppName)
        );
        assert_eq!(Messages::builder("A{code}").build(), Err(MessageError::AppName));
        for bad in [
            "https://x.com",
            "x.com:443",
            "X.com",
            "",
            "a..b",
            "-a.com",
            "a b.com",
        ] {
            assert_eq!(
                Messages::builder("A").webotp_domain(bad).build(),
                Err(MessageError::Domain),
                "{bad}"
            );
        }
        for bad in [
            "http://acme.example/",
            "https://",
            "https://user@evil.example/",
            "https://a b/",
            "javascript:x",
        ] {
            assert_eq!(
                Messages::builder("A").link_base(bad).build(),
                Err(MessageError::LinkBase),
                "{bad}"
            );
        }
        assert_eq!(
            Messages::builder("A").support_contact("").build(),
            Err(MessageError::SupportContact)
        );
        assert_eq!(
            Messages::builder("A").max_segments(0).build(),
            Err(MessageError::Segments(0))
        );
    }

    #[test]
    fn segment_counting_follows_gsm_03_38() {
        let s = |t: &str| Segments::of(t);
        assert_eq!(
            s(&"a".repeat(160)),
            Segments {
                encoding: Encoding::Gsm7,
                units: 160,
                count: 1
            }
        );
        assert_eq!(s(&"a".repeat(161)).count, 2);
        assert_eq!(s(&"a".repeat(306)).count, 2);
        assert_eq!(s(&"a".repeat(307)).count, 3);
        // Extension characters take two septets.
        assert_eq!(s(&"€".repeat(80)).units, 160);
        assert_eq!(s(&"€".repeat(81)).count, 2);
        assert_eq!(s("é ü ñ Ç").encoding, Encoding::Gsm7);
        for not_gsm in ["á", "ç", "ã", "ê", "😀"] {
            assert_eq!(s(not_gsm).encoding, Encoding::Ucs2, "{not_gsm}");
        }
        assert_eq!(s(&"á".repeat(70)).count, 1);
        assert_eq!(s(&"á".repeat(71)).count, 2);
        assert_eq!(s(&"😀".repeat(35)).units, 70, "a surrogate pair is two units");
    }

    #[test]
    fn dates_render_in_utc() {
        let t = |ms| Utc(Timestamp::from_unix_millis(ms)).to_string();
        assert_eq!(t(0), "1970-01-01 00:00 UTC");
        assert_eq!(t(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(t(1_709_251_199_000), "2024-02-29 23:59 UTC");
        assert_eq!(t(253_402_300_799_000), "9999-12-31 23:59 UTC");
    }
}
