//! A small residual CNN on Fashion-MNIST, written with `kiln::Graph`: a conv stem, two
//! residual blocks (conv + batch norm + relu, conv + batch norm, added back to the block's
//! input, then relu), max pooling, a dense head. `--plain` trains the same network without
//! the two skip connections, for the side-by-side.
//!
//! `cargo run --release --example residual_cnn -- [DIR] [EPOCHS] [--plain] [--train-rows N]`
//! (DIR defaults to ../shared/data/fashion-mnist; EPOCHS to 2; `--train-rows N` trains on
//! the first N training rows; the test set is always the full 10,000).
mod common;

use kiln::data::{idx, Scaling};
use kiln::nn::layer::{Conv, Pool};
use kiln::ops::batch_norm::BatchNorm;
use kiln::{Activation, Dense, Device, Graph, Layer};

const FILTERS: usize = 16;

fn main() -> kiln::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plain = args.iter().any(|a| a == "--plain");
    let rows_at = args.iter().position(|a| a == "--train-rows");
    let train_rows: Option<usize> = rows_at.and_then(|i| args.get(i + 1)?.parse().ok());
    let mut positional = args
        .iter()
        .enumerate()
        .filter(|&(i, a)| !a.starts_with("--") && rows_at.is_none_or(|r| i != r + 1))
        .map(|(_, a)| a.as_str());
    let dir = positional.next().unwrap_or("../shared/data/fashion-mnist");
    let epochs = positional.next().and_then(|s| s.parse().ok()).unwrap_or(2);

    let (mut train, mut test) = idx::load_mnist(dir)?;
    if let Some(n) = train_rows.filter(|&n| n < train.n) {
        train = train.select(&(0..n).collect::<Vec<_>>())?;
    }
    train.scale(Scaling::Divide(255.0))?.apply(&mut test)?;

    let conv = || Layer::Conv2d(Conv::new(FILTERS, 3).same());
    let bn = || Layer::BatchNorm(BatchNorm::default());
    let relu = || Layer::Activation(Activation::Relu);
    let mut g = Graph::new();
    g.input("x", &[1, 28, 28])
        .layer("stem", conv(), &["x"])
        .layer("stem_bn", bn(), &["stem"])
        .layer("stem_relu", relu(), &["stem_bn"])
        .layer("pool0", Layer::MaxPool2d(Pool::new(2)), &["stem_relu"]); // 16 x 14 x 14
    let mut prev = "pool0".to_string();
    for b in 1..=2 {
        let n = |s: &str| format!("b{b}_{s}");
        g.layer(&n("conv1"), conv(), &[&prev])
            .layer(&n("bn1"), bn(), &[&n("conv1")])
            .layer(&n("relu1"), relu(), &[&n("bn1")])
            .layer(&n("conv2"), conv(), &[&n("relu1")])
            .layer(&n("bn2"), bn(), &[&n("conv2")]);
        let last = if plain {
            n("bn2")
        } else {
            g.add(&n("add"), &[&prev, &n("bn2")]); // the skip connection
            n("add")
        };
        g.layer(&n("out"), relu(), &[&last]);
        prev = n("out");
    }
    g.layer("pool1", Layer::MaxPool2d(Pool::new(2)), &[&prev]) // 16 x 7 x 7
        .layer("flat", Layer::Flatten, &["pool1"])
        .layer("logits", Layer::Dense(Dense::new(10)), &["flat"])
        .output("logits");
    let model = g.build(&Device::gpu()?, 1)?;
    println!("{}", model.summary());
    let kind = if plain { "plain" } else { "residual" };
    println!("{kind} CNN, {} training rows, {epochs} epochs", train.n);

    common::train_and_test(model, &train, &test, epochs, &format!("{kind} "))?;
    Ok(())
}
