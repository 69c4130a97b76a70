//! The Reshape layer: flat samples into images (and back), on both devices, in files.
mod common;
use common::*;
use kiln::io::ModelFile;
use kiln::{Device, Loss, Optimizer, Sequential};

/// 784 flat pixels reshaped to an image, through a conv, back to flat.
fn reshaped() -> Sequential {
    Sequential::new(784)
        .reshape(&[1, 28, 28])
        .conv2d(4, 3)
        .relu()
        .max_pool(2)
        .reshape(&[4 * 14 * 14])
        .dense(10)
}

/// The same network declared as an image model.
fn native() -> Sequential {
    Sequential::image(1, 28, 28)
        .conv2d(4, 3)
        .relu()
        .max_pool(2)
        .flatten()
        .dense(10)
}

#[test]
fn reshape_gives_the_shapes_it_names() {
    let shapes = reshaped().shapes().unwrap();
    assert_eq!(shapes[0], vec![1, 28, 28]);
    assert_eq!(shapes[4], vec![784]);
    let summary = reshaped().build(&Device::cpu(), 0).unwrap().summary();
    assert!(summary.contains("reshape"), "{summary}");
}

#[test]
fn a_reshaped_model_computes_what_the_image_model_does() {
    let (rows, x) = (3, random(3 * 784, 5));
    let y: Vec<f32> = (0..rows).map(|i| (i * 3 % 10) as f32).collect();
    for device in [Device::cpu(), gpu()] {
        let mut a = reshaped().build(&device, 1).unwrap();
        let mut b = native().build(&device, 1).unwrap();
        // The same weights, parameter by parameter (their names differ by the reshape's index).
        for (pa, pb) in a.params_mut().iter_mut().zip(b.params_mut()) {
            let values = pb.value.to_vec().unwrap();
            pa.value.write(&values).unwrap();
        }
        let out_a = a.forward(&x).unwrap();
        let out_b = b.forward(&x).unwrap();
        assert_close(
            &out_a,
            &out_b,
            1e-6,
            1e-6,
            &format!("forward on {device:?}"),
        );
        let loss = Loss::SparseCategoricalCrossEntropy;
        let mut ta = a.compile(loss, Optimizer::sgd(0.1), &[]).unwrap();
        let mut tb = b.compile(loss, Optimizer::sgd(0.1), &[]).unwrap();
        let (la, ga) = ta.gradients(&x, &y).unwrap();
        let (lb, gb) = tb.gradients(&x, &y).unwrap();
        assert!((la - lb).abs() <= 1e-6 * lb.abs(), "loss {la} vs {lb}");
        for ((na, va), (nb, vb)) in ga.iter().zip(&gb) {
            assert_close(va, vb, 1e-5, 1e-6, &format!("{na} vs {nb} on {device:?}"));
        }
    }
}

#[test]
fn a_reshape_that_changes_the_value_count_is_a_shape_error() {
    for bad in [
        Sequential::new(784).reshape(&[1, 28, 27]),
        Sequential::new(784).reshape(&[]),
        Sequential::new(784).reshape(&[0, 784]),
    ] {
        let err = bad.shapes().unwrap_err();
        assert!(matches!(err, kiln::Error::Shape { .. }), "{err}");
        let r = bad.build(&Device::cpu(), 0);
        assert!(matches!(r, Err(kiln::Error::Shape { .. })), "{:?}", r.err());
    }
}

#[test]
fn model_files_describe_reshape() {
    let file = ModelFile::from_sequential(&reshaped());
    let text = file.to_toml();
    assert!(text.contains("reshape = [1, 28, 28]"), "{text}");
    let back = ModelFile::parse(&text).unwrap().to_sequential().unwrap();
    assert_eq!(back, reshaped());
    let bad = "input = 4\n\n[[layers]]\nreshape = []\n";
    let r = ModelFile::parse(bad).and_then(|f| f.to_sequential());
    assert!(
        matches!(&r, Err(kiln::Error::Format { detail, .. }) if detail.contains("reshape")),
        "{:?}",
        r.err()
    );
}
