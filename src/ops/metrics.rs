//! Metrics accumulated on the device across batches and read back once per epoch:
//! a confusion matrix (accuracy, precision, recall, F1) and error sums (MAE, MSE).
//!
//! The accumulators are ordinary tensors the caller zeroes at the start of an epoch;
//! each batch only records dispatches that add into them.

use super::{device_of, host, launch, WG};
use crate::device::{Device, GpuContext, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};
use std::sync::Arc;

pub(super) const CONFUSION_LOCAL: Kernel = Kernel {
    file: "metrics.wgsl",
    source: include_str!("../../shaders/metrics.wgsl"),
    entry: "confusion_local",
    inputs: 2,
    outputs: 1,
    bounds_checks: true,
};
pub(super) const CONFUSION_GLOBAL: Kernel = Kernel {
    entry: "confusion_global",
    ..CONFUSION_LOCAL
};
pub(super) const ABS_SQ: Kernel = Kernel {
    entry: "abs_sq",
    ..CONFUSION_LOCAL
};
pub(super) const ABS_SQ_FINISH: Kernel = Kernel {
    entry: "abs_sq_finish",
    inputs: 1,
    outputs: 1,
    bounds_checks: true,
    ..CONFUSION_LOCAL
};

/// The uniform block of shaders/metrics.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    /// Rows (confusion) or elements (abs_sq), or partial pairs (abs_sq_finish).
    pub(super) n: u32,
    /// Classes: columns of the scores and the side of the confusion matrix.
    pub(super) classes: u32,
    /// Binary confusion: a score above it predicts class 1.
    pub(super) threshold: f32,
}

impl Params {
    /// The block of abs_sq and abs_sq_finish: `n` items, no classes.
    fn items(n: usize) -> Params {
        Params {
            n: n as u32,
            classes: 0,
            threshold: 0.0,
        }
    }
}

/// Cells of the shader's workgroup-local histogram (`LOCAL_CELLS` in metrics.wgsl).
const LOCAL_CELLS: usize = 2048;
/// Rows or elements each GPU thread handles before its workgroup combines them.
const PER_THREAD: usize = 8;
/// Most workgroups a metric kernel uses; past that, threads loop.
const MAX_GROUPS: usize = 1024;

fn groups_for(items: usize) -> u32 {
    items
        .div_ceil(WG as usize * PER_THREAD)
        .clamp(1, MAX_GROUPS) as u32
}

/// Adds the batch's `[true, predicted]` pairs into `counts` (`[classes, classes]`, f32,
/// exact up to 2^24 per cell); the prediction is the argmax of each row of
/// `pred` (`[rows, classes]`), the first maximum on ties, and `labels` (`[rows]`) holds
/// class ids as f32.
///
/// A label outside `[0, classes)` or not an integer is an `InvalidArgument` error on the
/// CPU; the GPU cannot report it and leaves that row uncounted, so the matrix's total
/// falls short of the rows seen.
pub fn confusion_accumulate(pred: &Tensor, labels: &Tensor, counts: &mut Tensor) -> Result<()> {
    let op = "confusion_accumulate";
    // [B, T, classes] scores are B * T rows, one per position.
    let (rows, classes) = match pred.shape() {
        [lead @ .., c] if !lead.is_empty() => (lead.iter().product(), *c),
        s => {
            return Err(Error::shape(
                op,
                format!("scores must be [rows, classes], got {s:?}"),
            ))
        }
    };
    if classes == 0 {
        return Err(Error::shape(op, "scores have no class columns"));
    }
    check_confusion(op, rows, classes, labels, counts)?;
    match device_of(op, &[pred, labels, counts])? {
        Device::Cpu => {
            let x = host(pred);
            confusion_cpu(op, host(labels), classes, counts, |r| {
                let row = &x[r * classes..(r + 1) * classes];
                // A strict comparison keeps the first of equal maxima.
                let mut k = 0;
                for (j, &v) in row.iter().enumerate().skip(1) {
                    if v > row[k] {
                        k = j;
                    }
                }
                k
            })
        }
        Device::Gpu(ctx) => confusion_gpu(&ctx, pred, labels, counts, (1, rows), classes, None),
    }
}

/// [`confusion_accumulate`] for stacked trials: `pred` is `[trials, rows, classes]`, the
/// labels (`[rows]`) are shared, and trial `t`'s pairs go into `counts[t]`
/// (`[trials, classes, classes]`). One dispatch for every trial.
pub fn confusion_accumulate_stacked(
    pred: &Tensor,
    labels: &Tensor,
    counts: &mut Tensor,
) -> Result<()> {
    let op = "confusion_accumulate_stacked";
    let &[trials, rows, classes] = pred.shape() else {
        return Err(Error::shape(
            op,
            format!(
                "scores must be [trials, rows, classes], got {:?}",
                pred.shape()
            ),
        ));
    };
    if trials * classes == 0 || counts.shape() != [trials, classes, classes] {
        return Err(Error::shape(
            op,
            format!(
                "counts {:?} for scores {:?}: want [trials, classes, classes]",
                counts.shape(),
                pred.shape()
            ),
        ));
    }
    if labels.len() != rows {
        return Err(Error::shape(
            op,
            format!("labels {:?} for {rows} rows", labels.shape()),
        ));
    }
    let cells = classes * classes;
    match device_of(op, &[pred, labels, counts])? {
        Device::Cpu => {
            let x = host(pred);
            for t in 0..trials {
                let mut one = Tensor::zeros(&Device::Cpu, &[classes, classes])?;
                let scores = &x[t * rows * classes..(t + 1) * rows * classes];
                let scores = Tensor::from_slice(&Device::Cpu, scores, &[rows, classes])?;
                confusion_accumulate(&scores, labels, &mut one)?;
                let c = counts.host_mut().ok_or(Error::DeviceMismatch { op })?;
                for (c, v) in c[t * cells..(t + 1) * cells].iter_mut().zip(host(&one)) {
                    *c += v;
                }
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            confusion_gpu(&ctx, pred, labels, counts, (trials, rows), classes, None)
        }
    }
}

/// Adds a binary batch into `counts` (`[2, 2]`): the prediction is 1 where the score in
/// `pred` (`[rows, 1]` or `[rows]`) is above `threshold` (0.5 for probabilities, 0 for
/// logits), and `labels` (`[rows]`) holds 0 or 1.
///
/// Bad labels behave as in [`confusion_accumulate`].
pub fn confusion_accumulate_binary(
    pred: &Tensor,
    labels: &Tensor,
    threshold: f32,
    counts: &mut Tensor,
) -> Result<()> {
    let op = "confusion_accumulate_binary";
    let rows = match pred.shape() {
        [r] | [r, 1] => *r,
        s => {
            return Err(Error::shape(
                op,
                format!("binary scores must be [rows, 1] or [rows], got {s:?}"),
            ))
        }
    };
    check_confusion(op, rows, 2, labels, counts)?;
    match device_of(op, &[pred, labels, counts])? {
        Device::Cpu => {
            let x = host(pred);
            confusion_cpu(op, host(labels), 2, counts, |r| {
                usize::from(x[r] > threshold)
            })
        }
        Device::Gpu(ctx) => {
            confusion_gpu(&ctx, pred, labels, counts, (1, rows), 2, Some(threshold))
        }
    }
}

fn check_confusion(
    op: &str,
    rows: usize,
    classes: usize,
    labels: &Tensor,
    counts: &Tensor,
) -> Result<()> {
    // [B, T] ids label the B * T rows of [B, T, classes] predictions.
    if labels.len() != rows || labels.shape().len() > 2 {
        return Err(Error::shape(
            op,
            format!(
                "labels must be [{rows}], one class id per row, got {:?}",
                labels.shape()
            ),
        ));
    }
    if counts.shape() != [classes, classes] {
        return Err(Error::shape(
            op,
            format!(
                "counts must be [{classes}, {classes}], got {:?}",
                counts.shape()
            ),
        ));
    }
    Ok(())
}

fn confusion_cpu(
    op: &'static str,
    labels: &[f32],
    classes: usize,
    counts: &mut Tensor,
    predicted: impl Fn(usize) -> usize,
) -> Result<()> {
    // Check every label before counting anything.
    for (r, &y) in labels.iter().enumerate() {
        if !(y >= 0.0 && (y as f64) < classes as f64 && y.fract() == 0.0) {
            return Err(Error::arg(
                "label",
                format!("row {r} has class {y}, outside [0, {classes}) for {classes} classes"),
            ));
        }
    }
    let c = counts.host_mut().ok_or(Error::DeviceMismatch { op })?;
    for (r, &y) in labels.iter().enumerate() {
        c[y as usize * classes + predicted(r)] += 1.0;
    }
    Ok(())
}

fn confusion_gpu(
    ctx: &Arc<GpuContext>,
    pred: &Tensor,
    labels: &Tensor,
    counts: &Tensor,
    (trials, rows): (usize, usize),
    classes: usize,
    threshold: Option<f32>,
) -> Result<()> {
    let kernel = if classes * classes <= LOCAL_CELLS {
        &CONFUSION_LOCAL
    } else {
        &CONFUSION_GLOBAL
    };
    let params = Params {
        n: rows as u32,
        classes: classes as u32,
        threshold: threshold.unwrap_or(0.0),
    };
    let constants = [("BINARY", if threshold.is_some() { 1.0 } else { 0.0 })];
    let groups = [groups_for(rows), 1, trials as u32];
    launch(
        ctx,
        kernel,
        &constants,
        &params,
        &[pred, labels, counts],
        groups,
    )
}

/// Adds sum |pred - target| into `sums[0]` and sum (pred - target)^2 into `sums[1]`
/// (`sums` is `[2]`; `pred` and `target` share any shape). Divide by the element count
/// at the end of the epoch for MAE and MSE.
pub fn abs_sq_error_accumulate(pred: &Tensor, target: &Tensor, sums: &mut Tensor) -> Result<()> {
    let op = "abs_sq_error_accumulate";
    if !super::same_samples(pred, target) {
        return Err(Error::shape(
            op,
            format!(
                "predictions {:?} vs targets {:?}",
                pred.shape(),
                target.shape()
            ),
        ));
    }
    if sums.shape() != [2] {
        return Err(Error::shape(
            op,
            format!("sums must be [2], got {:?}", sums.shape()),
        ));
    }
    match device_of(op, &[pred, target, sums])? {
        Device::Cpu => {
            let (mut a, mut s) = (0.0f64, 0.0f64);
            for (&x, &t) in host(pred).iter().zip(host(target)) {
                let e = x as f64 - t as f64;
                a += e.abs();
                s += e * e;
            }
            let out = sums.host_mut().ok_or(Error::DeviceMismatch { op })?;
            out[0] = (out[0] as f64 + a) as f32;
            out[1] = (out[1] as f64 + s) as f32;
            Ok(())
        }
        Device::Gpu(ctx) => {
            let n = pred.len();
            if n == 0 {
                return Ok(());
            }
            let groups = groups_for(n);
            let params = Params::items(n);
            if groups == 1 {
                // One workgroup adds straight into the running sums.
                return launch(
                    &ctx,
                    &ABS_SQ,
                    &[],
                    &params,
                    &[pred, target, sums],
                    [1, 1, 1],
                );
            }
            let part = Tensor::uninit(&pred.device(), &[groups as usize, 2])?;
            launch(
                &ctx,
                &ABS_SQ,
                &[],
                &params,
                &[pred, target, &part],
                [groups, 1, 1],
            )?;
            launch(
                &ctx,
                &ABS_SQ_FINISH,
                &[],
                &Params::items(groups as usize),
                &[&part, sums],
                [1, 1, 1],
            )
        }
    }
}

/// A confusion matrix on the host, `count(true, predicted)`, with the usual metrics.
///
/// Per-class metrics whose denominator is zero are 0, as scikit-learn returns them by
/// default (with a warning). Macro averages are over the classes that occur as a label
/// or a prediction, as scikit-learn does when it is not given `labels=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    classes: usize,
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// A matrix from row-major counts (`classes * classes` of them).
    pub fn new(classes: usize, counts: Vec<u64>) -> Result<Self> {
        if classes.checked_mul(classes) != Some(counts.len()) {
            return Err(Error::shape(
                "ConfusionMatrix::new",
                format!(
                    "{classes} classes need {classes} x {classes} counts, got {}",
                    counts.len()
                ),
            ));
        }
        Ok(ConfusionMatrix { classes, counts })
    }

    /// Downloads a `[classes, classes]` counts tensor (the one read-back of an epoch).
    pub fn from_tensor(counts: &Tensor) -> Result<Self> {
        let op = "ConfusionMatrix::from_tensor";
        let classes = match counts.shape() {
            [a, b] if a == b => *a,
            s => {
                return Err(Error::shape(
                    op,
                    format!("counts must be square, got {s:?}"),
                ))
            }
        };
        let values = counts.to_vec()?;
        let counts = values
            .iter()
            .map(|&v| {
                if v >= 0.0 && v.fract() == 0.0 && v < (1u64 << 24) as f32 {
                    Ok(v as u64)
                } else {
                    Err(Error::arg(
                        "counts",
                        format!("{v} is not an exact count (a non-negative integer below 2^24)"),
                    ))
                }
            })
            .collect::<Result<Vec<u64>>>()?;
        Self::new(classes, counts)
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Rows whose true class is `truth` and predicted class is `predicted` (0 outside the matrix).
    pub fn count(&self, truth: usize, predicted: usize) -> u64 {
        if truth >= self.classes || predicted >= self.classes {
            return 0;
        }
        self.counts[truth * self.classes + predicted]
    }

    /// All rows counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn correct(&self, class: usize) -> u64 {
        self.count(class, class)
    }

    /// Rows whose true class is `class`.
    pub fn support(&self, class: usize) -> u64 {
        (0..self.classes).map(|p| self.count(class, p)).sum()
    }

    /// Rows predicted as `class`.
    pub fn predicted(&self, class: usize) -> u64 {
        (0..self.classes).map(|t| self.count(t, class)).sum()
    }

    /// Fraction of rows predicted correctly (0 for an empty matrix).
    pub fn accuracy(&self) -> f64 {
        ratio(
            (0..self.classes).map(|c| self.correct(c)).sum(),
            self.total(),
        )
    }

    /// tp / (tp + fp) of `class`.
    pub fn precision(&self, class: usize) -> f64 {
        ratio(self.correct(class), self.predicted(class))
    }

    /// tp / (tp + fn) of `class`.
    pub fn recall(&self, class: usize) -> f64 {
        ratio(self.correct(class), self.support(class))
    }

    /// 2 tp / (2 tp + fp + fn) of `class`, the harmonic mean of precision and recall.
    pub fn f1(&self, class: usize) -> f64 {
        ratio(
            2 * self.correct(class),
            self.support(class) + self.predicted(class),
        )
    }

    fn macro_mean(&self, metric: impl Fn(usize) -> f64) -> f64 {
        let present: Vec<usize> = (0..self.classes)
            .filter(|&c| self.support(c) + self.predicted(c) > 0)
            .collect();
        if present.is_empty() {
            return 0.0;
        }
        present.iter().map(|&c| metric(c)).sum::<f64>() / present.len() as f64
    }

    /// Unweighted mean of the per-class precisions.
    pub fn macro_precision(&self) -> f64 {
        self.macro_mean(|c| self.precision(c))
    }

    /// Unweighted mean of the per-class recalls.
    pub fn macro_recall(&self) -> f64 {
        self.macro_mean(|c| self.recall(c))
    }

    /// Unweighted mean of the per-class F1 scores.
    pub fn macro_f1(&self) -> f64 {
        self.macro_mean(|c| self.f1(c))
    }
}

/// a / b, with 0 when b is 0 (scikit-learn's zero_division default).
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
