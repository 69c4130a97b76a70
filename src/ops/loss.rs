//! Losses: the mean loss over a batch and its gradient with respect to the predictions.
//!
//! The value stays on the device as a `[1]` tensor, so a training loop reads it back
//! only when it wants to (e.g. once per epoch). On the GPU one kernel computes the
//! gradient and each workgroup's share of the loss; batches that fit one workgroup
//! (256 rows for the categorical losses, 4096 elements for the others) write the mean
//! directly, larger ones take one more dispatch to sum the shares.

use super::{device_of, host, launch, WG};
use crate::device::{Device, GpuContext, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};
use std::sync::Arc;

pub(super) const ELEM_GRAD: Kernel = Kernel {
    file: "loss.wgsl",
    source: include_str!("../../shaders/loss.wgsl"),
    entry: "elem_grad",
    inputs: 2,
    outputs: 2,
    bounds_checks: true,
};
pub(super) const ELEM_VALUE: Kernel = Kernel {
    entry: "elem_value",
    outputs: 1,
    bounds_checks: true,
    ..ELEM_GRAD
};
pub(super) const ROWS_GRAD: Kernel = Kernel {
    entry: "rows_grad",
    ..ELEM_GRAD
};
pub(super) const ROWS_VALUE: Kernel = Kernel {
    entry: "rows_value",
    outputs: 1,
    bounds_checks: true,
    ..ELEM_GRAD
};
pub(super) const FINISH: Kernel = Kernel {
    entry: "finish",
    inputs: 1,
    outputs: 1,
    bounds_checks: true,
    ..ELEM_GRAD
};

/// The uniform block of shaders/loss.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    /// Items: elements (elementwise losses) or rows (categorical losses); finish: partials.
    pub(super) n: u32,
    /// Classes per row, for the categorical losses.
    pub(super) cols: u32,
    /// 1 / items: turns the sum into the mean and scales the gradient.
    pub(super) scale: f32,
    /// A quiet NaN's bits: WGSL has no NaN constant.
    pub(super) nan: u32,
    /// Where the mean goes in the value tensor.
    pub(super) slot: u32,
    /// Stacked trials: values between trials' slots (see [`stacked_softmax_ce_at`]).
    pub(super) stride: u32,
}

/// Elements each GPU thread sums for the elementwise losses before the workgroup reduction.
const ELEMS_PER_THREAD: usize = 16;
/// Most workgroups a loss kernel uses; past that, threads loop (keeps `finish` short).
const MAX_GROUPS: usize = 1024;
/// Keras' epsilon: probabilities are clamped to [EPS, 1 - EPS] before the log.
const EPS: f64 = 1e-7;
/// A quiet NaN, passed to the shaders as bits (WGSL has no NaN constant).
const NAN_BITS: u32 = 0x7fc0_0000;

/// A loss function of predictions `[rows, cols]` and targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Mean squared error over all elements; targets have the predictions' shape.
    Mse,
    /// Mean absolute error over all elements; the gradient at zero error is 0.
    Mae,
    /// Binary cross-entropy, mean over all elements; targets in [0, 1], predictions'
    /// shape. From logits it uses the stable max(x,0) - x*t + log(1+exp(-|x|)); from
    /// probabilities it clamps p to [1e-7, 1 - 1e-7] like Keras (no gradient past the clamp).
    BinaryCrossEntropy {
        /// Predictions are logits (true) or probabilities (false).
        from_logits: bool,
    },
    /// Softmax cross-entropy from logits with one-hot (or soft) targets of the
    /// predictions' shape, mean over rows.
    CategoricalCrossEntropy,
    /// Softmax cross-entropy from logits with integer class ids stored as f32 in a
    /// `[rows]` (or `[rows, 1]`) tensor, mean over rows. Logits `[B, T, V]` with ids
    /// `[B, T]` are B * T rows: the mean over every position, as PyTorch's
    /// `F.cross_entropy(logits.view(-1, V), targets.view(-1))`.
    ///
    /// A label outside `[0, cols)` or not an integer is an `InvalidArgument` error on the
    /// CPU; on the GPU, which cannot report errors, it makes the loss value NaN (and the
    /// gradient of its row NaN) so that training detects it.
    SparseCategoricalCrossEntropy,
}

impl Loss {
    /// The code the shader switches on (see shaders/loss.wgsl).
    pub(crate) fn code(self) -> u32 {
        match self {
            Loss::Mse => 0,
            Loss::Mae => 1,
            Loss::BinaryCrossEntropy { from_logits: true } => 2,
            Loss::BinaryCrossEntropy { from_logits: false } => 3,
            Loss::CategoricalCrossEntropy => 4,
            Loss::SparseCategoricalCrossEntropy => 5,
        }
    }

    /// True for the softmax losses, which are means over rows rather than elements.
    fn per_row(self) -> bool {
        matches!(
            self,
            Loss::CategoricalCrossEntropy | Loss::SparseCategoricalCrossEntropy
        )
    }

    /// CPU reference of one element of an elementwise loss: (loss, d loss / d x).
    fn element(self, x: f64, t: f64) -> (f64, f64) {
        match self {
            Loss::Mse => {
                let e = x - t;
                (e * e, 2.0 * e)
            }
            Loss::Mae => {
                let e = x - t;
                // f64::signum(0.0) is 1; the subgradient at zero error is 0 (as in PyTorch).
                let s = if e > 0.0 {
                    1.0
                } else if e < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                (e.abs(), s)
            }
            Loss::BinaryCrossEntropy { from_logits: true } => {
                let l = x.max(0.0) - x * t + (-x.abs()).exp().ln_1p();
                let sig = if x >= 0.0 {
                    1.0 / (1.0 + (-x).exp())
                } else {
                    x.exp() / (1.0 + x.exp())
                };
                (l, sig - t)
            }
            Loss::BinaryCrossEntropy { from_logits: false } => {
                let q = x.clamp(EPS, 1.0 - EPS);
                let q1 = (1.0 - x).clamp(EPS, 1.0 - EPS);
                let l = -(t * q.ln() + (1.0 - t) * q1.ln());
                let g = if (EPS..=1.0 - EPS).contains(&x) {
                    (1.0 - t) / q1 - t / q
                } else {
                    0.0
                };
                (l, g)
            }
            // Softmax losses are computed per row and never reach here; a NaN (rather
            // than a panic) would make any test of a broken caller fail loudly.
            Loss::CategoricalCrossEntropy | Loss::SparseCategoricalCrossEntropy => {
                (f64::NAN, f64::NAN)
            }
        }
    }
}

/// Checks the operands and returns (rows, cols) of the predictions.
fn check(op: &str, loss: Loss, pred: &Tensor, target: &Tensor) -> Result<(usize, usize)> {
    let (rows, cols) = pred.dims2(op)?;
    if rows == 0 || cols == 0 {
        return Err(Error::shape(
            op,
            format!(
                "predictions {:?} are empty; a mean over no items is undefined",
                pred.shape()
            ),
        ));
    }
    if loss == Loss::SparseCategoricalCrossEntropy {
        // One id per row: [rows], [rows, 1], or the predictions' leading axes ([B, T] ids
        // for [B, T, V] logits: every position of every sequence).
        let leading = &pred.shape()[..pred.shape().len().saturating_sub(1)];
        if target.shape() != [rows] && target.shape() != [rows, 1] && target.shape() != leading {
            return Err(Error::shape(
                op,
                format!(
                    "sparse labels must be [{rows}] (one class id per row of predictions {:?}), got {:?}",
                    pred.shape(),
                    target.shape()
                ),
            ));
        }
    } else if !super::same_samples(pred, target) {
        return Err(Error::shape(
            op,
            format!(
                "targets {:?} must have the predictions' shape {:?} for {loss:?}",
                target.shape(),
                pred.shape()
            ),
        ));
    }
    Ok((rows, cols))
}

fn check_value(op: &str, value: &Tensor) -> Result<()> {
    if value.shape() == [1] {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("the loss value must be [1], got {:?}", value.shape()),
        ))
    }
}

fn check_slot(op: &str, log: &Tensor, slot: usize) -> Result<()> {
    if log.shape().len() == 1 && slot < log.len() {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("slot {slot} of a loss log shaped {:?}", log.shape()),
        ))
    }
}

/// Computes the mean `loss` of `pred` against `target` into `value` (`[1]`) and its
/// gradient with respect to `pred` into `grad` (the shape of `pred`).
///
/// `pred` is `[rows, cols]` (a 1-D tensor is one row). Nothing is read back from the GPU.
pub fn loss_and_grad_into(
    loss: Loss,
    pred: &Tensor,
    target: &Tensor,
    grad: &mut Tensor,
    value: &mut Tensor,
) -> Result<()> {
    check_value("loss_and_grad", value)?;
    loss_and_grad_at(loss, pred, target, grad, value, 0)
}

/// [`loss_and_grad_into`] writing the mean into `log[slot]` (`log` 1-D): a training loop
/// keeps each step's loss on the device that way and reads them all back at once.
pub fn loss_and_grad_at(
    loss: Loss,
    pred: &Tensor,
    target: &Tensor,
    grad: &mut Tensor,
    log: &mut Tensor,
    slot: usize,
) -> Result<()> {
    let op = "loss_and_grad";
    let (rows, cols) = check(op, loss, pred, target)?;
    if grad.shape() != pred.shape() {
        return Err(Error::shape(
            op,
            format!(
                "gradient {:?} must have the predictions' shape {:?}",
                grad.shape(),
                pred.shape()
            ),
        ));
    }
    check_slot(op, log, slot)?;
    match device_of(op, &[pred, target, grad, log])? {
        Device::Cpu => {
            let g = grad.host_mut().ok_or(Error::DeviceMismatch { op })?;
            let mean = cpu(loss, host(pred), host(target), rows, cols, Some(g))?;
            write_value(log, slot, mean, op)
        }
        Device::Gpu(ctx) => gpu(
            &ctx,
            loss,
            pred,
            target,
            Some(grad),
            (log, slot),
            rows,
            cols,
        ),
    }
}

/// Computes only the mean `loss` into `value` (`[1]`), for evaluation.
pub fn loss_value_into(
    loss: Loss,
    pred: &Tensor,
    target: &Tensor,
    value: &mut Tensor,
) -> Result<()> {
    check_value("loss_value", value)?;
    loss_value_at(loss, pred, target, value, 0)
}

/// [`loss_value_into`] writing the mean into `log[slot]` (`log` 1-D).
pub fn loss_value_at(
    loss: Loss,
    pred: &Tensor,
    target: &Tensor,
    log: &mut Tensor,
    slot: usize,
) -> Result<()> {
    let op = "loss_value";
    let (rows, cols) = check(op, loss, pred, target)?;
    check_slot(op, log, slot)?;
    match device_of(op, &[pred, target, log])? {
        Device::Cpu => {
            let mean = cpu(loss, host(pred), host(target), rows, cols, None)?;
            write_value(log, slot, mean, op)
        }
        Device::Gpu(ctx) => gpu(&ctx, loss, pred, target, None, (log, slot), rows, cols),
    }
}

/// The mean loss (`[1]`) and its gradient with respect to `pred`, newly allocated.
pub fn loss_and_grad(loss: Loss, pred: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor)> {
    let device = pred.device();
    let mut grad = Tensor::uninit(&device, pred.shape())?;
    let mut value = Tensor::uninit(&device, &[1])?;
    loss_and_grad_into(loss, pred, target, &mut grad, &mut value)?;
    Ok((value, grad))
}

/// The mean loss (`[1]`), newly allocated.
pub fn loss_value(loss: Loss, pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let mut value = Tensor::uninit(&pred.device(), &[1])?;
    loss_value_into(loss, pred, target, &mut value)?;
    Ok(value)
}

/// Softmax cross-entropy of `trials` stacked trials: `logits` is `[trials, rows, cols]`,
/// `target` the rows' shared targets (class ids, or one-hot rows), trial `t`'s mean loss
/// goes to `log[slot + t * stride]` and, when asked for, its gradient into `grad` (the
/// logits' shape). One dispatch, one workgroup per trial.
pub fn stacked_softmax_ce_at(
    loss: Loss,
    logits: &Tensor,
    target: &Tensor,
    grad: Option<&mut Tensor>,
    (log, slot, stride): (&mut Tensor, usize, usize),
) -> Result<()> {
    let op = "stacked_softmax_ce";
    if !loss.per_row() {
        return Err(Error::arg(
            op,
            format!("{loss:?} is not a softmax cross-entropy"),
        ));
    }
    let &[trials, rows, cols] = logits.shape() else {
        return Err(Error::shape(
            op,
            format!(
                "logits must be [trials, rows, cols], got {:?}",
                logits.shape()
            ),
        ));
    };
    let targets_ok = match loss {
        Loss::SparseCategoricalCrossEntropy => target.len() == rows,
        _ => target.shape() == [rows, cols],
    };
    if !targets_ok || trials * rows * cols == 0 {
        return Err(Error::shape(
            op,
            format!(
                "targets {:?} for logits {:?} ({loss:?})",
                target.shape(),
                logits.shape()
            ),
        ));
    }
    if grad.as_deref().is_some_and(|g| g.shape() != logits.shape()) {
        return Err(Error::shape(op, "the gradient must have the logits' shape"));
    }
    check_slot(op, log, slot + (trials - 1) * stride)?;
    let mut operands = vec![logits, target, &*log];
    operands.extend(grad.as_deref());
    match device_of(op, &operands)? {
        Device::Cpu => {
            let (x, t, n) = (host(logits), host(target), rows * cols);
            let mut grad = grad.and_then(|g| g.host_mut());
            for k in 0..trials {
                let g = grad.as_deref_mut().map(|g| &mut g[k * n..(k + 1) * n]);
                let mean = cpu(loss, &x[k * n..(k + 1) * n], t, rows, cols, g)?;
                write_value(log, slot + k * stride, mean, op)?;
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let params = Params {
                n: rows as u32,
                cols: cols as u32,
                scale: (1.0 / rows as f64) as f32,
                nan: NAN_BITS,
                slot: slot as u32,
                stride: stride as u32,
            };
            let kernel = if grad.is_some() {
                &ROWS_GRAD
            } else {
                &ROWS_VALUE
            };
            let mut bound: Vec<&Tensor> = vec![logits, target, log];
            bound.extend(grad.as_deref());
            let constants = [("LOSS", loss.code() as f64)];
            launch(
                &ctx,
                kernel,
                &constants,
                &params,
                &bound,
                [1, 1, trials as u32],
            )
        }
    }
}

fn write_value(value: &mut Tensor, slot: usize, mean: f64, op: &'static str) -> Result<()> {
    let v = value.host_mut().ok_or(Error::DeviceMismatch { op })?;
    v[slot] = mean as f32;
    Ok(())
}

/// CPU reference: the mean loss, accumulated in f64, and the gradient when asked for.
fn cpu(
    loss: Loss,
    x: &[f32],
    t: &[f32],
    rows: usize,
    cols: usize,
    grad: Option<&mut [f32]>,
) -> Result<f64> {
    if !loss.per_row() {
        let n = x.len() as f64;
        let mut sum = 0.0;
        match grad {
            Some(g) => {
                for ((g, &x), &t) in g.iter_mut().zip(x).zip(t) {
                    let (l, d) = loss.element(x as f64, t as f64);
                    sum += l;
                    *g = (d / n) as f32;
                }
            }
            None => {
                for (&x, &t) in x.iter().zip(t) {
                    sum += loss.element(x as f64, t as f64).0;
                }
            }
        }
        return Ok(sum / n);
    }
    let sparse = loss == Loss::SparseCategoricalCrossEntropy;
    if sparse {
        // Check every label before writing anything.
        for (r, &y) in t.iter().enumerate() {
            if !(y >= 0.0 && (y as f64) < cols as f64 && y.fract() == 0.0) {
                return Err(Error::arg(
                    "label",
                    format!("row {r} has class {y}, outside [0, {cols}) for {cols} classes"),
                ));
            }
        }
    }
    let scale = 1.0 / rows as f64;
    let mut sum = 0.0;
    let mut grad = grad;
    for r in 0..rows {
        let xs = &x[r * cols..(r + 1) * cols];
        let m = xs.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = m + xs.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        let target = |j: usize| -> f64 {
            if sparse {
                if j == t[r] as usize {
                    1.0
                } else {
                    0.0
                }
            } else {
                t[r * cols + j] as f64
            }
        };
        let mut tsum = 0.0;
        for (j, &v) in xs.iter().enumerate() {
            let tj = target(j);
            tsum += tj;
            sum += tj * (lse - v as f64);
        }
        if let Some(g) = grad.as_deref_mut() {
            for (j, (g, &v)) in g[r * cols..(r + 1) * cols].iter_mut().zip(xs).enumerate() {
                *g = (((v as f64 - lse).exp() * tsum - target(j)) * scale) as f32;
            }
        }
    }
    Ok(sum * scale)
}

/// Workgroups for `items` at `per_thread` each, capped so `finish` stays one short pass.
fn groups_for(items: usize, per_thread: usize) -> u32 {
    items
        .div_ceil(WG as usize * per_thread)
        .clamp(1, MAX_GROUPS) as u32
}

#[allow(clippy::too_many_arguments)]
fn gpu(
    ctx: &Arc<GpuContext>,
    loss: Loss,
    pred: &Tensor,
    target: &Tensor,
    grad: Option<&mut Tensor>,
    (value, slot): (&mut Tensor, usize),
    rows: usize,
    cols: usize,
) -> Result<()> {
    let (items, groups) = if loss.per_row() {
        (rows, groups_for(rows, 1))
    } else {
        (rows * cols, groups_for(rows * cols, ELEMS_PER_THREAD))
    };
    let kernel = match (loss.per_row(), grad.is_some()) {
        (false, true) => &ELEM_GRAD,
        (false, false) => &ELEM_VALUE,
        (true, true) => &ROWS_GRAD,
        (true, false) => &ROWS_VALUE,
    };
    let params = Params {
        n: items as u32,
        cols: cols as u32,
        scale: (1.0 / items as f64) as f32,
        nan: NAN_BITS,
        slot: slot as u32,
        stride: 0,
    };
    let constants = [("LOSS", loss.code() as f64)];
    // One workgroup writes the mean straight into `value`.
    let part = if groups == 1 {
        None
    } else {
        Some(Tensor::uninit(&pred.device(), &[groups as usize])?)
    };
    let mut bound: Vec<&Tensor> = vec![pred, target, part.as_ref().unwrap_or(value)];
    bound.extend(grad.as_deref());
    launch(ctx, kernel, &constants, &params, &bound, [groups, 1, 1])?;
    if let Some(part) = &part {
        let params = Params {
            n: groups,
            cols: 0,
            ..params
        };
        launch(ctx, &FINISH, &[], &params, &[part, value], [1, 1, 1])?;
    }
    Ok(())
}
