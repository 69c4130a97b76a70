//! Timings of the small kernels: the bias column sum, softmax and its backward under both
//! row mappings, GELU, the full sum and argmax over rows.
//!
//! `cargo bench --bench kernels` prints ms per call (the best of five batches after a
//! warm-up call: the minimum discounts other work on a shared machine) and, beside each,
//! a ratio against a baseline timed in the same run: the bias gradient (a column sum)
//! against `bias_add` over the same matrix, the one-workgroup-per-row mapping of softmax
//! and argmax against one invocation per row, GELU against ReLU. Above 1 the kernel is
//! slower than its baseline. Name groups to run only those: `-- bias softmax reduce`.

use kiln::ops::activation::{self as act, Activation, RowSplit};
use kiln::ops::{bias, reduce};
use kiln::{Device, Tensor};
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// Seeded uniform values in [-1, 1), as the tests' `random`.
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Inputs spread over [-4, 4): the interesting range of every activation.
fn wide(n: usize, seed: u64) -> Vec<f32> {
    random(n, seed).into_iter().map(|v| 4.0 * v).collect()
}

/// Best seconds per call of `f` over five batches, after a warm-up call (the minimum
/// discounts other work on a shared machine).
fn time_gpu(dev: &Device, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    dev.synchronize().expect("sync");
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        dev.synchronize().expect("sync");
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

fn upload(dev: &Device, data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(dev, data, shape).expect("upload")
}

/// The bias gradient (sum over rows) against `bias_add` on the same r x c matrix.
fn bench_bias(dev: &Device) {
    println!(
        "{:<18}{:>14}{:>14}{:>10}",
        "bias r x c", "bias_grad ms", "bias_add ms", "grad/add"
    );
    for (r, c) in [
        (60_000, 10),
        (128, 128),
        (1_000, 1_000),
        (100_000, 1),
        (256, 784),
    ] {
        let dy = upload(dev, &random(r * c, 1), &[r, c]);
        let mut db = Tensor::uninit(dev, &[c]).expect("alloc");
        let g = time_gpu(dev, 20, || {
            bias::bias_grad_into(&dy, &mut db).expect("bias_grad")
        });
        let b = upload(dev, &random(c, 2), &[c]);
        let mut out = Tensor::uninit(dev, &[r, c]).expect("alloc");
        let a = time_gpu(dev, 20, || {
            bias::bias_add_into(&dy, &b, &mut out).expect("bias_add")
        });
        println!(
            "{:<18}{:>14.3}{:>14.3}{:>9.2}x",
            format!("{r}x{c}"),
            g * 1e3,
            a * 1e3,
            g / a
        );
    }
}

/// Softmax forward and backward, one workgroup per row against one invocation per row;
/// GELU against ReLU over 2^20 values.
fn bench_softmax(dev: &Device) {
    println!(
        "{:<18}{:>12}{:>12}{:>10}{:>12}{:>12}{:>10}",
        "softmax r x c", "fwd inv ms", "fwd wg ms", "wg/inv", "bwd inv ms", "bwd wg ms", "wg/inv"
    );
    for (r, c) in [
        (60_000, 10),
        (10_000, 33),
        (10_000, 64),
        (128, 784),
        (4_096, 784),
        (100, 5000),
        (2_000, 5000),
    ] {
        let x = upload(dev, &wide(r * c, 1), &[r, c]);
        let mut out = Tensor::uninit(dev, &[r, c]).expect("alloc");
        let mut dx = Tensor::uninit(dev, &[r, c]).expect("alloc");
        let mut row = Vec::new();
        for split in [RowSplit::Invocation, RowSplit::Workgroup] {
            let f = time_gpu(dev, 10, || {
                act::softmax_into_split(&x, &mut out, split).expect("softmax")
            });
            let b = time_gpu(dev, 10, || {
                act::softmax_backward_into_split(&out, &x, &mut dx, split)
                    .expect("softmax backward")
            });
            row.push((f, b));
        }
        let ((fi, bi), (fw, bw)) = (row[0], row[1]);
        println!(
            "{:<18}{:>12.3}{:>12.3}{:>9.2}x{:>12.3}{:>12.3}{:>9.2}x",
            format!("{r}x{c}"),
            fi * 1e3,
            fw * 1e3,
            fw / fi,
            bi * 1e3,
            bw * 1e3,
            bw / bi
        );
    }
    let n = 1 << 20;
    let x = upload(dev, &wide(n, 1), &[n]);
    let mut out = Tensor::uninit(dev, &[n]).expect("alloc");
    let mut run = |a| {
        time_gpu(dev, 10, || {
            act::activation_into(a, &x, &mut out).expect("act")
        })
    };
    let gelu = run(Activation::Gelu);
    let relu = run(Activation::Relu);
    println!(
        "gelu 1M: {:.3} ms, relu 1M: {:.3} ms, gelu/relu {:.2}x",
        gelu * 1e3,
        relu * 1e3,
        gelu / relu
    );
}

/// The sum of 10^6 values, and argmax over rows under both row mappings.
fn bench_reduce(dev: &Device) {
    let n = 1_000_000;
    let x = upload(dev, &random(n, 1), &[n]);
    let mut out = Tensor::uninit(dev, &[1]).expect("alloc");
    let s = time_gpu(dev, 20, || reduce::sum_into(&x, &mut out).expect("sum"));
    println!("sum 1e6: {:.3} ms", s * 1e3);
    println!(
        "{:<18}{:>12}{:>12}{:>10}",
        "argmax r x c", "inv ms", "wg ms", "wg/inv"
    );
    for (r, c) in [(60_000, 10), (10_000, 64), (100, 5000)] {
        let x = upload(dev, &random(r * c, 2), &[r, c]);
        let mut out = Tensor::uninit(dev, &[r]).expect("alloc");
        let mut t = |split| {
            time_gpu(dev, 10, || {
                reduce::argmax_rows_into_split(&x, &mut out, split).expect("argmax")
            })
        };
        let inv = t(RowSplit::Invocation);
        let wg = t(RowSplit::Workgroup);
        println!(
            "{:<18}{:>12.3}{:>12.3}{:>9.2}x",
            format!("{r}x{c}"),
            inv * 1e3,
            wg * 1e3,
            wg / inv
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other word names a group.
    let groups: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let known = ["bias", "softmax", "reduce"];
    if let Some(g) = groups.iter().find(|g| !known.contains(&g.as_str())) {
        eprintln!("kernels: unknown group '{g}' (bias, softmax, reduce)");
        std::process::exit(2);
    }
    let wanted = |g: &str| groups.is_empty() || groups.iter().any(|w| w == g);
    let dev = Device::gpu().expect("no GPU adapter");
    println!("adapter: {}", dev.name());
    if wanted("bias") {
        bench_bias(&dev);
    }
    if wanted("softmax") {
        bench_softmax(&dev);
    }
    if wanted("reduce") {
        bench_reduce(&dev);
    }
}
