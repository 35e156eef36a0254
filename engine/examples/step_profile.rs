//! Times one decode step of the real model at batch sizes 1..16 (dequantized weights), to see
//! how batched decode scales: with the engine's slot pool (batched decode attention), and
//! with one cache per sequence (attention per sequence); KV as floats or 8-bit.
//! `cargo run --release --example step_profile -- MODEL_DIR [pool|dense|pool-kv8|own-kv8] [PROMPT_TOKENS]`
use std::time::Instant;

use mlx_rs::Array;
use wuwei::kv::cache::{DenseKvCache, KvCache};
use wuwei::kv::quant::{KvQuant, QuantizedKvCache};
use wuwei::kv::slots::SharedSlots;
use wuwei::model::{load_model_dir, BatchSeq, Logits, WeightsMode};

fn main() {
    let dir = std::env::args().nth(1).expect("model dir");
    let (_, model) = load_model_dir(dir.as_ref(), WeightsMode::Dequantized).unwrap();
    let mode = std::env::args().nth(2).unwrap_or_else(|| "pool".into());
    let prompt: i32 = std::env::args().nth(3).map_or(64, |n| n.parse().unwrap());
    let kv8 = mode.ends_with("-kv8").then(|| KvQuant::new(8, 64).unwrap());
    let pooled = mode.starts_with("pool");
    println!(
        "{mode}: slot pool {pooled}, 8-bit KV {}, {prompt}-token prompts",
        kv8.is_some()
    );
    let layers = model.num_layers();
    for &b in &[1usize, 2, 4, 8, 16] {
        let pool = SharedSlots::new(layers).quantized(kv8);
        let mut caches: Vec<Box<dyn KvCache>> = (0..b)
            .map(|_| -> Box<dyn KvCache> {
                match (pooled, kv8) {
                    (true, _) => Box::new(pool.acquire()),
                    (false, Some(q)) => Box::new(QuantizedKvCache::new(layers, q)),
                    (false, None) => Box::new(DenseKvCache::new(layers)),
                }
            })
            .collect();
        // Prefill each prompt, one sequence at a time.
        for c in caches.iter_mut() {
            let t = Array::from_slice(&(1..prompt + 1).collect::<Vec<i32>>(), &[1, prompt]);
            let mut batch = [BatchSeq {
                len: prompt as usize,
                cache: c.as_mut(),
            }];
            model
                .forward(&t, &mut batch, Logits::Last)
                .unwrap()
                .eval()
                .unwrap();
        }
        let steps = 10;
        let start = Instant::now();
        for _ in 0..steps {
            let t = Array::from_slice(&vec![42i32; b], &[1, b as i32]);
            let mut batch: Vec<BatchSeq> = caches
                .iter_mut()
                .map(|c| BatchSeq {
                    len: 1,
                    cache: c.as_mut(),
                })
                .collect();
            model
                .forward(&t, &mut batch, Logits::Last)
                .unwrap()
                .eval()
                .unwrap();
        }
        let per = start.elapsed().as_secs_f64() / steps as f64;
        println!(
            "batch {b:2}: {:6.1} ms/step, {:6.1} tok/s",
            per * 1e3,
            b as f64 / per
        );
    }
}
