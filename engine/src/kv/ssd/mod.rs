//! The SSD tier: full KV blocks in files, and hybrid models' recurrent-state snapshots beside
//! them, written in the background, read back on a prefix hit (also after a restart), and
//! never able to stall generation.
//!
//! - The engine thread only ever does `try_send` into a bounded queue (full: the block is
//!   dropped and counted) and waits for reads at most `read_timeout` (late: recompute).
//! - Files are written to a temp name, fsynced and renamed, so a crash leaves either a whole
//!   file or a stray temp file (removed by the startup scan). Every file carries its model
//!   identity, block hash, layout and a CRC32 of all of it; a file that fails any check is
//!   deleted and counted, never served.
//! - The index mutex guards only map operations: no lock is held across file I/O.
//! - The index is rebuilt at startup by a background scan; until it finishes, blocks not yet
//!   seen are simply misses.
//! - The size is capped (configured bytes, and never more than 90% of what the filesystem
//!   could hold for us), evicting the least recently used files.
//! - Errors (read-only folder, disk full…) are counted, logged once, and otherwise ignored.
//! - A read that hangs (a stalled disk) costs one `read_timeout`: until the reader thread is
//!   free again, further lookups skip the tier at once instead of queueing behind it.
//!
//! Layout: `<dir>/v1/<model identity, 16 hex>/<2 hex>/<block hash, 32 hex>.kv`, and a
//! snapshot in `<snapshot key, 32 hex>.snap` in the same tree (its key is derived from the
//! hash of the block it ends, `prefix::snapshot_key`). A snapshot file also carries the
//! shape of every state array (layer, dtype, axes), which must equal the model's.
//!
//! `format` is the files (paths, bytes, writes), `io` the tier's threads (writer, reader,
//! scan); this module holds the store, its index and the state the threads share.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::paged::{KvBlock, KvLayout};
use super::prefix::{BlockHash, ModelIdentity};
use super::snapshot::{StateLayout, StateSnapshot};

mod format;
mod io;

use format::Kind;
use io::{reader_loop, refresh_cap, scan, writer_loop};

/// Folder of this on-disk layout under the cache dir; a new layout gets a new folder.
pub const LAYOUT_DIR: &str = "v1";

/// Settings of the SSD tier.
#[derive(Debug, Clone)]
pub struct SsdConfig {
    /// The cache folder (the `v1` layout folder goes inside).
    pub dir: PathBuf,
    /// Size cap; `None`: 10% of the filesystem's size. Always also ≤ 90% of the space the
    /// cache could occupy (its own files plus what is free).
    pub max_bytes: Option<u64>,
    pub enabled: bool,
    /// Blocks waiting for the writer before new ones are dropped.
    pub queue_blocks: usize,
    /// Longest the engine waits for the blocks of one prefix hit.
    pub read_timeout: Duration,
}

impl SsdConfig {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            max_bytes: None,
            enabled: true,
            queue_blocks: 64,
            read_timeout: Duration::from_millis(1000),
        }
    }
}

/// `~/Library/Caches/Wuwei/kv` on macOS, `$XDG_CACHE_HOME/wuwei/kv` (or `~/.cache/wuwei/kv`)
/// elsewhere.
pub fn default_dir() -> Option<PathBuf> {
    let app = if cfg!(target_os = "macos") {
        "Wuwei"
    } else {
        "wuwei"
    };
    dirs::cache_dir().map(|d| d.join(app).join("kv"))
}

/// A snapshot of the tier's counters (since the daemon started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SsdStats {
    pub enabled: bool,
    pub scanning: bool,
    pub files: u64,
    pub bytes: u64,
    pub cap_bytes: u64,
    pub writes: u64,
    pub write_errors: u64,
    /// Blocks not written: the queue was full, the tier was off, or the disk had no room.
    pub dropped: u64,
    /// Blocks asked of this tier on admission (the part of a prompt the RAM tier lacked).
    pub lookups: u64,
    /// Blocks read back and served.
    pub read_hits: u64,
    /// Reads that failed on I/O or ran past the deadline.
    pub read_failures: u64,
    /// The part of `read_failures` that ran past the deadline (or skipped a stalled reader).
    pub read_timeouts: u64,
    /// Files that failed the checksum or another check (deleted).
    pub checksum_failures: u64,
    pub evictions: u64,
}

impl SsdStats {
    /// Blocks looked up and not served from disk.
    /// The tier's counters on `/metrics` (process-wide: the store keeps the totals).
    pub fn publish(&self) {
        use crate::metrics::*;
        use ::metrics::{counter, gauge};
        counter!(SSD_WRITES).absolute(self.writes);
        counter!(SSD_WRITE_ERRORS).absolute(self.write_errors);
        counter!(SSD_DROPS).absolute(self.dropped);
        counter!(SSD_READ_HITS).absolute(self.read_hits);
        counter!(SSD_LOOKUPS).absolute(self.lookups);
        counter!(SSD_READ_FAILURES).absolute(self.read_failures);
        counter!(SSD_READ_TIMEOUTS).absolute(self.read_timeouts);
        counter!(SSD_CHECKSUM_FAILURES).absolute(self.checksum_failures);
        counter!(SSD_EVICTIONS).absolute(self.evictions);
        gauge!(SSD_BYTES).set(self.bytes as f64);
        gauge!(SSD_ENABLED).set(if self.enabled { 1.0 } else { 0.0 });
    }

    pub fn misses(&self) -> u64 {
        self.lookups.saturating_sub(self.read_hits)
    }

    /// Served blocks over looked-up blocks; `None` before the first lookup.
    pub fn hit_rate(&self) -> Option<f64> {
        (self.lookups > 0).then(|| self.read_hits as f64 / self.lookups as f64)
    }

    /// I/O errors (writes and reads; not timeouts, drops or rejected files).
    pub fn errors(&self) -> u64 {
        self.write_errors + self.read_failures.saturating_sub(self.read_timeouts)
    }
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    write_errors: AtomicU64,
    dropped: AtomicU64,
    lookups: AtomicU64,
    read_hits: AtomicU64,
    read_failures: AtomicU64,
    read_timeouts: AtomicU64,
    checksum_failures: AtomicU64,
    evictions: AtomicU64,
}

struct FileEntry {
    path: PathBuf,
    bytes: u64,
    last_used: u64,
}

#[derive(Default)]
struct Index {
    files: HashMap<BlockHash, FileEntry>,
    bytes: u64,
    clock: u64,
}

impl Index {
    fn add(&mut self, hash: BlockHash, path: PathBuf, bytes: u64, last_used: u64) {
        if let Some(old) = self.files.insert(
            hash,
            FileEntry {
                path,
                bytes,
                last_used,
            },
        ) {
            self.bytes -= old.bytes;
        }
        self.bytes += bytes;
    }

    fn remove(&mut self, hash: &BlockHash) -> Option<FileEntry> {
        let e = self.files.remove(hash)?;
        self.bytes -= e.bytes;
        Some(e)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

struct Shared {
    /// The configured folder, and the layout folder inside it.
    dir: PathBuf,
    root: PathBuf,
    enabled: AtomicBool,
    scan_started: AtomicBool,
    scanning: AtomicBool,
    /// Writes queued or in progress.
    pending: AtomicU64,
    configured_cap: Option<u64>,
    /// The cap in force (refreshed from the filesystem's free space by the writer).
    cap: AtomicU64,
    index: Mutex<Index>,
    counters: Counters,
    write_error_logged: AtomicBool,
    read_error_logged: AtomicBool,
    corrupt_logged: AtomicBool,
    /// The most recent I/O error, for the admin view (set after the I/O, never held across it).
    last_error: Mutex<Option<String>>,
    /// The reader thread is still busy with a read the engine gave up waiting for.
    reader_stalled: AtomicBool,
}

impl Shared {
    fn stats(&self) -> SsdStats {
        let c = &self.counters;
        let (files, bytes) = {
            let idx = self.index.lock().unwrap();
            (idx.files.len() as u64, idx.bytes)
        };
        SsdStats {
            enabled: self.enabled.load(Ordering::Relaxed),
            scanning: self.scanning.load(Ordering::Relaxed),
            files,
            bytes,
            cap_bytes: self.cap.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            lookups: c.lookups.load(Ordering::Relaxed),
            read_hits: c.read_hits.load(Ordering::Relaxed),
            read_failures: c.read_failures.load(Ordering::Relaxed),
            read_timeouts: c.read_timeouts.load(Ordering::Relaxed),
            checksum_failures: c.checksum_failures.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
        }
    }

    /// Keeps `/metrics` current from the tier's own threads: the engine publishes only while
    /// it steps, and writes finish after the request that caused them.
    fn publish_metrics(&self) {
        self.stats().publish();
    }

    fn note_error(&self, what: &str, err: &dyn std::fmt::Display) {
        *self.last_error.lock().unwrap() = Some(format!("{what}: {err}"));
    }
}

/// What a write puts in a file.
enum Payload {
    Block(Arc<KvBlock>),
    Snapshot(Arc<StateSnapshot>),
    /// Delete the file (a snapshot the RAM tier dropped as superseded).
    Remove,
}

struct WriteJob {
    model: ModelIdentity,
    hash: BlockHash,
    payload: Payload,
}

/// What a read brought back.
enum Loaded {
    Block(KvBlock),
    Snapshot(StateSnapshot),
}

struct ReadJob {
    model: ModelIdentity,
    /// Files to read in order (the reader stops at the first missing or bad one).
    items: Vec<(BlockHash, Kind)>,
    layout: KvLayout,
    /// The model's state layout (jobs that read a snapshot).
    states: Option<Arc<StateLayout>>,
    /// Set by the engine when it stopped waiting.
    abandoned: Arc<AtomicBool>,
    /// Set by the reader when it is finished with the job.
    done: Arc<AtomicBool>,
    reply: mpsc::Sender<Option<Loaded>>,
}

/// The SSD tier, shared by every model's engine (and the admin API).
pub struct SsdStore {
    shared: Arc<Shared>,
    writes: SyncSender<WriteJob>,
    reads: Mutex<mpsc::Sender<ReadJob>>,
    read_timeout: Duration,
}

impl std::fmt::Debug for SsdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsdStore")
            .field("root", &self.shared.root)
            .finish()
    }
}

impl SsdStore {
    /// Opens the store and starts its writer and reader threads (and the index scan when
    /// enabled). Never fails: a folder that cannot be used shows up as counted errors.
    pub fn open(config: SsdConfig) -> Arc<Self> {
        let root = config.dir.join(LAYOUT_DIR);
        let shared = Arc::new(Shared {
            dir: config.dir.clone(),
            root,
            enabled: AtomicBool::new(config.enabled),
            scan_started: AtomicBool::new(false),
            scanning: AtomicBool::new(false),
            pending: AtomicU64::new(0),
            configured_cap: config.max_bytes,
            cap: AtomicU64::new(config.max_bytes.unwrap_or(u64::MAX)),
            index: Mutex::new(Index::default()),
            counters: Counters::default(),
            write_error_logged: AtomicBool::new(false),
            read_error_logged: AtomicBool::new(false),
            corrupt_logged: AtomicBool::new(false),
            last_error: Mutex::new(None),
            reader_stalled: AtomicBool::new(false),
        });
        refresh_cap(&shared);
        let (wtx, wrx) = mpsc::sync_channel(config.queue_blocks.max(1));
        let (rtx, rrx) = mpsc::channel();
        let w = shared.clone();
        let spawned_writer = std::thread::Builder::new()
            .name("kv-ssd-writer".into())
            .spawn(move || writer_loop(w, wrx));
        let r = shared.clone();
        let spawned_reader = std::thread::Builder::new()
            .name("kv-ssd-reader".into())
            .spawn(move || reader_loop(r, rrx));
        if spawned_writer.is_err() || spawned_reader.is_err() {
            tracing::warn!("cannot start the SSD cache threads; SSD cache disabled");
            shared.enabled.store(false, Ordering::Relaxed);
        }
        let store = Arc::new(Self {
            shared,
            writes: wtx,
            reads: Mutex::new(rtx),
            read_timeout: config.read_timeout,
        });
        if config.enabled {
            store.start_scan();
        }
        store
    }

    /// The `v1` folder the files live in.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// The configured cache folder.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The most recent I/O error (`None` if there was none).
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().unwrap().clone()
    }

    pub fn enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::Relaxed)
    }

    /// Turns the tier on or off at once: while off, nothing is written (queued blocks are
    /// dropped) and nothing is read. Turning it on resumes without a restart.
    /// Returns whether the state changed.
    pub fn set_enabled(&self, on: bool) -> bool {
        let was = self.shared.enabled.swap(on, Ordering::Relaxed);
        if was != on {
            tracing::info!(enabled = on, dir = %self.shared.dir.display(), "SSD KV cache switched");
        }
        if on {
            self.start_scan();
        }
        self.shared.publish_metrics();
        was != on
    }

    pub fn stats(&self) -> SsdStats {
        self.shared.stats()
    }

    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.enabled() && self.shared.index.lock().unwrap().files.contains_key(hash)
    }

    /// How many of `hashes`, from the first, have a file (no I/O).
    pub fn longest_prefix(&self, hashes: &[BlockHash]) -> usize {
        if !self.enabled() {
            return 0;
        }
        let idx = self.shared.index.lock().unwrap();
        hashes
            .iter()
            .take_while(|h| idx.files.contains_key(h))
            .count()
    }

    /// Queues a block for writing; never waits. Returns whether it was queued.
    pub fn enqueue(&self, model: ModelIdentity, hash: BlockHash, block: Arc<KvBlock>) -> bool {
        self.enqueue_payload(model, hash, Payload::Block(block))
    }

    /// Queues a snapshot for writing under `key` (`prefix::snapshot_key` of the block it
    /// ends); never waits. Queued after its blocks, it is written after them.
    pub fn enqueue_snapshot(
        &self,
        model: ModelIdentity,
        key: BlockHash,
        snapshot: Arc<StateSnapshot>,
    ) -> bool {
        self.enqueue_payload(model, key, Payload::Snapshot(snapshot))
    }

    /// Queues the deletion of the file under `key` (after any write queued before); never
    /// waits.
    pub fn remove(&self, model: ModelIdentity, key: BlockHash) -> bool {
        self.enqueue_payload(model, key, Payload::Remove)
    }

    fn enqueue_payload(&self, model: ModelIdentity, hash: BlockHash, payload: Payload) -> bool {
        let written = self.shared.index.lock().unwrap().files.contains_key(&hash);
        if !self.enabled() || (written && !matches!(payload, Payload::Remove)) {
            return false;
        }
        // Counted before the send so that the writer never decrements below zero.
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        match self.writes.try_send(WriteJob {
            model,
            hash,
            payload,
        }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.pending.fetch_sub(1, Ordering::Relaxed);
                self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The longest run of `hashes` (from the first) this tier can serve, read back within the
    /// read timeout. Counts the lookup (every hash asked for) for the hit rate.
    pub fn lookup(
        &self,
        model: ModelIdentity,
        hashes: &[BlockHash],
        layout: KvLayout,
    ) -> Vec<KvBlock> {
        if !self.enabled() || hashes.is_empty() {
            return Vec::new();
        }
        self.shared
            .counters
            .lookups
            .fetch_add(hashes.len() as u64, Ordering::Relaxed);
        let n = self.longest_prefix(hashes);
        if n == 0 {
            return Vec::new();
        }
        self.read_prefix(model, &hashes[..n], layout)
    }

    /// Reads the blocks of `hashes` in order, stopping at the first that is missing or bad,
    /// and waits at most the read timeout in all: what arrived by then is returned.
    pub fn read_prefix(
        &self,
        model: ModelIdentity,
        hashes: &[BlockHash],
        layout: KvLayout,
    ) -> Vec<KvBlock> {
        let items = hashes.iter().map(|h| (*h, Kind::Block)).collect();
        self.read_items(model, items, layout, None)
            .into_iter()
            .filter_map(|l| match l {
                Loaded::Block(b) => Some(b),
                Loaded::Snapshot(_) => None,
            })
            .collect()
    }

    /// A hybrid model's hit: the blocks of `hashes` (counted as lookups) and then the
    /// snapshot under `key`, whose state layout must be `states`; all within one read
    /// timeout. The snapshot comes back only when every block did.
    pub fn read_with_snapshot(
        &self,
        model: ModelIdentity,
        hashes: &[BlockHash],
        layout: KvLayout,
        key: BlockHash,
        states: Arc<StateLayout>,
    ) -> (Vec<KvBlock>, Option<StateSnapshot>) {
        if !self.enabled() {
            return (Vec::new(), None);
        }
        self.shared
            .counters
            .lookups
            .fetch_add(hashes.len() as u64, Ordering::Relaxed);
        let mut items: Vec<_> = hashes.iter().map(|h| (*h, Kind::Block)).collect();
        items.push((key, Kind::Snapshot));
        let mut blocks = Vec::new();
        let mut snapshot = None;
        for loaded in self.read_items(model, items, layout, Some(states)) {
            match loaded {
                Loaded::Block(b) => blocks.push(b),
                Loaded::Snapshot(s) => snapshot = Some(s),
            }
        }
        (blocks, snapshot)
    }

    /// Reads `items` in order, stopping at the first that is missing or bad, and waits at
    /// most the read timeout in all: what arrived by then is returned. Blocks served count
    /// as read hits.
    fn read_items(
        &self,
        model: ModelIdentity,
        items: Vec<(BlockHash, Kind)>,
        layout: KvLayout,
        states: Option<Arc<StateLayout>>,
    ) -> Vec<Loaded> {
        if !self.enabled() || items.is_empty() {
            return Vec::new();
        }
        if self.shared.reader_stalled.load(Ordering::Relaxed) {
            // An earlier read is still hanging: queueing behind it would only wait out the
            // timeout again. Recompute now.
            self.count_timeout();
            return Vec::new();
        }
        let (tx, rx) = mpsc::channel();
        let abandoned = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let wanted = items.len();
        let job = ReadJob {
            model,
            items,
            layout,
            states,
            abandoned: abandoned.clone(),
            done: done.clone(),
            reply: tx,
        };
        if self.reads.lock().unwrap().send(job).is_err() {
            return Vec::new();
        }
        let deadline = Instant::now() + self.read_timeout;
        let mut blocks = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Some(loaded)) => {
                    blocks.push(loaded);
                    if blocks.len() == wanted {
                        break;
                    }
                }
                Ok(None) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    // The reader clears the flag when it is done with the job; it may be done
                    // already. SeqCst: each side must see the other's store (no lost clear).
                    abandoned.store(true, Ordering::SeqCst);
                    self.shared.reader_stalled.store(true, Ordering::SeqCst);
                    if done.load(Ordering::SeqCst) {
                        self.shared.reader_stalled.store(false, Ordering::SeqCst);
                    }
                    self.count_timeout();
                    tracing::debug!(
                        got = blocks.len(),
                        wanted,
                        "SSD read timed out; recomputing the rest"
                    );
                    break;
                }
            }
        }
        let served = blocks
            .iter()
            .filter(|l| matches!(l, Loaded::Block(_)))
            .count();
        self.shared
            .counters
            .read_hits
            .fetch_add(served as u64, Ordering::Relaxed);
        blocks
    }

    fn count_timeout(&self) {
        let c = &self.shared.counters;
        c.read_failures.fetch_add(1, Ordering::Relaxed);
        c.read_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits (tests, benchmarks, shutdown) until every queued write is done or `timeout`
    /// passes; says whether the queue drained.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.shared.pending.load(Ordering::Relaxed) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    fn start_scan(&self) {
        if self.shared.scan_started.swap(true, Ordering::Relaxed) {
            return;
        }
        self.shared.scanning.store(true, Ordering::Relaxed);
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("kv-ssd-scan".into())
            .spawn(move || {
                let started = Instant::now();
                scan(&shared);
                shared.scanning.store(false, Ordering::Relaxed);
                let idx = shared.index.lock().unwrap();
                tracing::info!(
                    files = idx.files.len(),
                    bytes = idx.bytes,
                    ms = started.elapsed().as_millis() as u64,
                    dir = %shared.root.display(),
                    "SSD KV cache index ready"
                );
            });
        if spawned.is_err() {
            self.shared.scanning.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File};

    use super::format::{encode, file_path, HEADER_BYTES};
    use super::*;
    use crate::kv::paged::KvDtype;

    fn layout() -> KvLayout {
        KvLayout {
            layers: 2,
            kv_heads: 1,
            head_dim: 2,
            block_size: 2,
            dtype: KvDtype::F32,
            linear: 0,
            wide: 0,
            wide_shape: (0, 0),
            windowed: 0,
            quant: None,
        }
    }

    fn block(fill: u8) -> KvBlock {
        KvBlock {
            layout: layout(),
            data: vec![fill; layout().block_bytes()],
        }
    }

    fn store(dir: &Path) -> Arc<SsdStore> {
        let mut cfg = SsdConfig::new(dir.to_path_buf());
        cfg.max_bytes = Some(1 << 20);
        SsdStore::open(cfg)
    }

    fn wait_scan(s: &SsdStore) {
        while s.stats().scanning {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn ids(n: u8) -> (ModelIdentity, BlockHash) {
        (ModelIdentity([7; 32]), BlockHash([n; 16]))
    }

    /// A scanned store in `dir` holding blocks `1..=n` of model `ids(0).0`, written.
    fn store_with(dir: &Path, n: u8) -> (Arc<SsdStore>, ModelIdentity) {
        let s = store(dir);
        wait_scan(&s);
        let m = ids(0).0;
        for i in 1..=n {
            s.enqueue(m, ids(i).1, Arc::new(block(i)));
        }
        assert!(s.flush(Duration::from_secs(5)));
        (s, m)
    }

    #[test]
    fn write_then_read_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        wait_scan(&s);
        let (m, h) = ids(1);
        assert!(s.enqueue(m, h, Arc::new(block(3))));
        assert!(s.flush(Duration::from_secs(5)));
        assert_eq!(s.longest_prefix(&[h, ids(2).1]), 1);
        assert_eq!(s.read_prefix(m, &[h], layout()), vec![block(3)]);
        drop(s);
        let s = store(dir.path());
        wait_scan(&s);
        assert_eq!(s.read_prefix(m, &[h], layout()), vec![block(3)]);
        // Another model never gets it.
        assert!(s
            .read_prefix(ModelIdentity([8; 32]), &[h], layout())
            .is_empty());
        assert_eq!(s.stats().checksum_failures, 1);
    }

    /// Blocks of quantized KV say their format in the header (float files, written before
    /// quantized blocks, have zeros there): read back into their own format only.
    #[test]
    fn quantized_blocks_are_read_back_only_into_their_format() {
        use crate::kv::quant::KvQuant;
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        wait_scan(&s);
        let q8 = KvLayout {
            head_dim: 64,
            quant: Some(KvQuant::new(8, 32).unwrap()),
            ..layout()
        };
        // Per layer, K and V: 64 one-byte values and 2 groups of an f32 scale and bias.
        assert_eq!(q8.block_bytes(), 2 * 2 * 2 * (64 + 2 * 2 * 4));
        let block = KvBlock {
            layout: q8,
            data: (0..q8.block_bytes()).map(|i| i as u8).collect(),
        };
        let m = ids(0).0;
        let hashes = [1, 2, 3].map(|n| ids(n).1);
        for hash in hashes {
            assert!(s.enqueue(m, hash, Arc::new(block.clone())));
        }
        assert!(s.flush(Duration::from_secs(5)));
        assert_eq!(s.read_prefix(m, &hashes[..1], q8), vec![block.clone()]);
        let q4 = KvLayout {
            quant: Some(KvQuant::new(4, 32).unwrap()),
            ..q8
        };
        let float = KvLayout { quant: None, ..q8 };
        // (A rejected file is deleted: each wrong format reads a file of its own.)
        for (other, hash) in [(q4, hashes[1]), (float, hashes[2])] {
            assert!(s.read_prefix(m, &[hash], other).is_empty());
        }
        assert_eq!(s.stats().checksum_failures, 2);
    }

    fn snapshot(fill: u8) -> StateSnapshot {
        use crate::kv::paged::KvDtype;
        use crate::kv::snapshot::StateShape;
        StateSnapshot {
            layout: vec![
                StateShape {
                    layer: 0,
                    dtype: KvDtype::Bf16,
                    shape: vec![1, 3, 4],
                },
                StateShape {
                    layer: 0,
                    dtype: KvDtype::F32,
                    shape: vec![1, 2, 2, 2],
                },
            ],
            data: vec![fill; 3 * 4 * 2 + 8 * 4],
        }
    }

    #[test]
    fn snapshots_are_read_back_after_reopen_only_into_their_own_layout() {
        let dir = tempfile::tempdir().unwrap();
        let (s, m) = store_with(dir.path(), 2);
        let key = crate::kv::prefix::snapshot_key(ids(2).1);
        assert!(s.enqueue_snapshot(m, key, Arc::new(snapshot(5))));
        assert!(s.flush(Duration::from_secs(5)));
        drop(s);
        let s = store(dir.path());
        wait_scan(&s);
        assert!(s.contains(&key));
        let states = Arc::new(snapshot(0).layout);
        let hashes = [ids(1).1, ids(2).1];
        let (blocks, snap) = s.read_with_snapshot(m, &hashes, layout(), key, states.clone());
        assert_eq!(blocks, vec![block(1), block(2)]);
        assert_eq!(snap, Some(snapshot(5)));
        // Blocks only count as lookups and hits.
        assert_eq!((s.stats().lookups, s.stats().read_hits), (2, 2));

        // A model whose state has another shape (one more layer) never gets it: the file is
        // rejected, deleted and counted.
        let mut other = snapshot(0).layout;
        other.push(other[1].clone());
        other[2].layer = 1;
        let (blocks, snap) = s.read_with_snapshot(m, &hashes, layout(), key, Arc::new(other));
        assert_eq!((blocks.len(), snap), (2, None));
        assert_eq!(s.stats().checksum_failures, 1);
        assert!(!s.contains(&key));
        assert!(!format::kind_path(s.root(), &m, &key, Kind::Snapshot).exists());
    }

    #[test]
    fn damaged_snapshot_files_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (s, m) = store_with(dir.path(), 1);
        let states = Arc::new(snapshot(0).layout);
        for (n, damage) in [
            |b: &mut Vec<u8>| b[70] ^= 1,              // the state layout
            |b: &mut Vec<u8>| b.truncate(b.len() - 9), // the payload
            |b: &mut Vec<u8>| b[8] = 9,                // the format version
        ]
        .into_iter()
        .enumerate()
        {
            let key = crate::kv::prefix::snapshot_key(BlockHash([n as u8 + 40; 16]));
            s.enqueue_snapshot(m, key, Arc::new(snapshot(1)));
            assert!(s.flush(Duration::from_secs(5)));
            let path = format::kind_path(s.root(), &m, &key, Kind::Snapshot);
            let mut bytes = fs::read(&path).unwrap();
            damage(&mut bytes);
            fs::write(&path, &bytes).unwrap();
            let (_, snap) = s.read_with_snapshot(m, &[], layout(), key, states.clone());
            assert!(snap.is_none());
            assert!(!path.exists());
        }
        assert_eq!(s.stats().checksum_failures, 3);
    }

    #[test]
    fn corrupt_truncated_and_foreign_files_are_deleted_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (s, m) = store_with(dir.path(), 3);
        let p = |n| file_path(s.root(), &m, &ids(n).1);
        let mut bytes = fs::read(p(1)).unwrap();
        bytes[HEADER_BYTES + 1] ^= 0xff;
        fs::write(p(1), &bytes).unwrap();
        let bytes = fs::read(p(2)).unwrap();
        fs::write(p(2), &bytes[..bytes.len() / 2]).unwrap();
        let mut bytes = fs::read(p(3)).unwrap();
        bytes[8] = 99; // format version
        fs::write(p(3), &bytes).unwrap();
        for n in 1..=3 {
            assert!(s.read_prefix(m, &[ids(n).1], layout()).is_empty());
            assert!(!p(n).exists());
            assert!(!s.contains(&ids(n).1));
        }
        assert_eq!(s.stats().checksum_failures, 3);
    }

    #[test]
    fn a_bad_block_ends_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (s, m) = store_with(dir.path(), 3);
        fs::write(file_path(s.root(), &m, &ids(2).1), b"junk").unwrap();
        let got = s.read_prefix(m, &[ids(1).1, ids(2).1, ids(3).1], layout());
        assert_eq!(got, vec![block(1)]);
    }

    #[test]
    fn disabled_store_neither_writes_nor_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        wait_scan(&s);
        let (m, h) = ids(1);
        s.enqueue(m, h, Arc::new(block(1)));
        s.flush(Duration::from_secs(5));
        s.set_enabled(false);
        assert!(!s.contains(&h));
        assert!(s.read_prefix(m, &[h], layout()).is_empty());
        assert!(!s.enqueue(m, ids(2).1, Arc::new(block(2))));
        s.set_enabled(true);
        assert_eq!(s.read_prefix(m, &[h], layout()).len(), 1);
    }

    #[test]
    fn cap_evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let one = encode(&ids(0).0, &ids(0).1, &block(0)).len() as u64;
        let mut cfg = SsdConfig::new(dir.path().to_path_buf());
        cfg.max_bytes = Some(one * 3);
        let s = SsdStore::open(cfg);
        wait_scan(&s);
        let m = ids(0).0;
        for n in 1..=3 {
            s.enqueue(m, ids(n).1, Arc::new(block(n)));
            s.flush(Duration::from_secs(5));
        }
        // Reading block 1 makes block 2 the least recently used.
        assert_eq!(s.read_prefix(m, &[ids(1).1], layout()).len(), 1);
        s.enqueue(m, ids(4).1, Arc::new(block(4)));
        s.flush(Duration::from_secs(5));
        assert!(s.contains(&ids(1).1) && s.contains(&ids(4).1));
        assert!(!s.contains(&ids(2).1));
        assert!(s.stats().bytes <= one * 3);
        assert!(s.stats().evictions >= 1);
    }

    #[test]
    fn unwritable_folder_counts_errors() {
        // A regular file where a folder should be: every write fails (root ignores modes).
        let file = tempfile::NamedTempFile::new().unwrap();
        let s = store(&file.path().join("kv"));
        wait_scan(&s);
        let (m, h) = ids(1);
        s.enqueue(m, h, Arc::new(block(1)));
        s.flush(Duration::from_secs(5));
        assert_eq!(s.stats().write_errors, 1);
        assert_eq!(s.stats().writes, 0);
        assert!(s.read_prefix(m, &[h], layout()).is_empty());
    }

    #[test]
    fn lookups_count_hits_and_misses() {
        let dir = tempfile::tempdir().unwrap();
        let (s, m) = store_with(dir.path(), 2);
        let got = s.lookup(m, &[ids(1).1, ids(2).1, ids(3).1], layout());
        assert_eq!(got, vec![block(1), block(2)]);
        let st = s.stats();
        assert_eq!((st.lookups, st.read_hits, st.misses()), (3, 2, 1));
        assert_eq!(st.hit_rate(), Some(2.0 / 3.0));
        // Off: no lookup is counted and nothing is read.
        s.set_enabled(false);
        assert!(s.lookup(m, &[ids(1).1], layout()).is_empty());
        assert_eq!(s.stats().lookups, 3);
    }

    #[test]
    fn a_hanging_read_costs_one_timeout_then_is_skipped() {
        // A FIFO where a block file should be: opening it blocks until a writer shows up,
        // like a read from a stalled disk.
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SsdConfig::new(dir.path().to_path_buf());
        cfg.read_timeout = Duration::from_millis(200);
        let s = SsdStore::open(cfg);
        wait_scan(&s);
        let (m, h) = ids(1);
        s.enqueue(m, h, Arc::new(block(1)));
        s.flush(Duration::from_secs(5));
        let path = file_path(s.root(), &m, &h);
        fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

        let t = Instant::now();
        assert!(s.read_prefix(m, &[h], layout()).is_empty());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // The reader is still stuck: the next lookup does not wait again.
        let t = Instant::now();
        assert!(s.read_prefix(m, &[h], layout()).is_empty());
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(s.stats().read_timeouts, 2);

        // The disk comes back (a writer opens and closes the FIFO): the empty "file" is
        // rejected and the reader serves again.
        drop(File::options().write(true).open(&path).unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.shared.reader_stalled.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the reader never came back");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(s.stats().checksum_failures, 1);
        let (_, h2) = ids(2);
        s.enqueue(m, h2, Arc::new(block(2)));
        s.flush(Duration::from_secs(5));
        assert_eq!(s.read_prefix(m, &[h2], layout()), vec![block(2)]);
    }

    #[test]
    fn the_scan_removes_stray_temp_files_but_not_live_writers_ones() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join(LAYOUT_DIR).join("abcd").join("ab");
        fs::create_dir_all(&sub).unwrap();
        // Ours (a write in progress beside the scan) and a dead process's (a crash).
        let ours = sub.join(format!(".x.kv.{}.tmp", std::process::id()));
        let dead = sub.join(".y.kv.2147483646.tmp");
        fs::write(&ours, b"partial").unwrap();
        fs::write(&dead, b"partial").unwrap();
        let s = store(dir.path());
        wait_scan(&s);
        assert!(ours.exists());
        assert!(!dead.exists());
        assert_eq!(s.stats().files, 0);
    }
}
