//! Training throughput and per-step costs of the peer benchmark's MLP workload.
//!
//! `cargo bench --bench train` prints, per configuration: samples/s, ms per step, host CPU
//! time per step spent recording and submitting (all, and its user-mode part), submissions, dispatches and bytes read
//! back per step, and kiln's peak GPU memory. The data is the peers' (../shared/peers):
//! 2048 MNIST-shaped samples from splitmix64 with labels from a fixed random teacher.
//! Add `-- --json` for one JSON object per line (benches/compare.sh reads it).
//! The `(unpacked)` row trains 784-256-128-10 with every parameter in its own buffer, the
//! baseline of the packed default (one optimizer dispatch per step).
//! The `784-128-res128-10` row is a residual MLP built with `kiln::Graph`: 784-128, one
//! block dense(128) + relu + dense(128) added back to its input, relu, then 10.

use kiln::{
    Activation, Dense, Device, FitOptions, Graph, Layer, Loss, Model, Optimizer, Sequential,
    Trainer,
};
use std::time::Instant;

struct SplitMix(u64);
impl SplitMix {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }
}

fn make_data(n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix(42);
    let x: Vec<f32> = (0..n * 784).map(|_| rng.next_f32()).collect();
    let t: Vec<f32> = (0..784 * 10).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
    let y = (0..n)
        .map(|i| {
            let score = |c: usize| -> f64 {
                (0..784)
                    .map(|k| (x[i * 784 + k] as f64 - 0.5) * t[k * 10 + c] as f64)
                    .sum()
            };
            (0..10)
                .map(|c| (score(c), c))
                .fold((f64::MIN, 0), |b, s| if s.0 > b.0 { s } else { b })
                .1 as f32
        })
        .collect();
    (x, y)
}

/// CPU time of the calling thread: the time spent recording and submitting.
fn thread_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |ns| ns * 1e-9)
}

/// User-mode CPU seconds of this thread: kiln's and wgpu's recording, without the kernel
/// time of the thread sleeping and waking around lavapipe's queue.
fn thread_user_secs() -> f64 {
    // SAFETY: getrusage writes one rusage struct through the pointer it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return f64::NAN;
    }
    usage.ru_utime.tv_sec as f64 + usage.ru_utime.tv_usec as f64 * 1e-6
}

struct Row {
    name: String,
    batch: usize,
    samples_per_s: f64,
    ms_per_step: f64,
    host_us_per_step: f64,
    user_us_per_step: f64,
    submits: f64,
    dispatches: f64,
    bytes_read: f64,
    peak_mib: f64,
    loss: (f64, f64),
}

/// How a configuration trains: kiln's defaults, or the previous design (one submission
/// per step, the output layer unfused) as a baseline measured in the same run.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Default,
    Baseline,
    /// The residual MLP (784-128, one residual block of 128, 10) as a `kiln::Graph`.
    Residual,
    /// kiln's defaults with every parameter in its own buffer (`Model::unpack`): the
    /// optimizer step takes one dispatch per four tensors instead of one.
    Unpacked,
}

fn mlp(device: &Device, layers: &[usize]) -> Model {
    let mut spec = Sequential::new(784);
    for (i, &units) in layers.iter().enumerate() {
        spec = spec.dense(units);
        if i + 1 < layers.len() {
            spec = spec.relu();
        }
    }
    spec.build(device, 1).expect("build")
}

fn residual_mlp(device: &Device) -> Model {
    let relu = || Layer::Activation(Activation::Relu);
    let dense = |units| Layer::Dense(Dense::new(units));
    let mut g = Graph::new();
    g.input("x", &[784])
        .layer("d0", dense(128), &["x"])
        .layer("h0", relu(), &["d0"])
        .layer("d1", dense(128), &["h0"])
        .layer("r1", relu(), &["d1"])
        .layer("d2", dense(128), &["r1"])
        .add("res", &["h0", "d2"])
        .layer("h1", relu(), &["res"])
        .layer("out", dense(10), &["h1"])
        .output("out");
    g.build(device, 1).expect("build")
}

fn run(device: &Device, layers: &[usize], batch: usize, v: Variant, x: &[f32], y: &[f32]) -> Row {
    let mut model = match v {
        Variant::Residual => residual_mlp(device),
        _ => mlp(device, layers),
    };
    if v == Variant::Unpacked {
        model.unpack().expect("unpack");
    }
    let mut t: Trainer = model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(1e-3),
            &[],
        )
        .expect("compile");
    t.set_fused_head(v != Variant::Baseline);
    let rows = x.len() / 784;
    let steps_per_epoch = rows.div_ceil(batch);
    let opts = |epochs| FitOptions {
        shuffle: false,
        steps_per_execution: match v {
            Variant::Default | Variant::Residual | Variant::Unpacked => {
                FitOptions::default().steps_per_execution
            }
            Variant::Baseline => 1,
        },
        ..FitOptions::new(epochs, batch)
    };
    // Warm-up: pipelines, workspaces, optimizer state (at least 20 steps, as the peers).
    let first = t
        .fit(x, y, opts(20usize.div_ceil(steps_per_epoch)))
        .expect("fit")
        .epochs[0]
        .loss;
    device.synchronize().expect("sync");
    if std::env::var("KILN_PROFILE").is_ok_and(|v| v == "1") {
        print_profile(device, &mut t, x, y, batch);
    }
    let epochs = 200usize.div_ceil(steps_per_epoch).max(1);
    let steps = (epochs * steps_per_epoch) as f64;
    let mut rates = Vec::new();
    let (mut host, mut user, mut last) = (f64::MAX, f64::MAX, 0.0);
    let before = device.stats();
    for _ in 0..3 {
        let (wall, cpu, usr) = (Instant::now(), thread_cpu_secs(), thread_user_secs());
        let h = t.fit(x, y, opts(epochs)).expect("fit");
        let secs = wall.elapsed().as_secs_f64();
        host = host.min((thread_cpu_secs() - cpu) / steps);
        user = user.min((thread_user_secs() - usr) / steps);
        rates.push((epochs * rows) as f64 / secs);
        last = h.last().map_or(f64::NAN, |e| e.loss);
    }
    let after = device.stats();
    rates.sort_by(|a, b| a.total_cmp(b));
    let sps = rates[1];
    let per = |a: u64, b: u64| (a - b) as f64 / (3.0 * steps);
    let mut name = layers
        .iter()
        .fold("784".to_string(), |s, u| format!("{s}-{u}"));
    match v {
        Variant::Baseline => name += " (baseline)",
        Variant::Residual => name = "784-128-res128-10".into(),
        Variant::Unpacked => name += " (unpacked)",
        Variant::Default => {}
    }
    Row {
        name,
        batch,
        samples_per_s: sps,
        ms_per_step: batch as f64 / sps * 1e3,
        host_us_per_step: host * 1e6,
        user_us_per_step: user * 1e6,
        submits: per(after.submissions, before.submissions),
        dispatches: per(after.dispatches, before.dispatches),
        bytes_read: per(after.bytes_read, before.bytes_read),
        peak_mib: after.peak_bytes as f64 / (1 << 20) as f64,
        loss: (first, last),
    }
}

/// Under `KILN_PROFILE=1`: GPU time per kernel over one epoch, per step.
fn print_profile(device: &Device, t: &mut Trainer, x: &[f32], y: &[f32], batch: usize) {
    let _ = device.take_profile();
    let opts = FitOptions {
        shuffle: false,
        ..FitOptions::new(1, batch)
    };
    t.fit(x, y, opts).expect("fit");
    device.synchronize().expect("sync");
    let steps = (x.len() / 784).div_ceil(batch) as f64;
    let rows = device.take_profile();
    let total: f64 = rows.iter().map(|r| r.2.as_secs_f64()).sum();
    println!(
        "  GPU time per step, batch {batch}: {:.0} us",
        total / steps * 1e6
    );
    for (key, n, time) in rows {
        let us = time.as_secs_f64() / steps * 1e6;
        println!("  {us:>8.0} us  {:>5.2}x  {key}", n as f64 / steps);
    }
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let device = match std::env::args().any(|a| a == "--cpu") {
        true => Device::cpu(),
        false => Device::gpu().expect("no GPU adapter"),
    };
    let (x, y) = make_data(2048);
    let configs: [(&[usize], usize, Variant); 8] = [
        (&[128, 10], 32, Variant::Default),
        (&[128, 10], 32, Variant::Baseline),
        (&[128, 10], 128, Variant::Default),
        (&[128, 10], 128, Variant::Baseline),
        (&[128, 10], 512, Variant::Default),
        (&[256, 128, 10], 128, Variant::Default),
        (&[256, 128, 10], 128, Variant::Unpacked),
        (&[], 128, Variant::Residual),
    ];
    if !json {
        println!("adapter: {}", device.name());
        println!(
            "{:<28}{:>6}{:>12}{:>10}{:>13}{:>9}{:>9}{:>12}{:>12}{:>10}  loss",
            "mlp",
            "batch",
            "samples/s",
            "ms/step",
            "host us/step",
            "user us",
            "submits",
            "dispatches",
            "bytes read",
            "peak MiB"
        );
    }
    for (layers, batch, variant) in configs {
        let r = run(&device, layers, batch, variant, &x, &y);
        if json {
            println!(
                "{{\"lib\":\"kiln\",\"backend\":\"wgpu\",\"bench\":\"mlp\",\"model\":\"{}\",\"batch\":{},\"samples_per_s\":{:.1},\"ms_per_step\":{:.3},\"host_us_per_step\":{:.1},\"host_user_us_per_step\":{:.1},\"dispatches_per_step\":{:.2}}}",
                r.name, r.batch, r.samples_per_s, r.ms_per_step, r.host_us_per_step, r.user_us_per_step, r.dispatches
            );
        } else {
            println!(
                "{:<28}{:>6}{:>12.0}{:>10.2}{:>13.0}{:>9.0}{:>9.3}{:>12.1}{:>12.1}{:>10.1}  {:.3} -> {:.3}",
                r.name, r.batch, r.samples_per_s, r.ms_per_step, r.host_us_per_step, r.user_us_per_step, r.submits, r.dispatches, r.bytes_read, r.peak_mib, r.loss.0, r.loss.1
            );
        }
    }
}
