//! Graph model files and checkpoints: round trips, exact resumption, every bad input a
//! typed error naming the nodes (and the line), and files written by earlier versions
//! (tests/fixtures/) still loading and predicting what they predicted when written.
use kiln::io::{self, ModelFile};
use kiln::{Device, FitOptions, Loss, Metric, Optimizer, Sequential};
use std::path::{Path, PathBuf};

/// The committed fixtures of a Sequential model written by kiln before graph files.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sequential-v1")
}

/// The rows the fixtures' predictions were made on.
fn fixture_rows() -> Vec<f32> {
    (0..5 * 6)
        .map(|i| ((i * 37 % 23) as f32 / 11.0) - 1.0)
        .collect()
}

/// Predictions as the hex of their bits, one row a line.
fn bits_text(values: &[f32], width: usize) -> String {
    values
        .chunks(width)
        .map(|row| {
            let row: Vec<String> = row.iter().map(|v| format!("{:08x}", v.to_bits())).collect();
            row.join(" ") + "\n"
        })
        .collect()
}

fn read_bits(path: &Path) -> Vec<f32> {
    std::fs::read_to_string(path)
        .unwrap()
        .split_whitespace()
        .map(|h| f32::from_bits(u32::from_str_radix(h, 16).unwrap()))
        .collect()
}

/// Writes tests/fixtures/sequential-v1 with the kiln of the day (run once, before graph
/// model files existed: `cargo test --release --test graph_files -- --ignored`).
#[test]
#[ignore]
fn write_fixtures() {
    let dir = fixtures();
    std::fs::create_dir_all(&dir).unwrap();
    let device = Device::cpu();
    let seq = Sequential::new(6)
        .dense(8)
        .relu()
        .batch_norm()
        .dropout(0.1)
        .dense(3);
    let rows = fixture_rows();
    // A model file, and what the model it describes predicts when built with seed 42.
    let mut trainer = seq
        .build(&device, 42)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(0.01),
            &[Metric::Accuracy],
        )
        .unwrap();
    let text = ModelFile::from_trainer(&trainer).unwrap().to_toml();
    std::fs::write(dir.join("model.toml"), &text).unwrap();
    let fresh = trainer.predict(&rows, 5).unwrap();
    std::fs::write(dir.join("model.predictions"), bits_text(&fresh, 3)).unwrap();
    // A checkpoint after a few steps, and what it predicts.
    let x: Vec<f32> = (0..32 * 6)
        .map(|i| ((i * 13 % 29) as f32 / 14.0) - 1.0)
        .collect();
    let y: Vec<f32> = x
        .chunks(6)
        .map(|r| if r[0] > 0.0 { 1.0 } else { 2.0 })
        .collect();
    trainer.fit(&x, &y, FitOptions::new(2, 8)).unwrap();
    io::save(dir.join("checkpoint"), &trainer).unwrap();
    let trained = trainer.predict(&rows, 5).unwrap();
    std::fs::write(dir.join("checkpoint.predictions"), bits_text(&trained, 3)).unwrap();
}

/// What a classifier predicts (probabilities), as `Trainer::predict` gives them.
fn predict(model: kiln::Model, rows: &[f32]) -> Vec<f32> {
    let loss = Loss::SparseCategoricalCrossEntropy;
    let mut trainer = model.compile(loss, Optimizer::adam(0.01), &[]).unwrap();
    trainer.predict(rows, 5).unwrap()
}

#[test]
fn old_sequential_fixtures_load_and_predict_as_written() {
    let dir = fixtures();
    let device = Device::cpu();
    let rows = fixture_rows();
    let file = ModelFile::load(dir.join("model.toml")).unwrap();
    let seed = file.training.as_ref().and_then(|t| t.seed).unwrap();
    let model = file.to_sequential().unwrap().build(&device, seed).unwrap();
    let got = predict(model, &rows);
    assert_eq!(got, read_bits(&dir.join("model.predictions")));

    let mut trainer = io::load_trainer(dir.join("checkpoint"), &device).unwrap();
    assert_eq!(trainer.steps(), 8);
    let want = read_bits(&dir.join("checkpoint.predictions"));
    assert_eq!(trainer.predict(&rows, 5).unwrap(), want);
    let model = io::load_model(dir.join("checkpoint"), &device).unwrap();
    assert!(model.param("0.weight").is_some() && model.param("4.bias").is_some());
    assert_eq!(predict(model, &rows), want);
}
