//! A LeNet-style CNN on MNIST (or Fashion-MNIST): two conv + pool blocks, then dense.
//!
//! `cargo run --release --example mnist_cnn -- [DIR] [EPOCHS]`
//! (DIR defaults to ../shared/data/mnist; EPOCHS to 3).
use kiln::data::{idx, Scaling};
use kiln::train::{Control, EpochLog};
use kiln::{Device, FitOptions, Loss, Metric, Optimizer, Schedule, Sequential};

fn main() -> kiln::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "../shared/data/mnist".into());
    let epochs = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (mut train, mut test) = idx::load_mnist(&dir)?;
    train.scale(Scaling::Divide(255.0))?.apply(&mut test)?;
    let device = Device::gpu()?;
    let model = Sequential::image(1, 28, 28)
        .conv2d(32, 3)
        .relu()
        .max_pool(2)
        .conv2d(64, 3)
        .relu()
        .max_pool(2)
        .flatten()
        .dense(128)
        .relu()
        .dense(10)
        .build(&device, 1)?;
    println!("{}", model.summary());
    let mut model = model.compile(
        Loss::SparseCategoricalCrossEntropy,
        // As `kiln train` does by default: Adam peaking at 2e-3, annealed to 0 along a cosine.
        Optimizer::adam(2e-3).schedule(Schedule::Cosine {
            t_max: epochs,
            eta_min: 0.0,
        }),
        &[Metric::Accuracy],
    )?;
    let opts = FitOptions {
        on_epoch: vec![Box::new(|e: &EpochLog| {
            let acc = e.get("accuracy").unwrap_or(0.0);
            println!(
                "epoch {} loss {:.4} accuracy {acc:.4} {:.1} s",
                e.epoch, e.loss, e.seconds
            );
            Control::Continue
        })],
        ..FitOptions::new(epochs, 128)
    };
    model.fit(&train.x, &train.y, opts)?;
    let eval = model.evaluate(&test.x, &test.y, 500)?;
    let acc = eval.get("accuracy").unwrap_or(0.0);
    println!("test loss {:.4} accuracy {acc:.4}", eval.loss);
    Ok(())
}
