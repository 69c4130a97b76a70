//! The matmul autotuner end to end: its own test binary, because it sets process-wide
//! environment variables (KILN_AUTOTUNE, KILN_CACHE_DIR) that other tests must not see.
mod common;
use common::*;
use kiln::ops::matmul::{cpu_matmul, Dims, Gemm};
use kiln::ops::matmul_tune;

/// Runs an automatic product of an aligned shape and checks it against the reference.
fn run_checked(g: Gemm, d: Dims, seed: u64) {
    let a_shape = if g.trans_a { [d.k, d.m] } else { [d.m, d.k] };
    let b_shape = if g.trans_b { [d.n, d.k] } else { [d.k, d.n] };
    let a = random(d.m * d.k, seed);
    let b = random(d.k * d.n, seed + 1);
    let (_, ag) = both(&a, &a_shape);
    let (_, bg) = both(&b, &b_shape);
    let got = g.run(&ag, &bg, None).unwrap().to_vec().unwrap();
    let want = cpu_matmul(&g, d, &a, &b, None);
    assert_close(
        &got,
        &want,
        1e-4,
        2e-6 * (d.k as f32).sqrt(),
        &format!("{g:?} {d:?}"),
    );
}

#[test]
fn env_disables_tuning_and_the_cache_records_choices() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("autotune-env");
    let _ = std::fs::remove_dir_all(&dir);
    std::env::set_var("KILN_CACHE_DIR", &dir);
    let path = matmul_tune::cache_path().unwrap();
    assert_eq!(path, dir.join("autotune.txt"));
    let dev = gpu();
    let ctx = dev.gpu_context().unwrap();
    let g = Gemm::nn();
    let d = Dims {
        m: 64,
        n: 96,
        k: 128,
    };

    // Off: the static choice, nothing timed, nothing written.
    std::env::set_var("KILN_AUTOTUNE", "0");
    assert!(!matmul_tune::enabled(ctx));
    run_checked(g, d, 1);
    assert_eq!(g.choose(ctx, d), g.static_choice(ctx, d));
    assert!(!path.exists(), "tuning is off, yet the cache was written");

    // Unset: tuning on hardware adapters only (compiling candidates costs a CPU adapter
    // more than it wins back).
    std::env::remove_var("KILN_AUTOTUNE");
    assert_eq!(matmul_tune::enabled(ctx), !ctx.is_software());

    // On: the first product tunes its class, the choice is a candidate and is cached.
    std::env::set_var("KILN_AUTOTUNE", "1");
    run_checked(g, d, 2);
    let chosen = g.choose(ctx, d);
    assert!(g.candidates(ctx, d).contains(&chosen), "{chosen:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    let key = matmul_tune::class_key(&g, ctx, d);
    let line = format!("{key}\t{}", chosen.name());
    let has_line = text.lines().any(|l| l == line);
    if g.candidates(ctx, d).len() > 1 {
        assert!(has_line, "{line:?} not in {text:?}");
    }
    // Same class, another shape in it: the cached choice, still correct.
    run_checked(
        g,
        Dims {
            m: 60,
            n: 100,
            k: 120,
        },
        3,
    );
}
