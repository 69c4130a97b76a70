//! The fused classifier head (output layer forward, softmax cross-entropy, both layers'
//! gradients) on the GPU against its CPU reference, the unfused ops in sequence.
mod common;
use common::*;
use kiln::ops::activation::activation_into;
use kiln::ops::dense_head::{dense_head_at, head_fits, Head, HeadOut};
use kiln::{Activation, Device, Loss, Tensor};

/// Every output of one run, read back: logits, dz, dW, db, dh, dh^T, dhb, the loss log.
type Outputs = Vec<Vec<f32>>;

struct Case {
    rows: usize,
    hid: usize,
    cols: usize,
    act: Activation,
    loss: Loss,
    bias: bool,
    hidden_grads: bool,
}

/// The operands of one case, on the host: h = act(z) [rows, hid], w [cols, hid], b [cols],
/// and the targets (class ids [rows] or soft rows [rows, cols]).
struct Operands {
    h: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    target: Vec<f32>,
}

fn operands(c: &Case, seed: u64) -> kiln::Result<Operands> {
    let (rows, hid, cols) = (c.rows, c.hid, c.cols);
    // h = act(z) for random z, so the derivative from the output is the one a layer sees.
    let z = Tensor::from_slice(&Device::cpu(), &random(rows * hid, seed), &[rows, hid])?;
    let mut h = Tensor::zeros(&Device::cpu(), &[rows, hid])?;
    activation_into(c.act, &z, &mut h)?;
    let w = random(cols * hid, seed + 1)
        .iter()
        .map(|v| v * 3.0)
        .collect();
    let target = match c.loss {
        Loss::SparseCategoricalCrossEntropy => (0..rows)
            .map(|r| ((r * 7 + seed as usize) % cols) as f32)
            .collect(),
        // Soft targets: non-negative rows summing to about one.
        _ => random(rows * cols, seed + 3)
            .iter()
            .map(|v| (v + 1.0) / cols as f32)
            .collect(),
    };
    Ok(Operands {
        h: h.to_vec()?,
        w,
        b: random(cols, seed + 2),
        target,
    })
}

fn run(device: &Device, c: &Case, seed: u64) -> kiln::Result<Outputs> {
    let (rows, hid, cols) = (c.rows, c.hid, c.cols);
    let ops = operands(c, seed)?;
    let h = Tensor::from_slice(device, &ops.h, &[rows, hid])?;
    let w = Tensor::from_slice(device, &ops.w, &[cols, hid])?;
    let b = Tensor::from_slice(device, &ops.b, &[cols])?;
    let target = match c.loss {
        Loss::SparseCategoricalCrossEntropy => Tensor::from_slice(device, &ops.target, &[rows])?,
        _ => Tensor::from_slice(device, &ops.target, &[rows, cols])?,
    };
    let z2 = |s: &[usize]| Tensor::full(device, s, f32::NAN);
    let (mut logits, mut dz, mut dw) = (z2(&[rows, cols])?, z2(&[rows, cols])?, z2(&[cols, hid])?);
    let (mut db, mut dh, mut dht, mut dhb) = (
        z2(&[cols])?,
        z2(&[rows, hid])?,
        z2(&[hid, rows])?,
        z2(&[hid])?,
    );
    let mut log = z2(&[3])?;
    let head = Head {
        loss: c.loss,
        h: &h,
        act: c.act,
        w: &w,
        b: c.bias.then_some(&b),
        target: &target,
    };
    let out = HeadOut {
        logits: &mut logits,
        dz: &mut dz,
        dw: &mut dw,
        db: c.bias.then_some(&mut db),
        dh: &mut dh,
        dht: c.hidden_grads.then_some(&mut dht),
        dhb: c.hidden_grads.then_some(&mut dhb),
    };
    dense_head_at(head, out, &mut log, 1)?;
    let mut all = vec![logits.to_vec()?, dz.to_vec()?, dw.to_vec()?, dh.to_vec()?];
    if c.bias {
        all.push(db.to_vec()?);
    }
    if c.hidden_grads {
        all.extend([dht.to_vec()?, dhb.to_vec()?]);
    }
    all.push(log.to_vec()?);
    Ok(all)
}

const NAMES: [&str; 8] = [
    "logits", "dz", "dW", "dh", "db|dh^T", "dh^T|dhb", "dhb|log", "log",
];

/// For each output of `run` but the loss log, in the same order, the sum of the magnitudes
/// of the terms that make it up, in f64: the scale its f32 rounding error is bounded by. A
/// term that is itself computed carries its own bound, so an error in dz is allowed for in
/// dW, db and dh, and one in dh in dhb. `want` is the CPU's run (for the logits).
fn magnitudes(c: &Case, ops: &Operands, want: &Outputs) -> Vec<Vec<f64>> {
    let (rows, hid, cols) = (c.rows, c.hid, c.cols);
    let h = |r: usize, k: usize| f64::from(ops.h[r * hid + k]).abs();
    let w = |j: usize, k: usize| f64::from(ops.w[j * hid + k]).abs();
    // logits[r, j] = sum_k h[r, k] w[j, k] + b[j]
    let mut logits = vec![0.0; rows * cols];
    for r in 0..rows {
        for j in 0..cols {
            let bias = if c.bias {
                f64::from(ops.b[j]).abs()
            } else {
                0.0
            };
            logits[r * cols + j] = (0..hid).map(|k| h(r, k) * w(j, k)).sum::<f64>() + bias;
        }
    }
    // dz[r, j] = (p[r, j] sum_i t[r, i] - t[r, j]) / rows, p the softmax of the CPU's logits.
    let mut dz = vec![0.0; rows * cols];
    for r in 0..rows {
        let z = &want[0][r * cols..(r + 1) * cols];
        let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let e: Vec<f64> = z.iter().map(|&v| f64::from(v - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        let t: Vec<f64> = match c.loss {
            Loss::SparseCategoricalCrossEntropy => (0..cols)
                .map(|j| f64::from(u8::from(ops.target[r] as usize == j)))
                .collect(),
            _ => ops.target[r * cols..(r + 1) * cols]
                .iter()
                .map(|&v| f64::from(v))
                .collect(),
        };
        let mass: f64 = t.iter().sum();
        for j in 0..cols {
            dz[r * cols + j] = (e[j] / sum * mass + t[j]) / rows as f64;
        }
    }
    // dW[j, k] = sum_r dz[r, j] h[r, k]; db[j] = sum_r dz[r, j]
    let mut dw = vec![0.0; cols * hid];
    let mut db = vec![0.0; cols];
    for r in 0..rows {
        for j in 0..cols {
            db[j] += dz[r * cols + j];
            for k in 0..hid {
                dw[j * hid + k] += dz[r * cols + j] * h(r, k);
            }
        }
    }
    // dh[r, k] = act'(h[r, k]) sum_j dz[r, j] w[j, k]; dhb[k] = sum_r dh[r, k]
    let mut dh = vec![0.0; rows * hid];
    let mut dht = vec![0.0; hid * rows];
    let mut dhb = vec![0.0; hid];
    for r in 0..rows {
        for k in 0..hid {
            let slope = c
                .act
                .derivative_at_output(f64::from(ops.h[r * hid + k]))
                .abs();
            let v = slope * (0..cols).map(|j| dz[r * cols + j] * w(j, k)).sum::<f64>();
            dh[r * hid + k] = v;
            dht[k * rows + r] = v;
            dhb[k] += v;
        }
    }
    let mut all = vec![logits, dz, dw, dh];
    if c.bias {
        all.push(db);
    }
    if c.hidden_grads {
        all.extend([dht, dhb]);
    }
    all
}

/// Rounding allowed per unit of magnitude. A sum of n f32 terms is off by at most about
/// n * 2^-24 of the sum of their magnitudes; the longest chain of sums here is 300 (hid)
/// for the logits, 32 (classes) in the softmax and 255 (rows) for dW, about
/// 590 * 6e-8 = 3.5e-5 on each device. (The logits' rounding reaches dz through p as an
/// absolute error of the logits, outside that bound; it is the largest difference
/// measured, 1.6e-5 of dz's magnitude at 300 hidden units, against at most 5e-6 elsewhere.)
/// An element off by 10% fails whenever it is more than 1e-3 of its magnitude, as all are
/// but the gradients that cancel to nearly nothing (inactive ReLU units, one-class heads,
/// rows whose softmax is saturated at the label), which no f32 comparison resolves.
const RTOL: f64 = 1e-4;

/// Asserts |got - want| <= RTOL * magnitude elementwise, naming the worst element.
fn assert_within(got: &[f32], want: &[f32], magnitude: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst: Option<(usize, f64)> = None;
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(magnitude).enumerate() {
        let excess = (f64::from(g) - f64::from(w)).abs() - RTOL * m;
        // NaN (an unwritten output) counts as over.
        let excess = if excess.is_nan() {
            f64::INFINITY
        } else {
            excess
        };
        if excess > 0.0 && worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}[{i}]: got {}, want {} (magnitude {:e}, tolerance {:e})",
            got[i],
            want[i],
            magnitude[i],
            RTOL * magnitude[i]
        );
    }
}

#[test]
fn fused_head_matches_the_unfused_ops() {
    // The kernel takes hidden widths in multiples of 4 (checked below).
    let shapes = [
        (1, 4, 1),
        (3, 8, 2),
        (17, 36, 10),
        (32, 128, 10),
        (255, 20, 32),
        (64, 300, 3),
    ];
    let acts = [
        Activation::Relu,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Identity,
    ];
    let losses = [
        Loss::SparseCategoricalCrossEntropy,
        Loss::CategoricalCrossEntropy,
    ];
    for (i, &(rows, hid, cols)) in shapes.iter().enumerate() {
        for (j, &act) in acts.iter().enumerate() {
            for (l, &loss) in losses.iter().enumerate() {
                let c = Case {
                    rows,
                    hid,
                    cols,
                    act,
                    loss,
                    bias: (i + j) % 2 == 0,
                    hidden_grads: (i + l) % 3 != 1,
                };
                let seed = (i * 100 + j * 10 + l) as u64;
                let want = run(&Device::cpu(), &c, seed).unwrap();
                let got = run(&gpu(), &c, seed).unwrap();
                let mags = magnitudes(&c, &operands(&c, seed).unwrap(), &want);
                assert_eq!(mags.len() + 1, got.len());
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    let what = format!(
                        "{} of {rows}x{hid}->{cols} {act:?} {loss:?} bias {}",
                        NAMES[k], c.bias
                    );
                    if k + 1 == got.len() {
                        // Log slots 0 and 2 stay as they were: NaN on both devices.
                        assert!(g[0].is_nan() && g[2].is_nan(), "{what}: {g:?}");
                        assert_close(&g[1..2], &w[1..2], 1e-5, 1e-6, &what);
                        continue;
                    }
                    assert_within(g, w, &mags[k], &what);
                }
            }
        }
    }
}

/// Runs `head` with only the required outputs, on its operands' device; returns the
/// result, the loss log and dz.
fn run_minimal(head: Head) -> (kiln::Result<()>, Vec<f32>, Vec<f32>) {
    let device = head.h.device();
    let (rows, hid) = (head.h.shape()[0], head.h.shape()[1]);
    let cols = head.w.shape()[0];
    let z = |s: &[usize]| Tensor::zeros(&device, s).unwrap();
    let (mut logits, mut dz, mut dw, mut dh) = (
        z(&[rows, cols]),
        z(&[rows, cols]),
        z(&[cols, hid]),
        z(&[rows, hid]),
    );
    let mut log = z(&[1]);
    let out = HeadOut {
        logits: &mut logits,
        dz: &mut dz,
        dw: &mut dw,
        db: None,
        dh: &mut dh,
        dht: None,
        dhb: None,
    };
    let r = dense_head_at(head, out, &mut log, 0);
    (r, log.to_vec().unwrap(), dz.to_vec().unwrap())
}

#[test]
fn a_bad_label_poisons_the_loss_on_the_gpu_and_is_an_error_on_the_cpu() {
    for bad in [3.0, -1.0, 0.5] {
        for dev in [Device::cpu(), gpu()] {
            let h = Tensor::full(&dev, &[4, 8], 0.5).unwrap();
            let w = Tensor::full(&dev, &[3, 8], 0.1).unwrap();
            let target = Tensor::from_slice(&dev, &[0.0, bad, 1.0, 2.0], &[4]).unwrap();
            let head = Head {
                loss: Loss::SparseCategoricalCrossEntropy,
                h: &h,
                act: Activation::Relu,
                w: &w,
                b: None,
                target: &target,
            };
            match run_minimal(head) {
                (r, _, _) if dev.is_cpu() => assert!(
                    matches!(r, Err(kiln::Error::InvalidArgument { .. })),
                    "{bad}: {r:?}"
                ),
                (r, log, g) => {
                    r.unwrap();
                    assert!(log[0].is_nan(), "label {bad}");
                    // Only the bad row's gradient is poisoned.
                    assert!(g[3..6].iter().all(|v| v.is_nan()));
                    assert!(g[..3].iter().chain(&g[6..]).all(|v| v.is_finite()));
                }
            }
        }
    }
}

#[test]
fn shapes_and_sizes_are_checked() {
    let d = gpu();
    let z = |s: &[usize]| Tensor::zeros(&d, s).unwrap();
    let (h, w, t) = (z(&[4, 8]), z(&[3, 8]), z(&[4]));
    let good = Head {
        loss: Loss::SparseCategoricalCrossEntropy,
        h: &h,
        act: Activation::Relu,
        w: &w,
        b: None,
        target: &t,
    };
    run_minimal(good).0.unwrap();
    let w7 = z(&[3, 7]);
    let r = run_minimal(Head { w: &w7, ..good }).0;
    assert!(matches!(r, Err(kiln::Error::Shape { .. })), "{r:?}");
    // GELU's derivative needs its input, which the head does not have.
    let gelu = Head {
        act: Activation::Gelu,
        ..good
    };
    let r = run_minimal(gelu).0;
    assert!(
        matches!(&r, Err(kiln::Error::InvalidArgument { detail, .. }) if detail.contains("Gelu")),
        "{r:?}"
    );
    // MSE is not fused.
    let mse = Head {
        loss: Loss::Mse,
        ..good
    };
    let r = run_minimal(mse).0;
    assert!(
        matches!(&r, Err(kiln::Error::InvalidArgument { detail, .. }) if detail.contains("Mse")),
        "{r:?}"
    );
    // A hidden width that is not a multiple of 4.
    let (h5, w5) = (z(&[4, 5]), z(&[3, 5]));
    let r = run_minimal(Head {
        h: &h5,
        w: &w5,
        ..good
    })
    .0;
    assert!(
        matches!(r, Err(kiln::Error::InvalidArgument { .. })),
        "{r:?}"
    );
    assert!(!head_fits(&d, 32, 130, 10));
    assert!(head_fits(&d, 32, 128, 10));
    assert!(!head_fits(&d, 32, 128, 33));
    assert!(!head_fits(&Device::cpu(), 32, 128, 10));
}
