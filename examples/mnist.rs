//! MNIST with a 784-256-128-10 MLP and Adam, batch 128: the accuracy target.
//!
//! `cargo run --release --example mnist -- [DIR] [EPOCHS]` (DIR defaults to ../shared/data/mnist).
use kiln::data::{idx, Scaling};
use kiln::{Device, FitOptions, Loss, Metric, Optimizer, Sequential};

fn main() -> kiln::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "../shared/data/mnist".into());
    let epochs = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let (mut train, mut test) = idx::load_mnist(&dir)?;
    train.scale(Scaling::Divide(255.0))?.apply(&mut test)?;
    let device = Device::gpu()?;
    let model = Sequential::new(784)
        .dense(256)
        .relu()
        .dense(128)
        .relu()
        .dense(10)
        .build(&device, 1)?;
    println!("{}", model.summary());
    let mut model = model.compile(
        Loss::SparseCategoricalCrossEntropy,
        Optimizer::adam(1e-3),
        &[Metric::Accuracy],
    )?;
    let opts = FitOptions {
        on_epoch: vec![Box::new(|e: &kiln::train::EpochLog| {
            println!(
                "epoch {} loss {:.4} acc {:.4} {:.1}s",
                e.epoch,
                e.loss,
                e.get("accuracy").unwrap_or(0.0),
                e.seconds
            );
            kiln::train::Control::Continue
        })],
        ..FitOptions::new(epochs, 128)
    };
    model.fit(&train.x, &train.y, opts)?;
    let eval = model.evaluate(&test.x, &test.y, 1000)?;
    println!(
        "test loss {:.4} accuracy {:.4}",
        eval.loss,
        eval.get("accuracy").unwrap_or(0.0)
    );
    Ok(())
}
