//! Whole-model gradients against finite differences of the loss the trainer reports, for
//! every layer, activation, option and loss, on the CPU reference and on the GPU.
//!
//! Black box: each parameter element in turn is moved by +-h in the model itself, the
//! trainer reports the loss there, and (up - down) / 2h must match the analytic gradient
//! the trainer gives at the unmoved point.
mod common;
use common::*;
use kiln::{Activation, Dense, Device, Layer, Loss, Optimizer, Sequential, Trainer};

/// Rows per batch.
const ROWS: usize = 5;
/// Finite-difference step: large enough that f32 rounding of the loss (~1e-7 relative)
/// costs ~1e-5 in the difference quotient, small enough that the curvature term
/// (h^2/6 f''') stays near 1e-6.
const H: f32 = 3e-3;
/// A kink's input (ReLU or leaky ReLU at 0, a max-pool tie, MAE at zero error, |w| under
/// L1) must be this far from the kink. Every model here has its kinks right after the
/// first parametrized layer (or at the output, for MAE), where moving one parameter by h
/// moves each value by at most h * max(1, |x|) = h (inputs lie in [-1, 1]), so no
/// central difference crosses one.
const MARGIN: f32 = 3.0 * H;
/// |analytic - fd| <= ATOL + RTOL |fd|. f32 losses carry a few ulps (~3e-7 absolute) of
/// rounding, which a difference quotient over 2h = 6e-3 turns into up to ~5e-5 absolute:
/// the floor. Curvature (h^2/6 f''') is far below 1e-3 relative for these tiny models.
/// Measured on lavapipe and the CPU: the worst element uses 35% of this tolerance.
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-4;
/// Learning rate of the SGD step the `Step` probe reads its gradient from.
const LR: f32 = 1.0;

/// How the loss and its gradient are read from the trainer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Probe {
    /// `Trainer::gradients` (dropout off).
    Gradients,
    /// `Trainer::gradients_training`: dropout on, with the masks of the next step.
    Training,
    /// A real SGD step (lr 1): the gradient is the weights' change, penalties and the fused
    /// classifier head included; the loss is `evaluate`'s, penalty included.
    Step,
}

fn devices() -> [Device; 2] {
    [Device::cpu(), gpu()]
}

/// `spec` built with seed 7 and compiled with `loss` and SGD; weights under an L1 penalty
/// are pushed at least 2 `MARGIN` away from its kink at 0.
fn trainer(spec: &Sequential, loss: Loss, device: &Device) -> Trainer {
    let mut t = spec
        .build(device, 7)
        .unwrap()
        .compile(loss, Optimizer::sgd(LR), &[])
        .unwrap();
    for p in t.model.params_mut().iter_mut().filter(|p| p.l1 != 0.0) {
        let v: Vec<f32> = p.value.to_vec().unwrap();
        let v: Vec<f32> = v
            .iter()
            .map(|&w| w.signum() * w.abs().max(2.0 * MARGIN))
            .collect();
        p.value.write(&v).unwrap();
    }
    t
}

/// The loss and the gradients (in `params()` order) as `probe` reads them.
fn probe(t: &mut Trainer, how: Probe, x: &[f32], y: &[f32]) -> (f64, Vec<Vec<f32>>) {
    let named = match how {
        Probe::Gradients => t.gradients(x, y).unwrap(),
        Probe::Training => t.gradients_training(x, y).unwrap(),
        Probe::Step => {
            let loss = t.evaluate(x, y, ROWS).unwrap().loss;
            let before = values(t);
            t.train_batch(x, y).unwrap();
            let after = values(t);
            set_values(t, &before);
            let grads = before
                .iter()
                .zip(&after)
                .map(|(b, a)| b.iter().zip(a).map(|(b, a)| (b - a) / LR).collect())
                .collect();
            return (loss, grads);
        }
    };
    (
        named.0 as f64,
        named.1.into_iter().map(|(_, g)| g).collect(),
    )
}

/// The loss alone, as `probe` reads it.
fn loss_at(t: &mut Trainer, how: Probe, x: &[f32], y: &[f32]) -> f64 {
    match how {
        Probe::Gradients => t.gradients(x, y).unwrap().0 as f64,
        Probe::Training => t.gradients_training(x, y).unwrap().0 as f64,
        Probe::Step => t.evaluate(x, y, ROWS).unwrap().loss,
    }
}

fn values(t: &Trainer) -> Vec<Vec<f32>> {
    t.model
        .params()
        .iter()
        .map(|p| p.value.to_vec().unwrap())
        .collect()
}

fn set_values(t: &mut Trainer, v: &[Vec<f32>]) {
    for (p, v) in t.model.params_mut().iter_mut().zip(v) {
        p.value.write(v).unwrap();
    }
}

/// The output of `spec`'s first `k` layers on `x`, with `t`'s weights (inference pass:
/// only used on prefixes without dropout or batch norm).
fn prefix_output(t: &Trainer, spec: &Sequential, k: usize, x: &[f32]) -> Vec<f32> {
    if k == 0 {
        return x.to_vec();
    }
    let prefix = Sequential {
        layers: spec.layers[..k].to_vec(),
        ..spec.clone()
    };
    let mut m = prefix.build(&Device::cpu(), 0).unwrap();
    let weights = values(t);
    for (p, w) in m.params_mut().iter_mut().zip(&weights) {
        p.value.write(w).unwrap();
    }
    m.forward(x).unwrap()
}

/// Where a kink lies within `MARGIN` of the point the check takes differences around.
fn kink_near(
    t: &mut Trainer,
    spec: &Sequential,
    loss: Loss,
    x: &[f32],
    y: &[f32],
) -> Option<String> {
    let shapes = spec.shapes().unwrap();
    for (k, layer) in spec.layers.iter().enumerate() {
        let near = match layer {
            Layer::Activation(Activation::Relu | Activation::LeakyRelu(_)) => {
                let z = prefix_output(t, spec, k, x);
                z.iter()
                    .position(|v| v.abs() < MARGIN)
                    .map(|i| format!("input {i} = {}", z[i]))
            }
            Layer::MaxPool2d(pool) => {
                assert_eq!(pool.padding, (0, 0), "the tie check assumes no padding");
                let z = prefix_output(t, spec, k, x);
                let &[c, h, w] = &shapes[k - 1][..] else {
                    panic!("max pool of a non-image")
                };
                let (out_h, out_w) = (shapes[k][1], shapes[k][2]);
                let ((kh, kw), (sh, sw)) = (pool.kernel, pool.stride);
                let mut found = None;
                for (r, ch) in (0..ROWS).flat_map(|r| (0..c).map(move |ch| (r, ch))) {
                    for (oy, ox) in (0..out_h).flat_map(|oy| (0..out_w).map(move |ox| (oy, ox))) {
                        let mut window: Vec<f32> = (0..kh)
                            .flat_map(|dy| (0..kw).map(move |dx| (oy * sh + dy, ox * sw + dx)))
                            .map(|(iy, ix)| z[((r * c + ch) * h + iy) * w + ix])
                            .collect();
                        window.sort_by(|a, b| b.total_cmp(a));
                        if window.len() > 1 && window[0] - window[1] < MARGIN {
                            found = Some(format!(
                                "row {r} channel {ch} window ({oy}, {ox}) {window:?}"
                            ));
                        }
                    }
                }
                found
            }
            Layer::Dense(d) if d.l1 != 0.0 => {
                let w = t
                    .model
                    .param(&format!("{k}.weight"))
                    .unwrap()
                    .to_vec()
                    .unwrap();
                w.iter()
                    .position(|v| v.abs() < MARGIN)
                    .map(|i| format!("weight {i} = {}", w[i]))
            }
            _ => None,
        };
        if let Some(near) = near {
            return Some(format!("layer {k} ({}): {near}", layer.kind()));
        }
    }
    if loss == Loss::Mae {
        let out = prefix_output(t, spec, spec.layers.len(), x);
        let i = out
            .iter()
            .zip(y)
            .position(|(o, y)| (o - y).abs() < MARGIN)?;
        return Some(format!(
            "output {i}: prediction {} at target {}",
            out[i], y[i]
        ));
    }
    None
}

/// Inputs in [-1, 1) for `spec`, from the first seed whose point is clear of every kink.
fn clear_inputs(spec: &Sequential, loss: Loss, y: &[f32]) -> Vec<f32> {
    let mut t = trainer(spec, loss, &Device::cpu());
    (100..200)
        .map(|seed| random(ROWS * spec.input, seed))
        .find(|x| kink_near(&mut t, spec, loss, x, y).is_none())
        .expect("a seed whose inputs are clear of kinks")
}

/// Checks every element of every parameter of `spec` (built with seed 7 on `device`,
/// compiled with `loss` and SGD): the gradient `how` reads against central differences of
/// the loss it reports. Returns the worst |error| / tolerance.
fn check_model_with(
    how: Probe,
    spec: &Sequential,
    loss: Loss,
    device: &Device,
    x: &[f32],
    y: &[f32],
    what: &str,
) -> f64 {
    let what = format!("{what} on {device:?}");
    let mut t = trainer(spec, loss, device);
    if let Some(near) = kink_near(&mut t, spec, loss, x, y) {
        panic!("{what}: a kink within {MARGIN} of the point: {near}");
    }
    let (base, grads) = probe(&mut t, how, x, y);
    assert!(base.is_finite(), "{what}: loss {base}");
    let mut w = values(&t);
    let names: Vec<String> = t.model.params().iter().map(|p| p.name.clone()).collect();
    assert_eq!(grads.len(), w.len(), "{what}: one gradient per parameter");
    let mut worst = 0.0f64;
    let (mut worst_abs, mut worst_rel) = (0.0f64, 0.0f64);
    for (p, grad) in grads.iter().enumerate() {
        assert_eq!(grad.len(), w[p].len(), "{what}: {} gradient size", names[p]);
        for (k, &g) in grad.iter().enumerate() {
            let keep = w[p][k];
            let (up_w, down_w) = (keep + H, keep - H);
            w[p][k] = up_w;
            set_values(&mut t, &w);
            let up = loss_at(&mut t, how, x, y);
            w[p][k] = down_w;
            set_values(&mut t, &w);
            let down = loss_at(&mut t, how, x, y);
            w[p][k] = keep;
            // The step actually taken, in f32.
            let fd = (up - down) / (up_w as f64 - down_w as f64);
            let err = (g as f64 - fd).abs();
            let tol = ATOL + RTOL * fd.abs();
            assert!(
                err <= tol,
                "{what}: {}[{k}]: analytic {g}, finite difference {fd} (tolerance {tol:.2e})",
                names[p]
            );
            worst = worst.max(err / tol);
            worst_abs = worst_abs.max(err);
            if fd.abs() > 1e-2 {
                worst_rel = worst_rel.max(err / fd.abs());
            }
        }
    }
    set_values(&mut t, &w);
    let (again, _) = probe(&mut t, how, x, y);
    assert_eq!(again, base, "{what}: the check left the model changed");
    eprintln!(
        "{what}: worst error {worst:.3} of the tolerance \
         (largest absolute {worst_abs:.1e}, largest relative where |fd| > 0.01 {worst_rel:.1e})"
    );
    worst
}

/// `check_model_with(Probe::Gradients, ..)`, or `Probe::Step` when a layer has an L1 or
/// L2 penalty (which only the optimizer step and the reported training loss include).
fn check_model(spec: Sequential, loss: Loss, device: &Device, x: &[f32], y: &[f32], what: &str) {
    let penalised = spec
        .layers
        .iter()
        .any(|l| matches!(l, Layer::Dense(d) if d.l1 != 0.0 || d.l2 != 0.0));
    let how = if penalised {
        Probe::Step
    } else {
        Probe::Gradients
    };
    check_model_with(how, &spec, loss, device, x, y, what);
}

/// Checks `spec` on both devices, with inputs clear of kinks.
fn check_both(spec: Sequential, loss: Loss, y: &[f32], what: &str) {
    let x = clear_inputs(&spec, loss, y);
    for device in devices() {
        check_model(spec.clone(), loss, &device, &x, y, what);
    }
}

/// Regression targets in [-1, 1).
fn targets(width: usize) -> Vec<f32> {
    random(ROWS * width, 3)
}

/// Class ids 0..classes.
fn labels(classes: usize) -> Vec<f32> {
    (0..ROWS).map(|r| ((r * 2 + 1) % classes) as f32).collect()
}

/// Soft targets: rows of probabilities summing to 1.
fn soft_targets(classes: usize) -> Vec<f32> {
    random(ROWS * classes, 4)
        .chunks(classes)
        .flat_map(|row| {
            let e: Vec<f32> = row.iter().map(|v| (2.0 * v).exp()).collect();
            let s: f32 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect()
}

// ------------------------------------------------------------ activations

/// The activation after a dense layer (fused into it unless its derivative needs the
/// pre-activation) and standalone after a convolution, under MSE.
fn activation_checks(act: Activation) {
    let after_dense = Sequential::new(3).dense(4).activation(act).dense(2);
    check_both(
        after_dense,
        Loss::Mse,
        &targets(2),
        &format!("dense {act:?}"),
    );
    let standalone = Sequential::image(1, 2, 3)
        .conv2d(2, 3)
        .activation(act)
        .flatten()
        .dense(2);
    check_both(
        standalone,
        Loss::Mse,
        &targets(2),
        &format!("standalone {act:?}"),
    );
}

#[test]
fn identity_gradients() {
    activation_checks(Activation::Identity);
}

#[test]
fn relu_gradients() {
    activation_checks(Activation::Relu);
}

#[test]
fn leaky_relu_positive_slope_gradients() {
    activation_checks(Activation::LeakyRelu(0.2));
}

#[test]
fn leaky_relu_negative_slope_gradients() {
    // Its output is positive on both sides of 0: the derivative needs the pre-activation.
    let spec = Sequential::new(3).dense(4).leaky_relu(-0.3).dense(2);
    check_both(spec, Loss::Mse, &targets(2), "dense leaky_relu(-0.3)");
    activation_checks(Activation::LeakyRelu(-0.3));
}

#[test]
fn sigmoid_gradients() {
    activation_checks(Activation::Sigmoid);
}

#[test]
fn tanh_gradients() {
    activation_checks(Activation::Tanh);
}

#[test]
fn gelu_gradients() {
    activation_checks(Activation::Gelu);
}

#[test]
fn softmax_layer_inside_a_model_gradients() {
    let spec = Sequential::new(4).dense(5).softmax().dense(2);
    check_both(spec, Loss::Mse, &targets(2), "softmax inside");
}

// ------------------------------------------------------------ penalties

#[test]
fn l1_and_l2_penalty_gradients() {
    // Penalties large enough that a wrong penalty gradient shows past the tolerance.
    let l1 = Sequential::new(3)
        .dense_with(Dense::new(4).regularize(0.05, 0.0))
        .tanh()
        .dense(2);
    check_both(l1, Loss::Mse, &targets(2), "L1");
    let l2 = Sequential::new(3)
        .dense(4)
        .tanh()
        .dense_with(Dense::new(2).regularize(0.0, 0.1));
    check_both(l2, Loss::Mse, &targets(2), "L2");
    let both = Sequential::new(4)
        .dense_with(Dense::new(5).regularize(0.02, 0.03))
        .relu()
        .dense_with(Dense::new(3).regularize(0.01, 0.05));
    check_both(
        both,
        Loss::SparseCategoricalCrossEntropy,
        &labels(3),
        "L1 and L2",
    );
}

// ------------------------------------------------------------ convolution and pooling

#[test]
fn conv_max_pool_flatten_dense_gradients() {
    let spec = Sequential::image(1, 4, 4)
        .conv2d(2, 3)
        .max_pool(2)
        .flatten()
        .dense(2);
    check_both(spec, Loss::Mse, &targets(2), "conv max pool");
}

#[test]
fn conv_avg_pool_flatten_dense_gradients() {
    let spec = Sequential::image(2, 4, 4)
        .conv2d(2, 3)
        .avg_pool(2)
        .flatten()
        .dense(2);
    check_both(spec, Loss::Mse, &targets(2), "conv average pool");
}

#[test]
fn global_avg_pool_gradients() {
    let spec = Sequential::image(2, 3, 3)
        .conv2d(3, 3)
        .global_avg_pool()
        .dense(2);
    check_both(spec, Loss::Mse, &targets(2), "global average pool");
}

#[test]
fn reshape_gradients() {
    let spec = Sequential::new(4)
        .dense(8)
        .tanh()
        .reshape(&[2, 2, 2])
        .conv2d(2, 3)
        .flatten()
        .dense(2);
    check_both(spec, Loss::Mse, &targets(2), "reshape");
}

// ------------------------------------------------------------ normalisation and dropout

#[test]
fn batch_norm_inside_a_model_gradients() {
    let dense = Sequential::new(4).dense(5).batch_norm().tanh().dense(2);
    check_both(dense, Loss::Mse, &targets(2), "batch norm 1d");
    let conv = Sequential::image(2, 3, 3)
        .conv2d(2, 3)
        .batch_norm()
        .tanh()
        .flatten()
        .dense(2);
    check_both(conv, Loss::Mse, &targets(2), "batch norm 2d");
}

#[test]
fn layer_norm_inside_a_model_gradients() {
    let spec = Sequential::new(4).dense(6).layer_norm().tanh().dense(2);
    check_both(spec, Loss::Mse, &targets(2), "layer norm");
}

#[test]
fn dropout_gradients_with_the_mask_fixed() {
    let specs = [
        Sequential::new(4).dense(6).dropout(0.5).dense(2),
        Sequential::new(4)
            .dense(6)
            .tanh()
            .dropout(0.3)
            .dense(3)
            .tanh()
            .dense(2),
    ];
    for (i, spec) in specs.into_iter().enumerate() {
        let y = targets(2);
        let x = clear_inputs(&spec, Loss::Mse, &y);
        for device in devices() {
            let what = format!("dropout model {i}");
            check_model_with(Probe::Training, &spec, Loss::Mse, &device, &x, &y, &what);
            // Without dropout, as `gradients` documents: no mask forward or backward.
            let off = format!("{what}, dropout off");
            check_model_with(Probe::Gradients, &spec, Loss::Mse, &device, &x, &y, &off);
            // The masks are applied: the loss differs from the one without dropout.
            let mut t = trainer(&spec, Loss::Mse, &device);
            let on = t.gradients_training(&x, &y).unwrap().0;
            let off = t.gradients(&x, &y).unwrap().0;
            assert_ne!(on, off, "{what} on {device:?}: dropout changed nothing");
        }
    }
}

// ------------------------------------------------------------ losses

#[test]
fn mse_and_mae_gradients() {
    let spec = || Sequential::new(3).dense(4).tanh().dense(2);
    check_both(spec(), Loss::Mse, &targets(2), "MSE");
    check_both(spec(), Loss::Mae, &targets(2), "MAE");
}

#[test]
fn binary_cross_entropy_gradients() {
    let y: Vec<f32> = random(ROWS * 2, 5).iter().map(|v| 0.5 + 0.45 * v).collect();
    let probs = Loss::BinaryCrossEntropy { from_logits: false };
    // A final sigmoid, fused into the dense layer or standalone, folds into the loss.
    let fused = Sequential::new(3).dense(4).tanh().dense(2).sigmoid();
    check_both(fused, probs, &y, "BCE after sigmoid");
    let standalone = Sequential::new(3)
        .dense(4)
        .tanh()
        .dense(2)
        .flatten()
        .sigmoid();
    check_both(standalone, probs, &y, "BCE after a standalone sigmoid");
    // Probabilities that are not a sigmoid's: the clamped form on the outputs themselves.
    let softmax = Sequential::new(3).dense(4).tanh().dense(2).softmax();
    check_both(softmax, probs, &y, "BCE of softmax probabilities");
    let logits = Sequential::new(3).dense(4).tanh().dense(2);
    let loss = Loss::BinaryCrossEntropy { from_logits: true };
    check_both(logits, loss, &y, "BCE from logits");
}

#[test]
fn categorical_cross_entropy_gradients() {
    let y = soft_targets(3);
    let logits = Sequential::new(4).dense(5).tanh().dense(3);
    check_both(logits, Loss::CategoricalCrossEntropy, &y, "CCE");
    let softmax = Sequential::new(4).dense(5).tanh().dense(3).softmax();
    check_both(
        softmax,
        Loss::CategoricalCrossEntropy,
        &y,
        "CCE after softmax",
    );
    let one_hot: Vec<f32> = labels(3)
        .iter()
        .flat_map(|&c| (0..3).map(move |k| if k == c as usize { 1.0 } else { 0.0 }))
        .collect();
    let spec = Sequential::new(4).dense(5).tanh().dense(3);
    check_both(spec, Loss::CategoricalCrossEntropy, &one_hot, "CCE one-hot");
}

#[test]
fn sparse_categorical_cross_entropy_gradients() {
    let y = labels(3);
    let logits = Sequential::new(4).dense(5).tanh().dense(3);
    check_both(logits, Loss::SparseCategoricalCrossEntropy, &y, "SCCE");
    let softmax = Sequential::new(4).dense(5).tanh().dense(3).softmax();
    check_both(
        softmax,
        Loss::SparseCategoricalCrossEntropy,
        &y,
        "SCCE after softmax",
    );
}

/// A training step of a classifier whose hidden width is a multiple of 4 runs the fused
/// head on the GPU (output layer, loss and the hidden layer's backward in one dispatch):
/// its gradients, read from the step, against the differences of the evaluated loss.
#[test]
fn training_step_gradients_of_classifiers() {
    let cases = [
        (Loss::SparseCategoricalCrossEntropy, labels(3), "SCCE"),
        (Loss::CategoricalCrossEntropy, soft_targets(3), "CCE"),
    ];
    for (loss, y, name) in cases {
        for (i, spec) in [
            Sequential::new(4).dense(4).relu().dense(3),
            Sequential::new(4).dense(8).tanh().dense(4).tanh().dense(3),
            Sequential::image(1, 2, 2)
                .conv2d(4, 3)
                .flatten()
                .dense(4)
                .dense(3),
        ]
        .into_iter()
        .enumerate()
        {
            let x = clear_inputs(&spec, loss, &y);
            for device in devices() {
                let what = format!("{name} step, model {i}");
                check_model_with(Probe::Step, &spec, loss, &device, &x, &y, &what);
            }
        }
    }
}
