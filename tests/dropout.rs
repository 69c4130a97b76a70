mod common;
use common::*;
use kiln::ops::dropout::{dropout_into, keep};
use kiln::Tensor;

#[test]
fn gpu_mask_equals_cpu_mask() {
    for &(r, c) in AWKWARD {
        let x = random(r * c, 5);
        let (xc, xg) = both(&x, &[r, c]);
        let mut oc = Tensor::zeros(&kiln::Device::cpu(), &[r, c]).unwrap();
        let mut og = Tensor::zeros(&gpu(), &[r, c]).unwrap();
        dropout_into(&xc, 0.3, 42, &mut oc).unwrap();
        dropout_into(&xg, 0.3, 42, &mut og).unwrap();
        assert_same(&og, &oc, 1e-6, 0.0, "dropout");
    }
}

#[test]
fn keep_rate_and_scale_are_right() {
    let n = 200_000;
    for rate in [0.1f32, 0.5, 0.8] {
        let kept = (0..n).filter(|&i| keep(7, rate, i)).count() as f64 / n as f64;
        // Binomial std at n = 2e5 is below 0.0012; allow 5 sigma.
        assert!(
            (kept - (1.0 - rate as f64)).abs() < 0.006,
            "rate {rate}: kept {kept}"
        );
    }
    let x = vec![1.0f32; 1000];
    let (xc, _) = both(&x, &[1000]);
    let mut out = Tensor::zeros(&kiln::Device::cpu(), &[1000]).unwrap();
    dropout_into(&xc, 0.5, 1, &mut out).unwrap();
    assert!(out.to_vec().unwrap().iter().all(|&v| v == 0.0 || v == 2.0));
}

#[test]
fn different_seeds_give_different_masks() {
    let a: Vec<bool> = (0..1000).map(|i| keep(1, 0.5, i)).collect();
    let b: Vec<bool> = (0..1000).map(|i| keep(2, 0.5, i)).collect();
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    assert!((400..600).contains(&same), "masks agree on {same} of 1000");
}

#[test]
fn bad_rate_is_an_error() {
    let (xc, _) = both(&[1.0], &[1]);
    let mut out = Tensor::zeros(&kiln::Device::cpu(), &[1]).unwrap();
    assert!(matches!(
        dropout_into(&xc, 1.0, 0, &mut out),
        Err(kiln::Error::InvalidArgument { .. })
    ));
}
