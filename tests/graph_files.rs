//! Graph model files and checkpoints: round trips, exact resumption, every bad input a
//! typed error naming the nodes (and the line), and files written by earlier versions
//! (tests/fixtures/) still loading and predicting what they predicted when written.
use kiln::io::{self, ModelFile};
use kiln::{
    Activation, Dense, Device, Error, FitOptions, Graph, GraphError, Layer, Loss, Metric,
    Optimizer, Sequential,
};
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

// ---------------------------------------------------------------- graph model files

/// A residual block, a shared layer and a concatenation, as a model file.
const RESIDUAL: &str = r#"
outputs = ["out"]

[[inputs]]
name = "x"
shape = [6]

[[nodes]]
name = "d1"
dense = 6
inputs = ["x"]

[[nodes]]
name = "r1"
activation = "relu"
inputs = ["d1"]

[[nodes]]
name = "res"
add = true
inputs = ["x", "r1"]

[[nodes]]
name = "d1_again"
shares = "d1"
inputs = ["res"]

[[nodes]]
name = "both"
concatenate = true
inputs = ["d1_again", "x"]

[[nodes]]
name = "out"
dense = 3
inputs = ["both"]

[training]
loss = "sparse_categorical_crossentropy"
optimizer = "adam"
lr = 0.01
seed = 7
"#;

fn residual_graph() -> Graph {
    let mut g = Graph::new();
    g.input("x", &[6])
        .layer("d1", Layer::Dense(Dense::new(6)), &["x"])
        .layer("r1", Layer::Activation(Activation::Relu), &["d1"])
        .add("res", &["x", "r1"])
        .shared("d1_again", "d1", &["res"])
        .concatenate("both", &["d1_again", "x"])
        .layer("out", Layer::Dense(Dense::new(3)), &["both"])
        .output("out");
    g
}

fn train_data() -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = (0..32 * 6)
        .map(|i| ((i * 13 % 29) as f32 / 14.0) - 1.0)
        .collect();
    let y: Vec<f32> = x
        .chunks(6)
        .map(|r| if r[0] > 0.0 { 1.0 } else { 2.0 })
        .collect();
    (x, y)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-gf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn graph_model_files_round_trip() {
    let file = ModelFile::parse(RESIDUAL).unwrap();
    assert!(file.is_graph());
    let graph = file.to_graph().unwrap();
    assert_eq!(graph, residual_graph());
    let back = ModelFile::from_graph(&graph);
    let text = back.to_toml();
    let again = ModelFile::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(again.to_graph().unwrap(), graph);
    assert_eq!(again, back);
    // A built graph model writes the same file, training section included.
    let device = Device::cpu();
    let model = file.build(&device, 7).unwrap();
    assert_eq!(ModelFile::from_model(&model).unwrap(), back);
    let trainer = model
        .compile(file.loss().unwrap(), file.optimizer().unwrap(), &[])
        .unwrap();
    let written = ModelFile::from_trainer(&trainer).unwrap();
    assert_eq!(written.to_graph().unwrap(), graph);
    assert!(file.to_sequential().is_err());
}

#[test]
fn graph_checkpoints_resume_bit_for_bit() {
    let device = Device::cpu();
    let (x, y) = train_data();
    let compile = |m: kiln::Model| {
        m.compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(0.01),
            &[Metric::Accuracy],
        )
        .unwrap()
    };
    let mut straight = compile(residual_graph().build(&device, 3).unwrap());
    straight.fit(&x, &y, FitOptions::new(3, 8)).unwrap();

    let mut first = compile(residual_graph().build(&device, 3).unwrap());
    first.fit(&x, &y, FitOptions::new(1, 8)).unwrap();
    let dir = temp_dir("resume");
    io::save(&dir, &first).unwrap();
    let mut resumed = io::load_trainer(&dir, &device).unwrap();
    assert_eq!(resumed.model.graph(), Some(&residual_graph()));
    let mut names: Vec<&str> = resumed
        .model
        .params()
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["d1.bias", "d1.weight", "out.bias", "out.weight"]);
    resumed.fit(&x, &y, FitOptions::new(2, 8)).unwrap();
    for (a, b) in straight.model.params().iter().zip(resumed.model.params()) {
        assert_eq!(a.name, b.name);
        assert_eq!(
            a.value.to_vec().unwrap(),
            b.value.to_vec().unwrap(),
            "{}",
            a.name
        );
    }
    // The weights alone, as a file.
    let file = dir.join("weights.safetensors");
    io::save_model(&file, &straight.model).unwrap();
    let mut model = io::load_model(&file, &device).unwrap();
    let rows = &x[..5 * 6];
    assert_eq!(
        model.forward(rows).unwrap(),
        straight.model.forward(rows).unwrap()
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The graph error of a model file, with its line; panics on anything else.
fn file_error(text: &str) -> (usize, GraphError) {
    match ModelFile::parse(text) {
        Err(Error::Graph(GraphError::InFile { line, error, .. })) => (line, *error),
        Err(e) => panic!("expected a GraphError with a line, got {e}\n{text}"),
        Ok(_) => panic!("expected a GraphError, got a file\n{text}"),
    }
}

/// RESIDUAL with one line replaced.
fn with(from: &str, to: &str) -> String {
    assert!(RESIDUAL.contains(from), "{from}");
    RESIDUAL.replacen(from, to, 1)
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).unwrap()].matches('\n').count() + 1
}

/// The graph error of `text`, checking that its line is the first holding `needle`.
fn bad(text: &str, needle: &str) -> GraphError {
    let (line, e) = file_error(text);
    assert_eq!(line, line_of(text, needle), "{e}");
    e
}

#[test]
fn each_bad_graph_file_names_the_nodes_and_the_line() {
    let cycle = with(
        "dense = 6\ninputs = [\"x\"]",
        "dense = 6\ninputs = [\"res\"]",
    );
    let want = GraphError::Cycle(vec!["d1".into(), "r1".into(), "res".into()]);
    assert_eq!(bad(&cycle, "inputs = [\"res\"]"), want);

    let spare = "[[inputs]]\nname = \"spare\"\nshape = [2]\n\n[[nodes]]\nname = \"d1\"";
    let unused = with("[[nodes]]\nname = \"d1\"", spare);
    assert_eq!(
        bad(&unused, "\"spare\""),
        GraphError::Unused("spare".into())
    );

    let unreached = with("relu\"\ninputs = [\"d1\"]", "relu\"\ninputs = []");
    let e = bad(&unreached, "name = \"r1\"");
    assert!(
        matches!(&e, GraphError::Unreached { node, .. } if node == "r1"),
        "{e}"
    );

    let add = with("dense = 6", "dense = 5");
    let e = bad(&add, "inputs = [\"x\", \"r1\"]");
    assert!(
        matches!(&e, GraphError::MergeShapes { node, .. } if node == "res"),
        "{e}"
    );

    let concat = with("shape = [6]", "shape = [6, 2, 2]")
        .replace("dense = 6", "conv2d = 6\nkernel = 1")
        .replace("shares = \"d1\"", "global_avg_pool = true");
    let e = bad(&concat, "inputs = [\"d1_again\", \"x\"]");
    assert!(
        matches!(&e, GraphError::MergeShapes { node, .. } if node == "both"),
        "{e}"
    );

    let twice = with("name = \"r1\"", "name = \"d1\"");
    let e = bad(&twice, "name = \"d1\"\nactivation");
    assert_eq!(e, GraphError::DuplicateName("d1".into()));

    // d1's weights (made for 6 features) applied to the 12 of a concatenation.
    let misfit = with("inputs = [\"res\"]", "inputs = [\"both\"]")
        .replace("[\"d1_again\", \"x\"]", "[\"res\", \"x\"]")
        .replace("[\"both\"]\n\n[training]", "[\"d1_again\"]\n\n[training]");
    let e = bad(&misfit, "inputs = [\"both\"]");
    assert!(
        matches!(&e, GraphError::LayerShape { node, .. } if node == "d1_again"),
        "{e}"
    );

    for (from, to, node, missing) in [
        ("[\"x\", \"r1\"]", "[\"x\", \"r2\"]", "res", "r2"),
        ("shares = \"d1\"", "shares = \"d9\"", "d1_again", "d9"),
        (
            "outputs = [\"out\"]",
            "outputs = [\"nope\"]",
            "outputs",
            "nope",
        ),
    ] {
        let text = with(from, to);
        let want = GraphError::UnknownNode {
            node: node.into(),
            missing: missing.into(),
        };
        assert_eq!(bad(&text, to), want);
    }
    // A node's own keys are checked by its layer, naming the key and the line.
    for (from, to, key) in [
        ("dense = 3", "dense = 0", "nodes[5].dense"),
        (
            "dense = 3",
            "dropout = 0.5\nactivation = \"relu\"",
            "nodes[5].activation",
        ),
        ("add = true", "add = true\ndense = 2", "nodes[2].add"),
        ("shape = [6]", "shape = [0]", "inputs[0].shape"),
        (
            "outputs = [\"out\"]",
            "outputs = [\"out\"]\ninput = 6",
            "input",
        ),
    ] {
        let text = with(from, to);
        match ModelFile::parse(&text) {
            Err(Error::Format { detail, .. }) => {
                assert!(detail.contains(key) && detail.contains("line "), "{detail}")
            }
            other => panic!("{to}: expected a Format error, got {other:?}"),
        }
    }
    // Unknown keys in a node are refused too.
    assert!(ModelFile::parse(&with("add = true", "add = true\nsplines = 3")).is_err());
}

#[test]
fn a_two_input_graph_with_image_layers_round_trips_and_resumes() {
    let mut g = Graph::new();
    g.input("tab", &[3])
        .input("img", &[1, 4, 4])
        .layer(
            "conv",
            Layer::Conv2d(kiln::nn::layers::Conv::new(2, 3)),
            &["img"],
        )
        .layer("bn", Layer::BatchNorm(Default::default()), &["conv"])
        .layer("flat", Layer::Flatten, &["bn"])
        .layer("drop", Layer::Dropout(0.25), &["tab"])
        .concatenate("both", &["flat", "drop"])
        .layer("out", Layer::Dense(Dense::new(2)), &["both"])
        .output("out");
    let text = ModelFile::from_graph(&g).to_toml();
    let file = ModelFile::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(file.to_graph().unwrap(), g);
    let device = Device::cpu();
    let model = file.build(&device, 5).unwrap();
    assert!(model.buffer("bn.running_mean").is_some() && model.param("conv.weight").is_some());
    let dir = temp_dir("two-inputs");
    io::save_model(&dir, &model).unwrap();
    let back = io::load_model(&dir, &device).unwrap();
    assert_eq!(back.graph(), Some(&g));
    assert_eq!(back.input_width(), 3 + 16);
    std::fs::remove_dir_all(&dir).ok();
}

/// A graph whose hidden node is `dense = 6` with `activation = "relu"` in one node, or
/// as a dense node and a relu node (the relu nodes declared last, so that the weights of
/// both forms are seeded alike).
fn fused_or_split(fused: bool) -> String {
    let node = |name: &str, keys: &str, inputs: &str| {
        format!("[[nodes]]\nname = \"{name}\"\n{keys}\ninputs = [{inputs}]\n")
    };
    let (h, h2) = if fused {
        ("h", "h2")
    } else {
        ("h_lin", "h2_relu")
    };
    let relu = "activation = \"relu\"";
    let mut text = "outputs = [\"out\"]\n[[inputs]]\nname = \"x\"\nshape = [6]\n".to_string();
    let dense = if fused {
        format!("dense = 6\n{relu}")
    } else {
        "dense = 6".into()
    };
    text += &node(h, &dense, "\"x\"");
    text += &node("res", "add = true", "\"x\", \"h\"");
    text += &node("h2", &format!("shares = \"{h}\""), "\"res\"");
    text += &node("out", "dense = 3", &format!("\"{h2}\""));
    if !fused {
        text += &node("h2_relu", relu, "\"h2\"");
        text += &node("h", relu, "\"h_lin\"");
    }
    text
}

/// A node with a layer and an activation (Keras's `Dense(6, activation="relu")`) keeps the
/// node's weight names, gives its output after the activation (a node sharing it applies
/// it too), trains as the two-node form does, and round-trips through its file.
#[test]
fn a_node_with_an_activation_is_its_layer_then_the_activation() {
    let device = Device::cpu();
    let file = ModelFile::parse(&fused_or_split(true)).unwrap();
    let graph = file.to_graph().unwrap();
    assert_eq!(
        graph.nodes[0].activation,
        Some(Layer::Activation(Activation::Relu))
    );
    let text = ModelFile::from_graph(&graph).to_toml();
    assert!(text.contains("dense = 6\nactivation = \"relu\""), "{text}");
    assert_eq!(ModelFile::parse(&text).unwrap().to_graph().unwrap(), graph);
    let fused = file.build(&device, 7).unwrap();
    assert!(fused.param("h.weight").is_some() && fused.param("h.bias").is_some());
    assert!(fused.summary().contains("h (relu)"), "{}", fused.summary());
    assert_eq!(ModelFile::from_model(&fused).unwrap().to_toml(), text);
    let split = ModelFile::parse(&fused_or_split(false)).unwrap();
    let split = split.build(&device, 7).unwrap();
    // The same weights under the dense node's name in each form.
    for (a, b) in [("h", "h_lin"), ("out", "out")] {
        for field in ["weight", "bias"] {
            let (a, b) = (format!("{a}.{field}"), format!("{b}.{field}"));
            let (a, b) = (fused.param(&a).unwrap(), split.param(&b).unwrap());
            assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap());
        }
    }
    let (x, y) = train_data();
    let mut losses = Vec::new();
    for model in [fused, split] {
        let loss = Loss::SparseCategoricalCrossEntropy;
        let mut t = model.compile(loss, Optimizer::adam(0.01), &[]).unwrap();
        let history = t.fit(&x, &y, FitOptions::new(2, 8)).unwrap();
        losses.push((history.series("loss"), t.predict(&x[..30], 5).unwrap()));
    }
    assert_eq!(losses[0], losses[1]);
}
