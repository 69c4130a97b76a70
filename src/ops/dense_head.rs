//! A classifier's output layer, forward and backward, fused into one dispatch: the dense
//! product to logits, softmax cross-entropy, its gradient, the layer's weight and bias
//! gradients, and the gradient through the hidden layer's activation (with its transpose
//! and bias gradient, so the hidden layer's backward starts at its weight product).
//!
//! One workgroup does it all, so it pays only where the layer is small: on lavapipe the
//! five dispatches it replaces cost about 50 us of GPU time and 10 us of host time each.

use super::bias::bias_grad_into;
use super::dense_grad::{dense_grad_into, DenseGrad};
use super::loss::{loss_and_grad_at, Loss};
use super::matmul::Gemm;
use super::{device_of, launch, Activation};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const DENSE_HEAD: Kernel = Kernel {
    file: "dense_head.wgsl",
    source: concat!(
        include_str!("../../shaders/act.wgsl"),
        include_str!("../../shaders/dense_head.wgsl")
    ),
    entry: "dense_head",
    inputs: 4,
    outputs: 8,
    bounds_checks: true,
};

/// The uniform block of shaders/dense_head.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) rows: u32,
    pub(super) hid: u32,
    /// The hidden activation's parameter (leaky ReLU's slope).
    pub(super) alpha: f32,
    /// 1 / rows: the mean's factor, also in the gradient.
    pub(super) scale: f32,
    /// A quiet NaN's bits, for a row whose label is not a class id.
    pub(super) nan: u32,
    /// Where the mean loss goes in the log.
    pub(super) slot: u32,
}

/// Most classes the kernel holds per row (its private arrays).
pub const MAX_CLASSES: usize = 32;
/// Storage bindings the kernel needs.
const BINDINGS: u32 = 12;
/// A quiet NaN's bits, for rows with a bad label.
const NAN_BITS: u32 = 0x7fc0_0000;

/// The operands: hidden activations `h` ([rows, hid], the output of `act`), the output
/// layer's weight `w` ([cols, hid]) and bias `b` ([cols]), and the loss's targets.
#[derive(Clone, Copy)]
pub struct Head<'a> {
    /// Softmax cross-entropy, sparse or one-hot: the only losses fused.
    pub loss: Loss,
    /// The hidden layer's output.
    pub h: &'a Tensor,
    /// The activation that produced `h`; its derivative must follow from its output.
    pub act: Activation,
    /// The output layer's weight, [cols, hid].
    pub w: &'a Tensor,
    /// The output layer's bias, [cols].
    pub b: Option<&'a Tensor>,
    /// Class ids ([rows]) or one-hot rows ([rows, cols]).
    pub target: &'a Tensor,
}

/// Where [`dense_head_at`] writes.
pub struct HeadOut<'a> {
    /// The logits, [rows, cols].
    pub logits: &'a mut Tensor,
    /// The loss gradient with respect to the logits, [rows, cols].
    pub dz: &'a mut Tensor,
    /// The output weight's gradient, [cols, hid].
    pub dw: &'a mut Tensor,
    /// The output bias's gradient, [cols], when the layer has a bias.
    pub db: Option<&'a mut Tensor>,
    /// The gradient with respect to the hidden pre-activation, [rows, hid].
    pub dh: &'a mut Tensor,
    /// `dh` transposed, [hid, rows], when wanted.
    pub dht: Option<&'a mut Tensor>,
    /// Column sums of `dh` (the hidden bias's gradient), [hid], when wanted.
    pub dhb: Option<&'a mut Tensor>,
}

/// Whether the fused head is available and pays on `device` for these sizes.
pub fn head_fits(device: &Device, rows: usize, hid: usize, cols: usize) -> bool {
    let Device::Gpu(ctx) = device else {
        return false;
    };
    // One workgroup does rows * hid * cols multiply-adds three times over. On a CPU
    // adapter that is one core against dispatch costs of 50 us; a real GPU's dispatches
    // are cheap, so only tiny heads go there.
    let most = if ctx.is_software() { 1 << 21 } else { 1 << 16 };
    (1..=MAX_CLASSES).contains(&cols)
        && hid.is_multiple_of(4)
        && rows * hid * cols <= most
        && ctx.limits().max_storage_buffers_per_shader_stage >= BINDINGS
}

/// Runs the head, writing the mean loss into `log[slot]`.
pub fn dense_head_at(head: Head, out: HeadOut, log: &mut Tensor, slot: usize) -> Result<()> {
    let op = "dense_head";
    let (rows, hid, cols) = check(op, &head, &out)?;
    if log.shape().len() != 1 || slot >= log.len() {
        return Err(Error::shape(
            op,
            format!("slot {slot} of a loss log shaped {:?}", log.shape()),
        ));
    }
    let ctx = match device_of(op, &[head.h, head.w, head.target, out.logits, log])? {
        Device::Cpu => return cpu(head, out, log, slot),
        Device::Gpu(ctx) => ctx,
    };
    if cols > MAX_CLASSES || !hid.is_multiple_of(4) {
        return Err(Error::arg(
            op,
            format!(
                "{cols} classes from {hid} hidden units: the kernel takes at most \
                 {MAX_CLASSES} classes and a multiple of 4 units"
            ),
        ));
    }
    let params = Params {
        rows: rows as u32,
        hid: hid as u32,
        alpha: head.act.alpha(),
        scale: (1.0 / rows as f64) as f32,
        nan: NAN_BITS,
        slot: slot as u32,
    };
    let flag = |b: bool| f64::from(u8::from(b));
    let constants = [
        ("LOSS", f64::from(head.loss.code())),
        ("BIAS", flag(head.b.is_some())),
        ("HT", flag(out.dht.is_some())),
        ("HBIAS", flag(out.dhb.is_some())),
        ("COLS", cols as f64),
        ("ACT", f64::from(head.act.code())),
    ];
    // Absent operands are bound to another of the same access; the flags keep them unused.
    let b = head.b.unwrap_or(head.w);
    let db = out.db.as_deref().unwrap_or(out.dw);
    let dht = out.dht.as_deref().unwrap_or(out.dh);
    let dhb = out.dhb.as_deref().unwrap_or(out.dh);
    let bound = [
        head.h,
        head.w,
        b,
        head.target,
        out.logits,
        out.dz,
        out.dw,
        db,
        out.dh,
        dht,
        dhb,
        log,
    ];
    launch(&ctx, &DENSE_HEAD, &constants, &params, &bound, [1, 1, 1])
}

/// The shapes, checked: (rows, hid, cols).
fn check(op: &'static str, head: &Head, out: &HeadOut) -> Result<(usize, usize, usize)> {
    if !matches!(
        head.loss,
        Loss::SparseCategoricalCrossEntropy | Loss::CategoricalCrossEntropy
    ) {
        return Err(Error::arg(
            op,
            format!("{:?} is not a softmax cross-entropy", head.loss),
        ));
    }
    if !head.act.derivative_from_output() {
        return Err(Error::arg(
            op,
            format!(
                "{:?}'s derivative cannot be computed from its output",
                head.act
            ),
        ));
    }
    let (rows, hid) = head.h.dims2(op)?;
    let (cols, _) = head.w.dims2(op)?;
    let bad = |what: &str, t: &Tensor, want: &[usize]| {
        Error::shape(op, format!("{what} is {:?}, expected {want:?}", t.shape()))
    };
    let mut want: Vec<(&str, &Tensor, Vec<usize>)> = vec![
        ("the weight", head.w, vec![cols, hid]),
        ("the logits", out.logits, vec![rows, cols]),
        ("dz", out.dz, vec![rows, cols]),
        ("dW", out.dw, vec![cols, hid]),
        ("dh", out.dh, vec![rows, hid]),
    ];
    want.extend(head.b.map(|b| ("the bias", b, vec![cols])));
    want.extend(out.db.as_deref().map(|t| ("db", t, vec![cols])));
    want.extend(out.dht.as_deref().map(|t| ("dh^T", t, vec![hid, rows])));
    want.extend(
        out.dhb
            .as_deref()
            .map(|t| ("the hidden bias gradient", t, vec![hid])),
    );
    let labels = match head.loss {
        Loss::SparseCategoricalCrossEntropy => head.target.len() == rows,
        _ => head.target.shape() == [rows, cols],
    };
    if !labels {
        return Err(Error::shape(
            op,
            format!(
                "targets {:?} for {rows} rows of {cols} classes",
                head.target.shape()
            ),
        ));
    }
    for (what, t, shape) in want {
        if t.shape() != shape.as_slice() {
            return Err(bad(what, t, &shape));
        }
    }
    if rows == 0 || hid == 0 || cols == 0 {
        return Err(Error::shape(op, "an empty batch or layer"));
    }
    Ok((rows, hid, cols))
}

/// The CPU reference: the unfused ops in sequence (each tested against its own oracle).
fn cpu(head: Head, out: HeadOut, log: &mut Tensor, slot: usize) -> Result<()> {
    let device = Device::Cpu;
    Gemm::nt().run_into(head.h, head.w, head.b, out.logits)?;
    loss_and_grad_at(head.loss, out.logits, head.target, out.dz, log, slot)?;
    Gemm::tn().run_into(out.dz, head.h, None, out.dw)?;
    if let Some(db) = out.db {
        bias_grad_into(out.dz, db)?;
    }
    let mut dh = Tensor::zeros(&device, out.dh.shape())?;
    Gemm::nn().run_into(out.dz, head.w, None, &mut dh)?;
    let (rows, hid) = (dh.shape()[0], dh.shape()[1]);
    let mut scratch;
    let dzt = match out.dht {
        Some(t) => t,
        None => {
            scratch = Tensor::zeros(&device, &[hid, rows])?;
            &mut scratch
        }
    };
    let grads = DenseGrad {
        dz: out.dh,
        dzt,
        db: out.dhb,
    };
    dense_grad_into(head.act, head.h, &dh, grads)
}
