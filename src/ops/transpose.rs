//! Matrix transpose: [rows, cols] -> [cols, rows].

use super::{device_of, grid, host, launch, WG};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const TRANSPOSE: Kernel = Kernel {
    file: "transpose.wgsl",
    source: include_str!("../../shaders/transpose.wgsl"),
    entry: "transpose",
    inputs: 1,
    outputs: 1,
    bounds_checks: true,
};

/// The uniform block of shaders/transpose.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) rows: u32,
    pub(super) cols: u32,
}

/// `out = x^T` for a 2-D `x` of shape [rows, cols] and `out` of [cols, rows].
pub fn transpose_into(x: &Tensor, out: &mut Tensor) -> Result<()> {
    let (rows, cols) = x.dims2("transpose")?;
    if out.shape() != [cols, rows] {
        return Err(Error::shape(
            "transpose",
            format!(
                "{:?} transposes to [{cols}, {rows}], not {:?}",
                x.shape(),
                out.shape()
            ),
        ));
    }
    match device_of("transpose", &[x, out])? {
        Device::Cpu => {
            let src = host(x);
            for (e, o) in out.host_mut().unwrap_or(&mut []).iter_mut().enumerate() {
                *o = src[(e % rows) * cols + e / rows];
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let params = Params {
                rows: rows as u32,
                cols: cols as u32,
            };
            launch(
                &ctx,
                &TRANSPOSE,
                &[],
                &params,
                &[x, out],
                grid(rows * cols, WG),
            )
        }
    }
}
