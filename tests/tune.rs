//! `kiln tune` end to end on the digits CSV (../shared/data/digits): the search, successive
//! halving, resuming, the best trial's folder, best-N ensembles, HParams summaries, and
//! the library's typed errors.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use kiln::tune::{best_runs, Domain, Hyper, Search, Space, Strategy, Trials};
use kiln::{Error, TuneError};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tune_check.py");

fn digits() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/digits/digits.csv");
    assert!(
        path.exists(),
        "{} is missing (see its README)",
        path.display()
    );
    format!("csv:{}", path.display())
}

fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("tune", name)
}

fn kiln(args: &[&str]) -> Output {
    Command::new(KILN).args(args).output().unwrap()
}

fn kiln_ok(args: &[&str]) -> String {
    common::run_ok(KILN, args)
}

/// `kiln tune` on digits with these options into `out`.
fn tune(out: &Path, extra: &[&str]) -> String {
    let data = digits();
    let mut args = vec![
        "tune",
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    kiln_ok(&args)
}

/// The trials a run of `kiln tune` started afresh, from its "trial NNN: start" lines.
fn started(stdout: &str) -> Vec<usize> {
    stdout
        .lines()
        .filter_map(|l| {
            let (id, what) = l.strip_prefix("trial ")?.split_once(':')?;
            what.trim_start()
                .starts_with("start")
                .then(|| id.parse().ok())?
        })
        .collect()
}

/// The (trial, epoch) pairs of a run's epoch lines ("  002 epoch 1/4  loss ...").
fn trained_epochs(stdout: &str) -> Vec<(usize, usize)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let trial = words.next()?.parse().ok()?;
            (words.next()? == "epoch").then_some(())?;
            let epoch = words.next()?.split('/').next()?.parse().ok()?;
            Some((trial, epoch))
        })
        .collect()
}

fn trials(dir: &Path) -> Trials {
    Trials::load(dir).unwrap().expect("trials.csv written")
}

/// The epoch column of a run folder's history.csv.
fn history_epochs(dir: &Path) -> Vec<usize> {
    let text = std::fs::read_to_string(dir.join("history.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect()
}

/// The last validation accuracy of a run folder's history.csv.
fn last_val_accuracy(dir: &Path) -> f64 {
    let text = std::fs::read_to_string(dir.join("history.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "val_accuracy").unwrap();
    let last = lines.last().unwrap();
    last.split(',').nth(col).unwrap().parse().unwrap()
}

/// One grid search shared by the tests that read its results: 4 trials of 3 epochs,
/// kiln train's default (128 units, lr 0.002) among them.
struct Searched {
    dir: PathBuf,
    tensorboard: PathBuf,
    stdout: String,
}

const EPOCHS: &str = "3";

fn searched() -> &'static Searched {
    static RUN: OnceLock<Searched> = OnceLock::new();
    RUN.get_or_init(|| {
        let root = temp_dir("searched");
        let (dir, tensorboard) = (root.join("search"), root.join("tb"));
        let stdout = tune(
            &dir,
            &[
                "--strategy",
                "grid",
                "--param",
                "units=16,128",
                "--param",
                "lr=0.002,0.02",
                "--epochs",
                EPOCHS,
                "--tensorboard",
                tensorboard.to_str().unwrap(),
            ],
        );
        Searched {
            dir,
            tensorboard,
            stdout,
        }
    })
}

#[test]
fn a_search_finds_a_configuration_at_least_as_good_as_the_default() {
    let s = searched();
    let t = trials(&s.dir);
    assert_eq!(t.rows.len(), 4, "{}", s.stdout);
    assert!(t
        .rows
        .iter()
        .all(|r| r.epochs == 3 && r.status == kiln::tune::Status::Done));
    let best = t.best(1)[0];
    // The default run, trained as `kiln train` trains it.
    let default = s.dir.parent().unwrap().join("default");
    kiln_ok(&[
        "train",
        "--data",
        &digits(),
        "--epochs",
        EPOCHS,
        "--out",
        default.to_str().unwrap(),
    ]);
    let default_acc = last_val_accuracy(&default);
    let best_acc = best.metric.unwrap();
    assert!(
        best_acc >= default_acc - 1e-6,
        "best trial {} reached {best_acc}, the default {default_acc}",
        best.id
    );
    // The trial with the default's settings trained as the default run did.
    let twin = t
        .rows
        .iter()
        .find(|r| r.config.to_string() == "units=128 lr=0.002")
        .unwrap();
    assert!(
        (twin.metric.unwrap() - default_acc).abs() < 0.02,
        "{twin:?} vs {default_acc}"
    );
    // The table lists the best first; trials.png is drawn.
    let table_first = s
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("1  "))
        .unwrap();
    assert!(
        table_first.contains(&format!("{:03}", best.id)),
        "{table_first}"
    );
    assert!(std::fs::metadata(s.dir.join("trials.png")).unwrap().len() > 1000);
}

#[test]
fn the_best_trial_folder_works_with_eval_predict_and_export() {
    let s = searched();
    let best = s.dir.join("best");
    let t = trials(&s.dir);
    let id = t.best(1)[0].id;
    assert_eq!(
        std::fs::read(best.join("model.safetensors")).unwrap(),
        std::fs::read(kiln::tune::trial_dir(&s.dir, id).join("model.safetensors")).unwrap()
    );
    let eval = kiln_ok(&["eval", "--checkpoint", best.to_str().unwrap()]);
    assert!(eval.contains("accuracy"), "{eval}");
    let input = s.dir.parent().unwrap().join("rows.csv");
    let text = std::fs::read_to_string(digits().strip_prefix("csv:").unwrap()).unwrap();
    std::fs::write(&input, text.lines().take(6).collect::<Vec<_>>().join("\n")).unwrap();
    let predicted = kiln_ok(&[
        "predict",
        "--checkpoint",
        best.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(
        predicted.lines().count(),
        6,
        "a header and 5 rows:\n{predicted}"
    );
    let onnx = s.dir.parent().unwrap().join("best.onnx");
    kiln_ok(&[
        "export",
        "--checkpoint",
        best.to_str().unwrap(),
        "--onnx",
        onnx.to_str().unwrap(),
    ]);
    assert!(std::fs::metadata(&onnx).unwrap().len() > 1000);
}

#[test]
fn best_n_ensembles_evaluate_and_predict() {
    let s = searched();
    let spec = format!("best:3:{}", s.dir.display());
    let runs = best_runs(&s.dir, 3).unwrap();
    assert_eq!(runs.len(), 3);
    let ranked: Vec<PathBuf> = trials(&s.dir)
        .ranked()
        .iter()
        .take(3)
        .map(|r| kiln::tune::trial_dir(&s.dir, r.id))
        .collect();
    assert_eq!(runs, ranked);
    let eval = kiln_ok(&["eval", "--ensemble", &spec]);
    assert!(eval.contains("3 members"), "{eval}");
    let input = s.dir.parent().unwrap().join("ens-rows.csv");
    let text = std::fs::read_to_string(digits().strip_prefix("csv:").unwrap()).unwrap();
    std::fs::write(&input, text.lines().take(4).collect::<Vec<_>>().join("\n")).unwrap();
    let predicted = kiln_ok(&[
        "predict",
        "--ensemble",
        &spec,
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(predicted.lines().count(), 4, "{predicted}");
    let zero = kiln(&["eval", "--ensemble", &format!("best:0:{}", s.dir.display())]);
    assert!(!zero.status.success());
}

#[test]
fn tensorboard_sees_every_trial_and_its_hyperparameters() {
    let s = searched();
    // Fails, with the reason, without python3 and its tensorboard package.
    let out = common::run_ok("python3", &[CHECK, s.tensorboard.to_str().unwrap()]);
    let read: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        read["experiment"]["hparams"],
        serde_json::json!(["units", "lr"])
    );
    assert_eq!(
        read["experiment"]["metrics"],
        serde_json::json!(["val_accuracy", "val_loss"])
    );
    let t = trials(&s.dir);
    let sessions = read["sessions"].as_object().unwrap();
    assert_eq!(sessions.len(), t.rows.len(), "{read}");
    for row in &t.rows {
        let s = &sessions[&format!("trial-{:03}", row.id)];
        let units = row.config.get(Hyper::Units).unwrap().number().unwrap();
        let lr = row.config.get(Hyper::Lr).unwrap().number().unwrap();
        assert_eq!(s["hparams"]["units"].as_f64(), Some(units));
        assert_eq!(s["hparams"]["lr"].as_f64(), Some(lr));
        assert_eq!(s["status"], 1, "STATUS_SUCCESS");
        let acc = s["scalars"]["val_accuracy"][0][1].as_f64().unwrap();
        assert!((acc - row.metric.unwrap()).abs() < 1e-5);
        assert_eq!(s["scalars"]["val_accuracy"][0][0], 3);
    }
}

#[test]
fn successive_halving_spends_fewer_epochs_than_grid() {
    let root = temp_dir("halving");
    let space = [
        "--param",
        "units=16,32",
        "--param",
        "lr=0.003,0.03",
        "--epochs",
        "4",
    ];
    let grid = root.join("grid");
    tune(&grid, &[&["--strategy", "grid"][..], &space].concat());
    let halving = root.join("halving");
    tune(
        &halving,
        &[&["--strategy", "halving", "--eta", "2"][..], &space].concat(),
    );
    let epochs = |d: &Path| trials(d).rows.iter().map(|r| r.epochs).sum::<usize>();
    assert_eq!(epochs(&grid), 16);
    // Rungs of 1, 2 and 4 epochs for 4, 2 and 1 trials: two halted after 1 epoch, one
    // after 2, and the winner's 4.
    assert_eq!(epochs(&halving), 1 + 1 + 2 + 4);
    let t = trials(&halving);
    assert_eq!(t.rows.len(), 4);
    let done: Vec<_> = t
        .rows
        .iter()
        .filter(|r| r.status == kiln::tune::Status::Done)
        .collect();
    assert_eq!(done.len(), 1);
    // The winner went on from its checkpoints: every epoch trained once.
    assert_eq!(
        history_epochs(&kiln::tune::trial_dir(&halving, done[0].id)),
        [1, 2, 3, 4]
    );
    let halted = t
        .rows
        .iter()
        .filter(|r| r.status == kiln::tune::Status::Halted)
        .count();
    assert_eq!(halted, 3);
}

#[test]
fn a_resumed_search_runs_no_trial_twice() {
    let root = temp_dir("resume");
    let out = root.join("search");
    let space = [
        "--param",
        "units=8,16,32",
        "--param",
        "lr=log:1e-3:1e-1",
        "--epochs",
        "2",
    ];
    let first = tune(&out, &[&["--trials", "2"][..], &space].concat());
    assert_eq!(started(&first), [1, 2]);
    let second = tune(&out, &[&["--trials", "4"][..], &space].concat());
    assert_eq!(started(&second), [3, 4], "{second}");
    let third = tune(&out, &[&["--trials", "4"][..], &space].concat());
    assert!(started(&third).is_empty(), "{third}");

    // Killed in the middle of a search: the rerun continues the trial it was training.
    let killed = root.join("killed");
    let data = digits();
    let args = [
        "tune",
        "--data",
        &data,
        "--out",
        killed.to_str().unwrap(),
        "--trials",
        "4",
        "--param",
        "units=8,16,32,64",
        "--epochs",
        "4",
    ];
    let mut child = Command::new(KILN)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while Trials::load(&killed)
        .ok()
        .flatten()
        .is_none_or(|t| t.rows.is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no trial finished in 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let before = child.wait_with_output().unwrap();
    let again = kiln_ok(&args);
    // Every epoch line is printed once the epoch's checkpoint is saved: across both runs,
    // no trial's epoch may be trained twice.
    let mut all = trained_epochs(&String::from_utf8_lossy(&before.stdout));
    all.extend(trained_epochs(&again));
    let unique: BTreeSet<(usize, usize)> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "an epoch trained twice: {all:?}");
    // (An epoch saved but not yet reported when the kill came is in neither.)
    assert!(unique.len() > 4, "{all:?}");
    let t = trials(&killed);
    assert_eq!(
        t.rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    for r in &t.rows {
        assert_eq!(
            history_epochs(&kiln::tune::trial_dir(&killed, r.id)),
            [1, 2, 3, 4]
        );
    }
}

fn tune_error(e: Error) -> TuneError {
    match e {
        Error::Tune(t) => t,
        other => panic!("not a tune error: {other}"),
    }
}

#[test]
fn descriptions_and_budgets_fail_with_typed_errors() {
    let dir = temp_dir("errors");
    let mut space = Space::new();
    let search = Search::new(space.clone(), Strategy::Random { seed: 0 }, 2, &dir);
    assert_eq!(
        tune_error(search.check().unwrap_err()),
        TuneError::EmptySpace
    );
    assert!(matches!(
        tune_error(Domain::parse(Hyper::Lr, "log:0.1:0.001").unwrap_err()),
        TuneError::BackwardRange { .. }
    ));
    assert!(matches!(
        tune_error(space.param("width=8,16").unwrap_err()),
        TuneError::UnknownName { name, .. } if name == "width"
    ));
    space.param("units=8,16").unwrap();
    let mut search = Search::new(space, Strategy::Random { seed: 0 }, 2, &dir);
    search.trials = Some(0);
    assert_eq!(
        tune_error(search.check().unwrap_err()),
        TuneError::ZeroBudget("trial")
    );
    search.trials = None;
    search.time_budget = Some(Duration::ZERO);
    assert_eq!(
        tune_error(search.check().unwrap_err()),
        TuneError::ZeroBudget("time")
    );
    assert!(matches!(
        tune_error(best_runs(&dir, 3).unwrap_err()),
        TuneError::NoSearch(_)
    ));
    std::fs::write(
        dir.join("trials.csv"),
        "id,units,epochs,val_accuracy,val_loss,seconds,status\n",
    )
    .unwrap();
    assert!(matches!(
        tune_error(best_runs(&dir, 0).unwrap_err()),
        TuneError::NoBest(_)
    ));
    assert!(matches!(
        tune_error(best_runs(&dir, 2).unwrap_err()),
        TuneError::NoBest(_)
    ));

    // The command line reports them, and a malformed best:N:DIR.
    let empty = kiln(&["tune", "--out", dir.join("x").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&empty.stderr).contains("search space is empty"));
    let zero = kiln(&["tune", "--param", "units=8", "--time-budget", "0s"]);
    assert!(String::from_utf8_lossy(&zero.stderr).contains("time budget is 0"));
    let nowhere = kiln(&[
        "eval",
        "--ensemble",
        &format!("best:2:{}", dir.join("none").display()),
    ]);
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("holds no search"));
}

#[test]
fn the_time_budget_stops_the_search_and_a_rerun_finishes_it() {
    let out = temp_dir("budget").join("search");
    let space = ["--param", "units=8,16,32", "--epochs", "3", "--trials", "3"];
    let first = tune(&out, &[&["--time-budget", "0.001s"][..], &space].concat());
    assert!(first.contains("stopped by the time budget"), "{first}");
    let cut = Trials::load(&out).unwrap().map_or(0, |t| {
        assert!(t
            .rows
            .iter()
            .all(|r| r.status == kiln::tune::Status::Stopped && r.epochs < 3));
        t.rows.len()
    });
    assert!(cut <= 1, "no trial starts after the budget");
    tune(&out, &space);
    let t = trials(&out);
    assert_eq!(t.rows.len(), 3);
    for r in &t.rows {
        assert_eq!(r.status, kiln::tune::Status::Done);
        assert_eq!(
            history_epochs(&kiln::tune::trial_dir(&out, r.id)),
            [1, 2, 3]
        );
    }
}

/// Trial `id`'s parameters, read from its checkpoint.
fn trial_params(dir: &Path, id: usize) -> Vec<(String, Vec<f32>)> {
    let trainer =
        kiln::io::load_trainer(kiln::tune::trial_dir(dir, id), &kiln::Device::cpu()).unwrap();
    (trainer.model.params().iter())
        .map(|p| (p.name.clone(), p.value.to_vec().unwrap()))
        .collect()
}

/// Fresh trials of one shape train stacked in the same dispatches and end where the
/// same trials trained alone end: same weights within 1e-4 (float reassociation over a
/// few epochs), same validation loss within 1e-4 relative, accuracy within one row.
/// Under successive halving the survivors continue alone from the stacked checkpoints,
/// which therefore must carry each trial's optimizer state and step count.
#[test]
fn stacked_trials_equal_trials_trained_alone() {
    let space = [
        "--param",
        "lr=0.001,0.003,0.01",
        "--param",
        "optimizer=adam,sgd",
        "--epochs",
        "3",
    ];
    for strategy in [
        &["--strategy", "grid"][..],
        &["--strategy", "halving", "--trials", "6"],
    ] {
        let args: Vec<&str> = strategy.iter().chain(&space).copied().collect();
        let (stacked, alone) = (temp_dir("stacked"), temp_dir("alone"));
        let out = tune(&stacked, &args);
        assert!(
            out.contains("stack: trials 001, 002, 003, 004, 005, 006 train in the same dispatches"),
            "{out}"
        );
        let mut solo = args.clone();
        solo.push("--no-stack");
        assert!(!tune(&alone, &solo).contains("stack:"));
        let (a, b) = (trials(&stacked), trials(&alone));
        assert_eq!(a.rows.len(), 6);
        // kiln tune's digits split: 1438 training rows, the last 144 validating.
        let one_row = 1.0 / 144.0;
        for (x, y) in a.rows.iter().zip(&b.rows) {
            assert_eq!(
                (x.id, &x.config, x.epochs, x.status),
                (y.id, &y.config, y.epochs, y.status)
            );
            let (lx, ly) = (x.loss.unwrap(), y.loss.unwrap());
            assert!(
                (lx - ly).abs() <= 1e-4 * ly.abs().max(1.0),
                "trial {}: {lx} vs {ly}",
                x.id
            );
            let (mx, my) = (x.metric.unwrap(), y.metric.unwrap());
            assert!(
                (mx - my).abs() <= one_row + 1e-9,
                "trial {}: {mx} vs {my}",
                x.id
            );
            for ((name, p), (_, q)) in trial_params(&stacked, x.id)
                .iter()
                .zip(trial_params(&alone, x.id))
            {
                let worst = p
                    .iter()
                    .zip(&q)
                    .map(|(u, v)| (u - v).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst <= 1e-4,
                    "trial {} {name}: weights differ by {worst}",
                    x.id
                );
            }
        }
    }
}
