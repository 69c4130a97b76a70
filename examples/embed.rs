//! Predicting from another program: load a checkpoint and predict, in a few lines.
//!
//! `cargo run --release --example embed -- DIR [x y]...` with a folder written by
//! `kiln::io::save` (`cargo run --release --example train_in_loop -- DIR` makes one) or by
//! `kiln train --out DIR`. A `kiln train` run may have scaled its features: its kiln-run.txt
//! holds the shift and divisor to apply first (`kiln predict` and `kiln serve` do).
use kiln::Device;

fn main() -> kiln::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "runs/quadrants".into());
    let x: Vec<f32> = args.filter_map(|a| a.parse().ok()).collect();

    let device = Device::gpu()?;
    let mut trainer = kiln::io::load_trainer(&dir, &device)?;
    let classes = trainer.predict_classes(&x, 64)?;
    let probabilities = trainer.predict(&x, 64)?;

    println!("classes: {classes:?}");
    println!("probabilities: {probabilities:?}");
    Ok(())
}
