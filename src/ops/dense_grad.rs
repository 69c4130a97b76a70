//! The backward of a dense layer's bias + activation epilogue, fused: from the layer's
//! output `y` and its gradient `dy`, the pre-activation gradient `dz`, its transpose
//! `dzt` (for the weight gradient `dzt * x`) and the bias gradient, in one pass.

use super::transpose::transpose_into;
use super::{device_of, grid, host, launch, Activation};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const DENSE_GRAD: Kernel = Kernel {
    file: "dense_grad.wgsl",
    source: concat!(
        include_str!("../../shaders/act.wgsl"),
        include_str!("../../shaders/dense_grad.wgsl")
    ),
    entry: "dense_grad",
    inputs: 2,
    outputs: 3,
    bounds_checks: true,
};

/// The uniform block of shaders/dense_grad.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) rows: u32,
    pub(super) cols: u32,
    /// The activation's code (see act.wgsl).
    pub(super) act: u32,
    /// The activation's parameter (leaky ReLU's slope).
    pub(super) alpha: f32,
}

/// Invocations per workgroup of the kernel, one per column.
const COLS_PER_GROUP: u32 = 64;

/// Where [`dense_grad_into`] writes.
pub struct DenseGrad<'a> {
    /// `dy * act'(y)`, shaped as `y`.
    pub dz: &'a mut Tensor,
    /// `dz` transposed: [cols, rows].
    pub dzt: &'a mut Tensor,
    /// Column sums of `dz` ([cols]), when the layer has a bias.
    pub db: Option<&'a mut Tensor>,
}

/// Fills `out` from a dense layer's output `y` = act(z) and its gradient `dy` ([rows, cols]).
///
/// `act` must have its derivative defined by its output (all but GELU).
pub fn dense_grad_into(act: Activation, y: &Tensor, dy: &Tensor, out: DenseGrad) -> Result<()> {
    let name = "dense_grad";
    let (rows, cols) = check(name, act, y, dy, &out)?;
    if let Some(db) = out.db.as_deref() {
        device_of(name, &[y, db])?;
    }
    match device_of(name, &[y, dy, out.dz, out.dzt])? {
        Device::Cpu => cpu(act, host(y), host(dy), cols, out),
        Device::Gpu(ctx) => {
            let params = Params {
                rows: rows as u32,
                cols: cols as u32,
                act: act.code(),
                alpha: act.alpha(),
            };
            let bias = out.db.is_some();
            let db = match out.db {
                Some(db) => &*db,
                // Aliasing another output keeps the binding filled; BIAS = false never writes it.
                None => &*out.dzt,
            };
            launch(
                &ctx,
                &DENSE_GRAD,
                &[("BIAS", f64::from(u8::from(bias)))],
                &params,
                &[y, dy, out.dz, out.dzt, db],
                grid(cols, COLS_PER_GROUP),
            )
        }
    }
}

/// The shapes, checked: [rows, cols].
fn check(
    name: &'static str,
    act: Activation,
    y: &Tensor,
    dy: &Tensor,
    out: &DenseGrad,
) -> Result<(usize, usize)> {
    if !act.derivative_from_output() {
        return Err(Error::arg(
            name,
            format!("{act:?}'s derivative cannot be computed from its output"),
        ));
    }
    let (rows, cols) = y.dims2(name)?;
    let bad = |what: &str, t: &Tensor, want: Vec<usize>| {
        Error::shape(
            name,
            format!("{what} is {:?}, expected {want:?}", t.shape()),
        )
    };
    if dy.shape() != y.shape() {
        return Err(bad("dy", dy, vec![rows, cols]));
    }
    if out.dz.shape() != y.shape() {
        return Err(bad("dz", out.dz, vec![rows, cols]));
    }
    if out.dzt.shape() != [cols, rows] {
        return Err(bad("dz^T", out.dzt, vec![cols, rows]));
    }
    if let Some(db) = &out.db {
        if db.len() != cols {
            return Err(bad("the bias gradient", db, vec![cols]));
        }
    }
    Ok((rows, cols))
}

/// The CPU reference, with the bias sums in f64.
fn cpu(act: Activation, y: &[f32], dy: &[f32], cols: usize, out: DenseGrad) -> Result<()> {
    let mut sums = vec![0f64; cols];
    let dz = out.dz.host_mut().unwrap_or(&mut []);
    for (e, (z, (yv, g))) in dz.iter_mut().zip(y.iter().zip(dy)).enumerate() {
        let v = f64::from(*g) * act.derivative_at_output(f64::from(*yv));
        *z = v as f32;
        sums[e % cols] += v;
    }
    transpose_into(out.dz, out.dzt)?;
    if let Some(db) = out.db.and_then(|db| db.host_mut()) {
        for (o, s) in db.iter_mut().zip(sums) {
            *o = s as f32;
        }
    }
    Ok(())
}
