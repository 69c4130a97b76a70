//! nanoGPT's CPU configuration (4 layers, 4 heads, width 128, context 64, vocabulary 65;
//! random weights and tokens): training tokens/s at batch 12 with AdamW, and generation
//! tokens/s through the key/value caches against the full-window path (the baseline,
//! in the same process): within the context, where every cached token runs one
//! position, and over 200 tokens, where the window slides after the first 64 and the
//! cached path runs whole windows too (see `kiln::train::generate`).
//!
//! `cargo bench --bench gpt` prints tokens/s, dispatches and bytes read back per
//! generated token (the median of three alternating runs of each path), the ratio
//! cached / full-window, and the load average; about a minute on lavapipe. `-- STEPS`
//! sets the timed training steps (default 24).

use kiln::nn::blocks::{gpt, GptConfig};
use kiln::train::{Decoding, Sampling};
use kiln::{Device, FitOptions, Loss, Optimizer, Trainer};
use std::time::Instant;

const VOCAB: usize = 65;
const CONTEXT: usize = 64;
const BATCH: usize = 12;

fn trainer(device: &Device) -> Trainer {
    let config = GptConfig {
        vocab: VOCAB,
        context: CONTEXT,
        width: 128,
        heads: 4,
        layers: 4,
        dropout: 0.0,
    };
    gpt(&config)
        .expect("gpt")
        .build(device, 1)
        .expect("build")
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adamw(1e-3, 0.1),
            &[],
        )
        .expect("compile")
}

/// `rows` windows of token ids and their next tokens, from a cheap deterministic mix.
fn tokens(rows: usize) -> (Vec<f32>, Vec<f32>) {
    let id = |i: usize| ((i.wrapping_mul(2654435761) >> 7) % VOCAB) as f32;
    let x = (0..rows * CONTEXT).map(id).collect();
    let y = (0..rows * CONTEXT).map(|i| id(i + 1)).collect();
    (x, y)
}

/// Training tokens/s over `steps` steps of batch 12, after two warm-up steps.
fn train(t: &mut Trainer, device: &Device, steps: usize) -> f64 {
    let fit = |t: &mut Trainer, steps: usize| {
        let (x, y) = tokens(steps * BATCH);
        let opts = FitOptions {
            shuffle: false,
            ..FitOptions::new(1, BATCH)
        };
        t.fit(&x, &y, opts).expect("fit");
        device.synchronize().expect("sync");
    };
    fit(t, 2);
    let start = Instant::now();
    fit(t, steps);
    (steps * BATCH * CONTEXT) as f64 / start.elapsed().as_secs_f64()
}

/// (tokens/s, dispatches per token, bytes read back per token) generating `length`
/// tokens after a one-token prompt, greedily.
fn generate(
    t: &mut Trainer,
    device: &Device,
    length: usize,
    decoding: Decoding,
) -> (f64, f64, f64) {
    let greedy = Sampling {
        top_k: Some(1),
        ..Sampling::default()
    };
    // Warm-up: pipelines, the autotuner's choices, the workspaces.
    t.generate_with(&[0], 4, &greedy, decoding)
        .expect("generate");
    let before = device.stats();
    let start = Instant::now();
    t.generate_with(&[0], length, &greedy, decoding)
        .expect("generate");
    let secs = start.elapsed().as_secs_f64();
    let after = device.stats();
    let per = |a: u64, b: u64| (a - b) as f64 / length as f64;
    (
        length as f64 / secs,
        per(after.dispatches, before.dispatches),
        per(after.bytes_read, before.bytes_read),
    )
}

/// The run of median speed.
fn median(mut runs: Vec<(f64, f64, f64)>) -> (f64, f64, f64) {
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs[runs.len() / 2]
}

fn main() {
    let steps = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(24usize);
    let device = Device::gpu().expect("a GPU adapter (lavapipe will do)");
    println!(
        "gpt (4 layers, 4 heads, width 128, context 64, vocab 65) on {}",
        device.name()
    );
    let mut t = trainer(&device);
    let tps = train(&mut t, &device, steps);
    println!("training: {tps:.0} tokens/s ({steps} AdamW steps of batch {BATCH} x {CONTEXT})");
    for length in [CONTEXT - 1, 200] {
        // Alternating runs, the median of three each, as the load on shared cores moves.
        let mut full = Vec::new();
        let mut cached = Vec::new();
        for _ in 0..3 {
            full.push(generate(&mut t, &device, length, Decoding::FullWindow));
            cached.push(generate(&mut t, &device, length, Decoding::Auto));
        }
        let ((f, fd, fb), (c, cd, cb)) = (median(full), median(cached));
        println!(
            "generation of {length} tokens: full window {f:.1} tokens/s ({fd:.0} dispatches, {fb:.0} bytes read per token), cached {c:.1} tokens/s ({cd:.0} dispatches, {cb:.0} bytes read per token): cached / full window = {:.2}x",
            c / f
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
