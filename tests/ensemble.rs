//! Ensembles: several MNIST MLPs beat their median member, votes follow the documented
//! tie rule, members that cannot be combined are refused by name, and the CLI agrees.

mod common;

use std::path::{Path, PathBuf};

use kiln::data::{idx, Dataset, Scaler, Scaling};
use kiln::train::ensemble::vote;
use kiln::train::{Combine, Ensemble, Member};
use kiln::{Device, Error, FitOptions, Loss, Metric, Optimizer, Sequential, Trainer};

/// MNIST beside the project, or `None` (reported) where it is absent.
fn mnist() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
    if dir.is_dir() {
        return Some(dir);
    }
    common::cannot_run("mnist", "../shared/data/mnist is absent");
    None
}

/// A 784-64-10 MLP trained one epoch on `train` with `seed`.
fn mlp(device: &Device, train: &Dataset, seed: u64) -> Trainer {
    let model = Sequential::new(784)
        .dense(64)
        .relu()
        .dense(10)
        .softmax()
        .build(device, seed)
        .unwrap();
    let mut t = model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(1e-3),
            &[Metric::Accuracy],
        )
        .unwrap();
    let opts = FitOptions {
        seed,
        ..FitOptions::new(1, 32)
    };
    t.fit(&train.x, &train.y, opts).unwrap();
    t
}

#[test]
fn five_mnist_mlps_beat_their_median_member() {
    let Some(dir) = mnist() else { return };
    let (train, test) = idx::load_mnist(&dir).unwrap();
    let test = test.select(&(0..5000).collect::<Vec<_>>()).unwrap();
    let scaler = Scaler::fit(&train, Scaling::Divide(255.0)).unwrap();
    let mut scaled_test = test.x.clone();
    scaler.transform(&mut scaled_test).unwrap();
    let device = Device::cpu();
    let (rows, members) = (4000, 5);
    let mut alone = Vec::new();
    let mut built = Vec::new();
    for m in 0..members {
        // Each member sees its own rows: bagging keeps their mistakes apart.
        let ids: Vec<usize> = (m * rows..(m + 1) * rows).collect();
        let mut part = train.select(&ids).unwrap();
        scaler.apply(&mut part).unwrap();
        let mut t = mlp(&device, &part, 10 + m as u64);
        alone.push(t.predict(&scaled_test, 500).unwrap());
        let member = Member::new(format!("mlp{m}"), t).with_scaler(Some(scaler.clone()));
        built.push(member);
    }
    let mut ens = Ensemble::new(built).unwrap();
    let mean = ens.predict_proba(&test.x, 500).unwrap();
    for (i, p) in mean.iter().enumerate() {
        let want = alone.iter().map(|a| a[i]).sum::<f32>() / members as f32;
        assert!((p - want).abs() <= 1e-6, "row value {i}: {p} vs {want}");
    }
    let e = ens.evaluate(&test.x, &test.y, 500, Combine::Mean).unwrap();
    let v = ens.evaluate(&test.x, &test.y, 500, Combine::Vote).unwrap();
    let mut accs: Vec<f64> = e.members.iter().map(|(_, a)| *a).collect();
    accs.sort_by(f64::total_cmp);
    let median = accs[members / 2];
    println!(
        "ensemble of {members} MNIST MLPs (784-64-10, 1 epoch on {rows} rows each), \
         {} test rows: mean accuracy {:.4} (loss {:.4}), vote accuracy {:.4}; \
         members {accs:.4?}, median {median:.4}",
        test.n, e.accuracy, e.loss, v.accuracy
    );
    assert!(e.accuracy > median, "{} vs median {median}", e.accuracy);
    let votes = ens.predict_classes(&test.x, 500, Combine::Vote).unwrap();
    let member_classes: Vec<Vec<usize>> = alone.iter().map(|p| argmax(p)).collect();
    assert_eq!(votes, vote(&member_classes, &mean, 10));
}

/// The first of equal maxima of each row of ten.
fn argmax(p: &[f32]) -> Vec<usize> {
    p.chunks(10)
        .map(|r| (0..10).fold(0, |b, c| if r[c] > r[b] { c } else { b }))
        .collect()
}

#[test]
fn votes_follow_the_majority_then_the_mean_probability_then_the_lowest_class() {
    // Four members' classes for four rows, and the averaged probabilities.
    let members = vec![
        vec![2, 0, 0, 1],
        vec![2, 1, 1, 2],
        vec![0, 1, 1, 0],
        vec![1, 0, 0, 2],
    ];
    let mean = [
        0.2, 0.3, 0.5, // row 0: class 2 has two votes, the others one
        0.3, 0.45, 0.25, // row 1: 0 and 1 tie; 1 is more probable
        0.4, 0.4, 0.2, // row 2: 0 and 1 tie at equal probability; the lower id wins
        0.5, 0.2, 0.3, // row 3: two votes for 2 beat the most probable class 0
    ];
    assert_eq!(vote(&members, &mean, 3), vec![2, 1, 0, 2]);
}

/// A small classifier (or regression model) of `inputs` features and `outputs` outputs.
fn small(inputs: usize, outputs: usize, loss: Loss) -> Trainer {
    Sequential::new(inputs)
        .dense(outputs)
        .build(&Device::cpu(), 1)
        .unwrap()
        .compile(loss, Optimizer::sgd(0.1), &[])
        .unwrap()
}

/// The message of an ensemble error.
fn ensemble_error(members: Vec<Member>) -> String {
    match Ensemble::new(members) {
        Err(Error::Ensemble(m)) => m,
        Err(e) => panic!("not an ensemble error: {e}"),
        Ok(_) => panic!("the ensemble was accepted"),
    }
}

#[test]
fn members_that_do_not_fit_together_are_refused_by_name() {
    let ce = Loss::SparseCategoricalCrossEntropy;
    assert!(ensemble_error(vec![]).contains("no members"));
    let widths = ensemble_error(vec![
        Member::new("runs/a", small(4, 3, ce)),
        Member::new("runs/b", small(5, 3, ce)),
    ]);
    assert!(
        widths.contains("input widths") && widths.contains("runs/b"),
        "{widths}"
    );
    let classes = ensemble_error(vec![
        Member::new("runs/a", small(4, 3, ce)),
        Member::new("runs/c", small(4, 4, ce)),
    ]);
    assert!(
        classes.contains("classes") && classes.contains("runs/c"),
        "{classes}"
    );
    let regression = ensemble_error(vec![Member::new("runs/r", small(4, 1, Loss::Mse))]);
    assert!(regression.contains("only classifiers"), "{regression}");
}

/// Runs the kiln binary and insists that it succeeds; returns its standard output.
fn kiln_ok(args: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "kiln {args:?}:\n{out}\n{err}");
    out.into_owned()
}

#[test]
fn cli_ensembles_agree_with_the_library() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ens-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runs: Vec<String> = (1..=3)
        .map(|s| dir.join(format!("r{s}")).display().to_string())
        .collect();
    for (s, run) in runs.iter().enumerate() {
        let seed = s.to_string();
        let args = [
            "train", "--data", "digits", "--layers", "64,32,10", "--epochs", "2",
        ];
        let rest = [
            "--seed", &seed, "--scale", "16", "--device", "cpu", "--out", run,
        ];
        kiln_ok(&[&args[..], &rest[..]].concat());
    }
    let list = runs.join(",");
    let common = ["--ensemble", &list, "--device", "cpu"];
    let out = kiln_ok(
        &[
            &["eval", "--data", "digits", "--combine", "vote"],
            &common[..],
        ]
        .concat(),
    );
    let printed: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("accuracy"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in:\n{out}"));
    // The runs scaled pixels by 1/16: the library's members do the same.
    let digits = kiln::data::digits().unwrap();
    let scaler = Scaler::fit(&digits, Scaling::Divide(16.0)).unwrap();
    let members = runs
        .iter()
        .map(|r| {
            let t = kiln::io::load_trainer(r, &Device::cpu()).unwrap();
            Member::new(r.clone(), t).with_scaler(Some(scaler.clone()))
        })
        .collect();
    let mut ens = Ensemble::new(members).unwrap();
    let e = ens
        .evaluate(&digits.x, &digits.y, 32, Combine::Vote)
        .unwrap();
    assert!(
        (printed - e.accuracy).abs() < 1e-4,
        "{printed} vs {}",
        e.accuracy
    );
    assert_eq!(out.matches("member ").count(), 3, "{out}");
    // Ensemble::load feeds the input as given: scaled here first.
    let mut scaled = digits.x.clone();
    scaler.transform(&mut scaled).unwrap();
    let mut loaded = Ensemble::load(&runs, &Device::cpu()).unwrap();
    let again = loaded
        .evaluate(&scaled, &digits.y, 32, Combine::Vote)
        .unwrap();
    assert!((again.accuracy - e.accuracy).abs() < 1e-9);

    // Five raw rows as a CSV with the features' header.
    let csv = dir.join("rows.csv");
    let header: Vec<String> = (0..64).map(|i| format!("f{i}")).collect();
    let mut text = header.join(",") + "\n";
    for row in digits.x.chunks(64).take(5) {
        let fields: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        text += &(fields.join(",") + "\n");
    }
    std::fs::write(&csv, text).unwrap();
    let csv = csv.display().to_string();
    let predicted = kiln_ok(&[&["predict", "--input", &csv], &common[..]].concat());
    let want = ens
        .predict_classes(&digits.x[..5 * 64], 32, Combine::Mean)
        .unwrap();
    let got: Vec<usize> = predicted
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, want, "{predicted}");
    assert!(
        predicted.starts_with("row,predicted,prob_0,"),
        "{predicted}"
    );
    let both = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["eval", "--checkpoint", &runs[0], "--ensemble", &list])
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2), "--checkpoint with --ensemble");
}
