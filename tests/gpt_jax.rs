//! A tiny GPT trained by kiln (examples/gpt_reference.rs, on the GPU) and by the JAX/optax
//! reference (benches/gpt_jax/gpt_jax.py, on the CPU) from the same initial weights on the
//! same batches: every validation loss of ten AdamW steps agrees within 1e-4 relative.
//! Needs jax, optax, numpy and safetensors (benches/gpt_jax/requirements.txt; CI installs
//! them): without them the test fails. `cargo test` builds the example before the tests;
//! `cargo test --test gpt_jax` alone does not (`cargo build --release --examples` first).

mod common;

use std::path::PathBuf;
use std::process::Command;

/// Relative tolerance on each validation loss: both sides compute in f32, in different
/// orders, and ten Adam steps amplify the rounding a little.
const RTOL: f64 = 1e-4;

fn read_json(path: PathBuf) -> serde_json::Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// (step, validation loss) pairs of a results file.
fn evals(v: &serde_json::Value) -> Vec<(u64, f64)> {
    let rows = v["evals"].as_array().unwrap();
    rows.iter()
        .map(|r| (r[0].as_u64().unwrap(), r[1].as_f64().unwrap()))
        .collect()
}

#[test]
fn tiny_gpt_trains_as_the_jax_reference_does() {
    if common::shakespeare().is_none() {
        return;
    }
    let dir = common::temp_dir("gpt_jax", "tiny");
    let out = dir.to_str().unwrap();
    let tiny = "--chars 20000 --layers 1 --width 16 --heads 2 --context 8 --batch 4 \
                --iters 10 --eval-every 1 --eval-windows 48 --generate 4";
    let args: Vec<&str> = std::iter::once(out)
        .chain(tiny.split_whitespace())
        .collect();
    common::run_ok(common::example("gpt_reference").to_str().unwrap(), &args);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/gpt_jax/gpt_jax.py");
    let jax = Command::new("python3")
        .args([script, out, "--relative", "--tolerance", &RTOL.to_string()])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&jax.stdout);
    let stderr = String::from_utf8_lossy(&jax.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the JAX reference needs its packages: \
         python3 -m pip install -r benches/gpt_jax/requirements.txt\n{stderr}"
    );
    let kiln = evals(&read_json(dir.join("kiln.json")));
    let reference = evals(&read_json(dir.join("jax.json")));
    assert_eq!(kiln.len(), 11, "steps 0 to 10: {kiln:?}");
    assert_eq!(reference.len(), kiln.len(), "{stdout}\n{stderr}");
    for (&(step, a), &(ref_step, b)) in kiln.iter().zip(&reference) {
        assert_eq!(step, ref_step);
        assert!(
            (a - b).abs() <= RTOL * b.abs(),
            "step {step}: kiln {a} against JAX {b}\n{stdout}"
        );
    }
    // Both learned: ten steps at 1e-3 lower the loss of a fresh model.
    assert!(kiln[10].1 < kiln[0].1 - 0.01, "{kiln:?}");
    assert!(jax.status.success(), "{stdout}\n{stderr}");
}
