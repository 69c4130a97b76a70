//! The `kiln` binary end to end, on the built-in digits set (small and fast).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
/// Epochs of `kiln train` with no options.
const EPOCHS: usize = 10;

/// A fresh, empty folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn kiln(args: &[&str]) -> Output {
    Command::new(KILN)
        .args(args)
        .output()
        .expect("the kiln binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs kiln and insists that it succeeds; returns its standard output.
fn kiln_ok(args: &[&str]) -> String {
    let o = kiln(args);
    assert!(
        o.status.success(),
        "kiln {args:?} failed ({:?}):\n{}\n{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Runs kiln, insists that it fails with `code` and a readable message containing
/// `needle`, and returns that message.
fn kiln_fails(args: &[&str], code: i32, needle: &str) -> String {
    let o = kiln(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "kiln {args:?}:\n{err}");
    assert!(
        err.contains(needle),
        "kiln {args:?}: {needle:?} not in:\n{err}"
    );
    // Messages, not panics or Debug dumps of error values.
    for bad in ["panicked", "RUST_BACKTRACE", "InvalidArgument {", "Io {"] {
        assert!(!err.contains(bad), "kiln {args:?}: {bad:?} in:\n{err}");
    }
    err
}

/// The value after `name` on the first line that starts with `line_start`.
fn value_after(text: &str, line_start: &str, name: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no line starting {line_start:?} in:\n{text}"));
    let mut words = line.split_whitespace();
    words.find(|w| *w == name);
    words
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number after {name:?} in {line:?}"))
}

/// `kiln train` with its defaults (the digits set), shared by the tests that read its output.
struct Trained {
    dir: PathBuf,
    stdout: String,
}

fn trained() -> &'static Trained {
    static RUN: OnceLock<Trained> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = temp_dir("trained").join("run");
        let stdout = kiln_ok(&["train", "--out", dir.to_str().unwrap()]);
        Trained { dir, stdout }
    })
}

/// history.csv as (header, rows of numbers).
fn history(dir: &Path) -> (Vec<String>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(dir.join("history.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().split(',').map(String::from).collect();
    let rows = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    (header, rows)
}

#[test]
fn train_writes_history_curves_and_checkpoint() {
    let t = trained();
    let (header, rows) = history(&t.dir);
    assert_eq!(
        &header[..6],
        [
            "epoch",
            "loss",
            "accuracy",
            "val_loss",
            "val_accuracy",
            "lr"
        ]
    );
    assert_eq!(rows.len(), EPOCHS, "one row per epoch");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], (i + 1) as f64);
    }
    let losses: Vec<f64> = rows.iter().map(|r| r[1]).collect();
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]),
        "training loss should fall every epoch: {losses:?}"
    );
    // The default cosine schedule: the lr column falls from the peak along a half cosine.
    assert!(
        t.stdout.contains("adam lr 0.002 (cosine over 10 epochs)"),
        "{}",
        t.stdout
    );
    for (i, row) in rows.iter().enumerate() {
        let want = 0.001 * (1.0 + (std::f64::consts::PI * i as f64 / EPOCHS as f64).cos());
        assert!(
            (row[5] - want).abs() < 1e-6,
            "epoch {i}: lr {} vs {want}",
            row[5]
        );
    }
    let png = std::fs::read(t.dir.join("curves.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "curves.png is a PNG");
    assert!(png.len() > 5000, "curves.png has content");
    for file in ["kiln-run.txt", "model.safetensors", "optimizer.safetensors"] {
        assert!(t.dir.join(file).is_file(), "{file} missing");
    }
    // One line per epoch without a terminal, then the test result.
    let epoch_lines = t.stdout.lines().filter(|l| l.starts_with("epoch ")).count();
    assert_eq!(epoch_lines, EPOCHS, "{}", t.stdout);
    // Out of the box, a model good enough to show the tool works.
    let accuracy = value_after(&t.stdout, "test:", "accuracy");
    assert!(accuracy >= 0.95, "test accuracy {accuracy}:\n{}", t.stdout);
}

#[test]
fn eval_matches_the_test_accuracy_of_training() {
    let t = trained();
    let out = kiln_ok(&["eval", "--checkpoint", t.dir.to_str().unwrap()]);
    let trained = value_after(&t.stdout, "test:", "accuracy");
    let evaluated = value_after(&out, "accuracy", "accuracy");
    assert_eq!(evaluated, trained, "eval:\n{out}\ntrain:\n{}", t.stdout);
    let test_loss = value_after(&t.stdout, "test:", "loss");
    let loss = value_after(&out, "loss", "loss");
    assert!((loss - test_loss).abs() < 1e-3, "{loss} vs {test_loss}");
    assert!(out.contains("confusion matrix"), "{out}");
    // A header row, ten classes and a totals row: 359 held-out rows (20% of 1797) in all.
    assert!(out
        .lines()
        .any(|l| l.trim_start().starts_with("all") && l.trim_end().ends_with(" 359")));
}

#[test]
fn predict_writes_one_row_per_input() {
    let t = trained();
    let dir = temp_dir("predict");
    // Three rows of the digits CSV, label column included (it is ignored).
    let digits = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits/digits.csv"),
    )
    .unwrap();
    let input: Vec<&str> = digits.lines().take(4).collect();
    let input_path = dir.join("rows.csv");
    std::fs::write(&input_path, input.join("\n") + "\n").unwrap();
    let output_path = dir.join("predictions.csv");
    kiln_ok(&[
        "predict",
        "--checkpoint",
        t.dir.to_str().unwrap(),
        "--input",
        input_path.to_str().unwrap(),
        "--output",
        output_path.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&output_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three rows:\n{text}");
    assert!(lines[0].starts_with("row,predicted,prob_0,"), "{text}");
    for (i, line) in lines[1..].iter().enumerate() {
        let fields: Vec<f64> = line.split(',').map(|v| v.parse().unwrap()).collect();
        assert_eq!(fields.len(), 12, "{line}");
        assert_eq!(fields[0], i as f64);
        let sum: f64 = fields[2..].iter().sum();
        assert!((sum - 1.0).abs() < 1e-3, "probabilities sum to {sum}");
    }
    // The same rows without the label column give the same predictions, on stdout.
    let features_only: Vec<String> = input
        .iter()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect();
    std::fs::write(&input_path, features_only.join("\n")).unwrap();
    let printed = kiln_ok(&[
        "predict",
        "--checkpoint",
        t.dir.to_str().unwrap(),
        "--input",
        input_path.to_str().unwrap(),
    ]);
    assert_eq!(printed, text);
}

#[test]
fn resume_continues_the_epochs() {
    let t = trained();
    // A copy, so the shared run stays as the other tests expect.
    let dir = temp_dir("resume").join("run");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&t.dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let total = (EPOCHS + 2).to_string();
    let out = kiln_ok(&[
        "train",
        "--resume",
        dir.to_str().unwrap(),
        "--epochs",
        &total,
    ]);
    let epochs: Vec<&str> = out.lines().filter(|l| l.starts_with("epoch ")).collect();
    assert_eq!(epochs.len(), 2, "{out}");
    // Without the stretch the two new epochs would train at rate 0.
    assert!(
        out.contains(&format!("cosine stretched from {EPOCHS} to {total} epochs")),
        "{out}"
    );
    assert!(
        epochs[0].starts_with(&format!("epoch {}/{total}", EPOCHS + 1)),
        "{out}"
    );
    let (_, rows) = history(&dir);
    assert_eq!(rows.len(), EPOCHS + 2, "history keeps the earlier epochs");
    let (_, before) = history(&t.dir);
    assert_eq!(rows[..EPOCHS], before[..], "earlier epochs unchanged");
    assert!(
        rows[EPOCHS + 1][1] < rows[EPOCHS - 1][1],
        "loss keeps falling"
    );
    // The run now stands at its (new) number of epochs: nothing left to do but test.
    let again = kiln_ok(&["train", "--resume", dir.to_str().unwrap()]);
    assert!(!again.lines().any(|l| l.starts_with("epoch ")), "{again}");
    assert!(again.contains("test:"), "{again}");
}

#[test]
fn summary_counts_parameters() {
    let out = kiln_ok(&["summary", "--layers", "64,32,10"]);
    // 64*32 + 32 + 32*10 + 10
    assert!(out.contains("Total params: 2410"), "{out}");
    assert!(out.contains("dense"), "{out}");
}

#[test]
fn bad_inputs_fail_with_readable_messages() {
    let dir = temp_dir("bad");
    let out = dir.join("run");
    let out = out.to_str().unwrap();
    let err = kiln_fails(
        &[
            "train", "--layers", "10,5,10", "--epochs", "1", "--out", out,
        ],
        1,
        "64 features",
    );
    assert!(err.starts_with("error: "), "{err}");
    kiln_fails(
        &[
            "train", "--layers", "64,16,5", "--epochs", "1", "--out", out,
        ],
        1,
        "10 classes",
    );
    kiln_fails(
        &["train", "--data", "csv:/no/such/file.csv", "--out", out],
        1,
        "/no/such/file.csv",
    );
    kiln_fails(
        &["train", "--data", "mnist:/no/such/dir", "--out", out],
        1,
        "/no/such/dir",
    );
    kiln_fails(&["train", "--optimizer", "adamm", "--out", out], 2, "adamm");
    kiln_fails(&["train", "--data", "parquet:x"], 2, "parquet");
    kiln_fails(&["train", "--epochs", "many"], 2, "many");
    kiln_fails(
        &[
            "eval",
            "--checkpoint",
            dir.join("nothing").to_str().unwrap(),
        ],
        1,
        "not a kiln run folder",
    );
    kiln_fails(&["summary"], 1, "--layers");
}

#[test]
fn help_explains_with_examples() {
    let out = kiln_ok(&["train", "--help"]);
    assert!(out.contains("Examples:"), "{out}");
    assert!(out.contains("--resume"), "{out}");
    for command in ["eval", "predict", "summary", "generate"] {
        let out = kiln_ok(&[command, "--help"]);
        assert!(out.contains("Examples:"), "{command}: {out}");
    }
    let out = kiln_ok(&["--help"]);
    for command in [
        "train", "eval", "predict", "generate", "adapters", "summary",
    ] {
        assert!(out.contains(command), "{out}");
    }
}

/// Writes an IDX file: magic (type 0x08 = u8, then the number of dimensions), sizes, data.
fn write_idx(path: &Path, dims: &[u32], data: &[u8]) {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// `n` 4x4 images of two classes: bright top half (0) or bright bottom half (1).
fn idx_images(n: usize) -> (Vec<u8>, Vec<u8>) {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let class = (i % 2) as u8;
        labels.push(class);
        for p in 0..16 {
            let top = p < 8;
            let lit = top == (class == 0);
            pixels.push(if lit {
                200 + (i * 7 + p) as u8 % 50
            } else {
                (i + p) as u8 % 40
            });
        }
    }
    (pixels, labels)
}

#[test]
fn idx_folder_trains_and_predicts_from_an_images_file() {
    let dir = temp_dir("idx");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (stem, n) in [("train", 120u32), ("t10k", 40)] {
        let (pixels, labels) = idx_images(n as usize);
        write_idx(
            &data.join(format!("{stem}-images-idx3-ubyte")),
            &[n, 4, 4],
            &pixels,
        );
        write_idx(
            &data.join(format!("{stem}-labels-idx1-ubyte")),
            &[n],
            &labels,
        );
    }
    let run = dir.join("run");
    let source = format!("mnist:{}", data.display());
    let out = kiln_ok(&[
        "train",
        "--data",
        &source,
        "--layers",
        "16,8,2",
        "--epochs",
        "3",
        // 45 steps at 0.01 learn the task (one step per epoch at the default batch of
        // 128 and lr of 0.002 would leave the model at its random start).
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--out",
        run.to_str().unwrap(),
    ]);
    // The folder's own test files are the test set: 40 rows, none held out.
    assert!(out.contains("(40 rows)"), "{out}");
    assert!(out.contains("scale 255"), "{out}");
    let images = data.join("t10k-images-idx3-ubyte");
    let predictions = kiln_ok(&[
        "predict",
        "--checkpoint",
        run.to_str().unwrap(),
        "--input",
        images.to_str().unwrap(),
    ]);
    assert_eq!(predictions.lines().count(), 41, "{predictions}");
    assert!(predictions.starts_with("row,predicted,prob_0,prob_1\n"));
    // Top half bright or bottom half bright is a task the model learns perfectly: every
    // prediction is the image's label, with the larger of its two probabilities.
    let (_, labels) = idx_images(40);
    for (i, (line, &label)) in predictions.lines().skip(1).zip(&labels).enumerate() {
        let fields: Vec<f64> = line.split(',').map(|v| v.parse().unwrap()).collect();
        assert_eq!(fields.len(), 4, "{line}");
        assert_eq!(fields[0], i as f64, "{line}");
        assert_eq!(
            fields[1],
            f64::from(label),
            "row {i}: {line}\n{predictions}"
        );
        let (p, q) = (fields[2 + label as usize], fields[3 - label as usize]);
        assert!(p > q && (p + q - 1.0).abs() < 1e-3, "row {i}: {line}");
    }
    kiln_fails(
        &[
            "train",
            "--data",
            &source,
            "--test-split",
            "0.3",
            "--out",
            run.to_str().unwrap(),
        ],
        1,
        "--test-split",
    );
}

#[test]
fn a_model_file_describes_the_model_and_its_training() {
    let dir = temp_dir("model-file");
    let file = dir.join("model.toml");
    std::fs::write(
        &file,
        "input = 64\n\n\
         [[layers]]\ndense = 32\nactivation = \"tanh\"\n\n\
         [[layers]]\ndense = 10\n\n\
         [training]\nloss = \"sparse_categorical_crossentropy\"\noptimizer = \"rmsprop\"\n\
         lr = 0.002\nbatch_size = 64\nepochs = 2\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let summary = kiln_ok(&["summary", "--model", file]);
    assert!(summary.contains("Total params: 2410"), "{summary}");
    assert!(summary.contains("tanh"), "{summary}");
    let run = dir.join("run");
    let out = kiln_ok(&["train", "--model", file, "--out", run.to_str().unwrap()]);
    assert!(out.contains("rmsprop lr 0.002, batch 64"), "{out}");
    let (_, rows) = history(&run);
    assert_eq!(rows.len(), 2, "the file's epochs:\n{out}");
    kiln_fails(
        &["train", "--model", file, "--activation", "relu"],
        1,
        "--activation",
    );
    std::fs::write(
        dir.join("bad.toml"),
        "input = 64\n[[layers]]\ndense = \"ten\"\n",
    )
    .unwrap();
    kiln_fails(
        &["summary", "--model", dir.join("bad.toml").to_str().unwrap()],
        1,
        "line 3",
    );
}

#[test]
fn a_model_file_with_normalization_layers_trains_and_evaluates() {
    let dir = temp_dir("norm");
    let file = dir.join("model.toml");
    std::fs::write(
        &file,
        "input = 64\n\n\
         [[layers]]\ndense = 32\n\n\
         [[layers]]\nbatch_norm = true\nactivation = \"relu\"\n\n\
         [[layers]]\nlayer_norm = true\n\n\
         [[layers]]\ndense = 10\n\n\
         [training]\nloss = \"sparse_categorical_crossentropy\"\noptimizer = \"adam\"\n\
         batch_size = 64\nepochs = 2\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let summary = kiln_ok(&["summary", "--model", file]);
    assert!(summary.contains("batch_normalization_0"), "{summary}");
    assert!(summary.contains("Non-trainable params: 64"), "{summary}");
    let run = dir.join("run");
    kiln_ok(&["train", "--model", file, "--out", run.to_str().unwrap()]);
    assert_eq!(history(&run).1.len(), 2);
    let out = kiln_ok(&["eval", "--checkpoint", run.to_str().unwrap()]);
    assert!(out.contains("accuracy"), "{out}");
}

#[test]
fn constant_schedule_keeps_the_keras_rate() {
    let dir = temp_dir("constant").join("run");
    let out = kiln_ok(&[
        "train",
        "--schedule",
        "constant",
        "--epochs",
        "2",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.contains("adam lr 0.001, batch 32"), "{out}");
    let (_, rows) = history(&dir);
    assert!(rows.iter().all(|r| r[5] == 0.001), "{rows:?}");
}

/// `rows` of two features and a 0/1 label (their sum's sign), as delimited text whose
/// header quotes the delimiter and a line break.
fn delimited(rows: usize, d: &str) -> String {
    let mut text = format!("\"x{d} one\"{d}\"x\ntwo\"{d}label\n");
    for i in 0..rows {
        let a = ((i * 37) % 41) as f64 / 20.0 - 1.0;
        let b = ((i * 11) % 17) as f64 / 8.0 - 1.0;
        let label = u8::from(a + b > 0.0);
        // Some values quoted, one with a line break inside the quotes.
        let b = if i % 5 == 0 {
            format!("\"{b}\n\"")
        } else {
            b.to_string()
        };
        text += &format!("{a}{d}{b}{d}{label}\n");
    }
    text
}

#[test]
fn delimiter_reads_semicolon_and_tab_files() {
    let dir = temp_dir("delimiter");
    let semi = dir.join("semi.csv");
    std::fs::write(&semi, delimited(80, ";")).unwrap();
    let tab = dir.join("rows.txt");
    std::fs::write(&tab, delimited(80, "\t")).unwrap();
    let run = dir.join("run");
    let (run, source) = (
        run.to_str().unwrap(),
        format!("csv:{}:label", semi.display()),
    );
    let train = [
        "train", "--data", &source, "--layers", "2,8,2", "--epochs", "3", "--device", "cpu",
    ];
    let out = kiln_ok(&[&train[..], &["--delimiter", ";", "--out", run]].concat());
    assert!(out.contains("2 features, 2 classes"), "{out}");
    let record = std::fs::read_to_string(dir.join("run/kiln-run.txt")).unwrap();
    assert!(record.contains("\ndelimiter = ;\n"), "{record}");
    // eval reads the run's rows again with the run's delimiter.
    let out = kiln_ok(&["eval", "--checkpoint", run, "--device", "cpu"]);
    assert!(out.contains("(the run's test rows), 16 rows"), "{out}");
    // Another file, tab-separated: every row.
    let tab_source = format!("csv:{}:label", tab.display());
    let out = kiln_ok(&[
        "eval",
        "--checkpoint",
        run,
        "--device",
        "cpu",
        "--data",
        &tab_source,
        "--delimiter",
        "tab",
    ]);
    assert!(out.contains("80 rows, 2 features, 2 classes"), "{out}");
    // predict: a .txt file is CSV with --delimiter; a .csv one uses the run's delimiter.
    let tab = tab.to_str().unwrap();
    let predict = ["predict", "--checkpoint", run, "--device", "cpu", "--input"];
    let out = kiln_ok(&[&predict[..], &[tab, "--delimiter", "\\t"]].concat());
    assert_eq!(out.lines().count(), 81, "{out}");
    let semi = semi.to_str().unwrap();
    assert_eq!(kiln_ok(&[&predict[..], &[semi]].concat()), out);

    // Read with commas, the header's quotes end in a semicolon, and the message says so.
    let err = kiln_fails(
        &[&train[..], &["--out", run]].concat(),
        1,
        "line 1: ';' after",
    );
    assert!(err.contains("is ';' the delimiter?"), "{err}");
    kiln_fails(
        &[&train[..], &["--delimiter", ";;", "--out", run]].concat(),
        2,
        "not one byte",
    );
    kiln_fails(
        &["train", "--delimiter", ";", "--out", run],
        1,
        "applies to CSV data",
    );
    kiln_fails(
        &["train", "--resume", run, "--delimiter", ";"],
        2,
        "--delimiter",
    );
    kiln_fails(
        &["eval", "--checkpoint", run, "--delimiter", ";"],
        2,
        "--data",
    );
    for command in ["train", "eval", "predict"] {
        let help = kiln_ok(&[command, "--help"]);
        assert!(help.contains("--delimiter <CHAR>"), "{command}: {help}");
    }
}

/// A residual block on the digits as a graph model file.
const GRAPH_FILE: &str = r#"outputs = ["out"]

[[inputs]]
name = "pixels"
shape = [64]

[[nodes]]
name = "d1"
dense = 64
inputs = ["pixels"]

[[nodes]]
name = "r1"
activation = "relu"
inputs = ["d1"]

[[nodes]]
name = "res"
add = true
inputs = ["pixels", "r1"]

[[nodes]]
name = "out"
dense = 10
inputs = ["res"]

[training]
loss = "sparse_categorical_crossentropy"
optimizer = "adam"
batch_size = 64
epochs = 2
"#;

#[test]
fn a_graph_model_file_trains_summarises_evaluates_and_predicts() {
    let dir = temp_dir("graph");
    let file = dir.join("graph.toml");
    std::fs::write(&file, GRAPH_FILE).unwrap();
    let file = file.to_str().unwrap();
    let summary = kiln_ok(&["summary", "--model", file]);
    assert!(summary.contains("Connected to"), "{summary}");
    assert!(
        summary.contains("res") && summary.contains("pixels"),
        "{summary}"
    );
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    kiln_ok(&["train", "--model", file, "--device", "cpu", "--out", run_s]);
    assert_eq!(history(&run).1.len(), 2);
    let out = kiln_ok(&["eval", "--checkpoint", run_s, "--device", "cpu"]);
    assert!(out.contains("accuracy"), "{out}");
    let digits = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits/digits.csv"),
    )
    .unwrap();
    let input: Vec<&str> = digits.lines().take(3).collect();
    let rows = dir.join("rows.csv");
    std::fs::write(&rows, input.join("\n") + "\n").unwrap();
    let preds = dir.join("predictions.csv");
    kiln_ok(&[
        "predict",
        "--checkpoint",
        run_s,
        "--device",
        "cpu",
        "--input",
        rows.to_str().unwrap(),
        "--output",
        preds.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&preds).unwrap().lines().count(), 3);
    // A bad graph names the nodes and the line.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        GRAPH_FILE.replace("[\"pixels\", \"r1\"]", "[\"pixels\", \"r9\"]"),
    )
    .unwrap();
    let err = kiln_fails(&["summary", "--model", bad.to_str().unwrap()], 1, "line 20");
    assert!(err.contains("'r9'") && err.contains("res"), "{err}");
}

/// GRAPH_FILE with an auxiliary head on the residual block: each output trained on the
/// digit labels, the auxiliary one weighted 0.3 (and a faster rate, for 3 epochs).
fn two_output_file() -> String {
    GRAPH_FILE
        .replace("outputs = [\"out\"]", "outputs = [\"out\", \"aux\"]")
        .replace("optimizer = \"adam\"", "optimizer = \"adam\"\nlr = 0.005")
        + "\n[[nodes]]\nname = \"aux\"\ndense = 10\ninputs = [\"r1\"]\n\n\
           [training.outputs.aux]\nweight = 0.3\nmetrics = [\"accuracy\"]\n"
}

#[test]
fn a_two_output_graph_file_trains_on_the_label_column_resumes_and_evaluates() {
    let dir = temp_dir("two-outputs");
    let file = dir.join("two.toml");
    std::fs::write(&file, two_output_file()).unwrap();
    let file = file.to_str().unwrap();
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    let args = ["train", "--model", file, "--device", "cpu", "--epochs", "3"];
    let out = kiln_ok(&[&args[..], &["--out", run_s]].concat());
    assert!(
        out.contains("out_accuracy") && out.contains("aux_accuracy"),
        "{out}"
    );
    let (header, rows) = history(&run);
    let at = |key: &str| header.iter().position(|h| h == key).unwrap();
    for key in ["out_loss", "aux_loss", "aux_accuracy", "val_out_accuracy"] {
        at(key);
    }
    let (first, last) = (&rows[0], &rows[rows.len() - 1]);
    assert!(last[at("loss")] < first[at("loss")], "{header:?} {rows:?}");
    // The reported loss is the weighted sum of the outputs' losses.
    let weighted = last[at("out_loss")] + 0.3 * last[at("aux_loss")];
    assert!(
        (last[at("loss")] - weighted).abs() < 1e-3,
        "{header:?} {last:?}"
    );
    assert!(last[at("val_out_accuracy")] > 0.8, "{header:?} {last:?}");

    kiln_ok(&[
        "train", "--resume", run_s, "--epochs", "4", "--device", "cpu",
    ]);
    assert_eq!(history(&run).1.len(), 4);
    let out = kiln_ok(&["eval", "--checkpoint", run_s, "--device", "cpu"]);
    assert!(out.contains("aux_accuracy"), "{out}");
    let predict = [
        "predict",
        "--input",
        file,
        "--checkpoint",
        run_s,
        "--device",
        "cpu",
    ];
    kiln_fails(&predict, 1, "several outputs (out, aux)");

    // A head that takes more than one target per row cannot train on one label column.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        two_output_file().replace("weight = 0.3", "loss = \"mse\""),
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    let out_dir = dir.join("bad-run");
    kiln_fails(
        &[
            "train",
            "--model",
            bad,
            "--device",
            "cpu",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        1,
        "one label column",
    );
}

/// Without the `mpi` feature, `--distributed mpi` stops at once and says how to build it.
#[cfg(not(feature = "mpi"))]
#[test]
fn distributed_mpi_needs_the_mpi_feature() {
    let args = ["train", "--distributed", "mpi", "--device", "cpu"];
    kiln_fails(&args, 1, "built without the `mpi` feature");
}

#[test]
fn text_data_trains_saves_its_vocabulary_and_evaluates() {
    let dir = temp_dir("text");
    let file = dir.join("verse.txt");
    let text = "the cat sat on the mat; a dog ran to the log.\n".repeat(40);
    std::fs::write(&file, &text).unwrap();
    let run = dir.join("run");
    let (data, run_s) = (format!("text:{}", file.display()), run.to_str().unwrap());
    let args = ["train", "--data", &data, "--context", "16", "--epochs", "4"];
    let out = kiln_ok(&[&args[..], &["--device", "cpu", "--out", run_s, "-q"]].concat());
    // Context 16, embeddings of 64, a hidden layer of 128, logits over 17 characters.
    assert!(out.contains("model:  16-64-128-17 "), "{out}");
    assert!(
        out.contains("16 tokens per row, 17 in the vocabulary"),
        "{out}"
    );
    let vocab = kiln::data::text::Vocab::load(&run.join("vocab.json")).unwrap();
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    assert_eq!(
        vocab.decode(&(0..chars.len() as u32).collect::<Vec<_>>()),
        String::from_iter(&chars)
    );
    // Evaluating the run's held-out tail gives the loss training reported for it.
    let test_loss = value_after(&out, "test:", "loss");
    let evaluated = kiln_ok(&["eval", "--checkpoint", run_s, "--device", "cpu"]);
    let loss = value_after(&evaluated, "loss", "loss");
    assert!(
        (loss - test_loss).abs() < 1e-3,
        "{loss} vs {test_loss}\n{out}"
    );
    // Learned something: under the uniform loss ln(vocab).
    assert!(test_loss < (vocab.len() as f64).ln(), "{out}");
    // Other text is encoded with the saved vocabulary, which lacks 'Z'.
    let other = dir.join("other.txt");
    std::fs::write(&other, "the Zebra sat on the mat.\n".repeat(10)).unwrap();
    let other = format!("text:{}", other.display());
    let eval_other = [
        "eval",
        "--checkpoint",
        run_s,
        "--data",
        &other,
        "--device",
        "cpu",
    ];
    kiln_fails(&eval_other, 1, "not in the vocabulary");
    // A language model has classes at every position: predict's one class per row
    // does not describe it.
    let ids = dir.join("ids.csv");
    std::fs::write(&ids, "a,b\n1,2\n").unwrap();
    let predict = [
        "predict",
        "--checkpoint",
        run_s,
        "--input",
        ids.to_str().unwrap(),
    ];
    kiln_fails(&predict, 1, "is a language model");

    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let run2 = dir.join("run2");
    let run2 = run2.to_str().unwrap();
    for (data, context, needle) in [
        (
            "text:/no/such/verse.txt".to_string(),
            "8",
            "/no/such/verse.txt",
        ),
        (format!("text:{}", empty.display()), "8", "empty"),
        (data.clone(), "5000", "5000 tokens need a text of at least"),
    ] {
        let args = [
            "train",
            "--data",
            &data,
            "--context",
            context,
            "--out",
            run2,
        ];
        kiln_fails(&args, 1, needle);
    }
    kiln_fails(&["train", "--context", "8", "--out", run2], 1, "--context");
}
