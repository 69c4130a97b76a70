mod common;
use common::*;
use kiln::ops::transpose::transpose_into;
use kiln::{Device, Tensor};

#[test]
fn transpose_matches_the_definition() {
    for &(r, c) in AWKWARD {
        let x = random(r * c, 9);
        let want: Vec<f32> = (0..c * r).map(|e| x[(e % r) * c + e / r]).collect();
        for device in [Device::cpu(), gpu()] {
            let xt = Tensor::from_slice(&device, &x, &[r, c]).unwrap();
            let mut out = Tensor::zeros(&device, &[c, r]).unwrap();
            transpose_into(&xt, &mut out).unwrap();
            assert_eq!(out.to_vec().unwrap(), want, "{r}x{c} on {device:?}");
        }
    }
    let x = Tensor::zeros(&Device::cpu(), &[2, 3]).unwrap();
    let mut out = Tensor::zeros(&Device::cpu(), &[2, 3]).unwrap();
    assert!(matches!(
        transpose_into(&x, &mut out),
        Err(kiln::Error::Shape { .. })
    ));
}
