//! Which models exist: the models folders scanned (and rescanned), ids checked, and requested names
//! resolved (aliases, the default model).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use wuwei_api::EventKind;

use crate::core::CoreError;
use crate::integrity;
use crate::loader::is_gguf;
use crate::model::WeightsMode;

use super::{Entry, Registry, Served, State};

/// Finds models in `dirs`: MLX folders (a `config.json` one or two levels deep, `org/name`)
/// and `.gguf` files. Ids are the paths relative to the models folder (GGUF without `.gguf`).
pub fn discover(dirs: &[PathBuf]) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if is_gguf(&path) {
                let id = name.trim_end_matches(".gguf").to_string();
                found.entry(id).or_insert(path);
            } else if path.join("config.json").is_file() {
                found.entry(name).or_insert(path);
            } else if path.is_dir() {
                for inner in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    let inner_name = inner.file_name().to_string_lossy().into_owned();
                    if inner_name.starts_with('.') {
                        continue;
                    }
                    let p = inner.path();
                    if p.join("config.json").is_file() {
                        found.entry(format!("{name}/{inner_name}")).or_insert(p);
                    } else if is_gguf(&p) {
                        let id = format!("{name}/{}", inner_name.trim_end_matches(".gguf"));
                        found.entry(id).or_insert(p);
                    }
                }
            }
        }
    }
    found
}

/// Checks that a model id from a client is a plain folder-relative name: no parent or
/// absolute path, no NUL or control characters. Ids are only ever looked up among the
/// discovered models, never joined to a path, so this is about clear errors, not safety.
pub fn validate_id(id: &str) -> Result<(), CoreError> {
    let bad = |why: &str| Err(CoreError::Invalid(format!("bad model id {id:?}: {why}")));
    if id.trim().is_empty() {
        return bad("it is empty");
    }
    if id.len() > 512 {
        return bad("it is longer than 512 bytes");
    }
    if id.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    if id.starts_with('/') || id.starts_with('\\') || id.starts_with('~') || id.contains(':') {
        return bad("it must be a name relative to a models folder, not a path");
    }
    if id.contains('\\')
        || id
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return bad("it must not contain `..`, `.`, empty parts or backslashes");
    }
    Ok(())
}

fn modified_secs(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

pub(super) fn new_entry(path: PathBuf) -> Entry {
    let fingerprint = integrity::fingerprint(&path);
    let facts = integrity::check_model(&path);
    if let Err(reason) = &facts {
        tracing::warn!(path = %path.display(), %reason, "incomplete model");
    }
    Entry {
        created: modified_secs(&path),
        path,
        fingerprint,
        facts,
        state: State::Available,
    }
}

pub(super) fn dir_size(path: &Path) -> u64 {
    if path.is_file() {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

impl Registry {
    pub fn model_ids(&self) -> Vec<String> {
        self.models.lock().unwrap().keys().cloned().collect()
    }

    pub(super) fn usable_ids(&self) -> Vec<String> {
        let models = self.models.lock().unwrap();
        models
            .iter()
            .filter(|(_, e)| e.facts.is_ok())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Looks at the models folders again: new models are checked and listed, changed ones
    /// re-checked, gone ones dropped (unloaded if loaded). Returns whether anything changed.
    pub fn rescan(&self) -> bool {
        let found = discover(&self.config.model_dirs);
        let known: BTreeMap<String, (PathBuf, u64)> = self
            .models
            .lock()
            .unwrap()
            .iter()
            .map(|(id, e)| (id.clone(), (e.path.clone(), e.fingerprint)))
            .collect();
        // Integrity checks read files: do them before taking the lock.
        let mut fresh: Vec<(String, Entry)> = Vec::new();
        for (id, path) in &found {
            match known.get(id) {
                Some((p, fp)) if p == path && *fp == integrity::fingerprint(path) => {}
                _ => fresh.push((id.clone(), new_entry(path.clone()))),
            }
        }
        let mut events: Vec<EventKind> = Vec::new();
        let mut dropped: Vec<Arc<Served>> = Vec::new();
        {
            let mut models = self.models.lock().unwrap();
            for (id, entry) in fresh {
                let complete = entry.facts.is_ok();
                let reason = entry.facts.as_ref().err().cloned();
                match models.get_mut(&id) {
                    Some(old) => {
                        let was_complete = old.facts.is_ok();
                        old.path = entry.path;
                        old.fingerprint = entry.fingerprint;
                        old.created = entry.created;
                        old.facts = entry.facts;
                        if complete != was_complete {
                            events.push(EventKind::ModelDiscovered {
                                model: id,
                                incomplete: reason,
                            });
                        }
                    }
                    None => {
                        events.push(EventKind::ModelDiscovered {
                            model: id.clone(),
                            incomplete: reason,
                        });
                        models.insert(id, entry);
                    }
                }
            }
            let gone: Vec<String> = models
                .keys()
                .filter(|id| !found.contains_key(*id))
                .cloned()
                .collect();
            for id in gone {
                if let Some(entry) = models.remove(&id) {
                    if let State::Loaded(s) | State::Unloading(s) = entry.state {
                        dropped.push(s);
                    }
                    events.push(EventKind::ModelRemoved { model: id });
                }
            }
        }
        for served in dropped {
            // Its files are gone: the engine finishes what it has and drops the model.
            served.requests.lock().unwrap().take();
            self.emit(EventKind::ModelUnloaded {
                model: served.id.clone(),
                reason: Some("removed".into()),
                // Not counted: the engine lets go of the model in its own time.
                freed_bytes: 0,
            });
        }
        let changed = !events.is_empty();
        for event in events {
            self.emit(event);
        }
        changed
    }

    /// The model used when a request names none.
    pub fn default_model(&self) -> Option<String> {
        let configured = self.runtime.lock().unwrap().default_model.clone();
        let models = self.models.lock().unwrap();
        if let Some(d) = configured {
            if models.get(&d).is_some_and(|e| e.facts.is_ok()) {
                return Some(d);
            }
        }
        // Prefer an MLX folder over a GGUF file of the same model, then the first by name.
        let usable = || models.iter().filter(|(_, e)| e.facts.is_ok());
        usable()
            .find(|(_, e)| e.path.is_dir())
            .or_else(|| usable().next())
            .map(|(id, _)| id.clone())
    }

    /// Resolves a requested name (or none) to a model id.
    pub fn resolve(&self, requested: Option<&str>) -> Result<String, CoreError> {
        let requested = requested.map(str::trim).filter(|s| !s.is_empty());
        let unknown = |name: &str| CoreError::UnknownModel {
            requested: name.into(),
            available: self.usable_ids(),
        };
        let Some(name) = requested else {
            return self.default_model().ok_or_else(|| unknown("(default)"));
        };
        if self.models.lock().unwrap().contains_key(name) {
            return Ok(name.to_string());
        }
        let target = {
            let runtime = self.runtime.lock().unwrap();
            crate::config::resolve_alias(&runtime.aliases, name).map(str::to_string)
        };
        if let Some(target) = target {
            // "default" follows the default model, whichever it is.
            let target = if target == "default" {
                self.default_model()
            } else {
                Some(target)
            };
            if let Some(t) = target.filter(|t| self.models.lock().unwrap().contains_key(t)) {
                return Ok(t);
            }
        }
        Err(unknown(name))
    }

    pub(super) fn known(&self, id: &str) -> Result<(), CoreError> {
        validate_id(id)?;
        if self.models.lock().unwrap().contains_key(id) {
            Ok(())
        } else {
            Err(CoreError::UnknownModel {
                requested: id.into(),
                available: self.model_ids(),
            })
        }
    }

    /// The folders searched for models.
    pub fn model_dirs(&self) -> &[PathBuf] {
        &self.config.model_dirs
    }

    /// The configured weights mode (each model settles `auto` at load).
    pub fn weights_mode(&self) -> WeightsMode {
        self.config.weights_mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Backend;
    use crate::registry::RegistryConfig;

    #[test]
    fn ids_that_are_paths_are_refused() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../b",
            "a\0b",
            "",
            "a\\b",
            "C:x",
            "~/m",
            "a//b",
            "./a",
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["SmolLM2-135M-Instruct", "org/name", "model.Q4_1", "a b"] {
            validate_id(good).unwrap();
        }
    }

    fn test_models() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.deps/test-models")
    }

    #[test]
    fn discovery_finds_folders_one_or_two_deep_and_ggufs() {
        let tmp = tempfile::tempdir().unwrap();
        let src = test_models().join("SmolLM2-135M-Instruct");
        let flat = tmp.path().join("flat");
        let nested = tmp.path().join("org").join("nested");
        for d in [&flat, &nested] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::copy(src.join("config.json"), d.join("config.json")).unwrap();
        }
        std::fs::write(tmp.path().join("x.gguf"), b"GGUF").unwrap();
        std::fs::create_dir_all(tmp.path().join(".hidden")).unwrap();
        std::fs::copy(
            src.join("config.json"),
            tmp.path().join(".hidden/config.json"),
        )
        .unwrap();
        let found = discover(&[tmp.path().to_path_buf()]);
        let ids: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(ids, ["flat", "org/nested", "x"]);

        // Folders without weights are listed, but as incomplete, and never loadable.
        let registry = Registry::new(RegistryConfig {
            model_dirs: vec![tmp.path().to_path_buf()],
            ..RegistryConfig::default()
        });
        let statuses = registry.model_statuses();
        assert!(
            statuses
                .iter()
                .all(|s| s.state == wuwei_api::ModelState::Incomplete),
            "{statuses:?}"
        );
        assert!(registry.list_models().is_empty());
        assert_eq!(registry.default_model(), None);
    }
}
