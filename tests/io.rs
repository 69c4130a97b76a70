//! Model files (TOML) and checkpoints (safetensors): round trips, exact resumption of
//! training, typed errors for every kind of bad file, and reading from Python.
mod common;
use common::*;
use kiln::io::{self, LayerSpec, ModelFile, ScheduleSpec, TrainingSpec};
use kiln::nn::Init;
use kiln::optim::Rule;
use kiln::{
    Dense, Device, Error, FitOptions, Loss, Metric, Model, Optimizer, Schedule, Sequential, Trainer,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A fresh, empty directory private to one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-io-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The detail of a Format error; panics (naming `what`) on anything else.
fn format_detail<T>(r: kiln::Result<T>, what: &str) -> String {
    match r {
        Err(Error::Format { what: w, detail }) => format!("{w}: {detail}"),
        Err(e) => panic!("{what}: expected Error::Format, got {e:?}"),
        Ok(_) => panic!("{what}: expected Error::Format, got Ok"),
    }
}

fn values(model: &Model) -> Vec<(String, Vec<f32>)> {
    model
        .params()
        .iter()
        .map(|p| (p.name.clone(), p.value.to_vec().unwrap()))
        .collect()
}

// ---------------------------------------------------------------- model files

const NEWCOMER: &str = r#"
input = 784
[[layers]]
dense = 128
activation = "relu"
[[layers]]
dropout = 0.2
[[layers]]
dense = 10
[training]
loss = "sparse_categorical_crossentropy"
optimizer = "adam"
lr = 0.001
"#;

#[test]
fn newcomer_toml_builds_the_model_loss_and_optimizer() {
    let file = ModelFile::parse(NEWCOMER).unwrap();
    let want = Sequential::new(784)
        .dense(128)
        .relu()
        .dropout(0.2)
        .dense(10);
    assert_eq!(file.to_sequential().unwrap(), want);
    assert_eq!(file.loss().unwrap(), Loss::SparseCategoricalCrossEntropy);
    let opt = file.optimizer().unwrap();
    assert_eq!(opt.lr, 0.001);
    assert_eq!(opt.rule, Optimizer::adam(0.001).rule);
    assert!(file.metrics().unwrap().is_empty());
}

/// The full example in ModelFile's documentation parses and means what its comments say.
#[test]
fn documented_example_is_valid() {
    let source = include_str!("../src/io/model_file/schema.rs");
    let mut lines = source
        .lines()
        .map(str::trim_start)
        .skip_while(|l| *l != "/// ```toml")
        .skip(1);
    let toml: String = lines
        .by_ref()
        .take_while(|l| *l != "/// ```")
        .map(|l| format!("{}\n", l.trim_start_matches("///").trim_start_matches(' ')))
        .collect();
    assert!(toml.contains("[training.schedule]"), "example not found");
    let file = ModelFile::parse(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let s = file.to_sequential().unwrap();
    assert_eq!(
        s,
        Sequential::new(784)
            .dense_with(Dense::with_inputs(784, 128))
            .relu()
            .dropout(0.2)
            .batch_norm()
            .leaky_relu(0.01)
            .dense(10)
    );
    let opt = file.optimizer().unwrap();
    assert_eq!(opt.clip_norm, Some(1.0));
    assert_eq!(
        opt.schedule,
        Schedule::Warmup {
            steps: 100,
            then: Box::new(Schedule::Cosine {
                t_max: 10,
                eta_min: 0.0
            })
        }
    );
    let t = file.training.as_ref().unwrap();
    assert_eq!(
        (t.batch_size, t.epochs, t.seed),
        (Some(32), Some(10), Some(42))
    );
    assert_eq!(file.metrics().unwrap(), vec![Metric::Accuracy]);
}

/// Every layer kind, initializer and option survives Sequential -> TOML -> Sequential.
#[test]
fn sequential_round_trips_through_toml() {
    let s = Sequential::new(7)
        .dense_with(
            Dense::with_inputs(7, 5)
                .kernel_init(Init::Uniform(-0.05, 0.125))
                .bias_init(Init::Constant(0.3))
                .regularize(1e-4, 3e-3),
        )
        .leaky_relu(0.2)
        .leaky_relu(0.05)
        .dense_with(Dense::new(4).no_bias().kernel_init(Init::Normal(0.1, 0.02)))
        .gelu()
        .dropout(0.1)
        .dense_with(
            Dense::new(6)
                .kernel_init(Init::HeNormal)
                .bias_init(Init::Constant(1.0)),
        )
        .tanh()
        .sigmoid()
        .dense_with(Dense::new(3).kernel_init(Init::LecunNormal))
        .activation(kiln::Activation::Identity)
        .dense_with(
            Dense::new(3)
                .kernel_init(Init::GlorotNormal)
                .bias_init(Init::HeUniform),
        )
        .softmax()
        .softmax()
        .relu();
    let file = ModelFile::from_sequential(&s);
    let text = file.to_toml();
    let back = ModelFile::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, file, "{text}");
    assert_eq!(back.to_sequential().unwrap(), s, "{text}");
    // The activation after a dense layer joins its entry, as a person would write it.
    assert!(
        text.contains("dense = 5\nactivation = \"leaky_relu\"\nslope = 0.2"),
        "{text}"
    );
    // Defaults are left out.
    assert!(
        !text.contains("use_bias = true") && !text.contains("glorot_uniform"),
        "{text}"
    );
}

/// Awkward f32 values come back bit-exact from the TOML text.
#[test]
fn floats_round_trip_exactly() {
    let mut rng_values = random(400, 99);
    rng_values.extend([1e-8, 0.1, 1.0 / 3.0, f32::MIN_POSITIVE, 0.999_999_9, 3e-45]);
    for (i, v) in rng_values.iter().enumerate() {
        let rate = v.abs().min(0.999_999_9);
        let l2 = v.abs() * 10f32.powi(i as i32 % 9 - 6);
        let s = Sequential::new(3)
            .dense_with(
                Dense::new(2)
                    .regularize(0.0, l2)
                    .kernel_init(Init::Uniform(-rate - 1.0, *v + 2.0)),
            )
            .leaky_relu(*v)
            .dropout(rate);
        let text = ModelFile::from_sequential(&s).to_toml();
        let back = ModelFile::parse(&text).unwrap().to_sequential().unwrap();
        assert_eq!(back, s, "{text}");
    }
}

fn optimizers() -> Vec<Optimizer> {
    vec![
        Optimizer::sgd(0.1),
        Optimizer::sgd_momentum(0.05, 0.8, false).weight_decay(1e-3),
        Optimizer::sgd_momentum(0.05, 0.95, true),
        Optimizer {
            rule: Rule::Sgd {
                momentum: 0.5,
                dampening: 0.25,
                nesterov: false,
            },
            ..Optimizer::sgd(0.3)
        },
        Optimizer::adam(1e-3).clip_norm(0.5),
        Optimizer {
            rule: Rule::Adam {
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-7,
                amsgrad: true,
            },
            ..Optimizer::adam(2e-3)
        },
        Optimizer::adamw(1e-3, 0.05).schedule(Schedule::Cosine {
            t_max: 20,
            eta_min: 1e-5,
        }),
        Optimizer::rmsprop(1e-2).schedule(Schedule::Step {
            step_size: 3,
            gamma: 0.5,
        }),
        Optimizer {
            rule: Rule::RmsProp {
                alpha: 0.9,
                eps: 1e-6,
                momentum: 0.5,
                centered: true,
            },
            ..Optimizer::rmsprop(1e-3)
        },
        Optimizer::adagrad(0.1).schedule(Schedule::Warmup {
            steps: 10,
            then: Box::new(Schedule::Exponential { gamma: 0.95 }),
        }),
        Optimizer {
            rule: Rule::Adagrad {
                eps: 1e-9,
                lr_decay: 0.01,
                initial_accumulator: 0.1,
            },
            ..Optimizer::adagrad(0.1)
        }
        .schedule(Schedule::Warmup {
            steps: 5,
            then: Box::new(Schedule::Constant),
        }),
    ]
}

/// Every optimizer configuration survives Optimizer -> [training] TOML -> Optimizer.
#[test]
fn optimizers_round_trip_through_the_training_section() {
    for opt in optimizers() {
        let file = ModelFile {
            input: 2,
            layers: vec![],
            training: Some(TrainingSpec::from_optimizer(&opt).unwrap()),
            ..ModelFile::default()
        };
        let text = file.to_toml();
        let back = ModelFile::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, file);
        let got = back.optimizer().unwrap();
        assert_eq!(
            (
                got.rule,
                got.lr,
                got.weight_decay,
                got.clip_norm,
                &got.schedule
            ),
            (
                opt.rule,
                opt.lr,
                opt.weight_decay,
                opt.clip_norm,
                &opt.schedule
            ),
            "{text}"
        );
    }
    let nested = Optimizer::sgd(0.1).schedule(Schedule::Warmup {
        steps: 2,
        then: Box::new(Schedule::Warmup {
            steps: 3,
            then: Box::new(Schedule::Constant),
        }),
    });
    assert!(matches!(
        TrainingSpec::from_optimizer(&nested),
        Err(Error::InvalidArgument { .. })
    ));
}

/// The Keras-style names give the documented losses and optimizers.
#[test]
fn names_give_the_documented_losses_and_optimizers() {
    let parse = |body: &str| ModelFile::parse(&format!("input = 1\n[training]\n{body}")).unwrap();
    let losses = [
        ("mse", Loss::Mse),
        ("mae", Loss::Mae),
        (
            "binary_crossentropy",
            Loss::BinaryCrossEntropy { from_logits: false },
        ),
        ("categorical_crossentropy", Loss::CategoricalCrossEntropy),
        (
            "sparse_categorical_crossentropy",
            Loss::SparseCategoricalCrossEntropy,
        ),
    ];
    for (name, loss) in losses {
        assert_eq!(parse(&format!("loss = \"{name}\"")).loss().unwrap(), loss);
    }
    assert_eq!(
        parse("loss = \"binary_crossentropy\"\nfrom_logits = true")
            .loss()
            .unwrap(),
        Loss::BinaryCrossEntropy { from_logits: true }
    );
    for name in [
        "sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad",
    ] {
        let got = parse(&format!("optimizer = \"{name}\"\nlr = 0.5"))
            .optimizer()
            .unwrap();
        let want = Optimizer::from_name(name, 0.5).unwrap();
        assert_eq!(
            (got.rule, got.lr, got.weight_decay),
            (want.rule, want.lr, want.weight_decay)
        );
    }
    let sgd = parse("optimizer = \"sgd\"").optimizer().unwrap();
    assert_eq!(sgd.lr, 0.01);
    let missing = format_detail(parse("lr = 0.1").optimizer(), "no optimizer");
    assert!(missing.contains("training.optimizer"), "{missing}");
    let none = format_detail(ModelFile::parse("input = 2").unwrap().loss(), "no section");
    assert!(none.contains("[training]"), "{none}");
}

/// Each (text, field, line) fails to parse with a message holding both texts `want` gives.
fn expect_parse_errors(
    cases: &[(&str, &str, usize)],
    want: impl Fn(&str, usize) -> (String, String),
) {
    for (text, field, line) in cases {
        let detail = format_detail(ModelFile::parse(text), field);
        let (a, b) = want(field, *line);
        assert!(
            detail.contains(&a) && detail.contains(&b),
            "{field} (line {line}): {detail}"
        );
    }
}

#[test]
fn unknown_fields_are_errors_naming_field_and_line() {
    let cases = [
        ("input = 4\n[[layers]]\ndense = 3\nunits = 5\n", "units", 4),
        ("input = 4\nlayer = []\n", "layer", 2),
        (
            "input = 4\n[training]\nloss = \"mse\"\nlearning_rate = 0.1\n",
            "learning_rate",
            4,
        ),
        (
            "input = 4\n[training.schedule]\nname = \"step\"\nstep = 3\n",
            "step",
            4,
        ),
    ];
    expect_parse_errors(&cases, |field, line| {
        (format!("`{field}`"), format!("line {line}"))
    });
}

#[test]
fn impossible_values_are_errors_naming_field_and_line() {
    let cases: &[(&str, &str, usize)] = &[
        ("input = 0", "input", 1),
        ("input = 4\n[[layers]]\ndense = 0", "layers[0].dense", 3),
        (
            "input = 4\n[[layers]]\ndense = 2\n[[layers]]\ndropout = 1.0",
            "layers[1].dropout",
            5,
        ),
        (
            "input = 4\n[[layers]]\ndropout = -0.1",
            "layers[0].dropout",
            3,
        ),
        (
            "input = 4\n[[layers]]\ndropout = nan",
            "layers[0].dropout",
            3,
        ),
        (
            "input = 4\n[[layers]]\ndense = 3\ndropout = 0.5",
            "layers[0].dropout",
            4,
        ),
        (
            "input = 4\n[[layers]]\nactivation = \"swish\"",
            "layers[0].activation",
            3,
        ),
        (
            "input = 4\n[[layers]]\nactivation = \"relu\"\nslope = 0.1",
            "layers[0].slope",
            4,
        ),
        (
            "input = 4\n[[layers]]\ndense = 3\nkernel_init = \"glorot\"",
            "layers[0].kernel_init",
            4,
        ),
        (
            "input = 4\n[[layers]]\ndense = 3\nbias_init = \"random_uniform(1, 0)\"",
            "layers[0].bias_init",
            4,
        ),
        (
            "input = 4\n[[layers]]\ndense = 3\ninputs = 5",
            "layers[0].inputs",
            4,
        ),
        (
            "input = 4\n[[layers]]\ndense = 3\nl2 = -1e-4",
            "layers[0].l2",
            4,
        ),
        (
            "input = 4\n[[layers]]\nactivation = \"relu\"\nl2 = 0.1",
            "layers[0].l2",
            4,
        ),
        ("input = 4\n[[layers]]\nuse_bias = false", "layers[0]", 2),
        ("input = 4\n[training]\nlr = -0.1", "training.lr", 3),
        ("input = 4\n[training]\nlr = nan", "training.lr", 3),
        (
            "input = 4\n[training]\nloss = \"hinge\"",
            "training.loss",
            3,
        ),
        (
            "input = 4\n[training]\noptimizer = \"lbfgs\"",
            "training.optimizer",
            3,
        ),
        (
            "input = 4\n[training]\noptimizer = \"adam\"\nmomentum = 0.9",
            "training.momentum",
            4,
        ),
        (
            "input = 4\n[training]\noptimizer = \"sgd\"\nbetas = [0.9, 0.99]",
            "training.betas",
            4,
        ),
        (
            "input = 4\n[training]\noptimizer = \"adam\"\nbetas = [0.9, 1.5]",
            "training.betas[1]",
            4,
        ),
        (
            "input = 4\n[training]\nloss = \"mse\"\nfrom_logits = true",
            "training.from_logits",
            4,
        ),
        (
            "input = 4\n[training]\nmetrics = [\"accuracy\", \"auc\"]",
            "training.metrics[1]",
            3,
        ),
        (
            "input = 4\n[training]\nbatch_size = 0",
            "training.batch_size",
            3,
        ),
        (
            "input = 4\n[training]\nweight_decay = -1.0",
            "training.weight_decay",
            3,
        ),
        (
            "input = 4\n[training]\nclip_norm = 0.0",
            "training.clip_norm",
            3,
        ),
        (
            "input = 4\n[training.schedule]\nname = \"onecycle\"",
            "training.schedule.name",
            3,
        ),
        (
            "input = 4\n[training.schedule]\nname = \"step\"\ngamma = 0.5",
            "training.schedule.step_size",
            2,
        ),
        (
            "input = 4\n[training.schedule]\nname = \"cosine\"\nt_max = 5\ngamma = 0.5",
            "training.schedule.gamma",
            5,
        ),
    ];
    expect_parse_errors(cases, |field, line| {
        (format!("line {line}: {field}:"), String::new())
    });
    // Type errors come from the TOML parser, also with their line.
    let detail = format_detail(
        ModelFile::parse("input = 4\n[[layers]]\ndense = \"ten\""),
        "type",
    );
    assert!(detail.contains("line 3"), "{detail}");
    let detail = format_detail(
        ModelFile::parse("input = 4\n[[layers]]\ndense = -3"),
        "negative",
    );
    assert!(detail.contains("line 3"), "{detail}");
    // A ModelFile built in code is checked too, naming the field.
    let file = ModelFile {
        input: 3,
        layers: vec![LayerSpec::new("dropout", 2.0)],
        ..ModelFile::default()
    };
    assert!(format_detail(file.to_sequential(), "code").contains("layers[0].dropout"));
}

#[test]
fn model_file_load_reads_a_file_and_reports_missing_ones() {
    let dir = temp_dir("load");
    let path = dir.join("net.toml");
    std::fs::write(&path, NEWCOMER).unwrap();
    assert_eq!(
        ModelFile::load(&path).unwrap(),
        ModelFile::parse(NEWCOMER).unwrap()
    );
    std::fs::write(&path, "input = 4\n[[layers]]\ndense = 0\n").unwrap();
    let detail = format_detail(ModelFile::load(&path), "bad file");
    assert!(
        detail.contains("net.toml") && detail.contains("line 3"),
        "{detail}"
    );
    assert!(matches!(
        ModelFile::load(dir.join("absent.toml")),
        Err(Error::Io { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Seeds past TOML's i64 integers travel as strings and come back.
#[test]
fn large_seeds_round_trip() {
    for seed in [0, 42, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
        let file = ModelFile {
            input: 1,
            layers: vec![],
            training: Some(TrainingSpec {
                seed: Some(seed),
                ..TrainingSpec::default()
            }),
            ..ModelFile::default()
        };
        assert_eq!(ModelFile::parse(&file.to_toml()).unwrap(), file);
    }
    let detail = format_detail(
        ModelFile::parse("input = 1\n[training]\nseed = \"abc\""),
        "seed",
    );
    assert!(detail.contains("line 3"), "{detail}");
}

#[test]
fn schedule_spec_round_trips() {
    for s in [
        Schedule::Constant,
        Schedule::Step {
            step_size: 4,
            gamma: 0.3,
        },
        Schedule::Exponential { gamma: 0.99 },
        Schedule::Cosine {
            t_max: 7,
            eta_min: 0.001,
        },
        Schedule::Warmup {
            steps: 3,
            then: Box::new(Schedule::Step {
                step_size: 1,
                gamma: 0.5,
            }),
        },
    ] {
        let spec = ScheduleSpec::from_schedule(&s).unwrap();
        let t = TrainingSpec {
            optimizer: Some("sgd".into()),
            schedule: Some(spec),
            ..TrainingSpec::default()
        };
        assert_eq!(t.optimizer().unwrap().schedule, s);
    }
}

// ---------------------------------------------------------------- checkpoints

fn digits() -> (Vec<f32>, Vec<f32>) {
    let d = kiln::data::digits().unwrap();
    let x = d.x.iter().map(|v| v / 16.0).collect();
    (x, d.y)
}

fn classifier() -> Sequential {
    Sequential::new(64).dense(32).relu().dropout(0.2).dense(10)
}

fn adam() -> Optimizer {
    Optimizer::adam(3e-3)
        .clip_norm(5.0)
        .schedule(Schedule::Warmup {
            steps: 40,
            then: Box::new(Schedule::Exponential { gamma: 0.8 }),
        })
}

fn trainer(device: &Device) -> Trainer {
    classifier()
        .build(device, 3)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            adam(),
            &[Metric::Accuracy, Metric::F1],
        )
        .unwrap()
}

fn fit(t: &mut Trainer, x: &[f32], y: &[f32], epochs: usize) {
    let opts = FitOptions {
        epochs,
        batch_size: 64,
        seed: 17,
        ..FitOptions::default()
    };
    t.fit(x, y, opts).unwrap();
}

/// 4 epochs straight, and 2 + save + load_trainer + 2: the final parameters of both.
fn straight_and_resumed(device: &Device, name: &str) -> (Trainer, Trainer) {
    let (x, y) = digits();
    let mut straight = trainer(device);
    fit(&mut straight, &x, &y, 4);

    let dir = temp_dir(name);
    let mut first = trainer(device);
    fit(&mut first, &x, &y, 2);
    io::save(&dir, &first).unwrap();
    drop(first);
    let mut resumed = io::load_trainer(&dir, device).unwrap();
    assert_eq!(resumed.epochs_done(), 2);
    fit(&mut resumed, &x, &y, 2);
    assert_eq!(
        (resumed.epochs_done(), resumed.steps()),
        (straight.epochs_done(), straight.steps())
    );
    let _ = std::fs::remove_dir_all(&dir);
    (straight, resumed)
}

#[test]
fn resumed_training_matches_uninterrupted_training_on_cpu() {
    let (straight, resumed) = straight_and_resumed(&Device::cpu(), "resume-cpu");
    let (a, b) = (values(&straight.model), values(&resumed.model));
    for ((name, s), (_, r)) in a.iter().zip(&b) {
        assert!(
            s.iter().zip(r).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name} differs after resuming"
        );
    }
}

#[test]
fn resumed_training_matches_uninterrupted_training_on_gpu() {
    let (straight, resumed) = straight_and_resumed(&gpu(), "resume-gpu");
    for ((name, s), (_, r)) in values(&straight.model).iter().zip(&values(&resumed.model)) {
        assert_close(r, s, 0.0, 1e-6, name);
    }
}

/// The trainer that comes back has the same loss, optimizer, metrics, progress and state.
fn assert_same_trainer(a: &Trainer, b: &Trainer) {
    assert_eq!(a.loss(), b.loss());
    assert_eq!(a.metrics(), b.metrics());
    let (oa, ob) = (a.optimizer(), b.optimizer());
    assert_eq!(
        (oa.rule, oa.lr, oa.weight_decay, oa.clip_norm, &oa.schedule),
        (ob.rule, ob.lr, ob.weight_decay, ob.clip_norm, &ob.schedule)
    );
    assert_eq!((a.steps(), a.epochs_done()), (b.steps(), b.epochs_done()));
    assert_eq!(a.model.spec(), b.model.spec());
    for (p, q) in a.model.params().iter().zip(b.model.params()) {
        assert_eq!(p.name, q.name);
        assert_eq!(p.value.to_vec().unwrap(), q.value.to_vec().unwrap());
        assert_eq!(p.state.len(), q.state.len());
        for (s, t) in p.state.iter().zip(&q.state) {
            assert_eq!(s.to_vec().unwrap(), t.to_vec().unwrap(), "{} state", p.name);
        }
    }
}

fn round_trip_on(device: &Device, name: &str) {
    let (x, y) = digits();
    let mut t = trainer(device);
    fit(&mut t, &x[..300 * 64], &y[..300], 1);
    let dir = temp_dir(name);
    io::save(&dir, &t).unwrap();
    let mut back = io::load_trainer(&dir, device).unwrap();
    assert_same_trainer(&t, &back);
    let want = t.predict(&x[..50 * 64], 16).unwrap();
    assert_eq!(back.predict(&x[..50 * 64], 16).unwrap(), want);
    let mut model = io::load_model(&dir, device).unwrap();
    assert_eq!(values(&model), values(&t.model));
    let direct = model.forward(&x[..50 * 64]).unwrap();
    let mut again = io::load_model(dir.join("model.safetensors"), device).unwrap();
    assert_eq!(again.forward(&x[..50 * 64]).unwrap(), direct);
    // Saving again over the same directory replaces the pair and leaves no stray files.
    fit(&mut back, &x[..300 * 64], &y[..300], 1);
    io::save(&dir, &back).unwrap();
    assert_same_trainer(&back, &io::load_trainer(&dir, device).unwrap());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["model.safetensors", "optimizer.safetensors"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn save_and_load_round_trip_on_cpu() {
    round_trip_on(&Device::cpu(), "round-cpu");
}

#[test]
fn save_and_load_round_trip_on_gpu() {
    round_trip_on(&gpu(), "round-gpu");
}

/// A checkpoint saved on one device loads on the other with the same weights.
#[test]
fn checkpoints_move_between_cpu_and_gpu() {
    let (x, y) = digits();
    let mut t = trainer(&gpu());
    fit(&mut t, &x[..200 * 64], &y[..200], 1);
    let dir = temp_dir("cross");
    io::save(&dir, &t).unwrap();
    let on_cpu = io::load_trainer(&dir, &Device::cpu()).unwrap();
    assert_same_trainer(&t, &on_cpu);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every optimizer's state (and a trainer saved before its first step) comes back.
#[test]
fn every_optimizer_state_round_trips() {
    let x = random(12 * 6, 5);
    let y: Vec<f32> = (0..12).map(|i| (i % 3) as f32).collect();
    let dir = temp_dir("optimizers");
    for (k, opt) in optimizers().into_iter().enumerate() {
        let spec = Sequential::new(6)
            .dense_with(Dense::new(5).regularize(1e-3, 0.0))
            .tanh()
            .dense_with(Dense::new(3).no_bias());
        let mut t = spec
            .build(&Device::cpu(), k as u64)
            .unwrap()
            .compile(Loss::SparseCategoricalCrossEntropy, opt, &[])
            .unwrap();
        io::save(&dir, &t).unwrap();
        assert_same_trainer(&t, &io::load_trainer(&dir, &Device::cpu()).unwrap());
        t.train_batch(&x, &y).unwrap();
        t.train_batch(&x, &y).unwrap();
        io::save(&dir, &t).unwrap();
        let mut back = io::load_trainer(&dir, &Device::cpu()).unwrap();
        assert_same_trainer(&t, &back);
        t.train_batch(&x, &y).unwrap();
        back.train_batch(&x, &y).unwrap();
        assert_same_trainer(&t, &back);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn save_model_and_load_weights_into() {
    let device = Device::cpu();
    let dir = temp_dir("weights");
    let model = classifier().build(&device, 1).unwrap();
    let path = dir.join("w.safetensors");
    io::save_model(&path, &model).unwrap();
    let mut other = classifier().build(&device, 2).unwrap();
    assert_ne!(values(&other), values(&model));
    io::load_weights_into(&mut other, &path).unwrap();
    assert_eq!(values(&other), values(&model));
    assert_eq!(
        values(&io::load_model(&path, &device).unwrap()),
        values(&model)
    );
    // A directory gets model.safetensors.
    io::save_model(&dir, &model).unwrap();
    assert!(dir.join("model.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The on-disk layout docs/checkpoints.md documents: names, shapes, dtype and metadata.
#[test]
fn checkpoint_layout_is_as_documented() {
    let (x, y) = digits();
    let mut t = trainer(&Device::cpu());
    fit(&mut t, &x[..100 * 64], &y[..100], 1);
    let dir = temp_dir("layout");
    io::save(&dir, &t).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(names, ["0.bias", "0.weight", "3.bias", "3.weight"]);
    let w = st.tensor("0.weight").unwrap();
    assert_eq!(
        (w.dtype(), w.shape()),
        (safetensors::Dtype::F32, &[32usize, 64][..])
    );
    let first = f32::from_le_bytes(w.data()[..4].try_into().unwrap());
    assert_eq!(
        first,
        t.model.param("0.weight").unwrap().to_vec().unwrap()[0]
    );
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["format"], "kiln-1");
    assert_eq!(meta["loss"], "sparse_categorical_crossentropy");
    assert_eq!(meta["optimizer"], "adam");
    assert_eq!(meta["metrics"], "accuracy,f1");
    assert_eq!(
        ModelFile::parse(&meta["model"])
            .unwrap()
            .to_sequential()
            .unwrap(),
        classifier()
    );

    let bytes = std::fs::read(dir.join("optimizer.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(
        names,
        [
            "0.bias.state0",
            "0.bias.state1",
            "0.weight.state0",
            "0.weight.state1",
            "3.bias.state0",
            "3.bias.state1",
            "3.weight.state0",
            "3.weight.state1"
        ]
    );
    assert_eq!(st.tensor("3.weight.state1").unwrap().shape(), &[10, 64 / 2]);
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta: HashMap<String, String> = header.metadata().clone().unwrap();
    assert_eq!(meta["step"], t.steps().to_string());
    assert_eq!(meta["epoch"], "1");
    assert_eq!(meta["optimizer"], "adam");
    assert_eq!(meta["lr"], "0.003");
    assert_eq!(meta["seed"], "3");
    assert_eq!(meta["state_slots"], "2");
    assert!(meta["rule"].starts_with("Adam"), "{}", meta["rule"]);
    assert!(
        meta["schedule"].contains("warmup = 40"),
        "{}",
        meta["schedule"]
    );
    assert!(meta["training"].contains("optimizer = \"adam\""));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------- bad files

/// A crafted tensor: name, dtype, shape and raw bytes.
type Crafted<'a> = (&'a str, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Writes a safetensors file with these tensors and metadata.
fn write_st(path: &Path, tensors: &[Crafted], meta: Option<HashMap<String, String>>) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, meta).unwrap()).unwrap();
}

fn small() -> Sequential {
    Sequential::new(3).dense(4).relu().dense(2)
}

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

#[test]
fn bad_model_files_give_typed_errors() {
    use safetensors::Dtype::{F16, F32};
    let device = Device::cpu();
    let dir = temp_dir("bad");
    let mut model = small().build(&device, 0).unwrap();
    let good = dir.join("good.safetensors");
    io::save_model(&good, &model).unwrap();
    let good_bytes = std::fs::read(&good).unwrap();
    let before = values(&model);

    // Missing files are I/O errors.
    assert!(matches!(
        io::load_model(dir.join("none.safetensors"), &device),
        Err(Error::Io { .. })
    ));
    assert!(matches!(
        io::load_trainer(dir.join("nothing"), &device),
        Err(Error::Io { .. })
    ));
    assert!(matches!(
        io::load_weights_into(&mut model, dir.join("none.safetensors")),
        Err(Error::Io { .. })
    ));

    let check = |bytes: &[u8], name: &str, want: &str| {
        let path = dir.join(format!("{name}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        let mut m = small().build(&Device::cpu(), 0).unwrap();
        let detail = format_detail(io::load_weights_into(&mut m, &path), name);
        assert!(detail.contains(want), "{name}: {detail}");
        let detail = format_detail(io::load_model(&path, &Device::cpu()), name);
        assert!(detail.contains(want), "{name} (load_model): {detail}");
    };
    check(&[], "empty", "truncated");
    check(&good_bytes[..5], "five-bytes", "truncated");
    check(
        &good_bytes[..good_bytes.len() - 3],
        "truncated",
        "truncated",
    );
    check(&good_bytes[..40], "header-cut", "truncated");
    let mut longer = good_bytes.clone();
    longer.extend([0u8; 4]);
    check(&longer, "trailing", "unexpected bytes");
    check(
        b"PK\x03\x04 this is a zip file, not safetensors",
        "zip",
        "not safetensors",
    );
    let mut text = 20u64.to_le_bytes().to_vec();
    text.extend(b"{\"a\": not json here}");
    check(&text, "not-json", "not a safetensors file");
    // A header that claims a terabyte: refused before anything of that size is allocated.
    let mut lying = (1u64 << 40).to_le_bytes().to_vec();
    lying.extend(b"{}");
    check(&lying, "lying-length", "header length");
    let mut huge = Vec::new();
    let header = br#"{"0.weight":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4000000000000]}}"#;
    huge.extend((header.len() as u64).to_le_bytes());
    huge.extend(header);
    huge.extend([0u8; 16]);
    check(&huge, "lying-shape", "truncated");

    // Crafted files: names, shapes and dtypes that do not fit the model, each a
    // change to the tensors `small()` has.
    let changed = |change: fn(&mut Vec<Crafted>)| {
        let mut t: Vec<Crafted> = vec![
            ("0.weight", F32, vec![4, 3], f32_bytes(12)),
            ("0.bias", F32, vec![4], f32_bytes(4)),
            ("2.weight", F32, vec![2, 4], f32_bytes(8)),
            ("2.bias", F32, vec![2], f32_bytes(2)),
        ];
        change(&mut t);
        t
    };
    let cases = [
        (
            "names",
            changed(|t| t[0].0 = "0.kernel"),
            "missing [0.weight], unexpected [0.kernel]",
        ),
        (
            "missing",
            changed(|t| t.truncate(2)),
            "missing [2.weight, 2.bias]",
        ),
        (
            "transposed",
            changed(|t| t[0].2 = vec![3, 4]),
            "'0.weight' has shape [3, 4], the model expects [4, 3]",
        ),
        (
            "half",
            changed(|t| {
                t[0].1 = F16;
                t[0].3 = vec![0; 24];
            }),
            "'0.weight' has dtype F16, expected F32",
        ),
    ];
    for (name, tensors, want) in cases {
        let path = dir.join(format!("{name}.safetensors"));
        write_st(&path, &tensors, None);
        let detail = format_detail(io::load_weights_into(&mut model, &path), name);
        assert!(detail.contains(want), "{name}: {detail}");
        // Without kiln's metadata, load_model says what to do instead.
        let detail = format_detail(io::load_model(&path, &device), name);
        assert!(detail.contains("load_weights_into"), "{name}: {detail}");
    }

    // The same names from a file without kiln's metadata (as PyTorch writes them) load.
    let path = dir.join("plain.safetensors");
    write_st(&path, &changed(|_| {}), None);
    let mut plain = small().build(&device, 9).unwrap();
    io::load_weights_into(&mut plain, &path).unwrap();
    let want: Vec<f32> = (0..12).map(|i| i as f32).collect();
    assert_eq!(plain.param("0.weight").unwrap().to_vec().unwrap(), want);

    // A checkpoint of a different model.
    let other = Sequential::new(3)
        .dense(5)
        .relu()
        .dense(2)
        .build(&device, 0)
        .unwrap();
    let other_path = dir.join("other.safetensors");
    io::save_model(&other_path, &other).unwrap();
    let detail = format_detail(io::load_weights_into(&mut model, &other_path), "other");
    assert!(
        detail.contains("has shape [5, 3], the model expects [4, 3]")
            && detail.contains("input 3 -> dense 5 -> relu -> dense 2"),
        "{detail}"
    );
    // Metadata whose model does not match its own tensors.
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "kiln-1".to_string());
    meta.insert(
        "model".to_string(),
        ModelFile::from_sequential(&small()).to_toml(),
    );
    let path = dir.join("mismatch.safetensors");
    write_st(
        &path,
        &[("0.weight", F32, vec![4, 3], f32_bytes(12))],
        Some(meta.clone()),
    );
    let detail = format_detail(io::load_model(&path, &device), "mismatch");
    assert!(
        detail.contains("missing [0.bias, 2.weight, 2.bias]"),
        "{detail}"
    );
    meta.insert(
        "model".to_string(),
        "input = 3\n[[layers]]\ndense = 0".to_string(),
    );
    write_st(&path, &[], Some(meta.clone()));
    let detail = format_detail(io::load_model(&path, &device), "bad toml");
    assert!(detail.contains("layers[0].dense"), "{detail}");
    meta.insert("format".to_string(), "kiln-99".to_string());
    write_st(&path, &[], Some(meta));
    let detail = format_detail(io::load_model(&path, &device), "format");
    assert!(detail.contains("kiln-99"), "{detail}");

    // Nothing above touched the model's weights.
    assert_eq!(values(&model), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_optimizer_files_give_typed_errors() {
    let device = Device::cpu();
    let x = random(8 * 3, 1);
    let y: Vec<f32> = (0..8).map(|i| (i % 2) as f32).collect();
    let dir = temp_dir("bad-opt");
    let mut t = small()
        .build(&device, 0)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(0.01),
            &[],
        )
        .unwrap();
    t.train_batch(&x, &y).unwrap();
    io::save(&dir, &t).unwrap();
    let opt_path = dir.join("optimizer.safetensors");
    let good = std::fs::read(&opt_path).unwrap();

    std::fs::write(&opt_path, &good[..good.len() / 2]).unwrap();
    let detail = format_detail(io::load_trainer(&dir, &device), "truncated optimizer");
    assert!(
        detail.contains("optimizer.safetensors") && detail.contains("truncated"),
        "{detail}"
    );

    std::fs::remove_file(&opt_path).unwrap();
    assert!(matches!(
        io::load_trainer(&dir, &device),
        Err(Error::Io { .. })
    ));

    // State tensors of the wrong shape.
    let (_, header) = safetensors::SafeTensors::read_metadata(&good).unwrap();
    let meta = header.metadata().clone().unwrap();
    let mut tensors = Vec::new();
    for p in t.model.params() {
        for k in 0..2 {
            let n = p.value.len();
            let shape = if p.name == "2.weight" {
                vec![n]
            } else {
                p.value.shape().to_vec()
            };
            tensors.push((format!("{}.state{k}", p.name), shape, f32_bytes(n)));
        }
    }
    let borrowed: Vec<Crafted> = tensors
        .iter()
        .map(|(n, s, b)| (n.as_str(), safetensors::Dtype::F32, s.clone(), b.clone()))
        .collect();
    write_st(&opt_path, &borrowed, Some(meta.clone()));
    let detail = format_detail(io::load_trainer(&dir, &device), "state shape");
    assert!(
        detail.contains("'2.weight.state0' has shape [8]"),
        "{detail}"
    );

    // The state of another optimizer (one slot instead of two).
    let mut one = meta.clone();
    one.insert("state_slots".into(), "1".into());
    write_st(&opt_path, &[], Some(one));
    let detail = format_detail(io::load_trainer(&dir, &device), "slots");
    assert!(detail.contains("holds 1 state tensors"), "{detail}");

    // Metadata that is not numbers.
    let mut words = meta.clone();
    words.insert("step".into(), "many".into());
    write_st(&opt_path, &borrowed, Some(words));
    let detail = format_detail(io::load_trainer(&dir, &device), "step");
    assert!(detail.contains("'step' = 'many'"), "{detail}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A save killed between its renames leaves the previous checkpoint loadable.
#[test]
fn interrupted_save_leaves_the_previous_checkpoint() {
    let device = Device::cpu();
    let x = random(8 * 3, 2);
    let y: Vec<f32> = (0..8).map(|i| (i % 2) as f32).collect();
    let mut t = small()
        .build(&device, 0)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(0.01),
            &[],
        )
        .unwrap();
    t.train_batch(&x, &y).unwrap();
    let (old, new) = (temp_dir("crash-old"), temp_dir("crash-new"));
    io::save(&old, &t).unwrap();
    t.train_batch(&x, &y).unwrap();
    io::save(&new, &t).unwrap();

    // What a kill after "optimizer.safetensors -> optimizer.prev.safetensors" and
    // "new optimizer in place", but before the new weights land, leaves behind.
    let crashed = temp_dir("crash");
    std::fs::copy(
        old.join("model.safetensors"),
        crashed.join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        old.join("optimizer.safetensors"),
        crashed.join("optimizer.prev.safetensors"),
    )
    .unwrap();
    let back = io::load_trainer(&crashed, &device).unwrap();
    assert_eq!(back.steps(), 1);
    std::fs::copy(
        new.join("optimizer.safetensors"),
        crashed.join("optimizer.safetensors"),
    )
    .unwrap();
    let back = io::load_trainer(&crashed, &device).unwrap();
    assert_eq!(back.steps(), 1);
    assert_same_trainer(&back, &io::load_trainer(&old, &device).unwrap());
    // A leftover temporary file from a killed write is ignored.
    std::fs::write(crashed.join(".model.safetensors.tmp-1"), b"partial").unwrap();
    assert_eq!(io::load_trainer(&crashed, &device).unwrap().steps(), 1);

    // Without the previous state, a mixed pair is an error, not a silent mix.
    std::fs::remove_file(crashed.join("optimizer.prev.safetensors")).unwrap();
    let detail = format_detail(io::load_trainer(&crashed, &device), "mixed");
    assert!(detail.contains("another save"), "{detail}");
    for d in [old, new, crashed] {
        let _ = std::fs::remove_dir_all(d);
    }
}

// ---------------------------------------------------------------- Python

/// NumPy and Hugging Face's safetensors read kiln's checkpoints as PyTorch state dicts.
#[test]
fn python_reads_the_checkpoint() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import numpy, safetensors"])
        .output();
    let missing = match probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "python3 lacks numpy or safetensors (pip install numpy safetensors): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("no python3 ({e})")),
    };
    if let Some(why) = missing {
        cannot_run("python_reads_the_checkpoint", &why);
        return;
    }
    let (x, y) = digits();
    let mut t = trainer(&Device::cpu());
    fit(&mut t, &x[..100 * 64], &y[..100], 1);
    let dir = temp_dir("python");
    io::save(&dir, &t).unwrap();
    let script = r#"
import sys, numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
d = sys.argv[1]
for name in ["model", "optimizer"]:
    tensors = load_file(f"{d}/{name}.safetensors")
    for key in sorted(tensors):
        a = tensors[key]
        assert a.dtype == np.float32 and a.flags["C_CONTIGUOUS"], key
        print(name, key, ",".join(map(str, a.shape)), " ".join(repr(float(v)) for v in a.ravel()))
with safe_open(f"{d}/model.safetensors", "np") as f:
    meta = f.metadata()
print("meta", meta["format"], meta["loss"])
# A forward pass in NumPy, PyTorch's y = x W^T + b, for the model's first rows.
x = np.array([float(v) for v in sys.argv[2].split()], dtype=np.float32).reshape(-1, 64)
m = load_file(f"{d}/model.safetensors")
h = np.maximum(x @ m["0.weight"].T + m["0.bias"], 0)
z = h @ m["3.weight"].T + m["3.bias"]
p = np.exp(z - z.max(axis=1, keepdims=True))
p /= p.sum(axis=1, keepdims=True)
print("probs", " ".join(repr(float(v)) for v in p.ravel()))
"#;
    let rows = 5;
    let xs: Vec<String> = x[..rows * 64].iter().map(|v| v.to_string()).collect();
    let out = std::process::Command::new("python3")
        .args(["-c", script, dir.to_str().unwrap(), &xs.join(" ")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut seen = Vec::new();
    for line in stdout.lines() {
        let mut parts = line.splitn(4, ' ');
        match parts.next() {
            Some(file @ ("model" | "optimizer")) => {
                let key = parts.next().unwrap();
                let shape: Vec<usize> = parts
                    .next()
                    .unwrap()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().unwrap())
                    .collect();
                let got: Vec<f32> = parts
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .map(|v| v.parse::<f64>().unwrap() as f32)
                    .collect();
                let (param, state) = match key.split_once(".state") {
                    Some((p, k)) => (p, Some(k.parse::<usize>().unwrap())),
                    None => (key, None),
                };
                let p = &t.model.params()[t.model.param_index(param).unwrap()];
                let want = match state {
                    None => p.value.to_vec().unwrap(),
                    Some(k) => p.state[k].to_vec().unwrap(),
                };
                assert_eq!(shape, p.value.shape(), "{file} {key}");
                assert_eq!(got, want, "{file} {key}: values differ");
                seen.push(format!("{file} {key}"));
            }
            Some("meta") => assert_eq!(line, "meta kiln-1 sparse_categorical_crossentropy"),
            Some("probs") => {
                let got: Vec<f32> = line[6..]
                    .split_whitespace()
                    .map(|v| v.parse::<f64>().unwrap() as f32)
                    .collect();
                let want = t.predict(&x[..rows * 64], rows).unwrap();
                assert_close(&got, &want, 1e-4, 1e-6, "numpy forward pass");
                seen.push("probs".into());
            }
            _ => panic!("unexpected python output: {line}"),
        }
    }
    assert_eq!(seen.len(), 4 + 8 + 1, "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
