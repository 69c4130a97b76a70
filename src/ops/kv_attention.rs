//! Attention of new positions over a key/value cache, for decoding a causal model a few
//! positions at a time (a prompt, then one token per step): the keys and values of the
//! new positions' in-projection rows (`[q | k | v]`) are appended to a cache of earlier
//! positions' rows, laid out alike, then each new query, at position `at + i`, attends
//! to the cached positions `0..=at + i`. The same sums as [`crate::ops::attention`]'s
//! causal forward over the whole sequence, for the new rows only.
//!
//! On the GPU one dispatch attends (the fused forward's online softmax, over every cache
//! position with the later ones masked, so that the position is a uniform value and one
//! pipeline serves a whole generation), appending the new rows itself when they fit one
//! workgroup (up to 32 new positions), after an append dispatch when they do not. The
//! CPU reference materialises each row's probabilities in f64.

use super::{device_of, grid, host, launch};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::ops::attention::Attention;
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const APPEND: Kernel = Kernel {
    file: "kv_attention.wgsl",
    source: include_str!("../../shaders/kv_attention.wgsl"),
    entry: "append",
    inputs: 1,
    outputs: 1,
    bounds_checks: true,
};
pub(super) const ATTEND: Kernel = Kernel {
    entry: "attend",
    inputs: 1,
    outputs: 2,
    ..APPEND
};

/// The uniform block of shaders/kv_attention.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) at: u32,
    pub(super) scale: f32,
}

/// One cached attention's sizes: `batch` samples of `queries` new positions, a cache of
/// `capacity` positions per sample, rows of `width` (D) values split into `heads` heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvAttention {
    /// Samples.
    pub batch: usize,
    /// New positions per sample.
    pub queries: usize,
    /// Positions the cache holds per sample (the model's context).
    pub capacity: usize,
    /// Width of a row (D), heads * head width.
    pub width: usize,
    /// Heads.
    pub heads: usize,
}

impl KvAttention {
    /// Values per head (D / heads).
    pub fn head_width(&self) -> usize {
        self.width / self.heads.max(1)
    }

    /// Checks the sizes, the operands' lengths and that positions `at..at + queries`
    /// fit in the cache.
    fn check(&self, op: &str, qkv: &Tensor, cache: &Tensor, o: &Tensor, at: usize) -> Result<()> {
        let (b, t, c, d) = (self.batch, self.queries, self.capacity, self.width);
        if [b, t, c, d, self.heads].contains(&0) || !d.is_multiple_of(self.heads) {
            return Err(Error::arg(
                op,
                format!("{self:?}: sizes must be positive, the width a multiple of the heads"),
            ));
        }
        if at.checked_add(t).is_none_or(|end| end > c) {
            return Err(Error::shape(
                op,
                format!(
                    "positions {at}..{} do not fit a cache of {c}",
                    at.saturating_add(t)
                ),
            ));
        }
        for (name, tensor, want) in [
            ("qkv", qkv, b * t * 3 * d),
            ("cache", cache, b * c * 3 * d),
            ("o", o, b * t * d),
        ] {
            if tensor.len() != want {
                return Err(Error::shape(
                    op,
                    format!("{name} is {:?}, expected {want} values", tensor.shape()),
                ));
            }
        }
        Ok(())
    }

    /// Appends the keys and values of `qkv` [batch * queries, 3 * width] (the new
    /// positions' in-projection rows; their query columns may or may not be copied) to
    /// `cache` [batch * capacity, 3 * width] at positions `at..at + queries`, and writes
    /// into `o` [batch * queries, width] each new query's attention over the cached
    /// positions up to its own.
    pub fn forward_into(
        &self,
        qkv: &Tensor,
        cache: &mut Tensor,
        at: usize,
        o: &mut Tensor,
    ) -> Result<()> {
        let op = "kv_attention";
        self.check(op, qkv, cache, o, at)?;
        match device_of(op, &[qkv, cache, o])? {
            Device::Cpu => {
                let rows = 3 * self.width;
                let c = cache.host_mut().ok_or(Error::DeviceMismatch { op })?;
                for (r, src) in host(qkv).chunks_exact(rows).enumerate() {
                    let (b, i) = (r / self.queries, r % self.queries);
                    let dst = (b * self.capacity + at + i) * rows;
                    c[dst..dst + rows].copy_from_slice(src);
                }
                let out = self.cpu_attend(host(qkv), host(cache), at);
                let o = o.host_mut().ok_or(Error::DeviceMismatch { op })?;
                for (o, v) in o.iter_mut().zip(out) {
                    *o = v as f32;
                }
                Ok(())
            }
            Device::Gpu(ctx) => {
                let whole = Attention {
                    batch: self.batch,
                    queries: self.capacity,
                    keys: self.capacity,
                    width: self.width,
                    heads: self.heads,
                    causal: true,
                };
                whole.check_gpu(op)?;
                let at32 = u32::try_from(at).map_err(|_| Error::shape(op, "position past u32"))?;
                let p = Params {
                    at: at32,
                    scale: (1.0 / (self.head_width() as f64).sqrt()) as f32,
                };
                let wg = self.queries.next_power_of_two().clamp(8, 32);
                let fused = self.queries <= wg;
                let c = [
                    ("B", self.batch as f64),
                    ("TN", self.queries as f64),
                    ("C", self.capacity as f64),
                    ("H", self.heads as f64),
                    ("DH", self.head_width() as f64),
                    ("D", self.width as f64),
                    ("WG", wg as f64),
                    ("FUSED", f64::from(u8::from(fused))),
                ];
                if !fused {
                    launch(&ctx, &APPEND, &c, &p, &[qkv, cache], grid(qkv.len(), 64))?;
                }
                let groups = [
                    self.queries.div_ceil(wg) as u32,
                    self.heads as u32,
                    self.batch as u32,
                ];
                launch(&ctx, &ATTEND, &c, &p, &[qkv, cache, o], groups)
            }
        }
    }

    /// The reference attention of the new rows over the cache (already appended), in f64.
    fn cpu_attend(&self, qkv: &[f32], cache: &[f32], at: usize) -> Vec<f64> {
        let (d, dh) = (self.width, self.head_width());
        let scale = 1.0 / (dh as f64).sqrt();
        let mut o = vec![0f64; self.batch * self.queries * d];
        for b in 0..self.batch {
            for i in 0..self.queries {
                for h in 0..self.heads {
                    let q = &qkv[(b * self.queries + i) * 3 * d + h * dh..][..dh];
                    let row = |j: usize, part: usize| {
                        &cache[(b * self.capacity + j) * 3 * d + part * d + h * dh..][..dh]
                    };
                    let scores: Vec<f64> = (0..=at + i)
                        .map(|j| {
                            let k = row(j, 1);
                            q.iter()
                                .zip(k)
                                .map(|(&a, &c)| f64::from(a) * f64::from(c))
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let m = scores.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                    let total: f64 = scores.iter().map(|&s| (s - m).exp()).sum();
                    let out = &mut o[(b * self.queries + i) * d + h * dh..][..dh];
                    for (j, &s) in scores.iter().enumerate() {
                        let w = (s - m).exp() / total;
                        for (acc, &v) in out.iter_mut().zip(row(j, 2)) {
                            *acc += w * f64::from(v);
                        }
                    }
                }
            }
        }
        o
    }
}
