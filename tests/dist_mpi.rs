//! kiln::dist::mpi under `mpirun --oversubscribe -np 2`, through examples/mpi_allreduce
//! (which a plain `cargo test --release --features mpi` builds; with `--test dist_mpi`,
//! build it first: `cargo build --release --features mpi --example mpi_allreduce`,
//! as .ci/run does): the all-reduce on both ranks, a fingerprint
//! mismatch, and a rank that exits or hangs mid-job, each ending the job with an error
//! within a bounded time.
//!
//! Then `kiln train --distributed mpi` itself (the `kiln` binary that cargo builds for
//! this test, with the `mpi` feature): the same weights and metrics as one process, a
//! mismatched model, and a killed rank whose run resumes from its last checkpoint.
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most a job may take before the test's own `timeout` kills it.
const LIMIT_S: u64 = 60;

/// target/<profile>/examples/mpi_allreduce, beside this test's target/<profile>/deps/.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = profile.join("examples").join("mpi_allreduce");
    assert!(
        path.exists(),
        "{} is missing: cargo build --release --features mpi --example mpi_allreduce",
        path.display()
    );
    path
}

/// One job at a time: the time bounds below assume the cores are not shared by 4 jobs.
static ONE_JOB: Mutex<()> = Mutex::new(());

/// Runs the example on 2 ranks; returns its output, stdout + stderr, and the time taken.
fn mpirun(args: &[&str]) -> (Output, String, Duration) {
    let example = example();
    let mut all = vec!["-np", "2", example.to_str().unwrap()];
    all.extend(args);
    launch(LIMIT_S, &all)
}

/// Runs `mpirun --oversubscribe ARGS`, killed after `limit` seconds; returns its output,
/// stdout + stderr, and the time taken.
fn launch(limit: u64, args: &[&str]) -> (Output, String, Duration) {
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let out = Command::new("timeout")
        .args([&limit.to_string(), "mpirun", "--oversubscribe"])
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun (apt-get install openmpi-bin) and timeout must be on PATH");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text, start.elapsed())
}

/// The `bits` hash that each rank printed, in rank order.
fn bits(text: &str) -> Vec<(usize, String)> {
    let mut v: Vec<(usize, String)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("rank ")?;
            let (rank, rest) = rest.split_once(": mean ok, bits ")?;
            Some((rank.parse().ok()?, rest.trim().to_string()))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn all_reduce_agrees_on_both_ranks_in_one_call_and_in_chunks() {
    for args in [
        &["--len", "1000003"][..],
        &["--len", "1003", "--max-count", "100"][..],
    ] {
        let (out, text, _) = mpirun(args);
        assert!(out.status.success(), "{args:?}: {text}");
        let b = bits(&text);
        assert_eq!(b.len(), 2, "{text}");
        assert_eq!((b[0].0, b[1].0), (0, 1), "{text}");
        assert_eq!(b[0].1, b[1].1, "ranks differ in their bits: {text}");
    }
}

#[test]
fn a_fingerprint_mismatch_is_an_error_naming_the_ranks() {
    let (out, text, took) = mpirun(&["--mismatch"]);
    assert!(!out.status.success(), "{text}");
    assert_ne!(out.status.code(), Some(124), "timed out: {text}");
    for rank in [0, 1] {
        assert!(
            text.contains(&format!("distributed, rank {rank}: ranks [1] disagree with rank 0 on model, data set and batch size")),
            "{text}"
        );
    }
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn a_rank_that_exits_mid_job_ends_the_job() {
    let (out, text, took) = mpirun(&["--len", "10", "--die-at", "5"]);
    assert!(!out.status.success(), "{text}");
    assert_ne!(out.status.code(), Some(124), "hung until timeout: {text}");
    assert!(
        text.contains("rank 1: exiting before all-reduce 5"),
        "{text}"
    );
    // mpirun names the rank that failed (Open MPI: "Process name: [[job,1],1]").
    assert!(
        text.contains(",1],1]") && text.contains("Exit code:    3"),
        "{text}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn a_rank_that_hangs_mid_job_times_out_the_others() {
    let (out, text, took) = mpirun(&["--len", "10", "--hang-at", "5", "--timeout", "3"]);
    assert!(!out.status.success(), "{text}");
    assert_ne!(out.status.code(), Some(124), "hung until timeout: {text}");
    assert!(
        text.contains("distributed, rank 0: all_reduce_mean timed out after 3s"),
        "{text}"
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(30),
        "{took:?}"
    );
}

#[test]
fn a_rank_that_stops_inside_an_exchange_times_out_the_others() {
    let (out, text, took) = mpirun(&["--len", "10", "--stop-inside", "5", "--timeout", "3"]);
    assert!(!out.status.success(), "{text}");
    assert_ne!(out.status.code(), Some(124), "hung until timeout: {text}");
    assert!(
        text.contains("all_reduce_mean timed out after 3s: a peer rank stopped inside"),
        "{text}"
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(30),
        "{took:?}"
    );
}

/// The kiln binary, built with the `mpi` feature for this test.
const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// The most a `kiln train` job may take before the test's `timeout` kills it.
const KILN_LIMIT_S: u64 = 180;

/// How long the job may take to end once a rank has died or disagreed (starting the
/// ranks and opening their devices included).
const FAIL_BOUND: Duration = Duration::from_secs(60);

/// An empty folder for one test's runs.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-dist-mpi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `kiln train` on iris with a 4-LAYERS-3 network for 3 epochs, into `out`.
fn iris(out: &Path, hidden: &str, batch: &str) -> Vec<String> {
    let layers = format!("4,{hidden},3");
    let out = out.to_str().unwrap();
    let data = "csv:../shared/data/iris/iris.csv";
    [
        "train",
        "--data",
        data,
        "--layers",
        &layers,
        "--epochs",
        "3",
        "--seed",
        "1",
        "--batch-size",
        batch,
        "--quiet",
        "--out",
        out,
    ]
    .map(String::from)
    .to_vec()
}

/// Runs `kiln ARGS` in this process's place; returns its stdout, or fails the test.
fn alone(args: &[String]) -> String {
    let o = Command::new(KILN).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

/// Runs `mpirun -np 2 kiln ARGS --distributed mpi`, killed after `limit` seconds.
fn two_ranks(limit: u64, args: &[String]) -> (Output, String, Duration) {
    let mut all = vec!["-np", "2", KILN];
    all.extend(args.iter().map(String::as_str));
    all.extend(["--distributed", "mpi"]);
    launch(limit, &all)
}

/// Runs `kiln A --distributed mpi` as rank 0 and `kiln B --distributed mpi` as rank 1.
fn one_rank_each(a: &[String], b: &[String]) -> (Output, String, Duration) {
    let mut all = vec!["-np", "1", KILN];
    all.extend(a.iter().map(String::as_str));
    all.extend(["--distributed", "mpi", ":", "-np", "1", KILN]);
    all.extend(b.iter().map(String::as_str));
    all.extend(["--distributed", "mpi"]);
    launch(KILN_LIMIT_S, &all)
}

/// Every parameter of the checkpoint in `dir`, in order.
fn weights(dir: &Path) -> Vec<f32> {
    let model = kiln::io::load_model(dir, &kiln::Device::cpu()).unwrap();
    let params = model.params();
    params
        .iter()
        .flat_map(|p| p.value.to_vec().unwrap())
        .collect()
}

/// The numbers of the last row of `dir`'s history.csv, without the epoch's seconds.
fn last_epoch(dir: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join("history.csv")).unwrap();
    let row = text.lines().last().unwrap();
    let mut v: Vec<f64> = row.split(',').map(|f| f.parse().unwrap()).collect();
    v.pop();
    v
}

/// The numbers of the `test:` line that the run printed.
fn test_line(stdout: &str) -> Vec<f64> {
    let line = stdout.lines().find(|l| l.starts_with("test:")).unwrap();
    line.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// Two ranks reach one process's weights (within 1e-4 relative, 1e-5 absolute near
/// zero) and its epoch and test metrics, at a global batch of `batch` rows: once per
/// entry of `variants`, extra options of the two-rank run.
fn check_same_as_one_process(batch: &str, variants: &[&[&str]]) {
    let dir = scratch(&format!("same-{batch}"));
    let one = dir.join("one");
    let want = alone(&iris(&one, "16", batch));
    for (k, extra) in variants.iter().enumerate() {
        let two = dir.join(format!("two-{k}"));
        let mut args = iris(&two, "16", batch);
        args.extend(extra.iter().map(|a| a.to_string()));
        let (out, text, _) = two_ranks(KILN_LIMIT_S, &args);
        assert!(out.status.success(), "{extra:?}: {text}");
        // Rank 0 alone prints the run; every rank names its device on stderr.
        assert_eq!(text.matches("test:").count(), 1, "{text}");
        assert!(text.contains("rank 1 of 2 on "), "{text}");
        // Rank 0 reports what the exchanges cost.
        assert_eq!(text.matches("all-reduce: ").count(), 1, "{text}");
        let what = format!("weights {extra:?}");
        common::assert_close(&weights(&two), &weights(&one), 1e-4, 1e-5, &what);
        let (got, wanted) = (last_epoch(&two), last_epoch(&one));
        assert_eq!(got.len(), wanted.len());
        for (g, w) in got
            .iter()
            .zip(&wanted)
            .chain(test_line(&text).iter().zip(&test_line(&want)))
        {
            assert!(
                (g - w).abs() <= 1e-3 * w.abs().max(1.0),
                "{extra:?}: {got:?} vs {wanted:?}\n{text}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kiln_train_on_two_ranks_matches_one_process() {
    check_same_as_one_process("16", &[&[]]);
}

#[test]
fn kiln_train_on_two_ranks_matches_one_process_at_an_odd_batch_size() {
    // 15 rows: 8 on rank 0, 7 on rank 1; the epoch's last batch of 3 splits 2 and 1.
    check_same_as_one_process("15", &[&[]]);
}

#[test]
fn kiln_train_with_gradient_buckets_matches_one_process() {
    // 4-16-3 has 131 gradient values (524 bytes): one exchange after the backward pass;
    // one bucket; two (300 bytes, the
    // boundary 56 values in, inside the first weight matrix); 14 of at most 10 values,
    // boundaries inside every tensor but the last bias. Batches of 15 split 8 and 7.
    check_same_as_one_process(
        "15",
        &[
            &["--bucket-mb", "0"],
            &["--bucket-mb", "25"],
            &["--bucket-mb", "0.0003"],
            &["--bucket-mb", "0.00004"],
        ],
    );
}

#[test]
fn kiln_train_with_different_models_fails_on_every_rank() {
    let dir = scratch("mismatch");
    let out = dir.join("run");
    let (a, b) = (iris(&out, "16", "16"), iris(&out, "8", "16"));
    let (out, text, took) = one_rank_each(&a, &b);
    assert!(!out.status.success(), "{text}");
    assert_ne!(out.status.code(), Some(124), "timed out: {text}");
    for rank in [0, 1] {
        let needle = format!(
            "error: distributed, rank {rank}: ranks [1] disagree with rank 0 on model, data set and fit options"
        );
        assert!(text.contains(&needle), "{text}");
    }
    assert!(took < FAIL_BOUND, "{took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rank_that_cannot_load_its_data_ends_the_job() {
    let dir = scratch("no-data");
    let out = dir.join("run");
    let good = iris(&out, "16", "16");
    let mut bad = good.clone();
    bad[2] = "csv:no/such/file.csv".into();
    let (out, text, took) = one_rank_each(&good, &bad);
    assert!(!out.status.success(), "{text}");
    assert_ne!(out.status.code(), Some(124), "timed out: {text}");
    assert!(
        text.contains("rank 1 of 2 stops the job:\nerror: "),
        "{text}"
    );
    assert!(text.contains("no/such/file.csv"), "{text}");
    assert!(took < FAIL_BOUND, "{took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes_from_its_checkpoint() {
    let dir = scratch("killed");
    let run = dir.join("run");
    let r = run.to_str().unwrap();
    // Digits at 8 rows a step: epochs of about 160 exchanges, long enough that rank 1
    // is killed inside epoch 2, once rank 0 has written epoch 1's checkpoint and history.
    let args = format!(
        "train --data digits --batch-size 8 --epochs 30 --quiet --out {r} --distributed mpi"
    );
    let killer = format!(
        "{KILN} {args} & p=$!; until grep -q '^1,' {r}/history.csv 2>/dev/null; \
         do kill -0 $p || exit 9; sleep 0.05; done; kill -9 $p; wait $p"
    );
    let first: Vec<&str> = args.split(' ').collect();
    let mut all = vec!["-np", "1", KILN];
    all.extend(&first);
    all.extend([":", "-np", "1", "sh", "-c", &killer]);
    let (out, text, took) = launch(KILN_LIMIT_S, &all);
    assert!(!out.status.success(), "{text}");
    assert_ne!(out.status.code(), Some(124), "hung until timeout: {text}");
    // mpirun names the rank that failed (Open MPI: "Process name: [[job,1],1]").
    assert!(text.contains(",1],1]") && text.contains("137"), "{text}");
    assert!(took < FAIL_BOUND, "{took:?}");

    // The last checkpoint loads, and both ranks resume it for one more epoch.
    let done = kiln::io::load_trainer(&run, &kiln::Device::cpu())
        .unwrap()
        .epochs_done();
    assert!((1..30).contains(&done), "{done} epochs done\n{text}");
    let epochs = (done + 1).to_string();
    let resume = ["train", "--resume", r, "--epochs", &epochs, "--quiet"].map(String::from);
    let (out, text, _) = two_ranks(KILN_LIMIT_S, &resume);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("resume: {done} epochs done, 1 to go")),
        "{text}"
    );
    let after = kiln::io::load_trainer(&run, &kiln::Device::cpu()).unwrap();
    assert_eq!(after.epochs_done(), done + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// MNIST, 784-256-128-10 for 5 epochs at batch 128: 2 ranks reach the test accuracy of
/// one process within 0.3 points. The slowest test here, run in full under CI.
#[test]
fn mnist_on_two_ranks_reaches_the_accuracy_of_one() {
    let dir = scratch("mnist");
    let run = |out: &str| {
        let out = dir.join(out).to_str().unwrap().to_string();
        let data = "mnist:../shared/data/mnist";
        [
            "train",
            "--data",
            data,
            "--layers",
            "784,256,128,10",
            "--epochs",
            "5",
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["--out".to_string(), out])
        .collect::<Vec<_>>()
    };
    let want = test_line(&alone(&run("one")))[1];
    let (out, text, _) = two_ranks(600, &run("two"));
    assert!(out.status.success(), "{text}");
    let got = test_line(&text)[1];
    eprintln!("MNIST test accuracy: 1 rank {want}, 2 ranks {got}");
    assert!(
        (got - want).abs() <= 0.003,
        "2 ranks: {got}, 1 rank: {want}\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
