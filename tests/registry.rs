//! The layer registry is complete: every registered layer writes a model-file entry that
//! reads back as the same layer, and an entry's keys are checked by the layer it names.

use kiln::io::{LayerSpec, ModelFile};
use kiln::nn::layers::{Conv, MultiHeadAttention, Pool, Recurrent, VARIANTS};
use kiln::ops::batch_norm::BatchNorm;
use kiln::ops::layer_norm::LayerNorm;
use kiln::{Activation, Dense, Error, Init, Layer};

/// One layer of each registered kind, with options away from their defaults, and
/// whether it takes image samples.
fn samples() -> Vec<(Layer, bool)> {
    let dense = Dense::with_inputs(7, 3)
        .no_bias()
        .kernel_init(Init::HeNormal)
        .regularize(0.25, 0.5);
    vec![
        (Layer::Conv2d(Conv::new(4, 3).stride(2).padding(1)), true),
        (Layer::MaxPool2d(Pool::new(2)), true),
        (Layer::AvgPool2d(Pool::new(4)), true),
        (Layer::GlobalAvgPool, true),
        (Layer::Flatten, true),
        (Layer::Reshape(vec![2, 32]), true),
        (Layer::Dense(dense), false),
        (Layer::Activation(Activation::LeakyRelu(0.2)), false),
        (Layer::Softmax, false),
        (Layer::Dropout(0.25), false),
        (
            Layer::BatchNorm(BatchNorm {
                eps: 1e-3,
                momentum: 0.2,
            }),
            true,
        ),
        (Layer::LayerNorm(LayerNorm { eps: 1e-4 }), false),
        (Layer::Embedding(kiln::Embedding::new(11, 5)), false),
        (Layer::PositionalEmbedding(7), false),
        (
            Layer::MultiHeadAttention(MultiHeadAttention::new(4).causal()),
            false,
        ),
        (Layer::Lstm(Recurrent::new(4).sequences()), false),
        (Layer::Gru(Recurrent::new(3)), false),
    ]
}

#[test]
fn every_registered_layer_round_trips_through_its_entry() {
    let mut covered: Vec<&str> = samples().iter().map(|(l, _)| l.variant()).collect();
    covered.sort_unstable();
    let mut registered = VARIANTS.to_vec();
    registered.sort_unstable();
    assert_eq!(covered, registered, "a sample for each registered layer");
    for (layer, image) in samples() {
        let file = ModelFile {
            input: if image { 0 } else { 7 },
            image: image.then_some([2, 8, 8]),
            layers: vec![layer.def().entry()],
            ..ModelFile::default()
        };
        let text = file.to_toml();
        let back = ModelFile::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, file, "{text}");
        assert_eq!(back.to_sequential().unwrap().layers, vec![layer], "{text}");
    }
}

fn detail(text: &str) -> String {
    match ModelFile::parse(text) {
        Err(Error::Format { detail, .. }) => detail,
        other => panic!("{text}: expected a format error, got {other:?}"),
    }
}

#[test]
fn entry_keys_are_checked_by_the_layer_they_name() {
    let cases = [
        // A key no layer takes, a key of another layer, two layers in one entry.
        (
            "[[layers]]\ndense = 3\nunits = 5",
            "line 4: layers[0].units: unknown key `units`",
        ),
        (
            "[[layers]]\nflatten = true\nkernel = 3",
            "line 4: layers[0].kernel: only conv2d",
        ),
        (
            "[[layers]]\ndense = 3\ndropout = 0.5",
            "line 4: layers[0].dropout: one layer per entry",
        ),
        (
            "[[layers]]\ndropout = 0.5\nactivation = \"relu\"",
            "line 4: layers[0].activation",
        ),
        // Typed values, each naming its key.
        (
            "[[layers]]\nconv2d = 2.5",
            "line 3: layers[0].conv2d: 2.5 is not a whole number",
        ),
        (
            "[[layers]]\nbatch_norm = 1",
            "line 3: layers[0].batch_norm: 1 is not true or false",
        ),
        ("[[layers]]\nreshape = [1, -2]", "line 3: layers[0].reshape"),
        (
            "[[layers]]\nconv2d = 2\npadding = \"full\"",
            "line 4: layers[0].padding",
        ),
        (
            "[[layers]]\nbatch_norm = true\nmomentum = 2",
            "line 4: layers[0].momentum",
        ),
    ];
    for (text, want) in cases {
        let text = format!("image = [1, 4, 4]\n{text}\n");
        let got = detail(&text);
        assert!(got.contains(want), "{text}: {got}");
    }
}

#[test]
fn entries_are_written_with_their_layers_keys_in_order() {
    let entry = Layer::Dense(Dense::new(4).no_bias()).def().entry();
    assert_eq!(entry, LayerSpec::new("dense", 4).with("use_bias", false));
    // An activation joins the entry of the dense layer before it, after its kind key.
    let s = kiln::Sequential::new(3)
        .dense_with(Dense::new(4).no_bias())
        .relu();
    let text = ModelFile::from_sequential(&s).to_toml();
    assert!(
        text.contains("dense = 4\nactivation = \"relu\"\nuse_bias = false"),
        "{text}"
    );
}

/// Every registered layer has an ONNX form (`LayerDef::onnx`), whose last node writes
/// the output it is given (tests/onnx.rs runs them under onnxruntime).
#[test]
fn every_registered_layer_writes_its_onnx_nodes() {
    use kiln::nn::onnx::{Emit, OnnxGraph};
    for (layer, image) in samples() {
        let def = layer.def();
        let input = match (&layer, image) {
            // Positions are added to [T, D] sequences (exported with T = max_positions).
            (Layer::PositionalEmbedding(max), _) => vec![*max, 3],
            (Layer::MultiHeadAttention(_), _) => vec![3, 8],
            (Layer::Lstm(_) | Layer::Gru(_), _) => vec![5, 7],
            (_, true) => vec![4, 4, 4],
            _ => vec![7],
        };
        let shape = def.output_shape("layer", &input).unwrap();
        let params = def.params(&input, &shape);
        let mut graph = OnnxGraph::new();
        let mut cx = Emit {
            graph: &mut graph,
            name: "layer",
            inputs: vec!["x".into()],
            shape: shape.clone(),
            params: params
                .iter()
                .map(|p| format!("layer.{}", p.field))
                .collect(),
            buffers: def
                .buffer_channels(&shape)
                .map(|_| ["layer.running_mean".into(), "layer.running_var".into()]),
            output: "y".into(),
        };
        def.onnx(&mut cx)
            .unwrap_or_else(|e| panic!("{}: {e}", def.describe()));
        let last = graph.nodes.last().expect("at least one node");
        assert_eq!(last.outputs, ["y"], "{}", def.describe());
        assert!(
            graph.nodes.iter().all(|n| n.op != "Dropout"),
            "{}",
            def.describe()
        );
    }
}
