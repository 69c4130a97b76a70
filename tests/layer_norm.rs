mod common;
use common::*;
use kiln::ops::batch_norm::NormStats;
use kiln::ops::layer_norm::LayerNorm;
use kiln::{Device, Error, Tensor};

/// One row of one value, odd widths, 3-D inputs, and more than 256 rows (the parameter
/// gradients' two-level column sums).
const SHAPES: &[&[usize]] = &[
    &[1, 1],
    &[3, 5],
    &[128, 17],
    &[2, 3, 33],
    &[300, 7],
    &[1, 1000],
    &[9],
];

fn rows_d(s: &[usize]) -> (usize, usize) {
    let d = *s.last().unwrap();
    (s.iter().product::<usize>() / d, d)
}

/// The test's own f64 layer norm: (y, mean, invstd) per row.
fn ln_f64(x: &[f64], d: usize, gamma: &[f64], beta: &[f64], eps: f64) -> [Vec<f64>; 3] {
    let (mut y, mut means, mut invs) = (vec![], vec![], vec![]);
    for row in x.chunks(d) {
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + eps).sqrt();
        y.extend(
            row.iter()
                .zip(gamma.iter().zip(beta))
                .map(|(v, (g, b))| g * (v - mean) * inv + b),
        );
        means.push(mean);
        invs.push(inv);
    }
    [y, means, invs]
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// x around 3 with spread 2, gamma, beta.
fn inputs(s: &[usize], seed: u64) -> [Vec<f32>; 3] {
    let d = rows_d(s).1;
    let x = random(s.iter().product(), seed)
        .iter()
        .map(|v| 3.0 + 2.0 * v)
        .collect();
    [x, random(d, seed + 1), random(d, seed + 2)]
}

/// Forward on `dev`: (y, saved statistics).
fn forward(ln: &LayerNorm, dev: &Device, s: &[usize], v: &[Vec<f32>; 3]) -> (Tensor, NormStats) {
    let (rows, d) = rows_d(s);
    let up = |v: &[f32], shape: &[usize]| Tensor::from_slice(dev, v, shape).unwrap();
    let mut saved = NormStats::new(dev, rows).unwrap();
    let mut y = Tensor::full(dev, s, f32::NAN).unwrap();
    ln.forward_into(
        &up(&v[0], s),
        &up(&v[1], &[d]),
        &up(&v[2], &[d]),
        &mut saved,
        &mut y,
    )
    .unwrap();
    (y, saved)
}

#[test]
fn forward_matches_reference() {
    let ln = LayerNorm::default();
    for (i, &s) in SHAPES.iter().enumerate() {
        let v = inputs(s, 10 * i as u64);
        let d = rows_d(s).1;
        let [y, mean, inv] = ln_f64(&f64s(&v[0]), d, &f64s(&v[1]), &f64s(&v[2]), 1e-5);
        let what = |op: &str| format!("{op} {s:?}");
        let (yc, sc) = forward(&ln, &Device::cpu(), s, &v);
        assert_close(
            &yc.to_vec().unwrap(),
            &to_f32(&y),
            1e-6,
            1e-6,
            &what("cpu y"),
        );
        assert_close(
            &sc.mean.to_vec().unwrap(),
            &to_f32(&mean),
            1e-6,
            0.0,
            &what("cpu mean"),
        );
        assert_close(
            &sc.invstd.to_vec().unwrap(),
            &to_f32(&inv),
            1e-6,
            0.0,
            &what("cpu invstd"),
        );
        let (yg, sg) = forward(&ln, &gpu(), s, &v);
        // f32 sums of up to 1000 values around 3.
        assert_same(&yg, &yc, 1e-4, 1e-5, &what("gpu y"));
        assert_same(&sg.mean, &sc.mean, 1e-5, 1e-6, &what("gpu mean"));
        assert_same(&sg.invstd, &sc.invstd, 1e-4, 0.0, &what("gpu invstd"));
    }
}

/// (dx, dgamma, dbeta) on `dev`, from a forward there.
fn backward(dev: &Device, s: &[usize], v: &[Vec<f32>; 3], dy: &[f32]) -> [Vec<f32>; 3] {
    let d = rows_d(s).1;
    let (_, saved) = forward(&LayerNorm::default(), dev, s, v);
    let up = |v: &[f32], shape: &[usize]| Tensor::from_slice(dev, v, shape).unwrap();
    let mut dx = Tensor::full(dev, s, f32::NAN).unwrap();
    let mut dg = Tensor::full(dev, &[d], f32::NAN).unwrap();
    let mut db = Tensor::full(dev, &[d], f32::NAN).unwrap();
    LayerNorm::backward_into(
        &up(&v[0], s),
        &up(dy, s),
        &up(&v[1], &[d]),
        &saved,
        &mut dx,
        &mut dg,
        &mut db,
    )
    .unwrap();
    [dx, dg, db].map(|t| t.to_vec().unwrap())
}

#[test]
fn backward_matches_reference() {
    for (i, &s) in SHAPES.iter().enumerate() {
        let v = inputs(s, 100 + i as u64);
        let dy = random(v[0].len(), 200 + i as u64);
        let cpu = backward(&Device::cpu(), s, &v, &dy);
        let gpu = backward(&gpu(), s, &v, &dy);
        let (rows, d) = rows_d(s);
        for (name, (g, c)) in ["dx", "dgamma", "dbeta"].iter().zip(gpu.iter().zip(&cpu)) {
            // dx sums d terms per row, the parameter gradients `rows` terms per column.
            let atol = 2e-6 * (rows.max(d) as f32).sqrt();
            assert_close(g, c, 1e-4, atol, &format!("{name} {s:?}"));
        }
    }
}

#[test]
fn cpu_backward_matches_finite_differences() {
    for (i, &s) in SHAPES.iter().enumerate() {
        if s.iter().product::<usize>() > 1000 {
            continue;
        }
        let v = inputs(s, 300 + i as u64);
        let g = random(v[0].len(), 400 + i as u64);
        let grads = backward(&Device::cpu(), s, &v, &g);
        let d = rows_d(s).1;
        let (x, gamma, beta) = (f64s(&v[0]), f64s(&v[1]), f64s(&v[2]));
        let loss = |x: &[f64], gm: &[f64], bt: &[f64]| -> f64 {
            let [y, _, _] = ln_f64(x, d, gm, bt, 1e-5);
            y.iter().zip(&g).map(|(y, g)| y * *g as f64).sum()
        };
        let inputs = [&x[..], &gamma[..], &beta[..]];
        assert_affine_grads(&grads, inputs, loss, &format!("{s:?}"));
    }
}

#[test]
fn bad_shapes_are_errors() {
    let shape = |r: kiln::Result<()>| matches!(r, Err(Error::Shape { .. }));
    for dev in [Device::cpu(), gpu()] {
        let z = |s: &[usize]| Tensor::zeros(&dev, s).unwrap();
        let ln = LayerNorm::default();
        let (x, g, b) = (z(&[4, 6]), z(&[6]), z(&[6]));
        let mut saved = NormStats::new(&dev, 4).unwrap();
        let mut y = z(&[4, 6]);
        ln.forward_into(&x, &g, &b, &mut saved, &mut y).unwrap();
        assert!(shape(ln.forward_into(&x, &z(&[4]), &b, &mut saved, &mut y)));
        assert!(shape(ln.forward_into(
            &x,
            &g,
            &z(&[1, 6]),
            &mut saved,
            &mut y
        )));
        assert!(shape(ln.forward_into(
            &x,
            &g,
            &b,
            &mut saved,
            &mut z(&[6, 4])
        )));
        let mut wrong = NormStats::new(&dev, 6).unwrap();
        assert!(shape(ln.forward_into(&x, &g, &b, &mut wrong, &mut y)));
        let mut e = z(&[4, 0]);
        assert!(shape(ln.forward_into(
            &z(&[4, 0]),
            &z(&[0]),
            &z(&[0]),
            &mut saved,
            &mut e
        )));
        let (mut dx, mut dg, mut db) = (z(&[4, 6]), z(&[6]), z(&[6]));
        assert!(shape(LayerNorm::backward_into(
            &x,
            &z(&[4, 5]),
            &g,
            &saved,
            &mut dx,
            &mut dg,
            &mut db
        )));
        assert!(shape(LayerNorm::backward_into(
            &x,
            &y,
            &g,
            &saved,
            &mut dx,
            &mut dg,
            &mut z(&[4])
        )));
    }
    let neg = LayerNorm { eps: -1.0 };
    let cpu = Device::cpu();
    let x = Tensor::zeros(&cpu, &[2, 3]).unwrap();
    let g = Tensor::zeros(&cpu, &[3]).unwrap();
    let mut saved = NormStats::new(&cpu, 2).unwrap();
    let mut y = Tensor::zeros(&cpu, &[2, 3]).unwrap();
    assert!(matches!(
        neg.forward_into(&x, &g, &g, &mut saved, &mut y),
        Err(Error::InvalidArgument { .. })
    ));
    let b = Tensor::zeros(&gpu(), &[3]).unwrap();
    assert!(matches!(
        LayerNorm::default().forward_into(&x, &g, &b, &mut saved, &mut y),
        Err(Error::DeviceMismatch { .. })
    ));
}
