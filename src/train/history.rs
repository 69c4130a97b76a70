//! What `fit` returns: per-epoch loss and metrics for training and validation.

/// The record of one epoch.
#[derive(Clone, Debug, Default)]
pub struct EpochLog {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (plus weight penalties).
    pub loss: f64,
    /// Training metrics, by name.
    pub metrics: Vec<(String, f64)>,
    /// Validation loss, when there is validation data.
    pub val_loss: Option<f64>,
    /// Validation metrics, by name.
    pub val_metrics: Vec<(String, f64)>,
    /// Learning rate at the end of the epoch.
    pub lr: f32,
    /// Wall-clock seconds of the training part of the epoch.
    pub seconds: f64,
}

impl EpochLog {
    /// A value by Keras's names: "loss", "accuracy", "val_loss", "val_accuracy", ...
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "loss" => Some(self.loss),
            "val_loss" => self.val_loss,
            _ => match name.strip_prefix("val_") {
                Some(m) => self
                    .val_metrics
                    .iter()
                    .find(|(n, _)| n == m)
                    .map(|(_, v)| *v),
                None => self
                    .metrics
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| *v),
            },
        }
    }

    /// Samples per second given the number of training samples.
    pub fn samples_per_second(&self, samples: usize) -> f64 {
        samples as f64 / self.seconds.max(1e-9)
    }
}

/// Per-epoch records of a `fit` call.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// One record per epoch run.
    pub epochs: Vec<EpochLog>,
    /// The epoch whose weights the model holds when early stopping restored the best.
    pub restored_epoch: Option<usize>,
    /// True when early stopping ended training before the last epoch.
    pub stopped_early: bool,
}

impl History {
    /// The series of one value ("loss", "val_accuracy", ...) over the epochs.
    pub fn series(&self, name: &str) -> Vec<f64> {
        self.epochs.iter().filter_map(|e| e.get(name)).collect()
    }

    /// The last epoch's record.
    pub fn last(&self) -> Option<&EpochLog> {
        self.epochs.last()
    }

    /// CSV with a header: epoch, loss, metrics..., val_loss, val metrics..., lr, seconds.
    pub fn to_csv(&self) -> String {
        let Some(first) = self.epochs.first() else {
            return String::from("epoch\n");
        };
        let mut cols = vec!["loss".to_string()];
        cols.extend(first.metrics.iter().map(|(n, _)| n.clone()));
        if first.val_loss.is_some() {
            cols.push("val_loss".into());
            cols.extend(first.val_metrics.iter().map(|(n, _)| format!("val_{n}")));
        }
        let mut out = format!("epoch,{},lr,seconds\n", cols.join(","));
        for e in &self.epochs {
            let values: Vec<String> = cols
                .iter()
                .map(|c| e.get(c).map_or(String::new(), |v| format!("{v:.6}")))
                .collect();
            out += &format!(
                "{},{},{},{:.3}\n",
                e.epoch,
                values.join(","),
                e.lr,
                e.seconds
            );
        }
        out
    }
}
