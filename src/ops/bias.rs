//! Bias broadcast over the rows of a [rows, cols] tensor, and its gradient (the column sum).

use super::{device_of, grid, host, launch, same_shape, WG};
use crate::device::{Device, GpuContext, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};
use std::sync::Arc;

pub(super) const ADD: Kernel = Kernel {
    file: "bias.wgsl",
    source: include_str!("../../shaders/bias.wgsl"),
    entry: "bias_add",
    inputs: 2,
    outputs: 1,
    bounds_checks: true,
};
pub(super) const ADD_INPLACE: Kernel = Kernel {
    entry: "bias_add_inplace",
    inputs: 1,
    ..ADD
};
pub(super) const COL_SUM: Kernel = Kernel {
    entry: "col_sum",
    inputs: 1,
    ..ADD
};

/// The uniform block of shaders/bias.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) rows: u32,
    pub(super) cols: u32,
    /// Rows each col_sum invocation adds up.
    pub(super) chunk: u32,
}

/// (rows, cols) of `x` once `bias` is checked to be [cols].
fn dims(op: &str, x: &Tensor, bias: &Tensor) -> Result<(usize, usize)> {
    let (rows, cols) = x.dims2(op)?;
    if bias.shape() != [cols] {
        return Err(Error::shape(
            op,
            format!(
                "bias {:?} does not fit x {:?}: expected [{cols}]",
                bias.shape(),
                x.shape()
            ),
        ));
    }
    Ok((rows, cols))
}

/// `out = x + bias`, the bias [cols] broadcast over the rows of x [rows, cols].
pub fn bias_add_into(x: &Tensor, bias: &Tensor, out: &mut Tensor) -> Result<()> {
    let name = "bias_add";
    let (rows, cols) = dims(name, x, bias)?;
    same_shape(name, x, out)?;
    match device_of(name, &[x, bias, out])? {
        Device::Cpu => {
            let (src, b) = (host(x), host(bias));
            let dst = out.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
            for (orow, xrow) in dst
                .chunks_exact_mut(cols.max(1))
                .zip(src.chunks_exact(cols.max(1)))
            {
                for ((o, v), b) in orow.iter_mut().zip(xrow).zip(b) {
                    *o = v + b;
                }
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let params = Params {
                rows: rows as u32,
                cols: cols as u32,
                chunk: 0,
            };
            launch(
                &ctx,
                &ADD,
                &[],
                &params,
                &[x, bias, out],
                grid(rows * cols, WG),
            )
        }
    }
}

/// `x + bias` as a new tensor.
pub fn bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let mut out = Tensor::uninit(&x.device(), x.shape())?;
    bias_add_into(x, bias, &mut out)?;
    Ok(out)
}

/// `x += bias`, in place.
pub fn bias_add_inplace(x: &mut Tensor, bias: &Tensor) -> Result<()> {
    let name = "bias_add_inplace";
    let (rows, cols) = dims(name, x, bias)?;
    match device_of(name, &[x, bias])? {
        Device::Cpu => {
            let b = host(bias);
            let dst = x.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
            for row in dst.chunks_exact_mut(cols.max(1)) {
                for (o, b) in row.iter_mut().zip(b) {
                    *o += b;
                }
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let params = Params {
                rows: rows as u32,
                cols: cols as u32,
                chunk: 0,
            };
            launch(
                &ctx,
                &ADD_INPLACE,
                &[],
                &params,
                &[bias, x],
                grid(rows * cols, WG),
            )
        }
    }
}

/// Rows one col_sum invocation adds up in the first of two passes, or `rows` for one pass.
///
/// A tall input split into about sqrt(rows) runs of sqrt(rows) rows gives both passes
/// enough invocations and short loops: faster than one pass on tall inputs on lavapipe
/// (`cargo bench --bench kernels bias` measures it).
pub(crate) fn chunk_rows(rows: usize) -> usize {
    if rows <= SINGLE_PASS_ROWS {
        rows.max(1)
    } else {
        rows.isqrt().max(1)
    }
}

/// Inputs this short are summed in one pass: a second dispatch costs more than it saves.
const SINGLE_PASS_ROWS: usize = 256;

/// `db = sum of dy over its rows`: the gradient of a bias added to every row.
pub fn bias_grad_into(dy: &Tensor, db: &mut Tensor) -> Result<()> {
    let name = "bias_grad";
    let (rows, cols) = dims(name, dy, db)?;
    match device_of(name, &[dy, db])? {
        Device::Cpu => {
            let src = host(dy);
            let mut acc = vec![0f64; cols];
            for row in src.chunks_exact(cols.max(1)) {
                for (s, v) in acc.iter_mut().zip(row) {
                    *s += f64::from(*v);
                }
            }
            let dst = db.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
            for (o, s) in dst.iter_mut().zip(acc) {
                *o = s as f32;
            }
            Ok(())
        }
        Device::Gpu(ctx) => col_sum_gpu(&ctx, dy, rows, cols, db),
    }
}

/// `dst[j] = sum of src[r * cols + j] over r < rows` on the GPU, for ops that have checked
/// that `src` holds rows * cols values and `dst` cols (whatever their shapes).
pub(crate) fn col_sum_gpu(
    ctx: &Arc<GpuContext>,
    src: &Tensor,
    rows: usize,
    cols: usize,
    dst: &Tensor,
) -> Result<()> {
    let chunk = chunk_rows(rows);
    let chunks = rows.div_ceil(chunk).max(1);
    if chunks == 1 {
        let params = Params {
            rows: rows as u32,
            cols: cols as u32,
            chunk: chunk as u32,
        };
        return launch(ctx, &COL_SUM, &[], &params, &[src, dst], grid(cols, WG));
    }
    let partial = Tensor::uninit(&src.device(), &[chunks, cols])?;
    let params = Params {
        rows: rows as u32,
        cols: cols as u32,
        chunk: chunk as u32,
    };
    launch(
        ctx,
        &COL_SUM,
        &[],
        &params,
        &[src, &partial],
        grid(chunks * cols, WG),
    )?;
    let params = Params {
        rows: chunks as u32,
        cols: cols as u32,
        chunk: chunks as u32,
    };
    launch(
        ctx,
        &COL_SUM,
        &[],
        &params,
        &[&partial, dst],
        grid(cols, WG),
    )
}

/// The column sum of dy [rows, cols] as a new [cols] tensor.
pub fn bias_grad(dy: &Tensor) -> Result<Tensor> {
    let (_, cols) = dy.dims2("bias_grad")?;
    let mut db = Tensor::uninit(&dy.device(), &[cols])?;
    bias_grad_into(dy, &mut db)?;
    Ok(db)
}
