//! Gathering batch rows from a GPU-resident data set by (shuffled) indices.

use super::{device_of, grid, host, launch, WG};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const GATHER: Kernel = Kernel {
    file: "gather.wgsl",
    source: include_str!("../../shaders/gather.wgsl"),
    entry: "gather_rows",
    inputs: 2,
    outputs: 1,
    bounds_checks: true,
};

pub(super) const GATHER_PALETTE: Kernel = Kernel {
    entry: "gather_palette",
    inputs: 3,
    ..GATHER
};

pub(super) const GATHER4_Y: Kernel = Kernel {
    entry: "gather_rows4_y",
    inputs: 3,
    outputs: 2,
    ..GATHER
};

pub(super) const GATHER_PALETTE4_Y: Kernel = Kernel {
    entry: "gather_palette4_y",
    inputs: 4,
    outputs: 2,
    ..GATHER
};

pub(super) const GATHER4: Kernel = Kernel {
    entry: "gather_rows4",
    ..GATHER
};

pub(super) const GATHER_PALETTE4: Kernel = Kernel {
    entry: "gather_palette4",
    ..GATHER_PALETTE
};

/// The uniform block of shaders/gather.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) rows: u32,
    pub(super) cols: u32,
    pub(super) start: u32,
    pub(super) lo: u32,
    pub(super) hi: u32,
    /// The *_y entries: values per target row.
    pub(super) ycols: u32,
}

/// The kernel for rows of `cols` values and how many values one invocation moves: 4
/// where the rows allow vec4 access.
fn pick(cols: usize, plain: &'static Kernel, vec4: &'static Kernel) -> (&'static Kernel, usize) {
    if cols.is_multiple_of(4) {
        (vec4, 4)
    } else {
        (plain, 1)
    }
}

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

/// Checks a gather of `out` (whole rows of `cols`) from a chunk of `n` rows starting at
/// data-set row `lo`, by indices `start..`; returns the batch's rows.
fn batch_rows(
    n: usize,
    cols: usize,
    lo: usize,
    index: &Tensor,
    start: usize,
    out: &Tensor,
) -> Result<usize> {
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
    Ok(rows)
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
    let rows = batch_rows(n, cols, lo, index, start, out)?;
    let hi = lo + n;
    match device_of("gather_rows", &[chunk, index, out])? {
        Device::Cpu => {
            let (d, idx) = (host(chunk), host(index));
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
            let params = Params {
                rows: rows as u32,
                cols: cols as u32,
                start: start as u32,
                lo: lo as u32,
                hi: hi as u32,
                ycols: 0,
            };
            let (kernel, per) = pick(cols, &GATHER, &GATHER4);
            launch(
                &ctx,
                kernel,
                &[],
                &params,
                &[chunk, index, out],
                grid(rows * cols / per, WG),
            )
        }
    }
}

/// A data set of at most 256 distinct values: one byte per value, packed four to a
/// word in an f32 tensor's buffer (as bit patterns), and the palette of values.
pub struct PaletteRows {
    /// [rows, ceil(cols / 4)] words of bytes.
    pub packed: Tensor,
    /// The distinct values, indexed by byte.
    pub palette: Tensor,
    /// Values per row.
    pub cols: usize,
}

impl PaletteRows {
    /// The distinct values of `data` (bit-wise, sorted by bits), if there are at most 256.
    pub fn palette_of(data: &[f32]) -> Option<Vec<u32>> {
        let mut palette: Vec<u32> = Vec::new();
        let mut last = None;
        for v in data.iter().map(|v| v.to_bits()) {
            // Neighbouring values repeat (image backgrounds): skip the search for them.
            if last == Some(v) {
                continue;
            }
            last = Some(v);
            if let Err(at) = palette.binary_search(&v) {
                if palette.len() == 256 {
                    return None;
                }
                palette.insert(at, v);
            }
        }
        Some(palette)
    }

    /// Packs `data` ([rows, cols]) as bytes indexing `palette` (from [`Self::palette_of`]).
    pub fn pack(
        device: &crate::device::Device,
        data: &[f32],
        cols: usize,
        palette: &[u32],
    ) -> Result<PaletteRows> {
        let words_per_row = cols.div_ceil(4);
        let rows = data.len().checked_div(cols).unwrap_or(0);
        let mut words = vec![0u32; rows * words_per_row];
        // Neighbouring values repeat (image backgrounds): reuse the last code for them.
        let mut last: Option<(u32, u32)> = None;
        let mut code_of = |r: usize, v: f32| -> Result<u32> {
            let bits = v.to_bits();
            if let Some((_, code)) = last.filter(|(b, _)| *b == bits) {
                return Ok(code);
            }
            let code = palette.binary_search(&bits).map_err(|_| {
                Error::arg(
                    "palette data",
                    format!("value {v} at row {r} is not in the palette"),
                )
            })? as u32;
            last = Some((bits, code));
            Ok(code)
        };
        let rows_of_words = words.chunks_mut(words_per_row.max(1));
        for (r, (row, out)) in data.chunks(cols.max(1)).zip(rows_of_words).enumerate() {
            for (quad, word) in row.chunks(4).zip(out.iter_mut()) {
                for (j, &v) in quad.iter().enumerate() {
                    *word |= code_of(r, v)? << (8 * j);
                }
            }
        }
        let as_f32: Vec<f32> = words.iter().map(|&w| f32::from_bits(w)).collect();
        let values: Vec<f32> = palette.iter().map(|&b| f32::from_bits(b)).collect();
        Ok(PaletteRows {
            packed: Tensor::from_slice(device, &as_f32, &[rows, words_per_row])?,
            palette: Tensor::from_slice(device, &values, &[values.len().max(1)])?,
            cols,
        })
    }

    /// Gathers batch rows whose index falls in this chunk (rows `lo..`) into `out`.
    pub fn gather_into(
        &self,
        lo: usize,
        index: &Tensor,
        start: usize,
        out: &mut Tensor,
    ) -> Result<()> {
        let n = self.packed.shape().first().copied().unwrap_or(0);
        let rows = out.len() / self.cols.max(1);
        if rows * self.cols != out.len() || start + rows > index.len() {
            return Err(Error::shape(
                "gather_palette",
                format!(
                    "output {:?} of {}-value rows from indices {start}..",
                    out.shape(),
                    self.cols
                ),
            ));
        }
        match device_of("gather_palette", &[&self.packed, index, out])? {
            Device::Cpu => {
                let (words, idx) = (host(&self.packed), host(index));
                let pal = host(&self.palette);
                let wpr = self.cols.div_ceil(4);
                for (i, dst) in out
                    .host_mut()
                    .unwrap_or(&mut [])
                    .chunks_mut(self.cols.max(1))
                    .enumerate()
                {
                    let src = idx[start + i] as usize;
                    if (lo..lo + n).contains(&src) {
                        for (j, d) in dst.iter_mut().enumerate() {
                            let w = words[(src - lo) * wpr + j / 4].to_bits();
                            *d = pal[((w >> (8 * (j % 4))) & 0xff) as usize];
                        }
                    }
                }
                Ok(())
            }
            Device::Gpu(ctx) => {
                let params = Params {
                    rows: rows as u32,
                    cols: self.cols as u32,
                    start: start as u32,
                    lo: lo as u32,
                    hi: (lo + n) as u32,
                    ycols: 0,
                };
                let tensors = [&self.packed, index, &self.palette, &*out];
                let (kernel, per) = pick(self.cols, &GATHER_PALETTE, &GATHER_PALETTE4);
                launch(
                    &ctx,
                    kernel,
                    &[],
                    &params,
                    &tensors,
                    grid(rows * self.cols / per, WG),
                )
            }
        }
    }
}

/// Input rows on the device: f32, or bytes and a palette when the data has at most 256
/// distinct values (pixels), which takes a quarter of the memory and gathers the same values.
pub enum Rows {
    /// Plain f32 rows, [rows, cols].
    F32(Tensor),
    /// Packed bytes and their palette.
    Palette(PaletteRows),
}

impl Rows {
    /// Values per row.
    fn cols(&self) -> usize {
        match self {
            Rows::F32(t) => t.shape().get(1).copied().unwrap_or(1),
            Rows::Palette(p) => p.cols,
        }
    }

    /// Gathers a batch's inputs from this chunk into `out` and its targets from `targets`
    /// (the same rows of the target set) into `out_targets`: one dispatch where the rows
    /// hold a multiple of 4 values, two otherwise.
    pub fn gather_with_targets(
        &self,
        targets: &Tensor,
        lo: usize,
        index: &Tensor,
        start: usize,
        out: &mut Tensor,
        out_targets: &mut Tensor,
    ) -> Result<()> {
        let fused = out.device().gpu_context().is_some() && self.cols().is_multiple_of(4);
        // Both gathers check their own arguments first (the CPU runs them too).
        match self {
            Rows::F32(x) if !fused => gather_chunk_into(x, lo, index, start, out)?,
            Rows::Palette(p) if !fused => p.gather_into(lo, index, start, out)?,
            _ => {}
        }
        if !fused {
            return gather_chunk_into(targets, lo, index, start, out_targets);
        }
        let (n, ycols) = match targets.shape() {
            [n] => (*n, 1),
            _ => targets.dims2("gather_rows")?,
        };
        let cols = self.cols();
        let chunk_rows = match self {
            Rows::F32(x) => x.shape().first().copied().unwrap_or(0),
            Rows::Palette(p) => p.packed.shape().first().copied().unwrap_or(0),
        };
        let rows = batch_rows(chunk_rows, cols, lo, index, start, out)?;
        if chunk_rows != n || batch_rows(n, ycols, lo, index, start, out_targets)? != rows {
            return Err(Error::shape(
                "gather_with_targets",
                format!(
                    "inputs {:?} and targets {:?} from a chunk of {chunk_rows} and {n} rows",
                    out.shape(),
                    out_targets.shape()
                ),
            ));
        }
        let ctx = match device_of("gather_with_targets", &[index, targets, out, out_targets])? {
            Device::Gpu(ctx) => ctx,
            Device::Cpu => {
                return Err(Error::DeviceMismatch {
                    op: "gather_with_targets",
                })
            }
        };
        let params = Params {
            rows: rows as u32,
            cols: cols as u32,
            start: start as u32,
            lo: lo as u32,
            hi: (lo + n) as u32,
            ycols: ycols as u32,
        };
        let groups = grid(rows * cols / 4 + rows * ycols, WG);
        match self {
            Rows::F32(x) => {
                let bound = [x, index, targets, &*out, &*out_targets];
                launch(&ctx, &GATHER4_Y, &[], &params, &bound, groups)
            }
            Rows::Palette(p) => {
                let bound = [&p.packed, index, &p.palette, targets, &*out, &*out_targets];
                launch(&ctx, &GATHER_PALETTE4_Y, &[], &params, &bound, groups)
            }
        }
    }
}
