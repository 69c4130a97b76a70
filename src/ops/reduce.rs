//! Reductions: sum and mean of a whole tensor, and the argmax of each row.

use super::activation::RowSplit;
use super::{device_of, grid, host, launch, WG};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const SUM_BLOCKS: Kernel = Kernel {
    file: "reduce.wgsl",
    source: include_str!("../../shaders/reduce.wgsl"),
    entry: "sum_blocks",
    inputs: 1,
    outputs: 1,
    bounds_checks: true,
};
pub(super) const ARGMAX_ROWS: Kernel = Kernel {
    entry: "argmax_rows",
    ..SUM_BLOCKS
};
pub(super) const ARGMAX_GROUPS: Kernel = Kernel {
    entry: "argmax_groups",
    ..SUM_BLOCKS
};

/// The uniform block of shaders/reduce.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    /// Elements for sum_blocks, rows for argmax.
    pub(super) n: u32,
    pub(super) cols: u32,
    /// Factor applied to each block's sum: 1, or 1/len for the last pass of a mean.
    pub(super) scale: f32,
}

/// Elements one sum_blocks workgroup reduces (SUM_WG * PER in shaders/reduce.wgsl).
const SUM_BLOCK: usize = 256 * 64;

/// Checks that `out` is the [1] tensor a whole-tensor reduction writes.
fn check_scalar(op: &str, out: &Tensor) -> Result<()> {
    if out.shape() == [1] {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("the output must have shape [1], got {:?}", out.shape()),
        ))
    }
}

/// `out[0] = scale * sum(x)`: block sums in passes until one value is left.
fn scaled_sum_into(name: &'static str, x: &Tensor, out: &mut Tensor, scale: f64) -> Result<()> {
    check_scalar(name, out)?;
    match device_of(name, &[x, out])? {
        Device::Cpu => {
            let total: f64 = host(x).iter().map(|&v| f64::from(v)).sum();
            let dst = out.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
            dst[0] = (total * scale) as f32;
            Ok(())
        }
        Device::Gpu(ctx) => {
            let mut n = x.len();
            // The partial sums of the previous pass; dropping one after its reader is recorded
            // is safe, as the pool only hands it to work recorded later.
            let mut prev: Option<Tensor> = None;
            loop {
                let blocks = n.div_ceil(SUM_BLOCK).max(1);
                let src = prev.as_ref().unwrap_or(x);
                if blocks == 1 {
                    let params = Params {
                        n: n as u32,
                        cols: 0,
                        scale: scale as f32,
                    };
                    return launch(&ctx, &SUM_BLOCKS, &[], &params, &[src, out], grid(1, 1));
                }
                let next = Tensor::uninit(&x.device(), &[blocks])?;
                let params = Params {
                    n: n as u32,
                    cols: 0,
                    scale: 1.0,
                };
                launch(
                    &ctx,
                    &SUM_BLOCKS,
                    &[],
                    &params,
                    &[src, &next],
                    grid(blocks, 1),
                )?;
                prev = Some(next);
                n = blocks;
            }
        }
    }
}

/// `out[0] = sum(x)` over all elements; `out` has shape [1].
pub fn sum_into(x: &Tensor, out: &mut Tensor) -> Result<()> {
    scaled_sum_into("sum", x, out, 1.0)
}

/// The sum of all elements, as a [1] tensor (0 for an empty tensor).
pub fn sum(x: &Tensor) -> Result<Tensor> {
    let mut out = Tensor::uninit(&x.device(), &[1])?;
    sum_into(x, &mut out)?;
    Ok(out)
}

/// `out[0] = mean(x)` over all elements; `out` has shape [1] and `x` must not be empty.
pub fn mean_into(x: &Tensor, out: &mut Tensor) -> Result<()> {
    if x.is_empty() {
        return Err(Error::shape(
            "mean",
            format!("the mean of an empty tensor {:?}", x.shape()),
        ));
    }
    scaled_sum_into("mean", x, out, 1.0 / x.len() as f64)
}

/// The mean of all elements, as a [1] tensor.
pub fn mean(x: &Tensor) -> Result<Tensor> {
    let mut out = Tensor::uninit(&x.device(), &[1])?;
    mean_into(x, &mut out)?;
    Ok(out)
}

/// `out[r]` = column index of the largest value of row r of x [rows, cols], as f32.
///
/// The first maximum wins on ties, as in NumPy and PyTorch. On the CPU a NaN counts as
/// the maximum (NumPy's rule); GPU shader compilers may assume no NaN, so there it is
/// unspecified.
pub fn argmax_rows_into(x: &Tensor, out: &mut Tensor) -> Result<()> {
    argmax_rows_into_split(x, out, RowSplit::Auto)
}

/// [`argmax_rows_into`] with the mapping of rows onto the GPU chosen by the caller.
pub fn argmax_rows_into_split(x: &Tensor, out: &mut Tensor, split: RowSplit) -> Result<()> {
    let name = "argmax_rows";
    let (rows, cols) = x.dims2(name)?;
    if cols == 0 {
        return Err(Error::shape(
            name,
            format!("rows of {:?} are empty", x.shape()),
        ));
    }
    if out.shape() != [rows] {
        return Err(Error::shape(
            name,
            format!(
                "output {:?} for input {:?}: expected [{rows}]",
                out.shape(),
                x.shape()
            ),
        ));
    }
    match device_of(name, &[x, out])? {
        Device::Cpu => {
            let src = host(x);
            let dst = out.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
            for (o, row) in dst.iter_mut().zip(src.chunks_exact(cols)) {
                let mut best = 0;
                for (c, v) in row.iter().enumerate().skip(1) {
                    if row[best].is_nan() {
                        break;
                    }
                    if *v > row[best] || v.is_nan() {
                        best = c;
                    }
                }
                *o = best as f32;
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let params = Params {
                n: rows as u32,
                cols: cols as u32,
                scale: 0.0,
            };
            if split.per_workgroup(&ctx, cols) {
                launch(&ctx, &ARGMAX_GROUPS, &[], &params, &[x, out], grid(rows, 1))
            } else {
                launch(&ctx, &ARGMAX_ROWS, &[], &params, &[x, out], grid(rows, WG))
            }
        }
    }
}

/// The argmax of each row of x [rows, cols] as a new [rows] tensor of f32 indices.
pub fn argmax_rows(x: &Tensor) -> Result<Tensor> {
    let (rows, _) = x.dims2("argmax_rows")?;
    let mut out = Tensor::uninit(&x.device(), &[rows])?;
    argmax_rows_into(x, &mut out)?;
    Ok(out)
}
