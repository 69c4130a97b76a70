//! Early stopping and per-epoch hooks.

use super::history::EpochLog;

/// Whether training goes on after a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep training.
    Continue,
    /// Stop after this epoch.
    Stop,
}

/// Stop when a monitored value has not improved for `patience` epochs (Keras's EarlyStopping).
#[derive(Clone, Debug)]
pub struct EarlyStopping {
    /// The value watched: "val_loss", "val_accuracy", "loss", ...
    pub monitor: String,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Smallest change that counts as an improvement.
    pub min_delta: f64,
    /// Put back the weights of the best epoch when stopping or at the end.
    pub restore_best: bool,
}

impl EarlyStopping {
    /// Watches `monitor` with this patience, restoring the best weights.
    pub fn new(monitor: &str, patience: usize) -> EarlyStopping {
        EarlyStopping {
            monitor: monitor.to_string(),
            patience,
            min_delta: 0.0,
            restore_best: true,
        }
    }

    /// Losses and errors improve downwards, everything else upwards.
    pub fn minimize(&self) -> bool {
        let m = self.monitor.trim_start_matches("val_");
        m.ends_with("loss") || m == "mse" || m == "mae"
    }

    /// True when `value` beats `best` by at least min_delta.
    pub fn improved(&self, value: f64, best: Option<f64>) -> bool {
        match best {
            None => value.is_finite(),
            Some(b) if self.minimize() => value < b - self.min_delta,
            Some(b) => value > b + self.min_delta,
        }
    }
}

/// A hook called after every epoch with its record.
pub type EpochHook = Box<dyn FnMut(&EpochLog) -> Control>;

/// What a step hook sees: progress inside an epoch.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    /// 1-based epoch.
    pub epoch: usize,
    /// 1-based step within the epoch.
    pub step: usize,
    /// Steps in the epoch.
    pub steps: usize,
    /// Samples processed so far in the epoch.
    pub samples: usize,
    /// The running mean loss, when it was read back at this step.
    pub loss: Option<f32>,
}

/// A hook called after every training step (for progress bars).
pub type StepHook = Box<dyn FnMut(&StepInfo)>;
