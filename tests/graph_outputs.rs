//! Graph models with several outputs: each output's loss, weight and metrics. Gradients
//! against central finite differences of the weighted loss the trainer reports (an output
//! that also feeds another node, a softmax handed to its loss), a weight of 0 keeping a
//! branch out of training, a classifier head and a regression head learning together on a
//! shared trunk, the History keys, predictions per output, and the typed errors.
mod common;
use common::*;
use kiln::{
    Activation, Dense, Device, Error, FitOptions, Graph, GraphError, Layer, Loss, Metric,
    Optimizer, OutputLoss, Trainer, Validation,
};

const ROWS: usize = 16;
const H: f64 = 1e-3;

fn dense(n: usize) -> Layer {
    Layer::Dense(Dense::new(n))
}

fn act(a: Activation) -> Layer {
    Layer::Activation(a)
}

/// x [4] -> trunk (dense 6, tanh) -> logits (dense 3) -> class (softmax), and
/// trunk -> value (dense 2).
fn two_heads() -> Graph {
    heads(6, Activation::Tanh, 2)
}

/// x [4] -> trunk (dense `trunk`, `a`) -> logits (dense 3) -> class (softmax), and
/// trunk -> value (dense `value`).
fn heads(trunk: usize, a: Activation, value: usize) -> Graph {
    let mut g = Graph::new();
    g.input("x", &[4])
        .layer("trunk", dense(trunk), &["x"])
        .layer("trunk_t", act(a), &["trunk"])
        .layer("logits", dense(3), &["trunk_t"])
        .layer("class", Layer::Softmax, &["logits"])
        .layer("value", dense(value), &["trunk_t"])
        .output("class")
        .output("value");
    g
}

/// x [4] -> h (dense 5, tanh: an output that also feeds out) -> out (dense 2), and a
/// sigmoid output from x.
fn output_feeding_another() -> Graph {
    let mut g = Graph::new();
    g.input("x", &[4])
        .layer("h", dense(5), &["x"])
        .layer("ht", act(Activation::Tanh), &["h"])
        .layer("out", dense(2), &["ht"])
        .layer("gate", dense(1), &["x"])
        .layer("p", act(Activation::Sigmoid), &["gate"])
        .output("ht")
        .output("out")
        .output("p");
    g
}

fn two_heads_trainer(device: &Device, w_value: f32) -> Trainer {
    two_heads()
        .build(device, 7)
        .unwrap()
        .compile_outputs(
            &[
                OutputLoss::new("class", Loss::SparseCategoricalCrossEntropy),
                OutputLoss::new("value", Loss::Mse).weight(w_value),
            ],
            Optimizer::sgd(0.1),
        )
        .unwrap()
}

fn two_heads_targets(t: &Trainer, rows: usize) -> Vec<f32> {
    let labels: Vec<f32> = (0..rows).map(|r| (r * 7 % 3) as f32).collect();
    let values = random(rows * 2, 12);
    t.pack_targets(&[&labels, &values]).unwrap()
}

fn check_fd(t: &mut Trainer, x: &[f32], y: &[f32], what: &str) {
    assert_trainer_fd(t, x, y, H, what)
}

#[test]
fn two_outputs_match_finite_differences_of_the_weighted_loss() {
    for device in [Device::cpu(), gpu()] {
        let mut t = two_heads_trainer(&device, 0.5);
        let x = random(ROWS * 4, 11);
        let y = two_heads_targets(&t, ROWS);
        check_fd(&mut t, &x, &y, "two heads");
    }
}

#[test]
fn an_output_feeding_another_node_matches_finite_differences() {
    for device in [Device::cpu(), gpu()] {
        let mut t = output_feeding_another()
            .build(&device, 3)
            .unwrap()
            .compile_outputs(
                &[
                    OutputLoss::new("ht", Loss::Mse).weight(0.3),
                    OutputLoss::new("out", Loss::Mse),
                    OutputLoss::new("p", Loss::BinaryCrossEntropy { from_logits: false })
                        .weight(2.0),
                ],
                Optimizer::sgd(0.1),
            )
            .unwrap();
        let x = random(ROWS * 4, 21);
        let ht = random(ROWS * 5, 22);
        let out = random(ROWS * 2, 23);
        let p: Vec<f32> = (0..ROWS).map(|r| (r % 2) as f32).collect();
        let y = t.pack_targets(&[&ht, &out, &p]).unwrap();
        assert_eq!(t.target_width(), 8);
        check_fd(&mut t, &x, &y, "output feeding another");
    }
}

#[test]
fn the_weighted_loss_is_the_sum_of_the_weighted_output_losses() {
    let x = random(ROWS * 4, 11);
    let mut t = two_heads_trainer(&Device::cpu(), 0.5);
    let y = two_heads_targets(&t, ROWS);
    let (total, _) = t.gradients(&x, &y).unwrap();
    let e = t.evaluate(&x, &y, ROWS).unwrap();
    let (c, v) = (e.get("class_loss").unwrap(), e.get("value_loss").unwrap());
    assert!((e.loss - (c + 0.5 * v)).abs() < 1e-6, "{e:?}");
    assert!((total as f64 - e.loss).abs() < 1e-5, "{total} vs {e:?}");
}

#[test]
fn a_weight_of_zero_gives_its_private_branch_no_gradient() {
    for device in [Device::cpu(), gpu()] {
        let mut t = two_heads_trainer(&device, 0.0);
        let x = random(ROWS * 4, 11);
        let y = two_heads_targets(&t, ROWS);
        let (_, grads) = t.gradients(&x, &y).unwrap();
        for (name, g) in &grads {
            let zero = g.iter().all(|&v| v == 0.0);
            if name.starts_with("value.") {
                assert!(zero, "{name} on {}: {g:?}", device.name());
            } else {
                assert!(!zero, "{name} on {} has no gradient", device.name());
            }
        }
        // And the shared trunk gets the classifier's gradient alone.
        let only = two_heads_trainer(&device, 1.0);
        let mut one = Graph::new();
        one.input("x", &[4])
            .layer("trunk", dense(6), &["x"])
            .layer("trunk_t", act(Activation::Tanh), &["trunk"])
            .layer("logits", dense(3), &["trunk_t"])
            .layer("class", Layer::Softmax, &["logits"])
            .output("class");
        let mut single = one
            .build(&device, 7)
            .unwrap()
            .compile(
                Loss::SparseCategoricalCrossEntropy,
                Optimizer::sgd(0.1),
                &[],
            )
            .unwrap();
        for (p, q) in single
            .model
            .params_mut()
            .iter_mut()
            .zip(only.model.params())
        {
            p.value.copy_from(&q.value).unwrap();
        }
        let labels: Vec<f32> = y.chunks(3).map(|r| r[0]).collect();
        let (_, want) = single.gradients(&x, &labels).unwrap();
        let trunk = |g: &[(String, Vec<f32>)]| -> Vec<f32> {
            g.iter()
                .filter(|(n, _)| n.starts_with("trunk."))
                .flat_map(|(_, v)| v.clone())
                .collect()
        };
        assert_close(&trunk(&grads), &trunk(&want), 1e-4, 1e-6, "trunk");
    }
}

/// A classifier head and a regression head on a shared trunk learn both.
#[test]
fn a_classifier_and_a_regressor_learn_together() {
    let (x, class, value) = heads_rows(512);
    let mut t = heads(32, Activation::Relu, 1)
        .build(&Device::cpu(), 1)
        .unwrap()
        .compile_outputs(
            &[
                OutputLoss::new("class", Loss::SparseCategoricalCrossEntropy)
                    .metrics(&[Metric::Accuracy]),
                OutputLoss::new("value", Loss::Mse)
                    .weight(0.5)
                    .metrics(&[Metric::Mse]),
            ],
            Optimizer::adam(0.01),
        )
        .unwrap();
    let y = t.pack_targets(&[&class, &value]).unwrap();
    let mut opts = FitOptions::new(40, 32);
    opts.validation = Validation::Split(0.25);
    let history = t.fit(&x, &y, opts).unwrap();
    let last = history.last().unwrap();
    let keys = [
        "loss",
        "class_loss",
        "class_accuracy",
        "value_loss",
        "value_mse",
        "val_loss",
        "val_class_loss",
        "val_class_accuracy",
        "val_value_loss",
        "val_value_mse",
    ];
    for key in keys {
        assert_eq!(history.series(key).len(), 40, "{key}");
    }
    let csv = history.to_csv();
    assert!(
        csv.starts_with(
            "epoch,loss,class_loss,class_accuracy,value_loss,value_mse,val_loss,val_class_loss"
        ),
        "{csv}"
    );
    let weighted = last.get("class_loss").unwrap() + 0.5 * last.get("value_loss").unwrap();
    assert!((last.loss - weighted).abs() < 1e-6, "{last:?}");
    let (acc, mse) = (
        last.get("val_class_accuracy").unwrap(),
        last.get("val_value_mse").unwrap(),
    );
    println!("val accuracy {acc:.4}, val mse {mse:.5}");
    assert!(acc > 0.9, "val accuracy {acc}");
    assert!(mse < 0.005, "val mse {mse}");

    // Predictions per output: probabilities (the softmax the loss took) and values.
    let out = t.predict_outputs(&x[..8 * 4], 4).unwrap();
    assert_eq!(out[0].0, "class");
    assert_eq!(out[1].0, "value");
    assert_eq!((out[0].1.len(), out[1].1.len()), (8 * 3, 8));
    for row in out[0].1.chunks(3) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
    }
    let e = t.evaluate(&x, &y, 64).unwrap();
    assert!(e.get("class_accuracy").unwrap() > 0.9, "{e:?}");
    assert!(e.get("value_mse").unwrap() < 0.005, "{e:?}");
}

#[test]
fn the_gpu_trains_as_the_cpu_reference() {
    let x = random(64 * 4, 9);
    let mut finals = Vec::new();
    for device in [Device::cpu(), gpu()] {
        let mut t = two_heads_trainer(&device, 0.5);
        let y = two_heads_targets(&t, 64);
        let mut opts = FitOptions::new(3, 16);
        opts.shuffle = false;
        let h = t.fit(&x, &y, opts).unwrap();
        finals.push((h.series("class_loss"), h.series("value_loss")));
        let p = t.predict_outputs(&x, 16).unwrap();
        finals.push((p[0].1.iter().map(|&v| v as f64).collect(), Vec::new()));
    }
    for (cpu, gpu) in [(0, 2), (1, 3)] {
        let (a, b) = (&finals[cpu], &finals[gpu]);
        for (u, v) in a.0.iter().zip(&b.0).chain(a.1.iter().zip(&b.1)) {
            assert!((u - v).abs() <= 1e-4 + 1e-3 * u.abs(), "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn typed_errors() {
    let model = || two_heads().build(&Device::cpu(), 7).unwrap();
    let sgd = Optimizer::sgd(0.1);
    // An unknown output name.
    let err = model()
        .compile_outputs(
            &[
                OutputLoss::new("class", Loss::SparseCategoricalCrossEntropy),
                OutputLoss::new("valeu", Loss::Mse),
            ],
            sgd.clone(),
        )
        .err();
    assert!(
        matches!(&err, Some(Error::Graph(GraphError::UnknownNode { missing, .. })) if missing == "valeu"),
        "{err:?}"
    );
    // An output without a loss.
    let err = model()
        .compile_outputs(
            &[OutputLoss::new(
                "class",
                Loss::SparseCategoricalCrossEntropy,
            )],
            sgd.clone(),
        )
        .err();
    assert!(
        matches!(&err, Some(Error::Graph(GraphError::NoLoss(o))) if o == "value"),
        "{err:?}"
    );
    // The single-output compile, and predict, on a model with two outputs.
    let err = model().compile(Loss::Mse, sgd.clone(), &[]).err();
    assert!(
        matches!(&err, Some(Error::Graph(GraphError::Unsupported(_)))),
        "{err:?}"
    );
    let mut t = two_heads_trainer(&Device::cpu(), 1.0);
    let x = random(ROWS * 4, 1);
    let err = t.predict(&x, 8).err();
    assert!(
        matches!(&err, Some(Error::Graph(GraphError::Unsupported(_)))),
        "{err:?}"
    );
    // Targets of the wrong width: one label and one value per row, where value has 2.
    let labels = vec![0.0; ROWS];
    let short = vec![0.0; ROWS];
    assert!(matches!(
        t.pack_targets(&[&labels, &short]),
        Err(Error::Shape { .. })
    ));
    let y = vec![0.0; ROWS * 2];
    let err = t.fit(&x, &y, FitOptions::new(1, 8)).err();
    assert!(matches!(&err, Some(Error::Shape { .. })), "{err:?}");
    let err = t.evaluate(&x, &y, 8).err();
    assert!(matches!(&err, Some(Error::Shape { .. })), "{err:?}");
    // A class id out of range in the classifier's column.
    let mut y = two_heads_targets(&t, ROWS);
    y[3] = 3.0;
    let err = t.fit(&x, &y, FitOptions::new(1, 8)).err();
    assert!(
        matches!(&err, Some(Error::InvalidArgument { .. })),
        "{err:?}"
    );
    // A node listed twice as an output.
    let mut g = two_heads();
    g.output("value");
    let err = g.build(&Device::cpu(), 1).err();
    assert!(
        matches!(&err, Some(Error::Graph(GraphError::DuplicateName(n))) if n == "value"),
        "{err:?}"
    );
}

/// A softmax output trained with a cross-entropy (on its logits) that also feeds a dense
/// output: the loss gradient at the logits and what the softmax sends back are summed.
#[test]
fn a_fused_softmax_output_feeding_another_node_matches_finite_differences() {
    for device in [Device::cpu(), gpu()] {
        let mut g = Graph::new();
        g.input("x", &[4])
            .layer("z", dense(3), &["x"])
            .layer("s", Layer::Softmax, &["z"])
            .layer("t", dense(2), &["s"])
            .output("s")
            .output("t");
        let mut t = g
            .build(&device, 5)
            .unwrap()
            .compile_outputs(
                &[
                    OutputLoss::new("s", Loss::CategoricalCrossEntropy).weight(0.7),
                    OutputLoss::new("t", Loss::Mse),
                ],
                Optimizer::sgd(0.1),
            )
            .unwrap();
        let x = random(ROWS * 4, 31);
        let onehot: Vec<f32> = (0..ROWS * 3)
            .map(|i| f32::from(i % 3 == (i / 3) % 3))
            .collect();
        let y = t.pack_targets(&[&onehot, &random(ROWS * 2, 32)]).unwrap();
        check_fd(&mut t, &x, &y, "fused softmax feeding another");
        let p = t.predict_outputs(&x, ROWS).unwrap();
        for row in p[0].1.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        }
    }
}
