//! Headless Chromium (and Firefox) for the site tests, through `chromedriver` (`geckodriver`)
//! on a free loopback port and the `fantoccini` WebDriver client. Pages are opened from
//! `file://`, as a reader would.
//!
//! Chromium's console errors are collected two ways: a hook installed before any page script
//! runs (`Page.addScriptToEvaluateOnNewDocument`: uncaught errors, failed resource loads,
//! unhandled rejections, `console.error`), and Chrome's own browser log at SEVERE level.
//! geckodriver offers neither, so Firefox tests check what the page shows instead.
//!
//! Binaries: `TB_CHROMEDRIVER` (default `chromedriver`) and `TB_CHROMIUM` (default
//! `/usr/bin/chromium`); `TB_GECKODRIVER` (default `geckodriver`) and `TB_FIREFOX` (default
//! `/usr/bin/firefox-esr`). `.ci/run` installs all four.

use anyhow::{bail, Context as _};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Installed before every document: records what would show in the console as an error.
const ERROR_HOOK: &str = r#"
(function () {
  var errors = [];
  Object.defineProperty(window, "__tbErrors", { value: errors });
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) { errors.push("failed to load " + (t.src || t.href)); }
    else { errors.push("uncaught: " + e.message + " at " + e.filename + ":" + e.lineno); }
  }, true);
  window.addEventListener("unhandledrejection", function (e) { errors.push("unhandled rejection: " + e.reason); });
  var original = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.map.call(arguments, String).join(" "));
    return original.apply(console, arguments);
  };
})();
"#;

/// A WebDriver command chromedriver understands beyond the W3C set.
#[derive(Debug)]
struct ChromeCommand {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for ChromeCommand {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

/// One headless Chromium or Firefox session; dropped processes are killed.
pub struct Browser {
    client: Client,
    driver: Child,
    firefox: bool,
    _profile: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Browser {
    /// Headless Chromium.
    pub async fn start() -> anyhow::Result<Browser> {
        let driver_bin = std::env::var("TB_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium = std::env::var("TB_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = free_port()?;
        // Its own process group, so dropping a Browser (say, on a failed assertion) can end
        // chromedriver and the Chromium it started together.
        let driver = Command::new(&driver_bin)
            .process_group(0)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("starting {driver_bin} (install chromium-driver; .ci/run does)")
            })?;
        let profile = tempfile::tempdir()?;
        let caps = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                // Downloads (the viewer's CSV) into the session's own folder, unasked.
                "prefs": {
                    "download.default_directory": profile.path().join("downloads"),
                    "download.prompt_for_download": false,
                },
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let client = Self::connect(&driver_bin, port, caps, driver, profile, false).await?;
        client
            .client
            .issue_cmd(ChromeCommand {
                path: "goog/cdp/execute",
                body: json!({"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source": ERROR_HOOK}}),
            })
            .await
            .context("installing the console-error hook")?;
        Ok(client)
    }

    /// Headless Firefox.
    #[allow(dead_code)] // for the Firefox tests
    pub async fn start_firefox() -> anyhow::Result<Browser> {
        let driver_bin = std::env::var("TB_GECKODRIVER").unwrap_or_else(|_| "geckodriver".into());
        let firefox = std::env::var("TB_FIREFOX").unwrap_or_else(|_| "/usr/bin/firefox-esr".into());
        let port = free_port()?;
        let profile = tempfile::tempdir()?;
        let driver = Command::new(&driver_bin)
            .process_group(0)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            // Firefox picks its own Marionette port, so tests can run side by side.
            .args(["--marionette-port", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env("TMPDIR", profile.path())
            .spawn()
            .with_context(|| {
                format!("starting {driver_bin} (`cargo install geckodriver`; .ci/run does)")
            })?;
        let caps = json!({
            "browserName": "firefox",
            "moz:firefoxOptions": {
                "binary": firefox,
                "args": ["-headless", "-width", "1280", "-height", "900"],
                "prefs": {
                    // Downloads (the viewer's CSV) into the session's own folder, unasked.
                    "browser.download.folderList": 2,
                    "browser.download.dir": profile.path().join("downloads"),
                    "browser.download.useDownloadDir": true,
                    "browser.shell.checkDefaultBrowser": false,
                    "datareporting.policy.dataSubmissionEnabled": false,
                    "app.update.enabled": false,
                },
            },
        });
        Self::connect(&driver_bin, port, caps, driver, profile, true).await
    }

    async fn connect(
        driver_bin: &str,
        port: u16,
        caps: Value,
        mut driver: Child,
        profile: tempfile::TempDir,
        firefox: bool,
    ) -> anyhow::Result<Browser> {
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    if let Some(status) = driver.try_wait()? {
                        bail!("{driver_bin} exited early ({status})");
                    }
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    let _ = driver.kill();
                    return Err(e).with_context(|| format!("connecting to {driver_bin}"));
                }
            }
        };
        Ok(Browser {
            client,
            driver,
            firefox,
            _profile: profile,
        })
    }

    /// Where the browser saves downloads (inside the session's temporary profile).
    #[allow(dead_code)] // for the viewer's CSV download
    pub fn downloads(&self) -> std::path::PathBuf {
        self._profile.path().join("downloads")
    }

    #[allow(dead_code)] // for tests that drive the page (the viewer's)
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens a local file as `file:///…` and waits for the load event.
    pub async fn open(&self, path: &Path) -> anyhow::Result<()> {
        let abs = path
            .canonicalize()
            .with_context(|| format!("{}", path.display()))?;
        let url = url::Url::from_file_path(&abs)
            .map_err(|()| anyhow::anyhow!("not a file path: {}", abs.display()))?;
        self.client
            .goto(url.as_str())
            .await
            .with_context(|| format!("opening {url}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.eval::<String>("return document.readyState").await? != "complete" {
            if Instant::now() > deadline {
                bail!("{url} did not finish loading");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Runs `js` (a function body; use `return`) and decodes its result.
    pub async fn eval<T: serde::de::DeserializeOwned>(&self, js: &str) -> anyhow::Result<T> {
        let v = self
            .client
            .execute(js, vec![])
            .await
            .with_context(|| format!("executing {js}"))?;
        serde_json::from_value(v).with_context(|| format!("decoding the result of {js}"))
    }

    /// Errors the current page reported so far (hook) plus SEVERE browser-log entries since the
    /// last call.
    pub async fn errors(&self) -> anyhow::Result<Vec<String>> {
        if self.firefox {
            anyhow::bail!("geckodriver reports no console errors: check what the page shows");
        }
        let mut errors: Vec<String> = self
            .eval("return window.__tbErrors ? window.__tbErrors.slice() : ['error hook missing']")
            .await?;
        let log = self
            .client
            .issue_cmd(ChromeCommand {
                path: "se/log",
                body: json!({"type": "browser"}),
            })
            .await
            .context("reading the browser log")?;
        for entry in log.as_array().into_iter().flatten() {
            if entry["level"] == "SEVERE" {
                errors.push(format!(
                    "browser log: {}",
                    entry["message"].as_str().unwrap_or_default()
                ));
            }
        }
        Ok(errors)
    }

    pub async fn close(self) -> anyhow::Result<()> {
        let result = self.client.clone().close().await;
        result.context("closing the browser session")
        // Drop ends the processes.
    }
}

impl Drop for Browser {
    /// Ends the driver and every process of its group (the browser and its helpers), which a
    /// plain kill of the driver would leave running.
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.wait();
    }
}
