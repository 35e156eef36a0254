// No console window on Windows release builds (the app is a tray icon).
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() -> anyhow::Result<()> {
    wuwei_app::run()
}
