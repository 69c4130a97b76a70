//! Gathering batch rows from a GPU-resident data set by (shuffled) indices.

use super::{device_of, grid, launch, WG};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const GATHER: Kernel = Kernel {
    file: "gather.wgsl",
    source: include_str!("../../shaders/gather.wgsl"),
    entry: "gather_rows",
    inputs: 2,
    outputs: 1,
    bounds_checks: true,
};

/// Row indices are stored as f32, exact up to 2^24.
pub const MAX_ROWS: usize = 1 << 24;

/// `out[i, :] = data[index[start + i], :]` for every row of `out`.
///
/// `data` is [n, cols] (or [n] for one column), `index` holds row numbers as f32.
pub fn gather_rows_into(
    data: &Tensor,
    index: &Tensor,
    start: usize,
    out: &mut Tensor,
) -> Result<()> {
    // The GPU cannot report a bad index (it leaves the row as it was); the CPU can.
    let n = data.shape().first().copied().unwrap_or(0);
    let rows = out.len() / (data.len() / n.max(1)).max(1);
    let end = start.saturating_add(rows);
    if let Some(idx) = index.host().and_then(|idx| idx.get(start..end)) {
        if let Some(i) = idx.iter().find(|&&i| i < 0.0 || i as usize >= n) {
            return Err(Error::arg(
                "index",
                format!("row {i} of a {n}-row data set"),
            ));
        }
    }
    gather_chunk_into(data, 0, index, start, out)
}

/// Like [`gather_rows_into`] for one chunk of a larger data set: `chunk` holds rows
/// `lo..lo + chunk rows`, and only the batch rows whose index falls there are written.
pub fn gather_chunk_into(
    chunk: &Tensor,
    lo: usize,
    index: &Tensor,
    start: usize,
    out: &mut Tensor,
) -> Result<()> {
    let (n, cols) = match chunk.shape() {
        [n] => (*n, 1),
        _ => chunk.dims2("gather_rows")?,
    };
    let rows = out.len() / cols.max(1);
    if rows * cols != out.len() {
        return Err(Error::shape(
            "gather_rows",
            format!("output {:?} is not whole rows of {cols}", out.shape()),
        ));
    }
    if start.saturating_add(rows) > index.len() {
        return Err(Error::shape(
            "gather_rows",
            format!(
                "rows {start}..{} past the {} indices",
                start.saturating_add(rows),
                index.len()
            ),
        ));
    }
    let hi = lo.saturating_add(n);
    if hi > MAX_ROWS {
        return Err(Error::arg(
            "data set",
            format!("{hi} rows, at most {MAX_ROWS} are supported"),
        ));
    }
    match device_of("gather_rows", &[chunk, index, out])? {
        Device::Cpu => {
            let (d, idx) = (chunk.host().unwrap_or(&[]), index.host().unwrap_or(&[]));
            let o = out.host_mut().unwrap_or(&mut []);
            for (i, dst) in o.chunks_mut(cols.max(1)).enumerate() {
                let src = idx[start + i] as usize;
                if (lo..hi).contains(&src) {
                    dst.copy_from_slice(&d[(src - lo) * cols..(src - lo + 1) * cols]);
                }
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let params = [rows as u32, cols as u32, start as u32, lo as u32, hi as u32];
            launch(
                &ctx,
                &GATHER,
                &[],
                &params,
                &[chunk, index, out],
                grid(rows * cols, WG),
            )
        }
    }
}
