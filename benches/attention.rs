//! The attention core at batch 12, T = 64, D = 128, 4 heads (head width 32): the fused
//! forward (one dispatch, online softmax) against the plain path that materialises the
//! scores (scores, the softmax op, probabilities times values: three dispatches and two
//! [batch * heads * T, T] tensors), with and without the causal mask, and the fused
//! backward (two dispatches, probabilities recomputed).
//!
//! `cargo bench --bench attention` prints ms per call (the median of 5 samples) and the
//! plain path's time over the fused one's.

use kiln::ops::attention::Attention;
use kiln::{Device, Tensor};
use std::time::Instant;

/// Seconds per call: the median of 5 samples of enough repeats for ~0.2 s, after a warm-up.
fn median_time(device: &Device, mut f: impl FnMut()) -> f64 {
    f();
    device.synchronize().expect("sync");
    let mut timed = |reps: usize| {
        let start = Instant::now();
        for _ in 0..reps {
            f();
        }
        device.synchronize().expect("sync");
        start.elapsed().as_secs_f64() / reps as f64
    };
    let mut reps = 1;
    while timed(reps) * (reps as f64) < 0.2 && reps < 256 {
        reps *= 2;
    }
    let mut samples: Vec<f64> = (0..5).map(|_| timed(reps)).collect();
    samples.sort_by(f64::total_cmp);
    samples[2]
}

fn filled(device: &Device, shape: &[usize], seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    // A cheap deterministic spread in [-1, 1).
    let v: Vec<f32> = (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 8388608.0 - 1.0
        })
        .collect();
    Tensor::from_slice(device, &v, shape).expect("upload")
}

fn main() {
    let device = Device::gpu().expect("a GPU adapter (lavapipe will do)");
    println!("attention on {}", device.name());
    let (batch, t, d, heads) = (12, 64, 128, 4);
    let (bt, rows) = (batch * t, batch * heads * t);
    for causal in [false, true] {
        let a = Attention {
            batch,
            queries: t,
            keys: t,
            width: d,
            heads,
            causal,
        };
        let qkv = filled(&device, &[bt, 3 * d], 1);
        let g = filled(&device, &[bt, d], 2);
        let z = |shape: &[usize]| Tensor::zeros(&device, shape).expect("alloc");
        let (mut o, mut lse, mut delta) = (z(&[bt, d]), z(&[rows]), z(&[rows]));
        let (mut scores, mut probs, mut plain) = (z(&[rows, t]), z(&[rows, t]), z(&[bt, d]));
        let mut dqkv = z(&[bt, 3 * d]);
        let fused = median_time(&device, || {
            a.forward_into(&qkv, &qkv, &mut o, &mut lse).expect("fused")
        });
        let unfused = median_time(&device, || {
            a.forward_unfused_into(&qkv, &qkv, &mut scores, &mut probs, &mut plain)
                .expect("unfused")
        });
        let backward = median_time(&device, || {
            a.backward_into(&qkv, &qkv, &o, &lse, &g, &mut delta, &mut dqkv, None)
                .expect("backward")
        });
        let mask = if causal { "causal" } else { "full  " };
        println!(
            "{mask} forward: fused {:.3} ms, unfused {:.3} ms: unfused / fused = {:.2}x; fused backward {:.3} ms",
            fused * 1e3,
            unfused * 1e3,
            unfused / fused,
            backward * 1e3
        );
    }
}
