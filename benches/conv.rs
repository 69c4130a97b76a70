//! Conv2d throughput per kernel on the MNIST CNN's layers at batch 128, with the
//! one-output-per-invocation kernels as the baseline.
//!
//! `cargo bench --bench conv` prints ms and GFLOP/s of the forward pass, the input and
//! weight gradients, and their total. FLOPs count every tap (2 * n * out_c * oh * ow *
//! in_c * kh * kw per pass), padding included.
//!
//! `-- --json` (for benches/compare.sh) times only the adapter's own kernel (what training
//! uses) and prints one JSON object per layer and pass: `forward`, `backward_input`,
//! `backward_weight` (the median of 5 samples each) and `forward_backward`, the sum of the
//! three medians, counted as three passes.

use kiln::ops::conv::{Conv2d, ConvKernel};
use kiln::{Device, Tensor};
use std::time::Instant;

/// Seconds per call in `count` samples: warm up once, then time enough repeats for ~0.5 s
/// (that timing is the first sample), then `count - 1` more samples of as many repeats.
fn samples(device: &Device, count: usize, mut f: impl FnMut()) -> Vec<f64> {
    f();
    device.synchronize().expect("sync");
    let mut timed = |reps: usize| {
        let start = Instant::now();
        for _ in 0..reps {
            f();
        }
        device.synchronize().expect("sync");
        start.elapsed().as_secs_f64() / reps as f64
    };
    let mut reps = 1;
    loop {
        let per_call = timed(reps);
        if per_call * reps as f64 > 0.5 || reps >= 256 {
            let mut out = vec![per_call];
            out.extend((1..count).map(|_| timed(reps)));
            return out;
        }
        reps *= if per_call * (reps as f64) < 0.05 {
            8
        } else {
            2
        };
    }
}

/// The middle value (the upper of the two middle ones for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One layer's tensors: inputs, and outputs that every pass writes into.
struct Bufs {
    x: Tensor,
    w: Tensor,
    b: Tensor,
    dy: Tensor,
    y: Tensor,
    dx: Tensor,
    dw: Tensor,
}

/// `count` per-call samples (seconds) of the forward pass, the input gradient and the
/// weight gradient, in that order.
fn passes(device: &Device, c: Conv2d, t: &mut Bufs, count: usize) -> [Vec<f64>; 3] {
    let Bufs {
        x,
        w,
        b,
        dy,
        y,
        dx,
        dw,
    } = t;
    [
        samples(device, count, || {
            c.forward_into(x, w, Some(b), y).expect("forward")
        }),
        samples(device, count, || {
            c.backward_input_into(dy, w, dx).expect("dx")
        }),
        samples(device, count, || {
            c.backward_weight_into(x, dy, dw).expect("dw")
        }),
    ]
}

fn main() {
    let device = Device::gpu().expect("no GPU adapter");
    let json = std::env::args().any(|a| a == "--json");
    let layers = [
        ("conv1", "conv1 1->32 3x3 same 28x28", [128, 1, 28, 28], 32),
        (
            "conv2",
            "conv2 32->64 3x3 same 14x14",
            [128, 32, 14, 14],
            64,
        ),
    ];
    let kernels = [ConvKernel::Naive, ConvKernel::Direct, ConvKernel::Im2col];
    let auto = device
        .gpu_context()
        .map(|ctx| Conv2d::same((3, 3)).expect("odd kernel").choose(ctx));
    if !json {
        println!("adapter: {}", device.name());
        println!("auto kernel on this adapter: {auto:?}");
        println!(
            "{:<30}{:>8}{:>22}{:>22}{:>22}{:>22}",
            "layer", "kernel", "forward", "backward input", "backward weight", "total"
        );
    }
    for (key, name, xs, oc) in layers {
        let conv = Conv2d::same((3, 3)).expect("odd kernel");
        let ws = [oc, xs[1], 3, 3];
        let ys = conv.out_shape(&xs, &ws).expect("shape");
        let filled = |shape: &[usize], v: f32| Tensor::full(&device, shape, v).expect("alloc");
        let mut bufs = Bufs {
            x: filled(&xs, 0.5),
            w: filled(&ws, 0.25),
            b: filled(&[oc], 0.1),
            dy: filled(&ys, 0.125),
            y: filled(&ys, 0.0),
            dx: filled(&xs, 0.0),
            dw: filled(&ws, 0.0),
        };
        let flops = 2.0 * (ys.iter().product::<usize>() * xs[1] * 9) as f64;
        if json {
            let [f, bi, bw] = passes(&device, conv, &mut bufs, 5).map(median);
            for (pass, secs, count) in [
                ("forward", f, 1.0),
                ("backward_input", bi, 1.0),
                ("backward_weight", bw, 1.0),
                ("forward_backward", f + bi + bw, 3.0),
            ] {
                println!(
                    "{{\"lib\":\"kiln\",\"backend\":\"wgpu\",\"bench\":\"conv\",\"layer\":\"{key}\",\"pass\":\"{pass}\",\"batch\":{},\"in_c\":{},\"out_c\":{oc},\"hw\":{},\"kernel\":\"{}\",\"ms\":{:.3},\"gflops\":{:.3}}}",
                    xs[0],
                    xs[1],
                    xs[2],
                    auto.map_or("none".to_string(), |k| format!("{k:?}")),
                    secs * 1e3,
                    count * flops / secs / 1e9
                );
            }
            continue;
        }
        let mut naive_total = 0.0;
        for kernel in kernels {
            let best = |v: Vec<f64>| v.into_iter().fold(f64::INFINITY, f64::min);
            let [f, bi, bw] = passes(&device, conv.with_kernel(kernel), &mut bufs, 3).map(best);
            let total = f + bi + bw;
            if kernel == ConvKernel::Naive {
                naive_total = total;
            }
            let cell = |s: f64, passes: f64| {
                format!("{:.2} ms {:.1} GF/s", s * 1e3, passes * flops / s / 1e9)
            };
            println!(
                "{name:<30}{:>8}{:>22}{:>22}{:>22}{:>22}  {:.1}x naive",
                format!("{kernel:?}"),
                cell(f, 1.0),
                cell(bi, 1.0),
                cell(bw, 1.0),
                cell(total, 3.0),
                naive_total / total
            );
        }
    }
}
