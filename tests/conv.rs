mod common;
use common::*;
use kiln::ops::conv::{Conv2d, ConvKernel};
use kiln::{Device, Error, Tensor};

/// One test convolution: input [n, c, h, w], weights [oc, c, kh, kw] and the descriptor.
#[derive(Clone, Copy, Debug)]
struct Case {
    x: [usize; 4],
    oc: usize,
    k: (usize, usize),
    conv: Conv2d,
}

fn case(x: [usize; 4], oc: usize, k: (usize, usize), conv: Conv2d) -> Case {
    Case { x, oc, k, conv }
}

/// Odd sizes, stride 2 and 3, padding, 1x1, 5x5 and uneven kernels, dilation 2, batch 1,
/// 1, 3 and 17 channels, and batches that split unevenly into weight-gradient chunks.
fn cases() -> Vec<Case> {
    let same = |k| Conv2d::same(k).unwrap();
    vec![
        case([1, 1, 5, 5], 1, (3, 3), Conv2d::valid()),
        case([2, 3, 7, 6], 5, (3, 3), same((3, 3))),
        case(
            [3, 17, 9, 11],
            17,
            (5, 5),
            Conv2d::valid().with_stride((2, 2)).with_padding((2, 2)),
        ),
        case([2, 3, 8, 9], 4, (1, 1), Conv2d::valid().with_stride((2, 2))),
        case(
            [1, 2, 10, 9],
            9,
            (3, 3),
            Conv2d::same_dilated((3, 3), (2, 2)).unwrap(),
        ),
        case(
            [2, 4, 6, 7],
            3,
            (2, 3),
            Conv2d::valid()
                .with_stride((2, 1))
                .with_padding((1, 0))
                .with_dilation((1, 2)),
        ),
        case(
            [1, 3, 4, 4],
            8,
            (5, 5),
            Conv2d::valid().with_stride((3, 3)).with_padding((2, 2)),
        ),
        case([17, 1, 12, 12], 32, (3, 3), same((3, 3))),
        case([5, 32, 7, 7], 19, (3, 3), same((3, 3))),
    ]
}

impl Case {
    fn w_shape(&self) -> [usize; 4] {
        [self.oc, self.x[1], self.k.0, self.k.1]
    }

    fn y_shape(&self) -> [usize; 4] {
        self.conv.out_shape(&self.x, &self.w_shape()).unwrap()
    }

    /// The test's own f64 forward: y = conv(x, w) + b, written from the definition.
    fn forward_f64(&self, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
        let [n, c, h, wd] = self.x;
        let [_, oc, oh, ow] = self.y_shape();
        let (kh, kw) = self.k;
        let Conv2d {
            stride,
            padding,
            dilation,
            ..
        } = self.conv;
        let mut y = vec![0.0; n * oc * oh * ow];
        for i in 0..n {
            for o in 0..oc {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = b[o];
                        for ch in 0..c {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy =
                                        (oy * stride.0 + ky * dilation.0) as i64 - padding.0 as i64;
                                    let ix =
                                        (ox * stride.1 + kx * dilation.1) as i64 - padding.1 as i64;
                                    if iy < 0 || ix < 0 || iy >= h as i64 || ix >= wd as i64 {
                                        continue;
                                    }
                                    let xv = x[((i * c + ch) * h + iy as usize) * wd + ix as usize];
                                    s += xv * w[((o * c + ch) * kh + ky) * kw + kx];
                                }
                            }
                        }
                        y[((i * oc + o) * oh + oy) * ow + ox] = s;
                    }
                }
            }
        }
        y
    }
}

fn cpu(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(&Device::cpu(), data, shape).unwrap()
}

/// f32 sums of `terms` products of values in [-1, 1] against an f64 reference.
fn tol(terms: usize) -> (f32, f32) {
    (1e-4, 2e-6 * (terms as f32).sqrt().max(1.0))
}

const KERNELS: [ConvKernel; 3] = [ConvKernel::Naive, ConvKernel::Direct, ConvKernel::Im2col];

#[test]
fn cpu_forward_matches_the_definition() {
    for (i, t) in cases().into_iter().enumerate() {
        let x = random(t.x.iter().product(), i as u64);
        let w = random(t.w_shape().iter().product(), 100 + i as u64);
        let b = random(t.oc, 200 + i as u64);
        let want = t.forward_f64(&f64s(&x), &f64s(&w), &f64s(&b));
        let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        let got = t
            .conv
            .forward(
                &cpu(&x, &t.x),
                &cpu(&w, &t.w_shape()),
                Some(&cpu(&b, &[t.oc])),
            )
            .unwrap();
        assert_eq!(got.shape(), t.y_shape());
        // Both sum in f64; only the order differs.
        assert_close(&got.to_vec().unwrap(), &want, 1e-6, 1e-6, &format!("{t:?}"));
    }
}

#[test]
fn gpu_kernels_match_reference() {
    for (i, t) in cases().into_iter().enumerate() {
        let seed = 10 * i as u64;
        let (ys, ws) = (t.y_shape(), t.w_shape());
        let x = random(t.x.iter().product(), seed);
        let w = random(ws.iter().product(), seed + 1);
        let b = random(t.oc, seed + 2);
        let dy = random(ys.iter().product(), seed + 3);
        let (xc, xg) = both(&x, &t.x);
        let (wc, wg) = both(&w, &ws);
        let (bc, bg) = both(&b, &[t.oc]);
        let (dyc, dyg) = both(&dy, &ys);
        let c = t.conv;
        let y_ref = c.forward(&xc, &wc, Some(&bc)).unwrap();
        let y_nobias = c.forward(&xc, &wc, None).unwrap();
        let mut dx_ref = Tensor::zeros(&Device::cpu(), &t.x).unwrap();
        c.backward_input_into(&dyc, &wc, &mut dx_ref).unwrap();
        let mut dw_ref = Tensor::zeros(&Device::cpu(), &ws).unwrap();
        c.backward_weight_into(&xc, &dyc, &mut dw_ref).unwrap();
        let mut db_ref = Tensor::zeros(&Device::cpu(), &[t.oc]).unwrap();
        c.backward_bias_into(&dyc, &mut db_ref).unwrap();

        let taps = t.x[1] * t.k.0 * t.k.1;
        let pixels = t.x[0] * ys[2] * ys[3];
        for kernel in KERNELS {
            let c = c.with_kernel(kernel);
            let what = |op: &str| format!("{op} {kernel:?} {t:?}");
            let (rtol, atol) = tol(taps);
            let mut y = nan_gpu(&ys);
            c.forward_into(&xg, &wg, Some(&bg), &mut y).unwrap();
            assert_same(&y, &y_ref, rtol, atol, &what("forward"));
            let mut y = nan_gpu(&ys);
            c.forward_into(&xg, &wg, None, &mut y).unwrap();
            assert_same(&y, &y_nobias, rtol, atol, &what("forward without bias"));

            let (rtol, atol) = tol(t.oc * t.k.0 * t.k.1);
            let mut dx = nan_gpu(&t.x);
            c.backward_input_into(&dyg, &wg, &mut dx).unwrap();
            assert_same(&dx, &dx_ref, rtol, atol, &what("backward_input"));

            let (rtol, atol) = tol(pixels);
            let mut dw = nan_gpu(&ws);
            c.backward_weight_into(&xg, &dyg, &mut dw).unwrap();
            assert_same(&dw, &dw_ref, rtol, atol, &what("backward_weight"));

            let mut db = nan_gpu(&[t.oc]);
            c.backward_bias_into(&dyg, &mut db).unwrap();
            assert_same(&db, &db_ref, rtol, atol, &what("backward_bias"));
        }
    }
}

#[test]
fn cpu_backward_matches_finite_differences() {
    for (i, t) in cases().into_iter().enumerate() {
        if t.x.iter().product::<usize>() > 2000 {
            continue;
        }
        let seed = 300 + 10 * i as u64;
        let (ys, ws) = (t.y_shape(), t.w_shape());
        let x = random(t.x.iter().product(), seed);
        let w = random(ws.iter().product(), seed + 1);
        let b = random(t.oc, seed + 2);
        let g = random(ys.iter().product(), seed + 3);
        let (x64, w64, b64, g64) = (f64s(&x), f64s(&w), f64s(&b), f64s(&g));
        let dot = |y: Vec<f64>| -> f64 { y.iter().zip(&g64).map(|(a, b)| a * b).sum() };

        let c = t.conv;
        let gt = cpu(&g, &ys);
        let mut dx = Tensor::zeros(&Device::cpu(), &t.x).unwrap();
        c.backward_input_into(&gt, &cpu(&w, &ws), &mut dx).unwrap();
        let fd = central(&x64, 1e-3, |xv| dot(t.forward_f64(xv, &w64, &b64)));
        // The loss is linear, so the differences are exact but for f64 rounding.
        let what = |op: &str| format!("{op} vs finite differences {t:?}");
        assert_close(&dx.to_vec().unwrap(), &fd, 1e-5, 1e-6, &what("dx"));

        let mut dw = Tensor::zeros(&Device::cpu(), &ws).unwrap();
        c.backward_weight_into(&cpu(&x, &t.x), &gt, &mut dw)
            .unwrap();
        let fd = central(&w64, 1e-3, |wv| dot(t.forward_f64(&x64, wv, &b64)));
        assert_close(&dw.to_vec().unwrap(), &fd, 1e-5, 1e-6, &what("dw"));

        let mut db = Tensor::zeros(&Device::cpu(), &[t.oc]).unwrap();
        c.backward_bias_into(&gt, &mut db).unwrap();
        let fd = central(&b64, 1e-3, |bv| dot(t.forward_f64(&x64, &w64, bv)));
        assert_close(&db.to_vec().unwrap(), &fd, 1e-5, 1e-6, &what("db"));
    }
}

#[test]
fn bad_shapes_are_errors() {
    let shape = |r: kiln::Result<()>| matches!(r, Err(Error::Shape { .. }));
    let arg = |r: kiln::Result<()>| matches!(r, Err(Error::InvalidArgument { .. }));
    for dev in [Device::cpu(), gpu()] {
        let z = |s: &[usize]| Tensor::zeros(&dev, s).unwrap();
        let c = Conv2d::same((3, 3)).unwrap();
        let (x, w, b) = (z(&[2, 3, 5, 5]), z(&[4, 3, 3, 3]), z(&[4]));
        let mut y = z(&[2, 4, 5, 5]);
        c.forward_into(&x, &w, Some(&b), &mut y).unwrap();
        assert!(shape(c.forward_into(&z(&[3, 5, 5]), &w, None, &mut y)));
        assert!(shape(c.forward_into(&x, &z(&[4, 2, 3, 3]), None, &mut y)));
        assert!(shape(c.forward_into(&x, &z(&[4, 3, 3]), None, &mut y)));
        assert!(shape(c.forward_into(&x, &w, Some(&z(&[3])), &mut y)));
        assert!(shape(c.forward_into(&x, &w, None, &mut z(&[2, 4, 3, 3]))));
        assert!(shape(Conv2d::valid().forward_into(
            &z(&[1, 3, 2, 2]),
            &w,
            None,
            &mut y
        )));
        assert!(arg(c
            .with_stride((0, 1))
            .forward_into(&x, &w, None, &mut y)));
        assert!(arg(c
            .with_dilation((1, 0))
            .forward_into(&x, &w, None, &mut y)));
        assert!(shape(c.backward_input_into(&y, &w, &mut z(&[2, 3, 5, 4]))));
        assert!(shape(c.backward_input_into(
            &z(&[2, 5, 5, 5]),
            &w,
            &mut z(&[2, 3, 5, 5])
        )));
        assert!(shape(c.backward_weight_into(&x, &y, &mut z(&[4, 3, 3, 2]))));
        assert!(shape(c.backward_weight_into(
            &x,
            &z(&[1, 4, 5, 5]),
            &mut z(&[4, 3, 3, 3])
        )));
        assert!(shape(c.backward_bias_into(&y, &mut z(&[5]))));
        assert!(shape(c.backward_bias_into(&z(&[4, 5]), &mut z(&[5]))));
    }
    assert!(matches!(
        Conv2d::same((2, 3)),
        Err(Error::InvalidArgument { .. })
    ));
    let x = Tensor::zeros(&Device::cpu(), &[1, 1, 3, 3]).unwrap();
    let w = Tensor::zeros(&gpu(), &[1, 1, 3, 3]).unwrap();
    assert!(matches!(
        Conv2d::valid().forward(&x, &w, None),
        Err(Error::DeviceMismatch { .. })
    ));
}

#[test]
fn output_shapes_follow_pytorch() {
    // torch.nn.Conv2d(3, 8, k, stride, padding, dilation) on [2, 3, 28, 28].
    let x = [2, 3, 28, 28];
    let w = |k: usize| [8, 3, k, k];
    let c = Conv2d::valid();
    assert_eq!(c.out_shape(&x, &w(3)).unwrap(), [2, 8, 26, 26]);
    let c = Conv2d::same((5, 5)).unwrap();
    assert_eq!(c.out_shape(&x, &w(5)).unwrap(), [2, 8, 28, 28]);
    let c = Conv2d::valid().with_stride((2, 2)).with_padding((1, 1));
    assert_eq!(c.out_shape(&x, &w(3)).unwrap(), [2, 8, 14, 14]);
    let c = Conv2d::valid().with_dilation((2, 2));
    assert_eq!(c.out_shape(&x, &w(3)).unwrap(), [2, 8, 24, 24]);
    let c = Conv2d::same_dilated((3, 3), (3, 3)).unwrap();
    assert_eq!(c.out_shape(&x, &w(3)).unwrap(), [2, 8, 28, 28]);
    let c = Conv2d::valid().with_stride((3, 2)).with_padding((0, 2));
    assert_eq!(c.out_shape(&x, &w(4)).unwrap(), [2, 8, 9, 15]);
}

#[test]
fn grids_fold_past_65535_workgroups() {
    // 4097^2 positions need more than 65535 workgroups of 64 (naive) or 256 (direct, 4 per lane).
    let s = [1, 1, 4097, 4097];
    let x = random(s.iter().product(), 7);
    let (xc, xg) = both(&x, &s);
    let (wc, wg) = both(&[0.75], &[1, 1, 1, 1]);
    let c = Conv2d::valid();
    let y_ref = c.forward(&xc, &wc, None).unwrap();
    let mut dx_ref = Tensor::zeros(&Device::cpu(), &s).unwrap();
    c.backward_input_into(&xc, &wc, &mut dx_ref).unwrap();
    for kernel in [ConvKernel::Naive, ConvKernel::Direct] {
        let c = c.with_kernel(kernel);
        let mut y = nan_gpu(&s);
        c.forward_into(&xg, &wg, None, &mut y).unwrap();
        assert_same(&y, &y_ref, 1e-6, 0.0, &format!("forward {kernel:?}"));
        let mut dx = nan_gpu(&s);
        c.backward_input_into(&xg, &wg, &mut dx).unwrap();
        assert_same(
            &dx,
            &dx_ref,
            1e-6,
            0.0,
            &format!("backward_input {kernel:?}"),
        );
    }
    // The matmul behind im2col does not fold its grid: too many rows are a typed error.
    let mut y = nan_gpu(&s);
    let r = c
        .with_kernel(ConvKernel::Im2col)
        .forward_into(&xg, &wg, None, &mut y);
    assert!(matches!(r, Err(Error::OverLimit { .. })), "{r:?}");
}
