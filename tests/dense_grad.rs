//! The fused dense-layer backward (dZ, dZ^T, bias gradient) against the separate CPU ops
//! it replaces, on both devices.
mod common;
use common::*;
use kiln::ops::activation::{activation_grad_from_output_into, activation_into};
use kiln::ops::bias::bias_grad_into;
use kiln::ops::dense_grad::{dense_grad_into, DenseGrad};
use kiln::ops::transpose::transpose_into;
use kiln::{Activation, Device, Tensor};

const ACTS: [Activation; 5] = [
    Activation::Identity,
    Activation::Relu,
    Activation::LeakyRelu(0.1),
    Activation::Sigmoid,
    Activation::Tanh,
];

/// (dz, dzt, db) by the three unfused CPU ops.
fn reference(act: Activation, y: &Tensor, dy: &Tensor) -> (Tensor, Tensor, Tensor) {
    let (r, c) = (y.shape()[0], y.shape()[1]);
    let cpu = Device::cpu();
    let mut dz = Tensor::zeros(&cpu, &[r, c]).unwrap();
    let mut dzt = Tensor::zeros(&cpu, &[c, r]).unwrap();
    let mut db = Tensor::zeros(&cpu, &[c]).unwrap();
    activation_grad_from_output_into(act, y, dy, &mut dz).unwrap();
    transpose_into(&dz, &mut dzt).unwrap();
    bias_grad_into(&dz, &mut db).unwrap();
    (dz, dzt, db)
}

#[test]
fn fused_dense_grad_matches_the_separate_ops() {
    for (k, &(r, c)) in AWKWARD.iter().chain(&[(32, 10), (512, 128)]).enumerate() {
        for act in ACTS {
            // y = act(z), so the derivative from the output is the one a real layer sees.
            let z = Tensor::from_slice(&Device::cpu(), &random(r * c, k as u64), &[r, c]).unwrap();
            let mut y = Tensor::zeros(&Device::cpu(), &[r, c]).unwrap();
            activation_into(act, &z, &mut y).unwrap();
            let y = y.to_vec().unwrap();
            let dy = random(r * c, 100 + k as u64);
            let (want_dz, want_dzt, want_db) = reference(
                act,
                &Tensor::from_slice(&Device::cpu(), &y, &[r, c]).unwrap(),
                &Tensor::from_slice(&Device::cpu(), &dy, &[r, c]).unwrap(),
            );
            for device in [Device::cpu(), gpu()] {
                let what = format!("{r}x{c} {act:?} on {device:?}");
                let yt = Tensor::from_slice(&device, &y, &[r, c]).unwrap();
                let dyt = Tensor::from_slice(&device, &dy, &[r, c]).unwrap();
                let mut dz = Tensor::zeros(&device, &[r, c]).unwrap();
                let mut dzt = Tensor::zeros(&device, &[c, r]).unwrap();
                let mut db = Tensor::zeros(&device, &[c]).unwrap();
                let out = DenseGrad {
                    dz: &mut dz,
                    dzt: &mut dzt,
                    db: Some(&mut db),
                };
                dense_grad_into(act, &yt, &dyt, out).unwrap();
                // dz is one product per element: rounding only. The bias sums run in f32
                // on the GPU over up to 1000 rows of values in [-1, 1].
                assert_same(&dz, &want_dz, 1e-6, 1e-7, &format!("dz {what}"));
                assert_same(&dzt, &want_dzt, 1e-6, 1e-7, &format!("dz^T {what}"));
                assert_same(&db, &want_db, 1e-4, 1e-5, &format!("db {what}"));
            }
        }
    }
}

#[test]
fn without_a_bias_only_dz_is_written() {
    let (r, c) = (17, 33);
    let y = random(r * c, 1);
    let dy = random(r * c, 2);
    let want = reference(
        Activation::Tanh,
        &Tensor::from_slice(&Device::cpu(), &y, &[r, c]).unwrap(),
        &Tensor::from_slice(&Device::cpu(), &dy, &[r, c]).unwrap(),
    );
    for device in [Device::cpu(), gpu()] {
        let yt = Tensor::from_slice(&device, &y, &[r, c]).unwrap();
        let dyt = Tensor::from_slice(&device, &dy, &[r, c]).unwrap();
        let mut dz = Tensor::zeros(&device, &[r, c]).unwrap();
        let mut dzt = Tensor::zeros(&device, &[c, r]).unwrap();
        let out = DenseGrad {
            dz: &mut dz,
            dzt: &mut dzt,
            db: None,
        };
        dense_grad_into(Activation::Tanh, &yt, &dyt, out).unwrap();
        assert_same(&dz, &want.0, 1e-6, 1e-7, "dz");
        assert_same(&dzt, &want.1, 1e-6, 1e-7, "dz^T");
    }
}

#[test]
fn bad_shapes_and_gelu_are_typed_errors() {
    let cpu = Device::cpu();
    let y = Tensor::zeros(&cpu, &[3, 5]).unwrap();
    let mut dz = Tensor::zeros(&cpu, &[3, 5]).unwrap();
    let mut dzt = Tensor::zeros(&cpu, &[5, 3]).unwrap();
    let mut wrong = Tensor::zeros(&cpu, &[3, 5]).unwrap();
    let mut db = Tensor::zeros(&cpu, &[4]).unwrap();
    let run = |act, dz: &mut Tensor, dzt: &mut Tensor, db: Option<&mut Tensor>| {
        dense_grad_into(act, &y, &y, DenseGrad { dz, dzt, db })
    };
    assert!(matches!(
        run(Activation::Relu, &mut dz, &mut wrong, None),
        Err(kiln::Error::Shape { .. })
    ));
    assert!(matches!(
        run(Activation::Relu, &mut dz, &mut dzt, Some(&mut db)),
        Err(kiln::Error::Shape { .. })
    ));
    // GELU's derivative needs its input, which dense_grad does not have.
    let r = run(Activation::Gelu, &mut dz, &mut dzt, None);
    assert!(
        matches!(&r, Err(kiln::Error::InvalidArgument { detail, .. }) if detail.contains("Gelu")),
        "{r:?}"
    );
}
