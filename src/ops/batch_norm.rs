//! Batch normalisation over the channels of [n, c] (per feature, as BatchNorm1d) or
//! [n, c, h, w] (per channel, as BatchNorm2d): training forward with batch statistics and
//! running averages, inference forward with the running statistics, and backward.

use super::{check_eps, check_vectors, device_of, grid, host, launch, same_shape, write_f64};
use crate::device::{Device, GpuContext, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};
use std::sync::Arc;

pub(super) const ROW_MOMENTS: Kernel = Kernel {
    file: "batch_norm.wgsl",
    source: concat!(
        include_str!("../../shaders/moments.wgsl"),
        include_str!("../../shaders/batch_norm.wgsl")
    ),
    entry: "row_moments",
    inputs: 1,
    outputs: 2,
    bounds_checks: true,
};
pub(super) const CHANNEL_STATS: Kernel = Kernel {
    entry: "channel_stats",
    inputs: 2,
    outputs: 4,
    ..ROW_MOMENTS
};
pub(super) const NORMALIZE: Kernel = Kernel {
    entry: "normalize",
    inputs: 5,
    outputs: 1,
    ..ROW_MOMENTS
};
pub(super) const ROW_GRADS: Kernel = Kernel {
    entry: "row_grads",
    inputs: 4,
    outputs: 2,
    ..ROW_MOMENTS
};
pub(super) const CHANNEL_GRADS: Kernel = Kernel {
    entry: "channel_grads",
    ..ROW_GRADS
};
pub(super) const INPUT_GRAD: Kernel = Kernel {
    entry: "input_grad",
    inputs: 7,
    outputs: 1,
    ..ROW_MOMENTS
};

/// The uniform block of shaders/batch_norm.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) n: u32,
    pub(super) c: u32,
    pub(super) hw: u32,
    pub(super) eps: f32,
    pub(super) momentum: f32,
}

const NORM_WG: u32 = 256;

/// Per-row or per-channel statistics a normalisation's forward saves for its backward.
pub struct NormStats {
    /// The mean.
    pub mean: Tensor,
    /// 1 / sqrt(variance + eps), with the biased variance.
    pub invstd: Tensor,
}

impl NormStats {
    /// Zeroed statistics for `len` channels (or rows).
    pub fn new(device: &Device, len: usize) -> Result<NormStats> {
        Ok(NormStats {
            mean: Tensor::zeros(device, &[len])?,
            invstd: Tensor::zeros(device, &[len])?,
        })
    }
}

/// Running averages of the batch statistics, for inference.
pub struct RunningStats {
    /// Running mean, starting at 0.
    pub mean: Tensor,
    /// Running unbiased variance, starting at 1.
    pub var: Tensor,
}

impl RunningStats {
    /// PyTorch's initial running statistics (mean 0, variance 1) for `channels`.
    pub fn new(device: &Device, channels: usize) -> Result<RunningStats> {
        Ok(RunningStats {
            mean: Tensor::zeros(device, &[channels])?,
            var: Tensor::full(device, &[channels], 1.0)?,
        })
    }
}

/// Batch normalisation's constants: PyTorch's defaults are eps 1e-5 and momentum 0.1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    /// Added to the variance before the square root.
    pub eps: f32,
    /// Weight of the batch in the running averages: running = (1 - m) * running + m * batch.
    pub momentum: f32,
}

impl Default for BatchNorm {
    fn default() -> BatchNorm {
        BatchNorm {
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

/// (n, c, hw) of x [n, c] or [n, c, h, w].
fn layout(op: &str, x: &Tensor) -> Result<(usize, usize, usize)> {
    match *x.shape() {
        [n, c] => Ok((n, c, 1)),
        [n, c, h, w] => Ok((n, c, h * w)),
        ref s => Err(Error::shape(
            op,
            format!("expected [n, c] or [n, c, h, w], got {s:?}"),
        )),
    }
}

/// Calls `f(channel, index)` for every element of x [n, c, hw].
fn each(n: usize, c: usize, hw: usize, mut f: impl FnMut(usize, usize)) {
    for i in 0..n * c * hw {
        f((i / hw) % c, i);
    }
}

impl BatchNorm {
    fn check_constants(&self) -> Result<()> {
        check_eps("batch_norm", self.eps)?;
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::arg(
                "batch_norm momentum",
                format!("{} is not in [0, 1]", self.momentum),
            ));
        }
        Ok(())
    }

    /// Training forward: normalises `x` with its batch statistics per channel (biased
    /// variance), `y = gamma * xhat + beta`, saves mean and invstd in `saved`, and moves
    /// `running` towards the batch (unbiased variance), all as PyTorch's BatchNorm in
    /// training mode. Needs more than one value per channel.
    pub fn forward_train_into(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running: &mut RunningStats,
        saved: &mut NormStats,
        y: &mut Tensor,
    ) -> Result<()> {
        let name = "batch_norm";
        self.check_constants()?;
        let (n, c, hw) = layout(name, x)?;
        same_shape(name, x, y)?;
        check_vectors(
            name,
            &[
                ("gamma", gamma, c),
                ("beta", beta, c),
                ("running mean", &running.mean, c),
                ("running var", &running.var, c),
                ("saved mean", &saved.mean, c),
                ("saved invstd", &saved.invstd, c),
            ],
        )?;
        let count = n * hw;
        if count < 2 {
            return Err(Error::arg(
                "batch_norm input",
                format!(
                    "{:?} has {count} value per channel; training needs more than one",
                    x.shape()
                ),
            ));
        }
        let all = [
            x,
            gamma,
            beta,
            &running.mean,
            &running.var,
            &saved.mean,
            &saved.invstd,
            &*y,
        ];
        match device_of(name, &all)? {
            Device::Cpu => self.train_cpu((n, c, hw), x, [gamma, beta], running, saved, y),
            Device::Gpu(ctx) => {
                self.train_gpu(&ctx, (n, c, hw), x, [gamma, beta], running, saved, y)
            }
        }
    }

    /// The CPU reference of [`BatchNorm::forward_train_into`], in f64.
    fn train_cpu(
        &self,
        (n, c, hw): (usize, usize, usize),
        x: &Tensor,
        [gamma, beta]: [&Tensor; 2],
        running: &mut RunningStats,
        saved: &mut NormStats,
        y: &mut Tensor,
    ) -> Result<()> {
        let name = "batch_norm";
        let count = n * hw;
        let xs = host(x);
        let mut sum = vec![0f64; c];
        each(n, c, hw, |ch, i| sum[ch] += f64::from(xs[i]));
        let mean: Vec<f64> = sum.iter().map(|s| s / count as f64).collect();
        let mut m2 = vec![0f64; c];
        each(n, c, hw, |ch, i| {
            m2[ch] += (f64::from(xs[i]) - mean[ch]).powi(2)
        });
        let var: Vec<f64> = m2.iter().map(|s| s / count as f64).collect();
        let invstd: Vec<f64> = var
            .iter()
            .map(|v| 1.0 / (v + f64::from(self.eps)).sqrt())
            .collect();
        let (g, b) = (host(gamma), host(beta));
        let out = y.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
        each(n, c, hw, |ch, i| {
            let xhat = (f64::from(xs[i]) - mean[ch]) * invstd[ch];
            out[i] = (f64::from(g[ch]) * xhat + f64::from(b[ch])) as f32;
        });
        let m = f64::from(self.momentum);
        let unbiased = count as f64 / (count - 1) as f64;
        let update = |t: &mut Tensor, batch: &[f64], scale: f64| -> Result<()> {
            let r = t.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
            for (r, b) in r.iter_mut().zip(batch) {
                *r = ((1.0 - m) * f64::from(*r) + m * b * scale) as f32;
            }
            Ok(())
        };
        update(&mut running.mean, &mean, 1.0)?;
        update(&mut running.var, &var, unbiased)?;
        write_f64(name, &mut saved.mean, &mean)?;
        write_f64(name, &mut saved.invstd, &invstd)
    }

    /// [`BatchNorm::forward_train_into`] on the GPU: statistics per channel (through
    /// per-row moments when a channel has a plane), then the normalisation.
    #[allow(clippy::too_many_arguments)]
    fn train_gpu(
        &self,
        ctx: &Arc<GpuContext>,
        (n, c, hw): (usize, usize, usize),
        x: &Tensor,
        [gamma, beta]: [&Tensor; 2],
        running: &mut RunningStats,
        saved: &mut NormStats,
        y: &mut Tensor,
    ) -> Result<()> {
        let params = self.params(n, c, hw);
        let hw1 = [("HW1", f64::from(u8::from(hw == 1)))];
        let stats = |src: &Tensor, m2: &Tensor| {
            let bound = [
                src,
                m2,
                &saved.mean,
                &saved.invstd,
                &running.mean,
                &running.var,
            ];
            launch(ctx, &CHANNEL_STATS, &hw1, &params, &bound, grid(c, NORM_WG))
        };
        if hw == 1 {
            stats(x, x)?;
        } else {
            let rows = Tensor::uninit(&x.device(), &[n, c])?;
            let m2 = Tensor::uninit(&x.device(), &[n, c])?;
            let bound = [x, &rows, &m2];
            launch(
                ctx,
                &ROW_MOMENTS,
                &[],
                &params,
                &bound,
                grid(n * c, NORM_WG),
            )?;
            stats(&rows, &m2)?;
        }
        let bound = [x, &saved.mean, &saved.invstd, gamma, beta, y];
        launch(
            ctx,
            &NORMALIZE,
            &[],
            &params,
            &bound,
            grid(x.len(), NORM_WG),
        )
    }

    /// Inference forward: `y = gamma * (x - running mean) / sqrt(running var + eps) + beta`.
    pub fn forward_eval_into(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running: &RunningStats,
        y: &mut Tensor,
    ) -> Result<()> {
        let name = "batch_norm_eval";
        self.check_constants()?;
        let (n, c, hw) = layout(name, x)?;
        same_shape(name, x, y)?;
        check_vectors(
            name,
            &[
                ("gamma", gamma, c),
                ("beta", beta, c),
                ("running mean", &running.mean, c),
                ("running var", &running.var, c),
            ],
        )?;
        let all = [x, gamma, beta, &running.mean, &running.var, &*y];
        match device_of(name, &all)? {
            Device::Cpu => {
                let (xs, g, b) = (host(x), host(gamma), host(beta));
                let (rm, rv) = (host(&running.mean), host(&running.var));
                let out = y.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
                each(n, c, hw, |ch, i| {
                    let invstd = 1.0 / (f64::from(rv[ch]) + f64::from(self.eps)).sqrt();
                    let xhat = (f64::from(xs[i]) - f64::from(rm[ch])) * invstd;
                    out[i] = (f64::from(g[ch]) * xhat + f64::from(b[ch])) as f32;
                });
                Ok(())
            }
            Device::Gpu(ctx) => {
                let bound = [x, &running.mean, &running.var, gamma, beta, y];
                launch(
                    &ctx,
                    &NORMALIZE,
                    &[("EVAL", 1.0)],
                    &self.params(n, c, hw),
                    &bound,
                    grid(x.len(), NORM_WG),
                )
            }
        }
    }

    /// Backward of the training forward: `dx`, and `dgamma`, `dbeta` [c], from the input
    /// `x`, the output gradient `dy` and the statistics the forward saved.
    pub fn backward_into(
        x: &Tensor,
        dy: &Tensor,
        gamma: &Tensor,
        saved: &NormStats,
        dx: &mut Tensor,
        dgamma: &mut Tensor,
        dbeta: &mut Tensor,
    ) -> Result<()> {
        let name = "batch_norm_backward";
        let (n, c, hw) = layout(name, x)?;
        same_shape(name, x, dy)?;
        same_shape(name, x, dx)?;
        check_vectors(
            name,
            &[
                ("gamma", gamma, c),
                ("saved mean", &saved.mean, c),
                ("saved invstd", &saved.invstd, c),
                ("dgamma", dgamma, c),
                ("dbeta", dbeta, c),
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
                let xhat = |ch: usize, i: usize| {
                    (f64::from(xs[i]) - f64::from(mean[ch])) * f64::from(invstd[ch])
                };
                let (mut sd, mut sdx) = (vec![0f64; c], vec![0f64; c]);
                each(n, c, hw, |ch, i| {
                    sd[ch] += f64::from(ds[i]);
                    sdx[ch] += f64::from(ds[i]) * xhat(ch, i);
                });
                let m = (n * hw) as f64;
                let out = dx.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
                each(n, c, hw, |ch, i| {
                    let k = f64::from(g[ch]) * f64::from(invstd[ch]);
                    let v = f64::from(ds[i]) - sd[ch] / m - xhat(ch, i) * sdx[ch] / m;
                    out[i] = (k * v) as f32;
                });
                write_f64(name, dgamma, &sdx)?;
                write_f64(name, dbeta, &sd)
            }
            Device::Gpu(ctx) => {
                // The backward kernels read neither eps nor momentum.
                let params = BatchNorm::default().params(n, c, hw);
                let (mean, invstd) = (&saved.mean, &saved.invstd);
                let hw1 = [("HW1", f64::from(u8::from(hw == 1)))];
                let groups = grid(c, NORM_WG);
                if hw == 1 {
                    let bound = [x, dy, mean, invstd, &*dgamma, &*dbeta];
                    launch(&ctx, &CHANNEL_GRADS, &hw1, &params, &bound, groups)?;
                } else {
                    let sd = Tensor::uninit(&x.device(), &[n, c])?;
                    let sdx = Tensor::uninit(&x.device(), &[n, c])?;
                    let bound = [x, dy, mean, invstd, &sd, &sdx];
                    launch(&ctx, &ROW_GRADS, &[], &params, &bound, grid(n * c, NORM_WG))?;
                    let bound = [&sd, &sdx, mean, invstd, &*dgamma, &*dbeta];
                    launch(&ctx, &CHANNEL_GRADS, &hw1, &params, &bound, groups)?;
                }
                let bound = [x, dy, mean, invstd, gamma, &*dgamma, &*dbeta, &*dx];
                launch(
                    &ctx,
                    &INPUT_GRAD,
                    &[],
                    &params,
                    &bound,
                    grid(x.len(), NORM_WG),
                )
            }
        }
    }

    fn params(&self, n: usize, c: usize, hw: usize) -> Params {
        Params {
            n: n as u32,
            c: c as u32,
            hw: hw as u32,
            eps: self.eps,
            momentum: self.momentum,
        }
    }
}
