//! Training inside an application's own loop, without the CLI: each step the application
//! makes a fresh batch (here, points of the plane labelled by their quadrant) and hands
//! it to `Trainer::train_batch` (Keras's train_on_batch); then it predicts.
//!
//! `cargo run --release --example train_in_loop -- [DIR]` saves the trained checkpoint
//! to DIR when given (examples/embed.rs loads it); add `--cpu` for the CPU backend.
use kiln::{Device, Loss, Optimizer, Sequential};
use rand::{Rng, SeedableRng};

/// Rows per training step.
const BATCH: usize = 64;

fn main() -> kiln::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let device = if args.iter().any(|a| a == "--cpu") {
        Device::cpu()
    } else {
        Device::gpu()?
    };
    let model = Sequential::new(2)
        .dense(16)
        .relu()
        .dense(2)
        .build(&device, 7)?;
    let mut trainer = model.compile(
        Loss::SparseCategoricalCrossEntropy,
        Optimizer::adam(0.02),
        &[],
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for step in 0..400 {
        // The application's own data: class 1 where x and y have the same sign.
        let x: Vec<f32> = (0..BATCH * 2)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let y: Vec<f32> = x.chunks(2).map(|p| f32::from(p[0] * p[1] > 0.0)).collect();
        trainer.train_batch(&x, &y)?;
        if step % 100 == 0 {
            let e = trainer.evaluate(&x, &y, BATCH)?;
            println!("step {step}: loss {:.4}", e.loss);
        }
    }
    let probe = [0.5, 0.5, -0.5, 0.5, -0.5, -0.5, 0.5, -0.5];
    let classes = trainer.predict_classes(&probe, 4)?;
    println!("classes of (0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5), (0.5, -0.5): {classes:?}");
    if let Some(dir) = args.iter().find(|a| !a.starts_with("--")) {
        kiln::io::save(dir, &trainer)?;
        println!("saved to {dir}");
    }
    Ok(())
}
