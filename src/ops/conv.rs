//! 2-D convolution over NCHW tensors with PyTorch's weight layout [out_c, in_c, kh, kw]:
//! forward, and the gradients of its input, weights and bias.

use super::bias::col_sum_gpu;
use super::matmul::{Dims, Gemm};
use super::pool::row_sums_gpu;
use super::{device_of, grid, host, launch, write_f64};
use crate::device::{Device, GpuContext, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};
use std::sync::Arc;

pub(super) const FORWARD_NAIVE: Kernel = Kernel {
    file: "conv.wgsl",
    source: concat!(
        include_str!("../../shaders/conv_common.wgsl"),
        include_str!("../../shaders/conv.wgsl")
    ),
    entry: "forward_naive",
    inputs: 3,
    outputs: 1,
    bounds_checks: false,
};
pub(super) const BACKWARD_INPUT_NAIVE: Kernel = Kernel {
    entry: "backward_input_naive",
    inputs: 2,
    ..FORWARD_NAIVE
};
pub(super) const BACKWARD_WEIGHT_NAIVE: Kernel = Kernel {
    entry: "backward_weight_naive",
    inputs: 2,
    ..FORWARD_NAIVE
};

pub(super) const FORWARD: Kernel = Kernel {
    file: "conv_direct.wgsl",
    source: concat!(
        include_str!("../../shaders/conv_common.wgsl"),
        include_str!("../../shaders/conv_direct.wgsl")
    ),
    entry: "forward",
    inputs: 3,
    outputs: 1,
    bounds_checks: false,
};
pub(super) const BACKWARD_INPUT: Kernel = Kernel {
    entry: "backward_input",
    inputs: 2,
    ..FORWARD
};
pub(super) const BACKWARD_WEIGHT: Kernel = Kernel {
    entry: "backward_weight",
    inputs: 2,
    ..FORWARD
};

pub(super) const IM2COL: Kernel = Kernel {
    file: "im2col.wgsl",
    source: concat!(
        include_str!("../../shaders/conv_common.wgsl"),
        include_str!("../../shaders/im2col.wgsl")
    ),
    entry: "im2col",
    inputs: 1,
    outputs: 1,
    bounds_checks: true,
};
pub(super) const COL2IM: Kernel = Kernel {
    entry: "col2im",
    ..IM2COL
};
pub(super) const SWAP: Kernel = Kernel {
    entry: "swap",
    ..IM2COL
};

/// The uniform block of shaders/conv_common.wgsl (all but swap), field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) n: u32,
    pub(super) c: u32,
    pub(super) h: u32,
    pub(super) w: u32,
    pub(super) oc: u32,
    pub(super) oh: u32,
    pub(super) ow: u32,
    pub(super) kh: u32,
    pub(super) kw: u32,
    pub(super) sh: u32,
    pub(super) sw: u32,
    pub(super) ph: u32,
    pub(super) pw: u32,
    pub(super) dh: u32,
    pub(super) dw: u32,
    /// Output rows (image, oy) per chunk of the direct weight gradient's reduction.
    pub(super) chunk: u32,
}

/// The uniform block of swap in shaders/im2col.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct SwapParams {
    pub(super) batch: u32,
    pub(super) rows: u32,
    pub(super) cols: u32,
    pub(super) padded: u32,
}

/// Invocations per workgroup of the direct and naive kernels, and of im2col.wgsl.
const DIRECT_WG: u32 = 64;
const IM2COL_WG: u32 = 256;
/// Channels and positions (or taps) each direct invocation computes.
const BLOCK: usize = 8;
const POSITIONS: usize = 4;

/// Which GPU kernels compute a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKernel {
    /// One output value per invocation: the baseline.
    Naive,
    /// Direct (implicit GEMM) kernels: 8 channels by 4 positions per invocation, the taps
    /// read in place.
    Direct,
    /// The taps copied out into a matrix (im2col), then the matmul kernels. The matmul's
    /// grid does not fold, so n * oh * ow is limited to 65535 times its tile height
    /// (32 or 64 rows); past that the op returns [`Error::OverLimit`].
    Im2col,
}

/// A 2-D convolution's stride, zero padding and dilation; weights and bias are operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Step between output pixels in the input (height, width).
    pub stride: (usize, usize),
    /// Zeros added on each side of the input (height, width).
    pub padding: (usize, usize),
    /// Step between the taps of the kernel (height, width); 1 is a dense kernel.
    pub dilation: (usize, usize),
    /// Force a kernel instead of the adapter's choice.
    pub kernel: Option<ConvKernel>,
}

impl Default for Conv2d {
    fn default() -> Conv2d {
        Conv2d {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            kernel: None,
        }
    }
}

/// Every size of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oc: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    conv: Conv2d,
}

impl Geom {
    /// Values per image of the tap matrix: in_c * kh * kw.
    fn taps(&self) -> usize {
        self.c * self.kh * self.kw
    }

    fn oplane(&self) -> usize {
        self.oh * self.ow
    }

    /// The uniform block of shaders/conv_common.wgsl.
    fn params(&self, chunk: usize) -> Params {
        let c = &self.conv;
        Params {
            n: self.n as u32,
            c: self.c as u32,
            h: self.h as u32,
            w: self.w as u32,
            oc: self.oc as u32,
            oh: self.oh as u32,
            ow: self.ow as u32,
            kh: self.kh as u32,
            kw: self.kw as u32,
            sh: c.stride.0 as u32,
            sw: c.stride.1 as u32,
            ph: c.padding.0 as u32,
            pw: c.padding.1 as u32,
            dh: c.dilation.0 as u32,
            dw: c.dilation.1 as u32,
            chunk: chunk as u32,
        }
    }

    /// Calls `f(x index, weight index, y index)` for every product of the convolution,
    /// skipping taps in the padding: the one loop nest behind all CPU references.
    fn products(&self, mut f: impl FnMut(usize, usize, usize)) {
        let Conv2d {
            stride: (sh, sw),
            padding: (ph, pw),
            dilation: (dh, dw),
            ..
        } = self.conv;
        let taps = self.taps();
        for img in 0..self.n {
            for oc in 0..self.oc {
                for oy in 0..self.oh {
                    for ox in 0..self.ow {
                        let yi = ((img * self.oc + oc) * self.oh + oy) * self.ow + ox;
                        for ic in 0..self.c {
                            let plane = (img * self.c + ic) * self.h;
                            for ky in 0..self.kh {
                                let Some(iy) =
                                    (oy * sh + ky * dh).checked_sub(ph).filter(|&v| v < self.h)
                                else {
                                    continue;
                                };
                                for kx in 0..self.kw {
                                    let Some(ix) =
                                        (ox * sw + kx * dw).checked_sub(pw).filter(|&v| v < self.w)
                                    else {
                                        continue;
                                    };
                                    let wi = oc * taps + (ic * self.kh + ky) * self.kw + kx;
                                    f((plane + iy) * self.w + ix, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Conv2d {
    /// Stride 1, no padding, no dilation: PyTorch's defaults and Keras's 'valid'.
    pub fn valid() -> Conv2d {
        Conv2d::default()
    }

    /// Stride 1 with the padding that keeps the output the size of the input (Keras's
    /// 'same') for an odd `kernel` (height, width); an even one would need uneven padding.
    pub fn same(kernel: (usize, usize)) -> Result<Conv2d> {
        Conv2d::same_dilated(kernel, (1, 1))
    }

    /// [`Conv2d::same`] for a kernel whose taps are `dilation` apart.
    pub fn same_dilated(kernel: (usize, usize), dilation: (usize, usize)) -> Result<Conv2d> {
        if kernel.0.is_multiple_of(2) || kernel.1.is_multiple_of(2) {
            return Err(Error::arg(
                "conv2d kernel",
                format!(
                    "'same' padding needs an odd kernel for equal padding on both sides, got {kernel:?}"
                ),
            ));
        }
        Ok(Conv2d {
            padding: (
                dilation.0 * (kernel.0 - 1) / 2,
                dilation.1 * (kernel.1 - 1) / 2,
            ),
            dilation,
            ..Conv2d::default()
        })
    }

    /// The same convolution with another stride.
    pub fn with_stride(self, stride: (usize, usize)) -> Conv2d {
        Conv2d { stride, ..self }
    }

    /// The same convolution with another padding.
    pub fn with_padding(self, padding: (usize, usize)) -> Conv2d {
        Conv2d { padding, ..self }
    }

    /// The same convolution with another dilation.
    pub fn with_dilation(self, dilation: (usize, usize)) -> Conv2d {
        Conv2d { dilation, ..self }
    }

    /// The same convolution computed by `kernel`.
    pub fn with_kernel(self, kernel: ConvKernel) -> Conv2d {
        Conv2d {
            kernel: Some(kernel),
            ..self
        }
    }

    /// The output shape [n, out_c, oh, ow] for input `x` [n, in_c, h, w] and weights `w`
    /// [out_c, in_c, kh, kw] (the weights carry the kernel size and channel counts).
    pub fn out_shape(&self, x: &[usize], w: &[usize]) -> Result<[usize; 4]> {
        let g = self.geom("conv2d", x, w)?;
        Ok([g.n, g.oc, g.oh, g.ow])
    }

    fn geom(&self, op: &str, x: &[usize], w: &[usize]) -> Result<Geom> {
        let &[n, c, h, wd] = x else {
            return Err(Error::shape(
                op,
                format!("expected an [n, c, h, w] input, got {x:?}"),
            ));
        };
        let &[oc, wc, kh, kw] = w else {
            return Err(Error::shape(
                op,
                format!("expected [out_c, in_c, kh, kw] weights, got {w:?}"),
            ));
        };
        if wc != c {
            return Err(Error::shape(
                op,
                format!("the input {x:?} has {c} channels, the weights {w:?} take {wc}"),
            ));
        }
        let (sh, sw) = self.stride;
        let (dh, dw) = self.dilation;
        if sh == 0 || sw == 0 || dh == 0 || dw == 0 {
            return Err(Error::arg(
                "conv2d",
                format!(
                    "stride {:?} and dilation {:?} must be positive",
                    self.stride, self.dilation
                ),
            ));
        }
        if kh == 0 || kw == 0 {
            return Err(Error::shape(
                op,
                format!("the weights {w:?} have an empty kernel"),
            ));
        }
        let span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1);
        let padded = (h + 2 * self.padding.0, wd + 2 * self.padding.1);
        if padded.0 < span.0 || padded.1 < span.1 {
            return Err(Error::shape(
                op,
                format!(
                    "the padded input {}x{} is smaller than the dilated kernel {}x{}",
                    padded.0, padded.1, span.0, span.1
                ),
            ));
        }
        Ok(Geom {
            n,
            c,
            h,
            w: wd,
            oc,
            kh,
            kw,
            oh: (padded.0 - span.0) / sh + 1,
            ow: (padded.1 - span.1) / sw + 1,
            conv: *self,
        })
    }

    /// Checks that `y` is the output of `x` and `w` and returns the geometry.
    fn check(&self, op: &str, x: &Tensor, w: &Tensor, y: &Tensor) -> Result<Geom> {
        let g = self.geom(op, x.shape(), w.shape())?;
        let want = [g.n, g.oc, g.oh, g.ow];
        if y.shape() != want {
            return Err(Error::shape(
                op,
                format!(
                    "input {:?} and weights {:?} give an output {want:?}, got {:?}",
                    x.shape(),
                    w.shape(),
                    y.shape()
                ),
            ));
        }
        Ok(g)
    }

    /// The kernels this convolution runs with on `ctx`: the direct ones unless forced.
    ///
    /// On lavapipe (`cargo bench --bench conv`, batch 128, forward + input gradient +
    /// weight gradient, two runs on 2 cores shared with other builds, load ~6) the direct
    /// kernels took 228-239 ms for conv1 (1->32, 3x3 'same', 28x28) against 417-538 ms by
    /// im2col + matmul and 631-641 ms naive, and 1384-1449 ms for conv2 (32->64, 14x14)
    /// against 1648-1974 ms and 9841-10565 ms. im2col pays for writing and reading back its
    /// tap matrix (9 values per input value) and two layout passes. No hardware GPU has
    /// been measured; the bench prints all three kernels for one.
    pub fn choose(&self, _ctx: &GpuContext) -> ConvKernel {
        self.kernel.unwrap_or(ConvKernel::Direct)
    }

    /// `y = conv(x, w) + bias`: x [n, in_c, h, w], w [out_c, in_c, kh, kw], bias [out_c],
    /// y [n, out_c, oh, ow] (see [`Conv2d::out_shape`]).
    pub fn forward_into(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        y: &mut Tensor,
    ) -> Result<()> {
        let name = "conv2d";
        let g = self.check(name, x, w, y)?;
        if let Some(b) = bias {
            if b.shape() != [g.oc] {
                return Err(Error::shape(
                    name,
                    format!("bias {:?} does not fit {} output channels", b.shape(), g.oc),
                ));
            }
        }
        let mut operands = vec![x, w, &*y];
        operands.extend(bias);
        match device_of(name, &operands)? {
            Device::Cpu => {
                let (xs, ws) = (host(x), host(w));
                let mut acc = vec![0f64; y.len()];
                if let Some(b) = bias.map(host) {
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = f64::from(b[(i / g.oplane()) % g.oc]);
                    }
                }
                g.products(|xi, wi, yi| acc[yi] += f64::from(xs[xi]) * f64::from(ws[wi]));
                write_f64(name, y, &acc)
            }
            Device::Gpu(ctx) => {
                let constants = [("BIAS", f64::from(u8::from(bias.is_some())))];
                // Without a bias the weights stand in for the unused binding.
                let b = bias.unwrap_or(w);
                match self.choose(&ctx) {
                    ConvKernel::Naive => launch(
                        &ctx,
                        &FORWARD_NAIVE,
                        &constants,
                        &g.params(0),
                        &[x, w, b, y],
                        grid(y.len(), DIRECT_WG),
                    ),
                    ConvKernel::Direct => {
                        // [out_c, taps] -> [taps, out_c rounded up to BLOCK].
                        let packed = pack(&ctx, w, 1, g.oc, g.taps())?;
                        launch(
                            &ctx,
                            &FORWARD,
                            &constants,
                            &g.params(0),
                            &[x, &packed, b, y],
                            blocks(g.n * g.oplane(), g.oc),
                        )
                    }
                    ConvKernel::Im2col => {
                        let cols = im2col(&ctx, &g, x)?;
                        let rows = g.n * g.oplane();
                        let mut ypix = Tensor::uninit(&x.device(), &[rows, g.oc])?;
                        let d = Dims {
                            m: rows,
                            n: g.oc,
                            k: g.taps(),
                        };
                        Gemm::nt().dispatch(&ctx, d, &cols, w, bias, &mut ypix)?;
                        swap(&ctx, &ypix, g.n, g.oplane(), g.oc, y)
                    }
                }
            }
        }
    }

    /// `y = conv(x, w) + bias` as a new tensor.
    pub fn forward(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let mut y = Tensor::uninit(&x.device(), &self.out_shape(x.shape(), w.shape())?)?;
        self.forward_into(x, w, bias, &mut y)?;
        Ok(y)
    }

    /// The input gradient: `dx` [n, in_c, h, w] from `dy` [n, out_c, oh, ow] and the
    /// weights. dx's shape says which input size is meant (with stride > 1 several give
    /// the same output size).
    pub fn backward_input_into(&self, dy: &Tensor, w: &Tensor, dx: &mut Tensor) -> Result<()> {
        let name = "conv2d_backward_input";
        let g = self.check(name, dx, w, dy)?;
        match device_of(name, &[dy, w, dx])? {
            Device::Cpu => {
                let (ds, ws) = (host(dy), host(w));
                let mut acc = vec![0f64; dx.len()];
                g.products(|xi, wi, yi| acc[xi] += f64::from(ds[yi]) * f64::from(ws[wi]));
                write_f64(name, dx, &acc)
            }
            Device::Gpu(ctx) => match self.choose(&ctx) {
                ConvKernel::Naive => launch(
                    &ctx,
                    &BACKWARD_INPUT_NAIVE,
                    &[],
                    &g.params(0),
                    &[dy, w, dx],
                    grid(dx.len(), DIRECT_WG),
                ),
                ConvKernel::Direct => {
                    // [out_c, in_c, kh * kw] -> [out_c, kh * kw, in_c rounded up to BLOCK].
                    let packed = pack(&ctx, w, g.oc, g.c, g.kh * g.kw)?;
                    launch(
                        &ctx,
                        &BACKWARD_INPUT,
                        &[],
                        &g.params(0),
                        &[dy, &packed, dx],
                        blocks(dx.len() / g.c.max(1), g.c),
                    )
                }
                ConvKernel::Im2col => {
                    let rows = g.n * g.oplane();
                    let dypix = dy_rows(&ctx, &g, dy)?;
                    let mut dcols = Tensor::uninit(&dy.device(), &[rows, g.taps()])?;
                    let d = Dims {
                        m: rows,
                        n: g.taps(),
                        k: g.oc,
                    };
                    Gemm::nn().dispatch(&ctx, d, &dypix, w, None, &mut dcols)?;
                    launch(
                        &ctx,
                        &COL2IM,
                        &[],
                        &g.params(0),
                        &[&dcols, dx],
                        grid(dx.len(), IM2COL_WG),
                    )
                }
            },
        }
    }

    /// The weight gradient: `dw` [out_c, in_c, kh, kw], summed over the batch.
    pub fn backward_weight_into(&self, x: &Tensor, dy: &Tensor, dw: &mut Tensor) -> Result<()> {
        let name = "conv2d_backward_weight";
        let g = self.check(name, x, dw, dy)?;
        match device_of(name, &[x, dy, dw])? {
            Device::Cpu => {
                let (xs, ds) = (host(x), host(dy));
                let mut acc = vec![0f64; dw.len()];
                g.products(|xi, wi, yi| acc[wi] += f64::from(ds[yi]) * f64::from(xs[xi]));
                write_f64(name, dw, &acc)
            }
            Device::Gpu(ctx) => match self.choose(&ctx) {
                ConvKernel::Naive => launch(
                    &ctx,
                    &BACKWARD_WEIGHT_NAIVE,
                    &[],
                    &g.params(0),
                    &[x, dy, dw],
                    grid(dw.len(), DIRECT_WG),
                ),
                ConvKernel::Direct => {
                    let invocations = g.taps().div_ceil(POSITIONS) * g.oc.div_ceil(BLOCK);
                    let chunk = weight_chunk(g.n * g.oh, invocations);
                    let chunks = (g.n * g.oh).div_ceil(chunk).max(1);
                    let groups = grid(invocations * chunks, DIRECT_WG);
                    let params = g.params(chunk);
                    if chunks == 1 {
                        return launch(&ctx, &BACKWARD_WEIGHT, &[], &params, &[x, dy, dw], groups);
                    }
                    let partial = Tensor::uninit(&x.device(), &[chunks, dw.len()])?;
                    launch(
                        &ctx,
                        &BACKWARD_WEIGHT,
                        &[],
                        &params,
                        &[x, dy, &partial],
                        groups,
                    )?;
                    col_sum_gpu(&ctx, &partial, chunks, dw.len(), dw)
                }
                ConvKernel::Im2col => {
                    let rows = g.n * g.oplane();
                    let dypix = dy_rows(&ctx, &g, dy)?;
                    let cols = im2col(&ctx, &g, x)?;
                    let d = Dims {
                        m: g.oc,
                        n: g.taps(),
                        k: rows,
                    };
                    if rows == 0 {
                        // The matmul would leave an empty product unwritten.
                        ctx.clear(dw.buffer().ok_or(Error::DeviceMismatch { op: name })?);
                        return Ok(());
                    }
                    Gemm::tn().dispatch(&ctx, d, &dypix, &cols, None, dw)
                }
            },
        }
    }

    /// The bias gradient: `db[oc]` = the sum of `dy` [n, out_c, oh, ow] over n, oh and ow.
    pub fn backward_bias_into(&self, dy: &Tensor, db: &mut Tensor) -> Result<()> {
        let name = "conv2d_backward_bias";
        let &[n, oc, oh, ow] = dy.shape() else {
            return Err(Error::shape(
                name,
                format!("expected an [n, c, h, w] gradient, got {:?}", dy.shape()),
            ));
        };
        if db.shape() != [oc] {
            return Err(Error::shape(
                name,
                format!(
                    "dy {:?} has {oc} channels, db is {:?}",
                    dy.shape(),
                    db.shape()
                ),
            ));
        }
        match device_of(name, &[dy, db])? {
            Device::Cpu => {
                let mut acc = vec![0f64; oc];
                for (i, v) in host(dy).iter().enumerate() {
                    acc[(i / (oh * ow)) % oc] += f64::from(*v);
                }
                write_f64(name, db, &acc)
            }
            Device::Gpu(ctx) => {
                // Sum each plane, then the [n, out_c] plane sums over the batch.
                let sums = Tensor::uninit(&dy.device(), &[n, oc])?;
                row_sums_gpu(&ctx, dy, n * oc, oh * ow, 1.0, &sums)?;
                col_sum_gpu(&ctx, &sums, n, oc, db)
            }
        }
    }
}

/// Workgroups of the direct forward and input-gradient kernels: `positions` in runs of
/// POSITIONS per invocation (folded over x and y), then `channels` in blocks of BLOCK on z.
fn blocks(positions: usize, channels: usize) -> [u32; 3] {
    let mut groups = grid(positions.div_ceil(POSITIONS), DIRECT_WG);
    groups[2] = channels.div_ceil(BLOCK) as u32;
    groups
}

/// Invocations the direct weight gradient aims for by splitting its reduction into chunks,
/// whose partial sums a second pass adds.
const WEIGHT_INVOCATIONS: usize = 8192;

/// Output rows (image, oy) per chunk of the direct weight gradient, for `rows` in all and
/// `blocks` invocations per chunk.
fn weight_chunk(rows: usize, blocks: usize) -> usize {
    let chunks = WEIGHT_INVOCATIONS
        .div_ceil(blocks.max(1))
        .clamp(1, rows.max(1));
    rows.div_ceil(chunks).max(1)
}

/// `w` viewed as `batch` matrices [rows, cols], each written transposed as [cols, rows
/// rounded up to BLOCK] with zeros past `rows`: the weight layouts of conv_direct.wgsl.
fn pack(
    ctx: &Arc<GpuContext>,
    w: &Tensor,
    batch: usize,
    rows: usize,
    cols: usize,
) -> Result<Tensor> {
    let padded = rows.div_ceil(BLOCK) * BLOCK;
    let out = Tensor::uninit(&w.device(), &[batch, cols, padded])?;
    swap_padded(ctx, w, [batch, rows, cols, padded], &out)?;
    Ok(out)
}

/// The [n * oh * ow, in_c * kh * kw] tap matrix of `x`.
fn im2col(ctx: &Arc<GpuContext>, g: &Geom, x: &Tensor) -> Result<Tensor> {
    let cols = Tensor::uninit(&x.device(), &[g.n * g.oplane(), g.taps()])?;
    launch(
        ctx,
        &IM2COL,
        &[],
        &g.params(0),
        &[x, &cols],
        grid(cols.len(), IM2COL_WG),
    )?;
    Ok(cols)
}

/// `dy` [n, out_c, oh, ow] as the matrix [n * oh * ow, out_c] the matmuls take.
fn dy_rows(ctx: &Arc<GpuContext>, g: &Geom, dy: &Tensor) -> Result<Tensor> {
    let rows = Tensor::uninit(&dy.device(), &[g.n * g.oplane(), g.oc])?;
    swap(ctx, dy, g.n, g.oc, g.oplane(), &rows)?;
    Ok(rows)
}

/// `dst[b, j, i] = src[b, i, j]` for `batch` matrices of [rows, cols].
fn swap(
    ctx: &Arc<GpuContext>,
    src: &Tensor,
    batch: usize,
    rows: usize,
    cols: usize,
    dst: &Tensor,
) -> Result<()> {
    swap_padded(ctx, src, [batch, rows, cols, rows], dst)
}

/// `dst[b, j, i] = src[b, i, j]` for `batch` matrices of [rows, cols], i running on to
/// `padded` with zeros; `dims` is [batch, rows, cols, padded].
fn swap_padded(ctx: &Arc<GpuContext>, src: &Tensor, dims: [usize; 4], dst: &Tensor) -> Result<()> {
    let [batch, rows, cols, padded] = dims;
    let params = SwapParams {
        batch: batch as u32,
        rows: rows as u32,
        cols: cols as u32,
        padded: padded as u32,
    };
    launch(
        ctx,
        &SWAP,
        &[],
        &params,
        &[src, dst],
        grid(batch * cols * padded, IM2COL_WG),
    )
}
