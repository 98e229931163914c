//! A real browser for the dashboard's tests: Debian's headless Chromium driven through
//! chromedriver (WebDriver, with the `fantoccini` client), and axe-core, from npm, run inside
//! the page for accessibility checks. `./scripts/test` installs all three.
//!
//! Chromium starts with a new empty profile and without its background services: this machine's
//! network is closed, and a browser that phones home at start fills the logs with refusals.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::{find_bin, profile_dir, ChildProcess, TempDir};

/// A headless Chromium session. Closed (and chromedriver stopped) on drop.
pub struct Browser {
    client: Option<Client>,
    _driver: ChildProcess,
    _profile: TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Browser")
    }
}

impl Browser {
    /// Starts chromedriver on an ephemeral port and a Chromium session with a window of
    /// `width` × `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromedriver = find_bin("chromedriver", "chromium-driver");
        let chromium = find_bin("chromium", "chromium");
        let mut cmd = Command::new(chromedriver);
        cmd.arg("--port=0");
        let mut driver = ChildProcess::spawn("chromedriver", cmd);
        let port: u16 = driver.wait_for_stdout_line(Duration::from_secs(30), |line| {
            line.strip_prefix("ChromeDriver was started successfully on port ")
                .and_then(|rest| rest.trim_end_matches('.').trim().parse().ok())
        });
        let profile = TempDir::new("chromium-profile");
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium, "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("starting a Chromium session through chromedriver failed: {e}"));
        Browser {
            client: Some(client),
            _driver: driver,
            _profile: profile,
        }
    }

    pub fn client(&self) -> &Client {
        // Only `close` takes it, and that consumes the browser.
        self.client.as_ref().unwrap_or_else(|| unreachable!())
    }

    pub async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("opening {url} failed: {e}"));
    }

    /// Runs `script` in the page (a function body: `return ...`).
    pub async fn eval(&self, script: &str) -> Value {
        self.client()
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("running {script:?} in the page failed: {e}"))
    }

    /// The text of the element with `data-testid="id"`, `None` while there is none.
    pub async fn text(&self, id: &str) -> Option<String> {
        let found = self
            .eval(&format!(
                "const e = document.querySelector('[data-testid=\"{id}\"]'); return e ? e.textContent.trim() : null;"
            ))
            .await;
        found.as_str().map(str::to_string)
    }

    /// Is there a visible element with `data-testid="id"`?
    pub async fn visible(&self, id: &str) -> bool {
        self.eval(&format!(
            "const e = document.querySelector('[data-testid=\"{id}\"]'); \
             return !!e && !e.hidden && e.getClientRects().length > 0;"
        ))
        .await
        .as_bool()
        .unwrap_or(false)
    }

    /// Polls until the text of `data-testid="id"` satisfies `ok`; returns it and how long it
    /// took. Panics with the last text seen after `deadline`.
    pub async fn wait_text(
        &self,
        id: &str,
        deadline: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> (String, Duration) {
        let start = Instant::now();
        loop {
            let text = self.text(id).await;
            if let Some(t) = text.as_deref().filter(|t| ok(t)) {
                return (t.to_string(), start.elapsed());
            }
            if start.elapsed() > deadline {
                let shot = self.screenshot(&format!("failed-wait-{id}")).await;
                panic!(
                    "timed out after {deadline:?} waiting for [data-testid={id}]; its text was {text:?} (screenshot {})",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Clicks the element with `data-testid="id"`.
    pub async fn click(&self, id: &str) {
        self.client()
            .find(Locator::Css(&format!("[data-testid=\"{id}\"]")))
            .await
            .unwrap_or_else(|e| panic!("no [data-testid={id}] to click: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking [data-testid={id}] failed: {e}"));
    }

    /// Types `text` into the element with `data-testid="id"`.
    pub async fn type_into(&self, id: &str, text: &str) {
        let field = self
            .client()
            .find(Locator::Css(&format!("[data-testid=\"{id}\"]")))
            .await
            .unwrap_or_else(|e| panic!("no [data-testid={id}] to type into: {e}"));
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clearing [data-testid={id}] failed: {e}"));
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("typing into [data-testid={id}] failed: {e}"));
    }

    /// Writes a screenshot of the page to `target/artefacts/dashboard/NAME.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = artefacts_dir();
        let path = dir.join(format!("{name}.png"));
        match self.client().screenshot().await {
            Ok(png) => std::fs::write(&path, png)
                .unwrap_or_else(|e| panic!("writing {} failed: {e}", path.display())),
            Err(e) => eprintln!("screenshot {name} failed: {e}"),
        }
        path
    }

    /// Runs axe-core in the page; returns the violations of impact `serious` or `critical`
    /// (each with its rule id, help text and the elements concerned).
    pub async fn serious_accessibility_violations(&self) -> Vec<Value> {
        let axe = std::fs::read_to_string(axe_path()).unwrap_or_else(|e| {
            panic!(
                "reading axe-core ({}) failed: {e}; run ./scripts/test, which installs it",
                axe_path().display()
            )
        });
        // Injected through WebDriver, which the page's Content-Security-Policy does not govern.
        self.client()
            .execute(&format!("{axe}\n;return true;"), Vec::new())
            .await
            .unwrap_or_else(|e| panic!("loading axe-core into the page failed: {e}"));
        let result = self
            .client()
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] })
                    .then(r => done(r.violations.map(v => ({
                        id: v.id, impact: v.impact, help: v.help,
                        nodes: v.nodes.map(n => n.target.join(' ') + ': ' + n.failureSummary)
                    }))))
                    .catch(e => done([{ id: 'axe-error', impact: 'critical', help: String(e), nodes: [] }]));",
                Vec::new(),
            )
            .await
            .unwrap_or_else(|e| panic!("running axe-core failed: {e}"));
        result
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .collect()
    }

    /// Ends the session and stops the browser.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    /// Chromium outlives a killed chromedriver: its processes are found by their profile
    /// directory, which no other browser uses, and killed.
    fn drop(&mut self) {
        let marker = format!("--user-data-dir={}", self._profile.path().display());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline)
                .split('\0')
                .any(|arg| arg == marker)
            {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// `target/artefacts/dashboard`: screenshots of the dashboard's tests, kept after the run.
pub fn artefacts_dir() -> PathBuf {
    let target = profile_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = target.join("artefacts").join("dashboard");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {} failed: {e}", dir.display()));
    dir
}

/// axe-core's browser build: `$CUTOVER_AXE_JS`, or where `./scripts/test` puts it
/// (`target/test-node/node_modules/axe-core/axe.min.js`).
pub fn axe_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CUTOVER_AXE_JS") {
        return PathBuf::from(p);
    }
    profile_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("test-node/node_modules/axe-core/axe.min.js")
}
