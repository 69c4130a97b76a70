//! 2-D max and average pooling over NCHW tensors, forward and backward, and global
//! average pooling ([n, c, h, w] -> [n, c]).

use super::{device_of, grid, host, launch, same_shape, write_f64};
use crate::device::{Device, GpuContext, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};
use std::sync::Arc;

pub(super) const MAX_FORWARD: Kernel = Kernel {
    file: "pool.wgsl",
    source: include_str!("../../shaders/pool.wgsl"),
    entry: "max_forward",
    inputs: 1,
    outputs: 2,
    bounds_checks: true,
};
/// The backward of both poolings; average pooling binds dy again in place of the argmax.
pub(super) const BACKWARD: Kernel = Kernel {
    entry: "backward",
    inputs: 2,
    outputs: 1,
    ..MAX_FORWARD
};
pub(super) const AVG_FORWARD: Kernel = Kernel {
    entry: "avg_forward",
    inputs: 1,
    outputs: 1,
    ..MAX_FORWARD
};
pub(super) const ROW_MEAN: Kernel = Kernel {
    entry: "row_mean",
    ..AVG_FORWARD
};
pub(super) const SPREAD: Kernel = Kernel {
    entry: "spread",
    ..AVG_FORWARD
};

/// The uniform block of the window kernels in shaders/pool.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    /// Planes: batch * channels.
    pub(super) planes: u32,
    pub(super) h: u32,
    pub(super) w: u32,
    pub(super) oh: u32,
    pub(super) ow: u32,
    pub(super) kh: u32,
    pub(super) kw: u32,
    pub(super) sh: u32,
    pub(super) sw: u32,
    pub(super) ph: u32,
    pub(super) pw: u32,
    /// 1 when average windows divide by kh * kw even where they cover padding.
    pub(super) include_pad: u32,
}

/// The uniform block of row_mean and spread in shaders/pool.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct RowParams {
    pub(super) rows: u32,
    pub(super) cols: u32,
    pub(super) scale: f32,
}

/// Invocations per workgroup of the pooling kernels.
const POOL_WG: u32 = 256;

/// Largest plane whose flat indices an f32 holds exactly (the argmax tensor is f32).
const MAX_PLANE: usize = 1 << 24;

/// A pooling window: size, stride and zero padding on each side, as PyTorch's pool layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2d {
    /// Window (height, width).
    pub kernel: (usize, usize),
    /// Step between windows (height, width).
    pub stride: (usize, usize),
    /// Padding on each side (height, width); at most half the window, as in PyTorch.
    pub padding: (usize, usize),
    /// Average windows divide by the whole window size, padding included (PyTorch's
    /// default), rather than by the values inside the input.
    pub count_include_pad: bool,
}

/// Dimensions of one pooling: planes (batch * channels), input and output sizes.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

impl Pool2d {
    /// A `kernel` window with stride equal to the window and no padding.
    pub fn new(kernel: (usize, usize)) -> Pool2d {
        Pool2d {
            kernel,
            stride: kernel,
            padding: (0, 0),
            count_include_pad: true,
        }
    }

    /// The same window with another stride.
    pub fn with_stride(self, stride: (usize, usize)) -> Pool2d {
        Pool2d { stride, ..self }
    }

    /// The same window with another padding.
    pub fn with_padding(self, padding: (usize, usize)) -> Pool2d {
        Pool2d { padding, ..self }
    }

    /// The same window, averaging over the values inside the input only when `include` is false.
    pub fn with_count_include_pad(self, include: bool) -> Pool2d {
        Pool2d {
            count_include_pad: include,
            ..self
        }
    }

    /// The output shape [n, c, oh, ow] for an input of shape [n, c, h, w].
    pub fn out_shape(&self, x: &[usize]) -> Result<[usize; 4]> {
        let g = self.geom("pool2d", x)?;
        Ok([g.n, g.c, g.oh, g.ow])
    }

    fn geom(&self, op: &str, x: &[usize]) -> Result<Geom> {
        let &[n, c, h, w] = x else {
            return Err(Error::shape(
                op,
                format!("expected an [n, c, h, w] input, got {x:?}"),
            ));
        };
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (ph, pw) = self.padding;
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
            return Err(Error::arg(
                "pool2d",
                format!(
                    "kernel {:?} and stride {:?} must be positive",
                    self.kernel, self.stride
                ),
            ));
        }
        if 2 * ph > kh || 2 * pw > kw {
            return Err(Error::arg(
                "pool2d padding",
                format!(
                    "padding {:?} is over half the window {:?}",
                    self.padding, self.kernel
                ),
            ));
        }
        if h + 2 * ph < kh || w + 2 * pw < kw {
            return Err(Error::shape(
                op,
                format!(
                    "the padded input {}x{} is smaller than the window {kh}x{kw}",
                    h + 2 * ph,
                    w + 2 * pw
                ),
            ));
        }
        Ok(Geom {
            n,
            c,
            h,
            w,
            oh: (h + 2 * ph - kh) / sh + 1,
            ow: (w + 2 * pw - kw) / sw + 1,
        })
    }

    /// Checks `x` and `out` against each other and returns their geometry.
    fn check(&self, op: &str, x: &Tensor, out: &Tensor) -> Result<Geom> {
        let g = self.geom(op, x.shape())?;
        if out.shape() != [g.n, g.c, g.oh, g.ow] {
            return Err(Error::shape(
                op,
                format!(
                    "input {:?} pools to {:?}, the output is {:?}",
                    x.shape(),
                    [g.n, g.c, g.oh, g.ow],
                    out.shape()
                ),
            ));
        }
        Ok(g)
    }

    fn params(&self, g: &Geom) -> Params {
        Params {
            planes: (g.n * g.c) as u32,
            h: g.h as u32,
            w: g.w as u32,
            oh: g.oh as u32,
            ow: g.ow as u32,
            kh: self.kernel.0 as u32,
            kw: self.kernel.1 as u32,
            sh: self.stride.0 as u32,
            sw: self.stride.1 as u32,
            ph: self.padding.0 as u32,
            pw: self.padding.1 as u32,
            include_pad: u32::from(self.count_include_pad),
        }
    }

    /// Calls `f(plane, oy, ox, iy, ix)` for every input value inside each output's window.
    fn windows(&self, g: &Geom, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (ph, pw) = self.padding;
        for plane in 0..g.n * g.c {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for ky in 0..kh {
                        let Some(iy) = (oy * sh + ky).checked_sub(ph).filter(|&v| v < g.h) else {
                            continue;
                        };
                        for kx in 0..kw {
                            if let Some(ix) = (ox * sw + kx).checked_sub(pw).filter(|&v| v < g.w) {
                                f(plane, oy, ox, iy, ix);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Records the backward kernel; average pooling passes dy again as `argmax`.
    fn backward_gpu(
        &self,
        ctx: &Arc<GpuContext>,
        g: &Geom,
        max: bool,
        dy: &Tensor,
        argmax: &Tensor,
        dx: &Tensor,
    ) -> Result<()> {
        launch(
            ctx,
            &BACKWARD,
            &[("MAX", f64::from(u8::from(max)))],
            &self.params(g),
            &[dy, argmax, dx],
            grid(dx.len(), POOL_WG),
        )
    }

    /// What an average window at (oy, ox) divides by.
    fn divisor(&self, g: &Geom, oy: usize, ox: usize) -> f64 {
        let (kh, kw) = self.kernel;
        if self.count_include_pad {
            return (kh * kw) as f64;
        }
        let inside = |o: usize, s: usize, p: usize, k: usize, len: usize| {
            let start = (o * s) as i64 - p as i64;
            (start + k as i64).min(len as i64) - start.max(0)
        };
        let rows = inside(oy, self.stride.0, self.padding.0, kh, g.h);
        let cols = inside(ox, self.stride.1, self.padding.1, kw, g.w);
        (rows * cols) as f64
    }

    /// Max pooling: `out` [n, c, oh, ow] takes each window's largest value (the first on
    /// ties; padding never wins) and `argmax` (same shape) its index iy * w + ix in the plane.
    pub fn max_forward_into(
        &self,
        x: &Tensor,
        out: &mut Tensor,
        argmax: &mut Tensor,
    ) -> Result<()> {
        let name = "max_pool2d";
        let g = self.check(name, x, out)?;
        same_shape(name, out, argmax)?;
        if g.h * g.w > MAX_PLANE {
            return Err(Error::arg(
                "max_pool2d input",
                format!(
                    "planes of {}x{} have indices an f32 argmax cannot hold exactly",
                    g.h, g.w
                ),
            ));
        }
        match device_of(name, &[x, out, argmax])? {
            Device::Cpu => {
                let src = host(x);
                let oplane = g.oh * g.ow;
                let mut best = vec![(f32::NAN, usize::MAX); out.len()];
                self.windows(&g, |plane, oy, ox, iy, ix| {
                    let pos = iy * g.w + ix;
                    let v = src[plane * g.h * g.w + pos];
                    let b = &mut best[plane * oplane + oy * g.ow + ox];
                    if b.1 == usize::MAX || v > b.0 {
                        *b = (v, pos);
                    }
                });
                let o = out.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
                for (o, b) in o.iter_mut().zip(&best) {
                    *o = b.0;
                }
                let a = argmax
                    .host_mut()
                    .ok_or(Error::DeviceMismatch { op: name })?;
                for (a, b) in a.iter_mut().zip(&best) {
                    *a = b.1 as f32;
                }
                Ok(())
            }
            Device::Gpu(ctx) => launch(
                &ctx,
                &MAX_FORWARD,
                &[],
                &self.params(&g),
                &[x, out, argmax],
                grid(out.len(), POOL_WG),
            ),
        }
    }

    /// Max pooling backward: `dx` [n, c, h, w] gets each `dy` value at its window's argmax.
    pub fn max_backward_into(&self, dy: &Tensor, argmax: &Tensor, dx: &mut Tensor) -> Result<()> {
        let name = "max_pool2d_backward";
        let g = self.check(name, dx, dy)?;
        same_shape(name, dy, argmax)?;
        match device_of(name, &[dy, argmax, dx])? {
            Device::Cpu => {
                let (d, a) = (host(dy), host(argmax));
                let plane = g.h * g.w;
                let oplane = g.oh * g.ow;
                let mut acc = vec![0f64; dx.len()];
                for (o, (&d, &a)) in d.iter().zip(a).enumerate() {
                    let pos = a as usize;
                    if a < 0.0 || pos >= plane || pos as f32 != a {
                        return Err(Error::arg(
                            "max_pool2d argmax",
                            format!("{a} at {o} is not an index into a {}x{} plane", g.h, g.w),
                        ));
                    }
                    acc[(o / oplane) * plane + pos] += f64::from(d);
                }
                write_f64(name, dx, &acc)
            }
            Device::Gpu(ctx) => self.backward_gpu(&ctx, &g, true, dy, argmax, dx),
        }
    }

    /// Average pooling: `out` [n, c, oh, ow] is each window's mean.
    pub fn avg_forward_into(&self, x: &Tensor, out: &mut Tensor) -> Result<()> {
        let name = "avg_pool2d";
        let g = self.check(name, x, out)?;
        match device_of(name, &[x, out])? {
            Device::Cpu => {
                let src = host(x);
                let mut acc = vec![0f64; out.len()];
                self.windows(&g, |plane, oy, ox, iy, ix| {
                    acc[(plane * g.oh + oy) * g.ow + ox] +=
                        f64::from(src[(plane * g.h + iy) * g.w + ix]);
                });
                for (i, a) in acc.iter_mut().enumerate() {
                    *a /= self.divisor(&g, (i / g.ow) % g.oh, i % g.ow);
                }
                write_f64(name, out, &acc)
            }
            Device::Gpu(ctx) => launch(
                &ctx,
                &AVG_FORWARD,
                &[],
                &self.params(&g),
                &[x, out],
                grid(out.len(), POOL_WG),
            ),
        }
    }

    /// Average pooling backward: each `dy` value spread evenly over its window in `dx`.
    pub fn avg_backward_into(&self, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        let name = "avg_pool2d_backward";
        let g = self.check(name, dx, dy)?;
        match device_of(name, &[dy, dx])? {
            Device::Cpu => {
                let d = host(dy);
                let mut acc = vec![0f64; dx.len()];
                self.windows(&g, |plane, oy, ox, iy, ix| {
                    let v = f64::from(d[(plane * g.oh + oy) * g.ow + ox]);
                    acc[(plane * g.h + iy) * g.w + ix] += v / self.divisor(&g, oy, ox);
                });
                write_f64(name, dx, &acc)
            }
            Device::Gpu(ctx) => self.backward_gpu(&ctx, &g, false, dy, dy, dx),
        }
    }
}

/// Max pooling as new tensors: (out, argmax).
pub fn max_pool2d(x: &Tensor, pool: &Pool2d) -> Result<(Tensor, Tensor)> {
    let shape = pool.out_shape(x.shape())?;
    let mut out = Tensor::uninit(&x.device(), &shape)?;
    let mut argmax = Tensor::uninit(&x.device(), &shape)?;
    pool.max_forward_into(x, &mut out, &mut argmax)?;
    Ok((out, argmax))
}

/// Average pooling as a new tensor.
pub fn avg_pool2d(x: &Tensor, pool: &Pool2d) -> Result<Tensor> {
    let mut out = Tensor::uninit(&x.device(), &pool.out_shape(x.shape())?)?;
    pool.avg_forward_into(x, &mut out)?;
    Ok(out)
}

/// (batch, channels, pixels per plane) of a [n, c, h, w] tensor.
fn planes(op: &str, x: &Tensor) -> Result<(usize, usize, usize)> {
    match x.shape() {
        &[n, c, h, w] => Ok((n, c, h * w)),
        s => Err(Error::shape(
            op,
            format!("expected an [n, c, h, w] tensor, got {s:?}"),
        )),
    }
}

/// Checks that `pooled` is the [n, c] of `x` [n, c, h, w]; returns (rows n * c, pixels h * w).
fn global_dims(op: &str, x: &Tensor, pooled: &Tensor) -> Result<(usize, usize)> {
    let (n, c, hw) = planes(op, x)?;
    if pooled.shape() != [n, c] {
        return Err(Error::shape(
            op,
            format!(
                "{:?} pools to [{n}, {c}], the pooled tensor is {:?}",
                x.shape(),
                pooled.shape()
            ),
        ));
    }
    Ok((n * c, hw))
}

/// Global average pooling: `out[n, c]` is the mean of plane (n, c) of `x` [n, c, h, w].
pub fn global_avg_pool_into(x: &Tensor, out: &mut Tensor) -> Result<()> {
    let name = "global_avg_pool";
    let (rows, cols) = global_dims(name, x, out)?;
    match device_of(name, &[x, out])? {
        Device::Cpu => {
            let acc: Vec<f64> = host(x)
                .chunks_exact(cols.max(1))
                .map(|r| r.iter().map(|&v| f64::from(v)).sum::<f64>() / cols as f64)
                .collect();
            // Empty planes have no mean; PyTorch gives NaN, so does 0/0 here.
            let acc = if cols == 0 { vec![f64::NAN; rows] } else { acc };
            write_f64(name, out, &acc)
        }
        Device::Gpu(ctx) => row_sums_gpu(&ctx, x, rows, cols, 1.0 / cols as f32, out),
    }
}

/// Global average pooling as a new [n, c] tensor.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (n, c, _) = planes("global_avg_pool", x)?;
    let mut out = Tensor::uninit(&x.device(), &[n, c])?;
    global_avg_pool_into(x, &mut out)?;
    Ok(out)
}

/// Global average pooling backward: `dx[n, c, h, w] = dy[n, c] / (h * w)`.
pub fn global_avg_pool_backward_into(dy: &Tensor, dx: &mut Tensor) -> Result<()> {
    let name = "global_avg_pool_backward";
    let (rows, cols) = global_dims(name, dx, dy)?;
    match device_of(name, &[dy, dx])? {
        Device::Cpu => {
            let d = host(dy);
            let o = dx.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
            for (i, o) in o.iter_mut().enumerate() {
                *o = (f64::from(d[i / cols]) / cols as f64) as f32;
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let params = RowParams {
                rows: rows as u32,
                cols: cols as u32,
                scale: 1.0 / cols as f32,
            };
            launch(
                &ctx,
                &SPREAD,
                &[],
                &params,
                &[dy, dx],
                grid(rows * cols, POOL_WG),
            )
        }
    }
}

/// `out[r] = scale * sum of x[r * cols + j] over j < cols` on the GPU, one row per
/// invocation, for ops that have checked that `x` holds rows * cols values and `out` rows.
pub(crate) fn row_sums_gpu(
    ctx: &Arc<GpuContext>,
    x: &Tensor,
    rows: usize,
    cols: usize,
    scale: f32,
    out: &Tensor,
) -> Result<()> {
    let params = RowParams {
        rows: rows as u32,
        cols: cols as u32,
        scale,
    };
    launch(ctx, &ROW_MEAN, &[], &params, &[x, out], grid(rows, POOL_WG))
}
