mod common;
use common::*;
use kiln::ops::matmul::{cpu_matmul, Gemm, MatmulKernel};
use kiln::ops::Activation;
use kiln::{Device, Tensor};

/// Relative tolerance for K <= 1024 in f32 against an f64 reference, plus an absolute
/// floor scaled by sqrt(K) for outputs that cancel to near zero.
fn tol(k: usize) -> (f32, f32) {
    (1e-4, 2e-6 * (k as f32).sqrt())
}

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (3, 5, 7),
    (17, 33, 9),
    (255, 257, 31),
    (1000, 10, 64),
    (128, 128, 784),
    (128, 784, 128),
    (64, 64, 64),
    (33, 8, 12),
    (100, 16, 1024),
    // Small-batch training shapes: forward, dX and dW of 784-128-10 layers at batch 32.
    (32, 128, 784),
    (32, 784, 128),
    (784, 128, 32),
    (32, 12, 128),
    (32, 128, 12),
    (128, 12, 32),
];

fn check(g: Gemm, m: usize, n: usize, k: usize, bias: bool, seed: u64) {
    isolate_autotune_cache();
    let a_shape = if g.trans_a { [k, m] } else { [m, k] };
    let b_shape = if g.trans_b { [n, k] } else { [k, n] };
    let a = random(m * k, seed);
    let b = random(k * n, seed + 1);
    let bv = random(n, seed + 2);
    let (ac, ag) = both(&a, &a_shape);
    let (bc, bg) = both(&b, &b_shape);
    let (biasc, biasg) = both(&bv, &[n]);
    let want = cpu_matmul(
        &g,
        g.dims(&ac, &bc, None).unwrap(),
        &a,
        &b,
        bias.then_some(&bv[..]),
    );
    let cpu = g.run(&ac, &bc, bias.then_some(&biasc)).unwrap();
    assert_close(&cpu.to_vec().unwrap(), &want, 0.0, 0.0, "cpu device");
    let gpu = g.run(&ag, &bg, bias.then_some(&biasg)).unwrap();
    let (rtol, atol) = tol(k);
    let what = format!("{g:?} m{m} n{n} k{k} bias {bias}");
    assert_close(&gpu.to_vec().unwrap(), &want, rtol, atol, &what);
}

fn all_forms(kernel: Option<MatmulKernel>) {
    let forms = [Gemm::nn(), Gemm::nt(), Gemm::tn()];
    for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
        for g in forms {
            let g = Gemm { kernel, ..g };
            check(g, m, n, k, false, i as u64 * 10);
        }
    }
}

#[test]
fn auto_kernel_matches_reference() {
    all_forms(None);
}

#[test]
fn naive_kernel_matches_reference() {
    all_forms(Some(MatmulKernel::Naive));
}

#[test]
fn blocked_kernel_matches_reference() {
    all_forms(Some(MatmulKernel::Blocked));
}

#[test]
fn vec4_kernel_matches_reference() {
    all_forms(Some(MatmulKernel::Vec4));
}

#[test]
fn tiled_kernel_matches_reference() {
    all_forms(Some(MatmulKernel::Tiled));
}

#[test]
fn lane_kernels_match_reference() {
    let lanes = [
        MatmulKernel::Lane16x16,
        MatmulKernel::Lane8x16,
        MatmulKernel::Lane4x16,
        MatmulKernel::LaneSg64x16,
        MatmulKernel::LaneSg32x16,
        MatmulKernel::LaneSg16x16,
        MatmulKernel::LaneSg8x16,
        MatmulKernel::LaneSg32x8,
        MatmulKernel::LaneSg16x8,
    ];
    let dev = gpu();
    let ctx = dev.gpu_context().unwrap();
    if ctx.subgroup_size() != Some(8) {
        eprintln!("note: no subgroups of 8 here, the sg kernels fall back to the blocked one");
    }
    for kernel in lanes {
        let d = kiln::ops::matmul::Dims {
            m: 64,
            n: 64,
            k: 64,
        };
        let ran = Gemm::nn().with_kernel(kernel).choose(ctx, d);
        assert_eq!(
            ran == kernel,
            kernel.runs_on(ctx),
            "{kernel:?} ran as {ran:?}"
        );
        all_forms(Some(kernel));
    }
}

/// The lane kernels read B's layout, the bias and ReLU from each dispatch's parameters
/// rather than from pipeline constants: a dense layer's forward product (B^T, bias, ReLU)
/// and its backward ones (plain) then share one pipeline, compiled once. Products in all
/// four combinations, recorded into one submission, each match the reference.
#[test]
fn lane_kernels_take_layout_bias_and_relu_per_dispatch() {
    isolate_autotune_cache();
    // A device of its own, so that other tests' pipelines do not count.
    let dev = Device::gpu().unwrap();
    let ctx = dev.gpu_context().unwrap();
    let (m, n, k) = (37, 44, 28);
    let (rtol, atol) = tol(k);
    let a = random(m * k, 1);
    let (b, bt) = (random(k * n, 2), random(n * k, 3));
    let bv = random(n, 4);
    let up = |v: &[f32], shape: &[usize]| Tensor::from_slice(&dev, v, shape).unwrap();
    let (ag, bg, btg, biasg) = (
        up(&a, &[m, k]),
        up(&b, &[k, n]),
        up(&bt, &[n, k]),
        up(&bv, &[n]),
    );
    let d = kiln::ops::matmul::Dims { m, n, k };
    for kernel in [
        MatmulKernel::Lane16x16,
        MatmulKernel::LaneSg32x8,
        MatmulKernel::LaneSg8x16,
    ] {
        if !kernel.runs_on(ctx) {
            continue;
        }
        let before = dev.stats().pipelines;
        let mut runs = Vec::new();
        for (trans_b, bias, act) in [
            (true, true, Activation::Relu),
            (false, false, Activation::Identity),
            (true, false, Activation::Identity),
            (false, true, Activation::Relu),
        ] {
            let g = match trans_b {
                true => Gemm::nt(),
                false => Gemm::nn(),
            };
            let g = g.with_act(act).with_kernel(kernel);
            assert_eq!(g.choose(ctx, d), kernel);
            let (bh, bd) = if trans_b { (&bt, &btg) } else { (&b, &bg) };
            let want = cpu_matmul(&g, d, &a, bh, bias.then_some(&bv[..]));
            // Nothing is read back until all four are recorded.
            runs.push((
                g.run(&ag, bd, bias.then_some(&biasg)).unwrap(),
                want,
                g,
                bias,
            ));
        }
        assert_eq!(
            dev.stats().pipelines - before,
            1,
            "{kernel:?}: pipelines built"
        );
        for (got, want, g, bias) in runs {
            let what = format!("{g:?} bias {bias}");
            assert_close(&got.to_vec().unwrap(), &want, rtol, atol, &what);
        }
    }
}

#[test]
fn tuned_choice_is_a_candidate_and_matches_reference() {
    let dev = gpu();
    let ctx = dev.gpu_context().unwrap();
    for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
        for g in [Gemm::nn(), Gemm::nt(), Gemm::tn()] {
            // The automatic product tunes the class on first use, then must match.
            check(g, m, n, k, false, 500 + i as u64);
            let d = kiln::ops::matmul::Dims { m, n, k };
            let chosen = g.choose(ctx, d);
            let candidates = g.candidates(ctx, d);
            assert!(
                candidates.contains(&chosen),
                "{g:?} m{m} n{n} k{k}: {chosen:?} not in {candidates:?}"
            );
            // And every candidate it could have picked matches too.
            for c in candidates {
                check(g.with_kernel(c), m, n, k, false, 600 + i as u64);
            }
        }
    }
}

#[test]
fn fused_bias_and_activation_match_reference() {
    let acts = [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu(0.1),
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Gelu,
    ];
    let kernels = [
        MatmulKernel::Blocked,
        MatmulKernel::Vec4,
        MatmulKernel::Tiled,
        MatmulKernel::Lane16x16,
        MatmulKernel::Lane8x16,
        MatmulKernel::Lane4x16,
        // Every sg tile shares one generated epilogue; lane_kernels_match_reference
        // covers each tile's own loads.
        MatmulKernel::LaneSg8x16,
    ];
    for (i, act) in acts.into_iter().enumerate() {
        for kernel in kernels {
            for (m, n, k) in [(17, 33, 9), (128, 128, 784), (1000, 12, 64)] {
                let g = Gemm::nn().with_act(act).with_kernel(kernel);
                check(g, m, n, k, true, 100 + i as u64);
            }
        }
    }
}

#[test]
fn shape_errors_are_typed() {
    let cpu = Device::cpu();
    for dev in [cpu, gpu()] {
        let a = Tensor::zeros(&dev, &[3, 4]).unwrap();
        let b = Tensor::zeros(&dev, &[5, 6]).unwrap();
        assert!(matches!(
            Gemm::nn().run(&a, &b, None),
            Err(kiln::Error::Shape { .. })
        ));
        let b = Tensor::zeros(&dev, &[4, 6]).unwrap();
        let bias = Tensor::zeros(&dev, &[5]).unwrap();
        assert!(matches!(
            Gemm::nn().run(&a, &b, Some(&bias)),
            Err(kiln::Error::Shape { .. })
        ));
        let mut out = Tensor::zeros(&dev, &[3, 5]).unwrap();
        assert!(matches!(
            Gemm::nn().run_into(&a, &b, None, &mut out),
            Err(kiln::Error::Shape { .. })
        ));
        // [2, 2, 2] is 4 rows of 2 (sequences), whose K = 2 does not meet b's 4 rows.
        let t3 = Tensor::zeros(&dev, &[2, 2, 2]).unwrap();
        assert!(matches!(
            Gemm::nn().run(&t3, &b, None),
            Err(kiln::Error::Shape { .. })
        ));
    }
}

#[test]
fn transposed_store_matches_reference() {
    let kernels = [
        None,
        Some(MatmulKernel::Naive),
        Some(MatmulKernel::Blocked),
        Some(MatmulKernel::Vec4),
        Some(MatmulKernel::Tiled),
        Some(MatmulKernel::Lane16x16),
        Some(MatmulKernel::Lane8x16),
        Some(MatmulKernel::Lane4x16),
        Some(MatmulKernel::LaneSg16x16),
    ];
    for kernel in kernels {
        for g in [Gemm::nn(), Gemm::nt(), Gemm::tn()] {
            for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
                let g = Gemm {
                    kernel,
                    ..g.store_transposed()
                };
                check(g, m, n, k, false, 300 + i as u64);
            }
        }
    }
    let (a, _) = both(&random(6, 1), &[2, 3]);
    let (b, _) = both(&random(12, 1), &[3, 4]);
    let (bias, _) = both(&random(4, 1), &[4]);
    let r = Gemm::nn().store_transposed().run(&a, &b, Some(&bias));
    assert!(
        matches!(&r, Err(kiln::Error::InvalidArgument { detail, .. }) if detail.contains("transposed")),
        "{:?}",
        r.err()
    );
}
