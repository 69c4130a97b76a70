//! Column blocks of row-major matrices: the forward (scatter) and backward (gather) of
//! concatenate. Tensors are seen as [rows, values per row] with rows their first
//! dimension, so [batch, features] and [batch, c, h, w] (channels) concatenate alike.

use super::{device_of, grid, host, launch, WG};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const SCATTER: Kernel = Kernel {
    file: "concat.wgsl",
    source: include_str!("../../shaders/concat.wgsl"),
    entry: "scatter",
    inputs: 1,
    outputs: 1,
    bounds_checks: true,
};
pub(super) const GATHER: Kernel = Kernel {
    entry: "gather",
    ..SCATTER
};

/// The uniform block of shaders/concat.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) rows: u32,
    pub(super) part: u32,
    pub(super) whole: u32,
    pub(super) offset: u32,
}

impl Params {
    fn new(rows: usize, part: usize, whole: usize, offset: usize) -> Params {
        Params {
            rows: rows as u32,
            part: part as u32,
            whole: whole as u32,
            offset: offset as u32,
        }
    }
}

/// Rows and values per row of `part` and of `whole`, checked for a block at `offset`.
fn blocks(part: &Tensor, whole: &Tensor, offset: usize) -> Result<(usize, usize, usize)> {
    let rows = |t: &Tensor| t.shape().first().copied().unwrap_or(1);
    let (rows_p, rows_w) = (rows(part), rows(whole));
    if rows_p != rows_w || rows_p == 0 {
        return Err(Error::shape(
            "concat",
            format!(
                "{:?} and {:?} do not have the same (non-zero) number of rows",
                part.shape(),
                whole.shape()
            ),
        ));
    }
    let (p, w) = (part.len() / rows_p, whole.len() / rows_w);
    if offset.checked_add(p).is_none_or(|end| end > w) {
        return Err(Error::shape(
            "concat",
            format!("columns {offset}..{offset}+{p} are outside rows of {w} values"),
        ));
    }
    Ok((rows_p, p, w))
}

/// Writes `part` [rows, p] into columns `offset..offset + p` of `whole` [rows, w].
pub fn concat_cols_into(part: &Tensor, whole: &mut Tensor, offset: usize) -> Result<()> {
    let (rows, p, w) = blocks(part, whole, offset)?;
    match device_of("concat", &[part, whole])? {
        Device::Cpu => {
            let src = host(part);
            let dst = whole
                .host_mut()
                .ok_or(Error::DeviceMismatch { op: "concat" })?;
            for (r, row) in src.chunks(p).enumerate() {
                dst[r * w + offset..r * w + offset + p].copy_from_slice(row);
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let params = Params::new(rows, p, w, offset);
            launch(
                &ctx,
                &SCATTER,
                &[],
                &params,
                &[part, whole],
                grid(rows * p, WG),
            )
        }
    }
}

/// Reads columns `offset..offset + p` of `whole` [rows, w] into `part` [rows, p].
pub fn split_cols_into(whole: &Tensor, offset: usize, part: &mut Tensor) -> Result<()> {
    let (rows, p, w) = blocks(part, whole, offset)?;
    match device_of("concat", &[whole, part])? {
        Device::Cpu => {
            let src = host(whole);
            let dst = part
                .host_mut()
                .ok_or(Error::DeviceMismatch { op: "concat" })?;
            for (r, row) in dst.chunks_mut(p).enumerate() {
                row.copy_from_slice(&src[r * w + offset..r * w + offset + p]);
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let params = Params::new(rows, p, w, offset);
            launch(
                &ctx,
                &GATHER,
                &[],
                &params,
                &[whole, part],
                grid(rows * p, WG),
            )
        }
    }
}
