mod common;
use common::*;
use kiln::ops::dropout::{dropout_into, keep};
use kiln::Tensor;

#[test]
fn gpu_mask_equals_cpu_mask() {
    for &(r, c) in AWKWARD {
        let x = random(r * c, 5);
        let (xc, xg) = both(&x, &[r, c]);
        let mut oc = Tensor::zeros(&kiln::Device::cpu(), &[r, c]).unwrap();
        let mut og = Tensor::zeros(&gpu(), &[r, c]).unwrap();
        dropout_into(&xc, 0.3, 42, &mut oc).unwrap();
        dropout_into(&xg, 0.3, 42, &mut og).unwrap();
        assert_same(&og, &oc, 1e-6, 0.0, "dropout");
    }
}

#[test]
fn keep_rate_and_scale_are_right() {
    let n = 200_000;
    for rate in [0.1f32, 0.5, 0.8] {
        let kept = (0..n).filter(|&i| keep(7, rate, i)).count() as f64 / n as f64;
        // Binomial std at n = 2e5 is below 0.0012; allow 5 sigma.
        assert!(
            (kept - (1.0 - rate as f64)).abs() < 0.006,
            "rate {rate}: kept {kept}"
        );
    }
    let x = vec![1.0f32; 1000];
    let (xc, _) = both(&x, &[1000]);
    let mut out = Tensor::zeros(&kiln::Device::cpu(), &[1000]).unwrap();
    dropout_into(&xc, 0.5, 1, &mut out).unwrap();
    assert!(out.to_vec().unwrap().iter().all(|&v| v == 0.0 || v == 2.0));
}

#[test]
fn different_seeds_give_different_masks() {
    let a: Vec<bool> = (0..1000).map(|i| keep(1, 0.5, i)).collect();
    let b: Vec<bool> = (0..1000).map(|i| keep(2, 0.5, i)).collect();
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    assert!((400..600).contains(&same), "masks agree on {same} of 1000");
}

#[test]
fn bad_rate_is_an_error() {
    let (xc, _) = both(&[1.0], &[1]);
    let mut out = Tensor::zeros(&kiln::Device::cpu(), &[1]).unwrap();
    assert!(matches!(
        dropout_into(&xc, 1.0, 0, &mut out),
        Err(kiln::Error::InvalidArgument { .. })
    ));
}

/// f64 reference of one SGD step (learning rate `lr`) of dense(5 -> 4) -> dropout -> dense(2)
/// under MSE, with the dropout `mask` ([rows, 4], true = kept) applied by hand, forward and
/// backward, scaled by 1 / (1 - rate). `p` holds w1 [4, 5], b1, w2 [2, 4], b2.
fn dropout_step_reference(
    p: &[Vec<f64>],
    x: &[f64],
    y: &[f64],
    mask: &[bool],
    rate: f64,
    lr: f64,
) -> Vec<Vec<f64>> {
    let (rows, ins, hid, outs) = (x.len() / 5, 5, 4, 2);
    let (w1, b1, w2, b2) = (&p[0], &p[1], &p[2], &p[3]);
    let scale = 1.0 / (1.0 - rate);
    let m = |i: usize| if mask[i] { scale } else { 0.0 };
    let mut hd = vec![0.0; rows * hid];
    for r in 0..rows {
        for u in 0..hid {
            let z: f64 = (0..ins).map(|i| x[r * ins + i] * w1[u * ins + i]).sum();
            hd[r * hid + u] = (z + b1[u]) * m(r * hid + u);
        }
    }
    // dL/dO of the mean over every output element.
    let mut d_out = vec![0.0; rows * outs];
    for r in 0..rows {
        for o in 0..outs {
            let out: f64 = (0..hid).map(|u| hd[r * hid + u] * w2[o * hid + u]).sum();
            d_out[r * outs + o] = 2.0 * (out + b2[o] - y[r * outs + o]) / (rows * outs) as f64;
        }
    }
    let mut g = vec![
        vec![0.0; w1.len()],
        vec![0.0; hid],
        vec![0.0; w2.len()],
        vec![0.0; outs],
    ];
    for r in 0..rows {
        for o in 0..outs {
            let d = d_out[r * outs + o];
            g[3][o] += d;
            for u in 0..hid {
                g[2][o * hid + u] += d * hd[r * hid + u];
            }
        }
        for u in 0..hid {
            let dh: f64 = (0..outs)
                .map(|o| d_out[r * outs + o] * w2[o * hid + u])
                .sum();
            let dz = dh * m(r * hid + u);
            g[1][u] += dz;
            for i in 0..ins {
                g[0][u * ins + i] += dz * x[r * ins + i];
            }
        }
    }
    p.iter()
        .zip(&g)
        .map(|(p, g)| p.iter().zip(g).map(|(p, g)| p - lr * g).collect())
        .collect()
}

/// Two real SGD steps of a model with dropout, each against the f64 reference with the
/// mask applied by hand; `gradients_training` gives the step's gradients beforehand.
///
/// The model's mask seed is internal, so the mask is recovered from the step itself: each
/// input row is zero but for column r in row r, so the first weight's gradient at [u, r] is
/// row r's dL/dz[r, u], which the backward pass masks; that weight stays exactly unchanged
/// iff the backward dropped (r, u). The forward mask then shows in the second layer's update
/// (it is computed from the dropped activations): a forward and backward that disagree on
/// the mask, or a wrong scale, fail the comparison.
#[test]
fn a_training_step_matches_a_hand_masked_reference() {
    let (rows, rate, lr) = (5, 0.5f32, 0.5f32);
    let diag = [0.9f32, -0.7, 0.8, -0.6, 1.0];
    let mut x = vec![0.0f32; rows * 5];
    for r in 0..rows {
        x[r * 5 + r] = diag[r];
    }
    let y = random(rows * 2, 8);
    for device in [kiln::Device::cpu(), gpu()] {
        let mut t = kiln::Sequential::new(5)
            .dense(4)
            .dropout(rate)
            .dense(2)
            .build(&device, 3)
            .unwrap()
            .compile(kiln::Loss::Mse, kiln::Optimizer::sgd(lr), &[])
            .unwrap();
        let mut masks = Vec::new();
        for step in 0..2 {
            let what = format!("{device:?} step {step}");
            let before = params_f64(&t.model);
            // The next step's masks, twice: the same (the step does not advance).
            let (loss, probe) = t.gradients_training(&x, &y).unwrap();
            let (again, probe_again) = t.gradients_training(&x, &y).unwrap();
            assert_eq!((loss, &probe), (again, &probe_again), "{what}: masks moved");
            t.train_batch(&x, &y).unwrap();
            let after: Vec<Vec<f32>> = t
                .model
                .params()
                .iter()
                .map(|p| p.value.to_vec().unwrap())
                .collect();
            // The step applied exactly the gradients gradients_training reported.
            for ((b, a), (name, g)) in before.iter().zip(&after).zip(&probe) {
                let want: Vec<f32> = b
                    .iter()
                    .zip(g)
                    .map(|(b, g)| (b - (lr * g) as f64) as f32)
                    .collect();
                assert_close(
                    a,
                    &want,
                    1e-6,
                    1e-7,
                    &format!("{what}: {name} vs gradients_training"),
                );
            }
            let mut mask = vec![false; rows * 4];
            for r in 0..rows {
                for u in 0..4 {
                    let moved = (after[0][u * 5 + r] as f64 - before[0][u * 5 + r]).abs();
                    // A kept element moves by lr * 2 * |dL/dh| * |x|: far from rounding.
                    assert!(
                        moved == 0.0 || moved > 1e-5,
                        "{what}: ({r}, {u}) moved {moved}"
                    );
                    mask[r * 4 + u] = moved > 0.0;
                }
            }
            let kept = mask.iter().filter(|&&k| k).count();
            assert!(
                (4..=16).contains(&kept),
                "{what}: {kept} of 20 kept at rate {rate}"
            );
            let want = dropout_step_reference(
                &before,
                &f64s(&x),
                &f64s(&y),
                &mask,
                rate as f64,
                lr as f64,
            );
            for (i, (got, want)) in after.iter().zip(&want).enumerate() {
                let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                assert_close(
                    got,
                    &want,
                    1e-5,
                    1e-6,
                    &format!("{what}: param {i} after the step"),
                );
            }
            masks.push(mask);
        }
        assert_ne!(
            masks[0], masks[1],
            "{device:?}: each step draws a fresh mask"
        );
    }
}
