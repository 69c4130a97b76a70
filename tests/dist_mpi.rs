//! kiln::dist::mpi under `mpirun --oversubscribe -np 2`, through examples/mpi_allreduce
//! (which a plain `cargo test --release --features mpi` builds; with `--test dist_mpi`,
//! build it first: `cargo build --release --features mpi --example mpi_allreduce`,
//! as .ci/run does): the all-reduce on both ranks, a fingerprint
//! mismatch, and a rank that exits or hangs mid-job, each ending the job with an error
//! within a bounded time.
#![cfg(feature = "mpi")]

use std::path::PathBuf;
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
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let out = Command::new("timeout")
        .args([
            &LIMIT_S.to_string(),
            "mpirun",
            "--oversubscribe",
            "-np",
            "2",
        ])
        .arg(example())
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
