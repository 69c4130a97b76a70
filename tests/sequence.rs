//! Samples of shape [T, D] through the layers (PyTorch semantics: per position, on the
//! last axis) and the cross-entropy over every position of [T, V] logits: the GPU against
//! the CPU reference, and gradients against central differences.

mod common;

use common::{assert_close, assert_trainer_fd, both, gpu, random};
use kiln::ops::loss::loss_and_grad_into;
use kiln::{Device, Graph, Layer, Loss, Optimizer, Sequential, Tensor, Trainer};

/// Central-difference steps of the f32 losses: the GPU's loss is a sum of f32 partials,
/// whose rounding over a step of 1e-3 is near the tolerance, so it takes a longer step.
const H: f64 = 1e-3;
const H_GPU: f64 = 1e-2;

/// `n` ids in 0..vocab.
fn ids(n: usize, vocab: usize, seed: u64) -> Vec<f32> {
    random(n, seed)
        .iter()
        .map(|v| (((v + 1.0) * 0.5 * vocab as f32) as usize).min(vocab - 1) as f32)
        .collect()
}

/// [T] ids -> embedding -> positions -> dense + GELU -> dropout -> layer norm -> [T, V].
fn per_position_model(t: usize, vocab: usize) -> Sequential {
    Sequential::new(t)
        .embedding(vocab, 6)
        .positional_embedding(t + 3)
        .dense(9)
        .gelu()
        .dropout(0.25)
        .layer_norm()
        .dense(vocab)
}

fn trainer(build: impl Fn(&Device) -> kiln::Model, device: &Device) -> Trainer {
    build(device)
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::sgd(0.1),
            &[],
        )
        .unwrap()
}

/// Loss and gradients on both devices agree, and each matches central differences.
fn check(build: impl Fn(&Device) -> kiln::Model, x: &[f32], y: &[f32], what: &str) {
    let mut cpu = trainer(&build, &Device::cpu());
    let mut gpu_t = trainer(&build, &gpu());
    let (lc, gc) = cpu.gradients(x, y).unwrap();
    let (lg, gg) = gpu_t.gradients(x, y).unwrap();
    assert!(
        (lc - lg).abs() <= 1e-5 * lc.abs().max(1.0),
        "{what}: loss {lc} vs {lg}"
    );
    for ((name, c), (_, g)) in gc.iter().zip(&gg) {
        assert_close(g, c, 1e-3, 1e-5, &format!("{what} {name}"));
    }
    assert_trainer_fd(&mut cpu, x, y, H, what);
    assert_trainer_fd(&mut gpu_t, x, y, H_GPU, what);
    // With dropout on: the counter-based masks are the same on both devices.
    let (lc, gc) = cpu.gradients_training(x, y).unwrap();
    let (lg, gg) = gpu_t.gradients_training(x, y).unwrap();
    assert!(
        (lc - lg).abs() <= 1e-5 * lc.abs().max(1.0),
        "{what} dropout: {lc} vs {lg}"
    );
    for ((name, c), (_, g)) in gc.iter().zip(&gg) {
        assert_close(g, c, 1e-3, 1e-5, &format!("{what} dropout {name}"));
    }
}

#[test]
fn sequence_layers_agree_on_cpu_and_gpu_and_with_finite_differences() {
    for (batch, t, vocab) in [(1, 1, 3), (3, 5, 7), (2, 17, 5)] {
        let spec = per_position_model(t, vocab);
        let shapes = spec.shapes().unwrap();
        assert_eq!(shapes[0], vec![t, 6], "embedding");
        assert_eq!(
            shapes.last().unwrap(),
            &vec![t, vocab],
            "logits per position"
        );
        let x = ids(batch * t, vocab, 1);
        let y = ids(batch * t, vocab, 2);
        let what = format!("batch {batch}, T {t}, vocab {vocab}");
        check(|d| spec.build(d, 3).unwrap(), &x, &y, &what);
    }
}

#[test]
fn a_residual_block_on_sequences_agrees_and_matches_finite_differences() {
    let (t, vocab, d) = (5, 7, 8);
    let mut g = Graph::new();
    g.input("ids", &[t])
        .layer(
            "tok",
            Layer::Embedding(kiln::Embedding::new(vocab, d)),
            &["ids"],
        )
        .layer("pos", Layer::PositionalEmbedding(t), &["tok"])
        .layer("ln", Layer::LayerNorm(Default::default()), &["pos"])
        .layer("fc", Layer::Dense(kiln::Dense::new(d)), &["ln"])
        .layer("act", Layer::Activation(kiln::Activation::Gelu), &["fc"])
        .add("res", &["pos", "act"])
        .layer("out", Layer::Dense(kiln::Dense::new(vocab)), &["res"])
        .output("out");
    let x = ids(3 * t, vocab, 4);
    let y = ids(3 * t, vocab, 5);
    check(|dev| g.build(dev, 9).unwrap(), &x, &y, "residual");
}

#[test]
fn dense_on_sequences_is_a_matmul_per_position() {
    // nn.Linear on [B, T, D]: each position's row times W^T plus b, nothing mixed across
    // positions.
    let (t, d, units) = (3, 4, 2);
    let model = Sequential::new(t * d)
        .reshape(&[t, d])
        .dense(units)
        .build(&Device::cpu(), 5)
        .unwrap();
    let w = model.params()[0].value.to_vec().unwrap();
    let b = model.params()[1].value.to_vec().unwrap();
    let x = random(2 * t * d, 6);
    let mut model = model.compile(Loss::Mse, Optimizer::sgd(0.1), &[]).unwrap();
    let got = model.predict(&x, 2).unwrap();
    assert_eq!(got.len(), 2 * t * units);
    for (p, row) in x.chunks(d).enumerate() {
        for u in 0..units {
            let want = b[u] + (0..d).map(|k| row[k] * w[u * d + k]).sum::<f32>();
            assert!(
                (got[p * units + u] - want).abs() < 1e-5,
                "position {p}, unit {u}"
            );
        }
    }
}

#[test]
fn cross_entropy_over_positions_is_the_mean_over_every_position() {
    let (b, t, v) = (3, 17, 5);
    let logits = random(b * t * v, 7)
        .iter()
        .map(|x| 3.0 * x)
        .collect::<Vec<f32>>();
    let labels = ids(b * t, v, 8);
    // F.cross_entropy(logits.view(-1, V), targets.view(-1)), in f64.
    let reference = |z: &[f64]| {
        let rows = z.chunks(v).zip(&labels);
        let sum: f64 = rows
            .map(|(r, &l)| {
                let m = r.iter().cloned().fold(f64::MIN, f64::max);
                let lse = m + r.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                lse - r[l as usize]
            })
            .sum();
        sum / (b * t) as f64
    };
    let z64: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
    let want = reference(&z64);
    let fd = common::central(&z64, 1e-6, reference);
    for device in [Device::cpu(), gpu()] {
        let pred = Tensor::from_slice(&device, &logits, &[b, t, v]).unwrap();
        let target = Tensor::from_slice(&device, &labels, &[b, t]).unwrap();
        let mut grad = Tensor::zeros(&device, &[b, t, v]).unwrap();
        let mut value = Tensor::zeros(&device, &[1]).unwrap();
        let loss = Loss::SparseCategoricalCrossEntropy;
        loss_and_grad_into(loss, &pred, &target, &mut grad, &mut value).unwrap();
        let got = value.to_vec().unwrap()[0] as f64;
        assert!(
            (got - want).abs() < 1e-5 * want,
            "{device:?}: {got} vs {want}"
        );
        assert_close(
            &grad.to_vec().unwrap(),
            &fd,
            1e-4,
            1e-7,
            &format!("{device:?} grad"),
        );
    }
    // Targets that are not one id per position are refused.
    let (pred, _) = both(&logits, &[b, t, v]);
    let (target, _) = both(&labels[..b * (t - 1)], &[b, t - 1]);
    let mut grad = Tensor::zeros(&Device::cpu(), &[b, t, v]).unwrap();
    let mut value = Tensor::zeros(&Device::cpu(), &[1]).unwrap();
    let loss = Loss::SparseCategoricalCrossEntropy;
    assert!(loss_and_grad_into(loss, &pred, &target, &mut grad, &mut value).is_err());
}

#[test]
fn a_per_position_output_beside_another_trains_with_its_own_targets() {
    // ids [T] -> tok -> pos -> logits [T, V] (cross-entropy over positions) and
    // value [T, 1] (MSE): T class ids and T values per row, packed.
    let (t, vocab, rows) = (4, 5, 3);
    let mut g = Graph::new();
    g.input("ids", &[t])
        .layer(
            "tok",
            Layer::Embedding(kiln::Embedding::new(vocab, 6)),
            &["ids"],
        )
        .layer("pos", Layer::PositionalEmbedding(t), &["tok"])
        .layer("logits", Layer::Dense(kiln::Dense::new(vocab)), &["pos"])
        .layer("value", Layer::Dense(kiln::Dense::new(1)), &["pos"])
        .output("logits")
        .output("value");
    let outputs = [
        kiln::OutputLoss::new("logits", Loss::SparseCategoricalCrossEntropy),
        kiln::OutputLoss::new("value", Loss::Mse).weight(0.5),
    ];
    let x = ids(rows * t, vocab, 10);
    let labels = ids(rows * t, vocab, 11);
    let values = random(rows * t, 12);
    for device in [Device::cpu(), gpu()] {
        let mut tr = g
            .build(&device, 2)
            .unwrap()
            .compile_outputs(&outputs, Optimizer::sgd(0.1))
            .unwrap();
        assert_eq!(tr.target_width(), 2 * t, "T ids and T values per row");
        let y = tr.pack_targets(&[&labels, &values]).unwrap();
        assert_trainer_fd(
            &mut tr,
            &x,
            &y,
            H_GPU,
            &format!("two outputs on {device:?}"),
        );
        let mut bad = labels.clone();
        bad[t + 1] = vocab as f32;
        let y = tr.pack_targets(&[&bad, &values]).unwrap();
        assert!(tr.gradients(&x, &y).is_err(), "a label past the vocabulary");
    }
}

#[test]
fn sequence_outputs_train_with_one_hot_and_regression_targets() {
    // [T, V] outputs against targets packed flat per row ([B, T * V]): categorical
    // cross-entropy on one-hot rows with accuracy per position, and MSE with its metrics.
    let (t, vocab, rows) = (3, 4, 5);
    let x = ids(rows * t, vocab, 20);
    let labels = ids(rows * t, vocab, 21);
    let one_hot: Vec<f32> = labels
        .iter()
        .flat_map(|&l| (0..vocab).map(move |c| f32::from(c == l as usize)))
        .collect();
    let spec = Sequential::new(t).embedding(vocab, 6).dense(vocab);
    for device in [Device::cpu(), gpu()] {
        let cases = [
            (
                Loss::CategoricalCrossEntropy,
                kiln::Metric::Accuracy,
                &one_hot,
            ),
            (Loss::Mse, kiln::Metric::Mae, &one_hot),
        ];
        for (loss, metric, y) in cases {
            let mut tr = spec
                .build(&device, 4)
                .unwrap()
                .compile(loss, Optimizer::sgd(0.1), &[metric])
                .unwrap();
            assert_eq!(tr.target_width(), t * vocab);
            let e = tr.evaluate(&x, y, 2).unwrap();
            let (name, v) = &e.metrics[0];
            assert!(
                e.loss.is_finite() && v.is_finite() && *v >= 0.0,
                "{loss:?} {name} {v}"
            );
            if loss == Loss::CategoricalCrossEntropy {
                // Accuracy counts positions: the argmax of each position's logits.
                let logits = tr.predict(&x, 2).unwrap();
                let hits = logits
                    .chunks(vocab)
                    .zip(&labels)
                    .filter(|(p, &l)| {
                        let best = (0..vocab).fold(0, |b, c| if p[c] > p[b] { c } else { b });
                        best == l as usize
                    })
                    .count();
                let want = hits as f64 / (rows * t) as f64;
                assert!(
                    (v - want).abs() < 1e-9,
                    "accuracy {v} vs {want} on {device:?}"
                );
            }
        }
    }
}
