//! Elementwise arithmetic: add, sub, mul, scale, axpy.

use super::{device_of, grid, host, launch, same_shape, WG};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const BINARY: Kernel = Kernel {
    file: "elementwise.wgsl",
    source: include_str!("../../shaders/elementwise.wgsl"),
    entry: "binary",
    inputs: 2,
    outputs: 1,
    bounds_checks: true,
};
pub(super) const AXPY: Kernel = Kernel {
    file: "axpy.wgsl",
    source: include_str!("../../shaders/axpy.wgsl"),
    entry: "axpy",
    inputs: 1,
    outputs: 1,
    bounds_checks: true,
};
pub(super) const PENALTY: Kernel = Kernel {
    entry: "penalty",
    ..AXPY
};
pub(super) const SCALE: Kernel = Kernel {
    entry: "scale",
    ..AXPY
};

/// The uniform block of shaders/elementwise.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) n: u32,
    pub(super) alpha: f32,
}

/// The uniform block of shaders/axpy.wgsl (its `Params`), field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct AxpyParams {
    pub(super) n: u32,
    pub(super) alpha: f32,
    pub(super) beta: f32,
}

/// A binary elementwise operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
}

impl BinaryOp {
    /// The CPU reference of one element.
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
        }
    }
}

/// `out = a op b`, elementwise; all three share one shape.
pub fn binary_into(op: BinaryOp, a: &Tensor, b: &Tensor, out: &mut Tensor) -> Result<()> {
    let name = "elementwise";
    same_shape(name, a, b)?;
    same_shape(name, a, out)?;
    match device_of(name, &[a, b, out])? {
        Device::Cpu => {
            let (a, b) = (host(a).to_vec(), host(b));
            let o = out.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
            for ((o, x), y) in o.iter_mut().zip(&a).zip(b) {
                *o = op.apply(*x, *y);
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let n = a.len();
            let constants = [("OP", op as u32 as f64)];
            launch(
                &ctx,
                &BINARY,
                &constants,
                &Params {
                    n: n as u32,
                    alpha: 0.0,
                },
                &[a, b, out],
                grid(n, WG),
            )
        }
    }
}

fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let mut out = Tensor::uninit(&a.device(), a.shape())?;
    binary_into(op, a, b, &mut out)?;
    Ok(out)
}

/// a + b
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Add, a, b)
}

/// a - b
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Sub, a, b)
}

/// a * b (elementwise)
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Mul, a, b)
}

/// alpha * a
pub fn scale(a: &Tensor, alpha: f32) -> Result<Tensor> {
    let mut out = Tensor::uninit(&a.device(), a.shape())?;
    scale_into(a, alpha, &mut out)?;
    Ok(out)
}

/// out = alpha * a, into a tensor of a's shape.
pub fn scale_into(a: &Tensor, alpha: f32, out: &mut Tensor) -> Result<()> {
    same_shape("scale", a, out)?;
    match device_of("scale", &[a, out])? {
        Device::Cpu => {
            let src = host(a);
            for (o, x) in out.host_mut().unwrap_or(&mut []).iter_mut().zip(src) {
                *o = alpha * x;
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let n = a.len();
            let params = AxpyParams {
                n: n as u32,
                alpha,
                beta: 0.0,
            };
            launch(&ctx, &SCALE, &[], &params, &[a, out], grid(n, WG))
        }
    }
}

/// y += alpha * x, in place.
pub fn axpy(alpha: f32, x: &Tensor, y: &mut Tensor) -> Result<()> {
    same_shape("axpy", x, y)?;
    match device_of("axpy", &[x, y])? {
        Device::Cpu => {
            let src = host(x);
            for (o, x) in y.host_mut().unwrap_or(&mut []).iter_mut().zip(src) {
                *o += alpha * x;
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let n = x.len();
            let params = AxpyParams {
                n: n as u32,
                alpha,
                beta: 0.0,
            };
            launch(&ctx, &AXPY, &[], &params, &[x, y], grid(n, WG))
        }
    }
}

/// grad += l1 * sign(w) + 2 * l2 * w: the gradient of Keras's L1/L2 penalties.
pub fn add_penalty_grad(w: &Tensor, grad: &mut Tensor, l1: f32, l2: f32) -> Result<()> {
    same_shape("penalty", w, grad)?;
    match device_of("penalty", &[w, grad])? {
        Device::Cpu => {
            let src = host(w);
            for (g, w) in grad.host_mut().unwrap_or(&mut []).iter_mut().zip(src) {
                let sign = if *w > 0.0 {
                    1.0
                } else if *w < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                *g += l1 * sign + 2.0 * l2 * w;
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let n = w.len();
            let params = AxpyParams {
                n: n as u32,
                alpha: l1,
                beta: l2,
            };
            launch(&ctx, &PENALTY, &[], &params, &[w, grad], grid(n, WG))
        }
    }
}
