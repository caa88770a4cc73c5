//! Headless Chromium driven through the DevTools protocol (CDP) over a WebSocket: open a page,
//! run JavaScript in it, wait for the page to show something, type and press keys, and save
//! screenshots. Everything the page logs as an error (exceptions, failed loads, violations of
//! its Content-Security-Policy) is collected, so a test can require there were none.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::strict;

/// How long the browser may take to start, and a page to show what is awaited.
const DEADLINE: Duration = Duration::from_secs(30);
/// The Debian package's program.
const PROGRAM: &str = "chromium";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Whether Chromium is installed; in CI (strict) it must be.
pub fn chromium_installed() -> bool {
    let found = Command::new(PROGRAM)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !strict(),
            "chromium is not installed (apt-get install chromium; MERIDIAN_TEST_STRICT=1)"
        );
        eprintln!("skipped: chromium is not installed (apt-get install chromium)");
    }
    found
}

/// A headless Chromium with a fresh profile and one page, driven over CDP; the browser's whole
/// process group is killed on drop.
pub struct Browser {
    process: std::process::Child,
    _profile: tempfile::TempDir,
    socket: Socket,
    next_id: u64,
    /// What the page reported as errors, in order.
    errors: Vec<String>,
}

impl Browser {
    /// Starts Chromium with a window of `width`×`height`, its log in `log`.
    pub async fn start(width: u32, height: u32, log: &Path) -> Browser {
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(log).unwrap();
        let process = Command::new(PROGRAM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(log)
            // A group of its own, so that its helper processes go with it.
            .process_group(0)
            .spawn()
            .unwrap();
        // Chromium writes the port it took (and its browser endpoint) into the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let end = Instant::now() + DEADLINE;
        let port = loop {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            if let Some(port) = text
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<u16>().ok())
            {
                break port;
            }
            assert!(
                Instant::now() < end,
                "chromium never opened its DevTools port"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let page = loop {
            let targets: Value =
                match reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await {
                    Ok(answer) => answer.json().await.unwrap_or_default(),
                    Err(_) => Value::Null,
                };
            let page = targets.as_array().into_iter().flatten().find_map(|t| {
                (t["type"] == "page")
                    .then(|| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
                    .flatten()
            });
            if let Some(page) = page {
                break page;
            }
            assert!(Instant::now() < end, "chromium shows no page: {targets}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(page.as_str())
            .await
            .unwrap();
        let mut browser = Browser {
            process,
            _profile: profile,
            socket,
            next_id: 0,
            errors: Vec::new(),
        };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({})).await;
        }
        browser
    }

    /// Sends `method` with `params` and returns its result; events that come meanwhile are
    /// looked at for errors.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|error| panic!("{method} failed: {error}"))
    }

    /// [`Browser::call`], its protocol error returned (e.g. a page that is being replaced).
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let message = tokio::time::timeout(left, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("chromium never answered {method}"))
                .unwrap_or_else(|| panic!("chromium closed the connection during {method}"))
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["id"] == id {
                return match value.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(value["result"].clone()),
                };
            }
            self.note_event(&value);
        }
    }

    /// Keeps what an event says went wrong in the page.
    fn note_event(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                let text = details["exception"]["description"]
                    .as_str()
                    .or(details["text"].as_str())
                    .unwrap_or("an exception");
                self.errors.push(format!("exception: {text}"));
            }
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                self.errors
                    .push(format!("console.error: {}", params["args"]));
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                let entry = &params["entry"];
                self.errors.push(format!(
                    "{}: {} {}",
                    entry["source"].as_str().unwrap_or("log"),
                    entry["text"].as_str().unwrap_or(""),
                    entry["url"].as_str().unwrap_or("")
                ));
            }
            _ => {}
        }
    }

    /// What the page reported as errors so far.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Opens `url` in the page.
    pub async fn open(&mut self, url: &str) {
        let result = self.call("Page.navigate", json!({"url": url})).await;
        assert!(result.get("errorText").is_none(), "{url}: {result}");
    }

    /// The value of JavaScript `expression` in the page (awaited if a promise).
    pub async fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .await
            .unwrap_or_else(|error| panic!("{expression} failed: {error}"))
    }

    /// [`Browser::eval`], with what it threw (or why it could not run) as the error.
    async fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let params = json!({"expression": expression, "returnByValue": true, "awaitPromise": true});
        let result = self.try_call("Runtime.evaluate", params).await?;
        match result.get("exceptionDetails") {
            Some(exception) => Err(exception.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Evaluates `expression` until its value is truthy (not null, false, 0 or ""), and
    /// returns it; panics after 30 s saying `what` was awaited, with the page's text. While a
    /// document replaces another, the expression may fail: that counts as not yet.
    pub async fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let value = self.try_eval(expression).await.unwrap_or(Value::Null);
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= end {
                let page = self
                    .eval("document.querySelector('main')?.innerText ?? document.body.innerText")
                    .await;
                panic!(
                    "the page never showed {what}\npage: {page}\nerrors: {:?}",
                    self.errors
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Presses and releases `key` (`Tab`, `Enter`, `Escape`) on the focused element.
    pub async fn press(&mut self, key: &str) {
        let (code, text) = match key {
            "Tab" => (9, ""),
            "Enter" => (13, "\r"),
            "Escape" => (27, ""),
            other => panic!("no key code known for {other}"),
        };
        let down = json!({"type": "keyDown", "key": key, "code": key,
            "windowsVirtualKeyCode": code, "text": text});
        self.call("Input.dispatchKeyEvent", down).await;
        let up = json!({"type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code});
        self.call("Input.dispatchKeyEvent", up).await;
    }

    /// Types `text` into the focused element.
    pub async fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// Saves a PNG of the whole page (beyond the window) to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await;
        let size = &metrics["cssContentSize"];
        let clip = json!({"x": 0, "y": 0, "width": size["width"], "height": size["height"],
            "scale": 1});
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "clip": clip, "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Browser {
    /// Asks the browser to close (it ends its helper processes itself), and waits for it.
    pub async fn close(mut self) {
        let id = self.next_id + 1;
        let request = json!({"id": id, "method": "Browser.close", "params": {}});
        let _ = self.socket.send(Message::text(request.to_string())).await;
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            if !matches!(self.process.try_wait(), Ok(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(group) = i32::try_from(self.process.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.process.wait();
    }
}

/// Where a test's output (screenshots, logs) goes: `target/test-output/<name>`, emptied first.
pub fn output_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-output")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
