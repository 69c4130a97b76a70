//! A LeNet-style CNN on MNIST (or Fashion-MNIST): two conv + pool blocks, then dense.
//!
//! `cargo run --release --example mnist_cnn -- [DIR] [EPOCHS] [--bn]`
//! (DIR defaults to ../shared/data/mnist; EPOCHS to 3; `--bn` adds batch normalization).
mod common;

use kiln::data::{idx, Scaling};
use kiln::{Device, Sequential};

fn main() -> kiln::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .filter(|a| a != "--bn")
        .unwrap_or_else(|| "../shared/data/mnist".into());
    let epochs = std::env::args()
        .nth(2)
        .filter(|a| a != "--bn")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (mut train, mut test) = idx::load_mnist(&dir)?;
    train.scale(Scaling::Divide(255.0))?.apply(&mut test)?;
    let device = Device::gpu()?;
    // `--bn` puts a batch norm between each convolution and its ReLU.
    let bn = std::env::args().any(|a| a == "--bn");
    let block = |s: Sequential, filters| {
        let s = s.conv2d(filters, 3);
        let s = if bn { s.batch_norm() } else { s };
        s.relu().max_pool(2)
    };
    let model = block(block(Sequential::image(1, 28, 28), 32), 64)
        .flatten()
        .dense(128)
        .relu()
        .dense(10)
        .build(&device, 1)?;
    println!("{}", model.summary());
    common::train_and_test(model, &train, &test, epochs, "")?;
    Ok(())
}
