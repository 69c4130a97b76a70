//! Multi-head scaled dot-product attention over projected rows: for each sample, head and
//! query row i, `o_i = sum_j softmax_j(q_i . k_j / sqrt(dh)) v_j`, optionally causal (key
//! j > i masked). Queries, keys and values are read where the in-projection writes them:
//! rows of `[q | k | v]`, 3D values wide, queries from the query source's rows and keys and
//! values from the key source's (the same tensor for self-attention).
//!
//! On the GPU the forward is one fused dispatch (online softmax, saving each row's
//! logsumexp) and the backward two (dQ and delta, then dK and dV), recomputing the
//! probabilities instead of storing a T x S matrix per head; heads a multiple of 4 wide
//! get the same kernels with vec4 loads. [`Attention::forward_unfused_into`] is the plain
//! path that materialises the scores. The CPU reference materialises them too.

use super::activation::softmax_into;
use super::{device_of, grid, host, launch};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const FORWARD: Kernel = Kernel {
    file: "attention.wgsl",
    source: include_str!("../../shaders/attention.wgsl"),
    entry: "forward",
    inputs: 2,
    outputs: 2,
    bounds_checks: true,
};
pub(super) const FORWARD4: Kernel = Kernel {
    entry: "forward4",
    ..FORWARD
};
pub(super) const BACKWARD_Q: Kernel = Kernel {
    entry: "backward_q",
    inputs: 5,
    outputs: 2,
    ..FORWARD
};
pub(super) const BACKWARD_KV: Kernel = Kernel {
    entry: "backward_kv",
    inputs: 5,
    outputs: 1,
    ..FORWARD
};
pub(super) const BACKWARD_Q4: Kernel = Kernel {
    entry: "backward_q4",
    ..BACKWARD_Q
};
pub(super) const BACKWARD_KV4: Kernel = Kernel {
    entry: "backward_kv4",
    ..BACKWARD_KV
};
pub(super) const SCORES: Kernel = Kernel {
    entry: "scores_naive",
    inputs: 2,
    outputs: 1,
    ..FORWARD
};
pub(super) const PV: Kernel = Kernel {
    entry: "pv_naive",
    ..SCORES
};

/// The uniform block of shaders/attention.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) batch: u32,
    pub(super) scale: f32,
}

/// The widest head (width / heads) the GPU kernels take: each row's query, accumulator
/// and gradients live in per-invocation arrays of this size.
pub const MAX_HEAD_WIDTH: usize = 128;

/// One attention's sizes: `batch` samples of `queries` query rows attending to `keys`
/// key rows, `width` (D) values per row split into `heads` heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attention {
    /// Samples.
    pub batch: usize,
    /// Query rows per sample (T).
    pub queries: usize,
    /// Key and value rows per sample (S; T for self-attention).
    pub keys: usize,
    /// Width of a row (D), heads * head width.
    pub width: usize,
    /// Heads.
    pub heads: usize,
    /// Whether query i sees only keys j <= i.
    pub causal: bool,
}

/// Where the CPU reference's backward writes (see [`Attention::backward_into`]).
type Grads<'a> = (&'a mut [f32], Option<&'a mut [f32]>);

impl Attention {
    /// Values per head (D / heads).
    pub fn head_width(&self) -> usize {
        self.width / self.heads.max(1)
    }

    /// Checks the sizes: all positive, the width a multiple of the heads.
    pub fn check(&self, op: &str) -> Result<()> {
        let sizes = [self.batch, self.queries, self.keys, self.width, self.heads];
        if sizes.contains(&0) {
            return Err(Error::shape(op, format!("empty attention {self:?}")));
        }
        if !self.width.is_multiple_of(self.heads) {
            return Err(Error::arg(
                format!("{op} heads"),
                format!(
                    "the width {} is not a multiple of {} heads",
                    self.width, self.heads
                ),
            ));
        }
        Ok(())
    }

    /// Checks each (name, tensor, values) holds that many values.
    fn lens(op: &str, want: &[(&str, &Tensor, usize)]) -> Result<()> {
        for &(name, t, n) in want {
            if t.len() != n {
                return Err(Error::shape(
                    op,
                    format!("{name} is {:?}, expected {n} values", t.shape()),
                ));
            }
        }
        Ok(())
    }

    /// (query-source rows, key-source rows, output rows, saved row statistics) in values.
    fn sizes(&self) -> (usize, usize, usize, usize) {
        let (b, t, s, d) = (self.batch, self.queries, self.keys, self.width);
        (b * t * 3 * d, b * s * 3 * d, b * t * d, b * self.heads * t)
    }

    /// The GPU kernels' limits on top of [`Attention::check`] (the cached attention's
    /// kernel has the same).
    pub(super) fn check_gpu(&self, op: &str) -> Result<()> {
        if self.head_width() > MAX_HEAD_WIDTH {
            return Err(Error::arg(
                format!("{op} heads"),
                format!(
                    "heads of {} values: the GPU kernels take at most {MAX_HEAD_WIDTH} (use more heads)",
                    self.head_width()
                ),
            ));
        }
        if self.batch > 65535 || self.heads > 65535 {
            return Err(Error::shape(op, "more than 65535 samples or heads"));
        }
        Ok(())
    }

    /// Whether the vec4 kernels run: heads a multiple of 4 wide (then every row, offset
    /// and head starts on a vec4). On lavapipe each load costs a loop over the lanes
    /// whatever it loads, so a quarter as many loads is most of the kernels' time.
    fn vec4(&self) -> bool {
        self.head_width().is_multiple_of(4)
    }

    fn params(&self) -> Params {
        Params {
            batch: self.batch as u32,
            scale: (1.0 / (self.head_width() as f64).sqrt()) as f32,
        }
    }

    /// The pipeline constants: every loop bound and the layout.
    fn constants(&self, wg: usize) -> Vec<(&'static str, f64)> {
        let d = self.width as f64;
        vec![
            ("T", self.queries as f64),
            ("S", self.keys as f64),
            ("H", self.heads as f64),
            ("DH", self.head_width() as f64),
            ("D", d),
            ("QS", 3.0 * d),
            ("QO", 0.0),
            ("KS", 3.0 * d),
            ("KO", d),
            ("VO", 2.0 * d),
            ("CAUSAL", f64::from(u8::from(self.causal))),
            ("WG", wg as f64),
        ]
    }

    /// Rows per fused workgroup for `rows` rows: a power of two from 8 (lavapipe's lanes)
    /// to 32.
    fn rows_per_group(rows: usize) -> usize {
        rows.next_power_of_two().clamp(8, 32)
    }

    /// `o` [batch * queries, width] (heads side by side, as concatenated) and each query
    /// row's logsumexp `lse` [batch, heads, queries], from `q` [batch * queries, 3 * width]
    /// (queries in the first third) and `kv` [batch * keys, 3 * width] (keys in the second
    /// third, values in the last). Only the tensors' lengths are checked, not their shapes.
    pub fn forward_into(
        &self,
        q: &Tensor,
        kv: &Tensor,
        o: &mut Tensor,
        lse: &mut Tensor,
    ) -> Result<()> {
        let name = "attention";
        self.check(name)?;
        let (nq, nkv, no, nl) = self.sizes();
        Self::lens(
            name,
            &[
                ("q", q, nq),
                ("kv", kv, nkv),
                ("o", o, no),
                ("lse", lse, nl),
            ],
        )?;
        match device_of(name, &[q, kv, o, lse])? {
            Device::Cpu => {
                let (out, stats) = self.cpu_forward(host(q), host(kv));
                copy_into(name, o, &out)?;
                copy_into(name, lse, &stats)
            }
            Device::Gpu(ctx) => {
                self.check_gpu(name)?;
                let wg = Self::rows_per_group(self.queries);
                let groups = [
                    self.queries.div_ceil(wg) as u32,
                    self.heads as u32,
                    self.batch as u32,
                ];
                let c = self.constants(wg);
                let kernel = if self.vec4() { &FORWARD4 } else { &FORWARD };
                launch(&ctx, kernel, &c, &self.params(), &[q, kv, o, lse], groups)
            }
        }
    }

    /// The plain forward: `scores` and `probs` [batch * heads * queries, keys] materialised
    /// (masked scores, their row-wise softmax), then `o` as [`Attention::forward_into`]'s.
    pub fn forward_unfused_into(
        &self,
        q: &Tensor,
        kv: &Tensor,
        scores: &mut Tensor,
        probs: &mut Tensor,
        o: &mut Tensor,
    ) -> Result<()> {
        let name = "attention_unfused";
        self.check(name)?;
        let (nq, nkv, no, _) = self.sizes();
        let ns = self.batch * self.heads * self.queries * self.keys;
        let want = [
            ("q", q, nq),
            ("kv", kv, nkv),
            ("scores", &*scores, ns),
            ("o", &*o, no),
        ];
        Self::lens(name, &want)?;
        match device_of(name, &[q, kv, scores, probs, o])? {
            Device::Cpu => {
                let (out, _) = self.cpu_forward(host(q), host(kv));
                let raw = self.cpu_scores(host(q), host(kv));
                copy_into(name, scores, &raw)?;
                softmax_into(scores, probs)?;
                copy_into(name, o, &out)
            }
            Device::Gpu(ctx) => {
                self.check_gpu(name)?;
                let c = self.constants(32);
                let p = self.params();
                launch(&ctx, &SCORES, &c, &p, &[q, kv, scores], grid(ns, 64))?;
                softmax_into(scores, probs)?;
                launch(&ctx, &PV, &c, &p, &[probs, kv, o], grid(no, 64))
            }
        }
    }

    /// Backward of [`Attention::forward_into`] from `d_o` (like `o`), the forward's `o` and
    /// `lse`: writes dQ into the query columns of `dq` (laid out as `q`), and dK and dV
    /// into the key and value columns of `dkv` (laid out as `kv`), or of `dq` when `dkv`
    /// is `None` (self-attention: one gradient for the one projection). Other columns
    /// are left as they are. `delta` [batch, heads, queries] receives each row's
    /// dO . O, which the second GPU pass reads.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_into(
        &self,
        q: &Tensor,
        kv: &Tensor,
        o: &Tensor,
        lse: &Tensor,
        d_o: &Tensor,
        delta: &mut Tensor,
        dq: &mut Tensor,
        dkv: Option<&mut Tensor>,
    ) -> Result<()> {
        let name = "attention_backward";
        self.check(name)?;
        let (nq, nkv, no, nl) = self.sizes();
        let want = [
            ("q", q, nq),
            ("kv", kv, nkv),
            ("o", o, no),
            ("lse", lse, nl),
            ("d_o", d_o, no),
            ("delta", &*delta, nl),
            ("dq", &*dq, if dkv.is_some() { nq } else { nkv }),
        ];
        Self::lens(name, &want)?;
        if let Some(dkv) = &dkv {
            Self::lens(name, &[("dkv", dkv, nkv)])?;
        }
        if dkv.is_none() && self.queries != self.keys {
            return Err(Error::shape(name, "self-attention with keys != queries"));
        }
        let mut all = vec![q, kv, o, lse, d_o, &*delta, &*dq];
        all.extend(dkv.as_deref());
        match device_of(name, &all)? {
            Device::Cpu => self.cpu_backward_into(q, kv, d_o, delta, dq, dkv),
            Device::Gpu(ctx) => {
                self.check_gpu(name)?;
                let p = self.params();
                let wq = Self::rows_per_group(self.queries);
                let groups = [
                    self.queries.div_ceil(wq) as u32,
                    self.heads as u32,
                    self.batch as u32,
                ];
                let bound = [q, kv, o, lse, d_o, &*dq, &*delta];
                let (kq, kkv) = match self.vec4() {
                    true => (&BACKWARD_Q4, &BACKWARD_KV4),
                    false => (&BACKWARD_Q, &BACKWARD_KV),
                };
                launch(&ctx, kq, &self.constants(wq), &p, &bound, groups)?;
                let wk = Self::rows_per_group(self.keys);
                let groups = [
                    self.keys.div_ceil(wk) as u32,
                    self.heads as u32,
                    self.batch as u32,
                ];
                let out = dkv.map_or(&*dq, |t| &*t);
                let bound = [q, kv, lse, d_o, &*delta, out];
                launch(&ctx, kkv, &self.constants(wk), &p, &bound, groups)
            }
        }
    }

    /// The masked, scaled scores [batch, heads, queries, keys] (f32, as the GPU's).
    fn cpu_scores(&self, q: &[f32], kv: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.batch * self.heads * self.queries * self.keys);
        for b in 0..self.batch {
            for h in 0..self.heads {
                for i in 0..self.queries {
                    let row = self.scores_row(q, kv, b, h, i);
                    out.extend(row.iter().map(|&v| v.max(-3.0e38) as f32));
                }
            }
        }
        out
    }

    /// One query row's scaled scores against every key, masked ones -inf.
    fn scores_row(&self, q: &[f32], kv: &[f32], b: usize, h: usize, i: usize) -> Vec<f64> {
        let (d, dh) = (self.width, self.head_width());
        let scale = 1.0 / (dh as f64).sqrt();
        let qr = &q[(b * self.queries + i) * 3 * d + h * dh..][..dh];
        (0..self.keys)
            .map(|j| {
                if self.causal && j > i {
                    return f64::NEG_INFINITY;
                }
                let kr = &kv[(b * self.keys + j) * 3 * d + d + h * dh..][..dh];
                let dot: f64 = qr
                    .iter()
                    .zip(kr)
                    .map(|(&a, &k)| f64::from(a) * f64::from(k))
                    .sum();
                dot * scale
            })
            .collect()
    }

    /// One query row's probabilities and logsumexp.
    fn probs_row(&self, q: &[f32], kv: &[f32], b: usize, h: usize, i: usize) -> (Vec<f64>, f64) {
        let s = self.scores_row(q, kv, b, h, i);
        let m = s.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        let total: f64 = s.iter().map(|&v| (v - m).exp()).sum();
        (
            s.iter().map(|&v| (v - m).exp() / total).collect(),
            m + total.ln(),
        )
    }

    /// The value row `j` of head `h` in sample `b`.
    fn value<'a>(&self, kv: &'a [f32], b: usize, h: usize, j: usize) -> &'a [f32] {
        let (d, dh) = (self.width, self.head_width());
        &kv[(b * self.keys + j) * 3 * d + 2 * d + h * dh..][..dh]
    }

    /// The reference forward: (o, lse) in f64, from the materialised probabilities.
    fn cpu_forward(&self, q: &[f32], kv: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (d, dh) = (self.width, self.head_width());
        let mut o = vec![0f64; self.batch * self.queries * d];
        let mut lse = vec![0f64; self.batch * self.heads * self.queries];
        for b in 0..self.batch {
            for h in 0..self.heads {
                for i in 0..self.queries {
                    let (p, l) = self.probs_row(q, kv, b, h, i);
                    lse[(b * self.heads + h) * self.queries + i] = l;
                    let out = &mut o[(b * self.queries + i) * d + h * dh..][..dh];
                    for (j, &pj) in p.iter().enumerate() {
                        for (acc, &v) in out.iter_mut().zip(self.value(kv, b, h, j)) {
                            *acc += pj * f64::from(v);
                        }
                    }
                }
            }
        }
        (o, lse)
    }

    /// The reference backward, recomputing everything from q and kv.
    fn cpu_backward_into(
        &self,
        q: &Tensor,
        kv: &Tensor,
        d_o: &Tensor,
        delta: &mut Tensor,
        dq: &mut Tensor,
        dkv: Option<&mut Tensor>,
    ) -> Result<()> {
        let name = "attention_backward";
        let (q, kv, g) = (host(q), host(kv), host(d_o));
        let (d, dh, s) = (self.width, self.head_width(), self.keys);
        let scale = 1.0 / (dh as f64).sqrt();
        let mut gq = vec![0f64; self.batch * self.queries * d];
        let mut gk = vec![0f64; self.batch * s * d];
        let mut gv = vec![0f64; self.batch * s * d];
        let mut deltas = vec![0f64; self.batch * self.heads * self.queries];
        for b in 0..self.batch {
            for h in 0..self.heads {
                for i in 0..self.queries {
                    let (p, _) = self.probs_row(q, kv, b, h, i);
                    let gi = &g[(b * self.queries + i) * d + h * dh..][..dh];
                    let dot = |v: &[f32]| -> f64 {
                        gi.iter()
                            .zip(v)
                            .map(|(&a, &c)| f64::from(a) * f64::from(c))
                            .sum()
                    };
                    let dp: Vec<f64> = (0..s).map(|j| dot(self.value(kv, b, h, j))).collect();
                    let di: f64 = p.iter().zip(&dp).map(|(a, c)| a * c).sum();
                    deltas[(b * self.heads + h) * self.queries + i] = di;
                    let qi = &q[(b * self.queries + i) * 3 * d + h * dh..][..dh];
                    for j in 0..s {
                        let ds = p[j] * (dp[j] - di) * scale;
                        let kj = &kv[(b * s + j) * 3 * d + d + h * dh..][..dh];
                        let at = (b * s + j) * d + h * dh;
                        for c in 0..dh {
                            gq[(b * self.queries + i) * d + h * dh + c] += ds * f64::from(kj[c]);
                            gk[at + c] += ds * f64::from(qi[c]);
                            gv[at + c] += p[j] * f64::from(gi[c]);
                        }
                    }
                }
            }
        }
        copy_into(name, delta, &deltas)?;
        let (dq_out, dkv_out): Grads<'_> = match dkv {
            Some(t) => (host_mut(name, dq)?, Some(host_mut(name, t)?)),
            None => (host_mut(name, dq)?, None),
        };
        scatter(&gq, dq_out, d, 0);
        let dkv_out = match dkv_out {
            Some(t) => t,
            None => dq_out,
        };
        scatter(&gk, dkv_out, d, d);
        scatter(&gv, dkv_out, d, 2 * d);
        Ok(())
    }
}

/// Writes the rows of `src` ([rows, d]) into columns `at..at + d` of `dst` ([rows, 3d]).
fn scatter(src: &[f64], dst: &mut [f32], d: usize, at: usize) {
    for (row, out) in src.chunks_exact(d).zip(dst.chunks_exact_mut(3 * d)) {
        for (o, &v) in out[at..at + d].iter_mut().zip(row) {
            *o = v as f32;
        }
    }
}

fn host_mut<'a>(op: &'static str, t: &'a mut Tensor) -> Result<&'a mut [f32]> {
    t.host_mut().ok_or(Error::DeviceMismatch { op })
}

/// Rounds `acc` into the CPU tensor `out` (same length, checked by the caller).
fn copy_into<T: Copy + Into<f64>>(op: &'static str, out: &mut Tensor, acc: &[T]) -> Result<()> {
    for (o, &a) in host_mut(op, out)?.iter_mut().zip(acc) {
        *o = a.into() as f32;
    }
    Ok(())
}
