//! Trials per minute of a hyperparameter search on 784-128-10: K trials stacked into the
//! same dispatches (`kiln::train::fit_stacked`) against the same K trained one after
//! another with `Trainer::fit`, for K = 1, 4 and 16, in one command:
//!
//! `cargo bench --bench stacked` (or `-- --rows N --epochs E --batch B --hidden H`).
//!
//! The data is the first `rows` (10,000) MNIST training images from ../shared/data/mnist,
//! scaled to [0, 1]; where that is absent, random pixels of MNIST's shape with labels
//! from a fixed random teacher (the table says which). Each trial is Adam with its own
//! learning rate and seed. Every configuration runs once untimed on a few batches first
//! (ending in a batch of the timed run's last size), so shader compilation and matmul
//! autotuning stay out of the timings.

use kiln::train::{fit_stacked, StackOptions, TrialConfig};
use kiln::{Device, FitOptions, Loss, Optimizer, Sequential};
use std::time::Instant;

struct Args {
    hidden: usize,
    rows: usize,
    epochs: usize,
    batch: usize,
}

fn args() -> Args {
    let mut a = Args {
        hidden: 128,
        rows: 10_000,
        epochs: 1,
        batch: 32,
    };
    let argv: Vec<String> = std::env::args().collect();
    for w in argv.windows(2) {
        let v = w[1].parse().ok();
        match (w[0].as_str(), v) {
            ("--hidden", Some(v)) => a.hidden = v,
            ("--rows", Some(v)) => a.rows = v,
            ("--epochs", Some(v)) => a.epochs = v,
            ("--batch", Some(v)) => a.batch = v,
            _ => {}
        }
    }
    a
}

/// MNIST's first `rows` training images and labels, or random data of its shape; and
/// where it came from.
fn data(rows: usize) -> (Vec<f32>, Vec<f32>, String) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
    if let Ok((train, _)) = kiln::data::idx::load_mnist(&dir) {
        let n = rows.min(train.n);
        let x = train.x[..n * 784].iter().map(|v| v / 255.0).collect();
        return (
            x,
            train.y[..n].to_vec(),
            format!("MNIST train, first {n} rows"),
        );
    }
    let mut s = 42u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let x: Vec<f32> = (0..rows * 784).map(|_| next()).collect();
    let teacher: Vec<f32> = (0..784 * 10).map(|_| next() - 0.5).collect();
    let y = x
        .chunks(784)
        .map(|r| {
            let score =
                |c: usize| -> f32 { (0..784).map(|k| (r[k] - 0.5) * teacher[k * 10 + c]).sum() };
            (0..10).fold(0, |b, c| if score(c) > score(b) { c } else { b }) as f32
        })
        .collect();
    let why = format!(
        "random data of MNIST's shape ({rows} rows): {} not found",
        dir.display()
    );
    (x, y, why)
}

fn trials(k: usize, hidden: usize) -> Vec<TrialConfig> {
    let model = Sequential::new(784).dense(hidden).relu().dense(10);
    (0..k)
        .map(|i| TrialConfig {
            model: model.clone(),
            optimizer: Optimizer::adam(1e-3 * (1.0 + i as f32 * 0.25)),
            seed: i as u64 + 1,
        })
        .collect()
}

/// Seconds to train the trials stacked, and their mean final loss.
fn stacked(device: &Device, t: &[TrialConfig], x: &[f32], y: &[f32], a: &Args) -> (f64, f64) {
    let start = Instant::now();
    let opts = StackOptions::new(a.epochs, a.batch);
    let h = fit_stacked(device, t, x, y, &opts).expect("stacked fit");
    let secs = start.elapsed().as_secs_f64();
    let loss = h.iter().map(|h| h.epochs[a.epochs - 1].loss).sum::<f64>() / t.len() as f64;
    (secs, loss)
}

/// Seconds to train the trials one after another with `fit`, and their mean final loss.
fn separate(device: &Device, t: &[TrialConfig], x: &[f32], y: &[f32], a: &Args) -> (f64, f64) {
    let start = Instant::now();
    let mut total = 0.0;
    for trial in t {
        let model = trial.model.build(device, trial.seed).expect("build");
        let loss = Loss::SparseCategoricalCrossEntropy;
        let mut tr = model
            .compile(loss, trial.optimizer.clone(), &[])
            .expect("compile");
        let h = tr
            .fit(x, y, FitOptions::new(a.epochs, a.batch))
            .expect("fit");
        total += h.epochs[a.epochs - 1].loss;
    }
    (start.elapsed().as_secs_f64(), total / t.len() as f64)
}

fn main() {
    let a = args();
    let device = Device::gpu().expect("a GPU adapter (lavapipe will do)");
    let (x, y, source) = data(a.rows);
    // The warm-up's last batch has the timed run's size: its products are tuned too.
    let warm = (8 * a.batch + y.len() % a.batch).min(y.len());
    println!(
        "784-{}-10, Adam, {} epoch(s), batch {}, {source}, on {}",
        a.hidden,
        a.epochs,
        a.batch,
        device.name()
    );
    println!(
        "{:>3} {:>12} {:>11} {:>15} {:>14} {:>8} {:>14} {:>13}",
        "K",
        "separate s",
        "stacked s",
        "separate tr/min",
        "stacked tr/min",
        "ratio",
        "separate loss",
        "stacked loss"
    );
    for k in [1, 4, 16] {
        let t = trials(k, a.hidden);
        stacked(&device, &t, &x[..warm * 784], &y[..warm], &a);
        separate(&device, &t, &x[..warm * 784], &y[..warm], &a);
        let (ss, sl) = separate(&device, &t, &x, &y, &a);
        let (ks, kl) = stacked(&device, &t, &x, &y, &a);
        let per_min = |s: f64| k as f64 / s * 60.0;
        println!(
            "{k:>3} {ss:>12.2} {ks:>11.2} {:>15.1} {:>14.1} {:>7.2}x {sl:>14.4} {kl:>13.4}",
            per_min(ss),
            per_min(ks),
            ss / ks
        );
    }
}
