//! The training API end to end: CPU/GPU agreement, gradients against finite
//! differences, models that learn, and typed errors for bad input.
mod common;
use common::*;
use kiln::nn::Init;
use kiln::optim::Rule;
use kiln::{Dense, Device, FitOptions, Loss, Metric, Optimizer, Sequential, Validation};

fn mlp() -> Sequential {
    Sequential::new(6).dense(9).relu().dense(7).tanh().dense(4)
}

fn optimizers() -> Vec<(&'static str, Optimizer)> {
    vec![
        ("sgd", Optimizer::sgd(0.1)),
        ("momentum", Optimizer::sgd_momentum(0.05, 0.9, false)),
        (
            "nesterov",
            Optimizer::sgd_momentum(0.05, 0.9, true).weight_decay(1e-3),
        ),
        ("adam", Optimizer::adam(1e-2)),
        ("adamw", Optimizer::adamw(1e-2, 0.05)),
        ("rmsprop", Optimizer::rmsprop(1e-2)),
        ("adagrad", Optimizer::adagrad(1e-1)),
        ("adam+clip", Optimizer::adam(1e-2).clip_norm(0.5)),
    ]
}

/// Three steps from the same weights and batches on both devices give the same parameters.
#[test]
fn cpu_and_gpu_training_agree_for_every_optimizer() {
    let x = random(5 * 6, 11);
    let y: Vec<f32> = (0..5).map(|i| (i % 4) as f32).collect();
    for (name, opt) in optimizers() {
        let mut params = Vec::new();
        for device in [Device::cpu(), gpu()] {
            let spec = mlp().dense_with(Dense::new(4).regularize(1e-3, 1e-3));
            let model = spec.build(&device, 5).unwrap();
            let mut t = model
                .compile(Loss::SparseCategoricalCrossEntropy, opt.clone(), &[])
                .unwrap();
            for step in 0..3 {
                let xs: Vec<f32> = x.iter().map(|v| v * (1.0 + step as f32 * 0.1)).collect();
                t.train_batch(&xs, &y).unwrap();
            }
            let p: Vec<Vec<f32>> = t
                .model
                .params()
                .iter()
                .map(|p| p.value.to_vec().unwrap())
                .collect();
            params.push(p);
        }
        for (i, (c, g)) in params[0].iter().zip(&params[1]).enumerate() {
            assert_close(g, c, 1e-4, 1e-5, &format!("{name} param {i}"));
        }
    }
}

/// An f64 forward pass of `mlp()` written independently of kiln, for finite differences.
fn f64_loss(params: &[Vec<f64>], x: &[f64], y: &[usize], rows: usize) -> f64 {
    let layers = [(6, 9, 1), (9, 7, 2), (7, 4, 0)]; // (in, out, act: 1 relu 2 tanh 0 none)
    let mut h: Vec<f64> = x.to_vec();
    for (l, &(fan_in, fan_out, act)) in layers.iter().enumerate() {
        let (w, b) = (&params[2 * l], &params[2 * l + 1]);
        let mut next = vec![0.0; rows * fan_out];
        for r in 0..rows {
            for o in 0..fan_out {
                let mut z = b[o];
                for i in 0..fan_in {
                    z += h[r * fan_in + i] * w[o * fan_in + i];
                }
                next[r * fan_out + o] = match act {
                    1 => z.max(0.0),
                    2 => z.tanh(),
                    _ => z,
                };
            }
        }
        h = next;
    }
    let mut loss = 0.0;
    for r in 0..rows {
        let row = &h[r * 4..(r + 1) * 4];
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        loss += lse - row[y[r]];
    }
    loss / rows as f64
}

#[test]
fn model_gradients_match_finite_differences() {
    let rows = 4;
    let x = random(rows * 6, 21);
    let y = [0usize, 3, 1, 2];
    let yf: Vec<f32> = y.iter().map(|&v| v as f32).collect();
    let model = mlp().build(&Device::cpu(), 3).unwrap();
    let mut t = model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::sgd(0.1),
            &[],
        )
        .unwrap();
    let (loss, grads) = t.gradients(&x, &yf).unwrap();
    let params = params_f64(&t.model);
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let base = f64_loss(&params, &xd, &y, rows);
    assert!(
        (base - loss as f64).abs() < 1e-5,
        "loss {loss} vs f64 {base}"
    );
    // f32 analytic gradient vs f64 central difference.
    assert_grads_match_fd(&grads, &params, |p| f64_loss(p, &xd, &y, rows));
}

fn xor_data() -> (Vec<f32>, Vec<f32>) {
    (vec![0., 0., 0., 1., 1., 0., 1., 1.], vec![0., 1., 1., 0.])
}

#[test]
fn xor_learns_to_full_accuracy_on_both_devices() {
    let (x, y) = xor_data();
    for device in [Device::cpu(), gpu()] {
        let spec = Sequential::new(2)
            .dense_with(Dense::new(4).kernel_init(Init::Uniform(-1.0, 1.0)))
            .sigmoid()
            .dense(1)
            .sigmoid();
        let model = spec.build(&device, 1).unwrap();
        let mut t = model
            .compile(Loss::Mse, Optimizer::sgd(2.0), &[Metric::BinaryAccuracy])
            .unwrap();
        let opts = FitOptions {
            shuffle: false,
            ..FitOptions::new(3000, 4)
        };
        let history = t.fit(&x, &y, opts).unwrap();
        let classes = t.predict_classes(&x, 4).unwrap();
        assert_eq!(
            classes,
            vec![0, 1, 1, 0],
            "{device:?}: final loss {:?}",
            history.last().map(|e| e.loss)
        );
        let eval = t.evaluate(&x, &y, 4).unwrap();
        assert_eq!(eval.get("binary_accuracy"), Some(1.0));
        assert!(eval.loss < 0.05, "loss {}", eval.loss);
    }
}

#[test]
fn digits_mlp_reaches_95_percent() {
    let Ok(data) = kiln::data::digits() else {
        panic!("the embedded digits data set must load");
    };
    let (mut train, mut test) = data.split(0.2, 7).unwrap();
    let scaler = train.scale(kiln::data::Scaling::Divide(16.0)).unwrap();
    scaler.apply(&mut test).unwrap();
    let mut t = relu_classifier(&gpu(), &[64, 64, 10], 1e-2, &[Metric::Accuracy]);
    let opts = FitOptions {
        validation: Validation::Split(0.1),
        ..FitOptions::new(30, 32)
    };
    let history = t.fit(&train.x, &train.y, opts).unwrap();
    let eval = t.evaluate(&test.x, &test.y, 256).unwrap();
    let acc = eval.get("accuracy").unwrap();
    println!(
        "digits: held-out accuracy {acc:.4}, last epoch {:?}",
        history.last()
    );
    assert!(acc >= 0.95, "held-out accuracy {acc}");
    let cm = eval.confusion.unwrap();
    assert_eq!(cm.total() as usize, test.n);
}

#[test]
fn same_seed_gives_same_weights() {
    let x = random(40 * 6, 3);
    let y: Vec<f32> = (0..40).map(|i| (i % 4) as f32).collect();
    let run = || {
        let model = mlp().dropout(0.3).dense(4).build(&gpu(), 9).unwrap();
        let mut t = model
            .compile(
                Loss::SparseCategoricalCrossEntropy,
                Optimizer::adam(1e-2),
                &[],
            )
            .unwrap();
        t.fit(
            &x,
            &y,
            FitOptions {
                seed: 4,
                ..FitOptions::new(3, 8)
            },
        )
        .unwrap();
        t.model
            .params()
            .iter()
            .flat_map(|p| p.value.to_vec().unwrap())
            .collect::<Vec<f32>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn bad_inputs_are_typed_errors() {
    let d = Device::cpu();
    // Layer sizes that don't chain name the layer.
    let spec = Sequential::new(4)
        .dense(8)
        .add(kiln::Layer::Dense(Dense::with_inputs(7, 2)));
    match spec.build(&d, 0) {
        Err(kiln::Error::Shape { op, .. }) => assert!(op.contains("layer 1"), "{op}"),
        other => panic!("expected a shape error, got {:?}", other.err()),
    }
    let model = Sequential::new(4).dense(3).build(&d, 0).unwrap();
    let mut t = model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::sgd(0.1),
            &[],
        )
        .unwrap();
    // Labels out of range name the row and the class count.
    match t.train_batch(&[0.0; 8], &[0.0, 3.0]) {
        Err(kiln::Error::InvalidArgument { name, detail }) => {
            assert!(
                name.contains("labels") && detail.contains("row 1") && detail.contains("3 classes"),
                "{detail}"
            )
        }
        other => panic!("expected a label error, got {other:?}"),
    }
    // A batch of the wrong width.
    assert!(matches!(
        t.train_batch(&[0.0; 10], &[0.0, 1.0]),
        Err(kiln::Error::Shape { .. })
    ));
    // NaN inputs.
    assert!(matches!(
        t.train_batch(&[f32::NAN; 4], &[0.0]),
        Err(kiln::Error::InvalidArgument { .. })
    ));
    // Targets that don't match the rows.
    assert!(matches!(
        t.fit(&[0.0; 8], &[0.0], FitOptions::default()),
        Err(kiln::Error::Shape { .. })
    ));
}

#[test]
fn optimizer_rules_have_the_documented_state() {
    assert_eq!(
        Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            amsgrad: true
        }
        .state_slots(),
        3
    );
    assert!(Optimizer::from_name("adamw", 1e-3).is_some());
    assert!(Optimizer::from_name("lbfgs", 1e-3).is_none());
}

/// A fitted step of a two-layer MLP on the GPU is five dispatches (one gather, the hidden
/// layer's forward matmul, the fused classifier head, the hidden layer's weight-gradient
/// matmul, one optimizer dispatch for the four tensors, packed in one buffer each for the
/// values, gradients and state) and reads nothing back; the
/// epoch reads its loss log back once. Steps go to the GPU `steps_per_execution` at a
/// time, and how they are grouped changes nothing in the weights.
#[test]
fn fitted_steps_are_five_dispatches_submitted_steps_per_execution_at_a_time() {
    isolate_autotune_cache();
    // A device of its own, so other tests' work does not show in its counters.
    let device = Device::gpu().unwrap();
    let (rows, batch) = (128, 16);
    let x = random(rows * 16, 3);
    let y: Vec<f32> = (0..rows).map(|i| (i % 3) as f32).collect();
    let steps = (rows / batch) as u64;
    let mut weights = Vec::new();
    for per in [1, 3, FitOptions::default().steps_per_execution] {
        let mut t = relu_classifier(&device, &[16, 8, 3], 1e-2, &[]);
        let opts = || FitOptions {
            shuffle: false,
            steps_per_execution: per,
            ..FitOptions::new(1, batch)
        };
        // The first epoch builds pipelines, workspaces and state, and tunes the matmuls.
        t.fit(&x, &y, opts()).unwrap();
        device.synchronize().unwrap();
        let before = device.stats();
        t.fit(&x, &y, opts()).unwrap();
        let after = device.stats();
        assert!(
            kiln::ops::dense_head::head_fits(&device, batch, 8, 3),
            "this count assumes the fused head, which every adapter tested binds"
        );
        // Packed parameters update in one dispatch; unpacked, in one per four tensors
        // or, on adapters that bind too few buffers for that (GL), one per tensor.
        let optimizer = if t.model.is_packed() || kiln::ops::optim::groups_of_four(&device) {
            1
        } else {
            4
        };
        assert!(t.model.is_packed(), "GPU models are packed");
        assert_eq!(
            after.dispatches - before.dispatches,
            (4 + optimizer) * steps,
            "dispatches"
        );
        // A submission per `per` steps, and one for the epoch's readback.
        assert_eq!(
            after.submissions - before.submissions,
            steps.div_ceil(per as u64) + 1,
            "submissions, {per} steps per execution"
        );
        assert_eq!(
            after.bytes_read - before.bytes_read,
            4 * steps,
            "bytes read"
        );
        assert_eq!(
            after.buffers_created, before.buffers_created,
            "buffers created"
        );
        let w: Vec<Vec<f32>> = t
            .model
            .params()
            .iter()
            .map(|p| p.value.to_vec().unwrap())
            .collect();
        weights.push(w);
    }
    assert!(weights.windows(2).all(|w| w[0] == w[1]), "same weights");
}

/// The fused classifier head (output layer, loss and the backward into the layer before,
/// one dispatch) gives the gradients of the unfused ops: a training step's gradients,
/// left in the parameters, against `gradients()` at the same weights, which runs the
/// ops one by one. Covers a dense hidden layer with each fusable activation, one without
/// biases, a standalone activation before the head, one-hot targets through a final
/// softmax, a deeper stack, and a hidden width the kernel does not take (unfused).
#[test]
fn the_fused_head_gives_the_unfused_gradients() {
    let (rows, inputs, classes) = (24, 12, 5);
    let x = random(rows * inputs, 7);
    let labels: Vec<f32> = (0..rows).map(|i| ((i * 7) % classes) as f32).collect();
    let one_hot: Vec<f32> = (0..rows * classes)
        .map(|e| f32::from(u8::from(labels[e / classes] as usize == e % classes)))
        .collect();
    let base = || Sequential::new(inputs);
    let cases: Vec<(&str, Sequential, Loss)> = vec![
        (
            "relu",
            base().dense(16).relu().dense(classes),
            Loss::SparseCategoricalCrossEntropy,
        ),
        (
            "tanh",
            base().dense(8).tanh().dense(classes),
            Loss::SparseCategoricalCrossEntropy,
        ),
        (
            "sigmoid",
            base().dense(8).sigmoid().dense(classes),
            Loss::SparseCategoricalCrossEntropy,
        ),
        (
            "leaky",
            base().dense(8).leaky_relu(0.2).dense(classes),
            Loss::SparseCategoricalCrossEntropy,
        ),
        (
            "no bias",
            base()
                .dense_with(Dense::new(8).no_bias())
                .relu()
                .dense_with(Dense::new(classes).no_bias()),
            Loss::SparseCategoricalCrossEntropy,
        ),
        (
            "gelu before",
            base().dense(8).gelu().dense(classes),
            Loss::SparseCategoricalCrossEntropy,
        ),
        (
            "softmax one-hot",
            base().dense(8).relu().dense(classes).softmax(),
            Loss::CategoricalCrossEntropy,
        ),
        (
            "deep",
            base().dense(16).relu().dense(8).relu().dense(classes),
            Loss::SparseCategoricalCrossEntropy,
        ),
        (
            "width 6",
            base().dense(6).relu().dense(classes),
            Loss::SparseCategoricalCrossEntropy,
        ),
    ];
    for (name, spec, loss) in cases {
        let y = match loss {
            Loss::CategoricalCrossEntropy => &one_hot,
            _ => &labels,
        };
        let model = spec.build(&gpu(), 3).unwrap();
        let mut t = model.compile(loss, Optimizer::sgd(0.1), &[]).unwrap();
        let (_, want) = t.gradients(&x, y).unwrap();
        t.train_batch(&x, y).unwrap();
        for (p, (wname, w)) in t.model.params().iter().zip(&want) {
            assert_eq!(&p.name, wname);
            let got = p.grad.to_vec().unwrap();
            // The same sums in another order, in f32.
            assert_close(&got, w, 1e-4, 1e-6, &format!("{name}: {wname}"));
        }
    }
}

/// `set_fused_head(false)` trains through the separate ops, with more dispatches per step,
/// to the same weights (within f32 rounding) as the fused head.
#[test]
fn unfused_head_trains_to_the_same_weights_with_more_dispatches() {
    let device = Device::gpu().unwrap();
    let (rows, batch) = (64, 16);
    let x = random(rows * 16, 5);
    let y: Vec<f32> = (0..rows).map(|i| (i % 3) as f32).collect();
    let mut runs = Vec::new();
    for fused in [true, false] {
        let mut t = relu_classifier(&device, &[16, 8, 3], 1e-2, &[]);
        t.set_fused_head(fused);
        let opts = || FitOptions {
            shuffle: false,
            ..FitOptions::new(1, batch)
        };
        t.fit(&x, &y, opts()).unwrap();
        device.synchronize().unwrap();
        let before = device.stats().dispatches;
        t.fit(&x, &y, opts()).unwrap();
        let dispatches = device.stats().dispatches - before;
        runs.push((dispatches, params_f64(&t.model)));
    }
    let ((fused, a), (unfused, b)) = (&runs[0], &runs[1]);
    assert!(
        unfused > fused,
        "{unfused} dispatches unfused, {fused} fused"
    );
    for (p, q) in a.iter().zip(b) {
        let p: Vec<f32> = p.iter().map(|&v| v as f32).collect();
        let q: Vec<f32> = q.iter().map(|&v| v as f32).collect();
        assert_close(&p, &q, 1e-4, 1e-6, "fused vs unfused weights");
    }
}
