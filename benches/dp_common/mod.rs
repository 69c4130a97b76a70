//! What the data-parallel benches share (benches/replicas.rs in one process,
//! examples/mpi_allreduce.rs `--train-bench` under mpirun): the data, the two models, a
//! group that does not communicate (the compute-only baseline of a replica), and one
//! timed epoch.

use kiln::dist::AllReduce;
use kiln::{Device, FitOptions, Loss, Metric, Optimizer, Sequential, Trainer};
use std::time::Instant;

/// Global batch of every run.
pub const BATCH: usize = 128;

/// Bucket sizes the benches compare: one exchange after the backward pass (0), 256 KB
/// and 64 KB (4 and 15 buckets of the MLP's 0.94 MB, 7 and 27 of the CNN's 1.69 MB).
pub const BUCKETS: [usize; 3] = [0, 256_000, 64_000];

/// (name, CNN?, rows, epochs of which the best counts) of the two models: the CNN's
/// epochs are short to keep a bench run near a minute on lavapipe.
pub const MODELS: [(&str, bool, usize, usize); 2] = [
    ("784-256-128-10", false, 4096, 3),
    ("mnist-cnn", true, 256, 2),
];

/// Splitmix64 pixels in [0, 1) and labels from a fixed random linear teacher.
pub fn make_data(n: usize) -> (Vec<f32>, Vec<f32>) {
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

/// 784-256-128-10, or examples/mnist_cnn's CNN (conv 32, pool, conv 64, pool, dense
/// 128, dense 10).
pub fn model(device: &Device, cnn: bool) -> Trainer {
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

/// A rank that trains its shard of every batch but exchanges nothing: the same steps,
/// readbacks and uploads as a real rank without the communication, whose time is the
/// difference.
pub struct Alone {
    /// This rank.
    pub rank: usize,
    /// The ranks it pretends to have.
    pub size: usize,
}

impl AllReduce for Alone {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_mean(&mut self, _: &mut [f32]) -> kiln::Result<()> {
        Ok(())
    }
    fn broadcast(&mut self, _: &mut [f32]) -> kiln::Result<()> {
        Ok(())
    }
    fn barrier(&mut self) -> kiln::Result<()> {
        Ok(())
    }
    fn all_reduce_sum(&mut self, _: &mut [f64]) -> kiln::Result<()> {
        Ok(())
    }
    fn check_fingerprint(&mut self, _: &str, _: u64) -> kiln::Result<()> {
        Ok(())
    }
}

/// One epoch as one rank of `group` with buckets of `bucket_bytes`; returns its seconds
/// and the seconds it spent in the gradient all-reduces.
pub fn epoch(
    t: &mut Trainer,
    group: &mut dyn AllReduce,
    x: &[f32],
    y: &[f32],
    bucket_bytes: usize,
) -> (f64, f64) {
    let opts = FitOptions {
        seed: 1,
        bucket_bytes: Some(bucket_bytes),
        ..FitOptions::new(1, BATCH)
    };
    let before = t.exchange_stats().seconds;
    let start = Instant::now();
    t.fit_distributed(group, x, y, opts).expect("fit");
    let secs = start.elapsed().as_secs_f64();
    (secs, t.exchange_stats().seconds - before)
}

/// A row of the table: samples/s, the ratio to `base` samples/s, the step, the time in
/// the all-reduces, and the exposed communication (the step's excess over the
/// compute-only step `alone` seconds) as a share of the step.
pub fn row(what: &str, rows: usize, secs: f64, reduce: f64, alone: f64, base: f64) -> String {
    let steps = rows.div_ceil(BATCH) as f64;
    let rate = rows as f64 / secs;
    format!(
        "{what:<40} {rate:>8.0} samples/s ({:.2}x), {:>7.2} ms/step, all-reduce {:>6.2} ms/step, \
         exposed communication {:>5.1}% of the step",
        rate / base,
        secs / steps * 1e3,
        reduce / steps * 1e3,
        100.0 * (secs - alone).max(0.0) / secs
    )
}

/// The bucket size as the tables name it.
pub fn bucket_name(bytes: usize) -> String {
    match bytes {
        0 => "one all-reduce after backward".into(),
        b if b >= 1_000_000 => format!("buckets of {} MB", b / 1_000_000),
        b => format!("buckets of {} KB", b / 1000),
    }
}
