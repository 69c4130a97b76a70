//! Activations forward and backward (relu, leaky relu, sigmoid, tanh, gelu) and row-wise softmax.

use super::{device_of, grid, host, launch, same_shape, WG};
use crate::device::{Device, GpuContext, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

/// The shared activation functions come first so this file and the matmul epilogue agree.
const SOURCE: &str = concat!(
    include_str!("../../shaders/act.wgsl"),
    include_str!("../../shaders/activation.wgsl")
);
pub(super) const FORWARD: Kernel = Kernel {
    file: "activation.wgsl",
    source: SOURCE,
    entry: "forward",
    inputs: 1,
    outputs: 1,
    bounds_checks: true,
};
pub(super) const BACKWARD: Kernel = Kernel {
    entry: "backward",
    inputs: 2,
    ..FORWARD
};
pub(super) const BACKWARD_FROM_OUTPUT: Kernel = Kernel {
    entry: "backward_from_output",
    ..BACKWARD
};
pub(super) const SOFTMAX_ROWS: Kernel = Kernel {
    entry: "softmax_rows",
    ..FORWARD
};
pub(super) const SOFTMAX_GROUPS: Kernel = Kernel {
    entry: "softmax_groups",
    ..FORWARD
};
pub(super) const SOFTMAX_BACKWARD_ROWS: Kernel = Kernel {
    entry: "softmax_backward_rows",
    ..BACKWARD
};
pub(super) const SOFTMAX_BACKWARD_GROUPS: Kernel = Kernel {
    entry: "softmax_backward_groups",
    ..BACKWARD
};

/// The uniform block of shaders/activation.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    /// Elements for the pointwise kernels, rows for softmax.
    pub(super) n: u32,
    pub(super) cols: u32,
    /// The activation's code (see act.wgsl); unused by softmax.
    pub(super) code: u32,
    /// The activation's parameter (leaky ReLU's slope).
    pub(super) alpha: f32,
}

impl Params {
    /// The pointwise kernels' block: `act` over `n` elements.
    fn pointwise(n: usize, act: Activation) -> Params {
        Params {
            n: n as u32,
            cols: 0,
            code: act.code(),
            alpha: act.alpha(),
        }
    }
}

/// A pointwise activation, usable alone or fused into a matmul epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Activation {
    /// f(x) = x
    #[default]
    Identity,
    /// max(x, 0)
    Relu,
    /// x for x > 0, slope * x otherwise
    LeakyRelu(f32),
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// tanh(x)
    Tanh,
    /// x * Phi(x), the exact (erf) form as PyTorch's default
    Gelu,
}

impl Activation {
    /// The code the shaders switch on (see shaders/act.wgsl).
    pub(crate) fn code(self) -> u32 {
        match self {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::LeakyRelu(_) => 2,
            Activation::Sigmoid => 3,
            Activation::Tanh => 4,
            Activation::Gelu => 5,
        }
    }

    /// The activation's parameter (leaky slope), 0 for the others.
    pub(crate) fn alpha(self) -> f32 {
        match self {
            Activation::LeakyRelu(a) => a,
            _ => 0.0,
        }
    }

    /// CPU reference: f(x), in f64.
    pub fn forward(self, x: f64) -> f64 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::LeakyRelu(a) => {
                if x > 0.0 {
                    x
                } else {
                    a as f64 * x
                }
            }
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Tanh => x.tanh(),
            Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        }
    }

    /// True when f'(z) follows from y = f(z) alone: all but GELU and leaky ReLU with a
    /// negative slope (whose output is positive on both sides of zero).
    pub fn derivative_from_output(self) -> bool {
        match self {
            Activation::Gelu => false,
            Activation::LeakyRelu(a) => a >= 0.0,
            _ => true,
        }
    }

    /// CPU reference: f'(z) from the output y = f(z), in f64.
    pub fn derivative_at_output(self, y: f64) -> f64 {
        match self {
            Activation::Identity => 1.0,
            // y > 0 exactly when z > 0, for a slope of at least 0.
            Activation::Relu => self.derivative(y),
            Activation::LeakyRelu(a) if a >= 0.0 => self.derivative(y),
            Activation::LeakyRelu(_) => f64::NAN,
            Activation::Sigmoid => y * (1.0 - y),
            Activation::Tanh => 1.0 - y * y,
            Activation::Gelu => f64::NAN,
        }
    }

    /// CPU reference: f'(x) at the pre-activation x, in f64.
    pub fn derivative(self, x: f64) -> f64 {
        match self {
            Activation::Identity => 1.0,
            Activation::Relu => f64::from(u8::from(x > 0.0)),
            Activation::LeakyRelu(a) => {
                if x > 0.0 {
                    1.0
                } else {
                    a as f64
                }
            }
            Activation::Sigmoid => {
                let s = self.forward(x);
                s * (1.0 - s)
            }
            Activation::Tanh => 1.0 - x.tanh().powi(2),
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                cdf + x * pdf
            }
        }
    }
}

/// erf(x), accurate to about 1e-15 (series for small |x|, continued fraction beyond).
pub fn erf(x: f64) -> f64 {
    if x.abs() < 2.5 {
        // Maclaurin series: erf x = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1)).
        let mut term = x;
        let mut sum = x;
        let x2 = x * x;
        for n in 1..80 {
            term *= -x2 / n as f64;
            sum += term / (2 * n + 1) as f64;
            if term.abs() < 1e-17 {
                break;
            }
        }
        return sum * 2.0 / std::f64::consts::PI.sqrt();
    }
    // Continued fraction for erfc, evaluated bottom-up.
    let a = x.abs();
    let mut f = 0.0;
    for k in (1..60).rev() {
        f = (k as f64 / 2.0) / (a + f);
    }
    let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
    (1.0 - erfc).copysign(x)
}

/// How the row-wise kernels (softmax, its backward, argmax_rows) map rows onto the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RowSplit {
    /// One invocation per row on software adapters and for rows of at most 32 columns,
    /// one workgroup per row otherwise.
    #[default]
    Auto,
    /// One invocation per row.
    Invocation,
    /// One workgroup per row with a tree reduction.
    Workgroup,
}

impl RowSplit {
    /// Whether rows of `cols` columns get a workgroup each on this device.
    ///
    /// On lavapipe one invocation per row was faster at every shape measured, as its
    /// barriers are costly (`cargo bench --bench kernels softmax` measures both). On hardware a narrow row leaves a workgroup idle while
    /// a wide one read by one invocation defeats coalescing.
    pub(crate) fn per_workgroup(self, ctx: &GpuContext, cols: usize) -> bool {
        match self {
            RowSplit::Auto => !ctx.is_software() && cols > 32,
            RowSplit::Invocation => false,
            RowSplit::Workgroup => true,
        }
    }
}

/// `out = act(x)`, elementwise; `x` and `out` share one shape.
pub fn activation_into(act: Activation, x: &Tensor, out: &mut Tensor) -> Result<()> {
    let name = "activation";
    same_shape(name, x, out)?;
    match device_of(name, &[x, out])? {
        Device::Cpu => {
            let src = host(x);
            let dst = out.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
            for (o, v) in dst.iter_mut().zip(src) {
                *o = act.forward(f64::from(*v)) as f32;
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let n = x.len();
            let params = Params::pointwise(n, act);
            launch(&ctx, &FORWARD, &[], &params, &[x, out], grid(n, WG))
        }
    }
}

/// `act(x)` as a new tensor.
pub fn activation(act: Activation, x: &Tensor) -> Result<Tensor> {
    let mut out = Tensor::uninit(&x.device(), x.shape())?;
    activation_into(act, x, &mut out)?;
    Ok(out)
}

/// `dx = dy * act'(x)` where `x` is the pre-activation input of the forward pass.
pub fn activation_backward_into(
    act: Activation,
    x: &Tensor,
    dy: &Tensor,
    dx: &mut Tensor,
) -> Result<()> {
    backward_impl(act, x, dy, dx, false)
}

/// `dx = dy * act'(z)` computed from the forward output `y = act(z)`, for activations
/// where [`Activation::derivative_from_output`] holds: lets a dense layer fuse its
/// activation into the matmul and keep only the output.
pub fn activation_grad_from_output_into(
    act: Activation,
    y: &Tensor,
    dy: &Tensor,
    dx: &mut Tensor,
) -> Result<()> {
    if !act.derivative_from_output() {
        return Err(Error::arg(
            "activation",
            format!("{act:?}'s derivative cannot be computed from its output"),
        ));
    }
    backward_impl(act, y, dy, dx, true)
}

fn backward_impl(
    act: Activation,
    x: &Tensor,
    dy: &Tensor,
    dx: &mut Tensor,
    from_output: bool,
) -> Result<()> {
    let name = "activation_backward";
    same_shape(name, x, dy)?;
    same_shape(name, x, dx)?;
    match device_of(name, &[x, dy, dx])? {
        Device::Cpu => {
            let (src, grad) = (host(x), host(dy));
            let dst = dx.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
            for ((o, v), g) in dst.iter_mut().zip(src).zip(grad) {
                let d = if from_output {
                    act.derivative_at_output(f64::from(*v))
                } else {
                    act.derivative(f64::from(*v))
                };
                *o = (f64::from(*g) * d) as f32;
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let n = x.len();
            let params = Params::pointwise(n, act);
            let kernel = if from_output {
                &BACKWARD_FROM_OUTPUT
            } else {
                &BACKWARD
            };
            launch(&ctx, kernel, &[], &params, &[x, dy, dx], grid(n, WG))
        }
    }
}

/// `dy * act'(x)` as a new tensor.
pub fn activation_backward(act: Activation, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let mut dx = Tensor::uninit(&x.device(), x.shape())?;
    activation_backward_into(act, x, dy, &mut dx)?;
    Ok(dx)
}

/// Records one of the row kernels over `rows` rows of `cols` columns.
fn launch_rows(
    tensors: &[&Tensor],
    split: RowSplit,
    [per_row, per_group]: [&Kernel; 2],
    rows: usize,
    cols: usize,
) -> Result<()> {
    let Some(Device::Gpu(ctx)) = tensors.first().map(|t| t.device()) else {
        return Err(Error::DeviceMismatch { op: per_row.entry });
    };
    let params = Params {
        n: rows as u32,
        cols: cols as u32,
        code: 0,
        alpha: 0.0,
    };
    if split.per_workgroup(&ctx, cols) {
        launch(&ctx, per_group, &[], &params, tensors, grid(rows, 1))
    } else {
        launch(&ctx, per_row, &[], &params, tensors, grid(rows, WG))
    }
}

/// Row-wise softmax over the last dimension of a [rows, cols] tensor (a 1-D tensor is one row).
pub fn softmax_into(x: &Tensor, out: &mut Tensor) -> Result<()> {
    softmax_into_split(x, out, RowSplit::Auto)
}

/// [`softmax_into`] with the mapping of rows onto the GPU chosen by the caller.
pub fn softmax_into_split(x: &Tensor, out: &mut Tensor, split: RowSplit) -> Result<()> {
    let name = "softmax";
    let (rows, cols) = x.dims2(name)?;
    same_shape(name, x, out)?;
    match device_of(name, &[x, out])? {
        Device::Cpu => {
            let src = host(x);
            let dst = out.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
            for (xr, yr) in src
                .chunks_exact(cols.max(1))
                .zip(dst.chunks_exact_mut(cols.max(1)))
            {
                let m = xr
                    .iter()
                    .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
                let total: f64 = xr.iter().map(|&v| (f64::from(v) - m).exp()).sum();
                for (y, &v) in yr.iter_mut().zip(xr) {
                    *y = ((f64::from(v) - m).exp() / total) as f32;
                }
            }
            Ok(())
        }
        Device::Gpu(_) => launch_rows(
            &[x, out],
            split,
            [&SOFTMAX_ROWS, &SOFTMAX_GROUPS],
            rows,
            cols,
        ),
    }
}

/// Row-wise softmax as a new tensor.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let mut out = Tensor::uninit(&x.device(), x.shape())?;
    softmax_into(x, &mut out)?;
    Ok(out)
}

/// `dx = y * (dy - sum(dy * y))` per row, where `y` is the softmax output.
pub fn softmax_backward_into(y: &Tensor, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
    softmax_backward_into_split(y, dy, dx, RowSplit::Auto)
}

/// [`softmax_backward_into`] with the mapping of rows onto the GPU chosen by the caller.
pub fn softmax_backward_into_split(
    y: &Tensor,
    dy: &Tensor,
    dx: &mut Tensor,
    split: RowSplit,
) -> Result<()> {
    let name = "softmax_backward";
    let (rows, cols) = y.dims2(name)?;
    same_shape(name, y, dy)?;
    same_shape(name, y, dx)?;
    match device_of(name, &[y, dy, dx])? {
        Device::Cpu => {
            let (ys, gs) = (host(y), host(dy));
            let dst = dx.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
            let c = cols.max(1);
            for ((yr, gr), dr) in ys
                .chunks_exact(c)
                .zip(gs.chunks_exact(c))
                .zip(dst.chunks_exact_mut(c))
            {
                let dot: f64 = yr
                    .iter()
                    .zip(gr)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                for ((d, &a), &b) in dr.iter_mut().zip(yr).zip(gr) {
                    *d = (f64::from(a) * (f64::from(b) - dot)) as f32;
                }
            }
            Ok(())
        }
        Device::Gpu(_) => launch_rows(
            &[y, dy, dx],
            split,
            [&SOFTMAX_BACKWARD_ROWS, &SOFTMAX_BACKWARD_GROUPS],
            rows,
            cols,
        ),
    }
}

/// Softmax backward as a new tensor.
pub fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let mut dx = Tensor::uninit(&y.device(), y.shape())?;
    softmax_backward_into(y, dy, &mut dx)?;
    Ok(dx)
}
