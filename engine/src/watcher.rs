//! Keeps the registry in step with the models folders: file-system events (via `notify`)
//! trigger a rescan once the folders have been quiet for a moment, so that a model still
//! being copied is not picked up half-written; a slow periodic rescan catches anything the
//! events missed (folders created after start, network file systems).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use crate::registry::Registry;

/// Timing of the watcher.
#[derive(Debug, Clone, Copy)]
pub struct WatchTiming {
    /// How long the folders must be quiet before a rescan.
    pub quiet: Duration,
    /// The longest a rescan is put off while events keep coming (a long copy).
    pub max_delay: Duration,
    /// Rescan this often even without events.
    pub periodic: Duration,
}

impl Default for WatchTiming {
    fn default() -> Self {
        Self {
            quiet: Duration::from_millis(600),
            max_delay: Duration::from_secs(10),
            periodic: Duration::from_secs(15),
        }
    }
}

/// Watches `registry`'s models folders on a background thread for the life of the process.
pub fn spawn(registry: Arc<Registry>, timing: WatchTiming) -> std::io::Result<()> {
    let dirs: Vec<PathBuf> = registry.model_dirs().to_vec();
    std::thread::Builder::new()
        .name("models-watcher".into())
        .spawn(move || run(registry, dirs, timing))
        .map(|_| ())
}

fn run(registry: Arc<Registry>, dirs: Vec<PathBuf>, timing: WatchTiming) {
    let (tx, rx) = mpsc::channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Reads do not change what is there.
            Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => {}
            Ok(_) => {
                let _ = tx.send(());
            }
            Err(e) => tracing::warn!(error = %e, "models folder watch error"),
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the models folders; rescanning periodically");
            None
        }
    };
    let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
    let mut watch_new_dirs = |watcher: &mut Option<notify::RecommendedWatcher>| {
        let Some(w) = watcher.as_mut() else { return };
        for dir in &dirs {
            if !watched.contains(dir) && dir.is_dir() {
                match w.watch(dir, RecursiveMode::Recursive) {
                    Ok(()) => {
                        tracing::debug!(dir = %dir.display(), "watching models folder");
                        watched.insert(dir.clone());
                    }
                    Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch"),
                }
            }
        }
    };
    watch_new_dirs(&mut watcher);
    loop {
        match rx.recv_timeout(timing.periodic) {
            Ok(()) => {
                // Wait until the folders are quiet (bounded, so a copy that never ends does
                // not hold back everything else forever).
                let first = Instant::now();
                while first.elapsed() < timing.max_delay {
                    match rx.recv_timeout(timing.quiet) {
                        Ok(()) => continue,
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => watch_new_dirs(&mut watcher),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // No watcher: only periodic rescans.
                std::thread::sleep(timing.periodic);
            }
        }
        if registry.rescan() {
            tracing::info!(models = ?registry.model_ids(), "models folders changed");
        }
    }
}
