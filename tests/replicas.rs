//! Data-parallel training in one process (`Trainer::fit_replicas`): replicas end with the
//! weights one device reaches at the same global batch, report the same metrics, and
//! fail together with a typed error.

mod common;

use common::assert_close;
use kiln::{Device, Error, FitOptions, Loss, Metric, Optimizer, Sequential, Trainer};

/// A 5-7-3 classifier with batch-free layers (dropout and batch norm see only their
/// replica's rows, so they are left out of the equivalence checks).
fn trainer(device: &Device, hidden: usize, optimizer: Optimizer) -> Trainer {
    built(device, hidden, 7, optimizer, &[Metric::Accuracy])
}

/// The same classifier with any seed and metrics.
fn built(d: &Device, hidden: usize, seed: u64, o: Optimizer, metrics: &[Metric]) -> Trainer {
    let spec = Sequential::new(5).dense(hidden).tanh().dense(3);
    let model = spec.build(d, seed).unwrap();
    let loss = Loss::SparseCategoricalCrossEntropy;
    model.compile(loss, o, metrics).unwrap()
}

/// `rows` rows of 5 features and labels in 0..3.
fn data(rows: usize) -> (Vec<f32>, Vec<f32>) {
    let x = common::random(rows * 5, 11);
    let y = (0..rows)
        .map(|r| ((x[r * 5] + 2.0 * x[r * 5 + 1]).abs() * 1.7) as usize % 3)
        .map(|c| c as f32)
        .collect();
    (x, y)
}

fn opts(epochs: usize, batch: usize) -> FitOptions {
    FitOptions {
        seed: 3,
        ..FitOptions::new(epochs, batch)
    }
}

fn weights(t: &Trainer) -> Vec<f32> {
    t.model
        .params()
        .iter()
        .flat_map(|p| p.value.to_vec().unwrap())
        .collect()
}

/// Trains one trainer per device in `devices` as replicas and one trainer on
/// `devices[0]` alone; checks that every replica ends with the single trainer's weights
/// and that rank 0 reports its loss and accuracy.
fn check_equivalent(devices: &[Device], rows: usize, batch: usize, optimizer: Optimizer) {
    let (x, y) = data(rows);
    let mut single = trainer(&devices[0], 7, optimizer.clone());
    let want = single.fit(&x, &y, opts(3, batch)).unwrap();
    let mut main = trainer(&devices[0], 7, optimizer.clone());
    let mut others: Vec<Trainer> = devices[1..]
        .iter()
        .map(|d| trainer(d, 7, optimizer.clone()))
        .collect();
    let got = main
        .fit_replicas(&mut others, &x, &y, opts(3, batch))
        .unwrap();
    let what = format!("{} replicas, {rows} rows, batch {batch}", devices.len());
    let w = weights(&single);
    assert_close(&weights(&main), &w, 1e-4, 1e-5, &format!("{what}: rank 0"));
    for (i, t) in others.iter().enumerate() {
        assert_close(
            &weights(t),
            &w,
            1e-4,
            1e-5,
            &format!("{what}: rank {}", i + 1),
        );
        assert_eq!(t.steps(), single.steps(), "{what}: rank {} steps", i + 1);
    }
    for (g, s) in got.epochs.iter().zip(&want.epochs) {
        assert!(
            (g.loss - s.loss).abs() <= 1e-4 * s.loss.abs().max(1.0),
            "{what}: epoch {} loss {} vs one device {}",
            s.epoch,
            g.loss,
            s.loss
        );
        assert_eq!(
            g.get("accuracy"),
            s.get("accuracy"),
            "{what}: epoch {}",
            s.epoch
        );
    }
}

#[test]
fn two_gpu_replicas_match_one_gpu() {
    let devices = [common::gpu(), Device::gpu().unwrap()];
    // 37 rows in batches of 8: the last global batch of 5 splits 3 + 2.
    check_equivalent(&devices, 37, 8, Optimizer::sgd(0.1));
    check_equivalent(&devices, 37, 8, Optimizer::adam(0.01));
}

#[test]
fn cpu_replicas_match_one_cpu_at_awkward_sizes() {
    let cpu = || Device::cpu();
    // A batch that 3 ranks do not divide, and a data set of 2 rows over 3 ranks (one
    // rank trains on no rows and adds zeros).
    check_equivalent(&[cpu(), cpu(), cpu()], 17, 7, Optimizer::adam(0.01));
    check_equivalent(&[cpu(), cpu(), cpu()], 2, 4, Optimizer::sgd(0.1));
    check_equivalent(&[cpu()], 17, 5, Optimizer::adam(0.01));
}

#[test]
fn a_gpu_replica_beside_a_cpu_replica_matches_one_cpu() {
    check_equivalent(
        &[Device::cpu(), common::gpu()],
        37,
        8,
        Optimizer::adam(0.01),
    );
}

#[test]
fn validation_metrics_are_those_of_all_rows() {
    let (x, y) = data(40);
    let (vx, vy) = data(13);
    let with_val = || FitOptions {
        validation: kiln::Validation::Data {
            x: vx.clone(),
            y: vy.clone(),
        },
        ..opts(2, 8)
    };
    let mut single = trainer(&Device::cpu(), 7, Optimizer::adam(0.01));
    let want = single.fit(&x, &y, with_val()).unwrap();
    let mut main = trainer(&Device::cpu(), 7, Optimizer::adam(0.01));
    let mut others = vec![
        trainer(&Device::cpu(), 7, Optimizer::adam(0.01)),
        trainer(&Device::cpu(), 7, Optimizer::adam(0.01)),
    ];
    let got = main.fit_replicas(&mut others, &x, &y, with_val()).unwrap();
    for (g, s) in got.epochs.iter().zip(&want.epochs) {
        let (gv, sv) = (g.val_loss.unwrap(), s.val_loss.unwrap());
        assert!((gv - sv).abs() <= 1e-5, "val_loss {gv} vs {sv}");
        assert_eq!(g.val_metrics, s.val_metrics);
    }
}

#[test]
fn replicas_start_from_rank_0s_weights() {
    let (x, y) = data(16);
    // Built with another seed: the broadcast replaces its weights by rank 0's.
    let other = built(
        &Device::cpu(),
        7,
        99,
        Optimizer::sgd(0.1),
        &[Metric::Accuracy],
    );
    let mut main = trainer(&Device::cpu(), 7, Optimizer::sgd(0.1));
    let mut others = vec![other];
    main.fit_replicas(&mut others, &x, &y, opts(1, 4)).unwrap();
    assert_eq!(weights(&main), weights(&others[0]));
}

#[test]
fn mismatched_models_fail_every_rank_with_a_typed_error() {
    let (x, y) = data(16);
    let mut main = trainer(&Device::cpu(), 7, Optimizer::sgd(0.1));
    let mut others = vec![trainer(&Device::cpu(), 6, Optimizer::sgd(0.1))];
    let err = main
        .fit_replicas(&mut others, &x, &y, opts(1, 4))
        .unwrap_err();
    match err {
        Error::RankMismatch { ranks, .. } => assert_eq!(ranks, vec![1]),
        other => panic!("expected RankMismatch, got {other}"),
    }
}

#[test]
fn different_metrics_fail_every_rank_with_a_typed_error() {
    let (x, y) = data(16);
    let mut main = trainer(&Device::cpu(), 7, Optimizer::sgd(0.1));
    let mut others = vec![built(&Device::cpu(), 7, 7, Optimizer::sgd(0.1), &[])];
    let err = main
        .fit_replicas(&mut others, &x, &y, opts(1, 4))
        .unwrap_err();
    assert!(matches!(err, Error::RankMismatch { .. }), "{err}");
}

#[test]
fn shards_cover_each_batch_once() {
    for size in 1..=5 {
        for batch in 0..=23 {
            let mut next = 0;
            for rank in 0..size {
                let (offset, rows) = kiln::train::shard(batch, size, rank);
                assert_eq!(offset, next, "batch {batch} over {size}, rank {rank}");
                assert!(rows <= batch.div_ceil(size) && rows + 1 >= batch / size);
                next += rows;
            }
            assert_eq!(next, batch, "batch {batch} over {size}");
        }
    }
}

#[test]
fn a_replica_whose_device_fails_ends_the_job_with_its_rank_and_cause() {
    let (x, y) = data(64);
    let failing = Device::gpu().unwrap();
    let mut others = vec![trainer(&failing, 7, Optimizer::sgd(0.1))];
    let mut main = trainer(&Device::cpu(), 7, Optimizer::sgd(0.1));
    // Rank 0's step hook pulls rank 1's device away mid-epoch.
    let opts = FitOptions {
        on_step: Some(Box::new(move |info: &kiln::train::StepInfo| {
            if info.step == 3 {
                failing.simulate_loss();
            }
        })),
        ..opts(2, 4)
    };
    let start = std::time::Instant::now();
    let err = main.fit_replicas(&mut others, &x, &y, opts).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, Error::Distributed { rank: 1, .. }) && text.contains("lost"),
        "{text}"
    );
    // The peers hear of it at the next exchange, not after the group's timeout.
    assert!(start.elapsed().as_secs() < 30, "took {:?}", start.elapsed());
}

/// Trains 2 replicas on `devices` with gradient buckets of each of `sizes` bytes and
/// without; every bucketed run ends with the unbucketed run's weights on every rank.
/// Returns the submissions to `devices[0]` per run, unbucketed first (GPU devices).
fn check_buckets(devices: [Device; 2], rows: usize, sizes: &[usize]) -> Vec<u64> {
    let (x, y) = data(rows);
    let mut submissions = Vec::new();
    let mut runs = Vec::new();
    for &bytes in [0].iter().chain(sizes) {
        let mut main = trainer(&devices[0], 7, Optimizer::adam(0.01));
        let mut others = vec![trainer(&devices[1], 7, Optimizer::adam(0.01))];
        let o = FitOptions {
            bucket_bytes: Some(bytes),
            ..opts(2, 8)
        };
        let before = devices[0].stats().submissions;
        main.fit_replicas(&mut others, &x, &y, o).unwrap();
        submissions.push(devices[0].stats().submissions - before);
        let what = format!("{bytes}-byte buckets, rank 1");
        assert_close(&weights(&others[0]), &weights(&main), 1e-4, 1e-5, &what);
        let stats = main.exchange_stats();
        assert_eq!(stats.bytes, stats.steps * 66 * 4, "{bytes}-byte buckets");
        runs.push((bytes, weights(&main)));
    }
    let (_, want) = &runs[0];
    for (bytes, got) in &runs[1..] {
        assert_close(got, want, 1e-4, 1e-5, &format!("{bytes}-byte buckets"));
    }
    submissions
}

#[test]
fn bucketed_exchanges_match_one_exchange_per_step() {
    // 66 gradient values (5x7 + 7 + 7x3 + 3): one bucket; two of 33 (the boundary falls
    // inside the first weight matrix); 14 of at most 5 (boundaries inside every tensor
    // but the last bias). 33 rows in batches of 8: the last batch's 1 row leaves rank 1
    // without rows, sending zeros for every bucket.
    let sizes = [1 << 20, 33 * 4, 5 * 4];
    let gpus = check_buckets([common::gpu(), Device::gpu().unwrap()], 33, &sizes);
    // Each bucket is submitted and read back on its own: more submissions per step.
    assert!(gpus[3] > gpus[0], "submissions per run {gpus:?}");
    check_buckets([Device::cpu(), common::gpu()], 37, &sizes);
}
