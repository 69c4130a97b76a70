//! ONNX export: exported models pass `onnx.checker` and give, under onnxruntime, what
//! kiln's predict gives. Needs python3 with numpy, onnx and onnxruntime (a missing one
//! fails the test); tests/onnx_check.py does the Python side.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln::data::Scaler;
use kiln::nn::layers::Pool;
use kiln::nn::layers::{Conv, Layer};
use kiln::ops::Activation;
use kiln::{Dense, Device, Graph, Loss, Optimizer, OutputLoss, Sequential, Trainer};
use serde_json::Value;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/onnx_check.py");

/// A fresh, empty folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("onnx")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic values in [-2, 2).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Runs tests/onnx_check.py on `model` with these inputs (name, shape, values).
fn run_onnx(model: &Path, inputs: &[(&str, Vec<usize>, &[f32])]) -> Value {
    let feeds: serde_json::Map<String, Value> = inputs
        .iter()
        .map(|(n, shape, data)| {
            (
                n.to_string(),
                serde_json::json!({"shape": shape, "data": data}),
            )
        })
        .collect();
    let mut child = Command::new("python3")
        .arg(CHECK)
        .arg(model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (the ONNX tests need python3 with numpy, onnx and onnxruntime)");
    let text = Value::Object(feeds).to_string();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "onnx_check.py failed (the ONNX tests need `pip install onnx onnxruntime`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The flattened values of output `name`.
fn output(result: &Value, name: &str) -> Vec<f32> {
    let values = result["values"][name]
        .as_array()
        .unwrap_or_else(|| panic!("no output {name} in {result}"));
    values.iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

/// Within 1e-5, relative or absolute.
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 + 1e-5 * w.abs(),
            "{what}[{i}]: onnxruntime {g}, kiln {w}"
        );
    }
}

/// `model` compiled as a classifier (sparse cross-entropy, Adam) and trained a few steps
/// on `rows` random rows of `width` values, labelled below `classes`, so that its
/// weights and running statistics have moved from their initial values.
fn trained_classifier(model: kiln::Model, width: usize, rows: usize, classes: usize) -> Trainer {
    let mut t = model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(0.01),
            &[],
        )
        .unwrap();
    let x = random(rows * width, 5);
    let y: Vec<f32> = (0..rows).map(|i| (i % classes) as f32).collect();
    for _ in 0..4 {
        t.train_batch(&x, &y).unwrap();
    }
    t
}

/// Exports `t` with `scaler` in front, runs it on raw rows `x` under onnxruntime and
/// checks it against `t.predict` on the scaled rows.
fn export_and_compare(
    t: &mut Trainer,
    name: &str,
    x: &[f32],
    sample: &[usize],
    scaler: Option<&Scaler>,
) -> Value {
    let path = temp_dir(name).join("model.onnx");
    kiln::io::onnx::export(t, scaler, &path).unwrap();
    let rows = x.len() / sample.iter().product::<usize>();
    let shape: Vec<usize> = std::iter::once(rows)
        .chain(sample.iter().copied())
        .collect();
    let result = run_onnx(&path, &[("input", shape, x)]);
    let mut scaled = x.to_vec();
    if let Some(s) = scaler {
        s.transform(&mut scaled).unwrap();
    }
    let want = t.predict(&scaled, 4).unwrap();
    assert_close(&output(&result, "output"), &want, name);
    result
}

#[test]
fn recurrent_layers_match_predict() {
    use kiln::nn::layers::Recurrent;
    let spec = Sequential::new(12)
        .reshape(&[4, 3])
        .add(kiln::Layer::Lstm(Recurrent::new(5).sequences()))
        .gru(4)
        .dense(3);
    let model = spec.build(&Device::cpu(), 3).unwrap();
    let mut t = trained_classifier(model, 12, 6, 3);
    export_and_compare(&mut t, "recurrent", &random(5 * 12, 8), &[12], None);
}

#[test]
fn an_mlp_with_every_activation_matches_predict() {
    let spec = Sequential::new(6)
        .dense(8)
        .relu()
        .dense(8)
        .leaky_relu(0.2)
        .dense(8)
        .sigmoid()
        .dense(8)
        .tanh()
        .dense(8)
        .gelu()
        .dense(8)
        .activation(Activation::Identity)
        .dropout(0.3)
        .dense(3);
    let mut t = trained_classifier(spec.build(&Device::cpu(), 3).unwrap(), 6, 16, 3);
    let x = random(7 * 6, 9);
    let r = export_and_compare(&mut t, "mlp", &x, &[6], None);
    assert_eq!(r["ir_version"], 8);
    assert_eq!(r["opset"], serde_json::json!([17]));
    assert_eq!(r["inputs"]["input"], serde_json::json!(["batch", 6]));
    assert_eq!(r["outputs"]["output"], serde_json::json!(["batch", 3]));
    let ops = r["ops"].to_string();
    for op in [
        "Gemm",
        "Relu",
        "LeakyRelu",
        "Sigmoid",
        "Tanh",
        "Erf",
        "Softmax",
    ] {
        assert!(ops.contains(op), "{op} not in {ops}");
    }
    assert!(!ops.contains("Dropout"), "{ops}");
    // The probabilities of each row sum to 1: the softmax the loss took is back.
    let p = output(&r, "output");
    assert!(p
        .chunks(3)
        .all(|row| (row.iter().sum::<f32>() - 1.0).abs() < 1e-5));
}

#[test]
fn a_cnn_with_batch_norm_matches_predict() {
    let padded_avg = Pool {
        kernel: (3, 3),
        stride: (2, 2),
        padding: (1, 1),
    };
    let spec = Sequential::new(2 * 10 * 10)
        .reshape(&[2, 10, 10])
        .conv2d_with(Conv::new(4, 3).padding(1))
        .batch_norm()
        .relu()
        .max_pool(2)
        .conv2d_with(Conv::new(4, 3).stride(2).padding(2))
        .add(Layer::AvgPool2d(padded_avg))
        .conv2d(3, 3)
        .flatten()
        .dense(6)
        .batch_norm()
        .relu()
        .dense(3)
        .softmax();
    let mut t = trained_classifier(spec.build(&Device::cpu(), 4).unwrap(), 200, 8, 3);
    let mean = t.model.buffer("2.running_mean").unwrap().to_vec().unwrap();
    assert!(
        mean.iter().any(|&m| m.abs() > 1e-3),
        "running mean {mean:?}"
    );
    let x = random(5 * 200, 11);
    let r = export_and_compare(&mut t, "cnn", &x, &[200], None);
    let ops = r["ops"].to_string();
    for op in [
        "Conv",
        "BatchNormalization",
        "MaxPool",
        "AveragePool",
        "Flatten",
        "Reshape",
    ] {
        assert!(ops.contains(op), "{op} not in {ops}");
    }
}

/// examples/mnist_cnn's network with `--bn`, at its real size: two blocks of conv, batch
/// norm, relu and max pooling (32 and 64 filters), dense 128, relu, dense 10.
#[test]
fn the_mnist_cnn_with_batch_norm_matches_predict() {
    let block = |s: Sequential, filters| s.conv2d(filters, 3).batch_norm().relu().max_pool(2);
    let spec = block(block(Sequential::image(1, 28, 28), 32), 64)
        .flatten()
        .dense(128)
        .relu()
        .dense(10);
    let mut t = trained_classifier(spec.build(&Device::cpu(), 5).unwrap(), 784, 8, 10);
    let x = random(3 * 784, 12);
    let r = export_and_compare(&mut t, "mnist-cnn", &x, &[1, 28, 28], None);
    let ops = r["ops"].to_string();
    for op in ["Conv", "BatchNormalization", "MaxPool", "Gemm"] {
        assert!(ops.contains(op), "{op} not in {ops}");
    }
}

#[test]
fn an_image_model_with_global_pooling_matches_predict() {
    let spec = Sequential::image(3, 6, 6)
        .batch_norm()
        .conv2d(4, 3)
        .gelu()
        .global_avg_pool()
        .dense(2)
        .sigmoid();
    let model = spec.build(&Device::cpu(), 5).unwrap();
    let mut t = model
        .compile(
            Loss::BinaryCrossEntropy { from_logits: false },
            Optimizer::adam(0.01),
            &[],
        )
        .unwrap();
    let x = random(6 * 108, 3);
    let y: Vec<f32> = (0..12).map(|i| (i % 2) as f32).collect();
    for _ in 0..3 {
        t.train_batch(&x, &y).unwrap();
    }
    // Per-feature scaling, written in front in the input's [c, h, w] shape.
    let scaler = Scaler {
        shift: random(108, 41),
        divisor: random(108, 42).iter().map(|d| d.abs() + 0.5).collect(),
    };
    let raw: Vec<f32> = x.iter().map(|v| v * 3.0 + 1.0).collect();
    let r = export_and_compare(&mut t, "image", &raw, &[3, 6, 6], Some(&scaler));
    assert_eq!(r["inputs"]["input"], serde_json::json!(["batch", 3, 6, 6]));
    assert!(r["ops"].to_string().contains("GlobalAveragePool"));
}

/// A residual graph: two named inputs, add, multiply, concatenate, layer norm and a
/// dense layer applied twice with one set of weights.
fn residual_graph() -> Graph {
    let mut g = Graph::new();
    g.input("a", &[6]).input("b", &[4]);
    let relu = Layer::Activation(Activation::Relu);
    let sigmoid = Layer::Activation(Activation::Sigmoid);
    g.layer_with_activation("h", Layer::Dense(Dense::new(6)), relu, &["a"])
        .add("sum", &["a", "h"])
        .shared("h2", "h", &["sum"])
        .layer("ln", Layer::LayerNorm(Default::default()), &["h2"])
        .layer_with_activation("g", Layer::Dense(Dense::new(6)), sigmoid, &["b"])
        .multiply("gate", &["ln", "g"])
        .concatenate("cat", &["gate", "b"])
        .layer("scores", Layer::Dense(Dense::new(3)), &["cat"])
        .output("scores");
    g
}

#[test]
fn a_residual_graph_with_a_shared_layer_matches_predict() {
    let mut t = trained_classifier(
        residual_graph().build(&Device::cpu(), 6).unwrap(),
        10,
        12,
        3,
    );
    let (a, b) = (random(5 * 6, 21), random(5 * 4, 22));
    let packed = t.model.pack_inputs(&[&a, &b]).unwrap();
    let want = t.predict(&packed, 4).unwrap();
    let path = temp_dir("graph").join("model.onnx");
    kiln::io::onnx::export(&t, None, &path).unwrap();
    let r = run_onnx(&path, &[("a", vec![5, 6], &a), ("b", vec![5, 4], &b)]);
    assert_close(&output(&r, "scores"), &want, "graph");
    assert_eq!(r["inputs"]["b"], serde_json::json!(["batch", 4]));
    let ops = r["ops"].to_string();
    for op in ["Sum", "Mul", "Concat", "LayerNormalization"] {
        assert!(ops.contains(op), "{op} not in {ops}");
    }
    // The shared layer's weights are stored once.
    let names = r["initializers"].to_string();
    assert_eq!(names.matches("\"h.weight\"").count(), 1, "{names}");
    assert!(!names.contains("h2."), "{names}");
}

/// Runs the kiln binary with `args`.
fn kiln(args: &[&OsStr]) -> std::process::Output {
    Command::new(KILN).args(args).output().unwrap()
}

/// Runs the kiln binary with `args`, insisting that it succeeds; its standard output.
fn kiln_ok(args: &[&OsStr]) -> String {
    let out = kiln(args);
    assert!(
        out.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kiln export --checkpoint checkpoint --onnx onnx`.
fn export(checkpoint: &Path, onnx: &Path) -> std::process::Output {
    let args = [
        OsStr::new("export"),
        OsStr::new("--checkpoint"),
        checkpoint.as_os_str(),
    ];
    kiln(&[&args[..], &[OsStr::new("--onnx"), onnx.as_os_str()]].concat())
}

/// A run of `kiln train` on the built-in digits with `--scale scale`.
fn train_digits(dir: &Path, scale: &str) {
    let args = [
        "train", "--device", "cpu", "--epochs", "1", "--layers", "64,16,10",
    ];
    let mut args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    args.extend([
        OsStr::new("--scale"),
        OsStr::new(scale),
        OsStr::new("--out"),
    ]);
    args.push(dir.as_os_str());
    kiln_ok(&args);
}

/// Raw digit rows (pixel values 0..16) as a CSV of 64 columns, and the values.
fn raw_digits(path: &Path, rows: usize) -> Vec<f32> {
    let x: Vec<f32> = random(rows * 64, 8)
        .iter()
        .map(|v| ((v + 2.0) * 4.0).floor())
        .collect();
    let header: Vec<String> = (0..64).map(|i| format!("p{i}")).collect();
    let mut text = header.join(",") + "\n";
    for row in x.chunks(64) {
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        text += &(cells.join(",") + "\n");
    }
    std::fs::write(path, text).unwrap();
    x
}

/// `kiln predict`'s probabilities for the rows of `input`.
fn predicted(dir: &Path, input: &Path) -> Vec<f32> {
    let args = ["predict", "--device", "cpu", "--checkpoint"];
    let mut args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    args.extend([dir.as_os_str(), OsStr::new("--input"), input.as_os_str()]);
    kiln_ok(&args)
        .lines()
        .skip(1)
        .flat_map(|l| {
            l.split(',')
                .skip(2)
                .map(|v| v.parse::<f32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_cli_exports_the_input_scaling() {
    for scale in ["minmax", "standardize", "16"] {
        let dir = temp_dir(&format!("scaled-{scale}"));
        let run = dir.join("run");
        train_digits(&run, scale);
        let onnx = dir.join("digits.onnx");
        let out = export(&run, &onnx);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let csv = dir.join("rows.csv");
        let x = raw_digits(&csv, 6);
        let r = run_onnx(&onnx, &[("input", vec![6, 64], &x)]);
        let want = predicted(&run, &csv);
        // predict prints probabilities with 6 decimals.
        let got = output(&r, "output");
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5,
                "--scale {scale}: onnx {g}, predict {w}"
            );
        }
        assert!(r["ops"].to_string().contains("Div"), "{scale}");
    }
}

/// Runs `kiln export` expecting failure; returns its message.
fn export_fails(checkpoint: &Path, onnx: &Path) -> String {
    let out = export(checkpoint, onnx);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    assert!(!onnx.exists(), "a failed export left {}", onnx.display());
    err
}

#[test]
fn exporting_a_missing_or_broken_run_is_a_clear_error() {
    let dir = temp_dir("errors");
    let onnx = dir.join("m.onnx");
    let err = export_fails(&dir.join("nowhere"), &onnx);
    assert!(err.contains("is not a kiln run folder"), "{err}");
    let run = dir.join("run");
    train_digits(&run, "minmax");
    std::fs::write(run.join("model.safetensors"), b"not a checkpoint").unwrap();
    let err = export_fails(&run, &onnx);
    assert!(err.contains("model.safetensors"), "{err}");
    // The library reports the same as a typed error.
    let lib = kiln::io::load_trainer(dir.join("nowhere"), &Device::cpu());
    assert!(lib.is_err());
}

#[test]
fn a_graph_with_several_outputs_matches_predict_outputs() {
    // "ht" is an output that also feeds "out"; "out" trains on logits and "p" hands its
    // sigmoid to the loss, yet both give probabilities.
    let dense = |units| Layer::Dense(Dense::new(units));
    let mut g = Graph::new();
    g.input("x", &[4])
        .layer("h", dense(5), &["x"])
        .layer("ht", Layer::Activation(Activation::Tanh), &["h"])
        .layer("out", dense(3), &["ht"])
        .layer_with_activation(
            "p",
            dense(1),
            Layer::Activation(Activation::Sigmoid),
            &["x"],
        )
        .output("ht")
        .output("out")
        .output("p");
    // The losses in another order than the outputs.
    let losses = [
        OutputLoss::new("p", Loss::BinaryCrossEntropy { from_logits: false }),
        OutputLoss::new("ht", Loss::Mse),
        OutputLoss::new("out", Loss::SparseCategoricalCrossEntropy),
    ];
    let model = g.build(&Device::cpu(), 8).unwrap();
    let mut t = model
        .compile_outputs(&losses, Optimizer::adam(0.01))
        .unwrap();
    let rows = 6;
    let x = random(rows * 4, 30);
    let labels: Vec<f32> = (0..rows).map(|r| (r % 3) as f32).collect();
    let bits: Vec<f32> = (0..rows).map(|r| (r % 2) as f32).collect();
    let y = t
        .pack_targets(&[&bits, &random(rows * 5, 31), &labels])
        .unwrap();
    for _ in 0..3 {
        t.train_batch(&x, &y).unwrap();
    }
    let path = temp_dir("outputs").join("model.onnx");
    kiln::io::onnx::export(&t, None, &path).unwrap();
    let r = run_onnx(&path, &[("x", vec![rows, 4], &x)]);
    for (name, want) in t.predict_outputs(&x, 4).unwrap() {
        assert_close(&output(&r, &name), &want, &name);
    }
    assert_eq!(r["outputs"]["p"], serde_json::json!(["batch", 1]));
}

#[test]
fn a_sequence_model_matches_predict() {
    // Token ids -> embeddings + positions -> per-position dense, GELU, layer norm ->
    // [T, V] probabilities: Cast + Gather, Add, MatMul, LayerNormalization, Softmax(-1).
    let (context, vocab) = (6, 5);
    let spec = Sequential::new(context)
        .embedding(vocab, 4)
        .positional_embedding(context)
        .dense(8)
        .gelu()
        .layer_norm()
        .dense(vocab)
        .softmax();
    let mut t = spec
        .build(&Device::cpu(), 3)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(0.01),
            &[],
        )
        .unwrap();
    let x: Vec<f32> = (0..4 * context).map(|i| ((i * 7) % vocab) as f32).collect();
    let y: Vec<f32> = x.iter().map(|&v| (v + 1.0) % vocab as f32).collect();
    for _ in 0..4 {
        t.train_batch(&x, &y).unwrap();
    }
    let r = export_and_compare(&mut t, "sequence", &x, &[context], None);
    let ops = r["ops"].to_string();
    for op in ["Gather", "MatMul", "LayerNormalization", "Softmax"] {
        assert!(ops.contains(op), "{op} not in {ops}");
    }
}

/// Causal self-attention feeding cross-attention to a second input: the MatMul, Slice,
/// Reshape, Transpose and Softmax nodes the layer exports give, under onnxruntime, what
/// predict gives.
#[test]
fn self_and_cross_attention_match_predict() {
    use kiln::nn::layers::MultiHeadAttention;
    let (t, s, d) = (4, 3, 8);
    let mut g = Graph::new();
    g.input("x", &[t * d])
        .input("m", &[s * d])
        .layer("xs", Layer::Reshape(vec![t, d]), &["x"])
        .layer("ms", Layer::Reshape(vec![s, d]), &["m"])
        .layer(
            "self",
            Layer::MultiHeadAttention(MultiHeadAttention::new(2).causal()),
            &["xs"],
        )
        .layer(
            "cross",
            Layer::MultiHeadAttention(MultiHeadAttention::new(4)),
            &["self", "ms"],
        )
        .layer("flat", Layer::Reshape(vec![t * d]), &["cross"])
        .layer("scores", Layer::Dense(Dense::new(3)), &["flat"])
        .output("scores");
    let mut tr = trained_classifier(g.build(&Device::cpu(), 3).unwrap(), t * d + s * d, 6, 3);
    let (x, m) = (random(5 * t * d, 31), random(5 * s * d, 32));
    let packed = tr.model.pack_inputs(&[&x, &m]).unwrap();
    let want = tr.predict(&packed, 5).unwrap();
    let path = temp_dir("attention").join("model.onnx");
    kiln::io::onnx::export(&tr, None, &path).unwrap();
    let r = run_onnx(
        &path,
        &[("x", vec![5, t * d], &x), ("m", vec![5, s * d], &m)],
    );
    assert_close(&output(&r, "scores"), &want, "attention");
    let ops = r["ops"].to_string();
    for op in ["Softmax", "Slice", "Transpose"] {
        assert!(ops.contains(op), "{op} not in {ops}");
    }
}
