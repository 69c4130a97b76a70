//! Ops: one file per op family with its shape checks, CPU reference and GPU dispatch.
//!
//! Every op takes its operands by reference and either returns a new tensor or
//! writes into an output the caller owns (`*_into`), so a training step can reuse
//! its buffers. On the GPU an op only records a dispatch; see [`Device::flush`].

pub mod activation;
pub mod batch_norm;
pub mod bias;
pub mod conv;
pub mod dense_grad;
pub mod dense_head;
pub mod dropout;
pub mod elementwise;
pub mod gather;
pub mod layer_norm;
pub mod loss;
pub mod matmul;
pub mod matmul_tune;
pub mod metrics;
pub mod optim;
pub mod pool;
pub mod reduce;
pub mod transpose;

use crate::device::{Device, GpuContext, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::Arc;

pub use activation::Activation;

/// Invocations per workgroup of the 1-D kernels.
pub(crate) const WG: u32 = 256;

/// The device all `tensors` share, or an error naming `op`.
pub(crate) fn device_of(op: &'static str, tensors: &[&Tensor]) -> Result<Device> {
    let Some((first, rest)) = tensors.split_first() else {
        return Err(Error::arg(op, "no operands"));
    };
    let first = first.device();
    if rest.iter().all(|t| t.device().same(&first)) {
        Ok(first)
    } else {
        Err(Error::DeviceMismatch { op })
    }
}

/// Workgroup counts covering `n` items at `per_group` each, folded into 2-D past the
/// per-dimension limit; kernels rebuild the index as `x + y * num_workgroups.x`.
pub(crate) fn grid(n: usize, per_group: u32) -> [u32; 3] {
    let groups = (n as u64).div_ceil(per_group as u64).max(1);
    if groups <= 65535 {
        [groups as u32, 1, 1]
    } else {
        [65535, groups.div_ceil(65535) as u32, 1]
    }
}

/// Records `kernel` over the tensors' buffers (inputs first, then outputs); `params` is
/// the kernel family's uniform block, the `#[repr(C)]` struct next to its `Kernel`.
pub(crate) fn launch<P: bytemuck::Pod>(
    ctx: &Arc<GpuContext>,
    kernel: &Kernel,
    constants: &[(&'static str, f64)],
    params: &P,
    tensors: &[&Tensor],
    groups: [u32; 3],
) -> Result<()> {
    let buffers: Vec<&wgpu::Buffer> = tensors
        .iter()
        .map(|t| t.buffer().ok_or(Error::DeviceMismatch { op: kernel.entry }))
        .collect::<Result<_>>()?;
    ctx.dispatch(kernel, constants, params, &buffers, groups)
}

/// Checks that two tensors have the same shape.
pub(crate) fn same_shape(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() == b.shape() {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("{:?} vs {:?}", a.shape(), b.shape()),
        ))
    }
}

/// The host values of a CPU tensor (empty for a GPU tensor).
pub(crate) fn host(t: &Tensor) -> &[f32] {
    t.host().unwrap_or(&[])
}

/// Rounds `acc` into the CPU tensor `out`.
pub(crate) fn write_f64(op: &'static str, out: &mut Tensor, acc: &[f64]) -> Result<()> {
    let o = out.host_mut().ok_or(Error::DeviceMismatch { op })?;
    for (o, a) in o.iter_mut().zip(acc) {
        *o = *a as f32;
    }
    Ok(())
}

/// Checks that each (name, tensor, length) is a 1-D tensor of that length.
pub(crate) fn check_vectors(op: &str, want: &[(&str, &Tensor, usize)]) -> Result<()> {
    for &(name, t, len) in want {
        if t.shape() != [len] {
            return Err(Error::shape(
                op,
                format!("{name} is {:?}, expected [{len}]", t.shape()),
            ));
        }
    }
    Ok(())
}

/// Checks a normalisation's eps: finite and not negative.
pub(crate) fn check_eps(op: &str, eps: f32) -> Result<()> {
    if eps >= 0.0 && eps.is_finite() {
        Ok(())
    } else {
        Err(Error::arg(
            format!("{op} eps"),
            format!("{eps} is not >= 0"),
        ))
    }
}
