//! The tier's own threads: the writer (queued blocks to files, the size cap), the reader
//! (lookups the engine waits for at most a timeout) and the startup index scan.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::super::paged::KvLayout;
use super::super::prefix::{BlockHash, ModelIdentity};
use super::super::snapshot::StateLayout;
use super::format::{
    decode, decode_snapshot, encode, encode_snapshot, is_stray_temp, kind_path, write_file, Kind,
    Reject, CRC_BYTES, EXTENSION, HEADER_BYTES, SNAPSHOT_EXTENSION,
};
use super::{Loaded, Payload, ReadJob, Shared, WriteJob};

/// Largest snapshot file read back (a bad index entry must not read without bound).
const MAX_SNAPSHOT_FILE: u64 = 1 << 32;

pub(super) fn log_once(flag: &AtomicBool, what: &str, path: &Path, err: &dyn std::fmt::Display) {
    if !flag.swap(true, Ordering::Relaxed) {
        tracing::warn!(path = %path.display(), error = %err, "{what} (further errors of this kind are counted in /metrics, not logged)");
    }
}

/// Sets the cap in force: the configured one (default 10% of the filesystem) and at most 90%
/// of the space the cache could occupy (its own bytes plus the free space).
pub(super) fn refresh_cap(shared: &Shared) {
    let ours = shared.index.lock().unwrap().bytes;
    let mut probe = shared.root.clone();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let cap = match fs_space(&probe) {
        Some((total, free)) => {
            let configured = shared.configured_cap.unwrap_or(total / 10);
            configured.min((ours + free) / 10 * 9)
        }
        None => shared.configured_cap.unwrap_or(u64::MAX),
    };
    shared.cap.store(cap, Ordering::Relaxed);
}

/// (total, available) bytes of the filesystem holding `path`.
pub(super) fn fs_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

pub(super) fn writer_loop(shared: Arc<Shared>, jobs: Receiver<WriteJob>) {
    let mut last_cap_refresh = Instant::now();
    for job in jobs {
        write_one(&shared, job, &mut last_cap_refresh);
        shared.pending.fetch_sub(1, Ordering::Relaxed);
        shared.publish_metrics();
    }
}

pub(super) fn write_one(shared: &Shared, job: WriteJob, last_cap_refresh: &mut Instant) {
    if !shared.enabled.load(Ordering::Relaxed) {
        shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if let Payload::Remove = job.payload {
        let gone = shared.index.lock().unwrap().remove(&job.hash);
        if let Some(entry) = gone {
            let _ = fs::remove_file(entry.path);
        }
        return;
    }
    if shared.index.lock().unwrap().files.contains_key(&job.hash) {
        return;
    }
    if last_cap_refresh.elapsed() > Duration::from_secs(2) {
        refresh_cap(shared);
        *last_cap_refresh = Instant::now();
    }
    let (bytes, kind) = match &job.payload {
        Payload::Block(block) => (encode(&job.model, &job.hash, block), Kind::Block),
        Payload::Snapshot(snap) => (encode_snapshot(&job.model, &job.hash, snap), Kind::Snapshot),
        Payload::Remove => unreachable!("handled above"),
    };
    let cap = shared.cap.load(Ordering::Relaxed);
    if bytes.len() as u64 > cap {
        // No room at all (the filesystem is full): the block is not kept.
        shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    make_room(shared, cap.saturating_sub(bytes.len() as u64));
    let path = kind_path(&shared.root, &job.model, &job.hash, kind);
    match write_file(&path, &bytes) {
        Ok(()) => {
            shared.counters.writes.fetch_add(1, Ordering::Relaxed);
            let mut idx = shared.index.lock().unwrap();
            let t = idx.tick();
            idx.add(job.hash, path, bytes.len() as u64, t);
        }
        Err(e) => {
            shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            shared.note_error("cannot write", &e);
            log_once(
                &shared.write_error_logged,
                "cannot write the SSD KV cache",
                &path,
                &e,
            );
            // Disk full: recompute the cap from the free space left.
            refresh_cap(shared);
        }
    }
}

/// Deletes least recently used files until the cache holds at most `limit` bytes.
pub(super) fn make_room(shared: &Shared, limit: u64) {
    let victims: Vec<PathBuf> = {
        let mut idx = shared.index.lock().unwrap();
        if idx.bytes <= limit {
            return;
        }
        // Evict down to 90% of the limit so that eviction is not paid on every write.
        let target = limit / 10 * 9;
        let mut order: Vec<(u64, BlockHash)> =
            idx.files.iter().map(|(h, e)| (e.last_used, *h)).collect();
        order.sort_unstable();
        let mut out = Vec::new();
        for (_, h) in order {
            if idx.bytes <= target {
                break;
            }
            if let Some(e) = idx.remove(&h) {
                out.push(e.path);
            }
        }
        out
    };
    shared
        .counters
        .evictions
        .fetch_add(victims.len() as u64, Ordering::Relaxed);
    for p in victims {
        let _ = fs::remove_file(p);
    }
}

pub(super) fn reader_loop(shared: Arc<Shared>, jobs: Receiver<ReadJob>) {
    for job in jobs {
        for (hash, kind) in &job.items {
            if job.abandoned.load(Ordering::Relaxed) || !shared.enabled.load(Ordering::Relaxed) {
                break;
            }
            let loaded = read_one(
                &shared,
                &job.model,
                hash,
                *kind,
                &job.layout,
                job.states.as_deref(),
            );
            let stop = loaded.is_none();
            if job.reply.send(loaded).is_err() || stop {
                break;
            }
        }
        let _ = job.reply.send(None);
        job.done.store(true, Ordering::SeqCst);
        if job.abandoned.load(Ordering::SeqCst) {
            shared.reader_stalled.store(false, Ordering::SeqCst);
        }
        shared.publish_metrics();
    }
}

pub(super) fn read_one(
    shared: &Shared,
    model: &ModelIdentity,
    hash: &BlockHash,
    kind: Kind,
    layout: &KvLayout,
    states: Option<&StateLayout>,
) -> Option<Loaded> {
    let path = {
        let mut idx = shared.index.lock().unwrap();
        let t = idx.tick();
        let e = idx.files.get_mut(hash)?;
        e.last_used = t;
        e.path.clone()
    };
    let expected = match kind {
        Kind::Block => (HEADER_BYTES + layout.block_bytes() + CRC_BYTES) as u64,
        Kind::Snapshot => MAX_SNAPSHOT_FILE,
    };
    let mut bytes = Vec::with_capacity(match kind {
        Kind::Block => expected as usize,
        Kind::Snapshot => 0,
    });
    let read = File::open(&path).and_then(|f| f.take(expected + 1).read_to_end(&mut bytes));
    if let Err(e) = read {
        shared.index.lock().unwrap().remove(hash);
        if e.kind() == std::io::ErrorKind::NotFound {
            // Deleted behind our back (someone cleaned the cache folder): a plain miss.
            return None;
        }
        shared
            .counters
            .read_failures
            .fetch_add(1, Ordering::Relaxed);
        shared.note_error("cannot read", &e);
        log_once(
            &shared.read_error_logged,
            "cannot read the SSD KV cache",
            &path,
            &e,
        );
        return None;
    }
    let decoded = match (kind, states) {
        (Kind::Block, _) => decode(&bytes, model, hash, layout).map(Loaded::Block),
        (Kind::Snapshot, Some(states)) => {
            decode_snapshot(&bytes, model, hash, states).map(Loaded::Snapshot)
        }
        (Kind::Snapshot, None) => Err(Reject::Corrupt("no state layout to check against")),
    };
    match decoded {
        Ok(loaded) => Some(loaded),
        Err(Reject::Corrupt(why)) => {
            shared.index.lock().unwrap().remove(hash);
            shared
                .counters
                .checksum_failures
                .fetch_add(1, Ordering::Relaxed);
            log_once(
                &shared.corrupt_logged,
                "corrupt SSD KV cache file deleted",
                &path,
                &why,
            );
            let _ = fs::remove_file(&path);
            None
        }
    }
}

/// Rebuilds the index from the files on disk: most recently modified counts as most recently
/// used. Stray temp files (a crash mid-write) are removed.
pub(super) fn scan(shared: &Shared) {
    let mut found: Vec<(SystemTime, BlockHash, PathBuf, u64)> = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect()
    };
    for model_dir in dirs(&shared.root) {
        for sub in dirs(&model_dir) {
            for entry in fs::read_dir(&sub).into_iter().flatten().flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    if is_stray_temp(&name, &entry) {
                        let _ = fs::remove_file(&path);
                    }
                    continue;
                }
                let Some(hash) = name
                    .strip_suffix(&format!(".{EXTENSION}"))
                    .or_else(|| name.strip_suffix(&format!(".{SNAPSHOT_EXTENSION}")))
                    .and_then(BlockHash::from_hex)
                else {
                    continue;
                };
                if let Ok(meta) = entry.metadata() {
                    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((mtime, hash, path, meta.len()));
                }
            }
        }
    }
    found.sort_by_key(|(t, ..)| *t);
    let mut idx = shared.index.lock().unwrap();
    for (_, hash, path, bytes) in found {
        if !idx.files.contains_key(&hash) {
            let t = idx.tick();
            idx.add(hash, path, bytes, t);
        }
    }
    // Files written while scanning are newer than every scanned one.
    let clock = idx.clock;
    for e in idx.files.values_mut() {
        if e.last_used > clock {
            e.last_used = clock;
        }
    }
}
