//! TensorBoard event files read back by TensorBoard's own reader (the `tensorboard`
//! Python package, which .ci/run installs): scalars, steps and HParams.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::io::tensorboard::{HParam, SessionStatus, TensorBoard};
use kiln::train::{FitOptions, Validation};
use kiln::{Device, History, Loss, Metric, Optimizer, Sequential};
use serde_json::Value;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tensorboard_check.py");

/// A fresh, empty folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("tensorboard")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What tests/tensorboard_check.py reads from `dir`; fails clearly without the package.
fn read_back(dir: &Path) -> Value {
    let probe = Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output()
        .expect("python3 runs");
    assert!(
        probe.status.success(),
        "python3 lacks the tensorboard package (pip install tensorboard; .ci/run installs it): {}",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    let out = Command::new("python3")
        .arg(CHECK)
        .arg(dir)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "tensorboard_check.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every History series is a scalar with the epochs as steps and the same values.
fn assert_scalars_match(read: &Value, history: &History) {
    let first = &history.epochs[0];
    let mut tags = kiln::io::tensorboard::epoch_tags(first);
    tags.sort();
    let scalars = read["scalars"].as_object().unwrap();
    let mut read_tags: Vec<String> = scalars.keys().cloned().collect();
    read_tags.sort();
    assert_eq!(read_tags, tags);
    for tag in &tags {
        let series = scalars[tag].as_array().unwrap();
        assert_eq!(series.len(), history.epochs.len(), "{tag}");
        for (point, e) in series.iter().zip(&history.epochs) {
            let want = if tag == "lr" {
                f64::from(e.lr)
            } else {
                e.get(tag).unwrap()
            };
            let (step, got) = (point[0].as_u64().unwrap(), point[1].as_f64().unwrap());
            assert_eq!(step as usize, e.epoch, "{tag}");
            // simple_value is an f32: within its rounding of the f64 History.
            let err = (got - want).abs() / want.abs().max(1e-30);
            assert!(err <= 1e-6, "{tag} epoch {}: {got} vs {want}", e.epoch);
        }
    }
}

#[test]
fn the_callback_writes_what_tensorboard_reads() {
    let d = kiln::data::digits().unwrap();
    let rows = 300;
    let x: Vec<f32> = d.x[..rows * 64].iter().map(|v| v / 16.0).collect();
    let y = &d.y[..rows];
    let mut t = Sequential::new(64)
        .dense(16)
        .relu()
        .dense(10)
        .build(&Device::cpu(), 1)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(3e-3),
            &[Metric::Accuracy],
        )
        .unwrap();
    let dir = temp_dir("callback");
    let mut board = TensorBoard::new(&dir).unwrap();
    let hparams = vec![
        ("lr".to_string(), HParam::Number(3e-3)),
        ("optimizer".to_string(), HParam::Text("adam".into())),
        ("batch_norm".to_string(), HParam::Bool(false)),
    ];
    let metrics = vec!["loss".to_string(), "val_accuracy".to_string()];
    board.experiment(&hparams, &metrics).unwrap();
    board.session_start(&hparams).unwrap();
    let mut opts = FitOptions::new(3, 32);
    opts.validation = Validation::Split(0.2);
    opts.on_epoch.push(board.hook());
    let history = t.fit(&x, y, opts).unwrap();
    let mut end = TensorBoard::new(dir.join("end")).unwrap();
    end.session_end(SessionStatus::Success).unwrap();

    let read = read_back(&dir);
    assert_scalars_match(&read, &history);
    assert!(read["scalars"].get("val_accuracy").is_some());
    let hp = &read["hparams"];
    assert!((hp["lr"].as_f64().unwrap() - 3e-3).abs() < 1e-12);
    assert_eq!(hp["optimizer"], "adam");
    assert_eq!(hp["batch_norm"], false);
    assert_eq!(
        read["experiment"]["hparams"],
        serde_json::json!(["lr", "optimizer", "batch_norm"])
    );
    assert_eq!(read["experiment"]["metrics"], serde_json::json!(metrics));
    // STATUS_SUCCESS, in the second file.
    assert_eq!(read_back(&dir.join("end"))["status"], 1);
}

#[test]
fn kiln_train_writes_tensorboard_logs() {
    let dir = temp_dir("cli");
    let board = dir.join("tb");
    let out = Command::new(KILN)
        .args(["train", "--device", "cpu", "--epochs", "2", "--quiet"])
        .args([
            "--lr",
            "0.005",
            "--batch-size",
            "64",
            "--optimizer",
            "sgd",
            "--layers",
            "64,16,10",
        ])
        .arg("--out")
        .arg(dir.join("run"))
        .arg("--tensorboard")
        .arg(&board)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = std::fs::read_dir(&board)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with("events.out.tfevents.") && files[0].ends_with(".kiln"));

    let read = read_back(&board);
    for tag in ["loss", "accuracy", "val_loss", "val_accuracy", "lr"] {
        let series = read["scalars"][tag].as_array().unwrap();
        let steps: Vec<u64> = series.iter().map(|p| p[0].as_u64().unwrap()).collect();
        assert_eq!(steps, vec![1, 2], "{tag}");
    }
    let hp = &read["hparams"];
    assert!((hp["lr"].as_f64().unwrap() - 0.005).abs() < 1e-9);
    assert_eq!(hp["batch_size"], 64.0);
    assert_eq!(hp["optimizer"], "sgd");
    assert_eq!(hp["layers"], "64,16,10");
    assert_eq!(read["status"], 1);
    let listed = [
        "_hparams_/experiment",
        "_hparams_/session_end_info",
        "_hparams_/session_start_info",
    ];
    assert_eq!(read["listed"], serde_json::json!(listed));
    assert!(read["experiment"]["metrics"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("val_accuracy")));
}
