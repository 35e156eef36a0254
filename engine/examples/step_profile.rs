//! Times one decode step of the real model at batch sizes 1..16 (dequantized weights), to see
//! how batched decode scales: with the engine's slot pool (batched decode attention), and
//! with one dense cache per sequence (attention per sequence).
//! `cargo run --release --example step_profile -- MODEL_DIR`
use std::time::Instant;

use mlx_rs::Array;
use wuwei::kv::cache::{DenseKvCache, KvCache};
use wuwei::kv::slots::SharedSlots;
use wuwei::model::{load_model_dir, BatchSeq, Logits, WeightsMode};

fn main() {
    let dir = std::env::args().nth(1).expect("model dir");
    let (_, model) = load_model_dir(dir.as_ref(), WeightsMode::Dequantized).unwrap();
    let pooled = std::env::args().nth(2).as_deref() != Some("dense");
    println!(
        "{}",
        if pooled {
            "slot pool"
        } else {
            "dense per sequence (pass `pool` or `dense`)"
        }
    );
    for &b in &[1usize, 2, 4, 8, 16] {
        let pool = SharedSlots::new(model.num_layers());
        let mut caches: Vec<Box<dyn KvCache>> = (0..b)
            .map(|_| -> Box<dyn KvCache> {
                if pooled {
                    Box::new(pool.acquire())
                } else {
                    Box::new(DenseKvCache::new(model.num_layers()))
                }
            })
            .collect();
        // Prefill 64 tokens each, one sequence at a time.
        for c in caches.iter_mut() {
            let t = Array::from_slice(&(1..65).collect::<Vec<i32>>(), &[1, 64]);
            let mut batch = [BatchSeq {
                len: 64,
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
