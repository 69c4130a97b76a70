//! Stacked trials train exactly as the same trials trained one by one with `fit`
//! (float reassociation aside), and as each trial stacked alone.
mod common;
use common::*;
use kiln::train::{
    fit_grouped, fit_stacked, group_by_shape, StackOptions, StackedTrials, TrialConfig,
};
use kiln::{Device, Error, FitOptions, History, Loss, Metric, Optimizer, Sequential, Validation};

/// Losses: the same sums in another order, compounded over a few epochs.
const LOSS_RTOL: f64 = 1e-5;
/// Weights after a few epochs of steps whose gradients differ by rounding.
const PARAM_RTOL: f32 = 1e-4;
const PARAM_ATOL: f32 = 2e-5;
const ROWS: usize = 150;
const INPUTS: usize = 12;
const CLASSES: usize = 4;
const EPOCHS: usize = 3;
const BATCH: usize = 32;

/// Rows of 12 features labelled by which of four linear scores is largest.
fn data() -> (Vec<f32>, Vec<f32>) {
    let x = random(ROWS * INPUTS, 21);
    let w = random(INPUTS * CLASSES, 22);
    let y = x
        .chunks(INPUTS)
        .map(|r| {
            let score = |c: usize| -> f32 { (0..INPUTS).map(|i| r[i] * w[c * INPUTS + i]).sum() };
            (0..CLASSES).fold(0, |b, c| if score(c) > score(b) { c } else { b }) as f32
        })
        .collect();
    (x, y)
}

/// One hidden layer of 17 (the wide first-layer path), or two (the batched hidden path).
fn models() -> [Sequential; 2] {
    [
        Sequential::new(INPUTS).dense(17).relu().dense(CLASSES),
        Sequential::new(INPUTS)
            .dense(17)
            .tanh()
            .dense(3)
            .relu()
            .dense(CLASSES)
            .softmax(),
    ]
}

fn trial(model: &Sequential, optimizer: Optimizer, seed: u64) -> TrialConfig {
    TrialConfig {
        model: model.clone(),
        optimizer,
        seed,
    }
}

/// Three Adam trials, three SGD ones (momentum), and a mixed stack.
fn stacks(model: &Sequential) -> Vec<Vec<TrialConfig>> {
    let adam = [(1e-3, 0.0, 1), (3e-3, 1e-3, 2), (1e-2, 0.0, 3)];
    let sgd = [(0.05, 0.0, 4), (0.1, 1e-3, 5), (0.2, 0.0, 6)];
    vec![
        adam.iter()
            .map(|&(lr, wd, s)| trial(model, Optimizer::adam(lr).weight_decay(wd), s))
            .collect(),
        sgd.iter()
            .map(|&(lr, wd, s)| {
                let o = Optimizer::sgd_momentum(lr, 0.9, false).weight_decay(wd);
                trial(model, o, s)
            })
            .collect(),
        vec![
            trial(model, Optimizer::adam(2e-3), 7),
            trial(model, Optimizer::sgd(0.1), 8),
            trial(model, Optimizer::adam(5e-3).weight_decay(1e-2), 9),
        ],
    ]
}

fn stack_options() -> StackOptions {
    StackOptions {
        seed: 7,
        validation: Validation::Split(0.2),
        ..StackOptions::new(EPOCHS, BATCH)
    }
}

/// The trial trained alone by the ordinary `Trainer`: its history and parameters.
fn alone(device: &Device, t: &TrialConfig, x: &[f32], y: &[f32]) -> (History, Named) {
    let mut trainer = t
        .model
        .build(device, t.seed)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            t.optimizer.clone(),
            &[Metric::Accuracy],
        )
        .unwrap();
    let opts = FitOptions {
        seed: 7,
        validation: Validation::Split(0.2),
        ..FitOptions::new(EPOCHS, BATCH)
    };
    let h = trainer.fit(x, y, opts).unwrap();
    let params = trainer
        .model
        .params()
        .iter()
        .map(|p| (p.name.clone(), p.value.to_vec().unwrap()))
        .collect();
    (h, params)
}

fn assert_histories(got: &History, want: &History, what: &str) {
    assert_eq!(got.epochs.len(), want.epochs.len(), "{what}");
    for (g, w) in got.epochs.iter().zip(&want.epochs) {
        let close = |a: f64, b: f64| (a - b).abs() <= LOSS_RTOL * b.abs();
        assert!(
            close(g.loss, w.loss),
            "{what} epoch {}: loss {} vs {}",
            g.epoch,
            g.loss,
            w.loss
        );
        let (gv, wv) = (g.val_loss.unwrap(), w.val_loss.unwrap());
        assert!(
            close(gv, wv),
            "{what} epoch {}: val_loss {gv} vs {wv}",
            g.epoch
        );
        assert_eq!(g.lr, w.lr, "{what}");
        // Accuracy counts rows: equal unless a row's two best logits are within rounding.
        for name in ["accuracy", "val_accuracy"] {
            let (a, b) = (g.get(name).unwrap(), w.get(name).unwrap());
            assert!(
                (a - b).abs() <= 1.0 / 30.0 + 1e-9,
                "{what} {name}: {a} vs {b}"
            );
        }
    }
}

type Named = Vec<(String, Vec<f32>)>;

fn stacked_params(s: &StackedTrials, k: usize) -> Named {
    s.params(k).unwrap()
}

/// Every parameter of `want` is in `got` under its name, with close values.
fn assert_params(got: &Named, want: &Named, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (name, w) in want {
        let g = &got.iter().find(|(n, _)| n == name).expect(name).1;
        assert_close(g, w, PARAM_RTOL, PARAM_ATOL, &format!("{what} {name}"));
    }
}

#[test]
fn stacked_trials_train_as_each_trial_alone() {
    let (x, y) = data();
    for device in [gpu(), Device::cpu()] {
        for model in models() {
            for trials in stacks(&model) {
                let mut stack = StackedTrials::new(&device, &trials).unwrap();
                let histories = stack.fit(&x, &y, &stack_options()).unwrap();
                assert_eq!(histories.len(), trials.len());
                for (k, t) in trials.iter().enumerate() {
                    let what = format!(
                        "{:?} trial {k} of {} on {device:?}",
                        t.optimizer.rule,
                        trials.len()
                    );
                    let (h, params) = alone(&device, t, &x, &y);
                    assert_histories(&histories[k], &h, &what);
                    assert_params(&stacked_params(&stack, k), &params, &what);
                    // The same trial stacked alone (K = 1).
                    let mut one = StackedTrials::new(&device, std::slice::from_ref(t)).unwrap();
                    let h1 = one.fit(&x, &y, &stack_options()).unwrap();
                    assert_histories(&histories[k], &h1[0], &format!("{what}, K = 1"));
                    assert_params(
                        &stacked_params(&stack, k),
                        &stacked_params(&one, 0),
                        &format!("{what}, K = 1"),
                    );
                }
                // Training moved every trial: the losses fell.
                for h in &histories {
                    assert!(h.epochs[EPOCHS - 1].loss < h.epochs[0].loss, "{h:?}");
                }
            }
        }
    }
}

#[test]
fn a_trial_comes_back_as_a_model_with_its_weights() {
    let (x, y) = data();
    let device = gpu();
    let trials = &stacks(&models()[0])[0];
    let mut stack = StackedTrials::new(&device, trials).unwrap();
    stack.fit(&x, &y, &StackOptions::new(1, BATCH)).unwrap();
    let model = stack.model(1).unwrap();
    let want = stacked_params(&stack, 1);
    assert_eq!(model.params().len(), want.len());
    for p in model.params() {
        let w = &want.iter().find(|(n, _)| *n == p.name).expect(&p.name).1;
        assert_eq!(&p.value.to_vec().unwrap(), w, "{}", p.name);
    }
}

#[test]
fn shapes_group_and_mismatched_stacks_are_errors() {
    let (x, y) = data();
    let [a, b] = models();
    let device = gpu();
    let mixed = vec![
        trial(&a, Optimizer::adam(1e-3), 1),
        trial(&b, Optimizer::adam(1e-3), 2),
        trial(&a, Optimizer::sgd(0.1), 3),
    ];
    assert_eq!(group_by_shape(&mixed).unwrap(), vec![vec![0, 2], vec![1]]);
    let e = StackedTrials::new(&device, &mixed).err().unwrap();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = StackedTrials::new(&device, &[]).err().unwrap();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    // Layers that do not stack, and clipping, are refused up front.
    let conv = Sequential::image(1, 4, 4)
        .conv2d(2, 3)
        .flatten()
        .dense(CLASSES);
    let e = StackedTrials::new(&device, &[trial(&conv, Optimizer::sgd(0.1), 1)])
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let clipped = trial(&a, Optimizer::sgd(0.1).clip_norm(1.0), 1);
    assert!(StackedTrials::new(&device, &[clipped]).is_err());
    // Labels outside the classes, before anything trains.
    let mut s = StackedTrials::new(&device, &mixed[..1]).unwrap();
    let bad: Vec<f32> = y.iter().map(|v| v + CLASSES as f32).collect();
    assert!(matches!(
        s.fit(&x, &bad, &StackOptions::new(1, BATCH)),
        Err(Error::InvalidArgument { .. })
    ));
    // Grouped training gives each trial its group's stacked history, in the given order.
    let opts = StackOptions::new(1, BATCH);
    let grouped = fit_grouped(&device, &mixed, &x, &y, &opts).unwrap();
    let first = fit_stacked(
        &device,
        &[mixed[0].clone(), mixed[2].clone()],
        &x,
        &y,
        &opts,
    )
    .unwrap();
    let second = fit_stacked(&device, &mixed[1..2], &x, &y, &opts).unwrap();
    for (g, w) in grouped.iter().zip([&first[0], &second[0], &first[1]]) {
        assert_eq!(g.epochs[0].loss, w.epochs[0].loss);
    }
}
