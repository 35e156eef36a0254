//! Each supported architecture, with small random weights written by mlx-lm's own model classes
//! (dense and quantized as `mlx_lm convert` quantizes), gives the same logits as mlx-lm over a
//! prompt and several cached decode steps. Also checks that chunked prefill, a reused prefix and
//! batching with other sequences do not change a sequence's logits, and, for quantized
//! Mixture-of-Experts models, that greedy decoding picks mlx-lm's tokens.
//!
//! The GPU configuration — activations in the checkpoint's dtype, quantized weights as stored —
//! runs here on the CPU: every model is computed in its own dtype (`Activations::Checkpoint`,
//! which for the float32 checkpoints is float32), and the bf16 and fp16 checkpoints are
//! compared with mlx-lm computing in the same dtype on the same CPU.

mod common;

use std::path::Path;

use common::{python, root};
use mlx_rs::Array;
use serde_json::{json, Value};
use wuwei::kv::cache::{DenseKvCache, KvCache};
use wuwei::kv::quant::{KvQuant, QuantizedKvCache};
use wuwei::kv::slots::{SharedSlots, SlotKvCache};
use wuwei::model::{load_model_dir, BatchSeq, LanguageModel, Logits, WeightsMode};

const TOLERANCE: f32 = 1e-4;

/// The checkpoint's float dtype, as mlx-lm names it.
#[derive(Clone, Copy, PartialEq)]
enum Dtype {
    F32,
    Bf16,
    F16,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::Bf16 => "bfloat16",
            Dtype::F16 => "float16",
        }
    }

    /// In half precision our graph is op for op mlx-lm's on the same kernels: the logits are
    /// bit for bit the same (measured), so that is the bar. In float32, BLAS rounds a row
    /// differently by how many rows a matmul has.
    fn tolerance(self) -> f32 {
        if self == Dtype::F32 {
            TOLERANCE
        } else {
            0.0
        }
    }
}

/// How the reference script quantizes a model (`--bits`, `--group-size`, `--mode`).
#[derive(Clone, Copy)]
enum Quant {
    Float,
    /// Affine with groups of 32.
    Affine(u32),
    /// A float mode at its own bits and group size (mxfp4, mxfp8, nvfp4).
    Mode(&'static str),
}

fn make_model(arch: &str, quant: Quant, dtype: Dtype) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = root().join("tests/reference/make_random_model.py");
    let mut args = vec![
        script.to_str().unwrap().to_string(),
        arch.into(),
        dir.path().to_str().unwrap().into(),
        "--dtype".into(),
        dtype.name().into(),
    ];
    match quant {
        Quant::Float => {}
        Quant::Affine(bits) => args.extend([
            "--bits".into(),
            bits.to_string(),
            "--group-size".into(),
            "32".into(),
        ]),
        Quant::Mode(mode) => args.extend(["--mode".into(), mode.into()]),
    }
    python(&args.iter().map(String::as_str).collect::<Vec<_>>());
    dir
}

/// Logits as float32 on the host (a half-precision model's are bf16/f16: the cast is exact).
fn to_vec(a: &Array) -> Vec<f32> {
    let a = a.as_dtype(mlx_rs::Dtype::Float32).unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

fn tokens(ids: &[u32]) -> Array {
    let ids: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    Array::from_slice(&ids, &[1, ids.len() as i32])
}

fn assert_within(what: &str, ours: &[f32], reference: &[f32], tolerance: f32) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let worst = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= tolerance,
        "{what}: max |diff| {worst} > {tolerance}"
    );
}

fn flatten(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(flatten).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        _ => panic!("not numeric"),
    }
}

/// Prefill of `prompt` then one-token decode steps; returns (prompt logits, per-step logits).
fn run_ours(
    model: &dyn LanguageModel,
    prompt: &[u32],
    decode: &[u32],
    cache: &mut dyn KvCache,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut batch = [BatchSeq {
        len: prompt.len(),
        cache: &mut *cache,
    }];
    let p = to_vec(
        &model
            .forward(&tokens(prompt), &mut batch, Logits::All)
            .unwrap(),
    );
    let steps = decode
        .iter()
        .map(|&t| {
            let mut batch = [BatchSeq {
                len: 1,
                cache: &mut *cache,
            }];
            to_vec(
                &model
                    .forward(&tokens(&[t]), &mut batch, Logits::Last)
                    .unwrap(),
            )
        })
        .collect();
    (p, steps)
}

fn check(arch: &str, bits: u32, dtype: Dtype) {
    wuwei::device::set_activations(wuwei::device::Activations::Checkpoint);
    let quant = if bits > 0 {
        Quant::Affine(bits)
    } else {
        Quant::Float
    };
    let dir = make_model(arch, quant, dtype);
    let prompt: Vec<u32> = vec![1, 17, 300, 42, 7, 99, 256, 3, 511, 64, 128];
    let case = Case {
        what: format!("{arch} bits={bits} {}", dtype.name()),
        prompt,
        tolerance: dtype.tolerance(),
        exact_batches: bits > 0,
        greedy: 0,
        recurrent: false,
    };
    check_dir(dir.path(), &case);
}

/// A Mixture-of-Experts model: a prompt long enough that its (token, expert) pairs are sorted
/// by expert (as mlx-lm sorts 64 or more), decode steps that are not, and, quantized, greedy
/// tokens.
fn check_moe(arch: &str, quant: Quant, dtype: Dtype) {
    wuwei::device::set_activations(wuwei::device::Activations::Checkpoint);
    let dir = make_model(arch, quant, dtype);
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 % 509) as u32 + 1).collect();
    let quantized = !matches!(quant, Quant::Float);
    let case = Case {
        what: format!("{arch} {} {}", quant_name(quant), dtype.name()),
        prompt,
        tolerance: dtype.tolerance(),
        exact_batches: quantized,
        greedy: if quantized { 12 } else { 0 },
        recurrent: false,
    };
    check_dir(dir.path(), &case);
    if arch == "gpt_oss" && !quantized && dtype == Dtype::F32 {
        windowed_layers_forget_only_what_no_query_sees(dir.path());
    }
    memory_estimate_counts_every_expert(dir.path(), quantized);
    // Dequantized mode expands to float32 with float32 activations only.
    if quantized && dtype == Dtype::F32 {
        dequantized_mode_agrees(dir.path(), &case);
    }
}

/// A model with sliding-window layers: a prompt several windows long (the random configs use
/// windows of 16), so that chunked prefill, a reused prefix and cached decode all cross the
/// window; quantized, greedy tokens too.
fn check_windowed(arch: &str, quant: Quant, dtype: Dtype) {
    check_long(arch, quant, dtype, false);
}

/// A hybrid model (linear-attention layers with a recurrent state beside attention layers),
/// checked as [`check_windowed`] checks a windowed one, the prefix reuse of KV alone aside.
fn check_hybrid(arch: &str, quant: Quant, dtype: Dtype) {
    check_long(arch, quant, dtype, true);
}

fn check_long(arch: &str, quant: Quant, dtype: Dtype, recurrent: bool) {
    wuwei::device::set_activations(wuwei::device::Activations::Checkpoint);
    let dir = make_model(arch, quant, dtype);
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 % 509) as u32 + 1).collect();
    let quantized = !matches!(quant, Quant::Float);
    let case = Case {
        what: format!("{arch} {} {}", quant_name(quant), dtype.name()),
        prompt,
        tolerance: dtype.tolerance(),
        exact_batches: quantized,
        greedy: if quantized { 12 } else { 0 },
        recurrent,
    };
    check_dir(dir.path(), &case);
    if !recurrent && !quantized && dtype == Dtype::F32 {
        windowed_layers_forget_only_what_no_query_sees(dir.path());
    }
    // The estimate takes activations in the checkpoint's dtype to be half precision, as
    // published checkpoints are.
    if dtype != Dtype::F32 {
        memory_estimate_counts_what_the_cache_holds(dir.path(), recurrent);
    }
}

/// Windowed layers keep only their window (the random configs' windows are 16), in a
/// sequence's own cache and in the slot pool: over a prompt of many windows in chunks and
/// hundreds of decode steps — enough for the buffers to move forward several times — a own
/// cache's logits are bit for bit those of a cache that forgets nothing (KV-shared layers,
/// which read a windowed layer's stored keys, included); a pooled sequence decoding beside
/// two others of other lengths (their rows forgetting at other times) agrees within the
/// tolerance; and the windowed layers hold a fraction of the memory.
fn windowed_layers_forget_only_what_no_query_sees(dir: &Path) {
    let (_, model) = load_model_dir(dir, WeightsMode::Native).unwrap();
    let layers = model.num_layers();
    let mut forgets = DenseKvCache::new(layers);
    let mut keeps = KeepsAll(DenseKvCache::new(layers));
    let pool = SharedSlots::new(layers);
    let mut pooled: Vec<SlotKvCache> = (0..3).map(|_| pool.acquire()).collect();
    let prompt: Vec<u32> = (0..700).map(|i| (i * 37 % 509) as u32 + 1).collect();
    let run = |batch: &mut [BatchSeq<'_>], ids: &[u32]| {
        to_vec(&model.forward(&tokens(ids), batch, Logits::Last).unwrap())
    };
    let next = |cache: &mut dyn KvCache, ids: &[u32]| {
        run(
            &mut [BatchSeq {
                len: ids.len(),
                cache,
            }],
            ids,
        )
    };
    let close = |w: &str, a: &[f32], b: &[f32]| assert_within(w, a, b, TOLERANCE);
    // The other two pooled sequences: 100 and 300 prompt positions.
    for (i, n) in [(1, 100), (2, 300)] {
        next(&mut pooled[i], &prompt[..n]);
    }
    for chunk in prompt.chunks(128) {
        let want = next(&mut keeps, chunk);
        assert_eq!(next(&mut forgets, chunk), want, "prefill");
        close("pooled prefill", &next(&mut pooled[0], chunk), &want);
    }
    for step in 0..300u32 {
        let t = [step * 7 % 509 + 1];
        let want = next(&mut keeps, &t);
        assert_eq!(next(&mut forgets, &t), want, "decode {step}");
        let [a, b, c] = &mut pooled[..] else {
            unreachable!()
        };
        let mut batch = [a, b, c].map(|cache| BatchSeq { len: 1, cache });
        let out = run(&mut batch, &[t[0], 3, 4]);
        close(&format!("pooled decode {step}"), &out[..want.len()], &want);
    }
    // 1,000 positions: a windowed layer holds its window and room to write (< 300 here).
    let held = |c: &DenseKvCache, l: usize| c.layer(l).map(|((k, _), first)| (k.shape()[2], first));
    let windowed = (0..layers)
        .filter(|&l| held(&forgets, l) != held(&keeps.0, l))
        .inspect(|&l| {
            assert!(matches!(held(&forgets, l), Some((n, first)) if n < 300 && first > 700));
            assert!(pool.lock().first(l, 0) > 700, "the pooled row forgot too");
        })
        .count();
    assert!(windowed > 0, "no layer forgot anything");
    assert!(forgets.nbytes() < keeps.0.nbytes());
}

/// A dense cache whose windowed layers forget nothing: it stores them as full layers and
/// hands out the window (the trait's own `update_and_fetch_window`).
struct KeepsAll(DenseKvCache);

impl KvCache for KeepsAll {
    fn offset(&self) -> usize {
        self.0.offset()
    }
    fn update_and_fetch(
        &mut self,
        layer: usize,
        keys: Array,
        values: Array,
    ) -> Result<(Array, Array), mlx_rs::error::Exception> {
        self.0.update_and_fetch(layer, keys, values)
    }
    fn advance(&mut self, n: usize) {
        self.0.advance(n)
    }
    fn range(
        &self,
        layer: usize,
        start: i32,
        end: i32,
    ) -> Result<Option<(Array, Array)>, mlx_rs::error::Exception> {
        self.0.range(layer, start, end)
    }
    fn num_layers(&self) -> usize {
        self.0.num_layers()
    }
    fn reset(&mut self) {
        self.0.reset()
    }
    fn state(&mut self, layer: usize) -> &mut Option<Vec<Array>> {
        self.0.state(layer)
    }
}

/// The registry's estimate (from config.json alone) of a model's memory per token and per
/// sequence is what a sequence's cache holds: KV only for the layers that keep it (attention
/// layers of a hybrid model, the layers KV-shared ones read, each with its own head shape),
/// the sliding-window layers' share of it (the layers that forget old positions over a prompt
/// of many windows), and the recurrent state of a hybrid model.
fn memory_estimate_counts_what_the_cache_holds(dir: &Path, recurrent: bool) {
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    let facts = wuwei::integrity::check_model(dir).unwrap();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let (_, model) = load_model_dir(dir, WeightsMode::Native).unwrap();
    let mut cache = DenseKvCache::new(model.num_layers());
    let prompt: Vec<u32> = (0..450).map(|i| (i * 37 % 509) as u32 + 1).collect();
    for chunk in prompt.chunks(150) {
        run_ours(model.as_ref(), chunk, &[], &mut cache);
    }
    let mut state_bytes = 0;
    let (mut kv_per_token, mut windowed_per_token) = (0, 0);
    for layer in 0..model.num_layers() {
        if let Some(state) = cache.state(layer).as_ref() {
            state_bytes += state.iter().map(Array::nbytes).sum::<usize>();
        }
        if let Some((k, v)) = cache.range(layer, 449, 450).unwrap() {
            kv_per_token += k.nbytes() + v.nbytes();
            if cache.range(layer, 0, 1).unwrap().is_none() {
                windowed_per_token += k.nbytes() + v.nbytes();
            }
        }
    }
    assert!(kv_per_token > 0 && (state_bytes > 0) == recurrent);
    assert_eq!(facts.state_bytes_per_sequence, state_bytes as u64);
    assert_eq!(facts.kv_bytes_per_token, kv_per_token as u64);
    let windowed = facts.windowed_kv.map_or(0, |w| w.bytes_per_token);
    assert_eq!(windowed, windowed_per_token as u64);
    assert_eq!(
        windowed > 0,
        !recurrent,
        "the windowed models here have windowed layers"
    );
}

fn quant_name(quant: Quant) -> String {
    match quant {
        Quant::Float => "float".to_string(),
        Quant::Affine(bits) => format!("{bits}-bit"),
        Quant::Mode(mode) => mode.to_string(),
    }
}

/// `--weights dequantized` (the other matrices expanded to float32, the experts as stored)
/// agrees with mlx-lm too (float matmuls against the expanded weights round differently from
/// quantized matmuls: ~4e-7 here).
fn dequantized_mode_agrees(dir: &Path, case: &Case) {
    let spec = json!({"prompt": case.prompt, "decode": []}).to_string();
    let script = root().join("tests/reference/mlx_lm_logits.py");
    let reference: Value = serde_json::from_str(&python(&[
        script.to_str().unwrap(),
        dir.to_str().unwrap(),
        &spec,
    ]))
    .unwrap();
    let (_, model) = load_model_dir(dir, WeightsMode::Dequantized).unwrap();
    let pool = SharedSlots::new(model.num_layers());
    let (p, _) = run_ours(model.as_ref(), &case.prompt, &[], &mut pool.acquire());
    assert_within(
        &format!("{} dequantized prompt", case.what),
        &p,
        &flatten(&reference["prompt"]),
        case.tolerance,
    );
}

/// The registry's estimate of a model's weight memory (read from the safetensors headers,
/// without loading) is every tensor's bytes as loaded: all experts, not the active ones.
fn memory_estimate_counts_every_expert(dir: &Path, quantized: bool) {
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    let facts = wuwei::integrity::check_model(dir).unwrap();
    let mut tensors = Array::load_safetensors(dir.join("model.safetensors")).unwrap();
    if let Some(dtype) = wuwei::model::compute_dtype() {
        wuwei::model::weights::cast_floats(&mut tensors, dtype).unwrap();
    }
    let experts: usize = tensors
        .iter()
        .filter(|(name, _)| name.contains(".switch_mlp.") || name.contains(".experts."))
        .map(|(_, a)| a.nbytes())
        .sum();
    let all: usize = tensors.values().map(Array::nbytes).sum();
    assert!(experts > all / 2, "the experts are most of the model");
    assert_eq!(facts.weights_native, all as u64);
    // Dequantized, the experts stay as stored while the rest expands (at most 8x, 4-bit).
    let (deq, experts, rest) = (
        facts.weights_dequantized,
        experts as u64,
        (all - experts) as u64,
    );
    if quantized {
        assert!(
            deq > facts.weights_native && deq <= experts + 8 * rest,
            "{deq}"
        );
    } else {
        assert_eq!(deq, facts.weights_native);
    }
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
}

/// One parity check of the model in a folder against mlx-lm.
struct Case {
    what: String,
    prompt: Vec<u32>,
    /// Largest |ours - mlx-lm| allowed in any logit.
    tolerance: f32,
    /// Whether batching must leave a sequence's logits bit for bit the same.
    exact_batches: bool,
    /// Greedy tokens to compare with mlx-lm's (0: none).
    greedy: usize,
    /// Linear-attention layers keep a recurrent state beside the KV: a prefix is not
    /// reused from keys and values alone (the engine's prefix cache is off for such models).
    recurrent: bool,
}

fn check_dir(dir: &Path, case: &Case) {
    let (what, prompt, tolerance) = (case.what.as_str(), &case.prompt, case.tolerance);
    let close =
        |w: &str, ours: &[f32], reference: &[f32]| assert_within(w, ours, reference, tolerance);
    let decode: Vec<u32> = vec![5, 400, 33, 2];
    let spec = json!({"prompt": prompt, "decode": decode, "greedy": case.greedy}).to_string();
    let script = root().join("tests/reference/mlx_lm_logits.py");
    let reference: Value = serde_json::from_str(&python(&[
        script.to_str().unwrap(),
        dir.to_str().unwrap(),
        &spec,
    ]))
    .unwrap();

    let (_, model) = load_model_dir(dir, WeightsMode::Native).unwrap();
    let mut dense = DenseKvCache::new(model.num_layers());
    let (p, steps) = run_ours(model.as_ref(), prompt, &decode, &mut dense);
    // The engine's slot pool (batched decode attention) agrees with the reference too.
    let pool = SharedSlots::new(model.num_layers());
    let (_, pooled) = run_ours(model.as_ref(), prompt, &decode, &mut pool.acquire());
    for (i, step) in pooled.iter().enumerate() {
        close(
            &format!("{what} pooled decode {i}"),
            step,
            &flatten(&reference["decode"][i]),
        );
    }
    pooled_batches_are_invariant(model.as_ref(), what, case.exact_batches, tolerance, None);
    close(
        &format!("{what} prompt"),
        &p,
        &flatten(&reference["prompt"]),
    );
    for (i, step) in steps.iter().enumerate() {
        close(
            &format!("{what} decode {i}"),
            step,
            &flatten(&reference["decode"][i]),
        );
    }

    // Chunked prefill (4 + rest) gives the same last-position logits.
    let mut cache = DenseKvCache::new(model.num_layers());
    let mut b = [BatchSeq {
        len: 4,
        cache: &mut cache,
    }];
    model
        .forward(&tokens(&prompt[..4]), &mut b, Logits::Last)
        .unwrap();
    let mut b = [BatchSeq {
        len: prompt.len() - 4,
        cache: &mut cache,
    }];
    let chunked = to_vec(
        &model
            .forward(&tokens(&prompt[4..]), &mut b, Logits::Last)
            .unwrap(),
    );
    let vocab = chunked.len();
    close(
        &format!("{what} chunked prefill"),
        &chunked,
        &p[p.len() - vocab..],
    );

    if !case.recurrent {
        prefix_reuse_agrees(model.as_ref(), what, prompt, &p, tolerance);
    }

    // Batched with another sequence that is mid-decode: our sequence's logits are unchanged.
    let mut other = DenseKvCache::new(model.num_layers());
    let mut b = [BatchSeq {
        len: 3,
        cache: &mut other,
    }];
    model
        .forward(&tokens(&[9, 8, 7]), &mut b, Logits::Last)
        .unwrap();
    let mut mine = DenseKvCache::new(model.num_layers());
    let mut both: Vec<u32> = vec![6];
    both.extend(prompt);
    let mut b = [
        BatchSeq {
            len: 1,
            cache: &mut other,
        },
        BatchSeq {
            len: prompt.len(),
            cache: &mut mine,
        },
    ];
    let batched = to_vec(&model.forward(&tokens(&both), &mut b, Logits::Last).unwrap());
    close(
        &format!("{what} batched"),
        &batched[vocab..],
        &p[p.len() - vocab..],
    );

    if case.greedy > 0 {
        let want: Vec<u32> = reference["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let pool = SharedSlots::new(model.num_layers());
        let got = greedy(model.as_ref(), prompt, case.greedy, &mut pool.acquire());
        assert_eq!(got, want, "{what}: greedy tokens");
    }
}

/// A prefix reused from another sequence's cache (as a prefix-cache hit loads it, longer than
/// the sliding windows), then the rest of the prompt: the same last logits as `p`'s.
fn prefix_reuse_agrees(
    model: &dyn LanguageModel,
    what: &str,
    prompt: &[u32],
    p: &[f32],
    tolerance: f32,
) {
    let close =
        |w: &str, ours: &[f32], reference: &[f32]| assert_within(w, ours, reference, tolerance);
    let vocab = p.len() / prompt.len();
    let reused = prompt.len() * 3 / 4;
    let mut donor = DenseKvCache::new(model.num_layers());
    let mut b = [BatchSeq {
        len: reused,
        cache: &mut donor,
    }];
    model
        .forward(&tokens(&prompt[..reused]), &mut b, Logits::Last)
        .unwrap();
    let pool = SharedSlots::new(model.num_layers());
    let mut hit = pool.acquire();
    for layer in 0..model.num_layers() {
        let (k, v) = donor.range(layer, 0, reused as i32).unwrap().unwrap();
        hit.load_layer(layer, k, v).unwrap();
    }
    hit.advance(reused);
    let mut b = [BatchSeq {
        len: prompt.len() - reused,
        cache: &mut hit,
    }];
    let after_hit = to_vec(
        &model
            .forward(&tokens(&prompt[reused..]), &mut b, Logits::Last)
            .unwrap(),
    );
    close(
        &format!("{what} after a reused prefix"),
        &after_hit,
        &p[p.len() - vocab..],
    );
}

/// The first of the largest logits, as `mx.argmax` picks.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// `n` greedy tokens after `prompt`.
fn greedy(
    model: &dyn LanguageModel,
    prompt: &[u32],
    n: usize,
    cache: &mut dyn KvCache,
) -> Vec<u32> {
    let mut b = [BatchSeq {
        len: prompt.len(),
        cache: &mut *cache,
    }];
    let mut logits = to_vec(
        &model
            .forward(&tokens(prompt), &mut b, Logits::Last)
            .unwrap(),
    );
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = argmax(&logits);
        out.push(t);
        let mut b = [BatchSeq {
            len: 1,
            cache: &mut *cache,
        }];
        logits = to_vec(&model.forward(&tokens(&[t]), &mut b, Logits::Last).unwrap());
    }
    out
}

/// Sequences of different lengths (one past a decode bucket boundary) decoding in one pooled
/// batch, and beside another sequence's prefill chunk, give the logits each gives alone:
/// bit for bit with quantized weights; with dense weights within the tolerance, because BLAS
/// rounds a row differently depending on how many rows a matmul has (true of the MLPs before
/// attention is reached, whatever attention does).
fn pooled_batches_are_invariant(
    model: &dyn LanguageModel,
    what: &str,
    exact: bool,
    tolerance: f32,
    quant: Option<KvQuant>,
) {
    let layers = model.num_layers();
    let new_pool = || SharedSlots::new(layers).quantized(quant);
    let own_cache = || -> Box<dyn KvCache> {
        match quant {
            Some(q) => Box::new(QuantizedKvCache::new(layers, q)),
            None => Box::new(DenseKvCache::new(layers)),
        }
    };
    let same = |what: &str, ours: &[f32], alone: &[f32]| {
        if exact {
            assert_eq!(ours, alone, "{what}");
        } else {
            assert_within(what, ours, alone, tolerance);
        }
    };
    let prompts: Vec<Vec<u32>> = vec![
        vec![1, 17, 300, 42, 7],
        (0..300).map(|i| (i * 7 % 500) as u32 + 1).collect(),
        vec![9, 8, 7, 6, 5, 4, 3, 2, 1, 9, 8],
    ];
    let steps: Vec<u32> = vec![5, 400, 33];
    let alone: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .map(|p| run_ours(model, p, &steps, &mut new_pool().acquire()).1)
        .collect();

    let pool = new_pool();
    let mut caches: Vec<_> = prompts.iter().map(|_| pool.acquire()).collect();
    // Sequences 0 and 1 prefill together; 2 prefills during their first decode step.
    let mut flat: Vec<u32> = prompts[0].clone();
    flat.extend(&prompts[1]);
    let (c01, c2) = caches.split_at_mut(2);
    let (c0, c1) = c01.split_at_mut(1);
    let mut b = [
        BatchSeq {
            len: prompts[0].len(),
            cache: &mut c0[0],
        },
        BatchSeq {
            len: prompts[1].len(),
            cache: &mut c1[0],
        },
    ];
    model.forward(&tokens(&flat), &mut b, Logits::Last).unwrap();
    let mut flat = vec![steps[0], steps[0]];
    flat.extend(&prompts[2]);
    let mut b = [
        BatchSeq {
            len: 1,
            cache: &mut c0[0],
        },
        BatchSeq {
            len: 1,
            cache: &mut c1[0],
        },
        BatchSeq {
            len: prompts[2].len(),
            cache: &mut c2[0],
        },
    ];
    let first = to_vec(&model.forward(&tokens(&flat), &mut b, Logits::Last).unwrap());
    let vocab = first.len() / 3;
    for s in 0..2 {
        same(
            &format!("{what}: sequence {s}, decode beside a prefill chunk"),
            &first[s * vocab..(s + 1) * vocab],
            &alone[s][0],
        );
    }
    // A sequence outside the pool (the engine keeps long prompts out) joins from step 1.
    let mut own = own_cache();
    let own_alone = run_ours(model, &prompts[2], &steps, own_cache().as_mut()).1;
    let mut b = [BatchSeq {
        len: prompts[2].len(),
        cache: own.as_mut(),
    }];
    model
        .forward(&tokens(&prompts[2]), &mut b, Logits::Last)
        .unwrap();
    // Then all decode together; sequence 2 and the outsider are one step behind.
    for step in 1..steps.len() {
        let flat = vec![steps[step], steps[step], steps[step - 1], steps[step - 1]];
        let mut b: Vec<BatchSeq> = caches
            .iter_mut()
            .map(|c| BatchSeq {
                len: 1,
                cache: c as &mut dyn KvCache,
            })
            .collect();
        b.insert(
            2,
            BatchSeq {
                len: 1,
                cache: own.as_mut(),
            },
        );
        let out = to_vec(&model.forward(&tokens(&flat), &mut b, Logits::Last).unwrap());
        for s in 0..4 {
            let want = match s {
                2 => &own_alone[step - 1],
                3 => &alone[2][step - 1],
                _ => &alone[s][step],
            };
            same(
                &format!("{what}: sequence {s}, batched decode step {step}"),
                &out[s * vocab..(s + 1) * vocab],
                want,
            );
        }
    }
}

/// Quantized KV (`kv_bits`): the same logits as mlx-lm's `QuantizedKVCache` over a prompt
/// and decode steps, and the same greedy tokens.
fn check_quantized_kv(arch: &str, dtype: Dtype, bits: i32, group: i32, tolerance: f32) {
    wuwei::device::set_activations(wuwei::device::Activations::Checkpoint);
    let dir = make_model(arch, Quant::Float, dtype);
    let prompt: Vec<u32> = vec![1, 17, 300, 42, 7, 99, 256, 3, 511, 64, 128];
    let decode: Vec<u32> = vec![5, 400, 33, 2];
    let spec = json!({"prompt": prompt, "decode": decode, "greedy": 8,
        "kv_bits": bits, "kv_group_size": group})
    .to_string();
    let script = root().join("tests/reference/mlx_lm_logits.py");
    let reference: Value = serde_json::from_str(&python(&[
        script.to_str().unwrap(),
        dir.path().to_str().unwrap(),
        &spec,
    ]))
    .unwrap();
    let (_, model) = load_model_dir(dir.path(), WeightsMode::Native).unwrap();
    let quant = KvQuant::new(bits, group).unwrap();
    let what = format!("{arch} {} kv_bits={bits}", dtype.name());
    let mut cache = QuantizedKvCache::new(model.num_layers(), quant);
    let (p, steps) = run_ours(model.as_ref(), &prompt, &decode, &mut cache);
    let close = |w: &str, ours: &[f32], r: &Value| assert_within(w, ours, &flatten(r), tolerance);
    close(&format!("{what} prompt"), &p, &reference["prompt"]);
    for (i, step) in steps.iter().enumerate() {
        close(&format!("{what} decode {i}"), step, &reference["decode"][i]);
    }
    // Greedy tokens, and the float cache differs (the test sees quantization at all).
    let mut cache = QuantizedKvCache::new(model.num_layers(), quant);
    let greedy = greedy_tokens(model.as_ref(), &prompt, 8, &mut cache);
    let expected: Vec<u32> = reference["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(greedy, expected, "{what} greedy");
    let mut dense = DenseKvCache::new(model.num_layers());
    let (float, _) = run_ours(model.as_ref(), &prompt, &[], &mut dense);
    assert_ne!(
        float, p,
        "{what}: quantized KV changes the numbers a little"
    );
    // The engine's slot pool holding the same format: the reference's logits and tokens, and
    // a sequence's logits do not depend on what decodes beside it.
    let pool = SharedSlots::new(model.num_layers()).quantized(Some(quant));
    let (p, steps) = run_ours(model.as_ref(), &prompt, &decode, &mut pool.acquire());
    close(&format!("{what} pooled prompt"), &p, &reference["prompt"]);
    for (i, step) in steps.iter().enumerate() {
        let w = format!("{what} pooled decode {i}");
        close(&w, step, &reference["decode"][i]);
    }
    let greedy = greedy_tokens(model.as_ref(), &prompt, 8, &mut pool.acquire());
    assert_eq!(greedy, expected, "{what} pooled greedy");
    pooled_batches_are_invariant(model.as_ref(), &what, false, tolerance, Some(quant));
}

fn greedy_tokens(
    model: &dyn LanguageModel,
    prompt: &[u32],
    n: usize,
    cache: &mut dyn KvCache,
) -> Vec<u32> {
    let argmax = |a: Array| -> u32 {
        let v = to_vec(&a);
        let last = &v[v.len() - 512..];
        (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a)))
            .unwrap() as u32
    };
    let mut batch = [BatchSeq {
        len: prompt.len(),
        cache: &mut *cache,
    }];
    let mut tok = argmax(
        model
            .forward(&tokens(prompt), &mut batch, Logits::Last)
            .unwrap(),
    );
    let mut out = vec![tok];
    while out.len() < n {
        let mut batch = [BatchSeq {
            len: 1,
            cache: &mut *cache,
        }];
        tok = argmax(
            model
                .forward(&tokens(&[tok]), &mut batch, Logits::Last)
                .unwrap(),
        );
        out.push(tok);
    }
    out
}

#[test]
fn llama_kv8_bf16() {
    check_quantized_kv("llama", Dtype::Bf16, 8, 32, 0.0);
}

#[test]
fn qwen3_kv4() {
    check_quantized_kv("qwen3", Dtype::F32, 4, 64, TOLERANCE);
}

#[test]
fn llama_dense() {
    check("llama", 0, Dtype::F32);
}
#[test]
fn llama_q4() {
    check("llama", 4, Dtype::F32);
}
#[test]
fn llama3_rope_scaling_q8() {
    check("llama3", 8, Dtype::F32);
}
#[test]
fn qwen2_dense() {
    check("qwen2", 0, Dtype::F32);
}
#[test]
fn qwen2_q4() {
    check("qwen2", 4, Dtype::F32);
}
#[test]
fn qwen3_dense() {
    check("qwen3", 0, Dtype::F32);
}
#[test]
fn qwen3_q4() {
    check("qwen3", 4, Dtype::F32);
}

#[test]
fn qwen3_moe_float() {
    check_moe("qwen3_moe", Quant::Float, Dtype::F32);
}
#[test]
fn qwen3_moe_q4() {
    check_moe("qwen3_moe", Quant::Affine(4), Dtype::F32);
}
#[test]
fn minimax_float() {
    check_moe("minimax", Quant::Float, Dtype::F32);
}
#[test]
fn minimax_q4() {
    check_moe("minimax", Quant::Affine(4), Dtype::F32);
}
#[test]
fn glm4_moe_float() {
    check_moe("glm4_moe", Quant::Float, Dtype::F32);
}
#[test]
fn glm4_moe_q4() {
    check_moe("glm4_moe", Quant::Affine(4), Dtype::F32);
}
#[test]
fn qwen3_moe_mxfp4() {
    check_moe("qwen3_moe", Quant::Mode("mxfp4"), Dtype::F32);
}
#[test]
fn minimax_mxfp8() {
    check_moe("minimax", Quant::Mode("mxfp8"), Dtype::F32);
}
#[test]
fn glm4_moe_nvfp4() {
    check_moe("glm4_moe", Quant::Mode("nvfp4"), Dtype::F32);
}
#[test]
fn gpt_oss_float() {
    check_moe("gpt_oss", Quant::Float, Dtype::F32);
}
#[test]
fn gpt_oss_mxfp4() {
    check_moe("gpt_oss", Quant::Mode("mxfp4"), Dtype::F32);
}

/// A checkpoint in the Hugging Face layout (each expert's projections apart, minimax's named
/// w1/w2/w3) loads as mlx-lm's `sanitize` stacks it: the same logits as the stacked one.
fn per_expert_layout_loads(arch: &str) {
    let dir = make_model(arch, Quant::Affine(4), Dtype::F32);
    let stacked = Array::load_safetensors(dir.path().join("model.safetensors")).unwrap();
    let hf_names = if arch == "minimax" {
        [("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")]
    } else {
        [
            ("gate_proj", "gate_proj"),
            ("up_proj", "up_proj"),
            ("down_proj", "down_proj"),
        ]
    };
    let mut split = std::collections::HashMap::new();
    for (name, a) in &stacked {
        let Some((block, rest)) = name.split_once(".switch_mlp.") else {
            split.insert(name.clone(), a.clone());
            continue;
        };
        let (proj, part) = rest.split_once('.').unwrap();
        let hf = hf_names.iter().find(|(ours, _)| *ours == proj).unwrap().1;
        for e in 0..a.shape()[0] {
            let expert = a.take_axis(Array::from_int(e), 0).unwrap();
            split.insert(format!("{block}.experts.{e}.{hf}.{part}"), expert);
        }
    }
    let hf = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("config.json"),
        hf.path().join("config.json"),
    )
    .unwrap();
    Array::save_safetensors(split.iter(), None, hf.path().join("model.safetensors")).unwrap();

    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 % 509) as u32 + 1).collect();
    let logits = |dir: &Path| {
        let (_, model) = load_model_dir(dir, WeightsMode::Native).unwrap();
        let mut cache = DenseKvCache::new(model.num_layers());
        run_ours(model.as_ref(), &prompt, &[5], &mut cache)
    };
    assert_eq!(
        logits(hf.path()),
        logits(dir.path()),
        "{arch}: per-expert layout"
    );
}

#[test]
fn per_expert_layouts_load() {
    for arch in ["qwen3_moe", "minimax", "glm4_moe"] {
        per_expert_layout_loads(arch);
    }
}
#[test]
fn llama_bf16() {
    check("llama", 0, Dtype::Bf16);
}
#[test]
fn llama_q4_bf16() {
    check("llama", 4, Dtype::Bf16);
}
#[test]
fn llama3_q8_f16() {
    check("llama3", 8, Dtype::F16);
}
#[test]
fn qwen2_q4_f16() {
    check("qwen2", 4, Dtype::F16);
}
#[test]
fn qwen3_bf16() {
    check("qwen3", 0, Dtype::Bf16);
}
#[test]
fn qwen3_q8_bf16() {
    check("qwen3", 8, Dtype::Bf16);
}
// Quantized MoE checkpoints in half precision, as they are published (MLX's CPU gather_mm
// takes float32 only, for mlx-lm as for us, so float MoE models run in float32 on the CPU).
#[test]
fn qwen3_moe_q4_bf16() {
    check_moe("qwen3_moe", Quant::Affine(4), Dtype::Bf16);
}
#[test]
fn minimax_q8_bf16() {
    check_moe("minimax", Quant::Affine(8), Dtype::Bf16);
}
#[test]
fn glm4_moe_q4_f16() {
    check_moe("glm4_moe", Quant::Affine(4), Dtype::F16);
}
#[test]
fn gpt_oss_mxfp4_bf16() {
    check_moe("gpt_oss", Quant::Mode("mxfp4"), Dtype::Bf16);
}

#[test]
fn gemma3_text_float() {
    check_windowed("gemma3_text", Quant::Float, Dtype::F32);
}
#[test]
fn gemma3_text_q4() {
    check_windowed("gemma3_text", Quant::Affine(4), Dtype::F32);
}
#[test]
fn gemma3_text_bf16() {
    check_windowed("gemma3_text", Quant::Float, Dtype::Bf16);
}
// float16 sums each residual in float32, clipped to float16's range (clip_residual).
#[test]
fn gemma3_text_q4_f16() {
    check_windowed("gemma3_text", Quant::Affine(4), Dtype::F16);
}

/// A `model_type: gemma3` checkpoint (the text model's config under `text_config`, its tensors
/// under `language_model.`, as mlx-lm's gemma3.py wraps gemma3_text) gives the text model's
/// logits.
#[test]
fn gemma3_wrapper_loads_the_text_model() {
    wrapper_loads_the_text_model("gemma3_text", "gemma3");
}

/// A wrapped checkpoint (`wrapper`: the text model's config under `text_config`, its tensors
/// under `language_model.`, as mlx-lm's gemma3.py/gemma4.py wrap the text model) gives the
/// text model's logits.
fn wrapper_loads_the_text_model(arch: &str, wrapper: &str) {
    let dir = make_model(arch, Quant::Affine(4), Dtype::F32);
    let text: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    let mut inner = text.clone();
    let quantization = inner.as_object_mut().unwrap().remove("quantization");
    let mut wrapped = json!({
        "model_type": wrapper,
        "vocab_size": text["vocab_size"],
        "text_config": inner,
    });
    if let Some(q) = quantization {
        wrapped["quantization"] = q;
    }
    let tensors = Array::load_safetensors(dir.path().join("model.safetensors")).unwrap();
    let renamed: std::collections::HashMap<String, Array> = tensors
        .into_iter()
        .map(|(name, a)| (format!("language_model.{name}"), a))
        .collect();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("config.json"), wrapped.to_string()).unwrap();
    Array::save_safetensors(renamed.iter(), None, out.path().join("model.safetensors")).unwrap();

    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 % 509) as u32 + 1).collect();
    let logits = |dir: &Path| {
        let (_, model) = load_model_dir(dir, WeightsMode::Native).unwrap();
        let mut cache = DenseKvCache::new(model.num_layers());
        run_ours(model.as_ref(), &prompt, &[5], &mut cache)
    };
    assert_eq!(logits(out.path()), logits(dir.path()), "{wrapper} wrapper");
}

// Gemma 4: per-layer inputs, KV-shared layers, wider full-attention heads with proportional
// RoPE, soft-capped logits (gemma4_text); the MoE layout with values equal to keys on full
// layers (gemma4_text_moe). Float experts in half precision are not run: MLX's CPU gather_mm
// takes float32 only (mlx-lm fails the same way).
#[test]
fn gemma4_text_float() {
    check_windowed("gemma4_text", Quant::Float, Dtype::F32);
}
#[test]
fn gemma4_text_q4() {
    check_windowed("gemma4_text", Quant::Affine(4), Dtype::F32);
}
#[test]
fn gemma4_text_bf16() {
    check_windowed("gemma4_text", Quant::Float, Dtype::Bf16);
}
#[test]
fn gemma4_text_moe_float() {
    check_windowed("gemma4_text_moe", Quant::Float, Dtype::F32);
}
#[test]
fn gemma4_text_moe_q4_bf16() {
    check_windowed("gemma4_text_moe", Quant::Affine(4), Dtype::Bf16);
}
/// A Hugging Face Gemma 4 MoE checkpoint keeps each layer's experts as `experts.gate_up_proj`
/// (gate and up stacked) and `experts.down_proj`; loaded, it is the model mlx-lm's sanitize
/// makes of it.
#[test]
fn gemma4_hf_experts_load() {
    let dir = make_model("gemma4_text_moe", Quant::Float, Dtype::F32);
    let tensors = Array::load_safetensors(dir.path().join("model.safetensors")).unwrap();
    let mut hf = std::collections::HashMap::new();
    for (name, a) in &tensors {
        if let Some(p) = name.strip_suffix(".experts.switch_glu.gate_proj.weight") {
            let up = &tensors[&format!("{p}.experts.switch_glu.up_proj.weight")];
            let both = mlx_rs::ops::concatenate(&[a, up], -2).unwrap();
            hf.insert(format!("{p}.experts.gate_up_proj"), both);
        } else if let Some(p) = name.strip_suffix(".experts.switch_glu.down_proj.weight") {
            hf.insert(format!("{p}.experts.down_proj"), a.clone());
        } else if !name.ends_with(".experts.switch_glu.up_proj.weight") {
            hf.insert(name.clone(), a.clone());
        }
    }
    let out = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("config.json"),
        out.path().join("config.json"),
    )
    .unwrap();
    Array::save_safetensors(hf.iter(), None, out.path().join("model.safetensors")).unwrap();
    let prompt: Vec<u32> = (0..12).map(|i| (i * 37 % 509) as u32 + 1).collect();
    let logits = |dir: &Path| {
        let (_, model) = load_model_dir(dir, WeightsMode::Native).unwrap();
        let mut cache = DenseKvCache::new(model.num_layers());
        run_ours(model.as_ref(), &prompt, &[5], &mut cache)
    };
    assert_eq!(logits(out.path()), logits(dir.path()), "HF experts layout");
}
#[test]
fn gemma4_wrapper_loads_the_text_model() {
    wrapper_loads_the_text_model("gemma4_text", "gemma4");
}

#[test]
fn qwen3_next_float() {
    check_hybrid("qwen3_next", Quant::Float, Dtype::F32);
}
#[test]
fn qwen3_next_q4() {
    check_hybrid("qwen3_next", Quant::Affine(4), Dtype::F32);
}
#[test]
fn qwen3_next_q4_bf16() {
    check_hybrid("qwen3_next", Quant::Affine(4), Dtype::Bf16);
}
#[test]
fn qwen3_5_float() {
    check_hybrid("qwen3_5", Quant::Float, Dtype::F32);
}
#[test]
fn qwen3_5_bf16() {
    check_hybrid("qwen3_5", Quant::Float, Dtype::Bf16);
}
#[test]
fn qwen3_5_moe_q4() {
    check_hybrid("qwen3_5_moe", Quant::Affine(4), Dtype::F32);
}
#[test]
fn qwen3_5_moe_q4_bf16() {
    check_hybrid("qwen3_5_moe", Quant::Affine(4), Dtype::Bf16);
}

/// A Qwen3.5 config with the text model's fields under `text_config` (as Hugging Face
/// publishes the multimodal checkpoints) loads the same model as the flat one mlx-lm writes.
#[test]
fn qwen3_5_text_config_loads_the_same_model() {
    let dir = make_model("qwen3_5", Quant::Affine(4), Dtype::F32);
    let flat: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    let mut inner = flat.clone();
    let quantization = inner.as_object_mut().unwrap().remove("quantization");
    let mut wrapped = json!({"model_type": "qwen3_5", "text_config": inner});
    if let Some(q) = quantization {
        wrapped["quantization"] = q;
    }
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("config.json"), wrapped.to_string()).unwrap();
    std::fs::copy(
        dir.path().join("model.safetensors"),
        out.path().join("model.safetensors"),
    )
    .unwrap();
    let prompt: Vec<u32> = (0..20).map(|i| (i * 37 % 509) as u32 + 1).collect();
    let logits = |dir: &Path| {
        let (_, model) = load_model_dir(dir, WeightsMode::Native).unwrap();
        let mut cache = DenseKvCache::new(model.num_layers());
        run_ours(model.as_ref(), &prompt, &[5], &mut cache)
    };
    assert_eq!(
        logits(out.path()),
        logits(dir.path()),
        "qwen3_5 text_config"
    );
}

/// A hybrid checkpoint in the Hugging Face layout (conv kernels `[channels, 1, kernel]`,
/// RMSNorm weights stored minus one, qwen3_5's `model.language_model.` names) loads as
/// mlx-lm's `sanitize` converts it: the same logits as the MLX layout.
fn hf_layout_loads(arch: &str) {
    let dir = make_model(arch, Quant::Float, Dtype::F32);
    let mlx = Array::load_safetensors(dir.path().join("model.safetensors")).unwrap();
    let norms = [
        ".input_layernorm.weight",
        ".post_attention_layernorm.weight",
        "model.norm.weight",
        ".q_norm.weight",
        ".k_norm.weight",
    ];
    let mut hf = std::collections::HashMap::new();
    for (name, a) in &mlx {
        let mut a = a.clone();
        if name.ends_with(".conv1d.weight") {
            a = a.swap_axes(1, 2).unwrap();
        } else if norms.iter().any(|sfx| name.ends_with(sfx)) {
            a = &a - Array::from_f32(1.0);
        }
        let name = if let Some(rest) = name.strip_prefix("language_model.model.") {
            format!("model.language_model.{rest}")
        } else if let Some(rest) = name.strip_prefix("language_model.") {
            rest.to_string()
        } else {
            name.clone()
        };
        hf.insert(name, a);
    }
    let out = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("config.json"),
        out.path().join("config.json"),
    )
    .unwrap();
    Array::save_safetensors(hf.iter(), None, out.path().join("model.safetensors")).unwrap();
    let prompt: Vec<u32> = (0..20).map(|i| (i * 37 % 509) as u32 + 1).collect();
    let logits = |dir: &Path| {
        let (_, model) = load_model_dir(dir, WeightsMode::Native).unwrap();
        let mut cache = DenseKvCache::new(model.num_layers());
        run_ours(model.as_ref(), &prompt, &[5], &mut cache)
    };
    assert_eq!(logits(out.path()), logits(dir.path()), "{arch}: HF layout");
}

#[test]
fn hybrid_hf_layouts_load() {
    wuwei::device::set_activations(wuwei::device::Activations::Checkpoint);
    for arch in ["qwen3_next", "qwen3_5"] {
        hf_layout_loads(arch);
    }
}
