//! Data-parallel training in one process: samples/s at 1 and 2 replicas (one device and
//! one thread each, `Trainer::fit_replicas`) at the same global batch, and what the
//! gradient all-reduce costs per step: bytes, time, and its share of the step.
//!
//! `cargo bench --bench replicas` trains each model for one epoch on MNIST-shaped rows
//! (splitmix64 pixels, labels from a fixed random teacher) at global batch 128: the
//! 784-256-128-10 MLP on 4096 rows and examples/mnist_cnn's CNN (conv 32, pool, conv 64,
//! pool, dense 128, dense 10) on 1024. Each row is the best of `REPS` runs. On a machine whose replicas share
//! the same cores (lavapipe on a small CPU) two replicas cannot be faster than one: the
//! row shows the exchange's overhead, not the scaling that two GPUs give.

use kiln::{Device, FitOptions, Loss, Metric, Optimizer, Sequential, Trainer};
use std::time::Instant;

const BATCH: usize = 128;
const REPS: usize = 3;

/// Splitmix64 pixels in [0, 1) and labels from a fixed random linear teacher.
fn make_data(n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut state = 42u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    };
    let x: Vec<f32> = (0..n * 784).map(|_| next()).collect();
    let t: Vec<f32> = (0..784 * 10).map(|_| next() * 2.0 - 1.0).collect();
    let label = |i: usize| {
        let score = |c: usize| -> f32 {
            (0..784)
                .map(|k| (x[i * 784 + k] - 0.5) * t[k * 10 + c])
                .sum()
        };
        (0..10)
            .max_by(|&a, &b| score(a).total_cmp(&score(b)))
            .unwrap_or(0) as f32
    };
    let y = (0..n).map(label).collect();
    (x, y)
}

fn model(device: &Device, cnn: bool) -> Trainer {
    let spec = if cnn {
        Sequential::image(1, 28, 28)
            .conv2d(32, 3)
            .relu()
            .max_pool(2)
            .conv2d(64, 3)
            .relu()
            .max_pool(2)
            .flatten()
            .dense(128)
            .relu()
            .dense(10)
    } else {
        Sequential::new(784)
            .dense(256)
            .relu()
            .dense(128)
            .relu()
            .dense(10)
    };
    let m = spec.build(device, 1).expect("model");
    m.compile(
        Loss::SparseCategoricalCrossEntropy,
        Optimizer::adam(1e-3),
        &[Metric::Accuracy],
    )
    .expect("compile")
}

/// One epoch; one replica is the plain fit, as a user would run it on one device.
fn fit(main: &mut Trainer, others: &mut [Trainer], x: &[f32], y: &[f32]) {
    let opts = FitOptions {
        seed: 1,
        ..FitOptions::new(1, BATCH)
    };
    match others.is_empty() {
        true => main.fit(x, y, opts).map(drop),
        false => main.fit_replicas(others, x, y, opts).map(drop),
    }
    .expect("fit");
}

/// (samples/s, seconds per step, all-reduce seconds per step, bytes per step).
fn run(cnn: bool, replicas: usize, x: &[f32], y: &[f32]) -> (f64, f64, f64, f64) {
    let mut main = model(&Device::gpu().expect("adapter"), cnn);
    let mut others: Vec<Trainer> = (1..replicas)
        .map(|_| model(&Device::gpu().expect("adapter"), cnn))
        .collect();
    // Warm-up: pipelines compiled, the autotuner settled.
    fit(
        &mut main,
        &mut others,
        &x[..BATCH * 784 * 2],
        &y[..BATCH * 2],
    );
    let before = main.exchange_stats();
    let start = Instant::now();
    fit(&mut main, &mut others, x, y);
    let secs = start.elapsed().as_secs_f64();
    let after = main.exchange_stats();
    let rows = y.len();
    let steps = rows.div_ceil(BATCH) as f64;
    (
        rows as f64 / secs,
        secs / steps,
        (after.seconds - before.seconds) / steps,
        (after.bytes - before.bytes) as f64 / steps,
    )
}

fn main() {
    let (x, y) = make_data(4096);
    println!("global batch {BATCH}, best of {REPS} runs");
    for (name, cnn, rows) in [("784-256-128-10", false, 4096), ("mnist-cnn", true, 1024)] {
        let (x, y) = (&x[..rows * 784], &y[..rows]);
        let mut base = 0.0;
        for replicas in [1, 2] {
            let best = (0..REPS)
                .map(|_| run(cnn, replicas, x, y))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap_or_default();
            let (rate, step, reduce, bytes) = best;
            if replicas == 1 {
                base = rate;
            }
            println!(
                "{name:<15} replicas {replicas}: {rate:>8.0} samples/s ({:.2}x), {:.2} ms/step, \
                 all-reduce {:.3} ms/step ({:.1}% of the step), {:.2} MB/step",
                rate / base,
                step * 1e3,
                reduce * 1e3,
                100.0 * reduce / step,
                bytes / 1e6
            );
        }
    }
}
