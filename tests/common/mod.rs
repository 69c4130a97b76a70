//! Helpers shared by the integration tests.
#![allow(dead_code)]

use kiln::{Device, Tensor};
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;

/// The GPU device for tests; a missing adapter fails the test (never a silent skip).
pub fn gpu() -> Device {
    static GPU: OnceLock<Device> = OnceLock::new();
    GPU.get_or_init(|| {
        isolate_autotune_cache();
        match Device::gpu() {
            Ok(d) => d,
            Err(e) => panic!("GPU tests need an adapter (CI installs lavapipe): {e}"),
        }
    })
    .clone()
}

/// Points the matmul autotuner's cache into the target directory (unless the caller chose
/// one), so test runs neither read nor write the user's ~/.cache.
pub fn isolate_autotune_cache() {
    if std::env::var_os("KILN_CACHE_DIR").is_none() {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("autotune");
        std::env::set_var("KILN_CACHE_DIR", dir);
    }
}

/// Seeded uniform values in [-1, 1).
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `rows` rows of x [4] with a class (which of three sums is largest) and a value (a
/// linear mix): the targets of a classifier head and a regression head.
pub fn heads_rows(rows: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x = random(rows * 4, 5);
    let class: Vec<f32> = x
        .chunks(4)
        .map(|r| {
            let s = [r[0] + r[1], r[1] - r[2], -r[0] - r[3]];
            (0..3).fold(0, |b, i| if s[i] > s[b] { i } else { b }) as f32
        })
        .collect();
    let value: Vec<f32> = x.chunks(4).map(|r| 0.5 * r[0] - 0.3 * r[3]).collect();
    (x, class, value)
}

/// Uploads to both devices.
pub fn both(data: &[f32], shape: &[usize]) -> (Tensor, Tensor) {
    (
        Tensor::from_slice(&Device::cpu(), data, shape).unwrap(),
        Tensor::from_slice(&gpu(), data, shape).unwrap(),
    )
}

/// Asserts |got - want| <= atol + rtol * |want| elementwise, naming the worst element.
pub fn assert_close(got: &[f32], want: &[f32], rtol: f32, atol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0usize, 0.0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.is_finite() == w.is_finite(),
            "{what}[{i}]: got {g}, want {w}"
        );
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= 0.0,
        "{what}[{i}]: got {}, want {} (rtol {rtol}, atol {atol})",
        got[i],
        want[i]
    );
}

/// GPU and CPU tensors hold the same values within the tolerance.
pub fn assert_same(gpu: &Tensor, cpu: &Tensor, rtol: f32, atol: f32, what: &str) {
    assert_eq!(gpu.shape(), cpu.shape(), "{what}: shapes differ");
    assert_close(
        &gpu.to_vec().unwrap(),
        &cpu.to_vec().unwrap(),
        rtol,
        atol,
        what,
    );
}

/// Shapes that are not multiples of any tile size.
pub const AWKWARD: &[(usize, usize)] = &[
    (1, 1),
    (3, 5),
    (17, 33),
    (255, 257),
    (1000, 10),
    (128, 784),
    (784, 128),
];

/// f32 values as f64.
pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// A GPU tensor filled with NaN, for outputs: a value the kernel fails to write shows.
pub fn nan_gpu(shape: &[usize]) -> Tensor {
    Tensor::full(&gpu(), shape, f32::NAN).unwrap()
}

/// The gradient of `loss` at `x` by central differences with step `h`, one index at a time.
pub fn central(x: &[f64], h: f64, mut loss: impl FnMut(&[f64]) -> f64) -> Vec<f32> {
    let mut v = x.to_vec();
    (0..v.len())
        .map(|i| {
            let keep = v[i];
            v[i] = keep + h;
            let up = loss(&v);
            v[i] = keep - h;
            let down = loss(&v);
            v[i] = keep;
            ((up - down) / (2.0 * h)) as f32
        })
        .collect()
}

/// Checks (dx, dgamma, dbeta) of a normalisation against central differences of
/// `loss(x, gamma, beta)`, an f64 forward dotted with the output gradient.
pub fn assert_affine_grads(
    grads: &[Vec<f32>; 3],
    inputs: [&[f64]; 3],
    loss: impl Fn(&[f64], &[f64], &[f64]) -> f64,
    what: &str,
) {
    let [x, gamma, beta] = inputs;
    let fds = [
        central(x, 1e-6, |v| loss(v, gamma, beta)),
        central(gamma, 1e-6, |v| loss(x, v, beta)),
        central(beta, 1e-6, |v| loss(x, gamma, v)),
    ];
    for ((got, fd), name) in grads.iter().zip(&fds).zip(["dx", "dgamma", "dbeta"]) {
        // The backward reads mean and invstd rounded to f32: relative errors near 1e-7.
        let what = format!("{name} vs finite differences {what}");
        assert_close(got, fd, 1e-4, 1e-5, &what);
    }
}

/// A model's parameters as f64, in `params()` order.
pub fn params_f64(model: &kiln::Model) -> Vec<Vec<f64>> {
    model
        .params()
        .iter()
        .map(|p| {
            p.value
                .to_vec()
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect()
        })
        .collect()
}

/// Asserts f32 analytic gradients (named, in `params` order) match f64 central
/// differences of `loss` over `params`, within 2e-7 + 2e-5 |fd|.
///
/// The f64 differences are exact to ~1e-10 (h = 1e-6: curvature ~1e-12, rounding
/// ~1e-16 / h), so the tolerance is the f32 gradient's own error: unit roundoff 6e-8 times
/// sums of up to ~75 terms through a few layers bounds it near 1e-5 relative; the callers
/// (tests/train.rs, tests/norm_layers.rs) measure at most 2.4e-6 relative where |fd| > 1e-3
/// and 3.1e-7 absolute (on |fd| = 0.19), 8% of this tolerance. The floor covers gradients
/// that are zero in exact arithmetic (a bias before batch norm: 8e-9 measured).
pub fn assert_grads_match_fd(
    grads: &[(String, Vec<f32>)],
    params: &[Vec<f64>],
    loss: impl Fn(&[Vec<f64>]) -> f64,
) {
    let h = 1e-6;
    for (pi, (name, grad)) in grads.iter().enumerate() {
        for (k, &g) in grad.iter().enumerate() {
            let mut plus = params.to_vec();
            plus[pi][k] += h;
            let mut minus = params.to_vec();
            minus[pi][k] -= h;
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * h);
            assert!(
                (g as f64 - fd).abs() <= 2e-7 + 2e-5 * fd.abs(),
                "{name}[{k}]: analytic {g}, numeric {fd}"
            );
        }
    }
}

/// Every parameter's gradient from `gradients` (up to 8 elements of each) against central
/// differences, with step `h`, of the loss the trainer itself reports, the parameters
/// moved in the model.
#[allow(dead_code)]
pub fn assert_trainer_fd(t: &mut kiln::Trainer, x: &[f32], y: &[f32], h: f64, what: &str) {
    let (_, grads) = t.gradients(x, y).unwrap();
    let device = t.device().clone();
    for (p, (name, grad)) in grads.iter().enumerate() {
        let values = t.model.params()[p].value.to_vec().unwrap();
        let step = (values.len() / 8).max(1);
        for e in (0..values.len()).step_by(step) {
            let mut at = |d: f64| {
                let mut v = values.clone();
                v[e] = (v[e] as f64 + d) as f32;
                t.model.params_mut()[p].value.write(&v).unwrap();
                t.gradients(x, y).unwrap().0 as f64
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            t.model.params_mut()[p].value.write(&values).unwrap();
            let got = grad[e] as f64;
            assert!(
                (got - fd).abs() <= 2e-4 + 2e-3 * fd.abs(),
                "{what} {name}[{e}] on {device:?}: analytic {got}, fd {fd}"
            );
        }
    }
}

/// A ReLU MLP classifier (`widths`: inputs, hidden layers, classes) built with seed 1 and
/// compiled with sparse categorical cross-entropy and Adam at `lr`.
pub fn relu_classifier(
    device: &Device,
    widths: &[usize],
    lr: f32,
    metrics: &[kiln::Metric],
) -> kiln::Trainer {
    let (classes, hidden) = widths[1..].split_last().expect("inputs and classes");
    let mut spec = kiln::Sequential::new(widths[0]);
    for &units in hidden {
        spec = spec.dense(units).relu();
    }
    spec.dense(*classes)
        .build(device, 1)
        .unwrap()
        .compile(
            kiln::Loss::SparseCategoricalCrossEntropy,
            kiln::Optimizer::adam(lr),
            metrics,
        )
        .unwrap()
}

/// A check whose dependency is missing: under CI (`CI` set) that fails the test, since
/// CI installs every dependency; elsewhere the test says loudly that it skipped.
pub fn cannot_run(test: &str, why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run under CI: {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
}

/// A fresh, empty folder `{group}/{name}-{pid}` under the target directory, for one test.
pub fn temp_dir(group: &str, name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(group)
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `program` and insists that it succeeds; returns its standard output.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let o = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        o.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Sets padded steps of x [b, t, d] to `mask`: sample k's last k % 3 steps (ragged
/// lengths, some sequences all padding when short) and sample 0's step 1 (a gap).
pub fn pad_steps(x: &mut [f32], [b, t, d]: [usize; 3], mask: f32) {
    for k in 0..b {
        for s in 0..t {
            if s + k % 3 >= t || (k == 0 && s == 1 && t > 2) {
                x[(k * t + s) * d..(k * t + s + 1) * d].fill(mask);
            }
        }
    }
}

/// The Shakespeare corpus (../shared/data/shakespeare), or `None` after saying it is
/// absent (a failure under CI, see [`cannot_run`]).
pub fn shakespeare() -> Option<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/shakespeare/shakespeare.txt.gz");
    if !path.is_file() {
        cannot_run("shakespeare", "../shared/data/shakespeare is absent");
        return None;
    }
    Some(kiln::data::text::read_text(&path).unwrap())
}

/// The entropy (nats) of the frequencies of the class ids `ids` (of `vocab` classes):
/// the loss of the best model that ignores its input.
pub fn unigram_entropy(ids: &[f32], vocab: usize) -> f64 {
    let mut counts = vec![0f64; vocab];
    for &id in ids {
        counts[id as usize] += 1.0;
    }
    let total: f64 = counts.iter().sum();
    counts
        .iter()
        .filter(|&&c| c > 0.0)
        .map(|&c| -(c / total) * (c / total).ln())
        .sum()
}

/// target/<profile>/examples/NAME, beside the running test's target/<profile>/deps/;
/// `cargo test` builds the examples first, `cargo test --test ..` alone does not.
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = profile.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: cargo build --release --examples",
        path.display()
    );
    path
}
