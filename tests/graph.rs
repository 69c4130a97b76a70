//! Graph models: gradients against central finite differences with every layer placed
//! mid-graph (behind each merge), shared weights and nodes used twice, the CPU reference
//! against the GPU on residual and shared-weight graphs, a Sequential rebuilt as a graph
//! bit for bit, the fusions inside residual blocks, and a typed error for each bad graph.
mod common;
use common::*;
use kiln::nn::layer::{Conv, Pool};
use kiln::ops::batch_norm::BatchNorm;
use kiln::ops::layer_norm::LayerNorm;
use kiln::{
    Activation, Dense, Device, Error, FitOptions, Graph, GraphError, Layer, Loss, Optimizer,
    Sequential, Trainer,
};

/// Rows per batch: enough that batch norm's statistics are not so sharp that the
/// curvature swamps a central difference.
const ROWS: usize = 16;
/// The step of the central differences (batch norm over 16 rows is curved enough that
/// 3e-3 costs ~1%; the image tests, with max pooling and GPU sums, use 3e-3).
const H: f64 = 1e-3;

fn trainer(g: &Graph, device: &Device, loss: Loss) -> Trainer {
    g.build(device, 7)
        .unwrap()
        .compile(loss, Optimizer::sgd(0.1), &[])
        .unwrap()
}

/// Every parameter's gradient (up to 8 elements of each) against central differences of
/// the trainer's own loss, the parameters moved in the model.
fn check_fd(g: &Graph, device: &Device, input: usize, outputs: usize, what: &str) {
    check_fd_rows(g, device, (input, outputs), (ROWS, H), what)
}

/// As [`check_fd`] on a batch of `rows`, with the step `h`.
fn check_fd_rows(
    g: &Graph,
    device: &Device,
    sizes: (usize, usize),
    (rows, h): (usize, f64),
    what: &str,
) {
    let mut t = trainer(g, device, Loss::Mse);
    let x = random(rows * sizes.0, 11);
    let y = random(rows * sizes.1, 12);
    assert_trainer_fd(&mut t, &x, &y, h, what);
}

/// x [4] -> a (dense n, tanh) -> mid (the layer) -> merge(a, mid) -> out (dense 2).
fn flat_graph(n: usize, layer: Layer, merge: &str) -> Graph {
    let mut g = Graph::new();
    g.input("x", &[4])
        .layer("a", Layer::Dense(Dense::new(n)), &["x"])
        .layer("at", Layer::Activation(Activation::Tanh), &["a"])
        .layer("mid", layer, &["at"]);
    match merge {
        "add" => g.add("m", &["at", "mid"]),
        "concatenate" => g.concatenate("m", &["at", "mid"]),
        _ => g.multiply("m", &["at", "mid"]),
    };
    g.layer("out", Layer::Dense(Dense::new(2)), &["m"])
        .output("out");
    g
}

#[test]
fn flat_layers_mid_graph_match_finite_differences() {
    for n in [1usize, 3, 17] {
        let layers = [
            Layer::Dense(Dense::new(n)),
            Layer::Activation(Activation::Tanh),
            Layer::Activation(Activation::Sigmoid),
            Layer::Activation(Activation::Gelu),
            Layer::Softmax,
            Layer::Dropout(0.5),
            Layer::LayerNorm(LayerNorm::default()),
            Layer::BatchNorm(BatchNorm::default()),
        ];
        for layer in layers {
            for merge in ["add", "concatenate", "multiply"] {
                let g = flat_graph(n, layer.clone(), merge);
                let what = format!("{} behind {merge}, width {n}", layer.kind());
                check_fd(&g, &Device::cpu(), 4, 2, &what);
                if n == 3 {
                    check_fd(&g, &gpu(), 4, 2, &what);
                }
            }
        }
    }
}

#[test]
fn image_layers_mid_graph_match_finite_differences() {
    let layers: [(Layer, bool); 6] = [
        (Layer::Conv2d(Conv::new(3, 3).same()), true),
        (Layer::MaxPool2d(Pool::new(2)), true),
        (Layer::AvgPool2d(Pool::new(2)), true),
        (Layer::BatchNorm(BatchNorm::default()), true),
        (Layer::GlobalAvgPool, false),
        (Layer::Flatten, false),
    ];
    for (layer, image_out) in layers {
        // x [2, 6, 6] -> a (conv 3) -> mid; flatten both and concatenate.
        let mut g = Graph::new();
        g.input("x", &[2, 6, 6])
            .layer("a", Layer::Conv2d(Conv::new(3, 3).same()), &["x"])
            .layer("at", Layer::Activation(Activation::Tanh), &["a"])
            .layer("mid", layer.clone(), &["at"])
            .layer("fa", Layer::Flatten, &["at"]);
        let mid = if image_out {
            g.layer("fm", Layer::Flatten, &["mid"]);
            "fm"
        } else {
            "mid"
        };
        g.concatenate("m", &["fa", mid])
            .layer("out", Layer::Dense(Dense::new(2)), &["m"])
            .output("out");
        for device in [Device::cpu(), gpu()] {
            // Few rows: a max-pool window's winner must not change within +-H.
            let what = format!("{} mid-graph", layer.kind());
            check_fd_rows(&g, &device, (72, 2), (4, 3e-3), &what);
        }
        // Channels concatenate too, where both sides are images of one size.
        if image_out && !matches!(layer, Layer::MaxPool2d(_) | Layer::AvgPool2d(_)) {
            let mut g = Graph::new();
            g.input("x", &[2, 6, 6])
                .layer("a", Layer::Conv2d(Conv::new(3, 3).same()), &["x"])
                .layer("at", Layer::Activation(Activation::Tanh), &["a"])
                .layer("mid", layer.clone(), &["at"])
                .concatenate("m", &["at", "mid"])
                .layer("f", Layer::Flatten, &["m"])
                .layer("out", Layer::Dense(Dense::new(2)), &["f"])
                .output("out");
            let what = format!("{} channel concat", layer.kind());
            check_fd_rows(&g, &Device::cpu(), (72, 2), (4, 3e-3), &what);
        }
    }
}

/// One dense layer applied twice (shared weights), and a node feeding three consumers
/// (two of them one multiply's two inputs).
fn shared_graph() -> Graph {
    let mut g = Graph::new();
    g.input("x", &[3])
        .layer("h", Layer::Dense(Dense::new(3)), &["x"])
        .layer("t", Layer::Activation(Activation::Tanh), &["h"])
        .shared("h2", "h", &["t"])
        .multiply("sq", &["t", "t"])
        .add("sum", &["t", "h2", "sq"])
        .layer("out", Layer::Dense(Dense::new(2)), &["sum"])
        .output("out");
    g
}

#[test]
fn shared_weights_and_nodes_used_twice_match_finite_differences() {
    let g = shared_graph();
    let model = g.build(&Device::cpu(), 1).unwrap();
    let names: Vec<&str> = model.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["h.weight", "h.bias", "out.weight", "out.bias"]);
    for device in [Device::cpu(), gpu()] {
        check_fd(&g, &device, 3, 2, "shared");
    }
}

/// Parameter moves of `steps` SGD steps on the CPU and on the GPU agree.
fn cpu_matches_gpu(g: &Graph, input: usize, classes: usize, what: &str) {
    let x = random(8 * input, 3);
    let y: Vec<f32> = (0..8).map(|i| (i % classes) as f32).collect();
    let mut moves = Vec::new();
    for device in [Device::cpu(), gpu()] {
        let mut t = g
            .build(&device, 5)
            .unwrap()
            .compile(
                Loss::SparseCategoricalCrossEntropy,
                Optimizer::sgd(0.5),
                &[],
            )
            .unwrap();
        let before: Vec<Vec<f32>> = t
            .model
            .params()
            .iter()
            .map(|p| p.value.to_vec().unwrap())
            .collect();
        for _ in 0..3 {
            t.train_batch(&x, &y).unwrap();
        }
        let moved: Vec<f32> = t
            .model
            .params()
            .iter()
            .zip(&before)
            .flat_map(|(p, b)| {
                let a = p.value.to_vec().unwrap();
                a.iter().zip(b).map(|(a, b)| a - b).collect::<Vec<_>>()
            })
            .collect();
        assert!(
            moved.iter().any(|m| m.abs() > 1e-4),
            "{what}: nothing moved"
        );
        moves.push(moved);
    }
    assert_close(&moves[1], &moves[0], 1e-3, 1e-5, what);
}

#[test]
fn residual_and_shared_graphs_train_alike_on_cpu_and_gpu() {
    let mut res = Graph::new();
    res.input("x", &[6])
        .layer("d1", Layer::Dense(Dense::new(6)), &["x"])
        .layer("r1", Layer::Activation(Activation::Relu), &["d1"])
        .layer("d2", Layer::Dense(Dense::new(6)), &["r1"])
        .add("skip", &["x", "d2"])
        .layer("out", Layer::Dense(Dense::new(3)), &["skip"])
        .layer("p", Layer::Softmax, &["out"])
        .output("p");
    cpu_matches_gpu(&res, 6, 3, "residual");
    let mut g = shared_graph();
    g.nodes.last_mut().unwrap().op = kiln::nn::graph::Op::Layer(Layer::Dense(Dense::new(3)));
    cpu_matches_gpu(&g, 3, 3, "shared");
    // The second use of a shared dense layer feeds the fused head (which writes its bias
    // gradient); the first use adds its gradients afterwards.
    let mut g = Graph::new();
    g.input("x", &[3])
        .layer("h", Layer::Dense(Dense::new(3)), &["x"])
        .layer("t", Layer::Activation(Activation::Tanh), &["h"])
        .shared("h2", "h", &["t"])
        .layer("out", Layer::Dense(Dense::new(3)), &["h2"])
        .layer("p", Layer::Softmax, &["out"])
        .output("p");
    cpu_matches_gpu(&g, 3, 3, "shared layer before the head");
}

#[test]
fn the_fusions_fire_inside_a_residual_block() {
    let mut g = Graph::new();
    g.input("x", &[4])
        .layer("d", Layer::Dense(Dense::new(4)), &["x"])
        .layer("r", Layer::Activation(Activation::Relu), &["d"])
        .add("sum", &["x", "r"])
        .layer("out", Layer::Dense(Dense::new(3)), &["sum"])
        .output("out");
    // dense + relu in the branch fold into one step.
    assert_eq!(g.build(&Device::cpu(), 0).unwrap().plan_len(), 3);
    // Not where the dense output has a second consumer.
    let mut g = Graph::new();
    g.input("x", &[4])
        .layer("d", Layer::Dense(Dense::new(4)), &["x"])
        .layer("r", Layer::Activation(Activation::Relu), &["d"])
        .add("sum", &["d", "r"])
        .layer("out", Layer::Dense(Dense::new(3)), &["sum"])
        .output("out");
    let model = g.build(&Device::cpu(), 0).unwrap();
    assert_eq!(model.plan_len(), 4);
    check_fd(&g, &Device::cpu(), 4, 3, "unfused dense with two consumers");
}

#[test]
fn a_sequential_built_as_a_graph_trains_bit_for_bit_alike() {
    let seq = Sequential::new(5)
        .dense(7)
        .relu()
        .dropout(0.25)
        .dense(3)
        .softmax();
    let mut g = Graph::new();
    g.input("pixels", &[5])
        .layer("hidden", Layer::Dense(Dense::new(7)), &["pixels"])
        .layer("relu", Layer::Activation(Activation::Relu), &["hidden"])
        .layer("drop", Layer::Dropout(0.25), &["relu"])
        .layer("logits", Layer::Dense(Dense::new(3)), &["drop"])
        .layer("probs", Layer::Softmax, &["logits"])
        .output("probs");
    let x = random(40 * 5, 8);
    let y: Vec<f32> = (0..40).map(|i| (i % 3) as f32).collect();
    for device in [Device::cpu(), gpu()] {
        let mut values = Vec::new();
        for model in [seq.build(&device, 9).unwrap(), g.build(&device, 9).unwrap()] {
            let mut t = model
                .compile(
                    Loss::SparseCategoricalCrossEntropy,
                    Optimizer::adam(0.01),
                    &[],
                )
                .unwrap();
            let mut opts = FitOptions::new(2, 8);
            opts.seed = 3;
            t.fit(&x, &y, opts).unwrap();
            let v: Vec<Vec<f32>> = t
                .model
                .params()
                .iter()
                .map(|p| p.value.to_vec().unwrap())
                .collect();
            values.push(v);
        }
        assert_eq!(values[0], values[1], "{device:?}");
    }
    let names: Vec<String> = g
        .build(&Device::cpu(), 9)
        .unwrap()
        .params()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(
        names,
        [
            "hidden.weight",
            "hidden.bias",
            "logits.weight",
            "logits.bias"
        ]
    );
}

#[test]
fn a_residual_graph_learns_a_small_task() {
    // Three classes by the sign pattern of two features, plus noise features.
    let rows = 240;
    let x = random(rows * 6, 21);
    let y: Vec<f32> = x
        .chunks(6)
        .map(|r| {
            if r[0] > 0.3 {
                0.0
            } else if r[1] > 0.0 {
                1.0
            } else {
                2.0
            }
        })
        .collect();
    let mut g = Graph::new();
    g.input("x", &[6])
        .layer("d1", Layer::Dense(Dense::new(16)), &["x"])
        .layer("r1", Layer::Activation(Activation::Relu), &["d1"])
        .layer("d2", Layer::Dense(Dense::new(16)), &["r1"])
        .layer("r2", Layer::Activation(Activation::Relu), &["d2"])
        .add("res", &["r1", "r2"])
        .concatenate("cat", &["res", "x"])
        .layer("out", Layer::Dense(Dense::new(3)), &["cat"])
        .layer("p", Layer::Softmax, &["out"])
        .output("p");
    let mut t = g
        .build(&Device::cpu(), 1)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(0.02),
            &[kiln::Metric::Accuracy],
        )
        .unwrap();
    t.fit(&x, &y, FitOptions::new(60, 32)).unwrap();
    let acc = t.evaluate(&x, &y, 64).unwrap().get("accuracy").unwrap();
    eprintln!("residual accuracy after 60 epochs: {acc}");
    assert!(acc > 0.9, "accuracy {acc}");
    let summary = t.model.summary();
    assert!(
        summary.contains("Connected to") && summary.contains("r1, r2"),
        "{summary}"
    );
}

#[track_caller]
fn graph_error(g: &Graph) -> GraphError {
    match g.build(&Device::cpu(), 0) {
        Err(Error::Graph(e)) => e,
        Err(e) => panic!("expected a GraphError, got {e}"),
        Ok(_) => panic!("expected a GraphError, got a model"),
    }
}

fn dense(n: usize) -> Layer {
    Layer::Dense(Dense::new(n))
}

#[test]
fn bad_graphs_are_typed_errors_naming_the_nodes() {
    let mut g = Graph::new();
    g.input("x", &[4])
        .layer("a", dense(4), &["b"])
        .layer("b", dense(4), &["a"])
        .add("s", &["x", "b"])
        .output("s");
    assert!(matches!(graph_error(&g), GraphError::Cycle(n) if n == ["a", "b"]));

    let mut g = Graph::new();
    g.input("x", &[4])
        .input("unused", &[2])
        .layer("a", dense(4), &["x"])
        .output("a");
    assert_eq!(graph_error(&g), GraphError::Unused("unused".into()));
    let mut g = Graph::new();
    g.input("x", &[4])
        .layer("a", dense(4), &["x"])
        .layer("dead", dense(2), &["x"])
        .output("a");
    assert_eq!(graph_error(&g), GraphError::Unused("dead".into()));
    let mut g = Graph::new();
    g.input("x", &[4]).layer("a", dense(4), &["x"]).output("x");
    assert_eq!(graph_error(&g), GraphError::Unused("a".into()));

    let mut g = Graph::new();
    g.input("x", &[4])
        .layer("a", dense(4), &["x"])
        .layer("free", dense(4), &[])
        .add("s", &["a", "free"])
        .output("s");
    assert_eq!(
        graph_error(&g),
        GraphError::Unreached {
            output: "s".into(),
            node: "free".into()
        }
    );

    for merge in ["add", "concatenate", "multiply"] {
        let mut g = Graph::new();
        g.input("x", &[2, 4, 4]).layer("a", Layer::Flatten, &["x"]);
        match merge {
            "add" => g.layer("b", dense(3), &["a"]).add("m", &["a", "b"]),
            "multiply" => g.layer("b", dense(3), &["a"]).multiply("m", &["a", "b"]),
            // An image beside flat samples.
            _ => g.concatenate("m", &["x", "a"]),
        };
        g.output("m");
        match graph_error(&g) {
            GraphError::MergeShapes { node, inputs, .. } => {
                assert_eq!(node, "m");
                assert_eq!(inputs.len(), 2, "{merge}");
            }
            e => panic!("{merge}: {e}"),
        }
    }

    let mut g = Graph::new();
    g.input("x", &[4])
        .layer("a", dense(4), &["x"])
        .layer("a", dense(4), &["a"])
        .output("a");
    assert_eq!(graph_error(&g), GraphError::DuplicateName("a".into()));
    let mut g = Graph::new();
    g.input("x", &[4]).layer("x", dense(4), &["x"]).output("x");
    assert_eq!(graph_error(&g), GraphError::DuplicateName("x".into()));

    let mut g = Graph::new();
    g.input("x", &[4])
        .layer("c", Layer::Conv2d(Conv::new(2, 3)), &["x"])
        .output("c");
    match graph_error(&g) {
        GraphError::LayerShape {
            node, input, shape, ..
        } => {
            assert_eq!((node.as_str(), input.as_str(), shape), ("c", "x", vec![4]))
        }
        e => panic!("{e}"),
    }
    // A shared layer applied where its weights do not fit.
    let mut g = Graph::new();
    g.input("x", &[4])
        .layer("a", dense(3), &["x"])
        .shared("a2", "a", &["a"])
        .output("a2");
    assert!(matches!(graph_error(&g), GraphError::LayerShape { node, .. } if node == "a2"));

    let mut g = Graph::new();
    g.input("x", &[4])
        .layer("a", dense(4), &["nowhere"])
        .output("a");
    assert_eq!(
        graph_error(&g),
        GraphError::UnknownNode {
            node: "a".into(),
            missing: "nowhere".into()
        }
    );
    let mut g = Graph::new();
    g.input("x", &[4]).layer("a", dense(4), &["x"]).output("b");
    assert!(matches!(graph_error(&g), GraphError::UnknownNode { missing, .. } if missing == "b"));
    let mut g = Graph::new();
    g.input("x", &[4]).shared("a", "nope", &["x"]).output("a");
    assert!(
        matches!(graph_error(&g), GraphError::UnknownNode { missing, .. } if missing == "nope")
    );

    let mut g = Graph::new();
    g.input("x", &[4])
        .layer("a", dense(4), &["x", "x"])
        .output("a");
    assert!(matches!(graph_error(&g), GraphError::Arity { node, .. } if node == "a"));
    let mut g = Graph::new();
    g.input("x", &[4]).add("s", &["x"]).output("s");
    assert!(matches!(graph_error(&g), GraphError::Arity { node, .. } if node == "s"));
    assert!(matches!(
        graph_error(&Graph::new()),
        GraphError::Empty("inputs")
    ));
}

/// Two inputs, a flat one and an image, each through its own branch, concatenated.
fn two_input_graph() -> Graph {
    let mut g = Graph::new();
    g.input("tab", &[4])
        .input("img", &[1, 4, 4])
        .layer("t1", Layer::Dense(Dense::new(8)), &["tab"])
        .layer("t2", Layer::Activation(Activation::Tanh), &["t1"])
        .layer("c1", Layer::Conv2d(Conv::new(4, 3).same()), &["img"])
        .layer("c2", Layer::Activation(Activation::Tanh), &["c1"])
        .layer("gap", Layer::GlobalAvgPool, &["c2"])
        .concatenate("both", &["t2", "gap"])
        .layer("out", Layer::Dense(Dense::new(4)), &["both"])
        .layer("p", Layer::Softmax, &["out"])
        .output("p");
    g
}

#[test]
fn a_two_input_graph_learns_from_both_inputs() {
    let g = two_input_graph();
    let rows = 256;
    let tab = random(rows * 4, 31);
    let img = random(rows * 16, 32);
    // The class needs both inputs: the sign of a tabular feature, and of an image's mean.
    let y: Vec<f32> = (0..rows)
        .map(|r| {
            let mean: f32 = img[r * 16..(r + 1) * 16].iter().sum::<f32>() / 16.0;
            f32::from(u8::from(tab[r * 4] > 0.0)) + 2.0 * f32::from(u8::from(mean > 0.0))
        })
        .collect();
    let model = g.build(&Device::cpu(), 3).unwrap();
    assert_eq!(model.input_width(), 20);
    let x = model.pack_inputs(&[&tab, &img]).unwrap();
    assert_eq!(&x[..4], &tab[..4]);
    assert_eq!(&x[4..20], &img[..16]);
    assert!(model.pack_inputs(&[&tab]).is_err());
    assert!(model.pack_inputs(&[&tab, &img[..16 * 3]]).is_err());
    let mut t = model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(0.02),
            &[kiln::Metric::Accuracy],
        )
        .unwrap();
    t.fit(&x, &y, FitOptions::new(40, 32)).unwrap();
    let acc = t.evaluate(&x, &y, 64).unwrap().get("accuracy").unwrap();
    eprintln!("two-input accuracy after 40 epochs: {acc}");
    assert!(acc > 0.85, "accuracy {acc}");
    let summary = t.model.summary();
    assert!(summary.contains("t2, gap"), "{summary}");
}

#[test]
fn a_two_input_graph_matches_finite_differences_and_the_gpu() {
    let mut g = two_input_graph();
    g.nodes.retain(|n| n.name != "p");
    g.outputs = vec!["out".into()];
    for device in [Device::cpu(), gpu()] {
        check_fd_rows(&g, &device, (20, 4), (4, 3e-3), "two inputs");
    }
    let mut g = two_input_graph();
    g.nodes.retain(|n| n.name != "p");
    g.outputs = vec!["out".into()];
    cpu_matches_gpu(&g, 20, 4, "two inputs");
}

#[test]
fn a_saved_graph_model_loads_back_as_the_same_graph() {
    let model = shared_graph().build(&Device::cpu(), 0).unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("graph-save");
    let _ = std::fs::remove_file(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    kiln::io::save_model(&dir, &model).unwrap();
    let back = kiln::io::load_model(&dir, &Device::cpu()).unwrap();
    assert_eq!(back.graph(), Some(&shared_graph()));
    for (a, b) in model.params().iter().zip(back.params()) {
        assert_eq!(
            (&a.name, a.value.to_vec().unwrap()),
            (&b.name, b.value.to_vec().unwrap())
        );
    }
    assert!(model.spec().is_none() && model.sequential().is_err());
}
