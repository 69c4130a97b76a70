//! Soak test: a long MNIST fit must not leak host or GPU memory.
//!
//! Ignored by default (20 epochs take a while, minutes per epoch on lavapipe). Run it with
//! `cargo test --release --test soak -- --ignored --nocapture`; `KILN_SOAK_EPOCHS=N`
//! shortens it (at least 2). It skips, saying why, when ../shared/data/mnist is absent.
//!
//! Tolerance, measured at the end of each epoch against the end of the first:
//! - kiln's GPU counters (`Stats::bytes_allocated`, `buffers_created`) may grow during the
//!   second epoch by at most 4 buffers and 64 KiB (the first training epoch that runs while
//!   the validation workspaces exist: short-lived scratch tensors then need one more pooled
//!   buffer), and must not change at all after it;
//! - the process's resident memory may drift by at most 16 MiB (allocator noise; a leak of
//!   1 MiB per epoch would show). Once it is past that, the fit stops early: a leak large
//!   enough to see would otherwise exhaust the machine's memory over 20 epochs.

mod common;

use kiln::data::{idx, Scaling};
use kiln::train::{Control, EpochLog};
use kiln::{FitOptions, Loss, Metric, Optimizer, Sequential, Stats, Validation};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Resident memory of this process in KiB, from /proc/self/status.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Sample {
    epoch: usize,
    rss_kib: u64,
    stats: Stats,
}

const RSS_DRIFT_KIB: u64 = 16 * 1024;
const WARMUP_BUFFERS: u64 = 4;
const WARMUP_BYTES: u64 = 64 * 1024;

#[test]
#[ignore = "trains MNIST for 20 epochs; run with --ignored --nocapture"]
fn memory_stays_flat_over_a_long_fit() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
    if !dir.is_dir() {
        println!("soak skipped: {} is absent", dir.display());
        return;
    }
    if rss_kib().is_none() {
        println!("soak skipped: /proc/self/status has no VmRSS on this system");
        return;
    }
    let epochs: usize = std::env::var("KILN_SOAK_EPOCHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(2);
    let (mut train, mut test) = idx::load_mnist(&dir).unwrap();
    train
        .scale(Scaling::Divide(255.0))
        .unwrap()
        .apply(&mut test)
        .unwrap();
    let device = common::gpu();
    let mut trainer = Sequential::new(784)
        .dense(256)
        .relu()
        .dense(128)
        .relu()
        .dense(10)
        .build(&device, 1)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(1e-3),
            &[Metric::Accuracy],
        )
        .unwrap();
    println!(
        "soak: {epochs} epochs of MNIST on {}, batch 128, validated on the test set",
        device.name()
    );
    println!("epoch  loss    val_acc  seconds  VmRSS(MiB)  GPU bytes_allocated  buffers_created");
    let samples = Arc::new(Mutex::new(Vec::new()));
    let (sink, dev) = (samples.clone(), device.clone());
    let hook = Box::new(move |log: &EpochLog| {
        let (rss_kib, stats) = (rss_kib().unwrap_or(0), dev.stats());
        println!(
            "{:5}  {:.4}  {:.4}   {:7.1}  {:10.1}  {:19}  {:15}",
            log.epoch,
            log.loss,
            log.val_metrics
                .iter()
                .find(|(n, _)| n == "accuracy")
                .map_or(f64::NAN, |m| m.1),
            log.seconds,
            rss_kib as f64 / 1024.0,
            stats.bytes_allocated,
            stats.buffers_created
        );
        let mut samples = sink.lock().unwrap();
        samples.push(Sample {
            epoch: log.epoch,
            rss_kib,
            stats,
        });
        let drift = rss_kib.saturating_sub(samples[0].rss_kib);
        if drift > RSS_DRIFT_KIB {
            println!(
                "soak: resident memory grew {:.1} MiB since epoch 1, over the {} MiB tolerance: stopping",
                drift as f64 / 1024.0,
                RSS_DRIFT_KIB / 1024
            );
            return Control::Stop;
        }
        Control::Continue
    });
    let opts = FitOptions {
        validation: Validation::Data {
            x: test.x.clone(),
            y: test.y.clone(),
        },
        on_epoch: vec![hook],
        ..FitOptions::new(epochs, 128)
    };
    trainer.fit(&train.x, &train.y, opts).unwrap();

    let samples = samples.lock().unwrap();
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let drift = last.rss_kib.saturating_sub(first.rss_kib);
    println!(
        "soak: VmRSS {:.1} MiB after epoch 1, {:.1} MiB after epoch {} (drift {:.1} MiB, tolerance {} MiB)",
        first.rss_kib as f64 / 1024.0,
        last.rss_kib as f64 / 1024.0,
        last.epoch,
        drift as f64 / 1024.0,
        RSS_DRIFT_KIB / 1024
    );
    let counters = |s: &Sample| (s.stats.bytes_allocated, s.stats.buffers_created);
    if let Some(second) = samples.get(1) {
        let (bytes, buffers) = (
            second.stats.bytes_allocated - first.stats.bytes_allocated,
            second.stats.buffers_created - first.stats.buffers_created,
        );
        assert!(
            bytes <= WARMUP_BYTES && buffers <= WARMUP_BUFFERS,
            "epoch 2 added {buffers} GPU buffers ({bytes} bytes) to those of epoch 1"
        );
        for s in &samples[2..] {
            assert_eq!(
                counters(s),
                counters(second),
                "epoch {}: GPU allocations grew after epoch 2",
                s.epoch
            );
        }
    }
    assert!(
        drift <= RSS_DRIFT_KIB,
        "resident memory grew by {:.1} MiB from epoch 1 to epoch {} (kiln's GPU counters: {:?} -> {:?})",
        drift as f64 / 1024.0,
        last.epoch,
        counters(first),
        counters(last)
    );
    assert_eq!(samples.len(), epochs, "the fit stopped early");
}
