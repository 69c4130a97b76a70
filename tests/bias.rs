mod common;
use common::*;
use kiln::ops::bias;
use kiln::{Device, Tensor};

/// Shapes for the column sum: AWKWARD plus tall inputs on both sides of the one-pass limit.
fn grad_shapes() -> Vec<(usize, usize)> {
    let mut s = AWKWARD.to_vec();
    s.extend([
        (256, 3),
        (257, 3),
        (60_000, 10),
        (128, 128),
        (0, 4),
        (4_097, 1),
    ]);
    s
}

#[test]
fn bias_add_matches_reference() {
    for &(r, c) in AWKWARD {
        let x = random(r * c, 1);
        let b = random(c, 2);
        let (xc, xg) = both(&x, &[r, c]);
        let (bc, bg) = both(&b, &[c]);
        // The sum of two f32 is exact in f64, so rounding it once is the correctly rounded sum.
        let want: Vec<f32> = (0..r * c)
            .map(|i| (x[i] as f64 + b[i % c] as f64) as f32)
            .collect();
        let cpu = bias::bias_add(&xc, &bc).unwrap();
        assert_close(&cpu.to_vec().unwrap(), &want, 0.0, 0.0, "cpu bias_add");
        let mut gpu = Tensor::uninit(&xg.device(), &[r, c]).unwrap();
        bias::bias_add_into(&xg, &bg, &mut gpu).unwrap();
        assert_same(&gpu, &cpu, 0.0, 0.0, &format!("bias_add {r}x{c}"));

        let (mut ic, mut ig) = both(&x, &[r, c]);
        bias::bias_add_inplace(&mut ic, &bc).unwrap();
        bias::bias_add_inplace(&mut ig, &bg).unwrap();
        assert_close(
            &ic.to_vec().unwrap(),
            &want,
            0.0,
            0.0,
            "cpu bias_add_inplace",
        );
        assert_same(&ig, &ic, 0.0, 0.0, &format!("bias_add_inplace {r}x{c}"));
    }
}

#[test]
fn bias_add_covers_a_2d_grid() {
    // 17M elements need more than 65535 workgroups of 256.
    let (r, c) = (170_000, 100);
    let x = random(r * c, 3);
    let b = random(c, 4);
    let (xc, xg) = both(&x, &[r, c]);
    let (bc, bg) = both(&b, &[c]);
    let cpu = bias::bias_add(&xc, &bc).unwrap();
    assert_same(
        &bias::bias_add(&xg, &bg).unwrap(),
        &cpu,
        0.0,
        0.0,
        "bias_add",
    );
    let mut ig = xg;
    bias::bias_add_inplace(&mut ig, &bg).unwrap();
    assert_same(&ig, &cpu, 0.0, 0.0, "bias_add_inplace");
}

#[test]
fn bias_grad_matches_reference() {
    for (r, c) in grad_shapes() {
        let dy = random(r * c, 5);
        let (dc, dg) = both(&dy, &[r, c]);
        let mut want = vec![0f64; c];
        for (i, v) in dy.iter().enumerate() {
            want[i % c] += *v as f64;
        }
        let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        let cpu = bias::bias_grad(&dc).unwrap();
        assert_eq!(cpu.shape(), [c]);
        assert_close(&cpu.to_vec().unwrap(), &want, 0.0, 0.0, "cpu bias_grad");
        let mut gpu = Tensor::uninit(&dg.device(), &[c]).unwrap();
        bias::bias_grad_into(&dg, &mut gpu).unwrap();
        // f32 sums over runs of ~sqrt(rows) values: the error grows with the row count.
        let atol = 1e-7 * r as f32;
        assert_same(&gpu, &cpu, 1e-6, atol, &format!("bias_grad {r}x{c}"));
    }
}

#[test]
fn bias_grad_matches_finite_differences() {
    let h = 1e-6;
    for (r, c) in [(1, 1), (3, 5), (17, 33), (300, 7)] {
        let x = random(r * c, 6);
        let b = random(c, 7);
        let g = random(r * c, 8);
        // The loss sum(g * (x + b)) has gradient bias_grad(g) with respect to b.
        let loss = |b: &[f64]| -> f64 {
            (0..r * c)
                .map(|i| g[i] as f64 * (x[i] as f64 + b[i % c]))
                .sum()
        };
        let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
        let fd: Vec<f32> = (0..c)
            .map(|j| {
                let (mut up, mut down) = (b64.clone(), b64.clone());
                up[j] += h;
                down[j] -= h;
                ((loss(&up) - loss(&down)) / (2.0 * h)) as f32
            })
            .collect();
        let gc = Tensor::from_slice(&Device::cpu(), &g, &[r, c]).unwrap();
        let got = bias::bias_grad(&gc).unwrap().to_vec().unwrap();
        // The loss is near r in size, so its f64 rounding over 2h is about r * 1e-10.
        assert_close(
            &got,
            &fd,
            1e-5,
            1e-7 * r as f32,
            &format!("bias_grad {r}x{c} vs finite differences"),
        );
    }
}

#[test]
fn bad_shapes_are_errors() {
    for dev in [Device::cpu(), gpu()] {
        let x = Tensor::zeros(&dev, &[4, 6]).unwrap();
        let mut x2 = Tensor::zeros(&dev, &[4, 6]).unwrap();
        let b6 = Tensor::zeros(&dev, &[6]).unwrap();
        let b4 = Tensor::zeros(&dev, &[4]).unwrap();
        let b16 = Tensor::zeros(&dev, &[1, 6]).unwrap();
        let cube = Tensor::zeros(&dev, &[2, 3, 4]).unwrap();
        let mut out = Tensor::zeros(&dev, &[6, 4]).unwrap();
        let is_shape = |r: kiln::Result<()>| matches!(r, Err(kiln::Error::Shape { .. }));
        assert!(is_shape(bias::bias_add(&x, &b4).map(|_| ())));
        assert!(is_shape(bias::bias_add(&x, &b16).map(|_| ())));
        assert!(is_shape(bias::bias_add(&cube, &b6).map(|_| ())));
        assert!(is_shape(bias::bias_add_into(&x, &b6, &mut out)));
        assert!(is_shape(bias::bias_add_inplace(&mut x2, &b4)));
        // [B, T, C] is B * T rows of C (sequences): one sum per column of the last axis.
        assert_eq!(bias::bias_grad(&cube).unwrap().shape(), [4]);
        let mut db = Tensor::zeros(&dev, &[4]).unwrap();
        assert!(is_shape(bias::bias_grad_into(&x, &mut db)));
    }
    let x = Tensor::zeros(&Device::cpu(), &[2, 2]).unwrap();
    let b = Tensor::zeros(&gpu(), &[2]).unwrap();
    assert!(matches!(
        bias::bias_add(&x, &b),
        Err(kiln::Error::DeviceMismatch { .. })
    ));
}
