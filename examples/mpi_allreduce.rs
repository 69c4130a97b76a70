//! kiln's MPI collectives (kiln::dist::mpi), checked and timed across ranks.
//!
//! ```sh
//! cargo build --release --features mpi --example mpi_allreduce
//! mpirun --oversubscribe -np 2 target/release/examples/mpi_allreduce           # checks
//! mpirun --oversubscribe -np 2 target/release/examples/mpi_allreduce --bench   # timings
//! mpirun --oversubscribe -np 2 target/release/examples/mpi_allreduce --train-bench
//! ```
//! `--train-bench` trains 784-256-128-10 and the MNIST CNN data-parallel (as
//! benches/replicas.rs does in one process): each rank exchanging nothing (the
//! compute-only baseline), then one all-reduce after the backward pass and buckets of
//! 256 KB and 64 KB, the configurations interleaved, on benches/replicas.rs's rows and
//! epochs; rank 0 prints samples/s and the exposed communication (a step's excess over
//! the compute-only step).
//! (As root, Open MPI also wants `OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1`.)
//!
//! Options, for tests/dist_mpi.rs: `--len N` (elements, default 1_000_003), `--max-count N`
//! (elements per MPI call, to exercise the chunking), `--timeout S` (seconds per
//! collective), `--mismatch` (the last rank passes another fingerprint), `--die-at K`
//! (the last rank exits, status 3, before all-reduce K of 1000), `--hang-at K` (the last
//! rank sleeps instead of joining all-reduce K), `--stop-inside K` (the last rank joins
//! all-reduce K's opening barrier, then sleeps: it stopped inside the exchange).
//!
//! Each rank prints `rank R: mean ok, bits HASH` (the same HASH on every rank), or its
//! error on stderr, exiting 2.

#[path = "../benches/dp_common/mod.rs"]
mod dp_common;

use dp_common::{bucket_name, epoch, make_data, model, row, Alone, BATCH, BUCKETS, MODELS};
use kiln::dist::mpi::MpiGroup;
use kiln::dist::{AllReduce, Fingerprint};
use mpi::collective::SystemOperation;
use mpi::traits::CommunicatorCollectives;
use std::time::{Duration, Instant};

struct Args {
    len: usize,
    max_count: Option<usize>,
    timeout: Option<u64>,
    mismatch: bool,
    die_at: Option<usize>,
    hang_at: Option<usize>,
    stop_inside: Option<usize>,
    bench: bool,
    train_bench: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        len: 1_000_003,
        max_count: None,
        timeout: None,
        mismatch: false,
        die_at: None,
        hang_at: None,
        stop_inside: None,
        bench: false,
        train_bench: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = || -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--len" => a.len = num()?,
            "--max-count" => a.max_count = Some(num()?),
            "--timeout" => a.timeout = Some(num()? as u64),
            "--die-at" => a.die_at = Some(num()?),
            "--hang-at" => a.hang_at = Some(num()?),
            "--stop-inside" => a.stop_inside = Some(num()?),
            "--mismatch" => a.mismatch = true,
            "--bench" => a.bench = true,
            "--train-bench" => a.train_bench = true,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(a)
}

/// Rank `r`'s `i`-th input: awkward values, the same on every machine.
fn input(r: usize, i: usize) -> f32 {
    ((i * 7919 + r * 104_729) % 1999) as f32 / 997.0 - 1.0 + r as f32 * 1e-3
}

fn fail(rank: usize, detail: String) -> kiln::Error {
    kiln::Error::Distributed { rank, detail }
}

fn run(g: &mut MpiGroup, a: &Args) -> kiln::Result<()> {
    let (rank, size) = (g.rank(), g.size());
    let last = size - 1;
    let print = Fingerprint::new().text("mpi_allreduce").num(a.len as u64);
    let print = if a.mismatch && rank == last {
        print.num(1)
    } else {
        print
    };
    g.check_fingerprint("model, data set and batch size", print.finish())?;
    if a.bench {
        return bench(g);
    }
    if a.train_bench {
        return train_bench(g);
    }

    // Mean: against an f64 reference of every rank's inputs.
    let mut buf: Vec<f32> = (0..a.len).map(|i| input(rank, i)).collect();
    g.all_reduce_mean(&mut buf)?;
    for (i, &got) in buf.iter().enumerate() {
        let want = (0..size).map(|r| f64::from(input(r, i))).sum::<f64>() / size as f64;
        if (f64::from(got) - want).abs() > 1e-6 * (1.0 + want.abs()) {
            return Err(fail(rank, format!("mean[{i}] = {got}, want {want}")));
        }
    }
    let bits = buf
        .iter()
        .fold(Fingerprint::new(), |f, x| {
            f.bytes(&x.to_bits().to_le_bytes())
        })
        .finish();

    // Broadcast from rank 0, metric sums, barrier.
    let mut weights: Vec<f32> = (0..1000).map(|i| input(rank, i)).collect();
    g.broadcast(&mut weights)?;
    if weights.iter().enumerate().any(|(i, &w)| w != input(0, i)) {
        return Err(fail(rank, "broadcast differs from rank 0's".into()));
    }
    let mut sums = [rank as f64, 1.0, 0.5];
    g.all_reduce_sum(&mut sums)?;
    let want = [
        (size * (size - 1) / 2) as f64,
        size as f64,
        0.5 * size as f64,
    ];
    if sums != want {
        return Err(fail(rank, format!("sums {sums:?}, want {want:?}")));
    }
    g.barrier()?;
    println!("rank {rank}: mean ok, bits {bits:016x}");

    // Failure drills: many small all-reduces, one of which the last rank misses.
    if a.die_at.is_some() || a.hang_at.is_some() || a.stop_inside.is_some() {
        let mut step = vec![1.0f32; 1024];
        for k in 0..1000 {
            if rank == last && a.die_at == Some(k) {
                whole_line(format!("rank {rank}: exiting before all-reduce {k}"));
                std::process::exit(3);
            }
            if rank == last && a.hang_at == Some(k) {
                whole_line(format!("rank {rank}: hanging before all-reduce {k}"));
                std::thread::sleep(Duration::from_secs(3600));
            }
            if rank == last && a.stop_inside == Some(k) {
                // An all-reduce opens with a barrier: join it, then never sum.
                whole_line(format!("rank {rank}: stopping inside all-reduce {k}"));
                g.barrier()?;
                std::thread::sleep(Duration::from_secs(3600));
            }
            g.all_reduce_mean(&mut step)?;
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

fn bench(g: &mut MpiGroup) -> kiln::Result<()> {
    for mib in [1usize, 4, 16] {
        let mut buf = vec![1.0f32; mib * 1024 * 1024 / 4];
        g.all_reduce_mean(&mut buf)?; // warm-up
        let reps = 20;
        g.barrier()?;
        let t = Instant::now();
        for _ in 0..reps {
            g.all_reduce_mean(&mut buf)?;
        }
        let per = t.elapsed().as_secs_f64() / reps as f64;
        // Baseline: rsmpi's blocking all_reduce_into (no staging copy, no deadline).
        let mut out = vec![0.0f32; buf.len()];
        g.barrier()?;
        let t = Instant::now();
        for _ in 0..reps {
            g.world()
                .all_reduce_into(&buf[..], &mut out[..], SystemOperation::sum());
        }
        let blocking = t.elapsed().as_secs_f64() / reps as f64;
        if g.rank() == 0 {
            println!(
                "mpi all_reduce_mean {mib:>2} MiB x {} ranks: {:.3} ms, {:.2} GB/s of buffer (blocking all_reduce_into: {:.3} ms)",
                g.size(),
                per * 1e3,
                (mib * 1024 * 1024) as f64 / per / 1e9,
                blocking * 1e3
            );
        }
    }
    Ok(())
}

/// Data-parallel epochs per configuration; see the header.
fn train_bench(g: &mut MpiGroup) -> kiln::Result<()> {
    let (x, y) = make_data(4096);
    let (rank, size) = (g.rank(), g.size());
    let device = kiln::Device::gpu_nth(g.node_rank()).or_else(|_| kiln::Device::gpu())?;
    if rank == 0 {
        println!("global batch {BATCH} over {size} ranks");
    }
    for (name, cnn, rows, reps) in MODELS {
        let (x, y) = (&x[..rows * 784], &y[..rows]);
        let mut t = model(&device, cnn);
        let warm = (&x[..BATCH * 784], &y[..BATCH]);
        let configs: Vec<Option<usize>> = [None].into_iter().chain(BUCKETS.map(Some)).collect();
        for c in &configs {
            run_config(g, &mut t, warm, *c, rank, size);
        }
        let mut best = vec![(f64::MAX, 0.0); configs.len()];
        for _ in 0..reps {
            for (b, c) in best.iter_mut().zip(&configs) {
                let r = run_config(g, &mut t, (x, y), *c, rank, size);
                if r.0 < b.0 {
                    *b = r;
                }
            }
        }
        let alone = best[0].0;
        let base = rows as f64 / alone;
        for (c, (secs, reduce)) in configs.iter().zip(&best) {
            let what = match c {
                None => "no exchange (compute only)".to_string(),
                Some(b) => bucket_name(*b),
            };
            if rank == 0 {
                println!(
                    "{}",
                    row(
                        &format!("{name}, {size} ranks, {what}"),
                        rows,
                        *secs,
                        *reduce,
                        alone,
                        base
                    )
                );
            }
        }
    }
    Ok(())
}

/// One epoch on every rank, started together: `None` exchanges nothing.
fn run_config(
    g: &mut MpiGroup,
    t: &mut kiln::Trainer,
    (x, y): (&[f32], &[f32]),
    bucket: Option<usize>,
    rank: usize,
    size: usize,
) -> (f64, f64) {
    g.barrier().expect("barrier");
    match bucket {
        None => epoch(t, &mut Alone { rank, size }, x, y, 0),
        Some(b) => epoch(t, g, x, y, b),
    }
}

/// Writes `line` to stderr in one call: the ranks share mpirun's stderr, and `eprintln!`
/// writes each piece of its format separately, so two ranks' lines could interleave.
fn whole_line(line: String) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            whole_line(format!("mpi_allreduce: {e}"));
            std::process::exit(64);
        }
    };
    let mut g = match MpiGroup::init() {
        Ok(g) => g,
        Err(e) => {
            whole_line(format!("mpi_allreduce: {e}"));
            std::process::exit(2);
        }
    };
    if let Some(n) = args.max_count {
        g = g.with_max_count(n);
    }
    if let Some(s) = args.timeout {
        g = g.with_timeout(Duration::from_secs(s));
    }
    if let Err(e) = run(&mut g, &args) {
        whole_line(format!("mpi_allreduce: {e}"));
        if matches!(e, kiln::Error::RankMismatch { .. }) {
            // Every rank found the same mismatch: let each report it before any exits
            // (mpirun ends the others when the first exits non-zero).
            let _ = g.barrier();
        }
        drop(g);
        std::process::exit(2);
    }
}
