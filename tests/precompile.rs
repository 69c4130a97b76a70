//! Compiling kernels on a helper device (CPU adapters on Vulkan): it happens where it
//! should, compiles the kernels a training step first uses, and changes no result.
mod common;

use kiln::{Loss, Optimizer, Sequential};

/// Whether the rule in `KILN_PRECOMPILE`'s documentation says `device` gets a helper.
fn expected(device: &kiln::Device, ctx: &kiln::device::GpuContext) -> bool {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let off = std::env::var("KILN_PRECOMPILE").is_ok_and(|v| v == "0" || v == "off");
    let mesa_off = std::env::var("MESA_SHADER_CACHE_DISABLE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "y"));
    ctx.is_software() && device.name().contains("Vulkan") && cores > 1 && !off && !mesa_off
}

#[test]
fn a_training_step_hands_its_later_kernels_to_the_helper() {
    let device = common::gpu();
    let ctx = device.gpu_context().expect("a GPU device").clone();
    assert_eq!(
        ctx.precompiles(),
        expected(&device, &ctx),
        "{}",
        device.name()
    );
    let model = Sequential::new(64)
        .dense(32)
        .relu()
        .dense(10)
        .build(&device, 1)
        .unwrap();
    let mut t = model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(1e-3),
            &[],
        )
        .unwrap();
    let x = common::random(16 * 64, 1);
    let y: Vec<f32> = (0..16).map(|i| (i % 10) as f32).collect();
    t.train_batch(&x, &y).unwrap();
    device.synchronize().unwrap();
    if !ctx.precompiles() {
        assert_eq!(device.stats().precompiled, 0);
        return;
    }
    // The helper works on its own thread; give it time, bounded.
    let start = std::time::Instant::now();
    while device.stats().precompiled == 0 {
        assert!(
            start.elapsed().as_secs() < 60,
            "the helper compiled nothing in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn precompiling_changes_no_trained_weight() {
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let dir = common::temp_dir("precompile", "weights");
    let mut weights = Vec::new();
    for setting in ["1", "0"] {
        let out = dir.join(format!("run-{setting}"));
        let caches = dir.join(format!("caches-{setting}"));
        let o = std::process::Command::new(kiln)
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
