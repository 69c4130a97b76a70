//! Attention over a key/value cache (`ops::kv_attention`): a prefill and then one
//! position at a time, on the CPU reference and the GPU, against the causal fused
//! attention over the whole sequence (`ops::attention`'s CPU reference), on head widths
//! 1, 3 and 17, caches of 1, 3, 17 and 64 positions, partly filled or full, prompts
//! within one workgroup (appended by the attention) and past it (a separate append); and the
//! typed errors for positions past the cache and operands of the wrong size.
mod common;
use common::*;
use kiln::ops::attention::Attention;
use kiln::ops::kv_attention::KvAttention;
use kiln::{Device, Error, Tensor};

/// (batch, heads, head width, capacity, positions decoded, prefill).
const CASES: &[(usize, usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 1, 1),
    (2, 2, 3, 3, 3, 1),
    (1, 3, 17, 17, 17, 5),
    (2, 1, 17, 64, 20, 3),
    (1, 4, 3, 64, 64, 40),
    (1, 2, 1, 17, 9, 9),
];

/// Rows `t0..t1` of every sample of `x` [batch * len, w].
fn rows(x: &[f32], batch: usize, len: usize, w: usize, t0: usize, t1: usize) -> Vec<f32> {
    (0..batch)
        .flat_map(|b| x[(b * len + t0) * w..(b * len + t1) * w].iter().copied())
        .collect()
}

/// The output rows of positions 0..used, decoded as a prefill then single positions.
fn decode(
    device: &Device,
    case: (usize, usize, usize, usize, usize, usize),
    qkv: &[f32],
) -> Vec<f32> {
    let (batch, heads, dh, capacity, used, prefill) = case;
    let d = heads * dh;
    let mut cache = Tensor::full(device, &[batch * capacity, 3 * d], 0.5).unwrap();
    let mut out = vec![0f32; batch * used * d];
    let mut at = 0;
    while at < used {
        let n = if at == 0 { prefill } else { 1 };
        let a = KvAttention {
            batch,
            queries: n,
            capacity,
            width: d,
            heads,
        };
        let x = rows(qkv, batch, used, 3 * d, at, at + n);
        let x = Tensor::from_slice(device, &x, &[batch * n, 3 * d]).unwrap();
        let mut o = Tensor::full(device, &[batch * n, d], f32::NAN).unwrap();
        a.forward_into(&x, &mut cache, at, &mut o).unwrap();
        let o = o.to_vec().unwrap();
        for b in 0..batch {
            for i in 0..n {
                let dst = (b * used + at + i) * d;
                out[dst..dst + d].copy_from_slice(&o[(b * n + i) * d..][..d]);
            }
        }
        at += n;
    }
    out
}

/// The CPU reference in f64 and the GPU in f32 against the whole-sequence reference,
/// over at most 64 positions and head widths up to 17: the same tolerance as the fused
/// attention's test (tests/attention.rs), whose sums these are.
#[test]
fn cached_decoding_matches_causal_attention_over_the_whole_sequence() {
    for (k, &case) in CASES.iter().enumerate() {
        let (batch, heads, dh, _, used, _) = case;
        let d = heads * dh;
        let qkv = random(batch * used * 3 * d, 40 + k as u64);
        let full = Attention {
            batch,
            queries: used,
            keys: used,
            width: d,
            heads,
            causal: true,
        };
        let cpu = Device::cpu();
        let x = Tensor::from_slice(&cpu, &qkv, &[batch * used, 3 * d]).unwrap();
        let mut o = Tensor::zeros(&cpu, &[batch * used, d]).unwrap();
        let mut lse = Tensor::zeros(&cpu, &[batch * heads * used]).unwrap();
        full.forward_into(&x, &x, &mut o, &mut lse).unwrap();
        let want = o.to_vec().unwrap();
        for device in [cpu.clone(), gpu()] {
            let got = decode(&device, case, &qkv);
            assert_close(&got, &want, 1e-4, 2e-5, &format!("{case:?} on {device:?}"));
        }
    }
}

#[test]
fn positions_past_the_cache_and_wrong_sizes_are_typed_errors() {
    for device in [Device::cpu(), gpu()] {
        let a = KvAttention {
            batch: 1,
            queries: 2,
            capacity: 4,
            width: 6,
            heads: 2,
        };
        let qkv = Tensor::zeros(&device, &[2, 18]).unwrap();
        let mut cache = Tensor::zeros(&device, &[4, 18]).unwrap();
        let mut o = Tensor::zeros(&device, &[2, 6]).unwrap();
        a.forward_into(&qkv, &mut cache, 2, &mut o).unwrap();
        let e = a.forward_into(&qkv, &mut cache, 3, &mut o).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        let mut small = Tensor::zeros(&device, &[3, 18]).unwrap();
        let e = a.forward_into(&qkv, &mut small, 0, &mut o).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        let odd = KvAttention { heads: 4, ..a };
        let e = odd.forward_into(&qkv, &mut cache, 0, &mut o).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }
}
