//! The HTML pages. Small enough to write by hand; every value from outside
//! goes through [`escape`]. Styles and the one script are static files, so
//! the Content-Security-Policy can forbid inline code.

use std::fmt::Write;

use otp_recovery::FlowId;
use otp_recovery::sms::SmsMessage;

use crate::problem::Problem;

/// The stylesheet, served at `/static/style.css`.
pub const STYLE_CSS: &str = include_str!("../static/style.css");
/// The WebOTP script, served at `/static/webotp.js`.
pub const WEBOTP_JS: &str = include_str!("../static/webotp.js");

/// Escapes text for HTML content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn layout(title: &str, body: &str, script: bool) -> String {
    let script = if script {
        r#"<script src="/static/webotp.js" defer></script>"#
    } else {
        ""
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Acme</title>
<link rel="stylesheet" href="/static/style.css">
{script}
</head>
<body>
<header><a href="/" class="brand">Acme</a></header>
<main>
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"#,
        title = escape(title),
    )
}

fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, escape(csrf))
}

fn problem_paragraph(problem: Option<&Problem>) -> String {
    problem.map_or_else(String::new, |p| {
        format!(
            r#"<p class="error" id="problem" role="alert">{}</p>"#,
            escape(&p.message)
        )
    })
}

/// The home page: who is signed in, and the ways in.
pub fn home(user: Option<&str>, csrf: &str) -> String {
    let body = match user {
        Some(email) => format!(
            r#"<p id="signed-in">Signed in as <strong>{}</strong>.</p>
<form method="post" action="/logout">{}<button type="submit">Sign out</button></form>"#,
            escape(email),
            csrf_field(csrf)
        ),
        None => r#"<p id="signed-out">You are not signed in.</p>
<p><a href="/login">Sign in</a> · <a href="/recover">Forgot your password?</a></p>"#
            .to_string(),
    };
    layout("Welcome", &body, false)
}

/// The sign-in form.
pub fn login(csrf: &str, email: &str, failed: bool) -> String {
    let error = if failed {
        r#"<p class="error" id="problem" role="alert">Wrong email or password.</p>"#
    } else {
        ""
    };
    let body = format!(
        r#"{error}
<form method="post" action="/login">
{csrf}
<label>Email <input type="email" name="email" autocomplete="username" required value="{email}"></label>
<label>Password <input type="password" name="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button>
</form>
<p><a href="/recover">Forgot your password?</a></p>"#,
        csrf = csrf_field(csrf),
        email = escape(email),
    );
    layout("Sign in", &body, false)
}

/// Step 1: "forgot password", asking for the email address.
pub fn forgot(csrf: &str, problem: Option<&Problem>) -> String {
    let body = format!(
        r#"{problem}
<p>Enter the email address of your account. If it has a verified phone number, we will send a code to it by SMS.</p>
<form method="post" action="/recover">
{csrf}
<label>Email <input type="email" name="identifier" autocomplete="username" required maxlength="254"></label>
<button type="submit">Send code</button>
</form>"#,
        problem = problem_paragraph(problem),
        csrf = csrf_field(csrf),
    );
    layout("Forgot your password?", &body, false)
}

/// What the "enter code" page says above its form.
#[derive(Debug, Default)]
pub struct CodeNotice<'a> {
    /// Where the code went (masked), right after a send.
    pub sent_to: Option<String>,
    /// Seconds until another code may be asked for, right after a send.
    pub resend_in: Option<u64>,
    /// What went wrong with the last step.
    pub problem: Option<&'a Problem>,
}

/// Step 2: "enter code". The WebOTP script fills the code in where the
/// browser supports it.
pub fn code(flow: &FlowId, csrf: &str, notice: &CodeNotice<'_>) -> String {
    let mut intro = String::new();
    match &notice.sent_to {
        Some(to) => {
            let _ = write!(
                intro,
                r#"<p class="info" id="sent">We sent a code by SMS to <strong>{}</strong>.</p>"#,
                escape(to)
            );
        }
        None => intro.push_str("<p>Enter the code we sent to the phone number of your account.</p>"),
    }
    if let Some(secs) = notice.resend_in {
        let _ = write!(
            intro,
            r#"<p class="hint" id="resend-hint">You can ask for a new code in {}.</p>"#,
            crate::problem::in_words(std::time::Duration::from_secs(secs))
        );
    }
    let body = format!(
        r#"{intro}{problem}
<form method="post" action="/recover/{flow}/verify">
{csrf}
<label>Code <input type="text" name="code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]*" maxlength="10" required autofocus></label>
<button type="submit">Continue</button>
</form>
<form method="post" action="/recover/{flow}/resend" class="secondary">
{csrf}
<button type="submit" id="resend">Send a new code</button>
</form>
<p><a href="/recover">Start again</a></p>"#,
        problem = problem_paragraph(notice.problem),
        csrf = csrf_field(csrf),
    );
    layout("Enter the code", &body, true)
}

/// Step 3: "new password". The reset token travels in a hidden field of
/// the form, never in a URL.
pub fn new_password(token: &str, csrf: &str, error: Option<&str>) -> String {
    let error = error.map_or_else(String::new, |e| {
        format!(r#"<p class="error" id="problem" role="alert">{}</p>"#, escape(e))
    });
    let body = format!(
        r#"{error}
<p>The code is right. Choose a new password (at least {min} characters).</p>
<form method="post" action="/recover/password">
{csrf}
<input type="hidden" name="token" value="{token}">
<label>New password <input type="password" name="password" autocomplete="new-password" required minlength="{min}" maxlength="{max}"></label>
<label>Repeat it <input type="password" name="confirm" autocomplete="new-password" required minlength="{min}" maxlength="{max}"></label>
<button type="submit">Set password</button>
</form>"#,
        csrf = csrf_field(csrf),
        token = escape(token),
        min = crate::users::MIN_PASSWORD_CHARS,
        max = crate::users::MAX_PASSWORD_CHARS,
    );
    layout("Choose a new password", &body, false)
}

/// Step 4: done.
pub fn done(sessions_revoked: u64) -> String {
    let sessions = match sessions_revoked {
        0 => "No session of your account was open.".to_string(),
        1 => "1 session of your account was signed out.".to_string(),
        n => format!("{n} sessions of your account were signed out."),
    };
    let body = format!(
        r#"<p class="info" id="done">Your password was changed.</p>
<p id="sessions-revoked">{sessions} If that was not you, contact support.</p>
<p><a href="/login">Sign in with your new password</a></p>"#
    );
    layout("Password changed", &body, false)
}

/// A step that cannot continue: what happened and how to go on.
pub fn problem(problem: &Problem) -> String {
    let mut body = problem_paragraph(Some(problem));
    if let Some(reference) = &problem.support_reference {
        let _ = write!(
            body,
            r#"<p>Support reference: <code id="support-reference">{}</code></p>"#,
            escape(reference)
        );
    }
    if problem.start_again {
        body.push_str(r#"<p><a href="/recover">Start again</a></p>"#);
    } else {
        body.push_str(r#"<p><a href="/">Home</a></p>"#);
    }
    layout("Account recovery", &body, false)
}

/// Development only: the SMS messages "sent", newest first.
pub fn dev_messages(messages: &[SmsMessage]) -> String {
    let mut body = String::from(
        r#"<p class="error">Development mode: this page shows every code sent. Never enable it in production.</p>
<ol id="messages" reversed>"#,
    );
    for message in messages {
        let _ = write!(
            body,
            r#"<li><span class="to">{}</span><pre class="sms">{}</pre></li>"#,
            escape(&message.to.masked().to_string()),
            escape(message.body.expose_secret())
        );
    }
    body.push_str("</ol>");
    layout("Sent SMS messages", &body, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn a_signed_in_email_cannot_inject_markup() {
        let page = home(Some("<script>alert(1)</script>@example.com"), "t");
        assert!(!page.contains("<script>alert"), "{page}");
    }
}
