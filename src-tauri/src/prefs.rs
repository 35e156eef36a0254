//! The app's own choices, kept across restarts of the app and of the daemon: a small JSON
//! file (`app.json` beside the daemon's config file). Today only the SSD cache switch, which
//! the daemon does not persist (its config decides at start; docs/ADMIN_API.md).

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefs {
    /// The user's last SSD cache choice from the menu; `None`: the daemon's config decides.
    pub ssd_cache: Option<bool>,
}

impl Prefs {
    /// The saved choices; defaults when the file is missing or unreadable (a bad file must
    /// not keep the app from starting).
    pub fn load(path: &Path) -> Self {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!("ignoring {}: {e}", path.display());
                Prefs::default()
            }),
            Err(_) => Prefs::default(),
        }
    }

    /// Writes the file whole (temporary name, then rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)? + "\n")?;
        std::fs::rename(tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wuwei/app.json");
        assert_eq!(Prefs::load(&path), Prefs::default());
        let p = Prefs {
            ssd_cache: Some(false),
        };
        p.save(&path).unwrap();
        assert_eq!(Prefs::load(&path), p);
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(Prefs::load(&path), Prefs::default());
        // fields from a newer app are ignored
        std::fs::write(&path, r#"{"ssd_cache": true, "theme": "dark"}"#).unwrap();
        assert_eq!(Prefs::load(&path).ssd_cache, Some(true));
    }
}
