//! Convolutional models end to end: CPU/GPU agreement, a short run whose loss falls,
//! summaries and model files with image layers.
mod common;
use common::*;
use kiln::{Device, FitOptions, Loss, Metric, Optimizer, Sequential};

fn cnn() -> Sequential {
    Sequential::image(1, 8, 8)
        .conv2d(4, 3)
        .relu()
        .max_pool(2)
        .conv2d(6, 3)
        .tanh()
        .avg_pool(2)
        .flatten()
        .dense(10)
}

/// Every parameter's values, in `params()` order.
fn values(model: &kiln::Model) -> Vec<Vec<f32>> {
    model
        .params()
        .iter()
        .map(|p| p.value.to_vec().unwrap())
        .collect()
}

#[test]
fn cpu_and_gpu_train_a_cnn_alike() {
    let x = random(6 * 64, 31);
    let y: Vec<f32> = (0..6).map(|i| (i % 10) as f32).collect();
    // Plain SGD, not Adam: Adam's first steps are about lr * sign(gradient), blind to a
    // gradient off by a constant factor; an SGD step is lr * gradient, so each
    // parameter's displacement is proportional to its gradient.
    let mut start = Vec::new();
    let mut moved = Vec::new();
    for device in [Device::cpu(), gpu()] {
        let model = cnn().build(&device, 2).unwrap();
        let before = values(&model);
        let mut t = model
            .compile(
                Loss::SparseCategoricalCrossEntropy,
                Optimizer::sgd(0.1),
                &[],
            )
            .unwrap();
        for _ in 0..3 {
            t.train_batch(&x, &y).unwrap();
        }
        let after = values(&t.model);
        let delta: Vec<Vec<f32>> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.iter().zip(b).map(|(a, b)| a - b).collect())
            .collect();
        start.push(before);
        moved.push(delta);
    }
    // The same seed gives the same initial weights on both devices.
    assert_eq!(start[0], start[1], "initial parameters differ");
    // Compare what training changed, not the parameters: displacements of up to 0.05
    // (lr * 3 steps * |gradient|) next to weights of up to 0.5 would let a 10% error of a
    // gradient hide inside a tolerance relative to the weight. rtol 1e-3 is ten times the
    // largest difference measured between the devices' displacements (9e-5 of one); the
    // absolute part, 1e-3 of the tensor's largest displacement, covers parameters that
    // barely moved, where the subtraction's rounding (up to ulp(0.5) = 6e-8) weighs more.
    // A gradient off by 1.1x then fails on every element that moved more than 1% of the
    // largest move in its tensor (1.01x: more than 11%).
    for (i, (c, g)) in moved[0].iter().zip(&moved[1]).enumerate() {
        let largest = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(largest > 0.0, "param {i} did not move");
        assert_close(
            g,
            c,
            1e-3,
            1e-3 * largest,
            &format!("param {i} displacement"),
        );
    }
}

#[test]
fn a_cnn_learns_the_digits() {
    let data = kiln::data::digits().unwrap();
    let (mut train, mut test) = data.split(0.2, 3).unwrap();
    train
        .scale(kiln::data::Scaling::Divide(16.0))
        .unwrap()
        .apply(&mut test)
        .unwrap();
    let model = Sequential::image(1, 8, 8)
        .conv2d(16, 3)
        .relu()
        .max_pool(2)
        .flatten()
        .dense(10)
        .build(&gpu(), 1)
        .unwrap();
    let mut t = model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(1e-2),
            &[Metric::Accuracy],
        )
        .unwrap();
    let h = t.fit(&train.x, &train.y, FitOptions::new(8, 32)).unwrap();
    let losses = h.series("loss");
    assert!(
        losses.last().unwrap() < &(losses[0] * 0.5),
        "loss did not fall: {losses:?}"
    );
    let acc = t
        .evaluate(&test.x, &test.y, 128)
        .unwrap()
        .get("accuracy")
        .unwrap();
    println!("digits CNN: losses {losses:?}, held-out accuracy {acc:.4}");
    assert!(acc > 0.93, "held-out accuracy {acc}");
}

#[test]
fn summary_and_model_file_cover_image_layers() {
    let model = cnn().build(&Device::cpu(), 0).unwrap();
    let s = model.summary();
    assert!(
        s.contains("conv2d_0") && s.contains("(None, 4, 8, 8)") && s.contains("(None, 4, 4, 4)"),
        "{s}"
    );
    assert!(
        s.contains("(None, 6, 2, 2)") && s.contains("(None, 24)"),
        "{s}"
    );
    // conv 1*4*9+4 = 40, conv 4*6*9+6 = 222, dense 24*10+10 = 250.
    assert_eq!(model.param_count(), 40 + 222 + 250);
    let file = kiln::io::ModelFile::from_sequential(model.spec().unwrap());
    let text = file.to_toml();
    let back = kiln::io::ModelFile::parse(&text)
        .unwrap()
        .to_sequential()
        .unwrap();
    assert_eq!(&back, model.spec().unwrap(), "{text}");
    let toml = "image = [1, 28, 28]\n[[layers]]\nconv2d = 8\nkernel = 5\npadding = \"same\"\nactivation = \"relu\"\n[[layers]]\nmax_pool = 2\n[[layers]]\nflatten = true\n[[layers]]\ndense = 10\n";
    let spec = kiln::io::ModelFile::parse(toml)
        .unwrap()
        .to_sequential()
        .unwrap();
    assert_eq!(spec.shapes().unwrap().last().unwrap(), &vec![10]);
    assert_eq!(spec.shapes().unwrap()[2], vec![8, 14, 14]);
}

#[test]
fn image_layer_misuse_is_a_typed_error() {
    let d = Device::cpu();
    // A convolution needs image samples.
    assert!(matches!(
        Sequential::new(64).conv2d(4, 3).build(&d, 0),
        Err(kiln::Error::Shape { .. })
    ));
    // A dense layer after a convolution needs a flatten.
    match Sequential::image(1, 8, 8)
        .conv2d(4, 3)
        .dense(10)
        .build(&d, 0)
    {
        Err(kiln::Error::Shape { op, detail }) => assert!(
            op.contains("layer 1") && detail.contains("flatten"),
            "{detail}"
        ),
        other => panic!("expected a shape error, got {:?}", other.err()),
    }
    // A window larger than the image.
    match Sequential::image(1, 4, 4).max_pool(8).build(&d, 0) {
        Err(kiln::Error::Shape { op, .. }) => assert!(op.contains("layer 0"), "{op}"),
        other => panic!("expected a shape error, got {:?}", other.err()),
    }
    let bad = "image = [1, 8, 8]\n[[layers]]\nconv2d = 4\npadding = \"sideways\"\n";
    assert!(matches!(
        kiln::io::ModelFile::parse(bad),
        Err(kiln::Error::Format { .. })
    ));
}
