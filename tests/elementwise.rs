mod common;
use common::*;
use kiln::ops::elementwise::{self as ew, BinaryOp};
use kiln::Tensor;

#[test]
fn binary_ops_match_reference() {
    for &(r, c) in AWKWARD {
        let a = random(r * c, 1);
        let b = random(r * c, 2);
        let (ac, ag) = both(&a, &[r, c]);
        let (bc, bg) = both(&b, &[r, c]);
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul] {
            let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| op.apply(*x, *y)).collect();
            let mut cpu = Tensor::uninit(&kiln::Device::cpu(), &[r, c]).unwrap();
            ew::binary_into(op, &ac, &bc, &mut cpu).unwrap();
            let mut gpu = Tensor::uninit(&ag.device(), &[r, c]).unwrap();
            ew::binary_into(op, &ag, &bg, &mut gpu).unwrap();
            assert_close(&cpu.to_vec().unwrap(), &want, 0.0, 0.0, "cpu");
            assert_same(&gpu, &cpu, 0.0, 0.0, &format!("{op:?} {r}x{c}"));
        }
    }
}

#[test]
fn scale_and_axpy_match_reference() {
    for &(r, c) in AWKWARD {
        let (xc, xg) = both(&random(r * c, 3), &[r, c]);
        let (mut yc, mut yg) = both(&random(r * c, 4), &[r, c]);
        ew::axpy(-0.7, &xc, &mut yc).unwrap();
        ew::axpy(-0.7, &xg, &mut yg).unwrap();
        assert_same(&yg, &yc, 1e-6, 1e-6, "axpy");
        let sg = ew::scale(&xg, 3.5).unwrap();
        let sc = ew::scale(&xc, 3.5).unwrap();
        assert_same(&sg, &sc, 1e-6, 0.0, "scale");
    }
}

#[test]
fn large_arrays_use_a_2d_grid() {
    // 20M elements need more than 65535 workgroups of 256.
    let n = 20_000_000;
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    let (_, xg) = both(&x[..1], &[1]);
    let xg = Tensor::from_slice(&xg.device(), &x, &[n]).unwrap();
    let y = ew::scale(&xg, 2.0).unwrap().to_vec().unwrap();
    assert_eq!(y[n - 1], 2.0 * x[n - 1]);
    assert!(y.iter().zip(&x).all(|(a, b)| *a == 2.0 * b));
}

#[test]
fn shape_mismatch_is_an_error() {
    let (a, ag) = both(&random(6, 1), &[2, 3]);
    let (b, bg) = both(&random(6, 1), &[3, 2]);
    assert!(matches!(ew::add(&a, &b), Err(kiln::Error::Shape { .. })));
    assert!(matches!(ew::add(&ag, &bg), Err(kiln::Error::Shape { .. })));
    assert!(matches!(
        ew::add(&a, &bg),
        Err(kiln::Error::Shape { .. } | kiln::Error::DeviceMismatch { .. })
    ));
}
