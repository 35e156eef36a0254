//! Every KV cache: the live ones of running sequences (`cache`: the per-sequence trait and the
//! dense cache; `slots`: the slot pool the running sequences share), and, in this module,
//! prefix reuse of KV across requests: a RAM block pool keyed by chained block hashes, and an
//! SSD tier behind it.
//!
//! The engine thread owns one [`PrefixCache`] per model. On admission it looks up the longest
//! run of cached full blocks of the prompt (RAM first, then SSD), copies them into the new
//! sequence's dense cache and prefills only the rest. While a sequence runs, each block it
//! fills is published to the pool (and written through to the SSD tier in the background), so
//! that concurrent and later requests with the same prefix reuse it.
//!
//! Hybrid models (linear-attention layers with a recurrent state) also snapshot that state
//! every `snapshot_interval` positions (`snapshot`); a snapshot is kept beside the block that
//! ends there, in RAM (its bytes count against that block in the pool's budget and go when
//! the block is evicted) and on the SSD tier. Each prompt's last block boundary gets a
//! snapshot too (its tail): the next turn of a conversation extends the prompt, so it finds
//! a snapshot less than a block before where it diverges. A hit restores the blocks up to the
//! nearest snapshot at or before the match, and that snapshot.
//!
//! Sliding-window layers (Gemma 3 and 4, gpt-oss) go the same way: a hit needs only the
//! window of KV before where it ends, so the blocks hold the other layers and a snapshot
//! holds the window. Snapshots then come every `WINDOW_SNAPSHOT_SPACING` windows at least,
//! so that they cost at most a quarter of the windowed layers' KV: for Gemma 3 27B (52 of 62
//! layers windowed, window 1,024) a cached position takes ~0.37 of the bytes it took in
//! whole blocks, while a hit that ends between snapshots recomputes up to 4,096 positions
//! more (a conversation's next turn finds its tail snapshot).

pub mod block_pool;
pub mod cache;
pub mod cost;
pub mod paged;
pub mod prefix;
pub mod quant;
pub mod slots;
pub mod snapshot;
pub mod ssd;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use block_pool::{BlockPool, PoolStats};
use paged::{blocks_from_cache, fill_cache_from_blocks, stored_arrays, KvBlock, KvLayout};
use prefix::{chain_hashes, chain_hashes_from, chain_root, snapshot_key, BlockHash, ModelIdentity};
use snapshot::{window_shapes, StateLayout, StateSnapshot};
use ssd::SsdStore;

use mlx_rs::Array;

use crate::kv::cache::{window_start, KvCache};
use crate::metrics;

/// Default positions per block. Measured with SmolLM2-135M on CPU (bench/cache_bench.py and
/// the report in docs/BENCHMARKS.md): 32 keeps the unshared tail of a prompt (on average half
/// a block) negligible against prefill time, while per-block costs (one hash, one file, one
/// copy per layer) stay small for 2,000-token prefixes.
pub const DEFAULT_BLOCK_SIZE: usize = 32;

/// Default positions between snapshots of a hybrid model's recurrent state (a multiple of
/// the block size). It equals the default prefill chunk, so chunks that stop at snapshot
/// boundaries are the chunks prefill takes anyway and a single sequence's prefill runs in the
/// same number of steps with snapshots as without; a hit recomputes at most this many
/// positions more than a plain model would. A snapshot costs one evaluation of the state
/// (already computed) and its memory: for Qwen3-Next-80B 36 linear layers × ~2.1 MB (the
/// float32 delta state dominates) ≈ 76 MB, against ~12 MB of attention KV for the same 512
/// positions, so halving the interval would more than double the prefix cache's memory per
/// token.
pub const DEFAULT_SNAPSHOT_INTERVAL: usize = 512;

/// Sliding-window models: snapshots at least this many windows apart. A snapshot holds a
/// window of the windowed layers' KV, so it costs `1 / WINDOW_SNAPSHOT_SPACING` of what the
/// blocks between two snapshots would hold of those layers.
pub const WINDOW_SNAPSHOT_SPACING: usize = 4;

/// Prefix-cache settings of one model's engine.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// Prefix reuse on or off.
    pub enabled: bool,
    pub block_size: usize,
    /// RAM budget for cached blocks of one model, in bytes.
    pub ram_bytes: usize,
    /// The SSD tier, shared by every model (None: RAM only).
    pub ssd: Option<Arc<SsdStore>>,
    /// The model's path, part of its identity (set by the registry).
    pub model_path: Option<PathBuf>,
    /// How the weights are held (part of the identity: it changes the numbers).
    pub weights_mode: String,
    /// The model's config overrides that change its numbers (a RoPE scaling), as text; part
    /// of the identity. Empty: none.
    pub model_overrides: String,
    /// Positions between snapshots of recurrent state (hybrid models; rounded up to a
    /// multiple of the block size).
    pub snapshot_interval: usize,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            block_size: DEFAULT_BLOCK_SIZE,
            ram_bytes: default_ram_bytes(),
            ssd: None,
            model_path: None,
            weights_mode: String::new(),
            model_overrides: String::new(),
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
        }
    }
}

/// An eighth of physical memory, at most 4 GiB.
pub fn default_ram_bytes() -> usize {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let total = sys.total_memory() as usize;
    (total / 8).clamp(64 << 20, 4 << 30)
}

/// What the HTTP side can ask without the engine thread: how much of a prompt is likely
/// cached (to report `cached_tokens` up front; the engine's admission is authoritative), and
/// the RAM tier's numbers for the admin API.
#[derive(Default)]
pub struct PrefixProbe {
    state: Mutex<Option<ProbeState>>,
    stats: Mutex<Option<PrefixStats>>,
}

/// One model's RAM tier as the admin API shows it (since the model loaded).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PrefixStats {
    pub block_size: usize,
    /// Blocks cached in RAM, and those a running sequence references.
    pub blocks_used: usize,
    pub blocks_referenced: usize,
    /// Blocks that still fit the budget.
    pub blocks_free: usize,
    pub bytes: usize,
    pub budget_bytes: usize,
    pub evictions: u64,
    /// Admissions that looked up a prefix, and those that reused one.
    pub queries: u64,
    pub hits: u64,
    /// Prompt tokens reused, by the tier they came from.
    pub hit_tokens_ram: u64,
    pub hit_tokens_ssd: u64,
}

struct ProbeState {
    identity: ModelIdentity,
    block_size: usize,
    ram: HashSet<BlockHash>,
    ssd: Option<Arc<SsdStore>>,
    /// Hybrid models: positions between snapshots, and the blocks that end at one.
    interval: Option<usize>,
    snapshots: HashSet<BlockHash>,
}

impl std::fmt::Debug for PrefixProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrefixProbe")
    }
}

impl PrefixProbe {
    /// The RAM tier's numbers (`None`: this model has no prefix cache).
    pub fn stats(&self) -> Option<PrefixStats> {
        *self.stats.lock().unwrap()
    }

    /// Whether this model's prefix cache restores only where it took a snapshot (hybrid and
    /// windowed models): it then also takes one where a chat's head ends.
    pub fn restores_at_snapshots(&self) -> bool {
        let guard = self.state.lock().unwrap();
        guard.as_ref().is_some_and(|s| s.interval.is_some())
    }

    /// Prompt tokens a request would most likely take from the cache.
    pub fn estimate_cached_tokens(&self, prompt: &[u32]) -> usize {
        let (identity, block_size, ssd, interval) = {
            let guard = self.state.lock().unwrap();
            let Some(s) = guard.as_ref() else {
                return 0;
            };
            (s.identity, s.block_size, s.ssd.clone(), s.interval)
        };
        let hashes = prompt_hashes(&identity, prompt, block_size);
        let ram = {
            let guard = self.state.lock().unwrap();
            let s = guard.as_ref().expect("set above");
            let run = hashes.iter().take_while(|h| s.ram.contains(h)).count();
            if interval.is_some() {
                // Blocks from RAM then disk, up to a snapshot in either.
                let disk = ssd.as_ref();
                let run = run + disk.map_or(0, |d| d.longest_prefix(&hashes[run..]));
                return restorable(run, |j| {
                    let h = hashes[j - 1];
                    s.snapshots.contains(&h) || disk.is_some_and(|d| d.contains(&snapshot_key(h)))
                }) * block_size;
            }
            run
        };
        let on_disk = ssd.map_or(0, |s| s.longest_prefix(&hashes[ram..]));
        (ram + on_disk) * block_size
    }

    fn with<F: FnOnce(&mut ProbeState)>(&self, f: F) {
        if let Some(s) = self.state.lock().unwrap().as_mut() {
            f(s);
        }
    }
}

/// The first position a windowed layer's snapshot at `at` holds: what a query at `at` sees
/// before itself.
fn window_from(at: usize, window: usize) -> usize {
    window_start(at as i32, window as i32) as usize
}

/// One snapshot of what a sequence's cache held at a boundary, in layer order (the linear
/// layers' states copied to host bytes now, the windows as they were copied then).
fn snapshot_of(states: LayerStates) -> Result<StateSnapshot, snapshot::SnapshotError> {
    let mut snap = StateSnapshot::default();
    for (layer, noted) in states {
        match noted {
            Noted::Window(window) => snap.append(window),
            Noted::State(arrays) => {
                for a in &arrays {
                    snap.push(layer, a)?;
                }
            }
        }
    }
    Ok(snap)
}

/// The hashes of the blocks of `prompt` a cache hit may cover: its full blocks, leaving at
/// least one token to compute (the first sample needs its logits).
fn prompt_hashes(identity: &ModelIdentity, prompt: &[u32], block_size: usize) -> Vec<BlockHash> {
    let usable = prompt.len().saturating_sub(1) / block_size;
    chain_hashes(identity, &prompt[..usable * block_size], block_size)
}

/// The longest `j <= run` blocks that end at a snapshot (`has(j)`: block `j - 1` has one):
/// at a multiple of the interval, or at the end of a prompt (its tail snapshot).
fn restorable(run: usize, has: impl Fn(usize) -> bool) -> usize {
    (1..=run).rev().find(|&j| has(j)).unwrap_or(0)
}

/// What a sequence's cache held at a snapshot boundary, by layer index.
type LayerStates = Vec<(usize, Noted)>;

/// One layer's part of a snapshot when noted.
enum Noted {
    /// A linear layer's recurrent state: the step's own (lazy) outputs.
    State(Vec<Array>),
    /// A windowed layer's window, copied out at once: a view would keep the cache's buffer
    /// alive, and MLX would then copy the whole buffer at the next write instead of updating
    /// it in place.
    Window(StateSnapshot),
}

impl std::fmt::Debug for Noted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Noted::State(_) => "State",
            Noted::Window(_) => "Window",
        })
    }
}

/// The blocks of one running sequence.
#[derive(Debug, Default)]
pub struct SeqBlocks {
    /// Hashes of the sequence's full blocks so far, in order.
    chain: Vec<BlockHash>,
    /// Blocks it references in the pool (released when it ends).
    held: Vec<BlockHash>,
    /// Hybrid models: the recurrent state each time the sequence stood at a snapshot boundary
    /// (that position, each linear layer's state), stored once its blocks are published.
    pending: Vec<(usize, LayerStates)>,
    /// Hybrid and windowed models: the prompt's last block boundary (its tail snapshot goes
    /// there).
    tail: usize,
    /// Hybrid and windowed models: the last block boundary within the prompt's head (its chat's system
    /// prompt and tools; 0: none), where conversations sharing it part ways: a snapshot goes
    /// there too.
    head: usize,
    /// The tail snapshot of an earlier prompt this sequence's hit restored (not one at a
    /// multiple of the interval): once this prompt's own tail snapshot is stored past it, it
    /// is dropped from RAM (`publish`).
    restored_tail: Option<BlockHash>,
    /// Hybrid and windowed models: the last block boundary the sequence's reply crossed and
    /// its linear layers' states there; the sequence's end snapshot goes there (`finish`).
    reply: Option<(usize, LayerStates)>,
}

impl SeqBlocks {
    /// Positions of the sequence's blocks published so far (or restored from the cache).
    pub fn published(&self, block_size: usize) -> usize {
        self.chain.len() * block_size
    }
}

/// One model's prefix cache, owned by its engine thread.
pub struct PrefixCache {
    model: String,
    identity: ModelIdentity,
    layout: KvLayout,
    pool: BlockPool<KvBlock>,
    ssd: Option<Arc<SsdStore>>,
    probe: Arc<PrefixProbe>,
    failed_logged: bool,
    /// Hybrid and windowed models: positions between snapshots (a multiple of the block size).
    interval: Option<usize>,
    /// The model's recurrent-state layout (empty for plain models): with the windows of
    /// `windows`, what a snapshot must hold to be restored (`snapshot_layout`).
    states: StateLayout,
    /// The windowed layers and their windows, in layer order.
    windows: Vec<(usize, usize)>,
    /// Snapshots in RAM by the hash of the block they end; their bytes are counted on that
    /// block in the pool, and they go when it is evicted.
    snapshots: HashMap<BlockHash, Arc<StateSnapshot>>,
    /// A sequence's tail snapshot and its end snapshot, each by the other: the next turn of
    /// the conversation restores one of them, and once its own tail snapshot is stored both
    /// are superseded (`drop_superseded`).
    partners: HashMap<BlockHash, BlockHash>,
    snapshot_warned: bool,
    /// Lookup counters (the pool keeps its own).
    queries: u64,
    hits: u64,
    hit_tokens_ram: u64,
    hit_tokens_ssd: u64,
}

impl PrefixCache {
    /// `windows`: each cache layer's sliding window (`None`: full attention), for the layers
    /// `layout` marks windowed (`KvLayout::with_windows`), whose KV goes into snapshots.
    pub fn new(
        model: String,
        identity: ModelIdentity,
        layout: KvLayout,
        states: StateLayout,
        windows: &[Option<i32>],
        config: &KvConfig,
        probe: Arc<PrefixProbe>,
    ) -> Self {
        let b = layout.block_size;
        let windows: Vec<(usize, usize)> = windows
            .iter()
            .enumerate()
            .filter(|&(l, _)| layout.is_windowed(l))
            .filter_map(|(l, w)| Some((l, (*w)?.max(1) as usize)))
            .collect();
        let widest = windows.iter().map(|&(_, w)| w).max().unwrap_or(0);
        let spacing = (config.snapshot_interval.max(1)).max(WINDOW_SNAPSHOT_SPACING * widest);
        let interval = (layout.linear != 0 || !windows.is_empty()).then(|| spacing.div_ceil(b) * b);
        let ssd = config.ssd.clone();
        *probe.state.lock().unwrap() = Some(ProbeState {
            identity,
            block_size: layout.block_size,
            ram: HashSet::new(),
            ssd: ssd.clone(),
            interval,
            snapshots: HashSet::new(),
        });
        tracing::info!(
            model = %model,
            identity = &identity.to_hex()[..16],
            block_size = layout.block_size,
            block_bytes = layout.block_bytes(),
            ram_budget = config.ram_bytes,
            ssd = ssd.as_ref().map(|s| s.root().display().to_string()),
            snapshot_interval = interval,
            "prefix cache ready"
        );
        let cache = Self {
            model,
            identity,
            layout,
            // One budget: snapshots count against the block they end.
            pool: BlockPool::new(config.ram_bytes),
            ssd,
            probe,
            failed_logged: false,
            interval,
            states,
            windows,
            snapshots: HashMap::new(),
            partners: HashMap::new(),
            snapshot_warned: false,
            queries: 0,
            hits: 0,
            hit_tokens_ram: 0,
            hit_tokens_ssd: 0,
        };
        // The admin API shows the tier from the start, not from the first request.
        cache.publish_metrics();
        cache
    }

    pub fn block_size(&self) -> usize {
        self.layout.block_size
    }

    /// Positions a sequence's windowed layers must keep beyond their window: a block, so
    /// that when it ends the window before the last block boundary it crossed is still there
    /// to be snapshotted (`finish`). 0 for models without windowed layers.
    pub fn window_slack(&self) -> usize {
        match self.windows.is_empty() {
            true => 0,
            false => self.layout.block_size,
        }
    }

    /// What a snapshot at position `at` holds: each linear layer's state and each windowed
    /// layer's KV for the positions its window reaches back from `at`, in layer order.
    fn snapshot_layout(&self, at: usize) -> StateLayout {
        let mut all = self.states.clone();
        for &(layer, window) in &self.windows {
            all.extend(window_shapes(
                &self.layout,
                layer,
                at - window_from(at, window),
            ));
        }
        // Stable: a layer's arrays keep their order.
        all.sort_by_key(|s| s.layer);
        all
    }

    pub fn stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Prompt tokens the RAM tier alone would give `prompt` now (a hybrid or windowed model's:
    /// up to a snapshot in RAM), taking nothing. The scheduler asks when another sequence may
    /// have published blocks since this one was placed: the disk it already read (or found
    /// stalled) is not worth a second try.
    pub fn ram_hit(&self, prompt: &[u32]) -> usize {
        let hashes = prompt_hashes(&self.identity, prompt, self.layout.block_size);
        let run = self.pool.longest_prefix(&hashes);
        let j = match self.interval {
            Some(_) => restorable(run, |j| self.snapshots.contains_key(&hashes[j - 1])),
            None => run,
        };
        j * self.layout.block_size
    }

    /// Fills `cache` (empty) with the longest cached prefix of `prompt` and returns how many
    /// tokens it holds. At least one prompt token is always left to compute: the first
    /// sampled token needs its logits. `head`: the tokens of the prompt's head (0: unknown).
    pub fn admit(
        &mut self,
        prompt: &[u32],
        head: usize,
        cache: &mut dyn KvCache,
        blocks: &mut SeqBlocks,
    ) -> usize {
        let b = self.layout.block_size;
        let hashes = prompt_hashes(&self.identity, prompt, b);
        blocks.tail = hashes.len() * b;
        blocks.head = (head / b * b).min(blocks.tail);
        let (mut found, mut from_ssd, snapshot) = match self.interval {
            Some(_) => self.find_hybrid(&hashes, blocks),
            None => {
                let (found, from_ssd) = self.find_plain(&hashes, blocks);
                (found, from_ssd, None)
            }
        };
        // A tail (or end) snapshot, not one at the interval or at this prompt's head (which
        // the conversations sharing that head restore from).
        let j = found.len();
        blocks.restored_tail = self.supersedable(j * b, blocks.head).then(|| hashes[j - 1]);
        let mut filled = fill_cache_from_blocks(cache, &found).map_err(|e| e.to_string());
        if let (Ok(()), Some(snap)) = (&filled, &snapshot) {
            let expected = self.snapshot_layout(found.len() * b);
            filled = snap
                .restore(&expected, &self.layout, cache)
                .map_err(|e| e.to_string());
        }
        if let Err(e) = filled {
            // Never fatal: compute the whole prompt instead.
            tracing::warn!(model = %self.model, error = %e, "prefix cache fill failed; recomputing");
            cache.reset();
            self.release(blocks);
            found.clear();
            // Nothing was reused (the metrics subtract the SSD part from the total).
            from_ssd = 0;
        }
        blocks.chain = hashes[..found.len()].to_vec();
        let cached = found.len() * b;
        let from_ram = found.len() - from_ssd;
        metrics::record_prefix_lookup(&self.model, cached, from_ssd * b);
        self.queries += 1;
        self.hits += u64::from(cached > 0);
        self.hit_tokens_ram += (from_ram * b) as u64;
        self.hit_tokens_ssd += (from_ssd * b) as u64;
        if cached > 0 {
            tracing::debug!(model = %self.model, cached, from_ram = from_ram * b, from_ssd = from_ssd * b, "prefix cache hit");
        }
        cached
    }

    /// Takes a reference on each of `hashes` (cached in the pool) for the sequence.
    fn acquire_run(&mut self, hashes: &[BlockHash], blocks: &mut SeqBlocks) -> Vec<Arc<KvBlock>> {
        let mut found = Vec::with_capacity(hashes.len());
        for h in hashes {
            found.push(self.pool.acquire(h).expect("present"));
            blocks.held.push(*h);
        }
        found
    }

    /// Keeps blocks read from disk in the pool (the sequence references them) and returns
    /// them in order, those that did not fit included.
    fn keep_read(
        &mut self,
        hashes: &[BlockHash],
        read: Vec<KvBlock>,
        blocks: &mut SeqBlocks,
    ) -> Vec<Arc<KvBlock>> {
        let mut out = Vec::with_capacity(read.len());
        let mut evicted = Vec::new();
        for (h, block) in hashes.iter().zip(read) {
            match self
                .pool
                .insert(*h, block, self.layout.block_bytes(), &mut evicted)
            {
                Ok(arc) => {
                    blocks.held.push(*h);
                    self.probe.with(|s| {
                        s.ram.insert(*h);
                    });
                    out.push(arc);
                }
                // No room in RAM: this sequence still uses it.
                Err((_, block)) => out.push(Arc::new(block)),
            }
        }
        self.forget(&evicted);
        out
    }

    /// A plain model's hit: the longest run of blocks from RAM, then from disk.
    fn find_plain(
        &mut self,
        hashes: &[BlockHash],
        blocks: &mut SeqBlocks,
    ) -> (Vec<Arc<KvBlock>>, usize) {
        let run = self.pool.longest_prefix(hashes);
        let mut found = self.acquire_run(&hashes[..run], blocks);
        if let Some(ssd) = self.ssd.clone() {
            let rest = &hashes[run..];
            let read = ssd.lookup(self.identity, rest, self.layout);
            found.extend(self.keep_read(rest, read, blocks));
        }
        let from_ssd = found.len() - run;
        (found, from_ssd)
    }

    /// A hybrid model's hit: the blocks up to the nearest snapshot at or before the longest
    /// run (blocks from RAM then disk, the snapshot from either), and that snapshot. When
    /// disk does not deliver (a bad file, a timeout), the nearest snapshot in RAM within what
    /// was read.
    fn find_hybrid(
        &mut self,
        hashes: &[BlockHash],
        blocks: &mut SeqBlocks,
    ) -> (Vec<Arc<KvBlock>>, usize, Option<Arc<StateSnapshot>>) {
        let ram_run = self.pool.longest_prefix(hashes);
        let ssd = self.ssd.clone();
        let disk_run = ssd
            .as_ref()
            .map_or(0, |d| d.longest_prefix(&hashes[ram_run..]));
        let on_disk = |j: usize| {
            ssd.as_ref()
                .is_some_and(|d| d.contains(&snapshot_key(hashes[j - 1])))
        };
        let j = restorable(ram_run + disk_run, |j| {
            self.snapshots.contains_key(&hashes[j - 1]) || on_disk(j)
        });
        if j == 0 {
            return (Vec::new(), 0, None);
        }
        let k = j.min(ram_run);
        let in_ram = self.snapshots.get(&hashes[j - 1]).cloned();
        if k == j {
            if let Some(snap) = in_ram {
                return (self.acquire_run(&hashes[..j], blocks), 0, Some(snap));
            }
        }
        let ssd = ssd.expect("a block or snapshot is on disk");
        let held_before = blocks.held.len();
        let mut found = self.acquire_run(&hashes[..k], blocks);
        let (read, snapshot) = match in_ram {
            Some(snap) => (
                ssd.lookup(self.identity, &hashes[k..j], self.layout),
                Some(snap),
            ),
            None => {
                let (read, snap) = ssd.read_with_snapshot(
                    self.identity,
                    &hashes[k..j],
                    self.layout,
                    snapshot_key(hashes[j - 1]),
                    Arc::new(self.snapshot_layout(j * self.layout.block_size)),
                );
                (read, snap.map(Arc::new))
            }
        };
        found.extend(self.keep_read(&hashes[k..], read, blocks));
        if let (true, Some(snap)) = (found.len() == j, snapshot) {
            self.keep_snapshot(hashes[j - 1], snap.clone());
            return (found, j - k, Some(snap));
        }
        // Short: the nearest snapshot in RAM within what is here; the rest is let go.
        let j = restorable(found.len(), |j| self.snapshots.contains_key(&hashes[j - 1]));
        found.truncate(j);
        let keep: HashSet<BlockHash> = hashes[..j].iter().copied().collect();
        let held: Vec<BlockHash> = blocks.held.drain(held_before..).collect();
        for h in held {
            if keep.contains(&h) {
                blocks.held.push(h);
            } else {
                self.pool.release(&h);
            }
        }
        let snap = (j > 0).then(|| self.snapshots[&hashes[j - 1]].clone());
        (found, j.saturating_sub(k), snap)
    }

    /// Keeps `snap` in RAM beside the cached block `h` (counted on it), when there is room.
    fn keep_snapshot(&mut self, h: BlockHash, snap: Arc<StateSnapshot>) {
        if self.snapshots.contains_key(&h) {
            return;
        }
        let mut evicted = Vec::new();
        if self.pool.attach(&h, snap.nbytes(), &mut evicted) {
            self.snapshots.insert(h, snap);
            self.probe.with(|p| {
                p.snapshots.insert(h);
            });
        }
        self.forget(&evicted);
    }

    /// Whether a snapshot at `at` is one a conversation's next turn supersedes (a prompt's
    /// tail or a sequence's end): not one at the interval, nor at the prompt's `head`.
    fn supersedable(&self, at: usize, head: usize) -> bool {
        self.interval
            .is_some_and(|iv| at > 0 && !at.is_multiple_of(iv) && at != head)
    }

    /// Drops from RAM the tail snapshot `h` of an earlier turn that a later turn of the same
    /// conversation extended (its own tail snapshot is stored). Each turn would otherwise
    /// keep one more snapshot (for Gemma 3 27B a window of 52 layers' KV, ~430 MB; for
    /// Qwen3-Next ~76 MB) for as long as the conversation's blocks stay in use, that only a
    /// prompt diverging between the two tails could use; such a prompt restores from the
    /// interval's snapshot instead. The SSD tier's copy goes too, and so does the other
    /// snapshot of the same turn (its tail's or its end's, `partners`).
    fn drop_superseded(&mut self, h: BlockHash) {
        let partner = self.partners.remove(&h);
        for h in std::iter::once(h).chain(partner) {
            self.partners.remove(&h);
            if let Some(snap) = self.snapshots.remove(&h) {
                self.pool.detach(&h, snap.nbytes());
                self.probe.with(|p| {
                    p.snapshots.remove(&h);
                });
            }
            if let Some(ssd) = &self.ssd {
                ssd.remove(self.identity, snapshot_key(h));
            }
        }
    }

    /// Publishes the full blocks of `tokens` that `cache` now holds and this sequence has not
    /// published yet. The sequence keeps a reference on each.
    pub fn publish(&mut self, tokens: &[u32], cache: &dyn KvCache, blocks: &mut SeqBlocks) {
        let b = self.layout.block_size;
        let full = cache.offset().min(tokens.len()) / b;
        let have = blocks.chain.len();
        if full <= have {
            return;
        }
        self.publish_blocks(tokens, cache, blocks, full, have);
        // The state noted at a snapshot boundary, now that the blocks up to it have hashes.
        while let Some((at, _)) = blocks.pending.first() {
            if blocks.chain.len() < at / b {
                break;
            }
            let (at, states) = blocks.pending.remove(0);
            let h = blocks.chain[at / b - 1];
            if !self.snapshots.contains_key(&h) {
                self.store_snapshot(h, at, states);
            }
            if at == blocks.tail && self.snapshots.contains_key(&h) {
                if let Some(old) = blocks.restored_tail.take() {
                    self.drop_superseded(old);
                    self.drop_superseded_before(old, blocks);
                }
            }
        }
    }

    /// A sequence that restored an earlier turn's tail or end snapshot `restored` and has
    /// stored its own tail: the tail and end snapshots of that conversation's earlier turns
    /// lie on its chain before `restored`. `partners` knows the other one of the restored
    /// turn, but not after a restart (it lives in RAM), and a daemon killed before a turn's
    /// snapshots were superseded left them on disk: every supersedable snapshot there (neither
    /// at the interval nor at the prompt's head), in RAM or on disk, goes too.
    fn drop_superseded_before(&mut self, restored: BlockHash, blocks: &SeqBlocks) {
        let b = self.layout.block_size;
        let Some(end) = blocks.chain.iter().position(|h| *h == restored) else {
            return;
        };
        for j in 1..=end {
            if !self.supersedable(j * b, blocks.head) {
                continue;
            }
            let h = blocks.chain[j - 1];
            let stored = self.snapshots.contains_key(&h)
                || self
                    .ssd
                    .as_ref()
                    .is_some_and(|d| d.contains(&snapshot_key(h)));
            if stored {
                self.drop_superseded(h);
            }
        }
    }

    /// Hybrid models: the most positions the next prefill chunk of a sequence standing at
    /// `prefilled` may take, so that it stops at the next snapshot boundary: a multiple of
    /// the interval, the prompt's last block boundary, or its head's. That tail snapshot lets
    /// the next turn of a conversation, whose prompt extends this one, recompute only what is
    /// new (plus less than a block) instead of up to an interval; the head's lets another
    /// conversation with the same system prompt and tools start after them.
    pub fn prefill_limit(&self, prefilled: usize, blocks: &SeqBlocks) -> usize {
        let Some(iv) = self.interval else {
            return usize::MAX;
        };
        let next = iv - prefilled % iv;
        [blocks.head, blocks.tail]
            .into_iter()
            .filter(|&mark| mark > prefilled)
            .fold(next, |next, mark| next.min(mark - prefilled))
    }

    /// Called right after a step was queued for the sequence: when it then stands at a
    /// snapshot boundary, its recurrent state (the step's lazy outputs) and its windowed
    /// layers' windows (copied out now) are noted, to be stored when `publish` has the block
    /// hashes up to there.
    pub fn note_state(&self, cache: &mut dyn KvCache, blocks: &mut SeqBlocks) {
        let Some(iv) = self.interval else {
            return;
        };
        let at = cache.offset();
        let b = self.layout.block_size;
        let boundary = at.is_multiple_of(iv) || at == blocks.tail || at == blocks.head;
        if at == 0 || blocks.chain.len() * b >= at {
            return;
        }
        if !boundary {
            // Past the prompt: the reply's block boundaries, the last of which gets the end
            // snapshot. The linear layers' states are kept as they are (arrays, not copies);
            // the windows are copied only at the end, from the slack their layers keep.
            if at > blocks.tail && at.is_multiple_of(b) {
                if let Some(states) = self.linear_states(cache) {
                    blocks.reply = Some((at, states));
                }
            }
            return;
        }
        // A snapshot at the interval past the reply's earlier boundaries serves instead.
        if at > blocks.tail {
            blocks.reply = None;
        }
        let Some(states) = self.linear_states(cache) else {
            return;
        };
        match self.with_windows(cache, at, states) {
            Ok(states) => blocks.pending.push((at, states)),
            Err(e) => {
                tracing::warn!(model = %self.model, error = %e, "cannot copy a window of KV; not snapshotted")
            }
        }
    }

    /// The linear layers' recurrent states as `cache` holds them now (`None`: a layer has
    /// none). MLX arrays are immutable values: the cache replaces its state each step, so
    /// holding these is a copy of the state at this position.
    fn linear_states(&self, cache: &mut dyn KvCache) -> Option<LayerStates> {
        (0..self.layout.layers)
            .filter(|&l| self.layout.is_linear(l))
            .map(|l| Some((l, Noted::State(cache.state(l).as_ref()?.clone()))))
            .collect()
    }

    /// `states` and each windowed layer's window before `at`, copied out of `cache` now, in
    /// layer order (as a snapshot holds them).
    fn with_windows(
        &self,
        cache: &dyn KvCache,
        at: usize,
        mut states: LayerStates,
    ) -> Result<LayerStates, snapshot::SnapshotError> {
        for &(layer, window) in &self.windows {
            states.push((
                layer,
                Noted::Window(self.copy_window(cache, layer, at, window)?),
            ));
        }
        states.sort_by_key(|&(layer, _)| layer);
        Ok(states)
    }

    /// When a sequence ends (its reply complete): its last blocks are published and a
    /// snapshot goes at the last block boundary its reply crossed, so that the conversation's
    /// next turn, whose prompt holds this reply, restores after it instead of at this
    /// prompt's tail and recomputes only what is new. Plain models need nothing: their reply's
    /// blocks are published as it is generated.
    pub fn finish(&mut self, tokens: &[u32], cache: &dyn KvCache, blocks: &mut SeqBlocks) {
        // Blocks a step still in flight completes (its token is known).
        self.publish(tokens, cache, blocks);
        let b = self.layout.block_size;
        let Some((at, states)) = blocks.reply.take() else {
            return;
        };
        if blocks.chain.len() * b < at {
            return;
        }
        let h = blocks.chain[at / b - 1];
        if self.snapshots.contains_key(&h) {
            return;
        }
        let states = match self.with_windows(cache, at, states) {
            Ok(states) => states,
            Err(e) => {
                tracing::debug!(model = %self.model, error = %e, "the reply's window is gone; no end snapshot");
                return;
            }
        };
        self.store_snapshot(h, at, states);
        // This prompt's tail snapshot: the next turn needs one of the two, and neither once
        // it has stored its own tail.
        let tail = blocks.tail;
        if self.supersedable(tail, blocks.head) && self.snapshots.contains_key(&h) {
            let t = blocks.chain[tail / b - 1];
            if self.snapshots.contains_key(&t) {
                self.partners.insert(h, t);
                self.partners.insert(t, h);
            }
        }
    }

    /// Windowed `layer`'s KV that queries from `at` on can see, as host bytes.
    fn copy_window(
        &self,
        cache: &dyn KvCache,
        layer: usize,
        at: usize,
        window: usize,
    ) -> Result<StateSnapshot, snapshot::SnapshotError> {
        let from = window_from(at, window) as i32;
        let mut out = StateSnapshot::default();
        for a in stored_arrays(cache, &self.layout, layer, from, at as i32)? {
            out.push(layer, &a)?;
        }
        Ok(out)
    }

    fn store_snapshot(&mut self, h: BlockHash, at: usize, states: LayerStates) {
        let started = std::time::Instant::now();
        let want = self.snapshot_layout(at);
        let snap = match snapshot_of(states) {
            Ok(s) if s.layout == want => Arc::new(s),
            Ok(s) => {
                if !self.snapshot_warned {
                    self.snapshot_warned = true;
                    tracing::warn!(model = %self.model, got = ?s.layout, want = ?want, "recurrent state not shaped as the model's; not snapshotted");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(model = %self.model, error = %e, "cannot snapshot recurrent state");
                return;
            }
        };
        let bytes = snap.nbytes();
        self.keep_snapshot(h, snap.clone());
        // Queued after the blocks it ends (published just before), so written after them.
        if let Some(ssd) = &self.ssd {
            ssd.enqueue_snapshot(self.identity, snapshot_key(h), snap);
        }
        tracing::debug!(model = %self.model, bytes, micros = started.elapsed().as_micros() as u64, "recurrent state snapshot");
    }

    fn publish_blocks(
        &mut self,
        tokens: &[u32],
        cache: &dyn KvCache,
        blocks: &mut SeqBlocks,
        full: usize,
        have: usize,
    ) {
        let b = self.layout.block_size;
        let parent = blocks
            .chain
            .last()
            .copied()
            .unwrap_or_else(|| chain_root(&self.identity));
        let new = chain_hashes_from(parent, &tokens[have * b..full * b], b);
        // Copy out of the dense cache only when the pool lacks one of the blocks (another
        // sequence may have published the same prefix already).
        let mut copies: Option<Vec<Option<KvBlock>>> = None;
        if new.iter().any(|h| !self.pool.contains(h)) {
            match blocks_from_cache(cache, &self.layout, have, full - have) {
                Ok(c) => copies = Some(c.into_iter().map(Some).collect()),
                Err(e) => {
                    if !self.failed_logged {
                        self.failed_logged = true;
                        tracing::warn!(model = %self.model, error = %e, "cannot copy KV blocks out of a sequence; they are not cached");
                    }
                    return;
                }
            }
        }
        let mut evicted = Vec::new();
        for (i, h) in new.iter().enumerate() {
            blocks.chain.push(*h);
            let shared = match self.pool.acquire(h) {
                Some(a) => Ok(a),
                None => {
                    let block = copies
                        .as_mut()
                        .and_then(|c| c[i].take())
                        .expect("copied when a block is missing from the pool");
                    self.pool
                        .insert(*h, block, self.layout.block_bytes(), &mut evicted)
                }
            };
            let arc = match shared {
                Ok(a) => {
                    blocks.held.push(*h);
                    self.probe.with(|s| {
                        s.ram.insert(*h);
                    });
                    a
                }
                // No room in RAM (every block in use): it may still go to disk.
                Err((_, block)) => Arc::new(block),
            };
            if let Some(ssd) = &self.ssd {
                ssd.enqueue(self.identity, *h, arc);
            }
        }
        self.forget(&evicted);
    }

    /// Drops the sequence's references (when it finishes, is cancelled or fails).
    pub fn release(&mut self, blocks: &mut SeqBlocks) {
        for h in blocks.held.drain(..) {
            self.pool.release(&h);
        }
        blocks.pending.clear();
        blocks.reply = None;
    }

    /// Blocks the pool evicted: gone from the probe, and their snapshots with them.
    fn forget(&mut self, evicted: &[BlockHash]) {
        if evicted.is_empty() {
            return;
        }
        for h in evicted {
            self.snapshots.remove(h);
            if let Some(p) = self.partners.remove(h) {
                self.partners.remove(&p);
            }
        }
        self.probe.with(|s| {
            for h in evicted {
                s.ram.remove(h);
                s.snapshots.remove(h);
            }
        });
    }

    /// Publishes gauges for `/metrics` and the admin API.
    pub fn publish_metrics(&self) {
        let mut pool = self.pool.stats();
        // The pool learns the block size from its first block; the layout knows it already.
        pool.free_blocks =
            pool.budget_bytes.saturating_sub(pool.bytes) / self.layout.block_bytes().max(1);
        pool.publish(&self.model);
        if let Some(ssd) = &self.ssd {
            ssd.stats().publish();
        }
        *self.probe.stats.lock().unwrap() = Some(PrefixStats {
            block_size: self.layout.block_size,
            blocks_used: pool.blocks,
            blocks_referenced: pool.referenced_blocks,
            blocks_free: pool.free_blocks,
            bytes: pool.bytes,
            budget_bytes: pool.budget_bytes,
            evictions: pool.evictions,
            queries: self.queries,
            hits: self.hits,
            hit_tokens_ram: self.hit_tokens_ram,
            hit_tokens_ssd: self.hit_tokens_ssd,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::cache::DenseKvCache;
    use crate::kv::quant::{KvQuant, Packed, QuantizedKvCache};
    use crate::kv::slots::SharedSlots;
    use mlx_rs::Dtype;

    const WINDOW: i32 = 6;
    const DIM: i32 = 32;

    /// Layer `layer`'s keys for positions `start..start + n` (values are their negation):
    /// `[1, 2, n, DIM]`, each position's numbers its own.
    fn keys(layer: usize, start: i32, n: i32) -> Array {
        let v: Vec<f32> = (start..start + n)
            .flat_map(|p| {
                (0..2 * DIM).map(move |i| ((p * 7 + i + 5 * layer as i32) % 17) as f32 / 4.0 - 2.0)
            })
            .collect();
        let a = Array::from_slice(&v, &[n, 2, DIM]);
        a.transpose_axes(&[1, 0, 2])
            .unwrap()
            .reshape(&[1, 2, n, DIM])
            .unwrap()
    }

    fn floats(a: &Array) -> Vec<f32> {
        let a = a.as_dtype(Dtype::Float32).unwrap();
        a.contiguous().unwrap().as_slice::<f32>().to_vec()
    }

    /// What a cache in `quant`'s format gives back for `keys`.
    fn stored(keys: &Array, quant: Option<KvQuant>) -> Vec<f32> {
        match quant {
            None => floats(keys),
            Some(q) => floats(&Packed::quantize(keys, q).unwrap().dequantize(q).unwrap()),
        }
    }

    /// Prefills `tokens` into `cache` after the hit the prefix cache gives (it must be `hit`),
    /// in chunks of 5 stopping at snapshot boundaries, as the scheduler does: layer 0 attends
    /// to everything, layer 1 through a window.
    fn prefill(
        prefix: &mut PrefixCache,
        cache: &mut dyn KvCache,
        (tokens, head): (&[u32], usize),
        hit: usize,
    ) -> SeqBlocks {
        let mut blocks = SeqBlocks::default();
        assert_eq!(prefix.admit(tokens, head, cache, &mut blocks), hit);
        while cache.offset() < tokens.len() {
            let at = cache.offset();
            let n = (tokens.len() - at)
                .min(5)
                .min(prefix.prefill_limit(at, &blocks)) as i32;
            let (k0, k1) = (keys(0, at as i32, n), keys(1, at as i32, n));
            cache
                .update_and_fetch(0, k0.clone(), k0.negative().unwrap())
                .unwrap();
            let v1 = k1.negative().unwrap();
            cache.update_and_fetch_window(1, k1, v1, WINDOW).unwrap();
            cache.advance(n as usize);
            prefix.note_state(cache, &mut blocks);
            prefix.publish(tokens, cache, &mut blocks);
        }
        blocks
    }

    /// A windowed layer's KV stays out of the blocks: a hit restores the other layers from
    /// blocks and the window before the snapshot it ends at from that snapshot, into every
    /// kind of cache (its own, a slot pool's; float and quantized), and then holds exactly
    /// what a cold run held there.
    #[test]
    fn windowed_layers_come_back_from_snapshots_not_blocks() {
        let q = KvQuant::new(8, 32).unwrap();
        for quant in [None, Some(q)] {
            let fresh = |slot: bool| -> Box<dyn KvCache> {
                match (slot, quant) {
                    (true, _) => Box::new(SharedSlots::new(2).quantized(quant).acquire()),
                    (false, None) => Box::new(DenseKvCache::new(2)),
                    (false, Some(q)) => Box::new(QuantizedKvCache::new(2, q)),
                }
            };
            let mut source = fresh(false);
            let mut probe = fresh(false);
            prefill_probe(probe.as_mut());
            let mut prefix = windowed_prefix_cache(probe.as_ref());
            assert_eq!(prefix.interval, Some(24));
            let tokens: Vec<u32> = (0..41).collect();
            let mut blocks = prefill(&mut prefix, source.as_mut(), (&tokens, 0), 0);
            prefix.release(&mut blocks);

            // The same prompt: its tail snapshot (40); a prompt that leaves it at 30: the
            // interval's (24).
            let mut other = tokens[..30].to_vec();
            other.extend([900, 901, 902]);
            for (prompt, hit) in [(&tokens, 40), (&other, 24)] {
                for slot in [false, true] {
                    let mut target = fresh(slot);
                    let mut blocks = SeqBlocks::default();
                    assert_eq!(prefix.admit(prompt, 0, target.as_mut(), &mut blocks), hit);
                    assert_eq!(target.offset(), hit);
                    let (k, v) = target.range(0, 0, hit as i32).unwrap().unwrap();
                    assert_eq!(floats(&k), stored(&keys(0, 0, hit as i32), quant));
                    assert_eq!(
                        floats(&v),
                        stored(&keys(0, 0, hit as i32).negative().unwrap(), quant)
                    );
                    let from = hit as i32 + 1 - WINDOW;
                    let (k, v) = target.range(1, from, hit as i32).unwrap().unwrap();
                    let want = keys(1, from, WINDOW - 1);
                    assert_eq!(floats(&k), stored(&want, quant), "{quant:?} slot {slot}");
                    assert_eq!(floats(&v), stored(&want.negative().unwrap(), quant));
                    // Attention from there on sees the window the cold run saw.
                    let (k, _) = target
                        .update_and_fetch_window(
                            1,
                            keys(1, hit as i32, 1),
                            keys(1, hit as i32, 1),
                            WINDOW,
                        )
                        .unwrap();
                    let want = keys(1, from, WINDOW);
                    assert_eq!(floats(&k), stored(&want, quant));
                    prefix.release(&mut blocks);
                }
            }
        }
    }

    /// A prefix cache for a model whose layer 1 (of 2) is windowed, blocks of 4, storing KV
    /// as `probe` (which holds some) does.
    fn windowed_prefix_cache(probe: &dyn KvCache) -> PrefixCache {
        let layout = paged::layout_of(probe, 4)
            .unwrap()
            .with_windows(&[None, Some(WINDOW)]);
        assert_eq!(layout.windowed, 0b10);
        assert_eq!(layout.block_layers().collect::<Vec<_>>(), vec![0]);
        let config = KvConfig {
            block_size: 4,
            ram_bytes: 1 << 22,
            // Below WINDOW_SNAPSHOT_SPACING windows: the windows set the interval.
            snapshot_interval: 8,
            ..KvConfig::default()
        };
        let identity = ModelIdentity::from_parts([b"windowed".as_slice()]);
        let probe = Arc::new(PrefixProbe::default());
        let windows = [None, Some(WINDOW)];
        PrefixCache::new(
            "t".into(),
            identity,
            layout,
            Vec::new(),
            &windows,
            &config,
            probe,
        )
    }

    /// A conversation's next turn restores the previous turn's tail snapshot and leaves its
    /// own: the previous one then leaves RAM (its bytes with it), and the previous prompt,
    /// asked again, restores from the interval's snapshot instead; the interval's snapshots
    /// stay.
    #[test]
    fn a_superseded_tail_snapshot_leaves_ram() {
        let mut probe = DenseKvCache::new(2);
        prefill_probe(&mut probe);
        let mut prefix = windowed_prefix_cache(&probe);
        let first: Vec<u32> = (0..41).collect();
        let mut blocks = prefill(&mut prefix, &mut DenseKvCache::new(2), (&first, 0), 0);
        prefix.release(&mut blocks);
        let along: Vec<u32> = (0..80).collect();
        let tails = |p: &PrefixCache| snapshots_at(p, &along);
        assert_eq!(tails(&prefix), vec![24, 40]);
        let bytes = prefix.stats().bytes;
        // The next turn: the same tokens and 20 more.
        let second: Vec<u32> = (0..61).collect();
        let mut blocks = prefill(&mut prefix, &mut DenseKvCache::new(2), (&second, 0), 40);
        prefix.release(&mut blocks);
        assert_eq!(tails(&prefix), vec![24, 48, 60]);
        // Five blocks more (40..60), one snapshot more (48) and one the same size less (40).
        let block = prefix.layout.block_bytes();
        let window = prefix.snapshots.values().next().unwrap().nbytes();
        assert_eq!(prefix.stats().bytes, bytes + 5 * block + window);
        let mut cache = DenseKvCache::new(2);
        let mut blocks = SeqBlocks::default();
        assert_eq!(prefix.admit(&first, 0, &mut cache, &mut blocks), 24);
    }

    /// A prompt's head (its chat's system prompt) gets a snapshot between the interval's: a
    /// conversation sharing only the head restores it all, and keeps that snapshot when it
    /// leaves its own tail.
    #[test]
    fn a_head_snapshot_serves_conversations_sharing_the_head() {
        let mut probe = DenseKvCache::new(2);
        prefill_probe(&mut probe);
        let mut prefix = windowed_prefix_cache(&probe);
        let first: Vec<u32> = (0..41).collect();
        // The head ends inside block 3 (14 tokens): its snapshot goes at 12.
        let mut blocks = prefill(&mut prefix, &mut DenseKvCache::new(2), (&first, 14), 0);
        prefix.release(&mut blocks);
        let mut other: Vec<u32> = first[..14].to_vec();
        other.extend(500..530);
        let mut blocks = prefill(&mut prefix, &mut DenseKvCache::new(2), (&other, 14), 12);
        prefix.release(&mut blocks);
        let hashes = chain_hashes(&prefix.identity, &first[..12], 4);
        assert!(
            prefix.snapshots.contains_key(&hashes[2]),
            "the head's snapshot stays"
        );
        // Any prompt reaching the head's end restores there, its own head known or not.
        let mut third: Vec<u32> = first[..14].to_vec();
        third.extend(700..730);
        let mut blocks = SeqBlocks::default();
        let hit = prefix.admit(&third, 0, &mut DenseKvCache::new(2), &mut blocks);
        assert_eq!(hit, 12, "the head's snapshot serves any prompt reaching it");
        prefix.release(&mut blocks);
    }

    /// Decodes `n` tokens after `tokens` as the scheduler does: each step writes one position
    /// (the last token), notes the state, and the sampled token (the next number) joins
    /// `tokens` before the step's blocks are published.
    fn decode(
        prefix: &mut PrefixCache,
        cache: &mut dyn KvCache,
        tokens: &mut Vec<u32>,
        blocks: &mut SeqBlocks,
        n: usize,
    ) {
        for _ in 0..n {
            let at = cache.offset() as i32;
            let (k0, k1) = (keys(0, at, 1), keys(1, at, 1));
            cache
                .update_and_fetch(0, k0.clone(), k0.negative().unwrap())
                .unwrap();
            let v1 = k1.negative().unwrap();
            cache.update_and_fetch_window(1, k1, v1, WINDOW).unwrap();
            cache.advance(1);
            prefix.note_state(cache, blocks);
            tokens.push(*tokens.last().unwrap() + 1);
            prefix.publish(tokens, cache, blocks);
        }
    }

    /// Where a prefix cache holds snapshots along `tokens`.
    fn snapshots_at(p: &PrefixCache, tokens: &[u32]) -> Vec<usize> {
        let hashes = chain_hashes(&p.identity, tokens, 4);
        let mut at = Vec::new();
        for (j, h) in hashes.iter().enumerate() {
            if p.snapshots.contains_key(h) {
                at.push((j + 1) * 4);
            }
        }
        at
    }

    /// When a sequence ends, a snapshot goes at the last block boundary its reply crossed
    /// (the window there kept by the caches' slack): the next turn, whose prompt holds the
    /// reply, restores after it — the windowed layer exactly as a cold run had it — and once
    /// that turn's own tail snapshot is stored, the earlier turn's tail and end snapshots go;
    /// the interval's stay.
    #[test]
    fn a_reply_ends_in_a_snapshot_the_next_turn_restores() {
        let mut probe = DenseKvCache::new(2);
        prefill_probe(&mut probe);
        assert_eq!(windowed_prefix_cache(&probe).window_slack(), 4);
        for slot in [false, true] {
            let mut prefix = windowed_prefix_cache(&probe);
            let mut cache: Box<dyn KvCache> = match slot {
                true => Box::new(SharedSlots::new(2).with_window_slack(4).acquire()),
                false => Box::new(DenseKvCache::new(2).with_window_slack(4)),
            };
            let mut tokens: Vec<u32> = (0..41).collect();
            let mut blocks = prefill(&mut prefix, cache.as_mut(), (&tokens, 0), 0);
            // The reply: positions 41..55, crossing 44, 48 (the interval's) and 52.
            decode(&mut prefix, cache.as_mut(), &mut tokens, &mut blocks, 14);
            assert_eq!(snapshots_at(&prefix, &tokens), vec![24, 40, 48]);
            prefix.finish(&tokens, cache.as_ref(), &mut blocks);
            prefix.release(&mut blocks);
            assert_eq!(snapshots_at(&prefix, &tokens), vec![24, 40, 48, 52]);

            // The next turn: the reply and more.
            let mut next = tokens.clone();
            next.extend(900..910);
            let mut target = DenseKvCache::new(2);
            let mut blocks = SeqBlocks::default();
            assert_eq!(prefix.admit(&next, 0, &mut target, &mut blocks), 52);
            let from = 52 + 1 - WINDOW;
            let (k, v) = target.range(1, from, 52).unwrap().unwrap();
            let want = keys(1, from, WINDOW - 1);
            assert_eq!(floats(&k), floats(&want), "slot {slot}");
            assert_eq!(floats(&v), floats(&want.negative().unwrap()));
            prefix.release(&mut blocks);
            let mut blocks = prefill(&mut prefix, &mut DenseKvCache::new(2), (&next, 0), 52);
            prefix.release(&mut blocks);
            assert_eq!(
                snapshots_at(&prefix, &next),
                vec![24, 48, 64],
                "slot {slot}"
            );
            assert!(prefix.partners.is_empty());
        }
    }

    /// Two positions in both layers: enough for `layout_of`.
    fn prefill_probe(cache: &mut dyn KvCache) {
        for layer in 0..2 {
            let k = keys(layer, 0, 2);
            cache.update_and_fetch(layer, k.clone(), k).unwrap();
        }
        cache.advance(2);
    }

    #[test]
    fn a_hybrid_hit_stops_at_the_nearest_snapshot_at_or_before_the_match() {
        // Blocks of 32, snapshots every 64 positions (every second block).
        let even = |j: usize| j.is_multiple_of(2);
        assert_eq!(restorable(0, even), 0);
        assert_eq!(
            restorable(1, even),
            0,
            "no snapshot before the match: a miss"
        );
        assert_eq!(restorable(3, even), 2, "between snapshots: the one before");
        assert_eq!(restorable(4, even), 4);
        // A prompt's tail snapshot (block 3) between two interval ones.
        assert_eq!(restorable(3, |j| even(j) || j == 3), 3);
        // A snapshot evicted: the one before it.
        assert_eq!(restorable(5, |j| even(j) && j != 4), 2);
        assert_eq!(restorable(5, |_| false), 0);
    }
}
