//! Data-parallel training in one process: samples/s at 1 and 2 replicas (one device and
//! one thread each) at the same global batch, what the gradient all-reduce costs per
//! step, and what reducing in buckets during the backward pass changes.
//!
//! `cargo bench --bench replicas` trains each model for one epoch on MNIST-shaped rows
//! (splitmix64 pixels, labels from a fixed random teacher) at global batch 128: the
//! 784-256-128-10 MLP on 4096 rows (best of 3 epochs) and examples/mnist_cnn's CNN on
//! 256 (best of 2). Rows: one replica (the plain `fit`); two replicas that exchange
//! nothing (the compute-only baseline: the same shards, readbacks and uploads); two
//! replicas over a `ThreadGroup` with one all-reduce after the backward pass and with
//! buckets of 256 KB and 64 KB, the configurations interleaved.
//! Exposed communication is a step's excess over the compute-only step. On a machine
//! whose replicas share the same cores (lavapipe on a small CPU) two replicas cannot be
//! faster than one, and the "GPU" that a bucket's all-reduce overlaps runs on the cores
//! that the all-reduce needs: the rows show the exchange's overhead, not the scaling or
//! the overlap that two GPUs give.

mod dp_common;

use dp_common::{bucket_name, epoch, make_data, model, row, Alone, BATCH, BUCKETS, MODELS};
use kiln::dist::{AllReduce, ThreadGroup};
use kiln::{Device, FitOptions, Trainer};
use std::time::Instant;

/// One epoch of two replicas, rank 0 here and rank 1 on a thread; rank 0's (seconds,
/// all-reduce seconds). `exchange`: over a ThreadGroup, else each [`Alone`].
fn two(t: &mut [Trainer; 2], x: &[f32], y: &[f32], exchange: bool, bucket: usize) -> (f64, f64) {
    let mut groups: Vec<Box<dyn AllReduce + Send>> = match exchange {
        true => ThreadGroup::new(2)
            .into_iter()
            .map(|m| Box::new(m) as Box<dyn AllReduce + Send>)
            .collect(),
        false => (0..2)
            .map(|rank| Box::new(Alone { rank, size: 2 }) as Box<dyn AllReduce + Send>)
            .collect(),
    };
    let (t0, t1) = t.split_at_mut(1);
    let (g0, g1) = groups.split_at_mut(1);
    std::thread::scope(|s| {
        let other = s.spawn(|| epoch(&mut t1[0], &mut *g1[0], x, y, bucket));
        let mine = epoch(&mut t0[0], &mut *g0[0], x, y, bucket);
        other.join().expect("replica thread");
        mine
    })
}

fn main() {
    let (x, y) = make_data(4096);
    println!("global batch {BATCH}");
    for (name, cnn, rows, reps) in MODELS {
        let (x, y) = (&x[..rows * 784], &y[..rows]);
        let mut one = model(&Device::gpu().expect("adapter"), cnn);
        let mut pair = [0, 1].map(|_| model(&Device::gpu().expect("adapter"), cnn));
        // Warm-up: pipelines compiled, the autotuner settled, every path run once.
        let warm = (&x[..BATCH * 784], &y[..BATCH]);
        one.fit(warm.0, warm.1, FitOptions::new(1, BATCH))
            .expect("fit");
        for b in BUCKETS {
            two(&mut pair, warm.0, warm.1, true, b);
        }
        two(&mut pair, warm.0, warm.1, false, 0);
        let configs: Vec<(bool, usize)> = [(false, 0)]
            .into_iter()
            .chain(BUCKETS.map(|b| (true, b)))
            .collect();
        let mut single = f64::MAX;
        let mut best = vec![(f64::MAX, 0.0); configs.len()];
        for _ in 0..reps {
            let start = Instant::now();
            one.fit(
                x,
                y,
                FitOptions {
                    seed: 1,
                    ..FitOptions::new(1, BATCH)
                },
            )
            .expect("fit");
            single = single.min(start.elapsed().as_secs_f64());
            for (b, &(exchange, bucket)) in best.iter_mut().zip(&configs) {
                let r = two(&mut pair, x, y, exchange, bucket);
                if r.0 < b.0 {
                    *b = r;
                }
            }
        }
        let base = rows as f64 / single;
        let alone = best[0].0;
        println!(
            "{}",
            row(
                &format!("{name}, 1 replica"),
                rows,
                single,
                0.0,
                single,
                base
            )
        );
        for ((exchange, bucket), (secs, reduce)) in configs.iter().zip(&best) {
            let what = match exchange {
                false => "2 replicas, no exchange (compute only)".to_string(),
                true => format!("2 replicas, {}", bucket_name(*bucket)),
            };
            println!(
                "{}",
                row(
                    &format!("{name}, {what}"),
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
