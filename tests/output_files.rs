//! Per-output training in model files and checkpoints: `[training.outputs.NAME]` tables
//! parse and round-trip, each bad table is an error naming the key and its line, a
//! two-output graph file trains with its metrics per output in the History, and a
//! checkpoint of a `compile_outputs` trainer resumes bit for bit.
mod common;
use common::*;
use kiln::io::{self, ModelFile, OutputSpec};
use kiln::{Device, Error, FitOptions, Loss, Metric, Optimizer, OutputLoss, Trainer, Validation};

/// x [4] -> trunk (dense 32, relu) -> class (dense 3, logits), and trunk -> value (dense 1).
const TWO_HEADS: &str = r#"outputs = ["class", "value"]

[[inputs]]
name = "x"
shape = [4]

[[nodes]]
name = "trunk"
dense = 32
inputs = ["x"]

[[nodes]]
name = "trunk_relu"
activation = "relu"
inputs = ["trunk"]

[[nodes]]
name = "class"
dense = 3
inputs = ["trunk_relu"]

[[nodes]]
name = "value"
dense = 1
inputs = ["trunk_relu"]

[training]
optimizer = "adam"
lr = 0.01
seed = 1
metrics = ["accuracy"]

[training.outputs.class]
loss = "sparse_categorical_crossentropy"

[training.outputs.value]
loss = "mse"
weight = 0.5
metrics = ["mse"]
"#;

fn expected_outputs() -> Vec<OutputLoss> {
    vec![
        OutputLoss::new("class", Loss::SparseCategoricalCrossEntropy).metrics(&[Metric::Accuracy]),
        OutputLoss::new("value", Loss::Mse)
            .weight(0.5)
            .metrics(&[Metric::Mse]),
    ]
}

#[test]
fn output_tables_parse_and_round_trip() {
    let file = ModelFile::parse(TWO_HEADS).unwrap();
    let tables = file.training.as_ref().unwrap().outputs.as_ref().unwrap();
    assert_eq!(
        tables["value"],
        OutputSpec {
            loss: Some("mse".into()),
            weight: Some(0.5),
            metrics: Some(vec!["mse".into()]),
            ..OutputSpec::default()
        }
    );
    let again = ModelFile::parse(&file.to_toml()).unwrap();
    assert_eq!(again, file);
    let trainer = file.trainer(&Device::cpu()).unwrap();
    assert_eq!(trainer.output_losses().unwrap(), expected_outputs());
    // The file written from the trainer names every output's setup and reads back the same.
    let written = ModelFile::from_trainer(&trainer).unwrap();
    let text = written.to_toml();
    assert!(text.contains("[training.outputs.value]"), "{text}");
    let back = ModelFile::parse(&text).unwrap();
    let names = back.outputs.iter().map(String::as_str).collect::<Vec<_>>();
    let training = back.training.unwrap();
    assert_eq!(training.output_losses(&names).unwrap(), expected_outputs());
    // Defaults: an output with no table, or a table with no loss, takes the section's.
    let defaults = TWO_HEADS
        .replace(
            "[training.outputs.class]\nloss = \"sparse_categorical_crossentropy\"\n",
            "",
        )
        .replace(
            "metrics = [\"accuracy\"]",
            "loss = \"mae\"\nmetrics = [\"mae\"]",
        );
    let file = ModelFile::parse(&defaults).unwrap();
    let got = file
        .training
        .unwrap()
        .output_losses(&["class", "value"])
        .unwrap();
    assert_eq!(
        got[0],
        OutputLoss::new("class", Loss::Mae).metrics(&[Metric::Mae])
    );
    assert_eq!(got[1], expected_outputs()[1]);
}

/// TWO_HEADS with one piece of text replaced.
fn with(from: &str, to: &str) -> String {
    assert!(TWO_HEADS.contains(from), "{from}");
    TWO_HEADS.replacen(from, to, 1)
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).unwrap()].matches('\n').count() + 1
}

/// Checks that `text` is refused with an error naming `key` and the line of `needle`.
fn refused(text: &str, key: &str, needle: &str) -> String {
    match ModelFile::parse(text) {
        Err(Error::Format { detail, .. }) => {
            let line = format!("line {}: {key}:", line_of(text, needle));
            assert!(
                detail.starts_with(&line),
                "{line:?} does not start {detail:?}"
            );
            detail
        }
        Err(e) => panic!("expected a format error, got {e}"),
        Ok(_) => panic!("expected an error for\n{text}"),
    }
}

#[test]
fn each_bad_output_table_names_the_key_and_the_line() {
    let text = with("[training.outputs.value]", "[training.outputs.valu]");
    let e = refused(&text, "training.outputs.valu", "[training.outputs.valu]");
    assert!(e.contains("not an output of the graph"), "{e}");

    let text = with("loss = \"mse\"\n", "");
    let e = refused(
        &text,
        "training.outputs.value.loss",
        "[training.outputs.value]",
    );
    assert!(e.contains("output 'value' has no loss"), "{e}");

    let text = with(
        "[training.outputs.class]\nloss = \"sparse_categorical_crossentropy\"\n",
        "",
    );
    let e = refused(&text, "training.outputs", "[training.outputs.value]");
    assert!(e.contains("output 'class' has no loss"), "{e}");

    for weight in ["-0.5", "nan", "inf"] {
        let text = with("weight = 0.5", &format!("weight = {weight}"));
        let e = refused(&text, "training.outputs.value.weight", "weight =");
        assert!(e.contains("finite weight >= 0"), "{e}");
    }

    let text = with("metrics = [\"mse\"]", "metrics = [\"mse\", \"acuracy\"]");
    let e = refused(
        &text,
        "training.outputs.value.metrics[1]",
        "metrics = [\"mse\", ",
    );
    assert!(e.contains("unknown metric 'acuracy'"), "{e}");

    let text = with("loss = \"mse\"", "loss = \"mse2\"");
    refused(&text, "training.outputs.value.loss", "loss = \"mse2\"");

    let text = with("weight = 0.5", "from_logits = true");
    refused(&text, "training.outputs.value.from_logits", "from_logits");

    let text = with("weight = 0.5", "wieght = 0.5");
    match ModelFile::parse(&text) {
        Err(Error::Format { detail, .. }) => {
            assert!(detail.contains("wieght"), "{detail}");
            assert!(
                detail.starts_with(&format!("line {}", line_of(&text, "wieght"))),
                "{detail}"
            );
        }
        other => panic!("expected an unknown-key error, got {other:?}"),
    }

    let sequential = "input = 4\n\n[[layers]]\ndense = 3\n\n[training]\nloss = \"mse\"\n\n\
                      [training.outputs.out]\nloss = \"mse\"\n";
    refused(sequential, "training.outputs", "[training.outputs.out]");
}

/// Rows of x [4] with a class (the largest of three sums) and a value, packed for `t`.
fn heads_data(t: &Trainer, rows: usize) -> (Vec<f32>, Vec<f32>) {
    let (x, class, value) = heads_rows(rows);
    // Packed in the order the trainer was compiled in.
    let names: Vec<String> = t
        .output_losses()
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    let by_name = |n: &String| if n == "class" { &class[..] } else { &value[..] };
    let ys: Vec<&[f32]> = names.iter().map(by_name).collect();
    (x, t.pack_targets(&ys).unwrap())
}

#[test]
fn a_two_output_graph_file_trains_with_metrics_per_output() {
    let file = ModelFile::parse(TWO_HEADS).unwrap();
    let mut t = file.trainer(&Device::cpu()).unwrap();
    let (x, y) = heads_data(&t, 512);
    let mut opts = FitOptions::new(30, 32);
    opts.validation = Validation::Split(0.25);
    let history = t.fit(&x, &y, opts).unwrap();
    let (first, last) = (&history.epochs[0], history.last().unwrap());
    for key in [
        "class_accuracy",
        "value_mse",
        "val_class_accuracy",
        "val_value_mse",
    ] {
        assert_eq!(history.series(key).len(), 30, "{key}");
    }
    let weighted = last.get("class_loss").unwrap() + 0.5 * last.get("value_loss").unwrap();
    assert!((last.loss - weighted).abs() < 1e-6, "{last:?}");
    assert!(last.loss < first.loss * 0.5, "{first:?} -> {last:?}");
    let (acc, mse) = (
        last.get("val_class_accuracy").unwrap(),
        last.get("val_value_mse").unwrap(),
    );
    assert!(acc > 0.9, "val accuracy {acc}");
    assert!(mse < 0.01, "val mse {mse}");
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("output-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The TWO_HEADS graph compiled through the Rust API, outputs in the other order than
/// the graph declares them (so the checkpoint must keep the compiled order).
fn api_trainer(device: &Device) -> Trainer {
    let file = ModelFile::parse(TWO_HEADS).unwrap();
    let outputs = [
        OutputLoss::new("value", Loss::Mae)
            .weight(0.25)
            .metrics(&[Metric::Mae]),
        OutputLoss::new("class", Loss::SparseCategoricalCrossEntropy)
            .metrics(&[Metric::Accuracy, Metric::F1]),
    ];
    file.build(device, 3)
        .unwrap()
        .compile_outputs(&outputs, Optimizer::adam(0.01))
        .unwrap()
}

#[test]
fn a_two_output_checkpoint_resumes_bit_for_bit() {
    let device = Device::cpu();
    let mut straight = api_trainer(&device);
    let (x, y) = heads_data(&straight, 96);
    let opts = |epochs| FitOptions {
        seed: 9,
        ..FitOptions::new(epochs, 16)
    };
    let full = straight.fit(&x, &y, opts(3)).unwrap();

    let mut first = api_trainer(&device);
    first.fit(&x, &y, opts(1)).unwrap();
    let dir = temp_dir("resume");
    io::save(&dir, &first).unwrap();
    let mut resumed = io::load_trainer(&dir, &device).unwrap();
    assert_eq!(resumed.output_losses(), first.output_losses());
    let rest = resumed.fit(&x, &y, opts(2)).unwrap();
    for (a, b) in straight.model.params().iter().zip(resumed.model.params()) {
        assert_eq!(a.name, b.name);
        assert_eq!(
            a.value.to_vec().unwrap(),
            b.value.to_vec().unwrap(),
            "{}",
            a.name
        );
    }
    let (a, b) = (full.last().unwrap(), rest.last().unwrap());
    assert_eq!(a.loss, b.loss);
    assert_eq!(a.metrics, b.metrics);
    assert!(
        b.get("class_f1").is_some() && b.get("value_mae").is_some(),
        "{b:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
