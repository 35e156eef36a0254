//! "Launch at login".
//!
//! * macOS: the daemon itself is the login item, an `SMAppService` launch agent whose plist
//!   ships in the bundle (`Contents/Library/LaunchAgents/dev.wuwei.daemon.plist`, see
//!   `macos/` and tauri.conf.json). launchd starts it at login and restarts it when it
//!   crashes, so while it is registered the app does not start a daemon of its own.
//! * Linux: an XDG autostart entry (`$XDG_CONFIG_HOME/autostart/wuwei.desktop`) that starts
//!   this app at login; the app then starts the daemon and restarts it if it crashes (XDG
//!   autostart has no restart of its own, so the app is the supervisor there).

use std::path::{Path, PathBuf};

/// The login item's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginStatus {
    Off,
    On,
    /// Registered, but the user has to allow it in System Settings › Login Items (macOS).
    RequiresApproval,
    /// Not possible here (why).
    Unsupported(String),
}

impl LoginStatus {
    pub fn is_on(&self) -> bool {
        matches!(self, LoginStatus::On | LoginStatus::RequiresApproval)
    }

    /// Whether the login item keeps the daemon running: on macOS it is the daemon itself,
    /// kept alive by launchd (`platform_keeps_daemon` is `KEEPS_DAEMON` outside tests).
    pub fn manages_daemon(&self, platform_keeps_daemon: bool) -> bool {
        platform_keeps_daemon && *self == LoginStatus::On
    }
}

/// Whether this platform's login item is the daemon under a supervisor of its own (launchd),
/// rather than this app (XDG autostart).
pub const KEEPS_DAEMON: bool = cfg!(target_os = "macos");

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("{0}")]
    Unsupported(String),
    #[error("could not write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[cfg(target_os = "macos")]
    #[error("{0}")]
    ServiceManagement(String),
}

#[cfg(target_os = "macos")]
pub use self::macos::*;

#[cfg(not(target_os = "macos"))]
pub use self::xdg::*;

/// XDG autostart (Linux and other freedesktop systems).
#[cfg_attr(target_os = "macos", allow(dead_code))]
pub mod xdg {
    use super::*;

    pub const ENTRY_NAME: &str = "wuwei.desktop";

    /// `$XDG_CONFIG_HOME/autostart` (or `~/.config/autostart`).
    pub fn autostart_dir() -> Option<PathBuf> {
        std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| dirs::home_dir().map(|h| h.join(".config")))
            .map(|c| c.join("autostart"))
    }

    /// The desktop entry that starts `exe` at login.
    pub fn desktop_entry(exe: &Path) -> String {
        // Exec quoting (desktop entry spec): the path in double quotes, with `"`, `` ` ``,
        // `$` and `\` escaped by a backslash.
        let mut quoted = String::from('"');
        for c in exe.to_string_lossy().chars() {
            if matches!(c, '"' | '`' | '$' | '\\') {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        format!(
            "[Desktop Entry]\n\
             Type=Application\n\
             Name=Wuwei\n\
             Comment=Local LLM server (menu-bar app; starts the daemon)\n\
             Exec={quoted}\n\
             Icon=wuwei\n\
             Terminal=false\n\
             X-GNOME-Autostart-enabled=true\n"
        )
    }

    pub fn status_in(dir: &Path) -> LoginStatus {
        let entry = dir.join(ENTRY_NAME);
        match std::fs::read_to_string(entry) {
            // A user may switch the entry off without deleting it.
            Ok(text) if text.lines().any(|l| l.trim() == "Hidden=true") => LoginStatus::Off,
            Ok(text)
                if text
                    .lines()
                    .any(|l| l.trim() == "X-GNOME-Autostart-enabled=false") =>
            {
                LoginStatus::Off
            }
            Ok(_) => LoginStatus::On,
            Err(_) => LoginStatus::Off,
        }
    }

    pub fn set_in(dir: &Path, exe: &Path, on: bool) -> Result<LoginStatus, LoginError> {
        let entry = dir.join(ENTRY_NAME);
        let io = |source| LoginError::Io {
            path: entry.clone(),
            source,
        };
        if on {
            std::fs::create_dir_all(dir).map_err(io)?;
            // Written whole to a temporary name, then renamed: a session manager reading
            // the folder never sees half an entry.
            let tmp = dir.join(format!(".{ENTRY_NAME}.tmp"));
            std::fs::write(&tmp, desktop_entry(exe)).map_err(io)?;
            std::fs::rename(&tmp, &entry).map_err(io)?;
        } else {
            match std::fs::remove_file(&entry) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(status_in(dir))
    }

    pub fn status() -> LoginStatus {
        match autostart_dir() {
            Some(dir) => status_in(&dir),
            None => LoginStatus::Unsupported("no home folder".into()),
        }
    }

    pub fn set(on: bool) -> Result<LoginStatus, LoginError> {
        let dir =
            autostart_dir().ok_or_else(|| LoginError::Unsupported("no home folder".into()))?;
        let exe = std::env::current_exe().map_err(|source| LoginError::Io {
            path: PathBuf::from("(this executable)"),
            source,
        })?;
        set_in(&dir, &exe, on)
    }

    /// Desktop environments have no common settings page for autostart entries.
    pub fn open_settings() {}
}

#[cfg(target_os = "macos")]
mod macos {
    use super::*;
    use smappservice_rs::{AppService, ServiceStatus, ServiceType};

    /// The plist in `Contents/Library/LaunchAgents` (src-tauri/macos/).
    pub const PLIST_NAME: &str = "dev.wuwei.daemon.plist";

    fn service() -> AppService {
        AppService::new(ServiceType::Agent {
            plist_name: PLIST_NAME,
        })
    }

    pub fn status() -> LoginStatus {
        match service().status() {
            ServiceStatus::Enabled => LoginStatus::On,
            ServiceStatus::RequiresApproval => LoginStatus::RequiresApproval,
            ServiceStatus::NotRegistered => LoginStatus::Off,
            // The plist is not in the bundle: a `cargo run` build, not the bundled app.
            ServiceStatus::NotFound => LoginStatus::Unsupported("only in the app bundle".into()),
        }
    }

    pub fn set(on: bool) -> Result<LoginStatus, LoginError> {
        let s = service();
        let result = if on { s.register() } else { s.unregister() };
        result.map_err(|e| LoginError::ServiceManagement(e.to_string()))?;
        Ok(status())
    }

    pub fn open_settings() {
        AppService::open_system_settings_login_items();
    }
}

#[cfg(test)]
mod tests {
    use super::xdg::*;
    use super::*;

    #[test]
    fn xdg_autostart_entry_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("autostart"); // does not exist yet
        let exe = Path::new("/opt/Wu wei/wuwei-app");
        assert_eq!(status_in(&dir), LoginStatus::Off);
        assert_eq!(set_in(&dir, exe, true).unwrap(), LoginStatus::On);
        let text = std::fs::read_to_string(dir.join(ENTRY_NAME)).unwrap();
        assert!(text.starts_with("[Desktop Entry]\n"), "{text}");
        assert!(
            text.contains("\nExec=\"/opt/Wu wei/wuwei-app\"\n"),
            "{text}"
        );
        assert!(text.contains("\nType=Application\n"));
        // nothing else left behind
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert_eq!(set_in(&dir, exe, false).unwrap(), LoginStatus::Off);
        assert!(!dir.join(ENTRY_NAME).exists());
        // switching off twice is fine
        assert_eq!(set_in(&dir, exe, false).unwrap(), LoginStatus::Off);
    }

    #[test]
    fn exec_quoting_escapes_specials() {
        let e = desktop_entry(Path::new("/a/\"b\"/$c`d\\e"));
        assert!(e.contains("Exec=\"/a/\\\"b\\\"/\\$c\\`d\\\\e\"\n"), "{e}");
    }

    #[test]
    fn a_hidden_entry_counts_as_off() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join(ENTRY_NAME),
            "[Desktop Entry]\nExec=x\nHidden=true\n",
        )
        .unwrap();
        assert_eq!(status_in(tmp.path()), LoginStatus::Off);
    }

    #[test]
    fn status_follows_xdg_config_home() {
        // The process-wide variable, as the app reads it: set only inside this test binary.
        let tmp = tempfile::tempdir().unwrap();
        std::env::set_var("XDG_CONFIG_HOME", tmp.path());
        assert_eq!(autostart_dir().unwrap(), tmp.path().join("autostart"));
        #[cfg(not(target_os = "macos"))]
        {
            assert_eq!(status(), LoginStatus::Off);
            assert_eq!(set(true).unwrap(), LoginStatus::On);
            let text = std::fs::read_to_string(tmp.path().join("autostart").join(ENTRY_NAME));
            let exe = std::env::current_exe().unwrap();
            assert!(text.unwrap().contains(&*exe.to_string_lossy()));
            assert_eq!(status(), LoginStatus::On);
            assert_eq!(set(false).unwrap(), LoginStatus::Off);
        }
    }
}
