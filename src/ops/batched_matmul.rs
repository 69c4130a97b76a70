//! Strided batched matrix products: one dispatch multiplies the matrices of K stacked
//! trials (models of one shape trained side by side), each operand found in its tensor
//! at a trial stride and a row stride, with matmul's bias + activation epilogue.
//!
//! The strides let one kernel read the layouts stacked training keeps: per-trial blocks
//! (`[K, rows, cols]`), the trials side by side in one wide matrix (`[rows, K * cols]`,
//! where a plain matmul can take all trials' first layer at once) and a shared operand
//! (trial stride 0: the batch every trial sees).

use super::matmul::{Dims, Gemm};
use super::{device_of, host, launch};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const BATCHED: Kernel = Kernel {
    file: "batched_matmul.wgsl",
    source: concat!(
        include_str!("../../shaders/act.wgsl"),
        include_str!("../../shaders/batched_matmul.wgsl")
    ),
    entry: "batched",
    inputs: 3,
    outputs: 1,
    bounds_checks: true,
};

/// The uniform block of shaders/batched_matmul.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) m: u32,
    pub(super) n: u32,
    pub(super) k: u32,
    /// The epilogue's activation code (see act.wgsl).
    pub(super) act: u32,
    /// The activation's parameter (leaky ReLU's slope).
    pub(super) alpha: f32,
    pub(super) sa: u32,
    pub(super) sb: u32,
    pub(super) sc: u32,
    pub(super) sbias: u32,
    pub(super) lda: u32,
    pub(super) ldb: u32,
    pub(super) ldc: u32,
}

/// Where each trial's matrix lies in a tensor: trial `t`'s stored element `(i, j)` is
/// at `t * trial + i * row + j`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strides {
    /// Elements between consecutive trials' matrices; 0 shares one matrix.
    pub trial: usize,
    /// Elements between consecutive stored rows (at least the stored row's length).
    pub row: usize,
}

impl Strides {
    /// `[K, rows, cols]` blocks, one per trial.
    pub fn stacked(rows: usize, cols: usize) -> Strides {
        Strides {
            trial: rows * cols,
            row: cols,
        }
    }

    /// Trials side by side in one `[rows, trials * cols]` matrix.
    pub fn wide(trials: usize, cols: usize) -> Strides {
        Strides {
            trial: cols,
            row: trials * cols,
        }
    }

    /// One `[rows, cols]` matrix every trial reads.
    pub fn shared(cols: usize) -> Strides {
        Strides {
            trial: 0,
            row: cols,
        }
    }

    /// The flat index of trial `t`'s stored element `(i, j)`.
    fn at(self, t: usize, i: usize, j: usize) -> usize {
        t * self.trial + i * self.row + j
    }
}

/// One operand: a tensor and where each trial's matrix lies in it.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    /// The tensor holding every trial's matrix (any shape: only its length is used).
    pub tensor: &'a Tensor,
    /// Where trial `t`'s matrix starts and how its rows follow each other.
    pub strides: Strides,
}

/// A batched product `C_t = act(op(A_t) op(B_t) + bias_t)` for `trials` trials.
#[derive(Clone, Copy, Debug)]
pub struct Batched {
    /// The form (`trans_a`, `trans_b`) and epilogue (`act`); `trans_c` is refused.
    pub gemm: Gemm,
    /// The problem size of each trial's product.
    pub dims: Dims,
    /// How many trials: the number of products.
    pub trials: usize,
}

impl Batched {
    /// Checks that every trial's matrices lie inside their tensors; returns the
    /// (rows, cols) stored for A, B and C.
    fn check(
        &self,
        a: &Operand,
        b: &Operand,
        bias: Option<&Operand>,
        c: Strides,
        c_len: usize,
    ) -> Result<()> {
        let op = "batched_matmul";
        let Dims { m, n, k } = self.dims;
        // Trials are the grid's z dimension, at most 65535 workgroups.
        if !(1..=65535).contains(&self.trials) || m == 0 || n == 0 || k == 0 {
            return Err(Error::shape(
                op,
                format!("{} trials of {m}x{k} by {k}x{n}", self.trials),
            ));
        }
        if self.gemm.trans_c {
            return Err(Error::arg(op, "a transposed store is not batched"));
        }
        let a_dims = if self.gemm.trans_a { (k, m) } else { (m, k) };
        let b_dims = if self.gemm.trans_b { (n, k) } else { (k, n) };
        let mut want = vec![
            ("A", a.strides, a_dims, a.tensor.len()),
            ("B", b.strides, b_dims, b.tensor.len()),
            ("C", c, (m, n), c_len),
        ];
        if let Some(bias) = bias {
            want.push(("the bias", bias.strides, (1, n), bias.tensor.len()));
        }
        for (what, s, (rows, cols), len) in want {
            let last = s.at(self.trials - 1, rows - 1, cols - 1);
            if (rows > 1 && s.row < cols) || last >= len || len > u32::MAX as usize {
                return Err(Error::shape(
                    op,
                    format!(
                        "{what}: {} trials of {rows}x{cols} at strides {s:?} do not fit in \
                         {len} values",
                        self.trials
                    ),
                ));
            }
        }
        if c.trial == 0 && self.trials > 1 {
            return Err(Error::arg(op, "C's trials would overwrite each other"));
        }
        Ok(())
    }

    /// Records (or on the CPU computes) every trial's product into `c`.
    pub fn run_into(
        &self,
        a: Operand,
        b: Operand,
        bias: Option<Operand>,
        c: &mut Tensor,
        c_strides: Strides,
    ) -> Result<()> {
        self.check(&a, &b, bias.as_ref(), c_strides, c.len())?;
        let mut operands = vec![a.tensor, b.tensor, &*c];
        operands.extend(bias.map(|o| o.tensor));
        let ctx = match device_of("batched_matmul", &operands)? {
            Device::Cpu => return self.cpu(a, b, bias, c, c_strides),
            Device::Gpu(ctx) => ctx,
        };
        let Dims { m, n, k } = self.dims;
        let params = Params {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            act: self.gemm.act.code(),
            alpha: self.gemm.act.alpha(),
            sa: a.strides.trial as u32,
            sb: b.strides.trial as u32,
            sc: c_strides.trial as u32,
            sbias: bias.map_or(0, |o| o.strides.trial as u32),
            lda: a.strides.row as u32,
            ldb: b.strides.row as u32,
            ldc: c_strides.row as u32,
        };
        let flag = |v: bool| f64::from(u8::from(v));
        let constants = [
            ("TA", flag(self.gemm.trans_a)),
            ("TB", flag(self.gemm.trans_b)),
            ("BIAS", flag(bias.is_some())),
        ];
        // Without a bias, B stands in for the unused binding (both are read-only).
        let bias = bias.map_or(b.tensor, |o| o.tensor);
        let groups = [
            n.div_ceil(32) as u32,
            m.div_ceil(32) as u32,
            self.trials as u32,
        ];
        launch(
            &ctx,
            &BATCHED,
            &constants,
            &params,
            &[a.tensor, b.tensor, bias, c],
            groups,
        )
    }

    /// The CPU reference: each trial's product in f64, through the same strides.
    fn cpu(
        &self,
        a: Operand,
        b: Operand,
        bias: Option<Operand>,
        c: &mut Tensor,
        cs: Strides,
    ) -> Result<()> {
        let Dims { m, n, k } = self.dims;
        let g = &self.gemm;
        let (av, bv) = (host(a.tensor), host(b.tensor));
        let bias_v = bias.map(|o| (host(o.tensor), o.strides));
        let out = c.host_mut().ok_or(Error::DeviceMismatch {
            op: "batched_matmul",
        })?;
        for t in 0..self.trials {
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0f64;
                    for p in 0..k {
                        let x = match g.trans_a {
                            true => av[a.strides.at(t, p, i)],
                            false => av[a.strides.at(t, i, p)],
                        };
                        let y = match g.trans_b {
                            true => bv[b.strides.at(t, j, p)],
                            false => bv[b.strides.at(t, p, j)],
                        };
                        acc += f64::from(x) * f64::from(y);
                    }
                    if let Some((bias, s)) = bias_v {
                        acc += f64::from(bias[s.at(t, 0, j)]);
                    }
                    out[cs.at(t, i, j)] = g.act.forward(acc) as f32;
                }
            }
        }
        Ok(())
    }
}
