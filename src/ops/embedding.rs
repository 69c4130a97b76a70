//! Embedding tables: token lookups (`nn.Embedding`) and learned positions added to each
//! position of a sequence, with their gradients into the tables.
//!
//! The gradients are sums of scattered rows, and WGSL has no f32 atomics, so each table
//! value has one GPU invocation that adds its terms in token order: deterministic (the
//! same bits every run, unlike a scatter with atomics or a compare-and-swap loop). For
//! the token table, the batch's tokens are first sorted by row (a counting sort into
//! the caller's [`TokenSort`]: counts, prefix sums, each row's tokens in token order),
//! so each value sums only its own row's tokens: vocab * tokens work for the sort and
//! tokens * dim for the sums, where each value scanning the whole batch would take
//! vocab * dim * tokens.

use super::{device_of, grid, host, launch, write_f64, WG};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const LOOKUP: Kernel = Kernel {
    file: "embedding.wgsl",
    source: include_str!("../../shaders/embedding.wgsl"),
    entry: "lookup",
    inputs: 2,
    outputs: 1,
    bounds_checks: true,
};
pub(super) const BUCKET_COUNT: Kernel = Kernel {
    entry: "bucket_count",
    inputs: 1,
    ..LOOKUP
};
pub(super) const BUCKET_SCAN: Kernel = Kernel {
    entry: "bucket_scan",
    inputs: 0,
    ..LOOKUP
};
pub(super) const BUCKET_FILL: Kernel = Kernel {
    entry: "bucket_fill",
    ..LOOKUP
};
pub(super) const LOOKUP_GRAD: Kernel = Kernel {
    entry: "lookup_grad",
    inputs: 3,
    ..LOOKUP
};
pub(super) const POSITIONAL: Kernel = Kernel {
    entry: "positional",
    ..LOOKUP
};
pub(super) const POSITIONAL_GRAD: Kernel = Kernel {
    entry: "positional_grad",
    inputs: 1,
    ..LOOKUP
};

/// The uniform block of shaders/embedding.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    /// Tokens (lookups) or sequences (positional).
    pub(super) n: u32,
    /// Width of a table row.
    pub(super) dim: u32,
    /// Rows of the table.
    pub(super) rows: u32,
    /// Values of one sequence (positional): positions * dim.
    pub(super) period: u32,
    /// The table row of a sequence's first position (positional).
    pub(super) start: u32,
}

/// (rows, dim) of a table, checked to be 2-D and non-empty.
fn table_dims(op: &str, table: &Tensor) -> Result<(usize, usize)> {
    match *table.shape() {
        [rows, dim] if rows > 0 && dim > 0 => Ok((rows, dim)),
        ref s => Err(Error::shape(
            op,
            format!("the table must be a non-empty [rows, dim], got {s:?}"),
        )),
    }
}

/// Checks that `t` is `want`.
fn expect(op: &str, what: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.shape() == want {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("{what} is {:?}, expected {want:?}", t.shape()),
        ))
    }
}

/// The kernel parameters, refusing counts the shader's u32 indices cannot hold.
fn params(op: &str, n: usize, dim: usize, rows: usize, period: usize) -> Result<Params> {
    let fits = |v: usize| u32::try_from(v).ok();
    let total = n.checked_mul(period.max(dim)).and_then(fits);
    // Token positions travel as f32 in the sort: exact below 2^24.
    let positions = (n < 1 << 24).then_some(());
    match (
        fits(n),
        fits(dim),
        fits(rows),
        fits(period),
        total.and(positions),
    ) {
        (Some(n), Some(dim), Some(rows), Some(period), Some(_)) => Ok(Params {
            n,
            dim,
            rows,
            period,
            start: 0,
        }),
        _ => Err(Error::shape(op, "more values than a GPU index holds")),
    }
}

/// The table row of each id, or an error naming the first id that is not an integer
/// in [0, rows).
fn rows_of(op: &str, ids: &[f32], rows: usize) -> Result<Vec<usize>> {
    ids.iter()
        .enumerate()
        .map(|(t, &v)| {
            if v >= 0.0 && v.fract() == 0.0 && (v as f64) < rows as f64 {
                Ok(v as usize)
            } else {
                Err(Error::arg(
                    op,
                    format!("token {t} has id {v}, not an integer in [0, {rows})"),
                ))
            }
        })
        .collect()
}

/// `out[.., c] = table[ids[..], c]`: ids (f32, exact below 2^24) of any shape, `out` that
/// shape with `dim` appended. On the CPU an id that is not an integer in [0, rows) is an
/// `InvalidArgument` error; on the GPU, which cannot report errors, it is clamped into
/// that range (fractions truncated).
pub fn embedding_into(ids: &Tensor, table: &Tensor, out: &mut Tensor) -> Result<()> {
    let op = "embedding";
    let (rows, dim) = table_dims(op, table)?;
    let want: Vec<usize> = ids.shape().iter().copied().chain([dim]).collect();
    expect(op, "the output", out, &want)?;
    match device_of(op, &[ids, table, out])? {
        Device::Cpu => {
            let rows = rows_of(op, host(ids), rows)?;
            let t = host(table);
            let o = out.host_mut().ok_or(Error::DeviceMismatch { op })?;
            for (dst, r) in o.chunks_exact_mut(dim).zip(rows) {
                dst.copy_from_slice(&t[r * dim..(r + 1) * dim]);
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let p = params(op, ids.len(), dim, rows, dim)?;
            launch(
                &ctx,
                &LOOKUP,
                &[],
                &p,
                &[ids, table, out],
                grid(ids.len() * dim, WG),
            )
        }
    }
}

/// Where the GPU gradient sorts a batch's tokens by table row: the first sorted token of
/// each row (`offsets`, `[rows + 1]`) and the tokens in row order (`positions`,
/// `[tokens]`), borrowed from buffers made once per batch size by [`TokenSort::buffers`]
/// (so a training step allocates nothing).
pub struct TokenSort<'a> {
    /// `[rows + 1]`.
    pub offsets: &'a mut Tensor,
    /// `[tokens]`.
    pub positions: &'a mut Tensor,
}

impl TokenSort<'_> {
    /// The offsets and positions for `tokens` ids into a table of `rows` rows.
    pub fn buffers(device: &Device, rows: usize, tokens: usize) -> Result<[Tensor; 2]> {
        Ok([
            Tensor::zeros(device, &[rows.saturating_add(1)])?,
            Tensor::zeros(device, &[tokens])?,
        ])
    }
}

/// `dtable[r, c]` = the sum of `dy[.., c]` over the tokens whose id is r, in token order
/// (overwritten; rows no token names get 0), the tokens sorted by row in `sort` on the
/// GPU. Shapes and ids as [`embedding_into`].
pub fn embedding_grad_into(
    ids: &Tensor,
    dy: &Tensor,
    dtable: &mut Tensor,
    sort: TokenSort<'_>,
) -> Result<()> {
    let op = "embedding_grad";
    let (rows, dim) = table_dims(op, dtable)?;
    let want: Vec<usize> = ids.shape().iter().copied().chain([dim]).collect();
    expect(op, "dy", dy, &want)?;
    expect(op, "the sort's offsets", sort.offsets, &[rows + 1])?;
    expect(op, "the sort's positions", sort.positions, &[ids.len()])?;
    let TokenSort { offsets, positions } = sort;
    match device_of(op, &[ids, dy, dtable, offsets, positions])? {
        Device::Cpu => {
            let token_rows = rows_of(op, host(ids), rows)?;
            let mut acc = vec![0f64; rows * dim];
            for (g, r) in host(dy).chunks_exact(dim).zip(token_rows) {
                for (a, &v) in acc[r * dim..(r + 1) * dim].iter_mut().zip(g) {
                    *a += f64::from(v);
                }
            }
            write_f64(op, dtable, &acc)
        }
        Device::Gpu(ctx) => {
            let p = params(op, ids.len(), dim, rows, dim)?;
            launch(
                &ctx,
                &BUCKET_COUNT,
                &[],
                &p,
                &[ids, offsets],
                grid(rows, WG),
            )?;
            launch(&ctx, &BUCKET_SCAN, &[], &p, &[offsets], [1, 1, 1])?;
            let fill = [ids, &*offsets, &*positions];
            launch(&ctx, &BUCKET_FILL, &[], &p, &fill, grid(rows, WG))?;
            let grad = [&*offsets, &*positions, dy, &*dtable];
            launch(&ctx, &LOOKUP_GRAD, &[], &p, &grad, grid(rows * dim, WG))
        }
    }
}

/// (sequences, positions * dim) of x [.., positions, dim] against a [max_positions, dim]
/// table.
fn sequences(op: &str, x: &Tensor, rows: usize, dim: usize) -> Result<(usize, usize)> {
    match *x.shape() {
        [.., t, d] if d == dim && t <= rows && t > 0 => Ok((x.len() / (t * d), t * d)),
        ref s => Err(Error::shape(
            op,
            format!("needs [.., positions, {dim}] with at most {rows} positions, got {s:?}"),
        )),
    }
}

/// `out[.., t, c] = x[.., t, c] + table[t, c]`: learned positions added to every sequence
/// of x [.., T, dim]; the table is [max_positions, dim] with T <= max_positions.
pub fn positional_into(x: &Tensor, table: &Tensor, out: &mut Tensor) -> Result<()> {
    positional_at_into(x, table, 0, out)
}

/// [`positional_into`] for sequences that start at position `start`:
/// `out[.., t, c] = x[.., t, c] + table[start + t, c]` (decoding a few new positions).
pub fn positional_at_into(
    x: &Tensor,
    table: &Tensor,
    start: usize,
    out: &mut Tensor,
) -> Result<()> {
    let op = "positional_embedding";
    let (rows, dim) = table_dims(op, table)?;
    let (n, period) = sequences(op, x, rows, dim)?;
    expect(op, "the output", out, x.shape())?;
    if start.saturating_mul(dim).saturating_add(period) > rows * dim {
        return Err(Error::shape(
            op,
            format!(
                "{} positions from {start} are past the table's {rows}",
                period / dim
            ),
        ));
    }
    match device_of(op, &[x, table, out])? {
        Device::Cpu => {
            let t = &host(table)[start * dim..start * dim + period];
            let o = out.host_mut().ok_or(Error::DeviceMismatch { op })?;
            for (dst, src) in o.chunks_exact_mut(period).zip(host(x).chunks_exact(period)) {
                for ((d, &v), &p) in dst.iter_mut().zip(src).zip(t) {
                    *d = v + p;
                }
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let mut p = params(op, n, dim, rows, period)?;
            p.start = start as u32;
            launch(
                &ctx,
                &POSITIONAL,
                &[],
                &p,
                &[x, table, out],
                grid(n * period, WG),
            )
        }
    }
}

/// `dtable[t, c]` = the sum over the sequences of `dy[.., t, c]` (overwritten; positions
/// past the sequences' length get 0).
pub fn positional_grad_into(dy: &Tensor, dtable: &mut Tensor) -> Result<()> {
    let op = "positional_embedding_grad";
    let (rows, dim) = table_dims(op, dtable)?;
    let (n, period) = sequences(op, dy, rows, dim)?;
    match device_of(op, &[dy, dtable])? {
        Device::Cpu => {
            let mut acc = vec![0f64; rows * dim];
            for s in host(dy).chunks_exact(period) {
                for (a, &v) in acc.iter_mut().zip(s) {
                    *a += f64::from(v);
                }
            }
            write_f64(op, dtable, &acc)
        }
        Device::Gpu(ctx) => {
            let p = params(op, n, dim, rows, period)?;
            launch(
                &ctx,
                &POSITIONAL_GRAD,
                &[],
                &p,
                &[dy, dtable],
                grid(rows * dim, WG),
            )
        }
    }
}

/// Writes zeros over `out` (the gradient of token ids, which have none).
pub fn zero_into(out: &mut Tensor) -> Result<()> {
    match out.device() {
        Device::Cpu => out.host_mut().unwrap_or(&mut []).fill(0.0),
        Device::Gpu(ctx) => {
            if let Some(span) = out.buffer() {
                ctx.clear(span);
            }
        }
    }
    Ok(())
}
