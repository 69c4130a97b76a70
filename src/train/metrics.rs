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
    /// Sum over batches of rows * mean batch loss.
    pub loss_sum: Tensor,
    confusion: Option<Tensor>,
    errors: Option<Tensor>,
    /// Threshold for one-output classifiers: 0 on logits, 0.5 on probabilities.
    threshold: f32,
    rows: usize,
    width: usize,
}

impl Accumulator {
    pub fn new(
        device: &Device,
        metrics: &[Metric],
        outputs: usize,
        logits: bool,
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
            loss_sum: Tensor::zeros(device, &[1])?,
            confusion,
            errors,
            threshold: if logits { 0.0 } else { 0.5 },
            rows: 0,
            width: outputs,
        })
    }

    /// Adds one batch: its mean loss (on the device), outputs and targets.
    pub fn add(&mut self, loss: &Tensor, out: &Tensor, target: &Tensor, rows: usize) -> Result<()> {
        crate::ops::elementwise::axpy(rows as f32, loss, &mut self.loss_sum)?;
        if let Some(c) = self.confusion.as_mut() {
            if out.shape().get(1).copied().unwrap_or(1) == 1 {
                confusion_accumulate_binary(out, target, self.threshold, c)?;
            } else if target.shape().get(1).copied().unwrap_or(1) > 1 {
                // One-hot (or soft) targets: the label is the target's argmax.
                let mut labels = Tensor::uninit(&out.device(), &[rows])?;
                argmax_rows_into(target, &mut labels)?;
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

    /// Reads the sums back (the one readback of an epoch) and returns (loss, metrics).
    pub fn finish(&self) -> Result<Evaluation> {
        let rows = self.rows.max(1) as f64;
        let loss = self.loss_sum.to_vec()?[0] as f64 / rows;
        let confusion = match &self.confusion {
            Some(c) => Some(ConfusionMatrix::from_tensor(c)?),
            None => None,
        };
        let errors = match &self.errors {
            Some(e) => e.to_vec()?,
            None => vec![0.0, 0.0],
        };
        let elements = if self.errors.is_some() {
            self.error_elements()
        } else {
            1.0
        };
        let mut out = Vec::new();
        for m in &self.metrics {
            let v = match (m, &confusion) {
                (Metric::Mse, _) => errors[1] as f64 / elements,
                (Metric::Mae, _) => errors[0] as f64 / elements,
                (Metric::Accuracy | Metric::BinaryAccuracy, Some(c)) => c.accuracy(),
                (Metric::Precision, Some(c)) => c.macro_precision(),
                (Metric::Recall, Some(c)) => c.macro_recall(),
                (Metric::F1, Some(c)) => c.macro_f1(),
                _ => return Err(Error::arg("metric", "internal: confusion matrix missing")),
            };
            out.push((m.name().to_string(), v));
        }
        Ok(Evaluation {
            loss,
            metrics: out,
            confusion,
        })
    }

    fn error_elements(&self) -> f64 {
        self.rows as f64 * self.width as f64
    }
}
