//! Compiling kernels in helper processes (CPU adapters on Vulkan): they start where they
//! should, compile the kernels a training step first uses, skip bad input, cost nothing
//! when they die, and change no result.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use kiln::{Loss, Optimizer, Sequential};

/// The helper executable is process-wide: tests that name one take turns.
static HELPER: Mutex<()> = Mutex::new(());

/// Whether the rule in `KILN_PRECOMPILE`'s documentation gives `device` a helper.
fn expected(device: &kiln::Device) -> bool {
    let ctx = device.gpu_context().expect("a GPU device");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let off = std::env::var("KILN_PRECOMPILE").is_ok_and(|v| v == "0" || v == "off");
    let mesa_off = std::env::var("MESA_SHADER_CACHE_DISABLE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "y"));
    ctx.is_software() && device.name().contains("Vulkan") && cores > 1 && !off && !mesa_off
}

/// A 64-32-10 classifier with Adam on `device`, the same weights every time.
fn classifier(device: &kiln::Device) -> kiln::Trainer {
    let model = Sequential::new(64)
        .dense(32)
        .relu()
        .dense(10)
        .build(device, 1)
        .unwrap();
    model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(1e-3),
            &[],
        )
        .unwrap()
}

/// The outputs of a 64-32-10 classifier after two Adam steps on `device`.
fn train_two_steps(device: &kiln::Device) -> Vec<f32> {
    let mut t = classifier(device);
    let x = common::random(16 * 64, 1);
    let y: Vec<f32> = (0..16).map(|i| (i % 10) as f32).collect();
    t.train_batch(&x, &y).unwrap();
    t.train_batch(&x, &y).unwrap();
    t.predict(&x, 16).unwrap()
}

#[test]
fn a_training_step_hands_its_new_kernels_to_the_helper() {
    let _turn = HELPER.lock().unwrap_or_else(|e| e.into_inner());
    kiln::device::use_compile_helper(env!("CARGO_BIN_EXE_kiln").into());
    common::isolate_autotune_cache();
    let device = kiln::Device::gpu().unwrap();
    let ctx = device.gpu_context().unwrap().clone();
    assert_eq!(ctx.precompiles(), expected(&device), "{}", device.name());
    let with_helper = train_two_steps(&device);
    if !ctx.precompiles() {
        assert_eq!(device.stats().precompiled, 0);
        return;
    }
    // The helper works in its own process; give it time, bounded.
    let start = std::time::Instant::now();
    while device.stats().precompiled == 0 {
        assert!(
            start.elapsed().as_secs() < 60,
            "the helper compiled nothing in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(with_helper, train_two_steps(&common::gpu()));
}

#[test]
fn a_helper_that_exits_at_once_costs_nothing() {
    let _turn = HELPER.lock().unwrap_or_else(|e| e.into_inner());
    // `true` reads none of its jobs: every write to it fails once it has gone.
    kiln::device::use_compile_helper("true".into());
    common::isolate_autotune_cache();
    let device = kiln::Device::gpu().unwrap();
    let weights = train_two_steps(&device);
    // Sending to it again after it has gone must not fail either.
    let again = train_two_steps(&device);
    assert_eq!(weights, again);
    assert_eq!(device.stats().precompiled, 0);
    assert_eq!(weights, train_two_steps(&common::gpu()));
}

/// The adapter's own name: the device's name up to its (backend, type) suffix.
fn adapter_name(device: &kiln::Device) -> String {
    let name = device.name();
    name.rsplit_once(" (")
        .map_or(name.clone(), |(n, _)| n.to_string())
}

#[test]
fn the_helper_skips_bad_lines_and_ends_with_its_input() {
    let device = common::gpu();
    if !expected(&device) {
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--kiln-compile-helper")
        .env("KILN_BACKEND", "vulkan")
        .env("KILN_ADAPTER", adapter_name(&device))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let job = serde_json::json!({
        "id": 41,
        "file": "double.wgsl",
        "source": "struct P { n: u32 }\n@group(0) @binding(0) var<uniform> p: P;\n\
                   @group(0) @binding(1) var<storage, read> x: array<f32>;\n\
                   @group(0) @binding(2) var<storage, read_write> y: array<f32>;\n\
                   @compute @workgroup_size(64)\n\
                   fn double(@builtin(global_invocation_id) i: vec3<u32>) {\n\
                   if i.x < p.n { y[i.x] = 2.0 * x[i.x]; } }",
        "entry": "double",
        "inputs": 1,
        "outputs": 1,
        "bounds_checks": true,
        "constants": [],
        "params": [17, 0, 0, 0],
        "sizes": [68, 68],
    });
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "not a job").unwrap();
    writeln!(stdin, "{{\"file\": 3}}").unwrap();
    writeln!(stdin, "{job}").unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a report").unwrap();
    assert_eq!(first, "41");
    drop(stdin);
    assert!(lines.next().is_none(), "nothing more after the one job");
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_helper_changes_no_trained_weight() {
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let dir = common::temp_dir("precompile", "weights");
    let mut weights = Vec::new();
    for setting in ["1", "0"] {
        let out = dir.join(format!("run-{setting}"));
        let caches = dir.join(format!("caches-{setting}"));
        let o = Command::new(kiln)
            .args(["train", "--epochs", "2", "--out"])
            .arg(&out)
            .env("KILN_PRECOMPILE", setting)
            .env("MESA_SHADER_CACHE_DIR", caches.join("mesa"))
            .env("KILN_CACHE_DIR", caches.join("kiln"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        weights.push(std::fs::read(out.join("model.safetensors")).unwrap());
    }
    let (on, off) = (
        safetensors::SafeTensors::deserialize(&weights[0]).unwrap(),
        safetensors::SafeTensors::deserialize(&weights[1]).unwrap(),
    );
    let mut names = on.names();
    names.sort();
    assert!(!names.is_empty());
    for name in names {
        assert_eq!(
            on.tensor(name).unwrap().data(),
            off.tensor(name).unwrap().data(),
            "{name} differs with and without the helper"
        );
    }
}

/// Starts a one-epoch fit of the 64-32-10 classifier on 40 rows, batch 16: the stats
/// after `start_fit` (before any step) and the predictions after the epoch.
fn fit_one_epoch(device: &kiln::Device) -> (kiln::Stats, kiln::Stats, Vec<f32>) {
    let mut t = classifier(device);
    let x = common::random(40 * 64, 2);
    let y: Vec<f32> = (0..40).map(|i| (i % 10) as f32).collect();
    let before = device.stats();
    let mut run = t.start_fit(&x, &y, kiln::FitOptions::new(1, 16)).unwrap();
    let started = device.stats();
    while run.next_epoch().unwrap().is_some() {}
    run.finish().unwrap();
    (before, started, t.predict(&x, 16).unwrap())
}

#[test]
fn a_fit_rehearses_its_first_step_while_the_data_is_uploaded() {
    let _turn = HELPER.lock().unwrap_or_else(|e| e.into_inner());
    kiln::device::use_compile_helper(env!("CARGO_BIN_EXE_kiln").into());
    common::isolate_autotune_cache();
    let device = kiln::Device::gpu().unwrap();
    let (before, started, outputs) = fit_one_epoch(&device);
    if device.gpu_context().unwrap().precompiles() {
        // The forward pass's and the fused head's pipelines are built, and handed to the
        // helpers, before the first step; nothing of the rehearsal is recorded.
        assert!(
            started.pipelines >= before.pipelines + 2,
            "{} pipelines before the fit, {} after start_fit",
            before.pipelines,
            started.pipelines
        );
        assert_eq!(started.dispatches, before.dispatches, "dispatches recorded");
    } else {
        assert_eq!(started.pipelines, before.pipelines);
    }
    // The rehearsal changes no result: the same fit on a device without helpers.
    kiln::device::use_compile_helper("".into());
    let plain = kiln::Device::gpu().unwrap();
    assert!(!plain.gpu_context().unwrap().precompiles());
    assert_eq!(outputs, fit_one_epoch(&plain).2);
}
