//! The XOR network: 2-4-1 with sigmoids, mean squared error and plain SGD.
//!
//! `cargo run --release --example xor` (add `-- cpu` for the CPU reference backend).
use kiln::{nn::Init, Dense, Device, FitOptions, Loss, Metric, Optimizer, Sequential};

fn main() -> kiln::Result<()> {
    let device = match std::env::args().nth(1).as_deref() {
        Some("cpu") => Device::cpu(),
        _ => Device::gpu()?,
    };
    let x = [0., 0., 0., 1., 1., 0., 1., 1.];
    let y = [0., 1., 1., 0.];
    let model = Sequential::new(2)
        .dense_with(Dense::new(4).kernel_init(Init::Uniform(-1.0, 1.0)))
        .sigmoid()
        .dense(1)
        .sigmoid()
        .build(&device, 1)?;
    println!("{}", model.summary());
    let mut model = model.compile(Loss::Mse, Optimizer::sgd(2.0), &[Metric::BinaryAccuracy])?;
    let opts = FitOptions {
        shuffle: false,
        ..FitOptions::new(3000, 4)
    };
    let history = model.fit(&x, &y, opts)?;
    let last = history.last().expect("one epoch at least");
    println!("after {} epochs: loss {:.5}", last.epoch, last.loss);
    let probs = model.predict(&x, 4)?;
    for (row, p) in x.chunks(2).zip(&probs) {
        println!("{} xor {} -> {p:.3}", row[0], row[1]);
    }
    Ok(())
}
