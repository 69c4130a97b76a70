//! Conv2d throughput per kernel on the MNIST CNN's layers at batch 128, with the
//! one-output-per-invocation kernels as the baseline.
//!
//! `cargo bench --bench conv` prints ms and GFLOP/s of the forward pass, the input and
//! weight gradients, and their total. FLOPs count every tap (2 * n * out_c * oh * ow *
//! in_c * kh * kw per pass), padding included.

use kiln::ops::conv::{Conv2d, ConvKernel};
use kiln::{Device, Tensor};
use std::time::Instant;

/// Seconds per call: warm up once, then time enough repeats for ~0.5 s, best of three.
fn time(device: &Device, mut f: impl FnMut()) -> f64 {
    f();
    device.synchronize().expect("sync");
    let mut reps = 1;
    loop {
        let start = Instant::now();
        for _ in 0..reps {
            f();
        }
        device.synchronize().expect("sync");
        let secs = start.elapsed().as_secs_f64();
        if secs > 0.5 || reps >= 256 {
            let mut best = secs / reps as f64;
            for _ in 0..2 {
                let start = Instant::now();
                for _ in 0..reps {
                    f();
                }
                device.synchronize().expect("sync");
                best = best.min(start.elapsed().as_secs_f64() / reps as f64);
            }
            return best;
        }
        reps *= if secs < 0.05 { 8 } else { 2 };
    }
}

fn main() {
    let device = Device::gpu().expect("no GPU adapter");
    println!("adapter: {}", device.name());
    let layers = [
        ("conv1 1->32 3x3 same 28x28", [128, 1, 28, 28], 32),
        ("conv2 32->64 3x3 same 14x14", [128, 32, 14, 14], 64),
    ];
    let kernels = [ConvKernel::Naive, ConvKernel::Direct, ConvKernel::Im2col];
    let auto = device
        .gpu_context()
        .map(|ctx| Conv2d::same((3, 3)).expect("odd kernel").choose(ctx));
    println!("auto kernel on this adapter: {auto:?}");
    println!(
        "{:<30}{:>8}{:>22}{:>22}{:>22}{:>22}",
        "layer", "kernel", "forward", "backward input", "backward weight", "total"
    );
    for (name, xs, oc) in layers {
        let conv = Conv2d::same((3, 3)).expect("odd kernel");
        let ws = [oc, xs[1], 3, 3];
        let ys = conv.out_shape(&xs, &ws).expect("shape");
        let filled = |shape: &[usize], v: f32| Tensor::full(&device, shape, v).expect("alloc");
        let (x, w, b, dy) = (
            filled(&xs, 0.5),
            filled(&ws, 0.25),
            filled(&[oc], 0.1),
            filled(&ys, 0.125),
        );
        let (mut y, mut dx, mut dw) = (filled(&ys, 0.0), filled(&xs, 0.0), filled(&ws, 0.0));
        let flops = 2.0 * (ys.iter().product::<usize>() * xs[1] * 9) as f64;
        let mut naive_total = 0.0;
        for kernel in kernels {
            let c = conv.with_kernel(kernel);
            let f = time(&device, || {
                c.forward_into(&x, &w, Some(&b), &mut y).expect("forward")
            });
            let bi = time(&device, || {
                c.backward_input_into(&dy, &w, &mut dx).expect("dx")
            });
            let bw = time(&device, || {
                c.backward_weight_into(&x, &dy, &mut dw).expect("dw")
            });
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
