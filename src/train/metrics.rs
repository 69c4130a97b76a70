//! Metrics, accumulated on the device over an epoch and read back once.

use super::Evaluation;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::metrics::{
    abs_sq_error_accumulate, confusion_accumulate, confusion_accumulate_binary, ConfusionMatrix,
};
use crate::ops::reduce::argmax_rows_into;
use crate::tensor::Tensor;

/// A metric reported by `fit` and `evaluate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Fraction of rows whose argmax (or thresholded score) equals the label.
    Accuracy,
    /// Accuracy of a one-output model thresholded at 0.5 probability.
    BinaryAccuracy,
    /// Macro-averaged precision.
    Precision,
    /// Macro-averaged recall.
    Recall,
    /// Macro-averaged F1.
    F1,
    /// Mean squared error.
    Mse,
    /// Mean absolute error.
    Mae,
}

impl Metric {
    /// The name used in logs and `History`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::BinaryAccuracy => "binary_accuracy",
            Metric::Precision => "precision",
            Metric::Recall => "recall",
            Metric::F1 => "f1",
            Metric::Mse => "mse",
            Metric::Mae => "mae",
        }
    }

    /// Parses a metric name.
    pub fn from_name(name: &str) -> Option<Metric> {
        [
            Metric::Accuracy,
            Metric::BinaryAccuracy,
            Metric::Precision,
            Metric::Recall,
            Metric::F1,
            Metric::Mse,
            Metric::Mae,
        ]
        .into_iter()
        .find(|m| m.name() == name || (name == "acc" && *m == Metric::Accuracy))
    }

    fn needs_confusion(self) -> bool {
        !matches!(self, Metric::Mse | Metric::Mae)
    }
}

/// Device-side sums for one epoch (or one evaluation).
pub(crate) struct Accumulator {
    metrics: Vec<Metric>,
    /// Each batch's mean loss, written there by the loss kernel (see `loss_slot`).
    losses: Tensor,
    /// Each batch's rows, to weight its mean loss.
    batch_rows: Vec<usize>,
    confusion: Option<Tensor>,
    errors: Option<Tensor>,
    /// Threshold for one-output classifiers: 0 on logits, 0.5 on probabilities.
    threshold: f32,
    rows: usize,
    width: usize,
}

impl Accumulator {
    /// Sums for up to `batches` batches of `outputs` outputs each.
    pub fn new(
        device: &Device,
        metrics: &[Metric],
        outputs: usize,
        logits: bool,
        batches: usize,
    ) -> Result<Accumulator> {
        let classes = outputs.max(2);
        let confusion = if metrics.iter().any(|m| m.needs_confusion()) {
            Some(Tensor::zeros(device, &[classes, classes])?)
        } else {
            None
        };
        let errors = if metrics.iter().any(|m| !m.needs_confusion()) {
            Some(Tensor::zeros(device, &[2])?)
        } else {
            None
        };
        Ok(Accumulator {
            metrics: metrics.to_vec(),
            losses: Tensor::zeros(device, &[batches.max(1)])?,
            batch_rows: Vec::with_capacity(batches),
            confusion,
            errors,
            threshold: if logits { 0.0 } else { 0.5 },
            rows: 0,
            width: outputs,
        })
    }

    /// Where the next batch's loss kernel writes its mean: the log and the slot. No
    /// dispatch per step adds it up; `finish` reads the log back once.
    pub fn loss_slot(&mut self) -> Result<(&mut Tensor, usize)> {
        let slot = self.batch_rows.len();
        if slot >= self.losses.len() {
            return Err(Error::arg(
                "accumulator",
                "more batches than it was made for",
            ));
        }
        Ok((&mut self.losses, slot))
    }

    /// Adds one batch of `rows` rows, whose loss is in the `loss_slot` just handed out:
    /// its outputs and targets go into the metrics' sums.
    pub fn add(&mut self, out: &Tensor, target: &Tensor, rows: usize) -> Result<()> {
        self.batch_rows.push(rows);
        if let Some(c) = self.confusion.as_mut() {
            // Classes are the last axis ([B, T, V] sequences: one label per position).
            if out.shape().last().copied().unwrap_or(1) == 1 {
                confusion_accumulate_binary(out, target, self.threshold, c)?;
            } else if target.len() == out.len() {
                // One-hot (or soft) targets: the label is the target's argmax, at each
                // position of sequence outputs (whose targets come packed flat).
                let (label_rows, classes) = out.dims2("metrics")?;
                let packed;
                let one_hot = if target.dims2("metrics")? == (label_rows, classes) {
                    target
                } else {
                    packed = target.try_clone()?.reshape(&[label_rows, classes])?;
                    &packed
                };
                let mut labels = Tensor::uninit(&out.device(), &[label_rows])?;
                argmax_rows_into(one_hot, &mut labels)?;
                confusion_accumulate(out, &labels, c)?;
            } else {
                confusion_accumulate(out, target, c)?;
            }
        }
        if let Some(e) = self.errors.as_mut() {
            abs_sq_error_accumulate(out, target, e)?;
        }
        self.rows += rows;
        Ok(())
    }

    /// The row-weighted mean of the batch losses so far (reads the log back).
    pub fn mean_loss(&self) -> Result<f64> {
        let losses = self.losses.to_vec()?;
        let sum: f64 = (losses.iter().zip(&self.batch_rows))
            .map(|(&l, &r)| l as f64 * r as f64)
            .sum();
        Ok(sum / self.rows.max(1) as f64)
    }

    /// Reads the sums back (the one readback of an epoch) and returns (loss, metrics).
    pub fn finish(&self) -> Result<Evaluation> {
        self.finish_from(&self.sums()?)
    }

    /// Everything `finish` needs, as numbers that add across replicas: loss × rows, rows,
    /// the absolute and squared errors, then the confusion counts. Data-parallel training
    /// sums these over the ranks, so every rank reports the metrics of the whole batch.
    pub fn sums(&self) -> Result<Vec<f64>> {
        let losses = self.losses.to_vec()?;
        let loss: f64 = (losses.iter().zip(&self.batch_rows))
            .map(|(&l, &r)| l as f64 * r as f64)
            .sum();
        let errors = match &self.errors {
            Some(e) => e.to_vec()?,
            None => vec![0.0, 0.0],
        };
        let mut sums = vec![loss, self.rows as f64, errors[0] as f64, errors[1] as f64];
        if let Some(c) = &self.confusion {
            // Through ConfusionMatrix, which refuses counts an f32 no longer holds exactly.
            let m = ConfusionMatrix::from_tensor(c)?;
            let k = m.classes();
            sums.extend((0..k * k).map(|i| m.count(i / k, i % k) as f64));
        }
        Ok(sums)
    }

    /// (loss, metrics) from [`Accumulator::sums`], this accumulator's or a sum of several.
    pub fn finish_from(&self, sums: &[f64]) -> Result<Evaluation> {
        let [loss, rows, abs, sq, counts @ ..] = sums else {
            return Err(Error::arg("metric sums", "fewer than four values"));
        };
        let confusion = match &self.confusion {
            Some(c) => Some(ConfusionMatrix::new(
                c.shape()[0],
                counts.iter().map(|&v| v as u64).collect(),
            )?),
            None => None,
        };
        let elements = if self.errors.is_some() {
            rows * self.width as f64
        } else {
            1.0
        };
        let mut out = Vec::new();
        for m in &self.metrics {
            let v = match (m, &confusion) {
                (Metric::Mse, _) => sq / elements,
                (Metric::Mae, _) => abs / elements,
                (Metric::Accuracy | Metric::BinaryAccuracy, Some(c)) => c.accuracy(),
                (Metric::Precision, Some(c)) => c.macro_precision(),
                (Metric::Recall, Some(c)) => c.macro_recall(),
                (Metric::F1, Some(c)) => c.macro_f1(),
                _ => return Err(Error::arg("metric", "internal: confusion matrix missing")),
            };
            out.push((m.name().to_string(), v));
        }
        Ok(Evaluation {
            loss: loss / rows.max(1.0),
            metrics: out,
            confusion,
        })
    }
}
