//! Training: compile a model with a loss, an optimizer and metrics, then
//! `fit`, `evaluate` and `predict`, Keras-style, with the weights kept on the device.

mod buckets;
pub mod callbacks;
mod data;
pub mod ensemble;
mod fit;
pub mod generate;
pub mod history;
pub mod metrics;
mod outputs;
mod predict;
mod replica;
pub mod stacked;
mod step;

pub use crate::ops::loss::Loss;
pub use callbacks::{Control, EarlyStopping, EpochHook, StepHook, StepInfo};
pub use ensemble::{Combine, Ensemble, EnsembleEvaluation, Member};
pub use fit::FitRun;
pub use generate::{Decoding, Generation, Sampling};
pub use history::{EpochLog, History};
pub use metrics::Metric;
pub use outputs::OutputLoss;
pub use replica::{shard, ExchangeStats};
pub use stacked::{
    fit_grouped, fit_stacked, group_by_shape, StackOptions, StackShape, StackedTrials, TrialConfig,
};

use crate::device::Device;
use crate::error::Result;
use crate::nn::model::planner::{fuse_loss, Output};
use crate::nn::model::{HeadPlan, Stage};
use crate::nn::Model;
use crate::ops::metrics::ConfusionMatrix;
use crate::optim::Optimizer;
use crate::tensor::Tensor;

/// Named host copies of tensors, e.g. parameter gradients.
pub type NamedValues = Vec<(String, Vec<f32>)>;

/// Where validation data comes from.
#[derive(Clone, Debug, Default)]
pub enum Validation {
    /// No validation.
    #[default]
    None,
    /// Hold out this fraction of the training rows (the last ones, as Keras does).
    Split(f32),
    /// Separate validation rows.
    Data {
        /// Inputs, row-major.
        x: Vec<f32>,
        /// Targets.
        y: Vec<f32>,
    },
}

/// How `fit` trains.
pub struct FitOptions {
    /// Passes over the data.
    pub epochs: usize,
    /// Rows per optimizer step.
    pub batch_size: usize,
    /// Shuffle the rows every epoch (seeded).
    pub shuffle: bool,
    /// Seed of the shuffling.
    pub seed: u64,
    /// Validation data, evaluated after every epoch.
    pub validation: Validation,
    /// Early stopping.
    pub early_stopping: Option<EarlyStopping>,
    /// Read the running loss back every this many steps (0: only at the end of an epoch).
    pub loss_every: usize,
    /// Hooks called after every epoch.
    pub on_epoch: Vec<EpochHook>,
    /// Hook called after every step.
    pub on_step: Option<StepHook>,
    /// Training steps recorded into one GPU submission (Keras's `steps_per_execution`);
    /// 0 counts as 1. Submitting costs host time (on lavapipe about as much as recording
    /// a small step), so several steps per submission train small models faster. The
    /// work is submitted at least when a value is read back (the loss every `loss_every`
    /// steps, the epoch's end).
    pub steps_per_execution: usize,
    /// Data-parallel fits: the size of a gradient bucket, in bytes. Each bucket is
    /// all-reduced as soon as the backward pass has computed it, while the GPU computes
    /// the next ones; `Some(0)` exchanges all gradients in one all-reduce after the
    /// backward pass; `None` (the default) splits them into 16 buckets of at least 256 KB
    /// (see docs/training.md, "Gradient buckets", for the measurements behind it).
    pub bucket_bytes: Option<usize>,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            epochs: 1,
            batch_size: 32,
            shuffle: true,
            seed: 0,
            validation: Validation::None,
            early_stopping: None,
            loss_every: 0,
            on_epoch: Vec::new(),
            on_step: None,
            steps_per_execution: 8,
            bucket_bytes: None,
        }
    }
}

impl FitOptions {
    /// `epochs` passes in batches of `batch_size`.
    pub fn new(epochs: usize, batch_size: usize) -> FitOptions {
        FitOptions {
            epochs,
            batch_size,
            ..FitOptions::default()
        }
    }
}

/// Loss and metrics of `evaluate`.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Mean loss.
    pub loss: f64,
    /// Metrics by name.
    pub metrics: Vec<(String, f64)>,
    /// The confusion matrix, for classifiers.
    pub confusion: Option<ConfusionMatrix>,
}

impl Evaluation {
    /// A metric by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// A model compiled with a loss, an optimizer and metrics: it can be trained.
pub struct Trainer {
    /// The model being trained.
    pub model: Model,
    /// The loss as compiled.
    loss: Loss,
    /// The loss as trained: from logits where a final softmax or sigmoid was fused into it.
    train_loss: Loss,
    optimizer: Optimizer,
    metrics: Vec<Metric>,
    /// The plan used for training and evaluation: it ends in logits where the loss fuses
    /// the final softmax or sigmoid.
    train_stages: Vec<Stage>,
    /// The fused classifier head, where the plan ends in one (used when the sizes fit).
    head: Option<HeadPlan>,
    output: Output,
    logits: bool,
    step: u64,
    epoch: usize,
    norm: Tensor,
    /// Several outputs, each with its loss, weight and metrics (`compile_outputs`).
    outputs: Option<outputs::Outputs>,
    /// What data-parallel gradient exchanges have cost.
    exchanges: ExchangeStats,
}

impl Model {
    /// Attaches a loss, an optimizer and metrics (Keras's compile).
    /// A model with several outputs takes [`Model::compile_outputs`] instead.
    pub fn compile(self, loss: Loss, optimizer: Optimizer, metrics: &[Metric]) -> Result<Trainer> {
        if self.outputs.len() > 1 {
            return Err(crate::error::GraphError::Unsupported(format!(
                "the model has outputs {:?}: give each its loss with compile_outputs",
                self.output_names()
            ))
            .into());
        }
        self.compile_one(loss, optimizer, metrics)
    }

    /// [`Model::compile`] without the check for several outputs.
    pub(crate) fn compile_one(
        self,
        loss: Loss,
        optimizer: Optimizer,
        metrics: &[Metric],
    ) -> Result<Trainer> {
        let plan = fuse_loss(&self.stages, loss);
        let norm = Tensor::zeros(&self.device, &[1])?;
        Ok(Trainer {
            model: self,
            loss,
            train_loss: plan.loss,
            optimizer,
            metrics: metrics.to_vec(),
            head: HeadPlan::of(&plan.stages, plan.loss),
            train_stages: plan.stages,
            output: plan.output,
            logits: plan.logits,
            step: 0,
            epoch: 0,
            norm,
            outputs: None,
            exchanges: ExchangeStats::default(),
        })
    }
}

impl Trainer {
    /// The device training runs on.
    pub fn device(&self) -> &Device {
        &self.model.device
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Epochs completed so far.
    pub fn epochs_done(&self) -> usize {
        self.epoch
    }

    /// Whether training uses the fused classifier head where the model ends in one (the
    /// default); off, it runs the output layer, the loss and their backward as separate
    /// ops, with the same results: the baseline the benches compare the fusion against.
    pub fn set_fused_head(&mut self, on: bool) {
        self.head = match on && self.outputs.is_none() {
            true => HeadPlan::of(&self.train_stages, self.train_loss),
            false => None,
        };
    }

    /// Sets the step and epoch counters (used when resuming from a checkpoint).
    pub fn set_progress(&mut self, step: u64, epoch: usize) {
        self.step = step;
        self.epoch = epoch;
    }

    /// The loss as compiled (several outputs: the first's; see `output_losses`).
    // `user_loss` on purpose: `loss` is the fused variant the training loop runs.
    #[allow(clippy::misnamed_getters)]
    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// The metrics as compiled (several outputs: none here; see `output_losses`).
    pub fn metrics(&self) -> &[Metric] {
        &self.metrics
    }

    /// The optimizer configuration.
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// Replaces the learning-rate schedule (for example to stretch a cosine over a longer run).
    pub fn set_schedule(&mut self, schedule: crate::optim::Schedule) {
        self.optimizer.schedule = schedule;
    }

    /// Targets per row: one class id per position (1 for a flat classifier, T for [T, V]
    /// sequence outputs), the output width otherwise (several outputs: the sum of theirs,
    /// packed).
    pub fn target_width(&self) -> usize {
        if let Some(o) = &self.outputs {
            return o.plans.iter().map(|p| p.target_width).sum();
        }
        match self.train_loss {
            Loss::SparseCategoricalCrossEntropy => {
                self.model.output_width() / self.model.output_classes().max(1)
            }
            _ => self.model.output_width(),
        }
    }

    /// The learning rate the next optimizer step applies: the schedule at the current epoch
    /// and at that step's 0-based index (the number of steps taken so far).
    pub fn current_lr(&self) -> f32 {
        let o = &self.optimizer;
        o.schedule.lr(o.lr, self.epoch, self.step as usize)
    }
}
