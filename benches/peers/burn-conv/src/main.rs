//! Peer benchmark for kiln's `benches/conv.rs`: Burn 0.22's `conv2d` on the MNIST CNN's two
//! convolution layers at batch 128 (NCHW, 3x3, stride 1, 'same' padding), on Burn's wgpu
//! backend (WGSL through naga; lavapipe on a machine without a GPU).
//!
//! Usage: `burn-conv [wgpu|flex] [--samples 5]`
//!
//! Two passes per layer:
//! * `forward`: `conv2d(x, w, Some(b))` on the plain device.
//! * `forward_backward`: on the autodiff device, `y = conv2d(x, w, Some(b))`, then
//!   `y.sum().backward()` and the gradients of `x` and `w` (the bias needs none, as in kiln's
//!   bench, which times forward, input gradient and weight gradient). The seed gradient of the
//!   sum (ones) and the sum itself are part of the time.
//!
//! FLOPs count every tap, padding included, as kiln does: `2 n out_c oh ow in_c kh kw` per
//! pass, so forward+backward is three passes. Timing: three warm-up calls (Burn autotunes
//! its kernels on the first ones), then `--samples` samples of `k` back-to-back calls (`k`
//! chosen so that a sample lasts about 0.3 s, at most 32 to bound the memory they hold),
//! each ended by `device.sync()` and a one-element read-back; the results of a sample are
//! kept alive until then, so nothing is skipped. The median per-call time is printed as one
//! JSON object per line.

use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Distribution;
use std::time::Instant;

const BATCH: usize = 128;

/// One layer of the MNIST CNN: input channels, output channels, height = width.
struct Layer {
    name: &'static str,
    in_c: usize,
    out_c: usize,
    hw: usize,
}

const LAYERS: [Layer; 2] = [
    Layer {
        name: "conv1",
        in_c: 1,
        out_c: 32,
        hw: 28,
    },
    Layer {
        name: "conv2",
        in_c: 32,
        out_c: 64,
        hw: 14,
    },
];

fn options() -> ConvOptions<2> {
    ConvOptions::new([1, 1], [1, 1], [1, 1], 1)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn host(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 data")
}

/// Waits for the device, then reads one element of `t` back (belt and braces: cubecl may
/// hand back bytes that are only read on first access).
fn settle(device: &Device, t: &Tensor<4>) {
    device.sync().expect("sync");
    let one = host(t.clone().slice([0..1, 0..1, 0..1, 0..1]));
    assert!(one[0].is_finite(), "non-finite result");
}

struct Timing {
    ms: f64,
    samples_ms: Vec<f64>,
    iters: usize,
    warmup_s: f64,
}

/// Times `f` (which returns the tensors it produced, kept alive until the sample's sync).
fn measure(device: &Device, samples: usize, mut f: impl FnMut() -> Vec<Tensor<4>>) -> Timing {
    let t0 = Instant::now();
    for _ in 0..3 {
        let out = f();
        settle(device, &out[0]);
    }
    let warmup_s = t0.elapsed().as_secs_f64();
    let t = Instant::now();
    let out = f();
    settle(device, &out[0]);
    drop(out);
    let one = t.elapsed().as_secs_f64().max(1e-6);
    let iters = ((0.3 / one).ceil() as usize).clamp(2, 32);
    let mut samples_ms = Vec::with_capacity(samples);
    for _ in 0..samples {
        let mut keep = Vec::with_capacity(iters);
        device.sync().expect("sync");
        let t = Instant::now();
        for _ in 0..iters {
            keep.push(f());
        }
        settle(device, &keep[iters - 1][0]);
        samples_ms.push(t.elapsed().as_secs_f64() * 1e3 / iters as f64);
        drop(keep);
    }
    Timing {
        ms: median(&samples_ms),
        samples_ms,
        iters,
        warmup_s,
    }
}

/// Spot checks against the host: two forward outputs (an interior one and a padded corner),
/// and, with the sum's seed of ones, dw[0,0,1,1] = sum of x over channel 0 and
/// dx[0,0,h/2,w/2] = sum of w over input channel 0.
fn close(got: f32, want: f64) -> bool {
    (got as f64 - want).abs() <= 1e-3 * (1.0 + want.abs())
}

fn check_forward(l: &Layer, x: &[f32], w: &[f32], b: &[f32], y: &[f32]) -> bool {
    let (c, hw) = (l.in_c, l.hw);
    let at = |i: usize, j: usize| {
        let mut s = b[0] as f64;
        for ci in 0..c {
            for kh in 0..3 {
                for kw in 0..3 {
                    let (r, q) = (i + kh, j + kw); // padded coordinates
                    if r >= 1 && q >= 1 && r <= hw && q <= hw {
                        s += x[ci * hw * hw + (r - 1) * hw + (q - 1)] as f64
                            * w[ci * 9 + kh * 3 + kw] as f64;
                    }
                }
            }
        }
        s
    };
    let mid = hw / 2;
    close(y[mid * hw + mid], at(mid, mid)) && close(y[0], at(0, 0))
}

fn check_grads(l: &Layer, x: &[f32], w: &[f32], dx: &[f32], dw: &[f32]) -> bool {
    let plane = l.hw * l.hw;
    let dw_want: f64 = (0..BATCH)
        .flat_map(|n| x[n * l.in_c * plane..][..plane].iter())
        .map(|&v| v as f64)
        .sum();
    let dx_want: f64 = (0..l.out_c)
        .flat_map(|o| w[o * l.in_c * 9..][..9].iter())
        .map(|&v| v as f64)
        .sum();
    let mid = l.hw / 2;
    close(dw[4], dw_want) && close(dx[mid * l.hw + mid], dx_want)
}

fn print(backend: &str, l: &Layer, pass: &str, passes: f64, t: &Timing, ok: bool) {
    let flops = 2.0 * (BATCH * l.out_c * l.hw * l.hw * l.in_c * 9) as f64;
    let gflops = passes * flops / (t.ms * 1e-3) / 1e9;
    let samples: Vec<String> = t.samples_ms.iter().map(|s| format!("{s:.3}")).collect();
    println!(
        "{{\"lib\":\"burn\",\"backend\":\"{backend}\",\"bench\":\"conv\",\"layer\":\"{}\",\"pass\":\"{pass}\",\"batch\":{BATCH},\"in_c\":{},\"out_c\":{},\"hw\":{},\"kernel\":\"3x3 same\",\"ms\":{:.3},\"gflops\":{gflops:.3},\"samples_ms\":[{}],\"iters_per_sample\":{},\"warmup_s\":{:.3},\"check_ok\":{ok}}}",
        l.name, l.in_c, l.out_c, l.hw, t.ms, samples.join(","), t.iters, t.warmup_s
    );
}

fn bench_layer(backend: &str, device: &Device, l: &Layer, samples: usize) {
    let dist = Distribution::Uniform(-1.0, 1.0);
    let xs = [BATCH, l.in_c, l.hw, l.hw];
    let ws = [l.out_c, l.in_c, 3, 3];
    let x = Tensor::<4>::random(xs, dist, device);
    let w = Tensor::<4>::random(ws, dist, device);
    let b = Tensor::<1>::random([l.out_c], dist, device);
    let (xh, wh) = (host(x.clone()), host(w.clone()));
    let bh: Vec<f32> = b.clone().into_data().try_to_vec().expect("f32 data");

    let fwd = || vec![conv2d(x.clone(), w.clone(), Some(b.clone()), options())];
    let y = host(fwd().remove(0));
    let ok = check_forward(l, &xh, &wh, &bh, &y);
    print(
        backend,
        l,
        "forward",
        1.0,
        &measure(device, samples, fwd),
        ok,
    );

    // The same values on the autodiff device; x and w are leaves that want gradients.
    let ad = device.clone().autodiff();
    let xa = Tensor::<4>::from_data(TensorData::new(xh.clone(), xs), &ad).require_grad();
    let wa = Tensor::<4>::from_data(TensorData::new(wh.clone(), ws), &ad).require_grad();
    let ba = Tensor::<1>::from_data(TensorData::new(bh, [l.out_c]), &ad);
    let step = || {
        let y = conv2d(xa.clone(), wa.clone(), Some(ba.clone()), options());
        let grads = y.sum().backward();
        let dx = xa.grad(&grads).expect("input gradient");
        let dw = wa.grad(&grads).expect("weight gradient");
        vec![dx, dw]
    };
    let mut g = step();
    let (dw, dx) = (host(g.remove(1)), host(g.remove(0)));
    let ok = check_grads(l, &xh, &wh, &dx, &dw);
    print(
        backend,
        l,
        "forward_backward",
        3.0,
        &measure(&ad, samples, step),
        ok,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut backend = "wgpu".to_string();
    let mut samples = 5usize;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--samples" => {
                samples = args
                    .get(i + 1)
                    .and_then(|s| s.parse().ok())
                    .expect("--samples N");
                i += 1;
            }
            "wgpu" | "flex" => backend = args[i].clone(),
            other => panic!("unknown argument {other}; usage: burn-conv [wgpu|flex] [--samples N]"),
        }
        i += 1;
    }
    assert!(samples > 0, "--samples must be at least 1");
    let (device, label) = match backend.as_str() {
        "flex" => (Device::flex(), "flex"),
        _ => (Device::wgpu(DeviceKind::DefaultDevice), "wgpu-wgsl"),
    };
    let t = Instant::now();
    let probe = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
    let s: f32 = probe.sum().into_scalar();
    assert_eq!(s, 6.0, "device probe");
    eprintln!(
        "# burn {label}: device {device:?} ready in {:.3}s",
        t.elapsed().as_secs_f64()
    );
    for l in &LAYERS {
        bench_layer(label, &device, l, samples);
    }
}
