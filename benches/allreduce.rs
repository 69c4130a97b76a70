//! All-reduce (mean) time and throughput for 1, 4 and 16 MiB of f32 across 2 in-process
//! members (kiln::dist::ThreadGroup, one thread each), the size of a model's gradient.
//!
//! `cargo bench --bench allreduce` prints, per size, the median time of one
//! `all_reduce_mean` and the buffer bytes it averages per second. The MPI figure, across
//! 2 processes: `benches/allreduce-mpi.sh` (feature `mpi`, Open MPI installed).

use kiln::dist::{AllReduce, ThreadGroup};
use std::thread;
use std::time::Instant;

/// Median seconds per all-reduce of `len` f32s on `n` members, over `reps` timed calls.
fn time(n: usize, len: usize, reps: usize) -> f64 {
    let handles: Vec<_> = ThreadGroup::new(n)
        .into_iter()
        .map(|mut m| {
            thread::spawn(move || {
                let mut buf = vec![m.rank() as f32; len];
                m.all_reduce_mean(&mut buf).expect("warm-up");
                let mut times = Vec::with_capacity(reps);
                for _ in 0..reps {
                    m.barrier().expect("barrier");
                    let start = Instant::now();
                    m.all_reduce_mean(&mut buf).expect("all-reduce");
                    times.push(start.elapsed().as_secs_f64());
                }
                times
            })
        })
        .collect();
    let mut times: Vec<f64> = handles
        .into_iter()
        .map(|h| h.join().expect("member thread"))
        .reduce(|a, b| a.iter().zip(&b).map(|(x, y)| x.max(*y)).collect())
        .unwrap_or_default();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let n = 2;
    for mib in [1usize, 4, 16] {
        let bytes = mib * 1024 * 1024;
        let secs = time(n, bytes / 4, 30);
        println!(
            "threads all_reduce_mean {mib:>2} MiB x {n} members: {:.3} ms, {:.2} GB/s of buffer",
            secs * 1e3,
            bytes as f64 / secs / 1e9
        );
    }
}
