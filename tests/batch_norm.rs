mod common;
use common::*;
use kiln::ops::batch_norm::{BatchNorm, NormStats, RunningStats};
use kiln::{Device, Error, Tensor};

/// [n, c] (per feature) and [n, c, h, w] (per channel): batch 1, 1, 3 and 17 channels,
/// odd planes, and 4-D inputs with 1x1 planes.
const SHAPES: &[&[usize]] = &[
    &[2, 1],
    &[7, 3],
    &[128, 17],
    &[1, 3, 5, 7],
    &[3, 17, 4, 5],
    &[5, 2, 1, 1],
    &[2, 3, 1, 2],
    &[16, 8, 14, 14],
];

/// (n, c, hw) of a shape.
fn layout(s: &[usize]) -> (usize, usize, usize) {
    (s[0], s[1], s[2..].iter().product())
}

/// Values around 3 with spread 2: a mean far from zero tests the variance's cancellation.
fn offset(n: usize, seed: u64) -> Vec<f32> {
    random(n, seed).iter().map(|v| 3.0 + 2.0 * v).collect()
}

/// The test's own f64 batch norm: (y, mean, biased var) per channel.
fn bn_f64(
    x: &[f64],
    s: &[usize],
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (n, c, hw) = layout(s);
    let ch = |i: usize| (i / hw) % c;
    let m = (n * hw) as f64;
    let mut mean = vec![0.0; c];
    for (i, v) in x.iter().enumerate() {
        mean[ch(i)] += v / m;
    }
    let mut var = vec![0.0; c];
    for (i, v) in x.iter().enumerate() {
        var[ch(i)] += (v - mean[ch(i)]).powi(2) / m;
    }
    let y = x
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let k = ch(i);
            gamma[k] * (v - mean[k]) / (var[k] + eps).sqrt() + beta[k]
        })
        .collect();
    (y, mean, var)
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

struct Setup {
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    rmean: Vec<f32>,
    rvar: Vec<f32>,
}

fn setup(s: &[usize], seed: u64) -> Setup {
    let c = s[1];
    Setup {
        x: offset(s.iter().product(), seed),
        gamma: random(c, seed + 1),
        beta: random(c, seed + 2),
        rmean: random(c, seed + 3),
        rvar: random(c, seed + 4).iter().map(|v| 1.5 + v).collect(),
    }
}

/// Runs a training forward on `dev` twice (the running statistics move twice) and
/// returns (y, saved, running).
fn train(
    bn: &BatchNorm,
    dev: &Device,
    s: &[usize],
    t: &Setup,
) -> (Tensor, NormStats, RunningStats) {
    let c = s[1];
    let up = |v: &[f32], shape: &[usize]| Tensor::from_slice(dev, v, shape).unwrap();
    let (x, g, b) = (up(&t.x, s), up(&t.gamma, &[c]), up(&t.beta, &[c]));
    let mut running = RunningStats {
        mean: up(&t.rmean, &[c]),
        var: up(&t.rvar, &[c]),
    };
    let mut saved = NormStats::new(dev, c).unwrap();
    let mut y = Tensor::full(dev, s, f32::NAN).unwrap();
    for _ in 0..2 {
        bn.forward_train_into(&x, &g, &b, &mut running, &mut saved, &mut y)
            .unwrap();
    }
    (y, saved, running)
}

#[test]
fn train_forward_matches_reference() {
    let bn = BatchNorm::default();
    for (i, &s) in SHAPES.iter().enumerate() {
        let t = setup(s, 10 * i as u64);
        let (n, c, hw) = layout(s);
        let (y, mean, var) = bn_f64(&f64s(&t.x), s, &f64s(&t.gamma), &f64s(&t.beta), 1e-5);
        let m = (n * hw) as f64;
        let run = |r: f32, b: f64, scale: f64| {
            let once = 0.9 * r as f64 + 0.1 * b * scale;
            (0.9 * once + 0.1 * b * scale) as f32
        };
        let want_rm: Vec<f32> = (0..c).map(|k| run(t.rmean[k], mean[k], 1.0)).collect();
        let want_rv: Vec<f32> = (0..c)
            .map(|k| run(t.rvar[k], var[k], m / (m - 1.0)))
            .collect();
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();

        let what = |op: &str| format!("{op} {s:?}");
        let (yc, sc, rc) = train(&bn, &Device::cpu(), s, &t);
        // The CPU works in f64: it differs from the test's f64 only in rounding to f32.
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
            1e-6,
            &what("cpu mean"),
        );
        let got = sc.invstd.to_vec().unwrap();
        assert_close(&got, &to_f32(&invstd), 1e-6, 0.0, &what("cpu invstd"));
        let got = rc.mean.to_vec().unwrap();
        assert_close(&got, &want_rm, 1e-6, 1e-6, &what("cpu running mean"));
        let got = rc.var.to_vec().unwrap();
        assert_close(&got, &want_rv, 1e-6, 1e-6, &what("cpu running var"));

        // f32 sums of up to 25000 values around 3 on the GPU.
        let (yg, sg, rg) = train(&bn, &gpu(), s, &t);
        assert_same(&yg, &yc, 1e-4, 1e-4, &what("gpu y"));
        assert_same(&sg.mean, &sc.mean, 1e-5, 1e-6, &what("gpu mean"));
        assert_same(&sg.invstd, &sc.invstd, 1e-4, 0.0, &what("gpu invstd"));
        assert_same(&rg.mean, &rc.mean, 1e-5, 1e-6, &what("gpu running mean"));
        assert_same(&rg.var, &rc.var, 1e-4, 1e-6, &what("gpu running var"));
    }
}

#[test]
fn eval_forward_matches_reference() {
    let bn = BatchNorm {
        eps: 1e-3,
        momentum: 0.3,
    };
    for (i, &s) in SHAPES.iter().enumerate() {
        let t = setup(s, 100 + i as u64);
        let c = s[1];
        let hw = layout(s).2;
        let want: Vec<f32> =
            t.x.iter()
                .enumerate()
                .map(|(j, &v)| {
                    let k = (j / hw) % c;
                    let xhat = (v as f64 - t.rmean[k] as f64) / (t.rvar[k] as f64 + 1e-3).sqrt();
                    (t.gamma[k] as f64 * xhat + t.beta[k] as f64) as f32
                })
                .collect();
        for dev in [Device::cpu(), gpu()] {
            let up = |v: &[f32], shape: &[usize]| Tensor::from_slice(&dev, v, shape).unwrap();
            let running = RunningStats {
                mean: up(&t.rmean, &[c]),
                var: up(&t.rvar, &[c]),
            };
            let mut y = Tensor::full(&dev, s, f32::NAN).unwrap();
            bn.forward_eval_into(
                &up(&t.x, s),
                &up(&t.gamma, &[c]),
                &up(&t.beta, &[c]),
                &running,
                &mut y,
            )
            .unwrap();
            let what = format!("eval {s:?} on {}", dev.name());
            assert_close(&y.to_vec().unwrap(), &want, 1e-5, 1e-5, &what);
        }
    }
}

/// (dx, dgamma, dbeta) on `dev` from the statistics of a training forward there.
fn backward(dev: &Device, s: &[usize], t: &Setup, dy: &[f32]) -> [Vec<f32>; 3] {
    let c = s[1];
    let (_, saved, _) = train(&BatchNorm::default(), dev, s, t);
    let up = |v: &[f32], shape: &[usize]| Tensor::from_slice(dev, v, shape).unwrap();
    let mut dx = Tensor::full(dev, s, f32::NAN).unwrap();
    let mut dg = Tensor::full(dev, &[c], f32::NAN).unwrap();
    let mut db = Tensor::full(dev, &[c], f32::NAN).unwrap();
    BatchNorm::backward_into(
        &up(&t.x, s),
        &up(dy, s),
        &up(&t.gamma, &[c]),
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
        let t = setup(s, 200 + i as u64);
        let dy = random(t.x.len(), 300 + i as u64);
        let cpu = backward(&Device::cpu(), s, &t, &dy);
        let gpu = backward(&gpu(), s, &t, &dy);
        for (name, (g, c)) in ["dx", "dgamma", "dbeta"].iter().zip(gpu.iter().zip(&cpu)) {
            // f32 sums over up to 25000 values per channel.
            let atol = 1e-6 * (t.x.len() as f32 / s[1] as f32).sqrt();
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
        let t = setup(s, 400 + i as u64);
        let g = random(t.x.len(), 500 + i as u64);
        let grads = backward(&Device::cpu(), s, &t, &g);
        let (x, gamma, beta) = (f64s(&t.x), f64s(&t.gamma), f64s(&t.beta));
        let loss = |x: &[f64], gm: &[f64], bt: &[f64]| -> f64 {
            let y = bn_f64(x, s, gm, bt, 1e-5).0;
            y.iter().zip(&g).map(|(y, g)| y * *g as f64).sum()
        };
        let inputs = [&x[..], &gamma[..], &beta[..]];
        assert_affine_grads(&grads, inputs, loss, &format!("{s:?}"));
    }
}

#[test]
fn bad_shapes_and_arguments_are_errors() {
    let shape = |r: kiln::Result<()>| matches!(r, Err(Error::Shape { .. }));
    let arg = |r: kiln::Result<()>| matches!(r, Err(Error::InvalidArgument { .. }));
    for dev in [Device::cpu(), gpu()] {
        let z = |s: &[usize]| Tensor::zeros(&dev, s).unwrap();
        let bn = BatchNorm::default();
        let (x, g, b) = (z(&[4, 3, 2, 2]), z(&[3]), z(&[3]));
        let mut run = RunningStats::new(&dev, 3).unwrap();
        let mut saved = NormStats::new(&dev, 3).unwrap();
        let mut y = z(&[4, 3, 2, 2]);
        bn.forward_train_into(&x, &g, &b, &mut run, &mut saved, &mut y)
            .unwrap();
        let mut y3 = z(&[4, 3, 4]);
        assert!(shape(bn.forward_train_into(
            &z(&[4, 3, 4]),
            &g,
            &b,
            &mut run,
            &mut saved,
            &mut y3
        )));
        assert!(shape(bn.forward_train_into(
            &x,
            &z(&[4]),
            &b,
            &mut run,
            &mut saved,
            &mut y
        )));
        assert!(shape(bn.forward_train_into(
            &x,
            &g,
            &b,
            &mut run,
            &mut saved,
            &mut z(&[4, 3, 4, 1])
        )));
        let mut small = NormStats::new(&dev, 2).unwrap();
        assert!(shape(
            bn.forward_train_into(&x, &g, &b, &mut run, &mut small, &mut y)
        ));
        let mut y1 = z(&[1, 3]);
        assert!(arg(bn.forward_train_into(
            &z(&[1, 3]),
            &g,
            &b,
            &mut run,
            &mut saved,
            &mut y1
        )));
        let wild = BatchNorm {
            momentum: 1.5,
            ..bn
        };
        assert!(arg(
            wild.forward_train_into(&x, &g, &b, &mut run, &mut saved, &mut y)
        ));
        assert!(shape(bn.forward_eval_into(&x, &g, &z(&[2]), &run, &mut y)));
        let (mut dx, mut dg, mut db) = (z(&[4, 3, 2, 2]), z(&[3]), z(&[3]));
        assert!(shape(BatchNorm::backward_into(
            &x,
            &z(&[4, 3, 2]),
            &g,
            &saved,
            &mut dx,
            &mut dg,
            &mut db
        )));
        assert!(shape(BatchNorm::backward_into(
            &x,
            &y,
            &g,
            &saved,
            &mut dx,
            &mut z(&[4]),
            &mut db
        )));
    }
    let x = Tensor::zeros(&Device::cpu(), &[4, 3]).unwrap();
    let g = Tensor::zeros(&gpu(), &[3]).unwrap();
    let b = Tensor::zeros(&Device::cpu(), &[3]).unwrap();
    let mut run = RunningStats::new(&Device::cpu(), 3).unwrap();
    let mut saved = NormStats::new(&Device::cpu(), 3).unwrap();
    let mut y = Tensor::zeros(&Device::cpu(), &[4, 3]).unwrap();
    assert!(matches!(
        BatchNorm::default().forward_train_into(&x, &g, &b, &mut run, &mut saved, &mut y),
        Err(Error::DeviceMismatch { .. })
    ));
}
