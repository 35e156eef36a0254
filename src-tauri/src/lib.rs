//! The Wuwei menu-bar app: a tray icon whose menu shows what the daemon is doing and drives
//! it through the admin API (docs/ADMIN_API.md), starting the daemon when it is not running.
//!
//! The behaviour is plain Rust, tested without a display: `state` (what the app knows and
//! how each input changes it), `menu` (the menu as data), `controller` (threads and effects
//! behind a `Ui` trait). `tray` is the only part that touches tauri's native menus.

pub mod action;
pub mod config;
pub mod controller;
pub mod login;
pub mod menu;
pub mod prefs;
pub mod state;
pub mod supervisor;
pub mod tray;
pub mod units;

#[cfg(test)]
mod logic_tests;

use std::sync::Arc;

use anyhow::Context;
use tauri::RunEvent;

use crate::config::AppConfig;
use crate::controller::PlatformLogin;

/// Runs the app until it quits.
pub fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WUWEI_APP_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: the log is also read from files (tests/app).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = AppConfig::from_env();
    tracing::info!(url = %config.url, daemon = ?config.daemon_bin, supervise = config.supervise, "wuwei-app");

    let app = tauri::Builder::default()
        .plugin(tauri_plugin_notification::init())
        .plugin(tauri_plugin_opener::init())
        .setup(move |app| {
            // A menu-bar app: no Dock icon, no app menu.
            #[cfg(target_os = "macos")]
            app.set_activation_policy(tauri::ActivationPolicy::Accessory);
            let first = state::AppState::new(config.port, false, login::LoginStatus::Off);
            let ui = Arc::new(tray::TauriUi::new(app.handle(), &menu::build(&first))?);
            let handle = controller::start(config.clone(), ui, Box::new(PlatformLogin));
            app.on_menu_event(move |_, event| handle.menu_clicked(event.id().as_ref()));
            Ok(())
        })
        .build(tauri::generate_context!())
        .context("starting the app")?;
    app.run(|_, event| {
        // Closing the dashboard window must not end a tray app; only Quit (exit(0)) does.
        if let RunEvent::ExitRequested {
            code: None, api, ..
        } = event
        {
            api.prevent_exit();
        }
    });
    Ok(())
}
