//! Strided batched products (stacked trials) on the GPU against the CPU reference, and
//! the CPU reference against one plain matmul per trial, on awkward sizes and on every
//! layout stacked training uses (stacked blocks, a wide matrix, a shared operand).
mod common;
use common::*;
use kiln::ops::batched_matmul::{Batched, Operand, Strides};
use kiln::ops::matmul::{Dims, Gemm};
use kiln::{Activation, Device, Error, Tensor};

/// How an operand's trials lie in its tensor.
#[derive(Clone, Copy, Debug)]
enum Layout {
    Stacked,
    Wide,
    Shared,
}

/// The strides and tensor length of `trials` stored matrices of `rows` x `cols`.
fn place(layout: Layout, trials: usize, rows: usize, cols: usize) -> (Strides, usize) {
    match layout {
        Layout::Stacked => (Strides::stacked(rows, cols), trials * rows * cols),
        Layout::Wide => (Strides::wide(trials, cols), rows * trials * cols),
        Layout::Shared => (Strides::shared(cols), rows * cols),
    }
}

/// Trial `t`'s stored matrix, copied out.
fn matrix(data: &[f32], s: Strides, t: usize, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        let at = t * s.trial + i * s.row;
        out.extend_from_slice(&data[at..at + cols]);
    }
    out
}

/// (trials, m, n, k): 1, 3 and 17 trials on widths of 1, 3, 17 and 255.
const SIZES: &[(usize, usize, usize, usize)] = &[
    (1, 1, 1, 1),
    (3, 3, 17, 255),
    (17, 17, 3, 1),
    (3, 255, 1, 17),
    (17, 3, 255, 3),
];

#[test]
fn batched_products_match_per_trial_matmuls_on_both_devices() {
    let forms = [(Gemm::nn(), "nn"), (Gemm::nt(), "nt"), (Gemm::tn(), "tn")];
    let layouts = [
        (Layout::Stacked, Layout::Stacked, Layout::Stacked),
        (Layout::Shared, Layout::Stacked, Layout::Wide),
        (Layout::Wide, Layout::Shared, Layout::Stacked),
        (Layout::Wide, Layout::Stacked, Layout::Wide),
    ];
    let mut case = 0u64;
    for &(trials, m, n, k) in SIZES {
        for (form, name) in forms {
            for (la, lb, lc) in layouts {
                case += 1;
                let act =
                    [Activation::Identity, Activation::Relu, Activation::Tanh][case as usize % 3];
                let gemm = form.with_act(act);
                let a_dims = if gemm.trans_a { (k, m) } else { (m, k) };
                let b_dims = if gemm.trans_b { (n, k) } else { (k, n) };
                let (sa, na) = place(la, trials, a_dims.0, a_dims.1);
                let (sb, nb) = place(lb, trials, b_dims.0, b_dims.1);
                let (sc, nc) = place(lc, trials, m, n);
                let (a, b, bias) = (
                    random(na, case),
                    random(nb, case + 1),
                    random(trials * n, case + 2),
                );
                let product = Batched {
                    gemm,
                    dims: Dims { m, n, k },
                    trials,
                };
                let what =
                    format!("{name} {trials}x[{m}x{k} * {k}x{n}] {la:?} {lb:?} -> {lc:?} {act:?}");
                let mut outs = Vec::new();
                for device in [Device::cpu(), gpu()] {
                    let at = Tensor::from_slice(&device, &a, &[na]).unwrap();
                    let bt = Tensor::from_slice(&device, &b, &[nb]).unwrap();
                    let biast = Tensor::from_slice(&device, &bias, &[trials * n]).unwrap();
                    let mut c = Tensor::full(&device, &[nc], f32::NAN).unwrap();
                    product
                        .run_into(
                            Operand {
                                tensor: &at,
                                strides: sa,
                            },
                            Operand {
                                tensor: &bt,
                                strides: sb,
                            },
                            Some(Operand {
                                tensor: &biast,
                                strides: Strides::stacked(1, n),
                            }),
                            &mut c,
                            sc,
                        )
                        .unwrap();
                    outs.push(c.to_vec().unwrap());
                }
                // f32 sums of up to 255 products of values in [-1, 1] against f64 ones.
                assert_close(&outs[1], &outs[0], 1e-4, 1e-5 * k as f32, &what);
                // The reference against plain per-trial products (its own oracle).
                let cpu = Device::cpu();
                for t in 0..trials {
                    let at = Tensor::from_slice(
                        &cpu,
                        &matrix(&a, sa, t, a_dims.0, a_dims.1),
                        &[a_dims.0, a_dims.1],
                    )
                    .unwrap();
                    let bt = Tensor::from_slice(
                        &cpu,
                        &matrix(&b, sb, t, b_dims.0, b_dims.1),
                        &[b_dims.0, b_dims.1],
                    )
                    .unwrap();
                    let biast = Tensor::from_slice(&cpu, &bias[t * n..(t + 1) * n], &[n]).unwrap();
                    let want = gemm.run(&at, &bt, Some(&biast)).unwrap().to_vec().unwrap();
                    let got = matrix(&outs[0], sc, t, m, n);
                    assert_close(&got, &want, 1e-6, 1e-6, &format!("{what}, trial {t}"));
                }
            }
        }
    }
}

#[test]
fn operands_that_do_not_hold_every_trial_are_errors() {
    let cpu = Device::cpu();
    let (m, n, k, trials) = (3, 4, 5, 3);
    let product = Batched {
        gemm: Gemm::nn(),
        dims: Dims { m, n, k },
        trials,
    };
    let a = Tensor::zeros(&cpu, &[trials * m * k]).unwrap();
    let short = Tensor::zeros(&cpu, &[trials * k * n - 1]).unwrap();
    let b = Tensor::zeros(&cpu, &[trials * k * n]).unwrap();
    let mut c = Tensor::zeros(&cpu, &[trials * m * n]).unwrap();
    fn op(tensor: &Tensor, strides: Strides) -> Operand<'_> {
        Operand { tensor, strides }
    }
    let run = |b: &Tensor, c: &mut Tensor, sc: Strides| {
        let (a, b) = (
            op(&a, Strides::stacked(m, k)),
            op(b, Strides::stacked(k, n)),
        );
        product.run_into(a, b, None, c, sc)
    };
    assert!(matches!(
        run(&short, &mut c, Strides::stacked(m, n)),
        Err(Error::Shape { .. })
    ));
    // C's trials written over each other.
    assert!(run(&b, &mut c, Strides::shared(n)).is_err());
    // A row stride shorter than a row.
    let e = product.run_into(
        op(
            &a,
            Strides {
                trial: m * k,
                row: k - 1,
            },
        ),
        op(&b, Strides::stacked(k, n)),
        None,
        &mut c,
        Strides::stacked(m, n),
    );
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    let none = Batched {
        trials: 0,
        ..product
    };
    let e = none.run_into(
        op(&a, Strides::stacked(m, k)),
        op(&b, Strides::stacked(k, n)),
        None,
        &mut c,
        Strides::stacked(m, n),
    );
    assert!(e.is_err());
    assert!(run(&b, &mut c, Strides::stacked(m, n)).is_ok());
}
