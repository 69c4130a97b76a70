//! A small matmul autotuner: the first product of each shape class times the adapter's
//! candidate kernels once and keeps the fastest, in memory and in a cache file.
//!
//! A shape class is (adapter, driver, backend, form nn/nt/tn, log2 buckets of M, N, K).
//! The cache is a text file, one `class<TAB>kernel` line each, at
//! `$KILN_CACHE_DIR/autotune.txt`, else `$XDG_CACHE_HOME/kiln/autotune.txt`, else
//! `~/.cache/kiln/autotune.txt`; it is rewritten atomically (temp file + rename) and an
//! unreadable or corrupt one is ignored. Tuning is on for hardware adapters and off for CPU
//! ones unless `KILN_AUTOTUNE` says otherwise: `0` turns it off everywhere (every product
//! then runs the static choice, `Gemm::static_choice`), `1` on everywhere. `KILN_AUTOTUNE=retune`
//! ignores the file's choices and times every class again, rewriting their lines (for
//! choices first made on a busy machine).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::matmul::{Dims, Gemm, MatmulKernel};
use crate::device::GpuContext;
use crate::error::Result;
use crate::tensor::Tensor;

/// Largest problem a timing run multiplies, in multiply-adds: bigger products are timed
/// on a slice of their rows so tuning stays short.
const TIMING_MACS: usize = 1 << 24;
/// Fewest workgroup tiles (of the largest candidate, 128x128) a timing slice keeps, so it
/// still spreads over the CPU adapter's threads like the whole product does.
const TIMING_TILES: usize = 4;
/// A timed run this long is not repeated: one sample is then steady enough.
const LONG_RUN: Duration = Duration::from_millis(50);

/// The tuner's memory: choices per class, and whether the cache file has been read.
#[derive(Default)]
struct Table {
    loaded: bool,
    choices: HashMap<String, MatmulKernel>,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

fn lock_table() -> std::sync::MutexGuard<'static, Table> {
    // A panic elsewhere while holding the lock leaves plain data: keep using it.
    table().lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether products on `ctx` are tuned: as `KILN_AUTOTUNE` says, else on hardware
/// adapters only. On CPU adapters every candidate costs seconds of shader compilation on
/// a fresh machine, more than tuning wins back there (BENCHMARKS.md, "First run with
/// cold caches").
pub fn enabled(ctx: &GpuContext) -> bool {
    enabled_by(crate::config::autotune().as_deref(), ctx.is_software())
}

fn enabled_by(value: Option<&str>, software: bool) -> bool {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("0" | "off" | "false" | "no") => false,
        Some("1" | "on" | "true" | "yes" | "retune") => true,
        _ => !software,
    }
}

/// Whether this process times every class afresh instead of reading the cache file.
fn retune() -> bool {
    retune_by(crate::config::autotune().as_deref())
}

fn retune_by(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.trim().eq_ignore_ascii_case("retune"))
}

/// Where the tuner keeps its choices, or None when no cache directory can be found.
pub fn cache_path() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let dir = if let Some(dir) = crate::config::cache_dir() {
        PathBuf::from(dir)
    } else if let Some(xdg) = var("XDG_CACHE_HOME") {
        PathBuf::from(xdg).join("kiln")
    } else {
        PathBuf::from(var("HOME")?).join(".cache").join("kiln")
    };
    Some(dir.join("autotune.txt"))
}

/// log2 of `x` rounded up: the size bucket of one dimension.
fn bucket(x: usize) -> u32 {
    usize::BITS - x.saturating_sub(1).leading_zeros()
}

/// The class key of a product: adapter, driver, backend, form and size buckets.
pub fn class_key(g: &Gemm, ctx: &GpuContext, d: Dims) -> String {
    // Tabs and newlines separate fields and lines in the cache file.
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    let form = match (g.trans_a, g.trans_b) {
        (false, false) => "nn",
        (false, true) => "nt",
        (true, false) => "tn",
        (true, true) => "tt",
    };
    format!(
        "{}|{} {}|{:?}|{form}|m{} n{} k{}",
        clean(&ctx.info.name),
        clean(&ctx.info.driver),
        clean(&ctx.info.driver_info),
        ctx.info.backend,
        bucket(d.m),
        bucket(d.n),
        bucket(d.k)
    )
}

/// Reads cache text; lines that do not parse are skipped.
fn parse(text: &str) -> HashMap<String, MatmulKernel> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, name) = l.rsplit_once('\t')?;
            Some((key.to_string(), MatmulKernel::from_name(name.trim())?))
        })
        .collect()
}

/// Writes cache text, sorted so the file diffs cleanly.
fn render(choices: &HashMap<String, MatmulKernel>) -> String {
    let mut lines: Vec<String> = choices
        .iter()
        .map(|(k, v)| format!("{k}\t{}\n", v.name()))
        .collect();
    lines.sort();
    let mut text = String::from("# kiln matmul autotune cache: class<TAB>kernel\n");
    text.extend(lines);
    text
}

/// The choices in the file at `path`; nothing if it is missing, unreadable or corrupt.
fn load(path: &Path) -> HashMap<String, MatmulKernel> {
    std::fs::read_to_string(path)
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// Merges `choices` into the file at `path` (another process may have added some),
/// writing a temp file and renaming it over the old one so readers never see half a file.
fn save(path: &Path, choices: &HashMap<String, MatmulKernel>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut merged = load(path);
    merged.extend(choices.iter().map(|(k, v)| (k.clone(), *v)));
    let tmp = path.with_extension(format!("txt.{}.tmp", std::process::id()));
    std::fs::write(&tmp, render(&merged))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The tuned choice for this product's class, if there is one and it still applies.
pub(crate) fn cached(g: &Gemm, ctx: &GpuContext, d: Dims) -> Option<MatmulKernel> {
    if !enabled(ctx) {
        return None;
    }
    let key = class_key(g, ctx, d);
    let mut table = lock_table();
    if !table.loaded {
        table.loaded = true;
        if let Some(path) = cache_path().filter(|_| !retune()) {
            table.choices = load(&path);
        }
    }
    let k = *table.choices.get(&key)?;
    // A stale or hand-edited entry naming a kernel that does not suit the shape is unused.
    g.candidates(ctx, d).contains(&k).then_some(k)
}

/// Records `k` as the choice for `key`, in memory and (best effort) in the cache file.
fn remember(key: String, k: MatmulKernel) {
    let mut table = lock_table();
    table.choices.insert(key.clone(), k);
    if let Some(path) = cache_path() {
        // The cache only saves time: a read-only home directory must not fail training.
        let _ = save(&path, &HashMap::from([(key, k)]));
    }
}

/// The kernel for an automatic product: the cached choice, else the fastest candidate
/// timed now on the product's own operands, else the static choice.
pub(crate) fn pick(
    g: &Gemm,
    ctx: &Arc<GpuContext>,
    d: Dims,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    out: &mut Tensor,
) -> Result<MatmulKernel> {
    let candidates = g.candidates(ctx, d);
    if candidates.len() < 2 || !enabled(ctx) {
        return Ok(g.static_choice(ctx, d));
    }
    if let Some(k) = cached(g, ctx, d) {
        return Ok(k);
    }
    let Some(best) = fastest(g, ctx, d, &candidates, a, b, bias, out)? else {
        return Ok(g.static_choice(ctx, d));
    };
    remember(class_key(g, ctx, d), best);
    Ok(best)
}

/// Times each candidate (GPU timestamps around its pass where the device has them, else
/// a wall clock around submit and wait) and returns the fastest;
/// a candidate that fails to build or run is skipped. The output is scratch here: the
/// caller records the real product after.
#[allow(clippy::too_many_arguments)]
fn fastest(
    g: &Gemm,
    ctx: &Arc<GpuContext>,
    d: Dims,
    candidates: &[MatmulKernel],
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    out: &mut Tensor,
) -> Result<Option<MatmulKernel>> {
    // Earlier recorded work must not be counted against the first candidate.
    ctx.synchronize()?;
    // A slice of the rows: every index the kernels compute stays inside the buffers,
    // since the row count only shrinks (the results are thrown away).
    let bands = TIMING_TILES.div_ceil(d.n.div_ceil(128).max(1));
    let rows = (TIMING_MACS / (d.n * d.k).max(1)).max(128 * bands) / 16 * 16;
    let t = Dims {
        m: d.m.min(rows),
        ..d
    };
    // Builds the pipeline on a few rows: compiling is not what is being compared.
    let warm = Dims {
        m: t.m.min(16),
        ..t
    };
    let mut best: Option<(Duration, MatmulKernel)> = None;
    for &k in candidates {
        let mut run = |d| -> Result<Duration> {
            let start = Instant::now();
            let gpu = ctx.time_pass(|| g.record(ctx, d, k, a, b, bias, &mut *out))?;
            ctx.synchronize()?;
            Ok(gpu.unwrap_or_else(|| start.elapsed()))
        };
        // The best of two runs (one if it is long) after an untimed one on a few rows.
        let Ok(Ok(first)) = run(warm).map(|_| run(t)) else {
            ctx.check_lost()?;
            continue;
        };
        let time = if first > LONG_RUN {
            first
        } else {
            first.min(run(t).unwrap_or(first))
        };
        if best.is_none_or(|(b, _)| time < b) {
            best = Some((time, k));
        }
    }
    Ok(best.map(|(_, k)| k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-tune-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn cache_round_trips_through_the_file() {
        let path = tmp_dir("roundtrip").join("autotune.txt");
        let choices = HashMap::from([
            (
                "llvmpipe|x|Vulkan|nn|m10 n10 k10".to_string(),
                MatmulKernel::Lane16x16,
            ),
            (
                "llvmpipe|x|Vulkan|nt|m5 n7 k10".to_string(),
                MatmulKernel::Lane4x16,
            ),
        ]);
        save(&path, &choices).unwrap();
        assert_eq!(load(&path), choices);
        // A second save merges rather than replaces.
        let more = HashMap::from([("gpu|y|Metal|tn|m1 n1 k1".to_string(), MatmulKernel::Tiled)]);
        save(&path, &more).unwrap();
        assert_eq!(load(&path).len(), 3);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left behind");
    }

    #[test]
    fn corrupt_cache_is_ignored() {
        let dir = tmp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("autotune.txt");
        std::fs::write(&path, b"\xff\xfe not utf-8 \x00\x01").unwrap();
        assert!(load(&path).is_empty());
        std::fs::write(&path, "no tab here\nkey\tnot-a-kernel\n\tlane4x16\n").unwrap();
        let got = load(&path);
        assert_eq!(got.len(), 1, "only the well-formed line: {got:?}");
        assert!(load(&dir.join("missing.txt")).is_empty());
        // A directory where the file should be: reading fails quietly, saving errors.
        let blocked = dir.join("sub");
        std::fs::create_dir_all(blocked.join("autotune.txt")).unwrap();
        assert!(load(&blocked.join("autotune.txt")).is_empty());
        assert!(save(&blocked.join("autotune.txt"), &HashMap::new()).is_err());
    }

    #[test]
    fn autotune_env_values() {
        assert!(enabled_by(None, false) && !enabled_by(None, true));
        for on in ["1", "on", " TRUE ", "yes", "retune"] {
            assert!(
                enabled_by(Some(on), true) && enabled_by(Some(on), false),
                "{on}"
            );
        }
        for off in ["0", "off", "FALSE", " no "] {
            assert!(!enabled_by(Some(off), false), "{off}");
        }
        assert!(retune_by(Some(" Retune ")));
        assert!(!retune_by(None) && !retune_by(Some("1")));
    }

    #[test]
    fn a_timed_pass_reports_gpu_time_where_timestamps_exist() {
        let dev = crate::Device::gpu().unwrap();
        let ctx = dev.gpu_context().unwrap();
        let (m, n, k) = (64, 64, 64);
        let a = Tensor::full(&dev, &[m, k], 1.0).unwrap();
        let b = Tensor::full(&dev, &[k, n], 2.0).unwrap();
        let mut out = Tensor::zeros(&dev, &[m, n]).unwrap();
        let g = Gemm::nn();
        let d = Dims { m, n, k };
        let kernel = g.static_choice(ctx, d);
        let t = ctx
            .time_pass(|| g.record(ctx, d, kernel, &a, &b, None, &mut out))
            .unwrap();
        assert_eq!(t.is_some(), ctx.has_timestamps(), "{t:?}");
        assert!(t.is_none_or(|t| t > Duration::ZERO));
        eprintln!("timestamps: {}, pass time {t:?}", ctx.has_timestamps());
        // The timed product ran like any other.
        assert!(out.to_vec().unwrap().iter().all(|&v| v == 128.0));
    }

    #[test]
    fn size_buckets_are_log2_rounded_up() {
        let got: Vec<u32> = [0, 1, 2, 3, 32, 33, 784, 1024].map(bucket).to_vec();
        assert_eq!(got, [0, 0, 1, 2, 5, 6, 10, 10]);
    }
}
