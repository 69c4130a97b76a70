//! A residual MLP on MNIST, written with `kiln::Graph`: 784-256, then two residual blocks
//! (dense(256) + relu + dense(256), added back to the block's input, then relu), then 10.
//!
//! `cargo run --release --example residual_mlp -- [DIR] [EPOCHS]`
//! (DIR defaults to ../shared/data/mnist; EPOCHS to 3).
mod common;

use kiln::data::{idx, Scaling};
use kiln::{Activation, Dense, Device, Graph, Layer};

fn main() -> kiln::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "../shared/data/mnist".into());
    let epochs = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let (mut train, mut test) = idx::load_mnist(&dir)?;
    train.scale(Scaling::Divide(255.0))?.apply(&mut test)?;

    let relu = || Layer::Activation(Activation::Relu);
    let mut g = Graph::new();
    g.input("x", &[784])
        .layer("stem", Layer::Dense(Dense::new(256)), &["x"])
        .layer("h0", relu(), &["stem"]);
    let mut prev = "h0".to_string();
    for b in 1..=2 {
        let n = |s: &str| format!("b{b}_{s}");
        g.layer(&n("d1"), Layer::Dense(Dense::new(256)), &[&prev])
            .layer(&n("r1"), relu(), &[&n("d1")])
            .layer(&n("d2"), Layer::Dense(Dense::new(256)), &[&n("r1")])
            .add(&n("add"), &[&prev, &n("d2")]) // the skip connection
            .layer(&n("out"), relu(), &[&n("add")]);
        prev = n("out");
    }
    g.layer("logits", Layer::Dense(Dense::new(10)), &[&prev])
        .output("logits");
    let model = g.build(&Device::gpu()?, 1)?;
    println!("{}", model.summary());

    common::train_and_test(model, &train, &test, epochs, "")?;
    Ok(())
}
