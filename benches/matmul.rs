//! Matmul throughput per kernel, with the one-output-per-invocation kernel as the baseline.
//!
//! `cargo bench --bench matmul` prints GFLOP/s per kernel for square sizes, the MNIST layer
//! shapes and batch-32 training shapes, then the automatic product (autotuned on hardware
//! adapters, and on CPU ones under `KILN_AUTOTUNE=1`), the kernel it ran and its first
//! call's time, tuning included (`-- --quick` leaves out
//! N = 2048; `-- --json` prints the square sizes for compare.sh).
//!
//! `-- --sizes 1024,2048,4096` times only the automatic product at those square sizes and
//! prints, per size, the kernel it ran, ms per product, GFLOP/s and the first call's time
//! (tuning included, from a fresh autotune cache); add `--json` for one JSON object per
//! size (benches/gpu-check.sh reads it).

use kiln::ops::matmul::{Dims, Gemm, MatmulKernel};
use kiln::{Device, Tensor};
use std::time::Instant;

/// Seconds per product: warm up once, then time enough repeats for ~0.5 s.
fn time(device: &Device, g: Gemm, a: &Tensor, b: &Tensor, out: &mut Tensor) -> f64 {
    g.run_into(a, b, None, out).expect("matmul");
    device.synchronize().expect("sync");
    let mut reps = 1;
    loop {
        let start = Instant::now();
        for _ in 0..reps {
            g.run_into(a, b, None, out).expect("matmul");
        }
        device.synchronize().expect("sync");
        let secs = start.elapsed().as_secs_f64();
        if secs > 0.5 || reps >= 256 {
            return secs / reps as f64;
        }
        reps *= if secs < 0.05 { 8 } else { 2 };
    }
}

/// The square sizes after `--sizes` (comma-separated), if given.
fn sizes_arg() -> Option<Vec<usize>> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--sizes")?;
    let list = args
        .get(i + 1)
        .expect("--sizes needs a list such as 1024,2048,4096");
    Some(
        list.split(',')
            .map(|n| match n.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => panic!("--sizes: '{n}' is not a positive size"),
            })
            .collect(),
    )
}

/// `--sizes`: the automatic product (what training runs) at each square size.
fn run_sizes(device: &Device, sizes: &[usize], json: bool) {
    if !json {
        println!("adapter: {}", device.name());
        println!(
            "{:>6}{:>11}{:>12}{:>12}{:>10}",
            "N", "kernel", "ms", "GFLOP/s", "1st ms"
        );
    }
    for &n in sizes {
        let a = Tensor::full(device, &[n, n], 0.5).expect("alloc");
        let b = Tensor::full(device, &[n, n], 0.25).expect("alloc");
        let mut out = Tensor::uninit(device, &[n, n]).expect("alloc");
        let g = Gemm::nn();
        device.synchronize().expect("sync");
        let start = Instant::now();
        g.run_into(&a, &b, None, &mut out).expect("matmul");
        device.synchronize().expect("sync");
        let first_ms = start.elapsed().as_secs_f64() * 1e3;
        let secs = time(device, g, &a, &b, &mut out);
        let gf = 2.0 * (n * n * n) as f64 / secs / 1e9;
        let kernel = device
            .gpu_context()
            .map_or("-", |ctx| g.choose(ctx, Dims { m: n, n, k: n }).name());
        if json {
            println!(
                "{{\"lib\":\"kiln\",\"backend\":\"wgpu\",\"bench\":\"matmul\",\"n\":{n},\"gflops\":{gf:.2},\"ms\":{:.4},\"kernel\":\"{kernel}\",\"first_ms\":{first_ms:.1}}}",
                secs * 1e3
            );
        } else {
            println!(
                "{n:>6}{kernel:>11}{:>12.3}{gf:>12.1}{first_ms:>10.1}",
                secs * 1e3
            );
        }
    }
}

fn main() {
    let device = Device::gpu().expect("no GPU adapter");
    let json = std::env::args().any(|a| a == "--json");
    if let Some(sizes) = sizes_arg() {
        // A fresh cache, so each size's first call shows a real first-use tuning.
        let cache = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
        std::env::set_var("KILN_CACHE_DIR", &cache);
        run_sizes(&device, &sizes, json);
        let _ = std::fs::remove_dir_all(&cache);
        return;
    }
    if json {
        // One line per square size with the adapter's own kernel, for benches/compare.sh.
        for n in [256usize, 512, 1024, 2048] {
            let a = Tensor::full(&device, &[n, n], 0.5).expect("alloc");
            let b = Tensor::full(&device, &[n, n], 0.25).expect("alloc");
            let mut out = Tensor::uninit(&device, &[n, n]).expect("alloc");
            let gf = 2.0 * (n * n * n) as f64 / time(&device, Gemm::nn(), &a, &b, &mut out) / 1e9;
            println!("{{\"lib\":\"kiln\",\"backend\":\"wgpu\",\"bench\":\"matmul\",\"n\":{n},\"gflops\":{gf:.2}}}");
        }
        return;
    }
    // A fresh cache, so the "auto" column shows a real first-use tuning.
    let cache = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
    std::env::set_var("KILN_CACHE_DIR", &cache);
    println!("adapter: {}", device.name());
    let full = !std::env::args().any(|a| a == "--quick");
    let mut shapes: Vec<(&str, Gemm, usize, usize, usize)> = vec![
        ("square 256", Gemm::nn(), 256, 256, 256),
        ("square 512", Gemm::nn(), 512, 512, 512),
        ("square 1024", Gemm::nn(), 1024, 1024, 1024),
        ("fwd 128x784 * 784x128", Gemm::nn(), 128, 128, 784),
        ("dX 128x128 * (784x128)^T", Gemm::nt(), 128, 784, 128),
        ("dW (128x784)^T * 128x128", Gemm::tn(), 784, 128, 128),
        // Batch-32 training of a 784-128-10 net, in the forms kiln's dense layer uses:
        // forward X W^T (nt), dW = dZ^T X and dX = dZ W (nn, dZ^T made explicitly).
        ("b32 fwd 32x784 * (128x784)^T", Gemm::nt(), 32, 128, 784),
        ("b32 dW 128x32 * 32x784", Gemm::nn(), 128, 784, 32),
        ("b32 dX 32x128 * 128x784", Gemm::nn(), 32, 784, 128),
        ("b32 fwd 32x128 * (10x128)^T", Gemm::nt(), 32, 10, 128),
        ("b32 dW 10x32 * 32x128", Gemm::nn(), 10, 128, 32),
        ("b32 dX 32x10 * 10x128", Gemm::nn(), 32, 128, 10),
    ];
    if full {
        shapes.push(("square 2048", Gemm::nn(), 2048, 2048, 2048));
    }
    let kernels = MatmulKernel::ALL;
    print!("{:<30}", "shape (GFLOP/s)");
    for k in kernels {
        print!("{:>10}", k.name());
    }
    println!(
        "{:>8}{:>11}{:>12}{:>10}",
        "auto", "choice", "auto/naive", "1st ms"
    );
    for (name, g, m, n, k) in shapes {
        let a_shape = if g.trans_a { [k, m] } else { [m, k] };
        let b_shape = if g.trans_b { [n, k] } else { [k, n] };
        let a = Tensor::full(&device, &a_shape, 0.5).expect("alloc");
        let b = Tensor::full(&device, &b_shape, 0.25).expect("alloc");
        let mut out = Tensor::uninit(&device, &[m, n]).expect("alloc");
        let flops = 2.0 * (m * n * k) as f64;
        // The automatic product first: its first call pays for tuning and pipeline builds.
        device.synchronize().expect("sync");
        let start = Instant::now();
        g.run_into(&a, &b, None, &mut out).expect("matmul");
        device.synchronize().expect("sync");
        let first_ms = start.elapsed().as_secs_f64() * 1e3;
        let auto = flops / time(&device, g, &a, &b, &mut out) / 1e9;
        print!("{name:<30}");
        let mut naive = 0.0;
        for kernel in kernels {
            let forced = g.with_kernel(kernel);
            let ran = device
                .gpu_context()
                .map_or(kernel, |ctx| forced.choose(ctx, Dims { m, n, k }));
            if ran != kernel {
                // An aligned-only kernel on an unaligned shape runs another: not its number.
                print!("{:>10}", "-");
                continue;
            }
            let gf = flops / time(&device, forced, &a, &b, &mut out) / 1e9;
            if kernel == MatmulKernel::Naive {
                naive = gf;
            }
            print!("{gf:>10.1}");
        }
        let choice = device
            .gpu_context()
            .map_or("-", |ctx| g.choose(ctx, Dims { m, n, k }).name());
        println!(
            "{auto:>8.1}{choice:>11}{:>11.1}x{first_ms:>10.1}",
            auto / naive
        );
    }
    let _ = std::fs::remove_dir_all(&cache);
}
