//! The recovery pages driven in headless Chromium through chromedriver:
//! the happy path (with the old session signed out), a wrong code showing
//! the attempts left, the resend cooldown, and the lockout with its
//! support reference. Takes a screenshot of each page into
//! `examples/web/screenshots/` for the README.
//!
//! Needs `OTP_TEST_CHROMEDRIVER` (the chromedriver binary, e.g. Debian's
//! `/usr/bin/chromedriver` from `chromium-driver`). Without it the test
//! says so and passes, except under CI (`CI` set), where it fails. The
//! test starts chromedriver on a free loopback port and the application
//! in-process on another; nothing else is contacted.

use std::error::Error;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use otp_recovery::Policy;
use otp_recovery_web::{App, Config};
use tokio::process::{Child, Command};

type Outcome<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// Wrong codes a flow allows here; the account locks at the same count, so
/// the last wrong code of one flow shows the account lock.
const ATTEMPTS: u32 = 3;

fn chromedriver_path() -> Option<PathBuf> {
    match std::env::var_os("OTP_TEST_CHROMEDRIVER") {
        Some(path) => Some(PathBuf::from(path)),
        None if std::env::var_os("CI").is_some() => {
            panic!("OTP_TEST_CHROMEDRIVER is not set: CI must run the browser test")
        }
        None => {
            // Straight to stderr, past the test harness's capture, so that
            // the skip shows in a passing run.
            let _ = writeln!(
                std::io::stderr(),
                "skipping the browser test: set OTP_TEST_CHROMEDRIVER to the chromedriver binary \
                 (e.g. /usr/bin/chromedriver from Debian's chromium-driver)"
            );
            None
        }
    }
}

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    _child: Child,
    url: String,
}

impl Driver {
    async fn start(path: &PathBuf) -> Outcome<Self> {
        let port = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
        let mut child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
        // Wait for it to listen (a readiness wait, not a timing assertion).
        for _ in 0..200 {
            if let Some(status) = child.try_wait()? {
                return Err(format!("chromedriver exited at start: {status}").into());
            }
            if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .is_ok()
            {
                return Ok(Driver {
                    _child: child,
                    url: format!("http://127.0.0.1:{port}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("chromedriver did not start listening within 10 s".into())
    }
}

async fn browser(driver: &Driver) -> Outcome<Client> {
    let options = serde_json::json!({
        "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=760,820", "--hide-scrollbars"],
    });
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), "chrome".into());
    caps.insert("goog:chromeOptions".into(), options);
    let client = ClientBuilder::rustls()?
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .map_err(|e| format!("chromium did not start through chromedriver: {e}"))?;
    Ok(client)
}

/// The application, in-process on a free loopback port, in development
/// mode, with a short attempt limit.
async fn start_app(dir: &std::path::Path) -> Outcome<String> {
    let mut config = Config::development(dir.join("web.db"))?;
    config.dev_mode = true;
    config.policy = Policy::builder()
        .max_attempts(ATTEMPTS)
        .account_failures(ATTEMPTS, Duration::from_secs(3600))
        .build()?;
    let app = App::new(config).await?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(otp_recovery_web::serve(listener, app));
    Ok(url)
}

/// One browser tab on the application.
struct Browser {
    client: Client,
    base: String,
    shots: PathBuf,
}

impl Browser {
    async fn open(&self, path: &str) -> Outcome {
        Ok(self.client.goto(&format!("{}{path}", self.base)).await?)
    }

    async fn wait_for(&self, css: &str) -> Outcome<fantoccini::elements::Element> {
        let found = self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(element) => Ok(element),
            Err(e) => {
                let url = self
                    .client
                    .current_url()
                    .await
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                Err(format!("no {css} on {url}: {e}").into())
            }
        }
    }

    async fn text(&self, css: &str) -> Outcome<String> {
        Ok(self.wait_for(css).await?.text().await?)
    }

    async fn heading(&self) -> Outcome<String> {
        self.text("main h1").await
    }

    async fn type_into(&self, css: &str, text: &str) -> Outcome {
        let field = self.wait_for(css).await?;
        field.clear().await?;
        Ok(field.send_keys(text).await?)
    }

    /// Clicks a button and waits for the next page (a new `main h1`).
    async fn click(&self, css: &str) -> Outcome {
        let old = self.wait_for("main h1").await?;
        self.wait_for(css).await?.click().await?;
        for _ in 0..200 {
            // The old heading goes stale once the next document replaces it.
            if old.text().await.is_err() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("clicking {css} loaded no new page").into())
    }

    async fn screenshot(&self, name: &str) -> Outcome {
        let png = self.client.screenshot().await?;
        std::fs::create_dir_all(&self.shots)?;
        std::fs::write(self.shots.join(format!("{name}.png")), png)?;
        Ok(())
    }

    async fn sign_in(&self, email: &str, password: &str) -> Outcome {
        self.open("/login").await?;
        self.type_into("input[name=email]", email).await?;
        self.type_into("input[name=password]", password).await?;
        self.click("form[action='/login'] button").await
    }

    /// Asks for a code for `email`; returns the flow id from the code
    /// page's form.
    async fn request_code(&self, email: &str) -> Outcome<String> {
        self.open("/recover").await?;
        self.type_into("input[name=identifier]", email).await?;
        self.click("form[action='/recover'] button").await?;
        let action = self
            .wait_for("form[action$='/verify']")
            .await?
            .attr("action")
            .await?
            .ok_or("the code form has no action")?;
        let flow = action
            .strip_prefix("/recover/")
            .and_then(|rest| rest.strip_suffix("/verify"))
            .ok_or_else(|| format!("unexpected code form action {action}"))?;
        Ok(flow.to_string())
    }

    /// The latest code sent to a phone ending in `last_digits`, read from
    /// `/dev/messages` (newest first), from the SMS's WebOTP line.
    async fn code_sent_to(&self, last_digits: &str) -> Outcome<String> {
        self.open("/dev/messages").await?;
        self.wait_for("ol#messages").await?;
        for item in self.client.find_all(Locator::Css("ol#messages li")).await? {
            let to = item.find(Locator::Css(".to")).await?.text().await?;
            if to.ends_with(last_digits) {
                let sms = item.find(Locator::Css("pre.sms")).await?.text().await?;
                let code = sms.rsplit('#').next().unwrap_or_default().trim().to_string();
                check(
                    code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
                    format!("no code in {sms:?}"),
                )?;
                return Ok(code);
            }
        }
        Err(format!("no SMS to a phone ending in {last_digits}").into())
    }

    async fn enter_code(&self, flow: &str, code: &str) -> Outcome {
        if !self.client.current_url().await?.path().starts_with("/recover") {
            self.open(&format!("/recover/{flow}")).await?;
        }
        self.type_into("input[name=code]", code).await?;
        self.click("form[action$='/verify'] button").await
    }
}

fn check(condition: bool, what: impl Into<String>) -> Outcome {
    if condition {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

fn wrong(code: &str) -> &'static str {
    if code == "000000" { "000001" } else { "000000" }
}

/// Alice, signed in elsewhere, recovers her account: every page of the
/// flow, her old session ends, the old password stops working and the new
/// one works.
async fn happy_path(b: &Browser) -> Outcome {
    b.sign_in("alice@example.com", "alice-old-password").await?;
    check(
        b.text("#signed-in").await?.contains("alice@example.com"),
        "alice is signed in",
    )?;

    b.open("/recover").await?;
    b.wait_for("input[name=identifier]").await?;
    b.screenshot("1-forgot-password").await?;
    let flow = b.request_code("alice@example.com").await?;
    let sent = b.text("#sent").await?;
    check(
        sent.contains("0101"),
        format!("the code page names the masked phone: {sent}"),
    )?;
    check(
        b.text("#resend-hint").await?.contains("30 seconds"),
        "the code page says when to resend",
    )?;
    check(
        b.wait_for("script[src='/static/webotp.js']").await.is_ok(),
        "the code page loads the WebOTP script",
    )?;
    b.screenshot("2-enter-code").await?;

    let code = b.code_sent_to("0101").await?;
    b.screenshot("dev-messages").await?;
    b.enter_code(&flow, &code).await?;
    check(
        b.heading().await? == "Choose a new password",
        "a right code leads to the new-password page",
    )?;
    b.type_into("input[name=password]", "a-new-passphrase").await?;
    b.type_into("input[name=confirm]", "a-new-passphrase").await?;
    b.screenshot("3-new-password").await?;
    b.click("form[action='/recover/password'] button").await?;
    check(b.heading().await? == "Password changed", "the reset completes")?;
    let revoked = b.text("#sessions-revoked").await?;
    check(
        revoked.starts_with("1 session of your account was signed out"),
        format!("done page: {revoked}"),
    )?;
    b.screenshot("4-done").await?;

    b.open("/").await?;
    check(
        b.wait_for("#signed-out").await.is_ok(),
        "the session opened before the reset is gone",
    )?;
    b.sign_in("alice@example.com", "alice-old-password").await?;
    check(
        b.text("#problem").await?.contains("Wrong email or password"),
        "the old password is refused",
    )?;
    b.sign_in("alice@example.com", "a-new-passphrase").await?;
    check(
        b.text("#signed-in").await?.contains("alice@example.com"),
        "the new password signs in",
    )?;
    Ok(())
}

/// Bob mistypes his code: the page says how many attempts are left; asking
/// for a new code at once is refused with the wait.
async fn wrong_code_and_resend_cooldown(b: &Browser) -> Outcome {
    let flow = b.request_code("bob@example.com").await?;
    let code = b.code_sent_to("0102").await?;
    b.enter_code(&flow, wrong(&code)).await?;
    let problem = b.text("#problem").await?;
    check(
        problem.contains("2 attempts left"),
        format!("wrong code: {problem}"),
    )?;
    b.screenshot("5-wrong-code").await?;

    b.click("#resend").await?;
    let problem = b.text("#problem").await?;
    check(
        problem.starts_with("A new code can be sent in"),
        format!("cooldown: {problem}"),
    )?;
    check(
        problem.contains("seconds"),
        format!("cooldown says how long: {problem}"),
    )?;
    b.screenshot("6-resend-cooldown").await?;

    // The right code still works after all that.
    b.enter_code(&flow, &code).await?;
    check(
        b.heading().await? == "Choose a new password",
        "bob's right code still works",
    )
}

/// Carol runs out of attempts: the last wrong code locks recovery for her
/// account and shows the support reference; a new request shows it too.
async fn lockout(b: &Browser) -> Outcome {
    let flow = b.request_code("carol@example.com").await?;
    let code = b.code_sent_to("0103").await?;
    for left in (1..ATTEMPTS).rev() {
        b.enter_code(&flow, wrong(&code)).await?;
        let problem = b.text("#problem").await?;
        let plural = if left == 1 { "" } else { "s" };
        check(
            problem.contains(&format!("{left} attempt{plural} left")),
            format!("wrong code: {problem}"),
        )?;
    }
    b.enter_code(&flow, wrong(&code)).await?;
    let problem = b.text("#problem").await?;
    check(problem.contains("locked"), format!("lockout: {problem}"))?;
    check(
        problem.contains("help@acme.example"),
        format!("lockout names support: {problem}"),
    )?;
    let reference = b.text("#support-reference").await?;
    check(
        reference.len() == 9 && reference.as_bytes()[4] == b'-',
        format!("a support reference like ABCD-1234: {reference}"),
    )?;
    b.screenshot("7-locked").await?;

    // The right code no longer helps, and a new request is refused too.
    b.open(&format!("/recover/{flow}")).await?;
    b.enter_code(&flow, &code).await?;
    check(
        b.text("#problem").await?.contains("locked"),
        "the locked flow refuses the right code",
    )?;
    b.open("/recover").await?;
    b.type_into("input[name=identifier]", "carol@example.com").await?;
    b.click("form[action='/recover'] button").await?;
    let problem = b.text("#problem").await?;
    check(
        problem.contains(&reference),
        format!("a new request shows the reference: {problem}"),
    )
}

/// An address without an account gets the same code page, and no SMS.
async fn unknown_address_looks_the_same(b: &Browser) -> Outcome {
    b.open("/dev/messages").await?;
    let before = b.client.find_all(Locator::Css("ol#messages li")).await?.len();
    b.request_code("nobody@example.com").await?;
    check(
        b.text("#sent").await?.starts_with("We sent a code by SMS to"),
        "same code page",
    )?;
    b.open("/dev/messages").await?;
    let after = b.client.find_all(Locator::Css("ol#messages li")).await?.len();
    check(before == after, "no SMS went to an unknown address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_pages_in_headless_chromium() -> Outcome {
    let Some(chromedriver) = chromedriver_path() else {
        return Ok(());
    };
    let dir = std::env::temp_dir().join(format!("otp-recovery-web-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let base = start_app(&dir).await?;
    let driver = Driver::start(&chromedriver).await?;
    let b = Browser {
        client: browser(&driver).await?,
        base,
        shots: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("screenshots"),
    };

    let mut outcome = Ok(());
    for (name, result) in [
        ("happy path", happy_path(&b).await),
        (
            "wrong code and resend cooldown",
            wrong_code_and_resend_cooldown(&b).await,
        ),
        ("lockout", lockout(&b).await),
        ("unknown address", unknown_address_looks_the_same(&b).await),
    ] {
        if let Err(e) = result {
            eprintln!("{name}: FAILED: {e}");
            outcome = Err(format!("{name}: {e}").into());
        }
    }
    // End the browser before chromedriver (dropped next), pass or fail.
    b.client.close().await?;
    drop(driver);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}
