//! Locales and the texts of each: five built in, any other supplied by the
//! host.

use std::fmt;

/// The language of the messages: a language tag such as `en`, `pt-br` or
/// `ja`. Five come with built-in templates ([`Locale::BUILT_IN`]); hosts
/// supply templates for any other with [`MessagesBuilder::templates`](super::MessagesBuilder::templates). A
/// message in a locale without templates falls back to its language
/// (`pt-br` to `pt`), then to the default locale.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Locale {
    tag: [u8; 12],
    len: u8,
}

impl Default for Locale {
    fn default() -> Self {
        Locale::EN
    }
}

impl fmt::Debug for Locale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Locale({})", self.as_str())
    }
}

impl fmt::Display for Locale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Locale {
    /// English.
    pub const EN: Locale = Locale::two(*b"en");
    /// Spanish.
    pub const ES: Locale = Locale::two(*b"es");
    /// French.
    pub const FR: Locale = Locale::two(*b"fr");
    /// German.
    pub const DE: Locale = Locale::two(*b"de");
    /// Portuguese.
    pub const PT: Locale = Locale::two(*b"pt");
    /// The locales with built-in templates.
    pub const BUILT_IN: &'static [Locale] = &[Locale::EN, Locale::ES, Locale::FR, Locale::DE, Locale::PT];

    const fn two(code: [u8; 2]) -> Locale {
        let mut tag = [0u8; 12];
        tag[0] = code[0];
        tag[1] = code[1];
        Locale { tag, len: 2 }
    }

    /// A locale from a language tag such as `es`, `pt-BR` or `de_AT`
    /// (case and `_` are normalised), or `None` if it is not one: a
    /// language of 2 or 3 letters, then subtags of letters and digits, 12
    /// characters at most.
    pub fn from_tag(tag: &str) -> Option<Locale> {
        let normal: String = tag.trim().to_ascii_lowercase().replace('_', "-");
        let mut parts = normal.split('-');
        let language = parts.next()?;
        let ok = normal.len() <= 12
            && (2..=3).contains(&language.len())
            && language.bytes().all(|b| b.is_ascii_lowercase())
            && parts.all(|p| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !ok {
            return None;
        }
        let mut bytes = [0u8; 12];
        bytes[..normal.len()].copy_from_slice(normal.as_bytes());
        Some(Locale {
            tag: bytes,
            len: normal.len() as u8,
        })
    }

    /// The tag, lowercase: `pt-br`.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.tag[..usize::from(self.len)]).unwrap_or("en")
    }

    /// The language alone: `pt` for `pt-br`.
    pub fn language(&self) -> Locale {
        let lang = self.as_str().split('-').next().unwrap_or("en");
        Locale::from_tag(lang).unwrap_or(Locale::EN)
    }

    /// The built-in templates. They avoid letters outside the GSM-7
    /// alphabet (such as á, ç, ã) so that each fits one 160-character SMS.
    pub fn built_in_templates(self) -> Option<Templates> {
        let (code, changed, locked, hard_locked, support) = match self.as_str() {
            "en" => (
                "{code} is your {app} recovery code. It expires in {minutes} min. Never share it.",
                "Your {app} password was just reset. If this was not you, contact {support} now.",
                "Too many wrong codes: {app} recovery is locked until {until}. Ref {reference}. Help: {support}",
                "Too many wrong codes: {app} recovery is locked. Ref {reference}. To unlock, contact {support}",
                "our support team",
            ),
            "es" => (
                "{code} es tu codigo de recuperacion de {app}. Caduca en {minutes} min. No lo compartas.",
                "Tu clave de {app} se acaba de cambiar. Si no fuiste tu, contacta con {support} ya.",
                "Demasiados codigos erroneos: {app} bloqueado hasta {until}. Ref {reference}. Ayuda: {support}",
                "Demasiados codigos erroneos: {app} bloqueado. Ref {reference}. Para desbloquear: {support}",
                "nuestro soporte",
            ),
            "fr" => (
                "{code} : votre code de récupération {app}. Valable {minutes} min. Ne le partagez pas.",
                "Votre mot de passe {app} a été changé. Si ce n'est pas vous, contactez {support}.",
                "Trop de codes erronés : {app} bloqué jusqu'au {until}. Réf {reference}. Aide : {support}",
                "Trop de codes erronés : {app} bloqué. Réf {reference}. Pour débloquer : {support}",
                "notre support",
            ),
            "de" => (
                "{code} ist Ihr {app} Wiederherstellungscode. Gültig {minutes} Min. Niemals weitergeben.",
                "Ihr {app} Passwort wurde soeben geändert. Waren Sie das nicht? Kontakt: {support}",
                "Zu viele falsche Codes: {app} gesperrt bis {until}. Ref {reference}. Hilfe: {support}",
                "Zu viele falsche Codes: {app} gesperrt. Ref {reference}. Entsperren: {support}",
                "unser Support",
            ),
            "pt" => (
                "{code} é o seu codigo de recuperacao {app}. Expira em {minutes} min. Nao o partilhe.",
                "A sua senha {app} acabou de ser alterada. Se nao foi voce, contacte {support}.",
                "Demasiados codigos errados: {app} bloqueado ate {until}. Ref {reference}. Ajuda: {support}",
                "Demasiados codigos errados: {app} bloqueado. Ref {reference}. Para desbloquear: {support}",
                "o nosso suporte",
            ),
            _ => return None,
        };
        Some(Templates::new(code, changed, locked, support).with_hard_locked(hard_locked))
    }
}

/// The texts of one language.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Templates {
    /// The message carrying a code: must contain `{code}`.
    pub code: String,
    /// The notice after a reset.
    pub password_changed: String,
    /// The notice after an account lock.
    pub locked: String,
    /// The notice after a lock that only support lifts (wrong codes in a
    /// row reached [`Policy::max_consecutive_failures`](crate::Policy::max_consecutive_failures)):
    /// it has no `{until}`. [`Templates::new`] sets it to `locked`, with
    /// `{until}` rendered empty; set your own with
    /// [`Templates::with_hard_locked`].
    pub hard_locked: String,
    /// What `{support}` says when no contact is configured.
    pub support_fallback: String,
}

impl Templates {
    /// Templates from their texts.
    pub fn new(
        code: impl Into<String>,
        password_changed: impl Into<String>,
        locked: impl Into<String>,
        support_fallback: impl Into<String>,
    ) -> Self {
        let locked = locked.into();
        Templates {
            code: code.into(),
            password_changed: password_changed.into(),
            hard_locked: locked.clone(),
            locked,
            support_fallback: support_fallback.into(),
        }
    }

    /// Sets the notice after a lock that only support lifts.
    #[must_use]
    pub fn with_hard_locked(mut self, text: impl Into<String>) -> Self {
        self.hard_locked = text.into();
        self
    }
}
