//! Building [`Messages`]: the settings, and every template checked with
//! the longest values it can take.

use std::time::Duration;

use super::{Kind, Locale, MAX_APP_NAME_CHARS, Messages, PLACEHOLDERS, Segments, Templates, Values};
use crate::clock::Timestamp;
use crate::id::FlowId;
use crate::reference::SupportReference;
use crate::secret::{Code, MAX_CODE_DIGITS};

impl Messages {
    /// A builder for messages naming `app_name`.
    pub fn builder(app_name: impl Into<String>) -> MessagesBuilder {
        MessagesBuilder {
            app_name: app_name.into(),
            locale: Locale::EN,
            templates: Vec::new(),
            webotp_domain: None,
            link_base: None,
            support_contact: None,
            max_segments: 1,
        }
    }
}

/// Builds [`Messages`], checking every template against the segment budget.
#[derive(Debug, Clone)]
#[must_use]
pub struct MessagesBuilder {
    app_name: String,
    locale: Locale,
    templates: Vec<(Locale, Templates)>,
    webotp_domain: Option<String>,
    link_base: Option<String>,
    support_contact: Option<String>,
    max_segments: u8,
}

impl MessagesBuilder {
    /// The default locale (English unless set); requests may ask for
    /// another one through their context.
    pub fn locale(mut self, locale: Locale) -> Self {
        self.locale = locale;
        self
    }

    /// Replaces the templates of `locale` with the host's own.
    pub fn templates(mut self, locale: Locale, templates: Templates) -> Self {
        self.templates.retain(|(l, _)| *l != locale);
        self.templates.push((locale, templates));
        self
    }

    /// Ends code messages with the WebOTP line for `domain` (a host name
    /// such as `example.com`, without scheme or port, at most 30 characters).
    pub fn webotp_domain(mut self, domain: impl Into<String>) -> Self {
        self.webotp_domain = Some(domain.into());
        self
    }

    /// The base of `{link}`: an `https://` URL to which the flow id is
    /// appended (`https://acme.example/recover/` gives
    /// `https://acme.example/recover/<flow id>`). At most 60 characters.
    pub fn link_base(mut self, base: impl Into<String>) -> Self {
        self.link_base = Some(base.into());
        self
    }

    /// How users reach support: an address, a number or a short URL, at
    /// most 30 characters. Shown in notices and carried by `Locked` errors.
    pub fn support_contact(mut self, contact: impl Into<String>) -> Self {
        self.support_contact = Some(contact.into());
        self
    }

    /// How many SMS segments a message may take (default 1, at most 4).
    pub fn max_segments(mut self, segments: u8) -> Self {
        self.max_segments = segments;
        self
    }

    /// Checks the settings and renders every template of every locale with
    /// the longest values it can take.
    ///
    /// # Errors
    /// A [`MessageError`] naming what is wrong.
    pub fn build(self) -> Result<Messages, MessageError> {
        let name_ok = (1..=MAX_APP_NAME_CHARS).contains(&self.app_name.chars().count())
            && !self.app_name.chars().any(char::is_control)
            && !self.app_name.contains(['{', '}']);
        if !name_ok {
            return Err(MessageError::AppName);
        }
        if let Some(domain) = &self.webotp_domain {
            let labels_ok = domain.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
            if domain.len() > 30 || !labels_ok {
                return Err(MessageError::Domain);
            }
        }
        if let Some(base) = &self.link_base {
            let ok = base.len() <= 60
                && base.strip_prefix("https://").is_some_and(|rest| {
                    let host = rest.split('/').next().unwrap_or_default();
                    !host.is_empty() && !host.contains('@')
                })
                && base.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(MessageError::LinkBase);
            }
        }
        if let Some(contact) = &self.support_contact
            && (contact.trim().is_empty()
                || contact.chars().count() > 30
                || contact.chars().any(char::is_control)
                || contact.contains(['{', '}']))
        {
            return Err(MessageError::SupportContact);
        }
        if !(1..=4).contains(&self.max_segments) {
            return Err(MessageError::Segments(self.max_segments));
        }
        let mut templates: Vec<(Locale, Templates)> = Locale::BUILT_IN
            .iter()
            .filter_map(|&l| l.built_in_templates().map(|t| (l, t)))
            .collect();
        for (locale, custom) in self.templates {
            templates.retain(|(l, _)| *l != locale);
            templates.push((locale, custom));
        }
        let messages = Messages {
            app_name: self.app_name,
            locale: self.locale,
            templates,
            webotp_domain: self.webotp_domain,
            link_base: self.link_base,
            support_contact: self.support_contact,
            max_segments: self.max_segments,
        };
        for (locale, t) in &messages.templates {
            messages.check(*locale, t)?;
        }
        Ok(messages)
    }
}

impl Messages {
    /// Checks one locale's templates: known placeholders, `{code}` in the
    /// code message and nowhere else, and the segment budget with the
    /// longest values.
    fn check(&self, locale: Locale, t: &Templates) -> Result<(), MessageError> {
        let longest_code = Code::parse(&"9".repeat(usize::from(MAX_CODE_DIGITS))).expect("ten digits");
        let flow = FlowId::from_bytes([0xff; 16]);
        let reference = SupportReference::from_bits([0xff; 5]);
        let values = Values {
            code: Some(&longest_code),
            ttl: Duration::from_secs(600),
            flow: Some(&flow),
            until: Some(Timestamp::from_unix_millis(253_402_300_799_000)),
            reference: Some(&reference),
        };
        for (kind, text) in [
            (Kind::Code, &t.code),
            (Kind::PasswordChanged, &t.password_changed),
            (Kind::Locked, &t.locked),
            (Kind::HardLocked, &t.hard_locked),
        ] {
            let names = placeholders(text).ok_or(MessageError::Template(locale, "unbalanced braces"))?;
            if let Some(bad) = names.iter().find(|n| !PLACEHOLDERS.contains(n)) {
                let _ = bad;
                return Err(MessageError::Template(locale, "unknown placeholder"));
            }
            let has_code = names.contains(&"code");
            if (kind == Kind::Code) != has_code {
                return Err(MessageError::Template(
                    locale,
                    "{code} belongs in the code message, and only there",
                ));
            }
            if names.contains(&"link") && self.link_base.is_none() {
                return Err(MessageError::Template(locale, "{link} needs a link base"));
            }
            let rendered = self.render(kind, t, &values);
            let segments = Segments::of(rendered.expose_secret());
            if segments.count > usize::from(self.max_segments) {
                return Err(MessageError::TooLong {
                    locale,
                    segments: segments.count,
                    budget: self.max_segments,
                });
            }
        }
        Ok(())
    }
}

/// The placeholder names in a template, or `None` for unbalanced braces.
fn placeholders(text: &str) -> Option<Vec<&str>> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return None;
        }
        let close = open + rest[open..].find('}')?;
        let name = &rest[open + 1..close];
        if name.contains('{') {
            return None;
        }
        names.push(name);
        rest = &rest[close + 1..];
    }
    Some(names)
}

/// A message setting that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The app name must be 1 to 30 characters, without control characters
    /// or braces.
    #[error("the app name must be 1 to 30 characters, without control characters or braces")]
    AppName,
    /// The WebOTP domain must be a lowercase host name of at most 30
    /// characters.
    #[error("the WebOTP domain must be a lowercase host name of at most 30 characters")]
    Domain,
    /// The link base must be an `https://` URL of at most 60 characters.
    #[error("the link base must be an https:// URL of at most 60 printable ASCII characters")]
    LinkBase,
    /// The support contact must be 1 to 30 characters.
    #[error("the support contact must be 1 to 30 characters, without control characters or braces")]
    SupportContact,
    /// The segment budget must be 1 to 4.
    #[error("the segment budget must be 1 to 4, not {0}")]
    Segments(u8),
    /// A template is malformed.
    #[error("a {0:?} template is malformed: {1}")]
    Template(Locale, &'static str),
    /// A template needs more segments than the budget.
    #[error("a {locale:?} message needs {segments} SMS segments, over the budget of {budget}")]
    TooLong {
        /// The locale of the template.
        locale: Locale,
        /// Segments it needs with the longest values.
        segments: usize,
        /// The budget.
        budget: u8,
    },
}
