mod common;
use common::*;
use kiln::ops::activation::{self as act, Activation, RowSplit};
use kiln::{Device, Tensor};

const ALL: [Activation; 7] = [
    Activation::Identity,
    Activation::Relu,
    Activation::LeakyRelu(0.1),
    Activation::LeakyRelu(-0.3),
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::Gelu,
];

/// erf by its Maclaurin series, written independently of kiln's; good to ~1e-13 for |x| <= 3.
fn erf_series(x: f64) -> f64 {
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// The forward pass in f64, written out here so the finite differences do not trust kiln.
fn f64_forward(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Identity => x,
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu(s) => {
            if x > 0.0 {
                x
            } else {
                s as f64 * x
            }
        }
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
        Activation::Gelu => 0.5 * x * (1.0 + erf_series(x / 2f64.sqrt())),
    }
}

/// Inputs spread over [-4, 4): the interesting range of every activation.
fn wide(n: usize, seed: u64) -> Vec<f32> {
    random(n, seed).into_iter().map(|v| 4.0 * v).collect()
}

#[test]
fn activation_forward_matches_reference() {
    for &(r, c) in AWKWARD {
        let x = wide(r * c, 1);
        let (xc, xg) = both(&x, &[r, c]);
        for a in ALL {
            let cpu = act::activation(a, &xc).unwrap();
            let want: Vec<f32> = x.iter().map(|&v| f64_forward(a, v as f64) as f32).collect();
            // The series erf is only good to ~1e-13, so the CPU reference may differ by a rounding.
            assert_close(
                &cpu.to_vec().unwrap(),
                &want,
                1e-7,
                1e-7,
                &format!("cpu {a:?}"),
            );
            let mut gpu = Tensor::uninit(&xg.device(), &[r, c]).unwrap();
            act::activation_into(a, &xg, &mut gpu).unwrap();
            // GPU exp/tanh and the polynomial erf (1.5e-7 absolute) are not correctly rounded.
            assert_same(&gpu, &cpu, 1e-5, 1e-6, &format!("{a:?} {r}x{c}"));
        }
    }
}

#[test]
fn activation_backward_matches_reference() {
    for &(r, c) in AWKWARD {
        let x = wide(r * c, 2);
        let dy = random(r * c, 3);
        let (xc, xg) = both(&x, &[r, c]);
        let (dc, dg) = both(&dy, &[r, c]);
        for a in ALL {
            let cpu = act::activation_backward(a, &xc, &dc).unwrap();
            let mut gpu = Tensor::uninit(&xg.device(), &[r, c]).unwrap();
            act::activation_backward_into(a, &xg, &dg, &mut gpu).unwrap();
            assert_same(&gpu, &cpu, 1e-5, 1e-6, &format!("{a:?}' {r}x{c}"));
        }
    }
}

/// Where an activation claims its derivative follows from its output, the backward from the
/// output equals the backward from the input; where it does not, asking is a typed error.
#[test]
fn backward_from_output_equals_backward_from_input_or_is_refused() {
    let (r, c) = (17, 33);
    let x = wide(r * c, 6);
    let dy = random(r * c, 7);
    for dev in [Device::cpu(), gpu()] {
        let xt = Tensor::from_slice(&dev, &x, &[r, c]).unwrap();
        let dt = Tensor::from_slice(&dev, &dy, &[r, c]).unwrap();
        for a in ALL {
            let y = act::activation(a, &xt).unwrap();
            let mut from_y = Tensor::uninit(&dev, &[r, c]).unwrap();
            let got = act::activation_grad_from_output_into(a, &y, &dt, &mut from_y);
            if !a.derivative_from_output() {
                assert!(
                    matches!(got, Err(kiln::Error::InvalidArgument { .. })),
                    "{a:?}: {got:?}"
                );
                continue;
            }
            got.unwrap();
            let from_x = act::activation_backward(a, &xt, &dt).unwrap();
            assert_same(
                &from_y,
                &from_x,
                1e-5,
                1e-6,
                &format!("{a:?} from y, {dev:?}"),
            );
        }
    }
    assert!(Activation::LeakyRelu(0.2).derivative_from_output());
    assert!(!Activation::LeakyRelu(-0.3).derivative_from_output());
}

#[test]
fn activation_backward_matches_finite_differences() {
    let h = 1e-6;
    let n = 2000;
    // |x| <= 3 keeps the series erf accurate; relu and leaky relu skip the kink at 0.
    let x: Vec<f32> = random(n, 4)
        .into_iter()
        .map(|v| 3.0 * v)
        .map(|v| if v.abs() < 1e-3 { v + 0.01 } else { v })
        .collect();
    let dy = random(n, 5);
    let xc = Tensor::from_slice(&Device::cpu(), &x, &[n]).unwrap();
    let dc = Tensor::from_slice(&Device::cpu(), &dy, &[n]).unwrap();
    for a in ALL {
        let got = act::activation_backward(a, &xc, &dc)
            .unwrap()
            .to_vec()
            .unwrap();
        let fd: Vec<f32> = x
            .iter()
            .zip(&dy)
            .map(|(&v, &g)| {
                let v = v as f64;
                let slope = (f64_forward(a, v + h) - f64_forward(a, v - h)) / (2.0 * h);
                (g as f64 * slope) as f32
            })
            .collect();
        assert_close(
            &got,
            &fd,
            1e-5,
            1e-7,
            &format!("{a:?} vs finite differences"),
        );
    }
}

fn softmax_f64(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

const SPLITS: [RowSplit; 3] = [RowSplit::Auto, RowSplit::Invocation, RowSplit::Workgroup];

/// Shapes for the row kernels: AWKWARD plus both sides of the 32-column switch and wide rows.
fn softmax_shapes() -> Vec<(usize, usize)> {
    let mut s = AWKWARD.to_vec();
    s.extend([(7, 32), (7, 33), (5, 64), (3, 65), (9, 5000), (2, 4999)]);
    s
}

#[test]
fn softmax_matches_reference() {
    for (r, c) in softmax_shapes() {
        // Offsets of several hundred would overflow exp without the row max subtracted.
        let x: Vec<f32> = random(r * c, 6)
            .iter()
            .enumerate()
            .map(|(i, v)| 8.0 * v + if (i / c) % 2 == 0 { 300.0 } else { -200.0 })
            .collect();
        let (xc, xg) = both(&x, &[r, c]);
        let cpu = act::softmax(&xc).unwrap();
        let cv = cpu.to_vec().unwrap();
        for (i, row) in x.chunks(c).enumerate() {
            let want = softmax_f64(&row.iter().map(|&v| v as f64).collect::<Vec<_>>());
            let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            assert_close(&cv[i * c..(i + 1) * c], &want, 1e-6, 0.0, "cpu softmax");
        }
        for split in SPLITS {
            let mut gpu = Tensor::uninit(&xg.device(), &[r, c]).unwrap();
            act::softmax_into_split(&xg, &mut gpu, split).unwrap();
            // exp of the GPU is accurate to a few ulp; the row sum adds cols * eps relative.
            assert_same(
                &gpu,
                &cpu,
                2e-5,
                1e-9,
                &format!("softmax {split:?} {r}x{c}"),
            );
        }
    }
}

#[test]
fn softmax_rows_fold_past_65535_workgroups() {
    for (r, c) in [(100_000, 10), (100_000, 40), (70_000, 1)] {
        let x = wide(r * c, 7);
        let (xc, xg) = both(&x, &[r, c]);
        let cpu = act::softmax(&xc).unwrap();
        let dy = random(r * c, 8);
        let (dc, dg) = both(&dy, &[r, c]);
        let bc = act::softmax_backward(&cpu, &dc).unwrap();
        for split in SPLITS {
            let mut gpu = Tensor::uninit(&xg.device(), &[r, c]).unwrap();
            act::softmax_into_split(&xg, &mut gpu, split).unwrap();
            assert_same(
                &gpu,
                &cpu,
                2e-5,
                1e-9,
                &format!("softmax {split:?} {r}x{c}"),
            );
            let mut bg = Tensor::uninit(&xg.device(), &[r, c]).unwrap();
            act::softmax_backward_into_split(&gpu, &dg, &mut bg, split).unwrap();
            assert_same(
                &bg,
                &bc,
                1e-4,
                1e-6,
                &format!("softmax backward {split:?} {r}x{c}"),
            );
        }
    }
}

#[test]
fn softmax_backward_matches_reference() {
    for (r, c) in softmax_shapes() {
        let x = wide(r * c, 9);
        let dy = random(r * c, 10);
        let (xc, xg) = both(&x, &[r, c]);
        let (dc, dg) = both(&dy, &[r, c]);
        let yc = act::softmax(&xc).unwrap();
        let yg = Tensor::from_slice(&xg.device(), &yc.to_vec().unwrap(), &[r, c]).unwrap();
        let cpu = act::softmax_backward(&yc, &dc).unwrap();
        for split in SPLITS {
            let mut gpu = Tensor::uninit(&xg.device(), &[r, c]).unwrap();
            act::softmax_backward_into_split(&yg, &dg, &mut gpu, split).unwrap();
            // dy - sum(dy * y) cancels, so the error is relative to |dy|, not to the result.
            let what = format!("softmax backward {split:?} {r}x{c}");
            assert_same(&gpu, &cpu, 1e-4, 1e-6, &what);
        }
    }
}

#[test]
fn softmax_backward_matches_finite_differences() {
    let h = 1e-6;
    for (r, c) in [(1, 1), (3, 5), (17, 33), (2, 70)] {
        let x = wide(r * c, 11);
        let g = random(r * c, 12);
        let xc = Tensor::from_slice(&Device::cpu(), &x, &[r, c]).unwrap();
        let gc = Tensor::from_slice(&Device::cpu(), &g, &[r, c]).unwrap();
        let y = act::softmax(&xc).unwrap();
        let got = act::softmax_backward(&y, &gc).unwrap().to_vec().unwrap();
        // The loss sum(g * softmax(x)) has gradient softmax_backward(y, g).
        let mut fd = vec![0f32; r * c];
        for i in 0..r {
            let row: Vec<f64> = x[i * c..(i + 1) * c].iter().map(|&v| v as f64).collect();
            let grow: Vec<f64> = g[i * c..(i + 1) * c].iter().map(|&v| v as f64).collect();
            let loss = |row: &[f64]| -> f64 {
                softmax_f64(row).iter().zip(&grow).map(|(a, b)| a * b).sum()
            };
            for j in 0..c {
                let (mut up, mut down) = (row.clone(), row.clone());
                up[j] += h;
                down[j] -= h;
                fd[i * c + j] = ((loss(&up) - loss(&down)) / (2.0 * h)) as f32;
            }
        }
        // y enters as f32, so the backward carries ~1e-7 of rounding next to dy's size.
        assert_close(
            &got,
            &fd,
            1e-5,
            1e-6,
            &format!("softmax {r}x{c} vs finite differences"),
        );
    }
}

#[test]
fn bad_shapes_are_errors() {
    for dev in [Device::cpu(), gpu()] {
        let x = Tensor::zeros(&dev, &[4, 6]).unwrap();
        let wrong = Tensor::zeros(&dev, &[6, 4]).unwrap();
        let mut out = Tensor::zeros(&dev, &[6, 4]).unwrap();
        let is_shape = |r: kiln::Result<()>| matches!(r, Err(kiln::Error::Shape { .. }));
        assert!(is_shape(act::activation_into(
            Activation::Relu,
            &x,
            &mut out
        )));
        assert!(is_shape(
            act::activation_backward(Activation::Tanh, &x, &wrong).map(|_| ())
        ));
        assert!(is_shape(act::activation_backward_into(
            Activation::Tanh,
            &x,
            &x,
            &mut out
        )));
        assert!(is_shape(act::softmax_into(&x, &mut out)));
        // [B, T, C] is B * T rows over its last axis (sequences), as a [B * T, C] tensor.
        let data = common::random(24, 3);
        let cube = Tensor::from_slice(&dev, &data, &[2, 3, 4]).unwrap();
        let rows = Tensor::from_slice(&dev, &data, &[6, 4]).unwrap();
        let (sc, sr) = (act::softmax(&cube).unwrap(), act::softmax(&rows).unwrap());
        assert_eq!(sc.shape(), [2, 3, 4]);
        assert_eq!(sc.to_vec().unwrap(), sr.to_vec().unwrap());
        assert!(is_shape(act::softmax_backward(&x, &wrong).map(|_| ())));
        assert!(is_shape(act::softmax_backward(&cube, &rows).map(|_| ())));
        assert!(is_shape(act::softmax_backward_into(&x, &x, &mut out)));
    }
    let x = Tensor::zeros(&Device::cpu(), &[2, 2]).unwrap();
    let mut out = Tensor::zeros(&gpu(), &[2, 2]).unwrap();
    assert!(matches!(
        act::activation_into(Activation::Relu, &x, &mut out),
        Err(kiln::Error::DeviceMismatch { .. })
    ));
}
