//! An LSTM reading the 8x8 digits row by row: 8 steps of 8 pixels, the last hidden state
//! into a softmax classifier.
//!
//! `cargo run --release --example lstm_digits` (add `-- cpu` for the CPU reference backend).
use kiln::data::Scaling;
use kiln::{Device, FitOptions, Loss, Metric, Optimizer, Sequential};

fn main() -> kiln::Result<()> {
    let device = match std::env::args().nth(1).as_deref() {
        Some("cpu") => Device::cpu(),
        _ => Device::gpu()?,
    };
    let (mut train, mut test) = kiln::data::digits()?.split(0.2, 7)?;
    let scaler = train.scale(Scaling::Divide(16.0))?;
    scaler.apply(&mut test)?;
    let model = Sequential::new(64)
        .reshape(&[8, 8])
        .lstm(32)
        .dense(10)
        .build(&device, 3)?;
    println!("{}", model.summary());
    let mut model = model.compile(
        Loss::SparseCategoricalCrossEntropy,
        Optimizer::adam(1e-2),
        &[Metric::Accuracy],
    )?;
    model.fit(&train.x, &train.y, FitOptions::new(12, 32))?;
    let eval = model.evaluate(&test.x, &test.y, 256)?;
    let acc = eval.get("accuracy").unwrap_or(0.0);
    println!("held-out accuracy after 12 epochs: {acc:.4}");
    Ok(())
}
