//! The rest of the training API: schedules, early stopping, history, summary, the loss
//! and output forms, metrics and initializers.
mod common;
use common::*;
use kiln::nn::Init;
use kiln::train::{Control, EpochLog};
use kiln::{
    Device, EarlyStopping, FitOptions, Loss, Metric, Optimizer, Schedule, Sequential, Validation,
};

/// Two well separated Gaussian-ish blobs per class, `classes` classes in `dims` dimensions.
fn blobs(rows: usize, dims: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let noise = random(rows * dims, seed);
    let mut x = Vec::with_capacity(rows * dims);
    let mut y = Vec::with_capacity(rows);
    for r in 0..rows {
        let c = r % classes;
        for d in 0..dims {
            let centre = if d % classes == c { 2.0 } else { -1.0 };
            x.push(centre + 0.5 * noise[r * dims + d]);
        }
        y.push(c as f32);
    }
    (x, y)
}

#[test]
fn schedules_follow_pytorch_closed_forms() {
    let base = 0.1f32;
    let close = |a: f32, b: f32| (a - b).abs() < 1e-7;
    assert!(close(Schedule::Constant.lr(base, 9, 999), 0.1));
    let step = Schedule::Step {
        step_size: 3,
        gamma: 0.5,
    };
    assert!(
        close(step.lr(base, 2, 0), 0.1)
            && close(step.lr(base, 3, 0), 0.05)
            && close(step.lr(base, 6, 0), 0.025)
    );
    assert!(close(
        Schedule::Exponential { gamma: 0.9 }.lr(base, 2, 0),
        0.1 * 0.81
    ));
    let cos = Schedule::Cosine {
        t_max: 10,
        eta_min: 0.0,
    };
    assert!(
        close(cos.lr(base, 0, 0), 0.1)
            && close(cos.lr(base, 5, 0), 0.05)
            && cos.lr(base, 10, 0) < 1e-8
    );
    let warm = Schedule::Warmup {
        steps: 4,
        then: Box::new(Schedule::Constant),
    };
    assert!(
        close(warm.lr(base, 0, 0), 0.025)
            && close(warm.lr(base, 0, 3), 0.1)
            && close(warm.lr(base, 0, 50), 0.1)
    );
}

#[test]
fn fit_reports_the_scheduled_rate_and_a_history_csv() {
    let (x, y) = blobs(64, 4, 2, 1);
    let model = Sequential::new(4)
        .dense(8)
        .relu()
        .dense(2)
        .build(&Device::cpu(), 1)
        .unwrap();
    let opt = Optimizer::sgd(0.1).schedule(Schedule::Step {
        step_size: 1,
        gamma: 0.5,
    });
    let mut t = model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            opt,
            &[Metric::Accuracy],
        )
        .unwrap();
    let opts = FitOptions {
        validation: Validation::Split(0.25),
        ..FitOptions::new(3, 16)
    };
    let h = t.fit(&x, &y, opts).unwrap();
    let lrs: Vec<f32> = h.epochs.iter().map(|e| e.lr).collect();
    // Each epoch logs the rate it trained at, as Keras's history does.
    assert_eq!(lrs, vec![0.1, 0.05, 0.025]);
    let csv = h.to_csv();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds")
    );
    assert_eq!(lines.count(), 3);
    assert_eq!(h.series("val_accuracy").len(), 3);
}

#[test]
fn early_stopping_stops_and_restores_the_best_weights() {
    let (x, y) = blobs(64, 4, 2, 2);
    let model = Sequential::new(4)
        .dense(2)
        .build(&Device::cpu(), 3)
        .unwrap();
    // A rate this large makes the loss bounce, so it stops improving within a few epochs.
    let mut t = model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::sgd(50.0),
            &[],
        )
        .unwrap();
    let opts = FitOptions {
        validation: Validation::Data {
            x: x.clone(),
            y: y.clone(),
        },
        early_stopping: Some(EarlyStopping::new("val_loss", 2)),
        ..FitOptions::new(200, 64)
    };
    let h = t.fit(&x, &y, opts).unwrap();
    assert!(h.stopped_early, "ran all {} epochs", h.epochs.len());
    let val = h.series("val_loss");
    let best = val.iter().cloned().fold(f64::INFINITY, f64::min);
    let best_epoch = val.iter().position(|&l| l == best).unwrap() + 1;
    assert_eq!(
        h.epochs.len(),
        best_epoch + 2,
        "patience 2 after the best epoch"
    );
    assert_eq!(h.restored_epoch, Some(best_epoch));
    // The weights are the best epoch's: they evaluate to its validation loss.
    let now = t.evaluate(&x, &y, 64).unwrap().loss;
    assert!(
        (now - best).abs() < 1e-6,
        "restored loss {now}, best {best}"
    );
}

#[test]
fn epoch_hook_can_stop_training() {
    let (x, y) = blobs(32, 4, 2, 3);
    let model = Sequential::new(4)
        .dense(2)
        .build(&Device::cpu(), 3)
        .unwrap();
    let mut t = model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(1e-2),
            &[],
        )
        .unwrap();
    let hook = Box::new(|e: &EpochLog| {
        if e.epoch == 2 {
            Control::Stop
        } else {
            Control::Continue
        }
    });
    let h = t
        .fit(
            &x,
            &y,
            FitOptions {
                on_epoch: vec![hook],
                ..FitOptions::new(10, 8)
            },
        )
        .unwrap();
    assert_eq!(h.epochs.len(), 2);
}

#[test]
fn summary_lists_layers_shapes_and_parameter_counts() {
    let model = Sequential::new(784)
        .dense(128)
        .relu()
        .dropout(0.2)
        .dense(10)
        .build(&Device::cpu(), 0)
        .unwrap();
    let s = model.summary();
    assert!(
        s.contains("dense_0")
            && s.contains("relu_0")
            && s.contains("dropout_0")
            && s.contains("dense_1"),
        "{s}"
    );
    assert!(
        s.contains("100480") && s.contains("1290") && s.contains("Total params: 101770"),
        "{s}"
    );
    assert_eq!(model.param_count(), 784 * 128 + 128 + 128 * 10 + 10);
    assert_eq!(model.param("dense_1.weight").unwrap().shape(), &[10, 128]);
    assert_eq!(model.param("3.bias").unwrap().shape(), &[10]);
    assert!(model.param("dense_2.weight").is_none());
}

#[test]
fn softmax_models_predict_probabilities_and_learn() {
    let (x, y) = blobs(120, 6, 3, 4);
    for device in [Device::cpu(), gpu()] {
        // Ends in softmax: trained through the fused logits loss, predicts probabilities.
        let model = Sequential::new(6)
            .dense(16)
            .tanh()
            .dense(3)
            .softmax()
            .build(&device, 2)
            .unwrap();
        let metrics = [
            Metric::Accuracy,
            Metric::Precision,
            Metric::Recall,
            Metric::F1,
        ];
        let mut t = model
            .compile(
                Loss::SparseCategoricalCrossEntropy,
                Optimizer::adam(2e-2),
                &metrics,
            )
            .unwrap();
        t.fit(&x, &y, FitOptions::new(30, 16)).unwrap();
        let p = t.predict(&x, 50).unwrap();
        for row in p.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5 && row.iter().all(|&v| v >= 0.0));
        }
        let e = t.evaluate(&x, &y, 50).unwrap();
        for m in ["accuracy", "precision", "recall", "f1"] {
            assert!(e.get(m).unwrap() > 0.95, "{device:?} {m} = {:?}", e.get(m));
        }
        let classes = t.predict_classes(&x, 50).unwrap();
        let right = classes
            .iter()
            .zip(&y)
            .filter(|(c, l)| **c == **l as usize)
            .count();
        assert!(right as f64 / 120.0 > 0.95);
    }
}

#[test]
fn categorical_one_hot_and_binary_models_learn() {
    let (x, y) = blobs(80, 4, 2, 5);
    let onehot: Vec<f32> = y
        .iter()
        .flat_map(|&c| if c == 0.0 { [1.0, 0.0] } else { [0.0, 1.0] })
        .collect();
    let model = Sequential::new(4).dense(2).build(&gpu(), 1).unwrap();
    let mut t = model
        .compile(
            Loss::CategoricalCrossEntropy,
            Optimizer::adam(5e-2),
            &[Metric::Accuracy],
        )
        .unwrap();
    t.fit(&x, &onehot, FitOptions::new(20, 16)).unwrap();
    assert!(
        t.evaluate(&x, &onehot, 80)
            .unwrap()
            .get("accuracy")
            .unwrap()
            > 0.95
    );
    // One sigmoid output with binary cross-entropy on probabilities (fused to logits).
    for from_logits in [false, true] {
        let spec = Sequential::new(4).dense(1);
        let spec = if from_logits { spec } else { spec.sigmoid() };
        let model = spec.build(&gpu(), 1).unwrap();
        let loss = Loss::BinaryCrossEntropy { from_logits };
        let mut t = model
            .compile(loss, Optimizer::adam(5e-2), &[Metric::BinaryAccuracy])
            .unwrap();
        t.fit(&x, &y, FitOptions::new(20, 16)).unwrap();
        let e = t.evaluate(&x, &y, 80).unwrap();
        assert!(
            e.get("binary_accuracy").unwrap() > 0.95,
            "from_logits {from_logits}: {e:?}"
        );
        assert!(t
            .predict(&x, 80)
            .unwrap()
            .iter()
            .all(|p| (0.0..=1.0).contains(p)));
    }
}

#[test]
fn regression_reports_mse_and_mae() {
    // y = 2 x0 - x1 + 0.5
    let x = random(200 * 2, 6);
    let y: Vec<f32> = x.chunks(2).map(|r| 2.0 * r[0] - r[1] + 0.5).collect();
    let model = Sequential::new(2).dense(1).build(&gpu(), 1).unwrap();
    let mut t = model
        .compile(Loss::Mse, Optimizer::sgd(0.1), &[Metric::Mse, Metric::Mae])
        .unwrap();
    t.fit(&x, &y, FitOptions::new(50, 20)).unwrap();
    let e = t.evaluate(&x, &y, 200).unwrap();
    assert!(
        (e.get("mse").unwrap() - e.loss).abs() < 1e-6 * (1.0 + e.loss),
        "{e:?}"
    );
    assert!(
        e.get("mse").unwrap() < 1e-4 && e.get("mae").unwrap() < 1e-2,
        "{e:?}"
    );
    let w = t.model.param("0.weight").unwrap().to_vec().unwrap();
    assert!(
        (w[0] - 2.0).abs() < 0.01 && (w[1] + 1.0).abs() < 0.01,
        "{w:?}"
    );
}

#[test]
fn initializers_have_the_documented_spread() {
    let n = 100_000;
    let std = |v: &[f32]| {
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    };
    let (fi, fo) = (300, 100);
    let cases = [
        (Init::GlorotUniform, (6.0f64 / 400.0).sqrt() / 3f64.sqrt()),
        (Init::GlorotNormal, (2.0f64 / 400.0).sqrt()),
        (Init::HeUniform, (6.0f64 / 300.0).sqrt() / 3f64.sqrt()),
        (Init::HeNormal, (2.0f64 / 300.0).sqrt()),
        (Init::LecunNormal, (1.0f64 / 300.0).sqrt()),
        (Init::Normal(0.0, 0.3), 0.3),
        (Init::Uniform(-1.0, 1.0), 1.0 / 3f64.sqrt()),
    ];
    for (init, want) in cases {
        let v = init.sample(n, fi, fo, 9);
        assert!(
            (std(&v) / want - 1.0).abs() < 0.02,
            "{init:?}: std {} want {want}",
            std(&v)
        );
        assert_eq!(v, init.sample(n, fi, fo, 9), "{init:?} is seeded");
    }
    assert!(Init::Zeros.sample(5, 1, 1, 0).iter().all(|&v| v == 0.0));
    assert!(Init::Constant(0.5)
        .sample(5, 1, 1, 0)
        .iter()
        .all(|&v| v == 0.5));
}

/// Warmup's rate three ways: the documented formula (step s, 0-based, takes (s + 1) / steps of
/// the base rate), the rate each optimizer step applies (under plain SGD a weight moves by
/// the rate times its gradient) and the rate `History` records for the epoch.
#[test]
fn warmup_rate_is_applied_and_recorded_as_documented() {
    let schedule = Schedule::Warmup {
        steps: 4,
        then: Box::new(Schedule::Constant),
    };
    let documented: Vec<f32> = (0..6).map(|s| schedule.lr(0.1, 0, s)).collect();
    let formula = [0.025, 0.05, 0.075, 0.1, 0.1, 0.1];
    assert_close(&documented, &formula, 1e-6, 0.0, "Schedule::lr");
    let (x, y) = (random(5 * 3, 2), random(5 * 2, 3));
    for device in [Device::cpu(), gpu()] {
        let opt = Optimizer::sgd(0.1).schedule(schedule.clone());
        let model = Sequential::new(3).dense(2).build(&device, 1).unwrap();
        let mut t = model.compile(Loss::Mse, opt, &[]).unwrap();
        for (s, &want) in formula.iter().enumerate() {
            let what = format!("{device:?} step {s}");
            assert_close(&[t.current_lr()], &[want], 1e-6, 0.0, &what);
            let (_, grads) = t.gradients(&x, &y).unwrap();
            let before = params_f64(&t.model);
            // One epoch of one full batch is one optimizer step.
            let opts = FitOptions {
                shuffle: false,
                ..FitOptions::new(1, 5)
            };
            let history = t.fit(&x, &y, opts).unwrap();
            let after = params_f64(&t.model);
            for (p, (name, g)) in grads.iter().enumerate() {
                let applied: Vec<f32> = (0..g.len())
                    .map(|k| ((before[p][k] - after[p][k]) / g[k] as f64) as f32)
                    .collect();
                let what = format!("{what}: rate applied to {name}");
                // The weights are f32: a difference of two of them is exact to about 1e-7 / |g|.
                assert_close(&applied, &vec![want; g.len()], 1e-3, 0.0, &what);
            }
            assert_close(&[history.epochs[0].lr], &[want], 1e-6, 0.0, "History");
        }
    }
}
