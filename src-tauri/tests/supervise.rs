//! The app starts the real daemon when none answers, restarts it with backoff when it is
//! killed, and stops it when asked to on quit. One test in its own binary: it sets process
//! environment variables (inherited by the daemon child) before any thread starts.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::*;
use wuwei_api::Client;
use wuwei_app::config::AppConfig;
use wuwei_app::controller;

/// The daemon child serving `port`, found by its command line.
fn daemon_pid(port: u16) -> Option<u32> {
    let want = format!("--port\0{port}\0");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.contains(&want) && cmdline.contains("serve")).then_some(pid)
    })
}

#[test]
fn the_app_starts_restarts_and_stops_the_daemon() {
    let scratch = tempfile::tempdir().unwrap();
    let port = free_port();
    // What the child inherits: the test models, its own SSD cache folder, and the log
    // folder (the app writes the daemon's output under the data dir).
    std::env::set_var("WUWEI_MODELS", test_models());
    std::env::set_var("WUWEI_KV_SSD_DIR", scratch.path().join("kv"));
    std::env::set_var("XDG_DATA_HOME", scratch.path().join("data"));
    for var in ["WUWEI_API_KEY", "WUWEI_CONFIG", "WUWEI_HOST", "WUWEI_PORT"] {
        std::env::remove_var(var);
    }

    let config = AppConfig {
        url: format!("http://127.0.0.1:{port}"),
        port,
        api_key: None,
        daemon_bin: Some(daemon_bin()),
        supervise: true,
        models_dir: None,
        prefs_path: None,
    };
    assert_eq!(
        config.serve_args(),
        ["serve", "--host", "127.0.0.1", "--port", &port.to_string()]
    );
    let ui = RecordingUi::new();
    let handle = controller::start(config, ui.clone(), Box::new(NoLogin));
    // The count of loaded models changes as the default model warms up: only the prefix.
    let serving = format!("Serving on :{port} · ");
    ui.wait(
        Duration::from_secs(180),
        "the daemon the app started",
        |r| status_of(r).starts_with(&serving),
    );
    let client = Client::new(&format!("http://127.0.0.1:{port}"), None);
    assert!(client.status().unwrap().serving);
    let first = daemon_pid(port).expect("the daemon's pid");
    let menu = ui.snapshot().menu.unwrap();
    assert!(menu.find("quit-stop-daemon").unwrap().enabled());

    // A crash (SIGKILL): the app says so and starts it again.
    std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap();
    ui.wait(Duration::from_secs(30), "the crash to be reported", |r| {
        status_of(r).starts_with("Daemon was killed by signal 9 · restarting in")
    });
    let notes = ui.snapshot().notifications;
    assert!(
        notes
            .iter()
            .any(|(t, b)| t == "The Wuwei daemon stopped unexpectedly"
                && b.contains("was killed by signal 9")),
        "{notes:?}"
    );
    ui.wait(Duration::from_secs(180), "the restarted daemon", |r| {
        status_of(r).starts_with(&serving)
    });
    let second = daemon_pid(port).expect("the restarted daemon's pid");
    assert_ne!(first, second);
    assert!(client.status().unwrap().serving);
    let log = std::fs::read_to_string(scratch.path().join("data/wuwei/daemon.log")).unwrap();
    assert!(!log.is_empty(), "the daemon's output goes to its log");

    // Quit and stop the daemon: SIGTERM, a clean exit, nothing restarted.
    handle.menu_clicked("quit-stop-daemon");
    ui.wait(Duration::from_secs(60), "quit", |r| r.quit);
    eventually(Duration::from_secs(30), "the daemon to be gone", || {
        client.health().is_err().then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(client.health().is_err(), "something started it again");
    assert_eq!(daemon_pid(port), None);
}
