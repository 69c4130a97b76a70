//! What the examples share: the default optimizer and per-epoch printing.
#![allow(dead_code)]

use kiln::data::Dataset;
use kiln::train::{Control, EpochLog};
use kiln::{FitOptions, Loss, Metric, Model, Optimizer, Schedule};

/// Adam peaking at 2e-3, annealed to 0 along a cosine over `epochs`, as `kiln train` does
/// by default.
pub fn adam_cosine(epochs: usize) -> Optimizer {
    Optimizer::adam(2e-3).schedule(Schedule::Cosine {
        t_max: epochs,
        eta_min: 0.0,
    })
}

/// Options for `epochs` of `batch` rows that print each epoch's loss, accuracy and time.
pub fn printing(epochs: usize, batch: usize) -> FitOptions {
    FitOptions {
        on_epoch: vec![Box::new(|e: &EpochLog| {
            let acc = e.get("accuracy").unwrap_or(0.0);
            println!(
                "  epoch {} loss {:.4} accuracy {acc:.4} {:.2} s",
                e.epoch, e.loss, e.seconds
            );
            Control::Continue
        })],
        ..FitOptions::new(epochs, batch)
    }
}

/// Trains a classifier with sparse categorical cross-entropy, [`adam_cosine`] and batches
/// of 128, printing each epoch, then prints and returns its test accuracy (`what` names it).
pub fn train_and_test(
    model: Model,
    train: &Dataset,
    test: &Dataset,
    epochs: usize,
    what: &str,
) -> kiln::Result<f64> {
    let loss = Loss::SparseCategoricalCrossEntropy;
    let mut trainer = model.compile(loss, adam_cosine(epochs), &[Metric::Accuracy])?;
    trainer.fit(&train.x, &train.y, printing(epochs, 128))?;
    let eval = trainer.evaluate(&test.x, &test.y, 500)?;
    let acc = eval.get("accuracy").unwrap_or(0.0);
    println!("{what}test loss {:.4} accuracy {acc:.4}", eval.loss);
    Ok(acc)
}
