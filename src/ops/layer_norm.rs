//! Layer normalisation over the last dimension, with gamma and beta of that size:
//! forward (saving each row's mean and invstd) and backward.

use super::batch_norm::NormStats;
use super::bias::{chunk_rows, col_sum_gpu};
use super::{check_eps, check_vectors, device_of, grid, host, launch, same_shape, write_f64};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const FORWARD: Kernel = Kernel {
    file: "layer_norm.wgsl",
    source: concat!(
        include_str!("../../shaders/moments.wgsl"),
        include_str!("../../shaders/layer_norm.wgsl")
    ),
    entry: "forward",
    inputs: 3,
    outputs: 3,
    bounds_checks: true,
};
pub(super) const INPUT_GRAD: Kernel = Kernel {
    entry: "input_grad",
    inputs: 5,
    outputs: 1,
    ..FORWARD
};
pub(super) const GAMMA_GRAD: Kernel = Kernel {
    entry: "gamma_grad",
    inputs: 4,
    outputs: 1,
    ..FORWARD
};

/// The uniform block of shaders/layer_norm.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) rows: u32,
    pub(super) d: u32,
    pub(super) eps: f32,
    /// Rows each gamma_grad invocation adds up.
    pub(super) chunk: u32,
}

const NORM_WG: u32 = 256;

/// Layer normalisation's constant: PyTorch's default eps is 1e-5.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNorm {
    /// Added to each row's variance before the square root.
    pub eps: f32,
}

impl Default for LayerNorm {
    fn default() -> LayerNorm {
        LayerNorm { eps: 1e-5 }
    }
}

/// (rows, d) of x, with d its last dimension.
fn rows_of(op: &str, x: &Tensor) -> Result<(usize, usize)> {
    match x.shape().last() {
        Some(&d) if d > 0 => Ok((x.len() / d, d)),
        _ => Err(Error::shape(
            op,
            format!(
                "expected a tensor with a non-empty last dimension, got {:?}",
                x.shape()
            ),
        )),
    }
}

impl LayerNorm {
    /// `y = gamma * (x - mean) / sqrt(var + eps) + beta` over the last dimension of `x`
    /// (biased variance, as PyTorch's LayerNorm), saving each row's mean and invstd.
    pub fn forward_into(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        saved: &mut NormStats,
        y: &mut Tensor,
    ) -> Result<()> {
        let name = "layer_norm";
        check_eps(name, self.eps)?;
        let (rows, d) = rows_of(name, x)?;
        same_shape(name, x, y)?;
        check_vectors(
            name,
            &[
                ("gamma", gamma, d),
                ("beta", beta, d),
                ("saved mean", &saved.mean, rows),
                ("saved invstd", &saved.invstd, rows),
            ],
        )?;
        let all = [x, gamma, beta, &saved.mean, &saved.invstd, &*y];
        match device_of(name, &all)? {
            Device::Cpu => {
                let (xs, g, b) = (host(x), host(gamma), host(beta));
                let out = y.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
                let (mut mean, mut invstd) = (vec![0f64; rows], vec![0f64; rows]);
                for r in 0..rows {
                    let row: Vec<f64> = xs[r * d..(r + 1) * d].iter().map(|&v| v.into()).collect();
                    let m = row.iter().sum::<f64>() / d as f64;
                    let var = row.iter().map(|v| (v - m).powi(2)).sum::<f64>() / d as f64;
                    let s = 1.0 / (var + f64::from(self.eps)).sqrt();
                    for (j, v) in row.iter().enumerate() {
                        let z = f64::from(g[j]) * (v - m) * s + f64::from(b[j]);
                        out[r * d + j] = z as f32;
                    }
                    (mean[r], invstd[r]) = (m, s);
                }
                write_f64(name, &mut saved.mean, &mean)?;
                write_f64(name, &mut saved.invstd, &invstd)
            }
            Device::Gpu(ctx) => {
                let params = Params {
                    rows: rows as u32,
                    d: d as u32,
                    eps: self.eps,
                    chunk: 0,
                };
                let bound = [x, gamma, beta, &*y, &saved.mean, &saved.invstd];
                launch(&ctx, &FORWARD, &[], &params, &bound, grid(rows, NORM_WG))
            }
        }
    }

    /// Backward of [`LayerNorm::forward_into`]: `dx` like x, `dgamma` and `dbeta` [d],
    /// from the input, the output gradient and the statistics the forward saved.
    pub fn backward_into(
        x: &Tensor,
        dy: &Tensor,
        gamma: &Tensor,
        saved: &NormStats,
        dx: &mut Tensor,
        dgamma: &mut Tensor,
        dbeta: &mut Tensor,
    ) -> Result<()> {
        let name = "layer_norm_backward";
        let (rows, d) = rows_of(name, x)?;
        same_shape(name, x, dy)?;
        same_shape(name, x, dx)?;
        check_vectors(
            name,
            &[
                ("gamma", gamma, d),
                ("saved mean", &saved.mean, rows),
                ("saved invstd", &saved.invstd, rows),
                ("dgamma", dgamma, d),
                ("dbeta", dbeta, d),
            ],
        )?;
        let all = [
            x,
            dy,
            gamma,
            &saved.mean,
            &saved.invstd,
            &*dx,
            dgamma,
            dbeta,
        ];
        match device_of(name, &all)? {
            Device::Cpu => {
                let (xs, ds, g) = (host(x), host(dy), host(gamma));
                let (mean, invstd) = (host(&saved.mean), host(&saved.invstd));
                let out = dx.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
                let (mut sg, mut sb) = (vec![0f64; d], vec![0f64; d]);
                for r in 0..rows {
                    let (m, s) = (f64::from(mean[r]), f64::from(invstd[r]));
                    let xhat: Vec<f64> =
                        (0..d).map(|j| (f64::from(xs[r * d + j]) - m) * s).collect();
                    let dyr = |j: usize| f64::from(ds[r * d + j]);
                    let gy: Vec<f64> = (0..d).map(|j| dyr(j) * f64::from(g[j])).collect();
                    let mean_g = gy.iter().sum::<f64>() / d as f64;
                    let mean_gx = gy.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / d as f64;
                    for j in 0..d {
                        out[r * d + j] = (s * (gy[j] - mean_g - xhat[j] * mean_gx)) as f32;
                        sg[j] += dyr(j) * xhat[j];
                        sb[j] += dyr(j);
                    }
                }
                write_f64(name, dgamma, &sg)?;
                write_f64(name, dbeta, &sb)
            }
            Device::Gpu(ctx) => {
                let (mean, invstd) = (&saved.mean, &saved.invstd);
                let chunk = chunk_rows(rows);
                let chunks = rows.div_ceil(chunk).max(1);
                let params = Params {
                    rows: rows as u32,
                    d: d as u32,
                    eps: 0.0,
                    chunk: chunk as u32,
                };
                let bound = [x, dy, gamma, mean, invstd, &*dx];
                launch(&ctx, &INPUT_GRAD, &[], &params, &bound, grid(rows, NORM_WG))?;
                let groups = grid(chunks * d, NORM_WG);
                if chunks == 1 {
                    let bound = [x, dy, mean, invstd, &*dgamma];
                    launch(&ctx, &GAMMA_GRAD, &[], &params, &bound, groups)?;
                } else {
                    let partial = Tensor::uninit(&x.device(), &[chunks, d])?;
                    let bound = [x, dy, mean, invstd, &partial];
                    launch(&ctx, &GAMMA_GRAD, &[], &params, &bound, groups)?;
                    col_sum_gpu(&ctx, &partial, chunks, d, dgamma)?;
                }
                col_sum_gpu(&ctx, dy, rows, d, dbeta)
            }
        }
    }
}
