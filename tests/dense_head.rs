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

fn run(device: &Device, c: &Case, seed: u64) -> kiln::Result<Outputs> {
    let (rows, hid, cols) = (c.rows, c.hid, c.cols);
    // h = act(z) for random z, so the derivative from the output is the one a layer sees.
    let z = Tensor::from_slice(&Device::cpu(), &random(rows * hid, seed), &[rows, hid])?;
    let mut h = Tensor::zeros(&Device::cpu(), &[rows, hid])?;
    activation_into(c.act, &z, &mut h)?;
    let h = Tensor::from_slice(device, &h.to_vec()?, &[rows, hid])?;
    let scaled: Vec<f32> = random(cols * hid, seed + 1)
        .iter()
        .map(|v| v * 3.0)
        .collect();
    let w = Tensor::from_slice(device, &scaled, &[cols, hid])?;
    let b = Tensor::from_slice(device, &random(cols, seed + 2), &[cols])?;
    let target = match c.loss {
        Loss::SparseCategoricalCrossEntropy => {
            let ids: Vec<f32> = (0..rows)
                .map(|r| ((r * 7 + seed as usize) % cols) as f32)
                .collect();
            Tensor::from_slice(device, &ids, &[rows])?
        }
        _ => {
            // Soft targets: non-negative rows summing to about one.
            let t: Vec<f32> = random(rows * cols, seed + 3)
                .iter()
                .map(|v| (v + 1.0) / cols as f32)
                .collect();
            Tensor::from_slice(device, &t, &[rows, cols])?
        }
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
                    // Sums over up to 300 terms of magnitude <= 3 in f32 against an f64
                    // reference, the same bound as the unfused matmul tests.
                    assert_close(g, w, 1e-4, 2e-5 * (rows.max(hid) as f32).sqrt(), &what);
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
    assert!(run_minimal(gelu).0.is_err());
    // MSE is not fused.
    let mse = Head {
        loss: Loss::Mse,
        ..good
    };
    assert!(run_minimal(mse).0.is_err());
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
