mod common;
use common::*;
use kiln::ops::pool::{self, Pool2d};
use kiln::{Device, Error, Tensor};

/// Odd sizes with leftover rows, strides 1 to 3, padding, 1x1, 5x5 and uneven windows,
/// batch 1, 1, 3 and 17 channels, and both average divisors.
fn cases() -> Vec<([usize; 4], Pool2d)> {
    let p = Pool2d::new;
    vec![
        ([1, 1, 5, 5], p((2, 2))),
        (
            [2, 3, 7, 6],
            p((3, 3)).with_stride((2, 2)).with_padding((1, 1)),
        ),
        (
            [2, 3, 7, 6],
            p((3, 3))
                .with_stride((2, 2))
                .with_padding((1, 1))
                .with_count_include_pad(false),
        ),
        (
            [3, 17, 9, 11],
            p((3, 3)).with_stride((1, 1)).with_padding((1, 1)),
        ),
        ([2, 3, 8, 9], p((1, 1))),
        (
            [1, 2, 10, 9],
            p((5, 5))
                .with_stride((3, 3))
                .with_padding((2, 2))
                .with_count_include_pad(false),
        ),
        (
            [2, 4, 6, 7],
            p((2, 3)).with_stride((1, 2)).with_padding((1, 1)),
        ),
        ([4, 8, 28, 28], p((2, 2))),
    ]
}

fn out_shape(x: [usize; 4], p: &Pool2d) -> [usize; 4] {
    p.out_shape(&x).unwrap()
}

/// The test's own f64 pooling: (max, argmax, average) per output, from the definition.
fn pool_f64(x: &[f64], s: [usize; 4], p: &Pool2d) -> (Vec<f64>, Vec<usize>, Vec<f64>) {
    let [n, c, h, w] = s;
    let [_, _, oh, ow] = out_shape(s, p);
    let (mut mx, mut arg, mut avg) = (vec![], vec![], vec![]);
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut best, mut at, mut sum, mut count) = (f64::NEG_INFINITY, 0, 0.0, 0);
                for ky in 0..p.kernel.0 {
                    for kx in 0..p.kernel.1 {
                        let iy = (oy * p.stride.0 + ky) as i64 - p.padding.0 as i64;
                        let ix = (ox * p.stride.1 + kx) as i64 - p.padding.1 as i64;
                        if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                            continue;
                        }
                        let pos = iy as usize * w + ix as usize;
                        let v = x[plane * h * w + pos];
                        if v > best {
                            (best, at) = (v, pos);
                        }
                        sum += v;
                        count += 1;
                    }
                }
                let div = if p.count_include_pad {
                    p.kernel.0 * p.kernel.1
                } else {
                    count
                };
                mx.push(best);
                arg.push(at);
                avg.push(sum / div as f64);
            }
        }
    }
    (mx, arg, avg)
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Values from {-1, -0.5, 0, 0.5, 1}: windows with ties, to pin down the first-max rule.
fn ties(n: usize, seed: u64) -> Vec<f32> {
    random(n, seed)
        .iter()
        .map(|v| (v * 2.0).round() / 2.0)
        .collect()
}

#[test]
fn forward_matches_reference() {
    for (i, (s, p)) in cases().into_iter().enumerate() {
        let len = s.iter().product();
        for x in [random(len, i as u64), ties(len, 50 + i as u64)] {
            let (mx, arg, avg) = pool_f64(&f64s(&x), s, &p);
            let os = out_shape(s, &p);
            let (xc, xg) = both(&x, &s);
            let (oc, ac) = pool::max_pool2d(&xc, &p).unwrap();
            let what = |op: &str| format!("{op} {s:?} {p:?}");
            assert_close(
                &oc.to_vec().unwrap(),
                &to_f32(&mx),
                0.0,
                0.0,
                &what("cpu max"),
            );
            let arg: Vec<f32> = arg.iter().map(|&a| a as f32).collect();
            assert_close(&ac.to_vec().unwrap(), &arg, 0.0, 0.0, &what("cpu argmax"));
            let (mut og, mut ag) = (nan_gpu(&os), nan_gpu(&os));
            p.max_forward_into(&xg, &mut og, &mut ag).unwrap();
            assert_same(&og, &oc, 0.0, 0.0, &what("gpu max"));
            assert_same(&ag, &ac, 0.0, 0.0, &what("gpu argmax"));

            let avc = pool::avg_pool2d(&xc, &p).unwrap();
            // Sums of at most 25 values in f64, then f32.
            assert_close(
                &avc.to_vec().unwrap(),
                &to_f32(&avg),
                1e-7,
                1e-7,
                &what("cpu avg"),
            );
            let mut avg_g = nan_gpu(&os);
            p.avg_forward_into(&xg, &mut avg_g).unwrap();
            assert_same(&avg_g, &avc, 1e-6, 1e-6, &what("gpu avg"));
        }
    }
}

#[test]
fn backward_matches_reference() {
    for (i, (s, p)) in cases().into_iter().enumerate() {
        let os = out_shape(s, &p);
        let x = ties(s.iter().product(), 100 + i as u64);
        let dy = random(os.iter().product(), 200 + i as u64);
        let (xc, xg) = both(&x, &s);
        let (dyc, dyg) = both(&dy, &os);
        let what = |op: &str| format!("{op} {s:?} {p:?}");

        let (_, ac) = pool::max_pool2d(&xc, &p).unwrap();
        let (_, ag) = pool::max_pool2d(&xg, &p).unwrap();
        let mut dxc = Tensor::zeros(&Device::cpu(), &s).unwrap();
        p.max_backward_into(&dyc, &ac, &mut dxc).unwrap();
        let mut dxg = nan_gpu(&s);
        p.max_backward_into(&dyg, &ag, &mut dxg).unwrap();
        // Overlapping windows add up to (3/1)^2 values in a different order.
        assert_same(&dxg, &dxc, 1e-6, 1e-6, &what("max backward"));

        let mut dxc = Tensor::zeros(&Device::cpu(), &s).unwrap();
        p.avg_backward_into(&dyc, &mut dxc).unwrap();
        let mut dxg = nan_gpu(&s);
        p.avg_backward_into(&dyg, &mut dxg).unwrap();
        assert_same(&dxg, &dxc, 1e-6, 1e-6, &what("avg backward"));
    }
}

#[test]
fn cpu_backward_matches_finite_differences() {
    for (i, (s, p)) in cases().into_iter().enumerate() {
        if s.iter().product::<usize>() > 2000 {
            continue;
        }
        let os = out_shape(s, &p);
        // Distinct values at least ~1e-4 apart, far wider than the step: no window's
        // argmax moves under the perturbation.
        let x = random(s.iter().product(), 300 + i as u64);
        let g = random(os.iter().product(), 400 + i as u64);
        let (x64, g64) = (f64s(&x), f64s(&g));
        let dot = |y: &[f64]| -> f64 { y.iter().zip(&g64).map(|(a, b)| a * b).sum() };
        let xc = Tensor::from_slice(&Device::cpu(), &x, &s).unwrap();
        let gc = Tensor::from_slice(&Device::cpu(), &g, &os).unwrap();
        let what = |op: &str| format!("{op} vs finite differences {s:?} {p:?}");

        let (_, arg) = pool::max_pool2d(&xc, &p).unwrap();
        let mut dx = Tensor::zeros(&Device::cpu(), &s).unwrap();
        p.max_backward_into(&gc, &arg, &mut dx).unwrap();
        let fd = central(&x64, 1e-7, |xv| dot(&pool_f64(xv, s, &p).0));
        assert_close(&dx.to_vec().unwrap(), &fd, 1e-6, 1e-6, &what("max"));

        let mut dx = Tensor::zeros(&Device::cpu(), &s).unwrap();
        p.avg_backward_into(&gc, &mut dx).unwrap();
        let fd = central(&x64, 1e-3, |xv| dot(&pool_f64(xv, s, &p).2));
        assert_close(&dx.to_vec().unwrap(), &fd, 1e-6, 1e-6, &what("avg"));
    }
}

#[test]
fn global_avg_pool_matches_reference_and_finite_differences() {
    for (i, s) in [[1, 1, 1, 1], [2, 3, 5, 7], [3, 17, 4, 4], [128, 64, 7, 7]]
        .into_iter()
        .enumerate()
    {
        let [n, c, h, w] = s;
        let x = random(s.iter().product(), 500 + i as u64);
        let g = random(n * c, 600 + i as u64);
        let mean = |x: &[f64]| -> Vec<f64> {
            x.chunks(h * w)
                .map(|p| p.iter().sum::<f64>() / (h * w) as f64)
                .collect()
        };
        let (xc, xg) = both(&x, &s);
        let (gc, gg) = both(&g, &[n, c]);
        let cpu = pool::global_avg_pool(&xc).unwrap();
        let want = to_f32(&mean(&f64s(&x)));
        assert_close(
            &cpu.to_vec().unwrap(),
            &want,
            1e-7,
            0.0,
            "cpu global_avg_pool",
        );
        let mut out = nan_gpu(&[n, c]);
        pool::global_avg_pool_into(&xg, &mut out).unwrap();
        assert_same(&out, &cpu, 1e-6, 1e-7, &format!("global_avg_pool {s:?}"));

        let mut dxc = Tensor::zeros(&Device::cpu(), &s).unwrap();
        pool::global_avg_pool_backward_into(&gc, &mut dxc).unwrap();
        let mut dxg = nan_gpu(&s);
        pool::global_avg_pool_backward_into(&gg, &mut dxg).unwrap();
        assert_same(
            &dxg,
            &dxc,
            1e-6,
            0.0,
            &format!("global_avg_pool backward {s:?}"),
        );
        if x.len() <= 2000 {
            let g64 = f64s(&g);
            let fd = central(&f64s(&x), 1e-3, |xv| {
                mean(xv).iter().zip(&g64).map(|(a, b)| a * b).sum()
            });
            let what = format!("global_avg_pool backward vs finite differences {s:?}");
            assert_close(&dxc.to_vec().unwrap(), &fd, 1e-6, 1e-7, &what);
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let shape = |r: kiln::Result<()>| matches!(r, Err(Error::Shape { .. }));
    let arg = |r: kiln::Result<()>| matches!(r, Err(Error::InvalidArgument { .. }));
    for dev in [Device::cpu(), gpu()] {
        let z = |s: &[usize]| Tensor::zeros(&dev, s).unwrap();
        let p = Pool2d::new((2, 2));
        let x = z(&[2, 3, 6, 6]);
        let (mut out, mut am) = (z(&[2, 3, 3, 3]), z(&[2, 3, 3, 3]));
        p.max_forward_into(&x, &mut out, &mut am).unwrap();
        assert!(shape(p.max_forward_into(&z(&[3, 6, 6]), &mut out, &mut am)));
        assert!(shape(p.max_forward_into(
            &x,
            &mut z(&[2, 3, 2, 3]),
            &mut am
        )));
        assert!(shape(p.max_forward_into(&x, &mut out, &mut z(&[2, 3, 3]))));
        assert!(shape(p.avg_forward_into(&x, &mut z(&[2, 4, 3, 3]))));
        assert!(shape(p.max_backward_into(&out, &am, &mut z(&[2, 3, 4, 4]))));
        assert!(shape(p.max_backward_into(
            &out,
            &z(&[2, 3, 9]),
            &mut z(&[2, 3, 6, 6])
        )));
        assert!(shape(
            p.avg_backward_into(&z(&[2, 3, 3, 2]), &mut z(&[2, 3, 6, 6]))
        ));
        let big = Pool2d::new((7, 7));
        assert!(shape(big.avg_forward_into(&x, &mut out)));
        let padded = Pool2d::new((3, 3)).with_padding((2, 1));
        assert!(arg(padded.avg_forward_into(&x, &mut out)));
        let still = Pool2d::new((2, 2)).with_stride((0, 1));
        assert!(arg(still.avg_forward_into(&x, &mut out)));
        assert!(shape(pool::global_avg_pool_into(&x, &mut z(&[2, 4]))));
        assert!(shape(pool::global_avg_pool_into(
            &z(&[2, 3]),
            &mut z(&[2, 3])
        )));
        assert!(shape(pool::global_avg_pool_backward_into(
            &z(&[3, 2]),
            &mut z(&[2, 3, 6, 6])
        )));
    }
    // An argmax that indexes past its plane is refused on the CPU.
    let cpu = Device::cpu();
    let dy = Tensor::zeros(&cpu, &[1, 1, 1, 1]).unwrap();
    let bad = Tensor::full(&cpu, &[1, 1, 1, 1], 4.0).unwrap();
    let mut dx = Tensor::zeros(&cpu, &[1, 1, 2, 2]).unwrap();
    assert!(arg(
        Pool2d::new((2, 2)).max_backward_into(&dy, &bad, &mut dx)
    ));
    let x = Tensor::zeros(&cpu, &[1, 1, 2, 2]).unwrap();
    let mut out = Tensor::zeros(&gpu(), &[1, 1]).unwrap();
    assert!(matches!(
        pool::global_avg_pool_into(&x, &mut out),
        Err(Error::DeviceMismatch { .. })
    ));
}

#[test]
fn output_shapes_follow_pytorch() {
    // torch.nn.MaxPool2d(k, stride, padding) on [2, 3, 28, 28] and [2, 3, 7, 7].
    let p = Pool2d::new;
    assert_eq!(
        p((2, 2)).out_shape(&[2, 3, 28, 28]).unwrap(),
        [2, 3, 14, 14]
    );
    assert_eq!(p((2, 2)).out_shape(&[2, 3, 7, 7]).unwrap(), [2, 3, 3, 3]);
    let q = p((3, 3)).with_stride((2, 2)).with_padding((1, 1));
    assert_eq!(q.out_shape(&[2, 3, 28, 28]).unwrap(), [2, 3, 14, 14]);
    assert_eq!(q.out_shape(&[2, 3, 7, 7]).unwrap(), [2, 3, 4, 4]);
    let r = p((3, 2)).with_stride((1, 3));
    assert_eq!(r.out_shape(&[2, 3, 7, 7]).unwrap(), [2, 3, 5, 2]);
}
