//! The embedding examples run: examples/train_in_loop trains in its own loop and saves a
//! checkpoint, and examples/embed loads it and predicts the same classes. `cargo test`
//! builds the examples before it runs the tests; `cargo test --test examples` alone does not.

mod common;

use std::path::Path;
use std::process::Command;

/// Runs an example and insists that it succeeds; returns its standard output.
fn run(name: &str, args: &[&str]) -> String {
    let out = Command::new(common::example(name))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} {args:?}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn train_in_loop_learns_and_embed_predicts_from_its_checkpoint() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("embed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir = dir.to_str().unwrap();
    let trained = run("train_in_loop", &[dir]);
    assert!(trained.contains("(0.5, -0.5): [1, 0, 1, 0]"), "{trained}");
    let probe = ["0.5", "0.5", "-0.5", "0.5", "-0.5", "-0.5", "0.5", "-0.5"];
    let embedded = run("embed", &[&[dir][..], &probe].concat());
    assert!(embedded.contains("classes: [1, 0, 1, 0]"), "{embedded}");
}
