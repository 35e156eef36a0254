//! Starts the real daemon (`target/debug/wuwei serve`) on a free loopback port with the test
//! models, as tests/e2e/conftest.py does for the Python tests.
//!
//! WUWEI_BIN: the daemon (default: target/debug/wuwei, which scripts/test.sh builds before
//! `cargo test`); WUWEI_TEST_MODELS: the models folder (default: .deps/test-models).
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wuwei_app::controller::{LoginItems, Ui};
use wuwei_app::login::LoginStatus;
use wuwei_app::menu::MenuModel;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn daemon_bin() -> PathBuf {
    let bin = std::env::var_os("WUWEI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/wuwei"));
    assert!(
        bin.is_file(),
        "daemon binary {} not found: run `cargo build --bin wuwei` (scripts/test.sh does) or set WUWEI_BIN",
        bin.display()
    );
    bin
}

pub fn test_models() -> PathBuf {
    let dir = std::env::var_os("WUWEI_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".deps/test-models"));
    assert!(
        dir.join("SmolLM2-135M-Instruct/config.json").is_file(),
        "test models not found in {}: scripts/test.sh makes them (or set WUWEI_TEST_MODELS)",
        dir.display()
    );
    dir
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The environment a test daemon gets: none of the developer's own settings, its own SSD
/// cache folder.
pub fn daemon_command(bin: &Path, port: u16, scratch: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    for var in [
        "WUWEI_API_KEY",
        "WUWEI_CONFIG",
        "WUWEI_HOST",
        "WUWEI_PORT",
        "WUWEI_MODELS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("WUWEI_KV_SSD_DIR", scratch.join("kv"))
        .env("WUWEI_LOG", "info")
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--models")
        .arg(test_models())
        .args(extra);
    cmd
}

pub fn wait_healthy(url: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let client = wuwei_api::Client::new(url, None);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "daemon exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if client.health().is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "daemon not healthy after 180 s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A running daemon; stopped with SIGTERM (which must end it cleanly) when dropped.
pub struct TestDaemon {
    pub url: String,
    pub port: u16,
    pub scratch: tempfile::TempDir,
    child: Child,
}

impl TestDaemon {
    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start(extra: &[&str]) -> Self {
        Self::start_with(&[], extra)
    }

    /// With extra environment variables for the daemon (memory settings, say).
    pub fn start_with(env: &[(&str, &str)], extra: &[&str]) -> Self {
        let scratch = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = scratch.path().join("daemon.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut child = daemon_command(&daemon_bin(), port, scratch.path(), extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting the daemon");
        let url = format!("http://127.0.0.1:{port}");
        wait_healthy(&url, &mut child, &log);
        TestDaemon {
            url,
            port,
            scratch,
            child,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.path().join("daemon.log")).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (the daemon exits 0 after draining).
    pub fn stop(mut self) -> std::process::ExitStatus {
        terminate(self.child.id());
        let status = wait_timeout(&mut self.child, Duration::from_secs(30));
        std::mem::forget(self); // Drop would signal again
        status
    }
}

impl TestDaemon {
    /// Waits for the daemon to exit by itself (after a shutdown call) and answers how.
    pub fn wait_exit(mut self, limit: Duration) -> std::process::ExitStatus {
        let status = wait_timeout(&mut self.child, limit);
        std::mem::forget(self);
        status
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        terminate(self.child.id());
        wait_timeout(&mut self.child, Duration::from_secs(30));
    }
}

pub fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `f` answers `Some`, or panics after `limit` with `what`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `Ui` that records what the controller shows, for tests that drive the real controller
/// against the real daemon without a display.
#[derive(Default)]
pub struct RecordingUi {
    inner: Mutex<Recorded>,
    changed: Condvar,
}

#[derive(Default, Clone)]
pub struct Recorded {
    pub menu: Option<MenuModel>,
    pub daemon_up: bool,
    pub notifications: Vec<(String, String)>,
    pub opened: Vec<String>,
    pub quit: bool,
}

impl RecordingUi {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn snapshot(&self) -> Recorded {
        self.inner.lock().unwrap().clone()
    }

    pub fn status_line(&self) -> String {
        self.snapshot()
            .menu
            .and_then(|m| m.find("status").and_then(|i| i.label().map(str::to_string)))
            .unwrap_or_default()
    }

    /// Waits until `pred` holds for what was recorded; panics with the last status line.
    pub fn wait(&self, limit: Duration, what: &str, pred: impl Fn(&Recorded) -> bool) {
        let deadline = Instant::now() + limit;
        let mut guard = self.inner.lock().unwrap();
        while !pred(&guard) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let msg = format!(
                    "timed out waiting for {what}; status line: {:?}, notifications: {:?}",
                    status_of(&guard),
                    guard.notifications
                );
                // Not while holding the lock: the controller would find it poisoned.
                drop(guard);
                panic!("{msg}");
            }
            guard = self.changed.wait_timeout(guard, left).unwrap().0;
        }
    }
}

impl Ui for RecordingUi {
    fn render(&self, menu: &MenuModel, daemon_up: bool) {
        let mut g = self.inner.lock().unwrap();
        g.menu = Some(menu.clone());
        g.daemon_up = daemon_up;
        self.changed.notify_all();
    }
    fn notify(&self, title: &str, body: &str) {
        self.inner
            .lock()
            .unwrap()
            .notifications
            .push((title.into(), body.into()));
        self.changed.notify_all();
    }
    fn open_dashboard(&self, url: &str) {
        self.inner.lock().unwrap().opened.push(url.into());
        self.changed.notify_all();
    }
    fn open_path(&self, path: &Path) {
        self.inner
            .lock()
            .unwrap()
            .opened
            .push(path.display().to_string());
        self.changed.notify_all();
    }
    fn quit(&self) {
        self.inner.lock().unwrap().quit = true;
        self.changed.notify_all();
    }
}

/// The login item switched off: these tests do not touch the user's session.
pub struct NoLogin;

impl LoginItems for NoLogin {
    fn status(&self) -> LoginStatus {
        LoginStatus::Off
    }
    fn set(&self, on: bool) -> Result<LoginStatus, String> {
        Ok(if on {
            LoginStatus::On
        } else {
            LoginStatus::Off
        })
    }
    fn open_settings(&self) {}
}

/// The status line of a menu.
pub fn status_of(r: &Recorded) -> String {
    r.menu
        .as_ref()
        .and_then(|m| m.find("status").and_then(|i| i.label().map(str::to_string)))
        .unwrap_or_default()
}
