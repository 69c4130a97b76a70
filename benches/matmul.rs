//! Matmul throughput per kernel, with the one-output-per-invocation kernel as the baseline.
//!
//! `cargo bench --bench matmul` prints GFLOP/s for square sizes and the MNIST layer shapes
//! (`-- --quick` leaves out N = 2048; `-- --json` prints the square sizes for compare.sh).

use kiln::ops::matmul::{Gemm, MatmulKernel};
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

fn main() {
    let device = Device::gpu().expect("no GPU adapter");
    let json = std::env::args().any(|a| a == "--json");
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
    println!("adapter: {}", device.name());
    let full = !std::env::args().any(|a| a == "--quick");
    let mut shapes: Vec<(&str, Gemm, usize, usize, usize)> = vec![
        ("square 256", Gemm::nn(), 256, 256, 256),
        ("square 512", Gemm::nn(), 512, 512, 512),
        ("square 1024", Gemm::nn(), 1024, 1024, 1024),
        ("fwd 128x784 * 784x128", Gemm::nn(), 128, 128, 784),
        ("dX 128x128 * (784x128)^T", Gemm::nt(), 128, 784, 128),
        ("dW (128x784)^T * 128x128", Gemm::tn(), 784, 128, 128),
    ];
    if full {
        shapes.push(("square 2048", Gemm::nn(), 2048, 2048, 2048));
    }
    let kernels = [
        MatmulKernel::Naive,
        MatmulKernel::Blocked,
        MatmulKernel::Vec4,
        MatmulKernel::Tiled,
    ];
    print!("{:<28}", "shape (GFLOP/s)");
    for k in kernels {
        print!("{:>10}", format!("{k:?}"));
    }
    println!("{:>10}{:>12}", "auto", "auto/naive");
    for (name, g, m, n, k) in shapes {
        let a_shape = if g.trans_a { [k, m] } else { [m, k] };
        let b_shape = if g.trans_b { [n, k] } else { [k, n] };
        let a = Tensor::full(&device, &a_shape, 0.5).expect("alloc");
        let b = Tensor::full(&device, &b_shape, 0.25).expect("alloc");
        let mut out = Tensor::uninit(&device, &[m, n]).expect("alloc");
        let flops = 2.0 * (m * n * k) as f64;
        print!("{name:<28}");
        let mut naive = 0.0;
        for kernel in kernels {
            let gf = flops / time(&device, g.with_kernel(kernel), &a, &b, &mut out) / 1e9;
            if kernel == MatmulKernel::Naive {
                naive = gf;
            }
            print!("{gf:>10.1}");
        }
        let auto = flops / time(&device, g, &a, &b, &mut out) / 1e9;
        println!("{auto:>10.1}{:>11.1}x", auto / naive);
    }
}
