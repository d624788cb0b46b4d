//! The text of the messages the crate sends.
//!
//! The code message names the app, gives the code and how long it is
//! valid, warns against sharing it, and (when a domain is configured) ends
//! with the WebOTP origin-bound line, `@example.com #123456`, which lets
//! browsers offer the code for autofill on that origin only.
//!
//! ```
//! use std::time::Duration;
//! use otp_recovery::{Code, Messages};
//!
//! let messages = Messages::new("Acme").unwrap().with_webotp_domain("acme.example").unwrap();
//! let body = messages.code_message(&"123456".parse::<Code>().unwrap(), Duration::from_secs(600));
//! assert_eq!(
//!     body.expose_secret(),
//!     "123456 is your Acme recovery code. It expires in 10 min. Never share it.\n\n@acme.example #123456"
//! );
//! ```

use std::time::Duration;

use crate::secret::{Code, SecretString};

/// Longest app name, in characters, so the message fits one SMS segment.
pub const MAX_APP_NAME_CHARS: usize = 30;

/// What the messages say: the app's name and, optionally, the domain for
/// WebOTP autofill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Messages {
    app_name: String,
    webotp_domain: Option<String>,
}

impl Default for Messages {
    fn default() -> Self {
        Messages {
            app_name: "account".into(),
            webotp_domain: None,
        }
    }
}

impl Messages {
    /// Messages naming `app_name` (1 to 30 characters, printable ASCII, so
    /// the text stays in the GSM-7 alphabet).
    ///
    /// # Errors
    /// [`MessageError::AppName`] otherwise.
    pub fn new(app_name: impl Into<String>) -> Result<Self, MessageError> {
        let app_name = app_name.into();
        let ok = (1..=MAX_APP_NAME_CHARS).contains(&app_name.len())
            && app_name.bytes().all(|b| (b' '..=b'~').contains(&b));
        if !ok {
            return Err(MessageError::AppName);
        }
        Ok(Messages {
            app_name,
            webotp_domain: None,
        })
    }

    /// Ends code messages with the WebOTP line for `domain` (a host name
    /// such as `example.com`, without scheme or port).
    ///
    /// # Errors
    /// [`MessageError::Domain`] if `domain` is not a plain host name of at
    /// most 40 characters.
    pub fn with_webotp_domain(mut self, domain: impl Into<String>) -> Result<Self, MessageError> {
        let domain = domain.into();
        let labels_ok = domain.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
        if domain.len() > 40 || !labels_ok {
            return Err(MessageError::Domain);
        }
        self.webotp_domain = Some(domain);
        Ok(self)
    }

    /// The app name.
    pub fn app_name(&self) -> &str {
        &self.app_name
    }

    /// The message carrying `code`, valid for `ttl`.
    pub fn code_message(&self, code: &Code, ttl: Duration) -> SecretString {
        use std::fmt::Write as _;
        let minutes = ttl.as_secs().div_ceil(60);
        let code = code.expose_secret();
        // Sized up front so the buffer holding the code never reallocates
        // (a reallocation would free a copy of the code without zeroizing it).
        let mut body = String::with_capacity(256);
        let _ = write!(
            body,
            "{code} is your {} recovery code. It expires in {minutes} min. Never share it.",
            self.app_name
        );
        if let Some(domain) = &self.webotp_domain {
            let _ = write!(body, "\n\n@{domain} #{code}");
        }
        debug_assert!(body.len() <= 256, "the capacity bounds every message");
        SecretString::new(body)
    }
}

/// A message setting that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The app name must be 1 to 30 printable ASCII characters.
    #[error("the app name must be 1 to 30 printable ASCII characters")]
    AppName,
    /// The WebOTP domain must be a lowercase host name of at most 40 characters.
    #[error("the WebOTP domain must be a lowercase host name of at most 40 characters")]
    Domain,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_message_fits_one_gsm7_segment() {
        let m = Messages::new("A".repeat(30))
            .unwrap()
            .with_webotp_domain("a".repeat(40))
            .unwrap();
        let body = m.code_message(&Code::parse("1234567890").unwrap(), Duration::from_secs(600));
        assert!(
            body.expose_secret().len() <= 160,
            "{}",
            body.expose_secret().len()
        );
    }

    #[test]
    fn bad_names_and_domains_are_refused() {
        assert_eq!(Messages::new(""), Err(MessageError::AppName));
        assert_eq!(Messages::new("A".repeat(31)), Err(MessageError::AppName));
        assert_eq!(Messages::new("Café"), Err(MessageError::AppName));
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
                Messages::default().with_webotp_domain(bad),
                Err(MessageError::Domain),
                "{bad}"
            );
        }
    }

    #[test]
    fn minutes_round_up() {
        let code = Code::parse("123456").unwrap();
        let body = Messages::default().code_message(&code, Duration::from_secs(61));
        assert!(body.expose_secret().contains("2 min"));
    }
}
