//! Where the daemon is and how to reach it, from the environment and the daemon's own config
//! file, so that the app talks to the daemon `wuwei serve` would start with the same settings.
//!
//! | what | from (first wins) | default |
//! |---|---|---|
//! | URL | `WUWEI_APP_URL`; `WUWEI_HOST`/`WUWEI_PORT`; the config file's `host`/`port` | `http://127.0.0.1:8686` |
//! | API key | `WUWEI_API_KEY`; the config file's `api_key` | none |
//! | daemon binary | `WUWEI_DAEMON_BIN`; `wuwei` beside the app's executable; `wuwei` on `PATH` | |
//! | may start the daemon | `WUWEI_APP_SUPERVISE` (`0` = never) | yes |
//! | models folder | first of `WUWEI_MODELS`; first of the config file's `models_dirs`; the model store | |
//!
//! The config file is `WUWEI_CONFIG` or `~/.config/wuwei/config.toml`, as for the daemon.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_PORT: u16 = 8686;

#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// The daemon's root URL, without a trailing slash.
    pub url: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// The daemon binary, when one was found.
    pub daemon_bin: Option<PathBuf>,
    /// Whether the app starts (and restarts) the daemon when it is not reachable.
    pub supervise: bool,
    /// What "Open models folder" opens.
    pub models_dir: Option<PathBuf>,
    /// The app's own choices (`prefs.rs`): `app.json` beside the daemon's config file.
    pub prefs_path: Option<PathBuf>,
}

/// The parts of the daemon's config file the app reads; everything else is ignored.
#[derive(Debug, Default, Deserialize)]
struct DaemonFile {
    host: Option<String>,
    port: Option<u16>,
    api_key: Option<String>,
    models_dirs: Option<Vec<PathBuf>>,
}

impl AppConfig {
    /// From the process environment and file system.
    pub fn from_env() -> Self {
        let exe = std::env::current_exe().ok();
        Self::resolve(
            |k| std::env::var(k).ok().filter(|v| !v.is_empty()),
            exe.as_deref(),
            |p| p.is_file(),
        )
    }

    /// The resolution, with the environment, the app's executable and the file test passed
    /// in (unit tests use their own).
    pub fn resolve(
        env: impl Fn(&str) -> Option<String>,
        exe: Option<&Path>,
        is_file: impl Fn(&Path) -> bool,
    ) -> Self {
        let prefs_path = config_dir(&env).map(|d| d.join("app.json"));
        let file = config_file(&env)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| toml::from_str::<DaemonFile>(&text).ok())
            .unwrap_or_default();

        let port = env("WUWEI_PORT")
            .and_then(|p| p.parse().ok())
            .or(file.port)
            .unwrap_or(DEFAULT_PORT);
        let (url, port) = match env("WUWEI_APP_URL") {
            Some(url) => {
                let url = url.trim_end_matches('/').to_string();
                let port = port_of(&url).unwrap_or(port);
                (url, port)
            }
            None => {
                let host = env("WUWEI_HOST")
                    .or(file.host)
                    .unwrap_or_else(|| DEFAULT_HOST.into());
                // A daemon bound to every interface is still reached over loopback.
                let host = match host.as_str() {
                    "0.0.0.0" | "::" | "[::]" => DEFAULT_HOST.to_string(),
                    h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
                    _ => host,
                };
                (format!("http://{host}:{port}"), port)
            }
        };

        let daemon_bin = find_daemon(&env, exe, &is_file);
        let supervise = !matches!(
            env("WUWEI_APP_SUPERVISE").as_deref(),
            Some("0" | "false" | "no")
        );
        let models_dir = env("WUWEI_MODELS")
            .and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty()))
            .or_else(|| file.models_dirs.and_then(|d| d.into_iter().next()))
            .map(|p| expand_home(p, env("HOME")))
            .or_else(default_model_store);
        AppConfig {
            url,
            port,
            api_key: env("WUWEI_API_KEY").or(file.api_key),
            daemon_bin,
            supervise,
            models_dir,
            prefs_path,
        }
    }

    /// Arguments for `wuwei serve` so that it listens where this app looks for it.
    pub fn serve_args(&self) -> Vec<String> {
        let mut args = vec!["serve".to_string()];
        if let Some(host) = host_of(&self.url) {
            args.extend(["--host".into(), host]);
        }
        args.extend(["--port".into(), self.port.to_string()]);
        args
    }
}

/// `$XDG_CONFIG_HOME/wuwei` or `~/.config/wuwei` (also on macOS, as for the daemon).
fn config_dir(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("wuwei"))
}

fn config_file(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("WUWEI_CONFIG")
        .map(PathBuf::from)
        .or_else(|| config_dir(env).map(|d| d.join("config.toml")))
}

/// `WUWEI_DAEMON_BIN`, else `wuwei` beside the app's executable (inside the macOS bundle the
/// two sit in `Contents/MacOS`), else `wuwei` on `PATH`.
fn find_daemon(
    env: &impl Fn(&str) -> Option<String>,
    exe: Option<&Path>,
    is_file: &impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if let Some(bin) = env("WUWEI_DAEMON_BIN") {
        return Some(PathBuf::from(bin));
    }
    let name = if cfg!(windows) { "wuwei.exe" } else { "wuwei" };
    let beside = exe.and_then(Path::parent).map(|d| d.join(name));
    if let Some(p) = beside.filter(|p| is_file(p)) {
        return Some(p);
    }
    let path = env("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_file(p))
}

/// The model store, as the daemon names it (engine/src/config.rs `default_model_store`).
fn default_model_store() -> Option<PathBuf> {
    let app = if cfg!(target_os = "macos") {
        "Wuwei"
    } else {
        "wuwei"
    };
    dirs::data_dir().map(|d| d.join(app).join("models"))
}

/// `~/x` → `$HOME/x`, as the daemon reads its folders.
fn expand_home(path: PathBuf, home: Option<String>) -> PathBuf {
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => Path::new(&home).join(rest),
        _ => path,
    }
}

fn authority(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().filter(|a| !a.is_empty())
}

fn host_of(url: &str) -> Option<String> {
    let auth = authority(url)?;
    if let Some(end) = auth.find(']') {
        return Some(auth[1..end].to_string()); // [::1]:8686
    }
    Some(auth.rsplit_once(':').map_or(auth, |(h, _)| h).to_string())
}

fn port_of(url: &str) -> Option<u16> {
    let auth = authority(url)?;
    let after = auth.rsplit_once(']').map_or(auth, |(_, p)| p);
    after.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(vars: &[(&str, &str)], exe: Option<&str>, files: &[&str]) -> AppConfig {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let files: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
        AppConfig::resolve(
            |k| vars.get(k).cloned(),
            exe.map(Path::new),
            |p| files.iter().any(|f| f == p),
        )
    }

    #[test]
    fn defaults() {
        let c = resolve(&[("HOME", "/nonexistent-home")], None, &[]);
        assert_eq!(c.url, "http://127.0.0.1:8686");
        assert_eq!(c.port, 8686);
        assert_eq!(c.api_key, None);
        assert!(c.supervise);
        assert_eq!(c.daemon_bin, None);
        assert_eq!(
            c.prefs_path,
            Some(PathBuf::from("/nonexistent-home/.config/wuwei/app.json"))
        );
        assert_eq!(
            c.serve_args(),
            ["serve", "--host", "127.0.0.1", "--port", "8686"]
        );
    }

    #[test]
    fn url_from_env_wins_and_gives_the_port() {
        let c = resolve(
            &[
                ("WUWEI_APP_URL", "http://127.0.0.1:9999/"),
                ("WUWEI_PORT", "1"),
            ],
            None,
            &[],
        );
        assert_eq!(c.url, "http://127.0.0.1:9999");
        assert_eq!(c.port, 9999);
        let c = resolve(&[("WUWEI_APP_URL", "http://[::1]:7000")], None, &[]);
        assert_eq!(c.port, 7000);
        assert_eq!(c.serve_args()[2], "::1");
    }

    #[test]
    fn host_and_port_from_env() {
        let c = resolve(
            &[
                ("WUWEI_HOST", "0.0.0.0"),
                ("WUWEI_PORT", "8123"),
                ("WUWEI_API_KEY", "k"),
                ("WUWEI_APP_SUPERVISE", "0"),
            ],
            None,
            &[],
        );
        assert_eq!(c.url, "http://127.0.0.1:8123");
        assert_eq!(c.api_key.as_deref(), Some("k"));
        assert!(!c.supervise);
    }

    #[test]
    fn the_daemons_config_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "host = \"127.0.0.2\"\nport = 9001\napi_key = \"from-file\"\nmax_running = 4\n\
             models_dirs = [\"/srv/models\", \"/x\"]\n",
        )
        .unwrap();
        let c = resolve(&[("WUWEI_CONFIG", file.to_str().unwrap())], None, &[]);
        assert_eq!(c.url, "http://127.0.0.2:9001");
        assert_eq!(c.api_key.as_deref(), Some("from-file"));
        assert_eq!(c.models_dir, Some(PathBuf::from("/srv/models")));
        // the environment still wins over the file
        let c = resolve(
            &[
                ("WUWEI_CONFIG", file.to_str().unwrap()),
                ("WUWEI_PORT", "9002"),
                ("WUWEI_API_KEY", "env"),
            ],
            None,
            &[],
        );
        assert_eq!(c.url, "http://127.0.0.2:9002");
        assert_eq!(c.api_key.as_deref(), Some("env"));
    }

    #[test]
    fn daemon_binary_search_order() {
        let exe = "/Applications/Wuwei.app/Contents/MacOS/wuwei-app";
        let beside = "/Applications/Wuwei.app/Contents/MacOS/wuwei";
        let on_path = "/usr/local/bin/wuwei";
        let path = ("PATH", "/usr/bin:/usr/local/bin");
        let c = resolve(
            &[path, ("WUWEI_DAEMON_BIN", "/x/wuwei")],
            Some(exe),
            &[beside],
        );
        assert_eq!(c.daemon_bin, Some(PathBuf::from("/x/wuwei")));
        let c = resolve(&[path], Some(exe), &[beside, on_path]);
        assert_eq!(c.daemon_bin, Some(PathBuf::from(beside)));
        let c = resolve(&[path], Some(exe), &[on_path]);
        assert_eq!(c.daemon_bin, Some(PathBuf::from(on_path)));
        assert_eq!(resolve(&[path], Some(exe), &[]).daemon_bin, None);
    }

    #[test]
    fn models_folder_is_the_first_of_wuwei_models() {
        let c = resolve(&[("WUWEI_MODELS", "/m/one:/m/two")], None, &[]);
        assert_eq!(c.models_dir, Some(PathBuf::from("/m/one")));
        let c = resolve(&[("WUWEI_MODELS", "~/m"), ("HOME", "/home/u")], None, &[]);
        assert_eq!(c.models_dir, Some(PathBuf::from("/home/u/m")));
    }
}
