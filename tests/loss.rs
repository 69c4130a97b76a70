mod common;
use common::*;
use kiln::ops::loss::{self, Loss};
use kiln::{Device, Error, Tensor};

const ALL: [Loss; 6] = [
    Loss::Mse,
    Loss::Mae,
    Loss::BinaryCrossEntropy { from_logits: true },
    Loss::BinaryCrossEntropy { from_logits: false },
    Loss::CategoricalCrossEntropy,
    Loss::SparseCategoricalCrossEntropy,
];

/// Predictions and targets in each loss's domain: (pred, target, target shape).
fn data(l: Loss, rows: usize, cols: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<usize>) {
    let n = rows * cols;
    let r = random(n, seed);
    let u: Vec<f32> = random(n, seed + 100)
        .iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect();
    let classes: Vec<f32> = random(rows, seed + 200)
        .iter()
        .map(|v| (((v + 1.0) / 2.0 * cols as f32) as usize).min(cols - 1) as f32)
        .collect();
    match l {
        Loss::Mse | Loss::Mae => (r, random(n, seed + 1), vec![rows, cols]),
        Loss::BinaryCrossEntropy { from_logits: true } => {
            (r.iter().map(|v| 3.0 * v).collect(), u, vec![rows, cols])
        }
        Loss::BinaryCrossEntropy { from_logits: false } => {
            let p = r.iter().map(|v| 0.5 + 0.48 * v).collect();
            (p, u, vec![rows, cols])
        }
        Loss::CategoricalCrossEntropy => {
            let mut t = vec![0.0; n];
            for (i, c) in classes.iter().enumerate() {
                t[i * cols + *c as usize] = 1.0;
            }
            (r.iter().map(|v| 4.0 * v).collect(), t, vec![rows, cols])
        }
        Loss::SparseCategoricalCrossEntropy => {
            (r.iter().map(|v| 4.0 * v).collect(), classes, vec![rows])
        }
    }
}

/// The mean loss from its textbook definition, in f64 (the oracle for the CPU reference).
fn forward(l: Loss, x: &[f64], t: &[f64], rows: usize, cols: usize) -> f64 {
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let bce = |p: f64, t: f64| -(t * p.ln() + (1.0 - t) * (1.0 - p).ln());
    let mean = |f: &dyn Fn(f64, f64) -> f64| {
        x.iter().zip(t).map(|(&x, &t)| f(x, t)).sum::<f64>() / x.len() as f64
    };
    match l {
        Loss::Mse => mean(&|x, t| (x - t).powi(2)),
        Loss::Mae => mean(&|x, t| (x - t).abs()),
        Loss::BinaryCrossEntropy { from_logits: true } => mean(&|x, t| bce(sigmoid(x), t)),
        Loss::BinaryCrossEntropy { from_logits: false } => {
            mean(&|x, t| bce(x.clamp(1e-7, 1.0 - 1e-7), t))
        }
        Loss::CategoricalCrossEntropy | Loss::SparseCategoricalCrossEntropy => {
            let mut sum = 0.0;
            for r in 0..rows {
                let row = &x[r * cols..(r + 1) * cols];
                let z: f64 = row.iter().map(|v| v.exp()).sum();
                for (j, v) in row.iter().enumerate() {
                    let tj = if l == Loss::CategoricalCrossEntropy {
                        t[r * cols + j]
                    } else if t[r] as usize == j {
                        1.0
                    } else {
                        0.0
                    };
                    sum -= tj * (v.exp() / z).ln();
                }
            }
            sum / rows as f64
        }
    }
}

fn items(l: Loss, rows: usize, cols: usize) -> usize {
    match l {
        Loss::CategoricalCrossEntropy | Loss::SparseCategoricalCrossEntropy => rows,
        _ => rows * cols,
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn losses_match_reference_on_awkward_shapes() {
    for l in ALL {
        for &(rows, cols) in AWKWARD {
            let (x, t, tshape) = data(l, rows, cols, 7);
            let what = format!("{l:?} {rows}x{cols}");
            let (pc, pg) = both(&x, &[rows, cols]);
            let (tc, tg) = both(&t, &tshape);
            let (vc, gc) = loss::loss_and_grad(l, &pc, &tc).unwrap();
            let (vg, gg) = loss::loss_and_grad(l, &pg, &tg).unwrap();

            // The CPU reference against the definition.
            let want = forward(l, &f64s(&x), &f64s(&t), rows, cols);
            assert_close(
                &vc.to_vec().unwrap(),
                &[want as f32],
                1e-6,
                1e-7,
                &format!("{what} cpu value"),
            );

            // Sums of at most 1000 * 784 positive terms in f32 on the GPU.
            assert_same(&vg, &vc, 1e-5, 1e-6, &format!("{what} value"));
            // Gradients are O(1 / items); the f32 kernel differs from the f64 reference by rounding.
            let scale = 1.0 / items(l, rows, cols) as f32;
            assert_same(&gg, &gc, 1e-5, 1e-6 * scale, &format!("{what} grad"));

            // The forward-only kernels agree with the fused ones.
            let vc2 = loss::loss_value(l, &pc, &tc).unwrap();
            let vg2 = loss::loss_value(l, &pg, &tg).unwrap();
            assert_same(&vc2, &vc, 0.0, 0.0, &format!("{what} cpu value only"));
            assert_same(&vg2, &vg, 1e-6, 0.0, &format!("{what} gpu value only"));
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let h = 1e-6;
    for l in ALL {
        for (rows, cols, seed) in [(3, 5, 11), (4, 7, 12), (1, 2, 13)] {
            let (x, mut t, tshape) = data(l, rows, cols, seed);
            if l == Loss::CategoricalCrossEntropy && seed == 12 {
                // Soft targets that do not sum to 1 exercise the general softmax gradient.
                t = random(rows * cols, 3)
                    .iter()
                    .map(|v| (v + 1.0) / 3.0)
                    .collect();
            }
            let xc = Tensor::from_slice(&Device::cpu(), &x, &[rows, cols]).unwrap();
            let tc = Tensor::from_slice(&Device::cpu(), &t, &tshape).unwrap();
            let (_, grad) = loss::loss_and_grad(l, &xc, &tc).unwrap();
            let grad = grad.to_vec().unwrap();
            let t64 = f64s(&t);
            let fd: Vec<f32> = (0..x.len())
                .map(|i| {
                    let mut up = f64s(&x);
                    let mut down = f64s(&x);
                    up[i] += h;
                    down[i] -= h;
                    let d = forward(l, &up, &t64, rows, cols) - forward(l, &down, &t64, rows, cols);
                    (d / (2.0 * h)) as f32
                })
                .collect();
            // Central differences in f64 are good to ~1e-9 here; the gradient is stored in f32.
            assert_close(
                &grad,
                &fd,
                1e-5,
                1e-8,
                &format!("{l:?} {rows}x{cols} vs finite differences"),
            );
        }
    }
}

#[test]
fn extreme_logits_stay_finite() {
    // Two rows of three classes; naive exp(80) * 3 would still fit f32, exp(160) would not.
    let x = [80.0, -80.0, 0.0, 80.0, -80.0, 0.0];
    let cases: [(Loss, Vec<f32>, Vec<usize>, f32); 4] = [
        // Row 0 is right (loss ~0), row 1 is off by 160: mean 80.
        (
            Loss::SparseCategoricalCrossEntropy,
            vec![0.0, 1.0],
            vec![2],
            80.0,
        ),
        (
            Loss::CategoricalCrossEntropy,
            vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            vec![2, 3],
            80.0,
        ),
        // Per element: 0, 0, ln 2 (t = 0 at x = 0) and 80, 80, ln 2 on the wrong side.
        (
            Loss::BinaryCrossEntropy { from_logits: true },
            vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            vec![2, 3],
            (160.0 + 2.0 * std::f32::consts::LN_2) / 6.0,
        ),
        // Saturated probabilities are clamped: the wrong side costs -ln(1e-7).
        (
            Loss::BinaryCrossEntropy { from_logits: false },
            vec![1.0, 1.0, 0.0, 0.0],
            vec![2, 2],
            2.0 * -(1e-7f64.ln() as f32) / 4.0,
        ),
    ];
    for (l, t, tshape, want) in cases {
        let (x, shape) = match l {
            Loss::BinaryCrossEntropy { from_logits: false } => {
                (vec![1.0, 0.0, 1.0, 0.0], vec![2, 2])
            }
            _ => (x.to_vec(), vec![2, 3]),
        };
        let (pc, pg) = both(&x, &shape);
        let (tc, tg) = both(&t, &tshape);
        let (vc, gc) = loss::loss_and_grad(l, &pc, &tc).unwrap();
        let (vg, gg) = loss::loss_and_grad(l, &pg, &tg).unwrap();
        for (name, v) in [
            ("cpu", &vc),
            ("gpu", &vg),
            ("cpu grad", &gc),
            ("gpu grad", &gg),
        ] {
            let v = v.to_vec().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{l:?} {name}: {v:?}");
        }
        assert_close(
            &vc.to_vec().unwrap(),
            &[want],
            1e-6,
            0.0,
            &format!("{l:?} cpu value"),
        );
        assert_close(
            &vg.to_vec().unwrap(),
            &[want],
            1e-6,
            0.0,
            &format!("{l:?} gpu value"),
        );
        assert_same(&gg, &gc, 1e-6, 1e-7, &format!("{l:?} grad"));
    }
    // Softmax gradient rows: (1, 0, 0) - onehot, over 2 rows.
    let (pc, _) = both(&x, &[2, 3]);
    let (tc, _) = both(&[0.0, 1.0], &[2]);
    let (_, g) = loss::loss_and_grad(Loss::SparseCategoricalCrossEntropy, &pc, &tc).unwrap();
    assert_close(
        &g.to_vec().unwrap(),
        &[0.0, 0.0, 0.0, 0.5, -0.5, 0.0],
        0.0,
        1e-7,
        "softmax - onehot",
    );
}

#[test]
fn out_of_range_labels_are_an_error_on_cpu_and_nan_on_gpu() {
    let (rows, cols) = (300, 4);
    let x = random(rows * cols, 5);
    let (pc, pg) = both(&x, &[rows, cols]);
    for bad in [-1.0, 4.0, 2.5, 1e9, f32::NAN] {
        let mut labels: Vec<f32> = (0..rows).map(|r| (r % cols) as f32).collect();
        // The last row lands in the second workgroup: NaN must survive `finish` too.
        labels[rows - 1] = bad;
        let (tc, tg) = both(&labels, &[rows]);

        let l = Loss::SparseCategoricalCrossEntropy;
        for result in [
            loss::loss_and_grad(l, &pc, &tc).map(|(v, _)| v),
            loss::loss_value(l, &pc, &tc),
        ] {
            match result {
                Err(Error::InvalidArgument { detail, .. }) => {
                    assert!(
                        detail.contains(&format!("{bad}")),
                        "names the label: {detail}"
                    );
                    assert!(
                        detail.contains("4 classes"),
                        "names the class count: {detail}"
                    );
                }
                other => panic!("label {bad}: expected InvalidArgument, got {other:?}"),
            }
        }

        let (v, g) = loss::loss_and_grad(l, &pg, &tg).unwrap();
        assert!(
            v.to_vec().unwrap()[0].is_nan(),
            "label {bad}: GPU loss should be NaN"
        );
        assert!(loss::loss_value(l, &pg, &tg).unwrap().to_vec().unwrap()[0].is_nan());
        let g = g.to_vec().unwrap();
        assert!(
            g[(rows - 1) * cols..].iter().all(|v| v.is_nan()),
            "bad row's gradient is NaN"
        );
        assert!(
            g[..(rows - 1) * cols].iter().all(|v| v.is_finite()),
            "other rows are untouched"
        );
    }
}

#[test]
fn bad_shapes_are_errors() {
    let shape_err = |r: kiln::Result<()>, what: &str| {
        assert!(matches!(r, Err(Error::Shape { .. })), "{what}: {r:?}");
    };
    for dev in [Device::cpu(), gpu()] {
        let t = |shape: &[usize]| Tensor::zeros(&dev, shape).unwrap();
        let (pred, target, labels) = (t(&[4, 3]), t(&[4, 3]), t(&[4]));
        let (mut grad, mut value) = (t(&[4, 3]), t(&[1]));
        let mse = Loss::Mse;
        let sparse = Loss::SparseCategoricalCrossEntropy;
        shape_err(
            loss::loss_and_grad_into(mse, &pred, &t(&[3, 4]), &mut grad, &mut value),
            "target",
        );
        shape_err(
            loss::loss_and_grad_into(mse, &pred, &target, &mut t(&[12]), &mut value),
            "grad",
        );
        shape_err(
            loss::loss_and_grad_into(mse, &pred, &target, &mut grad, &mut t(&[2])),
            "value",
        );
        shape_err(
            loss::loss_value_into(mse, &pred, &target, &mut t(&[])),
            "scalar value",
        );
        shape_err(
            loss::loss_and_grad_into(sparse, &pred, &t(&[3]), &mut grad, &mut value),
            "labels",
        );
        shape_err(
            loss::loss_and_grad_into(sparse, &pred, &target, &mut grad, &mut value),
            "one-hot as labels",
        );
        shape_err(
            loss::loss_and_grad_into(
                Loss::CategoricalCrossEntropy,
                &pred,
                &labels,
                &mut grad,
                &mut value,
            ),
            "labels as one-hot",
        );
        // [B, T, C] predictions are B * T rows (sequences); labels must be one per row.
        let cube = t(&[2, 2, 3]);
        let mut cube_grad = t(&[2, 2, 3]);
        shape_err(
            loss::loss_and_grad_into(sparse, &cube, &t(&[2, 3]), &mut cube_grad, &mut value),
            "3-D labels",
        );
        loss::loss_value_into(mse, &cube, &cube, &mut value).unwrap();
        loss::loss_and_grad_into(sparse, &cube, &t(&[2, 2]), &mut cube_grad, &mut value).unwrap();
        let empty = t(&[0, 3]);
        shape_err(
            loss::loss_value_into(mse, &empty, &empty, &mut value),
            "empty",
        );
        // The right shapes work on the same tensors.
        loss::loss_and_grad_into(sparse, &pred, &labels, &mut grad, &mut value).unwrap();
        loss::loss_and_grad_into(sparse, &pred, &t(&[4, 1]), &mut grad, &mut value).unwrap();
        loss::loss_and_grad_into(mse, &pred, &target, &mut grad, &mut value).unwrap();
        assert_eq!(value.to_vec().unwrap(), [0.0]);
    }
}

#[test]
fn value_stays_on_the_gpu_and_small_batches_take_one_dispatch() {
    // A device of its own, so other tests' dispatches do not show in its counters.
    let dev = Device::gpu().unwrap();
    let cases = [
        (Loss::SparseCategoricalCrossEntropy, 256, 10, 1),
        (Loss::SparseCategoricalCrossEntropy, 257, 10, 2),
        (Loss::CategoricalCrossEntropy, 100, 1000, 1),
        (Loss::Mse, 64, 64, 1),
        (Loss::Mse, 4097, 1, 2),
        (Loss::BinaryCrossEntropy { from_logits: true }, 1000, 100, 2),
    ];
    for (l, rows, cols, dispatches) in cases {
        let (x, t, tshape) = data(l, rows, cols, 9);
        let pred = Tensor::from_slice(&dev, &x, &[rows, cols]).unwrap();
        let target = Tensor::from_slice(&dev, &t, &tshape).unwrap();
        let mut grad = Tensor::uninit(&dev, &[rows, cols]).unwrap();
        let mut value = Tensor::uninit(&dev, &[1]).unwrap();
        let before = dev.stats();
        loss::loss_and_grad_into(l, &pred, &target, &mut grad, &mut value).unwrap();
        loss::loss_value_into(l, &pred, &target, &mut value).unwrap();
        dev.synchronize().unwrap();
        let after = dev.stats();
        let what = format!("{l:?} {rows}x{cols}");
        assert_eq!(
            after.dispatches - before.dispatches,
            2 * dispatches,
            "{what}: dispatches"
        );
        assert_eq!(
            after.bytes_read, before.bytes_read,
            "{what}: nothing read back"
        );
        let want = forward(l, &f64s(&x), &f64s(&t), rows, cols) as f32;
        assert_close(&value.to_vec().unwrap(), &[want], 1e-5, 1e-6, &what);
        assert_eq!(
            dev.stats().bytes_read,
            after.bytes_read + 4,
            "{what}: to_vec reads 4 bytes"
        );
    }
}

/// The `_at` forms write the mean into one slot of a log and leave the others alone, on
/// one workgroup and through the partial-sum pass alike; a slot past the log is an error.
#[test]
fn loss_at_writes_only_its_slot() {
    for l in [Loss::Mse, Loss::SparseCategoricalCrossEntropy] {
        // 3 rows: one workgroup; 4000 rows: partial sums, then `finish`.
        for (rows, cols, slot) in [(3, 5, 2), (4000, 10, 0), (4000, 10, 6)] {
            let (x, t, tshape) = data(l, rows, cols, 11);
            let what = format!("{l:?} {rows}x{cols} slot {slot}");
            for dev in [Device::cpu(), gpu()] {
                let p = Tensor::from_slice(&dev, &x, &[rows, cols]).unwrap();
                let tt = Tensor::from_slice(&dev, &t, &tshape).unwrap();
                let (want, _) = loss::loss_and_grad(l, &p, &tt).unwrap();
                let want = want.to_vec().unwrap()[0];
                let mut log = Tensor::full(&dev, &[7], -1.0).unwrap();
                let mut grad = Tensor::zeros(&dev, &[rows, cols]).unwrap();
                loss::loss_and_grad_at(l, &p, &tt, &mut grad, &mut log, slot).unwrap();
                let got = log.to_vec().unwrap();
                let mut expect = vec![-1.0; 7];
                expect[slot] = want;
                assert_close(&got, &expect, 1e-6, 0.0, &format!("{what} {dev:?}"));
                let mut log = Tensor::full(&dev, &[7], -1.0).unwrap();
                loss::loss_value_at(l, &p, &tt, &mut log, slot).unwrap();
                assert_close(&log.to_vec().unwrap(), &expect, 1e-6, 0.0, &what);
                let bad = loss::loss_value_at(l, &p, &tt, &mut log, 7);
                assert!(matches!(bad, Err(Error::Shape { .. })), "{what}: {bad:?}");
            }
        }
    }
}

#[test]
fn stacked_softmax_cross_entropy_matches_each_trial_alone() {
    let cpu = Device::cpu();
    for l in [
        Loss::SparseCategoricalCrossEntropy,
        Loss::CategoricalCrossEntropy,
    ] {
        for &(trials, rows, cols) in &[(1, 1, 1), (3, 17, 10), (17, 3, 3), (3, 255, 17)] {
            let (_, t, tshape) = data(l, rows, cols, 9);
            let x = random(trials * rows * cols, 11);
            let (stride, slot) = (3, 2);
            let n = rows * cols;
            for device in [cpu.clone(), gpu()] {
                let what = format!("{l:?} {trials}x{rows}x{cols} on {device:?}");
                let logits = Tensor::from_slice(&device, &x, &[trials, rows, cols]).unwrap();
                let target = Tensor::from_slice(&device, &t, &tshape).unwrap();
                let mut grad = Tensor::full(&device, &[trials, rows, cols], f32::NAN).unwrap();
                let mut log = Tensor::full(&device, &[slot + trials * stride], -1.0).unwrap();
                loss::stacked_softmax_ce_at(
                    l,
                    &logits,
                    &target,
                    Some(&mut grad),
                    (&mut log, slot, stride),
                )
                .unwrap();
                let (log, grad) = (log.to_vec().unwrap(), grad.to_vec().unwrap());
                for k in 0..trials {
                    let pred =
                        Tensor::from_slice(&cpu, &x[k * n..(k + 1) * n], &[rows, cols]).unwrap();
                    let target = Tensor::from_slice(&cpu, &t, &tshape).unwrap();
                    let mut g = Tensor::zeros(&cpu, &[rows, cols]).unwrap();
                    let mut v = Tensor::zeros(&cpu, &[1]).unwrap();
                    loss::loss_and_grad_into(l, &pred, &target, &mut g, &mut v).unwrap();
                    let v = v.to_vec().unwrap();
                    assert_close(
                        &log[slot + k * stride..slot + k * stride + 1],
                        &v,
                        1e-5,
                        1e-6,
                        &what,
                    );
                    assert_close(
                        &grad[k * n..(k + 1) * n],
                        &g.to_vec().unwrap(),
                        1e-5,
                        1e-6,
                        &what,
                    );
                }
                // Only the trials' slots are written.
                for (i, v) in log.iter().enumerate() {
                    if i < slot || (i - slot) % stride != 0 {
                        assert_eq!(*v, -1.0, "{what}: slot {i} written");
                    }
                }
            }
        }
    }
    let logits = Tensor::zeros(&cpu, &[2, 3, 4]).unwrap();
    let mut log = Tensor::zeros(&cpu, &[4]).unwrap();
    let bad_labels = Tensor::zeros(&cpu, &[4]).unwrap();
    let sparse = Loss::SparseCategoricalCrossEntropy;
    let e = loss::stacked_softmax_ce_at(sparse, &logits, &bad_labels, None, (&mut log, 0, 2));
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    let labels = Tensor::zeros(&cpu, &[3]).unwrap();
    // Trial 1's slot (0 + 1 * 4) is past the log.
    let e = loss::stacked_softmax_ce_at(sparse, &logits, &labels, None, (&mut log, 0, 4));
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    let e = loss::stacked_softmax_ce_at(Loss::Mse, &logits, &labels, None, (&mut log, 0, 2));
    assert!(e.is_err());
}
