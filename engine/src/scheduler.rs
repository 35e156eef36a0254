//! Continuous batching. One engine thread per loaded model owns MLX for that model: requests
//! arrive by channel, join the running batch between steps, and leave it when they finish or
//! their client goes away. Each step is one forward pass over every running sequence: one new
//! token for each decoding sequence, and a chunk of prompt for sequences still reading theirs,
//! so that long prompts never stall the streams already producing.
//!
//! Steps are pipelined the way mlx-lm's `generate_step` is: the next step is built and queued
//! (`async_eval`) on the tokens the device has just sampled, before the host reads them; the
//! host then streams the previous step's tokens while the device computes. Only token ids
//! (and log-probabilities, when asked) cross to the host. Where the host must know every
//! token first — penalties that depend on them, or pausing a sequence — the step before is
//! read before the next is built. A constrained sequence's mask depends on its newest token
//! too, but only the sampling needs it: such a step's forward pass is queued first, the step
//! before is read and the masks computed while the device runs it, then its sampling is
//! queued (`sample_masked`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlx_rs::ops::concatenate;
use mlx_rs::{Array, Dtype};
use tokio::sync::mpsc;

use crate::core::{Event, FinishReason, SamplingParams, Timings, TokenLogprob, Usage};
use crate::kv::cache::{DenseKvCache, KvCache};
use crate::kv::cost::KvCost;
use crate::kv::paged::layout_of;
use crate::kv::prefix::ModelIdentity;
use crate::kv::quant::{KvQuant, QuantizedKvCache};
use crate::kv::slots::SharedSlots;
use crate::kv::snapshot::state_layout;
use crate::kv::{KvConfig, PrefixCache, PrefixProbe, SeqBlocks};
use crate::metrics;
use crate::model::{BatchSeq, LanguageModel, Logits};
use crate::text::constraint::{Grammar, TokenMask};
use crate::text::detokenizer::IncrementalDetokenizer;
use crate::text::output_parser::{OutputParser, ParserSetup};
use crate::text::sampler::{self, Choice, Row, Sampled, Sampler};
use crate::text::stop::{StopMatcher, StopOutcome};
use crate::text::tokenizer::Tokenizer;

mod prefill;

/// Prompts up to this many tokens run in the engine's slot pool (batched decode attention);
/// longer ones keep their own KV buffers and attend alone. Every slot of the pool is as long
/// as its longest sequence, so this bounds the pool's padding (a long prompt beside seven
/// short ones would otherwise cost eight long slots), while for long contexts attention's
/// own work dwarfs the per-sequence overhead that pooling saves.
const POOLED_PROMPT_MAX: usize = 2048;

/// A tokenized request, ready for the engine thread.
pub struct SeqRequest {
    pub id: String,
    pub prompt: Vec<u32>,
    /// Tokens of the prompt's head (its chat's system prompt and tools; 0: none known): the
    /// prefix cache of a model that restores only at snapshots takes one there.
    pub head: usize,
    pub sampling: SamplingParams,
    /// Already clamped to the room left in the context.
    pub max_tokens: usize,
    /// Whether `max_tokens` is the context's limit rather than the client's.
    pub limited_by_context: bool,
    pub stop: Vec<String>,
    pub logprobs: Option<usize>,
    /// The model's output format and the request's tools.
    pub parser: ParserSetup,
    /// The grammar the output must follow (`None`: free text).
    pub grammar: Option<Grammar>,
    pub events: mpsc::Sender<Event>,
    pub received: Instant,
}

/// Scheduler limits.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub max_running: usize,
    /// Prompt tokens read per step, across all sequences still prefilling.
    pub prefill_chunk: usize,
    /// Prefix reuse (RAM block pool, SSD tier).
    pub kv: KvConfig,
    /// KV bytes the running sequences may hold together (the model's reserved KV; `None`:
    /// unbounded), each counted by `kv_cost`. A prompt that does not fit next to them waits
    /// in the queue; a batch that outgrows it while decoding is preempted.
    pub kv_budget_bytes: Option<u64>,
    /// What a sequence's KV costs by its length.
    pub kv_cost: KvCost,
    /// Running sequences' KV stored quantized (`None`: as computed): the slot pool and long
    /// sequences' own caches alike; prefix-cache blocks hold the same format, so a hit
    /// restores the bits a cold run computes.
    pub kv_quant: Option<KvQuant>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_running: 8,
            prefill_chunk: 512,
            kv: KvConfig::default(),
            kv_budget_bytes: None,
            kv_cost: KvCost::default(),
            kv_quant: None,
        }
    }
}

/// Live counters of one engine, shared with the HTTP side.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_bytes: AtomicUsize,
    pub cancelled: AtomicUsize,
    pub completed: AtomicUsize,
    /// How much of a prompt the prefix cache likely holds (for `Generation::cached_tokens`).
    pub prefix: Arc<PrefixProbe>,
}

/// One sequence in the running batch.
struct Sequence {
    req: SeqRequest,
    /// Its slot in the engine's KV pool, or its own buffers when its prompt is long.
    cache: Box<dyn KvCache>,
    /// Its blocks in the prefix cache.
    blocks: SeqBlocks,
    /// Prompt tokens taken from the prefix cache.
    cached: usize,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// Prompt followed by generated tokens.
    tokens: Vec<u32>,
    generated: usize,
    sampler: Sampler,
    detok: IncrementalDetokenizer,
    stop: StopMatcher,
    parser: OutputParser,
    /// A constrained sequence's grammar state: it has read every token the host has read.
    grammar: Option<Grammar>,
    /// Host time spent computing its masks (logged when it finishes).
    mask_time: Duration,
    pending_logprobs: Vec<TokenLogprob>,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
    /// Tokens to read into the cache before the next sample: `tokens` as they were when it
    /// was placed in the batch (the prompt, or after a pause everything so far).
    target: usize,
    /// When it first started, relative to the others: the newest is paused first. Also its
    /// key in a step's inputs (unique while it runs).
    admitted: u64,
    /// Tokens sampled on the device that the host has not read yet (at most two: the step in
    /// flight and the one being built).
    pending: usize,
    /// Whether it no longer looks for a sequence ahead of it to share its prompt's prefill
    /// with (`share_prefills`): it has started computing, or found none, or took its blocks.
    sharing_settled: bool,
}

impl Sequence {
    fn prefilling(&self) -> bool {
        self.prefilled < self.target
    }

    /// KV positions it holds once its pending tokens are read.
    fn positions(&self) -> usize {
        self.tokens.len() + self.pending
    }
}

/// One input of a step: a chunk of a sequence's prompt, or its newest token.
struct Input {
    /// The sequence (`Sequence::admitted`).
    key: u64,
    /// Its index in `running` when the step was built.
    index: usize,
    /// Prompt tokens read (0 for a decode input).
    prefill: usize,
    /// Whether the step samples this sequence's next token.
    samples: bool,
}

/// A step the device has been given and the host has not read yet.
struct Launched {
    inputs: Vec<Input>,
    /// The sampled rows, in the order of the inputs that sample.
    sampled: Option<Sampled>,
    /// A step with constrained rows whose sampling waits for their masks: the forward pass is
    /// queued, the masks are computed on the host meanwhile, then `sampled` is built.
    to_sample: Option<ToSample>,
    /// Evaluated when nothing samples (a step of prompt chunks only), so the KV is written.
    logits: Array,
}

/// The sampling of a step, held back until its constrained rows have their masks.
struct ToSample {
    /// The logits of the sampling rows.
    logits: Array,
    rows: Vec<Row>,
    /// `(row, sequence key)` of each constrained row.
    constrained: Vec<(usize, u64)>,
}

/// Work waiting for room in the batch.
enum Waiting {
    New(Box<SeqRequest>),
    /// A sequence paused to give its KV back when the running batch outgrew the KV budget.
    /// It keeps its output state; its KV is recomputed (much of it found in the prefix
    /// cache, which holds its published blocks) when it runs again.
    Paused(Box<Sequence>),
}

impl Waiting {
    fn req(&self) -> &SeqRequest {
        match self {
            Waiting::New(r) => r,
            Waiting::Paused(s) => &s.req,
        }
    }

    /// KV positions it needs to run.
    fn tokens(&self) -> usize {
        match self {
            Waiting::New(r) => r.prompt.len(),
            Waiting::Paused(s) => s.tokens.len(),
        }
    }
}

impl Launched {
    /// The row of `sampled` that holds the token sampled for sequence `key`.
    fn sampled_row(&self, key: u64) -> Option<usize> {
        self.inputs
            .iter()
            .filter(|i| i.samples)
            .position(|i| i.key == key)
    }
}

/// Where an input's tokens come from.
enum TokenSource {
    Host(Vec<u32>),
    /// A row of the step in flight's sampled tokens.
    Device(usize),
}

/// The step's input tokens `[1, N]`, in order: host tokens as they are, pending tokens
/// gathered from the device without a round trip to the host.
fn token_array(
    pieces: &[TokenSource],
    prev: Option<&Sampled>,
) -> Result<Array, mlx_rs::error::Exception> {
    if pieces.iter().all(|p| matches!(p, TokenSource::Host(_))) {
        let flat: Vec<i32> = pieces
            .iter()
            .flat_map(|p| match p {
                TokenSource::Host(t) => t.iter().map(|&t| t as i32),
                TokenSource::Device(_) => unreachable!(),
            })
            .collect();
        return Ok(Array::from_slice(&flat, &[1, flat.len() as i32]));
    }
    let device = prev
        .expect("device tokens come from the step in flight")
        .tokens
        .as_dtype(Dtype::Int32)?;
    // Runs of host tokens and runs of device rows, each one array.
    let mut segments: Vec<Array> = Vec::new();
    let mut host: Vec<i32> = Vec::new();
    let mut rows: Vec<i32> = Vec::new();
    let flush_host = |host: &mut Vec<i32>, segments: &mut Vec<Array>| {
        if !host.is_empty() {
            segments.push(Array::from_slice(host, &[host.len() as i32]));
            host.clear();
        }
    };
    let flush_rows =
        |rows: &mut Vec<i32>, segments: &mut Vec<Array>| -> Result<(), mlx_rs::error::Exception> {
            if !rows.is_empty() {
                let all = rows.len() as i32 == device.shape()[0]
                    && rows.iter().enumerate().all(|(i, &r)| r == i as i32);
                segments.push(if all {
                    device.clone()
                } else {
                    device.take_axis(Array::from_slice(rows, &[rows.len() as i32]), 0)?
                });
                rows.clear();
            }
            Ok(())
        };
    for p in pieces {
        match p {
            TokenSource::Host(t) => {
                flush_rows(&mut rows, &mut segments)?;
                host.extend(t.iter().map(|&t| t as i32));
            }
            TokenSource::Device(r) => {
                flush_host(&mut host, &mut segments);
                rows.push(*r as i32);
            }
        }
    }
    flush_host(&mut host, &mut segments);
    flush_rows(&mut rows, &mut segments)?;
    let all = if segments.len() == 1 {
        segments.pop().expect("one segment")
    } else {
        concatenate(&segments, 0)?
    };
    all.reshape(&[1, -1])
}

/// What a step did for one sequence.
enum Outcome {
    Continue,
    Finished(FinishReason),
}

pub struct Engine {
    model: Box<dyn LanguageModel>,
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
    config: SchedulerConfig,
    stats: Arc<EngineStats>,
    model_id: String,
    prefix: Option<PrefixCache>,
    /// KV of the running sequences, one slot each.
    slots: SharedSlots,
    /// Sequences started so far (orders them for preemption).
    started: u64,
}

impl Engine {
    pub fn new(
        model_id: String,
        model: Box<dyn LanguageModel>,
        tokenizer: Arc<Tokenizer>,
        config: SchedulerConfig,
        stats: Arc<EngineStats>,
    ) -> Self {
        let eos = tokenizer.eos_token_ids().to_vec();
        let prefix = build_prefix_cache(&model_id, model.as_ref(), &config, &stats);
        let prefix = match prefix {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(model = %model_id, error = %e, "prefix cache unavailable; every prompt is computed in full");
                None
            }
        };
        let slots = SharedSlots::new(model.num_layers())
            .quantized(config.kv_quant)
            .with_window_slack(prefix.as_ref().map_or(0, PrefixCache::window_slack));
        Self {
            tokenizer,
            eos,
            config,
            stats,
            slots,
            model,
            model_id,
            prefix,
            started: 0,
        }
    }

    /// Runs until every sender of `requests` is gone and no sequence is left.
    pub fn run(mut self, requests: std_mpsc::Receiver<SeqRequest>) {
        let mut waiting: VecDeque<Waiting> = VecDeque::new();
        let mut running: Vec<Sequence> = Vec::new();
        // The step the device is computing, whose tokens the host has not read yet.
        let mut in_flight: Option<Launched> = None;
        let mut open = true;
        loop {
            // Idle: block for work. Busy: take whatever arrived since the last step.
            if running.is_empty() && waiting.is_empty() && in_flight.is_none() {
                if !open {
                    return;
                }
                match requests.recv() {
                    Ok(r) => waiting.push_back(Waiting::New(Box::new(r))),
                    Err(_) => return,
                }
            }
            loop {
                match requests.try_recv() {
                    Ok(r) => waiting.push_back(Waiting::New(Box::new(r))),
                    Err(std_mpsc::TryRecvError::Empty) => break,
                    Err(std_mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            // Clients that left while queued never start.
            waiting.retain(|w| {
                let gone = w.req().events.is_closed();
                if gone {
                    self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                    self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                    metrics::add_cancellation(&self.model_id);
                }
                !gone
            });
            while running.len() < self.config.max_running {
                let Some(next) = waiting.front() else {
                    break;
                };
                // Gated by KV memory too: first in line waits for room (one sequence always
                // runs, so the queue moves; the registry refuses prompts that never fit).
                if !running.is_empty() && !self.kv_room(next.tokens(), &running) {
                    break;
                }
                let next = waiting.pop_front().expect("front exists");
                // From waiting to running in one go: the registry never sees the sequence in
                // neither count (it would take the model for idle).
                self.stats.running.fetch_add(1, Ordering::Relaxed);
                self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                running.push(match next {
                    Waiting::New(req) => self.start(*req),
                    Waiting::Paused(seq) => self.resume(*seq),
                });
            }
            // The host must know every sampled token before it pauses a sequence or applies
            // penalties that depend on them: then the step in flight is read first.
            if in_flight.is_some() && self.needs_every_token(&running) {
                let prev = in_flight.take().expect("checked");
                if let Err(e) = self.complete(prev, &mut running) {
                    self.fail_all(&mut running, &e);
                }
            }
            self.preempt_over_budget(&mut running, &mut waiting);
            self.publish_gauges(&running, waiting.len());
            // Queue the next step on the device, then hand the previous one's tokens out while
            // it runs.
            let mut next = match self.launch(&mut running, in_flight.as_ref()) {
                Ok(next) => next,
                Err(e) => {
                    in_flight = None;
                    self.fail_all(&mut running, &e);
                    continue;
                }
            };
            if let Some(prev) = in_flight.take() {
                if let Err(e) = self.complete(prev, &mut running) {
                    self.fail_all(&mut running, &e);
                    continue;
                }
            }
            // Masks that waited for the tokens just read, computed while the forward pass runs.
            if let Some(step) = next.as_mut() {
                if let Err(e) = self.sample_masked(step, &mut running) {
                    self.fail_all(&mut running, &e);
                    continue;
                }
            }
            in_flight = next;
            // Sequences that finished or were cancelled are gone: say so now, the thread may
            // idle next.
            self.publish_gauges(&running, waiting.len());
        }
    }

    /// Ends every running sequence with an error (a step failed: their KV may be incomplete).
    fn fail_all(&mut self, running: &mut Vec<Sequence>, e: &mlx_rs::error::Exception) {
        tracing::error!(model = %self.model_id, error = %e, "engine step failed");
        for mut seq in running.drain(..) {
            if let Some(p) = self.prefix.as_mut() {
                p.release(&mut seq.blocks);
            }
            let _ = seq
                .req
                .events
                .try_send(Event::Error(format!("inference failed: {e}")));
        }
    }

    /// Whether the next step needs every sampled token on the host first.
    fn needs_every_token(&self, running: &[Sequence]) -> bool {
        let over_budget = self
            .config
            .kv_budget_bytes
            .is_some_and(|limit| running.len() > 1 && self.held_bytes(running) > limit);
        over_budget
            || running
                .iter()
                .any(|s| s.pending > 0 && s.sampler.has_penalties())
    }

    fn start(&mut self, mut req: SeqRequest) -> Sequence {
        let sampler = Sampler::new(req.sampling.clone());
        let stop = StopMatcher::new(&req.stop);
        // Markup the parser reads must reach it even where the tokenizer marks it special.
        let detok = self.tokenizer.detokenizer_keeping(&req.parser.markup());
        let parser = OutputParser::with_setup(std::mem::take(&mut req.parser));
        let grammar = req.grammar.take();
        self.started += 1;
        let mut seq = Sequence {
            cache: no_cache(),
            blocks: SeqBlocks::default(),
            cached: 0,
            prefilled: 0,
            tokens: req.prompt.clone(),
            generated: 0,
            sampler,
            detok,
            stop,
            parser,
            grammar,
            mask_time: Duration::ZERO,
            pending_logprobs: Vec::new(),
            first_token_at: None,
            last_token_at: None,
            target: 0,
            admitted: self.started,
            pending: 0,
            sharing_settled: false,
            req,
        };
        self.place(&mut seq);
        seq.cached = seq.prefilled;
        if seq.cached > 0 {
            metrics::add_prompt_tokens(&self.model_id, seq.cached, seq.cached);
        }
        seq
    }

    /// Runs a paused sequence again: its KV is rebuilt as on start, and it samples where it
    /// stopped.
    fn resume(&mut self, mut seq: Sequence) -> Sequence {
        seq.sharing_settled = true;
        self.place(&mut seq);
        tracing::debug!(id = %seq.req.id, model = %self.model_id, tokens = seq.target, from_cache = seq.prefilled, "resumed");
        seq
    }

    /// Gives a sequence a fresh KV cache for its tokens (a slot of the pool, or its own buffers
    /// when it is long) and fills it with the longest prefix the prefix cache holds; the rest
    /// is prefilled.
    fn place(&mut self, seq: &mut Sequence) {
        seq.cache = if seq.tokens.len() <= POOLED_PROMPT_MAX {
            Box::new(self.slots.acquire())
        } else if let Some(quant) = self.config.kv_quant {
            Box::new(QuantizedKvCache::new(self.model.num_layers(), quant))
        } else {
            let layers = self.model.num_layers();
            let slack = self.prefix.as_ref().map_or(0, PrefixCache::window_slack);
            Box::new(DenseKvCache::new(layers).with_window_slack(slack))
        };
        seq.prefilled = match self.prefix.as_mut() {
            Some(p) => p.admit(
                &seq.tokens,
                seq.req.head,
                seq.cache.as_mut(),
                &mut seq.blocks,
            ),
            None => 0,
        };
        seq.target = seq.tokens.len();
    }

    /// Gives back what `place` gave a sequence: its blocks' references and its KV (dropping
    /// the cache gives its slot, or its own buffers, back).
    fn unplace(&mut self, seq: &mut Sequence) {
        if let Some(p) = self.prefix.as_mut() {
            p.release(&mut seq.blocks);
        }
        seq.blocks = SeqBlocks::default();
        seq.cache = no_cache();
    }

    /// While the running sequences together outgrow the KV budget (each decode step adds a
    /// position per sequence, and admission does not reserve room for growth), the most
    /// recently started one is paused: its KV is freed and it waits first in line to resume.
    /// The oldest always keeps running, so everything finishes; a lone sequence fits because
    /// the registry clamps `max_tokens` to the budget.
    fn preempt_over_budget(
        &mut self,
        running: &mut Vec<Sequence>,
        waiting: &mut VecDeque<Waiting>,
    ) {
        let Some(limit) = self.config.kv_budget_bytes else {
            return;
        };
        let mut held = self.held_bytes(running);
        while running.len() > 1 && held > limit {
            let newest = (0..running.len())
                .max_by_key(|&i| running[i].admitted)
                .expect("not empty");
            let mut seq = running.swap_remove(newest);
            held -= self.seq_bytes(&seq);
            self.unplace(&mut seq);
            seq.prefilled = 0;
            self.stats.waiting.fetch_add(1, Ordering::Relaxed);
            metrics::add_preemption(&self.model_id);
            tracing::info!(
                id = %seq.req.id,
                model = %self.model_id,
                tokens = seq.tokens.len(),
                still_running = running.len(),
                "paused: the running batch outgrew the KV budget; resumes when there is room"
            );
            waiting.push_front(Waiting::Paused(Box::new(seq)));
        }
    }

    /// Whether a prompt of `tokens` fits the KV budget next to what `running` holds. Counted
    /// by what the sequences' positions cost, not by allocated buffers: the slot pool pads
    /// slots and keeps freed ones for reuse, so its size says little about what one more
    /// sequence costs. Growth while decoding is not reserved up front:
    /// `preempt_over_budget` handles it.
    fn kv_room(&self, tokens: usize, running: &[Sequence]) -> bool {
        let Some(limit) = self.config.kv_budget_bytes else {
            return true;
        };
        self.held_bytes(running) + self.config.kv_cost.bytes(tokens) <= limit
    }

    /// The KV bytes `running` holds together.
    fn held_bytes(&self, running: &[Sequence]) -> u64 {
        running.iter().map(|s| self.seq_bytes(s)).sum()
    }

    /// The KV bytes of a running sequence.
    fn seq_bytes(&self, seq: &Sequence) -> u64 {
        self.config.kv_cost.bytes(seq.positions())
    }

    fn publish_gauges(&self, running: &[Sequence], waiting: usize) {
        let own: usize = running.iter().map(|s| s.cache.own_bytes()).sum();
        let kv = own
            + if running.is_empty() {
                0
            } else {
                self.slots.nbytes()
            };
        self.stats.running.store(running.len(), Ordering::Relaxed);
        self.stats.kv_bytes.store(kv, Ordering::Relaxed);
        metrics::set_requests_running(&self.model_id, running.len());
        metrics::set_requests_waiting(&self.model_id, waiting);
        metrics::set_kv_cache_bytes(&self.model_id, kv);
        if let Some(p) = &self.prefix {
            p.publish_metrics();
        }
    }

    /// Builds one forward pass over the running batch and the sampling of every sequence that
    /// reaches the end of its input, and queues them on the device. A sequence whose newest
    /// token is still on the device (`prev` sampled it) reads it from there.
    fn launch(
        &mut self,
        running: &mut Vec<Sequence>,
        prev: Option<&Launched>,
    ) -> Result<Option<Launched>, mlx_rs::error::Exception> {
        // Drop sequences whose client went away (or stopped reading): their KV goes with them.
        let prefix = &mut self.prefix;
        running.retain_mut(|s| {
            let gone = s.req.events.is_closed() || s.req.events.capacity() == 0;
            if gone {
                if let Some(p) = prefix.as_mut() {
                    p.release(&mut s.blocks);
                }
                self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                metrics::add_cancellation(&self.model_id);
                tracing::info!(id = %s.req.id, model = %self.model_id, generated = s.generated, "cancelled: client went away");
            }
            !gone
        });
        if running.is_empty() {
            return Ok(None);
        }

        // Each sequence's input for this step, and where its tokens come from.
        let waits = self.share_prefills(running);
        let lengths = self.prefill_lengths(running, &waits);
        let mut inputs: Vec<Input> = Vec::new();
        let mut pieces: Vec<TokenSource> = Vec::new();
        for (i, seq) in running.iter().enumerate() {
            if seq.prefilling() {
                let len = lengths[i];
                if len == 0 {
                    continue;
                }
                pieces.push(TokenSource::Host(
                    seq.tokens[seq.prefilled..seq.prefilled + len].to_vec(),
                ));
                inputs.push(Input {
                    key: seq.admitted,
                    index: i,
                    prefill: len,
                    samples: seq.prefilled + len == seq.target,
                });
            } else {
                // Its pending tokens may already be its last: nothing more to compute.
                if seq.generated + seq.pending >= seq.req.max_tokens {
                    continue;
                }
                pieces.push(if seq.pending > 0 {
                    let row = prev
                        .and_then(|p| p.sampled_row(seq.admitted))
                        .expect("a pending token was sampled by the step in flight");
                    TokenSource::Device(row)
                } else {
                    TokenSource::Host(vec![*seq
                        .tokens
                        .last()
                        .expect("a decoding sequence has tokens")])
                });
                inputs.push(Input {
                    key: seq.admitted,
                    index: i,
                    prefill: 0,
                    samples: true,
                });
            }
        }
        if inputs.is_empty() {
            return Ok(None);
        }
        let token_array = token_array(&pieces, prev.and_then(|p| p.sampled.as_ref()))?;
        metrics::record_batch_size(&self.model_id, inputs.len());

        // Split the running list into disjoint &mut caches in input order.
        let logits = {
            let mut chosen: Vec<Option<&mut Sequence>> = running.iter_mut().map(Some).collect();
            let mut batch: Vec<BatchSeq<'_>> = Vec::with_capacity(inputs.len());
            for input in &inputs {
                let seq = chosen[input.index]
                    .take()
                    .expect("each sequence appears once");
                batch.push(BatchSeq {
                    len: input.prefill.max(1),
                    cache: seq.cache.as_mut(),
                });
            }
            self.model.forward(&token_array, &mut batch, Logits::Last)?
        };

        // What to sample, row by row; the prompt read so far is known now.
        let mut rows = Vec::new();
        let mut sampling_rows = Vec::new();
        let mut constrained = Vec::new();
        // Whether a constrained row's newest token is still on the device: its mask waits for
        // the step in flight to be read.
        let mut mask_waits = false;
        for (r, input) in inputs.iter().enumerate() {
            let seq = &mut running[input.index];
            seq.prefilled += input.prefill;
            if let Some(p) = self.prefix.as_ref() {
                p.note_state(seq.cache.as_mut(), &mut seq.blocks);
            }
            if input.samples {
                if seq.grammar.is_some() {
                    constrained.push((rows.len(), seq.admitted));
                    mask_waits |= seq.pending > 0;
                }
                rows.push(
                    seq.sampler
                        .row(&seq.tokens, seq.generated, seq.req.logprobs),
                );
                sampling_rows.push(r as i32);
                seq.pending += 1;
            }
        }
        let mut launched = Launched {
            inputs,
            sampled: None,
            to_sample: None,
            logits,
        };
        if rows.is_empty() {
            mlx_rs::transforms::async_eval([&launched.logits])?;
            return Ok(Some(launched));
        }
        let sampling_logits = if sampling_rows.len() == launched.inputs.len() {
            launched.logits.clone()
        } else {
            let idx = Array::from_slice(&sampling_rows, &[sampling_rows.len() as i32]);
            launched.logits.take_axis(&idx, 0)?
        };
        if constrained.is_empty() {
            let sampled = sampler::sample(&sampling_logits, &rows)?;
            mlx_rs::transforms::async_eval(sampled.arrays())?;
            launched.sampled = Some(sampled);
            return Ok(Some(launched));
        }
        // Constrained rows: the forward pass goes to the device now, and their masks are
        // computed on the host while it runs (after the step in flight is read, when a mask
        // depends on its token: `run` calls `sample_masked` then).
        mlx_rs::transforms::async_eval([&sampling_logits])?;
        launched.to_sample = Some(ToSample {
            logits: sampling_logits,
            rows,
            constrained,
        });
        if !mask_waits {
            self.sample_masked(&mut launched, running)?;
        }
        Ok(Some(launched))
    }

    /// Gives a launched step's constrained rows their masks (each grammar has read every token
    /// of its sequence by now) and queues the step's sampling.
    fn sample_masked(
        &self,
        step: &mut Launched,
        running: &mut [Sequence],
    ) -> Result<(), mlx_rs::error::Exception> {
        let Some(ToSample {
            logits,
            mut rows,
            constrained,
        }) = step.to_sample.take()
        else {
            return Ok(());
        };
        for (row, key) in constrained {
            // A sequence that finished meanwhile samples freely; its token is never read.
            let Some(seq) = running.iter_mut().find(|s| s.admitted == key) else {
                continue;
            };
            let Some(grammar) = seq.grammar.as_mut() else {
                continue;
            };
            let started = Instant::now();
            let mask = grammar.mask();
            seq.mask_time += started.elapsed();
            rows[row].allowed = match mask {
                Ok(mask) => Some(mask),
                Err(e) => {
                    // Unreachable while every token is sampled from its mask; end the sequence
                    // rather than let it run unconstrained.
                    tracing::warn!(id = %seq.req.id, error = %e, "grammar failed; ending the sequence");
                    Some(self.eos_only())
                }
            };
        }
        let sampled = sampler::sample(&logits, &rows)?;
        mlx_rs::transforms::async_eval(sampled.arrays())?;
        step.sampled = Some(sampled);
        Ok(())
    }

    /// A mask that allows only the end of sequence.
    fn eos_only(&self) -> TokenMask {
        let top = self.eos.iter().copied().max().unwrap_or(0) as usize;
        let mut words = vec![0u32; top / 32 + 1];
        for &e in &self.eos {
            words[e as usize / 32] |= 1 << (e % 32);
        }
        TokenMask(words.into())
    }

    /// Reads a launched step's tokens (waiting for the device) and hands them out: prefix
    /// blocks it completed are published, each sampled token is streamed, and sequences that
    /// finished leave the batch. Inputs of sequences that left since are skipped.
    fn complete(
        &mut self,
        step: Launched,
        running: &mut Vec<Sequence>,
    ) -> Result<(), mlx_rs::error::Exception> {
        let choices = match &step.sampled {
            Some(s) => s.read()?,
            None => {
                step.logits.eval()?;
                Vec::new()
            }
        };
        let find = |running: &[Sequence], key: u64| running.iter().position(|s| s.admitted == key);

        // Blocks the step completed become shareable now, so that a concurrent request with
        // the same prefix can reuse them before this one ends.
        if let Some(p) = self.prefix.as_mut() {
            for input in &step.inputs {
                if let Some(i) = find(running, input.key) {
                    let seq = &mut running[i];
                    p.publish(&seq.tokens, seq.cache.as_ref(), &mut seq.blocks);
                }
            }
        }

        let now = Instant::now();
        let mut choices = choices.into_iter();
        let mut finished: Vec<(u64, FinishReason)> = Vec::new();
        for input in &step.inputs {
            let choice = if input.samples { choices.next() } else { None };
            let Some(i) = find(running, input.key) else {
                continue;
            };
            let seq = &mut running[i];
            if input.prefill > 0 {
                metrics::add_prompt_tokens(&self.model_id, input.prefill, 0);
            }
            let Some(choice) = choice else {
                // Still reading the prompt: let the adapter keep the connection alive.
                let _ = seq.req.events.try_send(Event::KeepAlive);
                continue;
            };
            seq.pending -= 1;
            if let Outcome::Finished(reason) = self.emit_next(seq, choice, now) {
                finished.push((input.key, reason));
            }
        }
        for (key, reason) in finished {
            if let Some(i) = find(running, key) {
                let seq = running.swap_remove(i);
                self.finish(seq, reason);
            }
        }
        Ok(())
    }

    /// Streams a sampled token of `seq` and says whether it is done.
    fn emit_next(&self, seq: &mut Sequence, choice: Choice, now: Instant) -> Outcome {
        let token = choice.token;
        if let Some((lp, top)) = choice.logprobs {
            let piece = |t: u32| {
                let text = self.tokenizer.decode(&[t], false).unwrap_or_default();
                let bytes = text.as_bytes().to_vec();
                (text, bytes)
            };
            let (token_text, bytes) = piece(token);
            seq.pending_logprobs.push(TokenLogprob {
                token: token_text,
                bytes,
                logprob: lp,
                top: top
                    .into_iter()
                    .map(|(t, l)| {
                        let (s, b) = piece(t);
                        (s, b, l)
                    })
                    .collect(),
            });
        }
        seq.tokens.push(token);
        seq.generated += 1;
        metrics::add_generation_tokens(&self.model_id, 1);
        match seq.last_token_at {
            None => {
                seq.first_token_at = Some(now);
                metrics::record_time_to_first_token(
                    &self.model_id,
                    now.duration_since(seq.req.received),
                );
            }
            Some(last) => {
                metrics::record_inter_token_latency(&self.model_id, now.duration_since(last))
            }
        }
        seq.last_token_at = Some(now);

        if self.eos.contains(&token) {
            return Outcome::Finished(FinishReason::Eos);
        }
        let grammar_done = match seq.grammar.as_mut() {
            None => false,
            Some(g) => match g.consume(token) {
                Ok(()) => g.is_finished(),
                Err(e) => {
                    tracing::warn!(id = %seq.req.id, error = %e, "grammar refused a sampled token; ending the sequence");
                    true
                }
            },
        };
        let text = seq.detok.push(token);
        if let Some(stop) = self.send_text(seq, &text) {
            return Outcome::Finished(FinishReason::StopSequence(stop));
        }
        // The grammar is complete: nothing may follow, as if the model had ended it.
        if grammar_done {
            return Outcome::Finished(FinishReason::Eos);
        }
        if seq.generated >= seq.req.max_tokens {
            return Outcome::Finished(if seq.req.limited_by_context {
                FinishReason::ContextWindow
            } else {
                FinishReason::MaxTokens
            });
        }
        Outcome::Continue
    }

    /// Passes new text through the stop matcher and the output parser to the client. Returns
    /// the stop string that matched, if one did.
    fn send_text(&self, seq: &mut Sequence, text: &str) -> Option<String> {
        let (emit, stop) = match seq.stop.push(text) {
            StopOutcome::Continue { emit } => (emit, None),
            StopOutcome::Stopped { emit, stop } => (emit, Some(stop)),
        };
        let events = seq.parser.push(&emit);
        self.send(seq, events);
        stop
    }

    /// Sends events, preceded by the logprobs of the tokens behind them.
    fn send(&self, seq: &mut Sequence, events: Vec<Event>) {
        if !seq.pending_logprobs.is_empty() {
            let lps = std::mem::take(&mut seq.pending_logprobs);
            deliver(&seq.req, Event::Logprobs(lps));
        }
        for e in events {
            deliver(&seq.req, e);
        }
    }

    fn finish(&mut self, mut seq: Sequence, mut reason: FinishReason) {
        if let Some(p) = self.prefix.as_mut() {
            p.finish(&seq.tokens, seq.cache.as_ref(), &mut seq.blocks);
            p.release(&mut seq.blocks);
        }
        // Text held back (partial UTF-8, a possible stop-string prefix) is released unless a
        // stop string ended the sequence: what follows a stop is never shown.
        let mut events = Vec::new();
        if !matches!(reason, FinishReason::StopSequence(_)) {
            let tail = seq.detok.flush();
            if let Some(stop) = self.send_text(&mut seq, &tail) {
                reason = FinishReason::StopSequence(stop);
            } else {
                let rest = seq.stop.flush();
                events.extend(seq.parser.push(&rest));
            }
        }
        events.extend(seq.parser.finish());
        if seq.parser.saw_tool_calls() && matches!(reason, FinishReason::Eos) {
            reason = FinishReason::ToolCalls;
        }
        let ttft = seq
            .first_token_at
            .map(|t| t.duration_since(seq.req.received))
            .unwrap_or_default();
        let decode = match (seq.first_token_at, seq.last_token_at) {
            (Some(a), Some(b)) if seq.generated > 1 => b.duration_since(a),
            _ => Duration::ZERO,
        };
        let usage = Usage {
            prompt_tokens: seq.req.prompt.len(),
            completion_tokens: seq.generated,
            cached_tokens: seq.cached,
            timings: Timings {
                to_first_token: ttft,
                decode,
            },
        };
        events.push(Event::Finished {
            reason: reason.clone(),
            usage,
        });
        // Not running from the moment its client can see the end: a client that acts on the
        // last event (loads another model, say) must find this one idle, not wait for the
        // gauges after the step. (They set the exact count again.)
        let _ = self
            .stats
            .running
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        self.send(&mut seq, events);
        self.stats.completed.fetch_add(1, Ordering::Relaxed);
        metrics::add_generation_finished(&self.model_id, finish_label(&reason));

        let tok_s = if decode.is_zero() {
            0.0
        } else {
            (seq.generated - 1) as f64 / decode.as_secs_f64()
        };
        // A constrained sequence: the host time its masks took, all steps together.
        let mask_ms = seq
            .grammar
            .is_some()
            .then(|| format!("{:.1}", seq.mask_time.as_secs_f64() * 1000.0));
        // The HTTP layer writes the one info line per request; this one is the engine's view
        // (for `WUWEI_LOG=debug` and for `wuwei generate`).
        tracing::debug!(
            id = %seq.req.id,
            model = %self.model_id,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            cached_tokens = usage.cached_tokens,
            ttft_ms = ttft.as_millis() as u64,
            tok_s = format!("{tok_s:.1}"),
            mask_ms = mask_ms,
            finish = ?reason,
            "sequence finished"
        );
    }
}

/// The cache of a sequence that holds no KV (not placed yet, or paused).
fn no_cache() -> Box<dyn KvCache> {
    Box::new(DenseKvCache::new(0))
}

/// Sets up the prefix cache of a freshly loaded model: a two-token forward pass gives the KV
/// layout and a coarse fingerprint of the model's numbers (rounded logits), which joins the
/// model's files and weights mode in its identity, so that KV computed one way is never
/// served to a model that computes it another way (e.g. `auto` resolving differently).
fn build_prefix_cache(
    model_id: &str,
    model: &dyn LanguageModel,
    scheduler: &SchedulerConfig,
    stats: &EngineStats,
) -> Result<Option<PrefixCache>, String> {
    let config = &scheduler.kv;
    if !config.enabled {
        return Ok(None);
    }
    if config.block_size == 0 {
        return Err("block size 0".into());
    }
    // The probe stores KV as the sequences will (quantized or not): blocks hold that format.
    let mut cache: Box<dyn KvCache> = match scheduler.kv_quant {
        Some(quant) => Box::new(QuantizedKvCache::new(model.num_layers(), quant)),
        None => Box::new(DenseKvCache::new(model.num_layers())),
    };
    let tokens = Array::from_slice(&[1i32, 2], &[1, 2]);
    let logits = model
        .forward(
            &tokens,
            &mut [BatchSeq {
                len: 2,
                cache: cache.as_mut(),
            }],
            Logits::Last,
        )
        .and_then(|l| l.as_dtype(mlx_rs::Dtype::Float32))
        .map_err(|e| e.to_string())?;
    logits.eval().map_err(|e| e.to_string())?;
    let fingerprint: Vec<u8> = logits
        .as_slice::<f32>()
        .iter()
        .flat_map(|x| ((x * 10.0).round() as i32).to_le_bytes())
        .collect();
    let windows = model.kv_windows();
    let layout = layout_of(cache.as_ref(), config.block_size)
        .map_err(|e| e.to_string())?
        .with_windows(&windows);
    // The layer layout (which layers keep KV, which keep recurrent state) and every state's
    // shape and dtype: a snapshot is never restored into another layout.
    // (Written as before linear layers existed for plain models, whose identity, and so
    // their blocks on disk, stay as they were.)
    let mut shape = format!(
        "KvLayout {{ layers: {}, kv_heads: {}, head_dim: {}, block_size: {}, dtype: {:?} }}",
        layout.layers, layout.kv_heads, layout.head_dim, layout.block_size, layout.dtype
    );
    if layout.linear != 0 {
        shape.push_str(&format!(" linear: {:#x}", layout.linear));
    }
    if layout.wide != 0 {
        let (heads, dim) = layout.wide_shape;
        shape.push_str(&format!(" wide: {:#x} {heads}x{dim}", layout.wide));
    }
    // Blocks without the windowed layers (their windows in snapshots): another format than
    // the whole blocks such models stored before.
    if layout.windowed != 0 {
        shape.push_str(&format!(" windowed: {:#x}", layout.windowed));
    }
    // Only when set, as above: quantized blocks are another format.
    if let Some(quant) = layout.quant {
        shape.push_str(&format!(" kv: {}", quant.label()));
    }
    if model.has_recurrent_state() {
        for layer in 0..cache.num_layers() {
            if let Some(state) = cache.state(layer) {
                for a in state.iter() {
                    shape.push_str(&format!(" {layer}:{:?}{:?}", a.shape(), a.dtype()));
                }
            }
        }
    }
    let mut extra: Vec<&[u8]> = vec![
        config.weights_mode.as_bytes(),
        shape.as_bytes(),
        &fingerprint,
    ];
    // Only when set: the identity (and the blocks on disk) of models without stay as they were.
    if !config.model_overrides.is_empty() {
        extra.push(config.model_overrides.as_bytes());
    }
    let identity = match &config.model_path {
        Some(path) => ModelIdentity::of_model(path, &extra),
        None => ModelIdentity::from_parts(
            std::iter::once(model_id.as_bytes()).chain(extra.iter().copied()),
        ),
    };
    // The shape a snapshot must have to be restored (checked again on every file read).
    let states = if layout.linear != 0 {
        let linear = (0..layout.layers).filter(|&l| layout.is_linear(l));
        state_layout(cache.as_mut(), linear).map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    Ok(Some(PrefixCache::new(
        model_id.to_string(),
        identity,
        layout,
        states,
        &windows,
        config,
        stats.prefix.clone(),
    )))
}

/// Queues an event for the client. The channel is bounded so that a client that stops
/// reading cannot grow memory without limit; such a client is treated as gone.
fn deliver(req: &SeqRequest, event: Event) {
    if let Err(mpsc::error::TrySendError::Full(_)) = req.events.try_send(event) {
        tracing::warn!(id = %req.id, "client is not reading its stream; dropping events");
    }
}

/// Capacity of a generation's event channel (events, roughly tokens, the client may lag).
pub const EVENT_CHANNEL_CAPACITY: usize = 4096;

fn finish_label(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos | FinishReason::StopSequence(_) => "stop",
        FinishReason::MaxTokens | FinishReason::ContextWindow => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::Cancelled => "cancelled",
    }
}
