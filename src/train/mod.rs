//! Training: compile a model with a loss, an optimizer and metrics, then
//! `fit`, `evaluate` and `predict`, Keras-style, with the weights kept on the device.

pub mod callbacks;
pub mod history;
pub mod metrics;

pub use crate::ops::loss::Loss;
pub use callbacks::{Control, EarlyStopping, EpochHook, StepHook, StepInfo};
pub use history::{EpochLog, History};
pub use metrics::Metric;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::time::Instant;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::model::planner::{fuse_loss, Output};
use crate::nn::model::{HeadPlan, Pass, Stage};
use crate::nn::Model;
use crate::ops::activation::{activation_into, softmax_into};
use crate::ops::gather::{PaletteRows, Rows};
use crate::ops::loss::{loss_and_grad_at, loss_and_grad_into, loss_value_at};
use crate::ops::metrics::ConfusionMatrix;
use crate::ops::Activation;
use crate::optim::Optimizer;
use crate::tensor::Tensor;
use metrics::Accumulator;

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
}

/// An uploaded data set, in chunks of at most one binding each.
struct DeviceData {
    rows: usize,
    /// (first row, inputs, targets): one chunk unless the set exceeds a binding.
    chunks: Vec<(usize, Rows, Tensor)>,
    index: Tensor,
    order: Vec<f32>,
}

impl Model {
    /// Attaches a loss, an optimizer and metrics (Keras's compile).
    pub fn compile(self, loss: Loss, optimizer: Optimizer, metrics: &[Metric]) -> Result<Trainer> {
        let plan = fuse_loss(&self.stages, loss);
        let norm = Tensor::zeros(&self.device, &[1])?;
        Ok(Trainer {
            model: self,
            loss,
            train_loss: plan.loss,
            optimizer,
            metrics: metrics.to_vec(),
            // KILN_FUSED_HEAD=0 keeps the unfused ops (for comparisons).
            head: HeadPlan::of(&plan.stages, plan.loss)
                .filter(|_| std::env::var("KILN_FUSED_HEAD").map_or(true, |v| v != "0")),
            train_stages: plan.stages,
            output: plan.output,
            logits: plan.logits,
            step: 0,
            epoch: 0,
            norm,
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

    /// Sets the step and epoch counters (used when resuming from a checkpoint).
    pub fn set_progress(&mut self, step: u64, epoch: usize) {
        self.step = step;
        self.epoch = epoch;
    }

    /// The loss as compiled.
    // `user_loss` on purpose: `loss` is the fused variant the training loop runs.
    #[allow(clippy::misnamed_getters)]
    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// The metrics as compiled.
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

    /// Targets per row: 1 for class ids, the output width otherwise.
    pub fn target_width(&self) -> usize {
        match self.train_loss {
            Loss::SparseCategoricalCrossEntropy => 1,
            _ => self.model.output_width(),
        }
    }

    /// The learning rate the next optimizer step applies: the schedule at the current epoch
    /// and at that step's 0-based index (the number of steps taken so far).
    pub fn current_lr(&self) -> f32 {
        let o = &self.optimizer;
        o.schedule.lr(o.lr, self.epoch, self.step as usize)
    }

    /// Checks x and y against the model and the loss; returns the number of rows.
    fn check_data(&self, x: &[f32], y: &[f32]) -> Result<usize> {
        let rows = self.model.rows_of(x, "input x")?;
        let tw = self.target_width();
        if rows.checked_mul(tw) != Some(y.len()) {
            return Err(Error::shape(
                "targets y",
                format!(
                    "{rows} rows need {} target values ({tw} per row), got {}",
                    rows.saturating_mul(tw),
                    y.len()
                ),
            ));
        }
        self.check_finite(x)?;
        if let Some(i) = y.iter().position(|v| !v.is_finite()) {
            return Err(Error::arg("targets y", format!("value {i} is {}", y[i])));
        }
        if self.train_loss == Loss::SparseCategoricalCrossEntropy {
            let classes = self.model.output_width();
            if let Some(i) = y
                .iter()
                .position(|&v| v < 0.0 || v.fract() != 0.0 || v as usize >= classes)
            {
                return Err(Error::arg(
                    "labels y",
                    format!(
                        "row {i} has label {} but the model has {classes} classes (0..{})",
                        y[i],
                        classes - 1
                    ),
                ));
            }
        }
        Ok(rows)
    }

    /// An error naming the first NaN or infinite input, which would poison every output.
    fn check_finite(&self, x: &[f32]) -> Result<()> {
        match x.iter().position(|v| !v.is_finite()) {
            Some(i) => Err(Error::arg(
                "input x",
                format!(
                    "row {} column {} is {} (NaN or Inf)",
                    i / self.model.input_width(),
                    i % self.model.input_width(),
                    x[i]
                ),
            )),
            None => Ok(()),
        }
    }

    /// Uploads the rows once, in as few chunks as the adapter's binding limit allows;
    /// on a GPU, data of at most 256 distinct values (pixels) goes up as bytes.
    fn upload(&self, x: &[f32], y: &[f32]) -> Result<DeviceData> {
        let (w, tw) = (self.model.input_width(), self.target_width());
        let rows = x.len() / w;
        let d = &self.model.device;
        let palette = if d.is_cpu() {
            None
        } else {
            PaletteRows::palette_of(x)
        };
        let row_len = if palette.is_some() { w.div_ceil(4) } else { w };
        let per_chunk = (d.max_tensor_len() / row_len.max(tw)).clamp(1, rows.max(1));
        let chunks = (0..rows)
            .step_by(per_chunk)
            .map(|lo| {
                let hi = (lo + per_chunk).min(rows);
                let xs = &x[lo * w..hi * w];
                let inputs = match &palette {
                    Some(p) => Rows::Palette(PaletteRows::pack(d, xs, w, p)?),
                    None => Rows::F32(Tensor::from_slice(d, xs, &[hi - lo, w])?),
                };
                let ys = Tensor::from_slice(d, &y[lo * tw..hi * tw], &[hi - lo, tw])?;
                Ok((lo, inputs, ys))
            })
            .collect::<Result<Vec<_>>>()?;
        self.finish_upload(rows, chunks)
    }

    fn finish_upload(&self, rows: usize, chunks: Vec<(usize, Rows, Tensor)>) -> Result<DeviceData> {
        let order: Vec<f32> = (0..rows).map(|i| i as f32).collect();
        let index = Tensor::from_slice(&self.model.device, &order, &[rows])?;
        Ok(DeviceData {
            rows,
            chunks,
            index,
            order,
        })
    }

    /// Gathers rows order[start..start + batch] into the workspace's input and target.
    fn load_batch(
        &mut self,
        data: &DeviceData,
        start: usize,
        batch: usize,
    ) -> Result<(usize, usize)> {
        let key = (batch, self.target_width());
        let ws = self.model.workspace(batch, key.1)?;
        for (lo, x, y) in &data.chunks {
            x.gather_with_targets(y, *lo, &data.index, start, &mut ws.acts[0], &mut ws.target)?;
        }
        Ok(key)
    }

    /// One optimizer step on the batch in workspace `key`; nothing is read back.
    fn step_ws(&mut self, key: (usize, usize), acc: Option<&mut Accumulator>) -> Result<()> {
        let n = self.train_stages.len();
        // Masks follow the step count, so a resumed run draws the same ones.
        self.model.dropout_step = self.step as u32;
        let head = self
            .head
            .filter(|_| self.model.head_fits(key, &self.train_stages));
        if let Some(plan) = head {
            // Output layer, loss and their backward in one dispatch.
            let stages = &self.train_stages[..n - 1];
            self.model.forward_ws(key, stages, Pass::Train)?;
            match acc {
                Some(acc) => {
                    self.model
                        .head_ws(key, &self.train_stages, plan, Some(acc.loss_slot()?))?;
                    let ws = self.model.workspace(key.0, key.1)?;
                    acc.add(&ws.acts[n], &ws.target, key.0)?;
                }
                None => self.model.head_ws(key, &self.train_stages, plan, None)?,
            }
            self.model
                .backward_ws(key, stages, plan.hidden_is_dense())?;
            return self.update();
        }
        self.model
            .forward_ws(key, &self.train_stages, Pass::Train)?;
        {
            let ws = self.model.workspace(key.0, key.1)?;
            let (acts, grads) = (&ws.acts, &mut ws.grads);
            match acc {
                // The loss goes straight into the epoch's log: no dispatch to add it up.
                Some(acc) => {
                    let (log, slot) = acc.loss_slot()?;
                    loss_and_grad_at(
                        self.train_loss,
                        &acts[n],
                        &ws.target,
                        &mut grads[n],
                        log,
                        slot,
                    )?;
                    acc.add(&acts[n], &ws.target, key.0)?;
                }
                None => loss_and_grad_into(
                    self.train_loss,
                    &acts[n],
                    &ws.target,
                    &mut grads[n],
                    &mut ws.loss,
                )?,
            }
        }
        self.model.backward_ws(key, &self.train_stages, false)?;
        self.update()
    }

    /// The optimizer step on the gradients in place (recorded; the caller submits).
    fn update(&mut self) -> Result<()> {
        // Ask the schedule before counting the step: its index is 0-based.
        let lr = self.current_lr();
        self.step += 1;
        self.optimizer
            .step(&mut self.model.params, lr, self.step, &mut self.norm)
    }

    /// One training step on a batch of host rows; returns nothing (no readback).
    pub fn train_batch(&mut self, x: &[f32], y: &[f32]) -> Result<()> {
        let rows = self.check_data(x, y)?;
        let key = (rows, self.target_width());
        let ws = self.model.workspace(rows, key.1)?;
        ws.acts[0].write(x)?;
        ws.target.write(y)?;
        self.step_ws(key, None)?;
        self.model.device.flush()
    }

    /// The mean loss and every parameter's gradient on a batch, without updating: dropout off,
    /// batch norm with the batch's statistics (as in training) but its running ones untouched.
    pub fn gradients(&mut self, x: &[f32], y: &[f32]) -> Result<(f32, NamedValues)> {
        let rows = self.check_data(x, y)?;
        let key = (rows, self.target_width());
        let n = self.train_stages.len();
        let ws = self.model.workspace(rows, key.1)?;
        ws.acts[0].write(x)?;
        ws.target.write(y)?;
        self.model
            .forward_ws(key, &self.train_stages, Pass::Probe)?;
        let ws = self.model.workspace(rows, key.1)?;
        loss_and_grad_into(
            self.train_loss,
            &ws.acts[n],
            &ws.target,
            &mut ws.grads[n],
            &mut ws.loss,
        )?;
        let loss = ws.loss.to_vec()?[0];
        self.model.backward_ws(key, &self.train_stages, false)?;
        let grads = self
            .model
            .params
            .iter()
            .map(|p| Ok((p.name.clone(), p.grad.to_vec()?)))
            .collect::<Result<_>>()?;
        Ok((loss, grads))
    }

    /// Trains on rows `x` (row-major) with targets `y` (class ids, or one row of targets each).
    pub fn fit(&mut self, x: &[f32], y: &[f32], opts: FitOptions) -> Result<History> {
        let mut run = self.start_fit(x, y, opts)?;
        while run.next_epoch()?.is_some() {}
        run.finish()
    }

    /// Uploads the data once and returns a run that trains one epoch per
    /// [`FitRun::next_epoch`], giving the trainer back between epochs (to save a
    /// checkpoint, say). [`Trainer::fit`] is this in a loop.
    pub fn start_fit(&mut self, x: &[f32], y: &[f32], mut opts: FitOptions) -> Result<FitRun<'_>> {
        let rows = self.check_data(x, y)?;
        if opts.batch_size == 0 {
            return Err(Error::arg("batch_size", "must be at least 1"));
        }
        let (w, tw) = (self.model.input_width(), self.target_width());
        let (train_rows, val) = match std::mem::take(&mut opts.validation) {
            Validation::None => (rows, None),
            Validation::Split(f) => {
                if !(0.0..1.0).contains(&f) {
                    return Err(Error::arg(
                        "validation split",
                        format!("{f} is not in [0, 1)"),
                    ));
                }
                let keep = rows - (rows as f32 * f).round() as usize;
                if keep == 0 {
                    return Err(Error::arg("validation split", "leaves no training rows"));
                }
                (
                    keep,
                    Some((x[keep * w..].to_vec(), y[keep * tw..].to_vec())),
                )
            }
            Validation::Data { x, y } => {
                self.check_data(&x, &y)?;
                (rows, Some((x, y)))
            }
        };
        if let Some(layer) = self.model.batch_norm_needing_two_rows() {
            // Refused now rather than at the end of the first epoch, as the last batch.
            if train_rows % opts.batch_size == 1 {
                return Err(Error::arg(
                    "batch_size",
                    format!(
                        "{} leaves a last batch of 1 row out of {train_rows}, and layer {layer} \
                         (batch_normalization) trains on at least 2: pick another batch size",
                        opts.batch_size
                    ),
                ));
            }
        }
        let data = self.upload(&x[..train_rows * w], &y[..train_rows * tw])?;
        let val_data = match &val {
            Some((vx, vy)) if !vx.is_empty() => Some(self.upload(vx, vy)?),
            _ => None,
        };
        Ok(FitRun {
            trainer: self,
            data,
            val_data,
            opts,
            history: History::default(),
            best: None,
            since_best: 0,
            done: 0,
            stopped: false,
        })
    }

    fn run_epoch(
        &mut self,
        data: &DeviceData,
        epoch: usize,
        opts: &mut FitOptions,
    ) -> Result<(f64, Vec<(String, f64)>)> {
        let steps = data.rows.div_ceil(opts.batch_size);
        let mut acc = Accumulator::new(
            &self.model.device,
            &self.metrics,
            self.model.output_width(),
            self.logits,
            steps,
        )?;
        for step in 1..=steps {
            let start = (step - 1) * opts.batch_size;
            let batch = opts.batch_size.min(data.rows - start);
            let key = self.load_batch(data, start, batch)?;
            self.step_ws(key, Some(&mut acc))?;
            let read = opts.loss_every > 0 && (step % opts.loss_every == 0 || step == steps);
            if read || step % opts.steps_per_execution.max(1) == 0 || step == steps {
                self.model.device.flush()?;
            }
            let loss = if read {
                let value = acc.mean_loss()? as f32;
                if !value.is_finite() {
                    return Err(Error::Diverged { value, epoch, step });
                }
                Some(value)
            } else {
                None
            };
            if let Some(hook) = opts.on_step.as_mut() {
                hook(&StepInfo {
                    epoch,
                    step,
                    steps,
                    samples: start + batch,
                    loss,
                });
            }
        }
        let Evaluation { loss, metrics, .. } = acc.finish()?;
        if !loss.is_finite() {
            return Err(Error::Diverged {
                value: loss as f32,
                epoch,
                step: steps,
            });
        }
        Ok((loss + self.penalty()?, metrics))
    }

    /// The L1/L2 penalty of the current weights (read back only when a layer has one).
    fn penalty(&self) -> Result<f64> {
        let mut total = 0.0;
        for p in self
            .model
            .params
            .iter()
            .filter(|p| p.l1 != 0.0 || p.l2 != 0.0)
        {
            let w = p.value.to_vec()?;
            let (l1, l2): (f64, f64) = w.iter().fold((0.0, 0.0), |(a, b), &v| {
                (a + v.abs() as f64, b + (v as f64).powi(2))
            });
            total += p.l1 as f64 * l1 + p.l2 as f64 * l2;
        }
        Ok(total)
    }

    /// Copies of the weights and the running statistics, in that order.
    fn snapshot(&self) -> Result<Vec<Tensor>> {
        let params = self.model.params.iter().map(|p| &p.value);
        let buffers = self.model.buffers().into_iter().map(|(_, t)| t);
        params.chain(buffers).map(Tensor::try_clone).collect()
    }

    fn restore(&mut self, snapshot: Vec<Tensor>) -> Result<()> {
        let model = &mut self.model;
        let params = model.params.iter_mut().map(|p| &mut p.value);
        let buffers = model.buffers.iter_mut().flat_map(|b| b.named_mut());
        let targets = params.chain(buffers.map(|(_, t)| t));
        for (t, s) in targets.zip(snapshot) {
            t.copy_from(&s)?;
        }
        Ok(())
    }

    fn evaluate_data(&mut self, data: &DeviceData, batch_size: usize) -> Result<Evaluation> {
        let mut acc = Accumulator::new(
            &self.model.device,
            &self.metrics,
            self.model.output_width(),
            self.logits,
            data.rows.div_ceil(batch_size.max(1)),
        )?;
        let n = self.train_stages.len();
        let mut start = 0;
        while start < data.rows {
            let batch = batch_size.max(1).min(data.rows - start);
            let key = self.load_batch(data, start, batch)?;
            self.model
                .forward_ws(key, &self.train_stages, Pass::Infer)?;
            let ws = self.model.workspace(key.0, key.1)?;
            let (log, slot) = acc.loss_slot()?;
            loss_value_at(self.train_loss, &ws.acts[n], &ws.target, log, slot)?;
            acc.add(&ws.acts[n], &ws.target, batch)?;
            start += batch;
        }
        let mut e = acc.finish()?;
        e.loss += self.penalty()?;
        Ok(e)
    }

    /// Loss and metrics on rows `x` with targets `y`, in batches of `batch_size`.
    pub fn evaluate(&mut self, x: &[f32], y: &[f32], batch_size: usize) -> Result<Evaluation> {
        self.check_data(x, y)?;
        let data = self.upload(x, y)?;
        self.evaluate_data(&data, batch_size)
    }

    /// Model outputs for rows `x`: probabilities for classifiers, raw values for regression.
    pub fn predict(&mut self, x: &[f32], batch_size: usize) -> Result<Vec<f32>> {
        let rows = self.model.rows_of(x, "input x")?;
        self.check_finite(x)?;
        let w = self.model.input_width();
        // The full plan, with any final softmax or sigmoid the training loss had fused.
        let stages = self.model.stages.clone();
        let mut out = crate::tensor::host_vec(
            rows.saturating_mul(self.model.output_width()),
            "predictions",
        )?;
        for chunk in x.chunks(batch_size.clamp(1, rows).saturating_mul(w)) {
            let batch = chunk.len() / w;
            let key = (batch, self.target_width());
            self.model.workspace(batch, key.1)?.acts[0].write(chunk)?;
            self.model.forward_ws(key, &stages, Pass::Infer)?;
            let y = &self.model.workspace(batch, key.1)?.acts[stages.len()];
            let mut p = Tensor::uninit(&y.device(), y.shape())?;
            match self.output {
                Output::Raw => p.copy_from(y)?,
                Output::Softmax => softmax_into(y, &mut p)?,
                Output::Sigmoid => activation_into(Activation::Sigmoid, y, &mut p)?,
            }
            out.extend(p.to_vec()?);
        }
        Ok(out)
    }

    /// The predicted class of every row: the argmax, or probability > 0.5 for one output.
    pub fn predict_classes(&mut self, x: &[f32], batch_size: usize) -> Result<Vec<usize>> {
        let out_w = self.model.output_width();
        let probs = self.predict(x, batch_size)?;
        Ok(probs
            .chunks(out_w)
            .map(|row| {
                if out_w == 1 {
                    usize::from(row[0] > 0.5)
                } else {
                    row.iter()
                        .enumerate()
                        .fold(
                            (0, f32::NEG_INFINITY),
                            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                        )
                        .0
                }
            })
            .collect())
    }
}

/// A `fit` in progress: one epoch per call, with the trainer reachable in between.
pub struct FitRun<'a> {
    trainer: &'a mut Trainer,
    data: DeviceData,
    val_data: Option<DeviceData>,
    opts: FitOptions,
    history: History,
    best: Option<(f64, usize, Vec<Tensor>)>,
    since_best: usize,
    done: usize,
    stopped: bool,
}

impl FitRun<'_> {
    /// The trainer, e.g. to save a checkpoint between epochs.
    pub fn trainer(&self) -> &Trainer {
        self.trainer
    }

    /// Replaces the per-step hook (a progress bar per epoch, say).
    pub fn set_step_hook(&mut self, hook: Option<StepHook>) {
        self.opts.on_step = hook;
    }

    /// Trains one epoch and returns its record, or `None` when all epochs ran or a
    /// callback stopped training.
    pub fn next_epoch(&mut self) -> Result<Option<EpochLog>> {
        if self.stopped || self.done >= self.opts.epochs {
            return Ok(None);
        }
        let t = &mut *self.trainer;
        let epoch = t.epoch + 1;
        let data = &mut self.data;
        if self.opts.shuffle {
            // One generator per epoch, so resuming at any epoch shuffles as an uninterrupted run.
            let epoch_seed = self.opts.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            data.order = (0..data.rows).map(|i| i as f32).collect();
            data.order
                .shuffle(&mut rand::rngs::StdRng::seed_from_u64(epoch_seed));
            data.index.write(&data.order)?;
        }
        let start = Instant::now();
        let (loss, metrics) = t.run_epoch(data, epoch, &mut self.opts)?;
        let seconds = start.elapsed().as_secs_f64();
        // The rate the epoch's last step used, as Keras logs it (not the next epoch's).
        let lr =
            t.optimizer
                .schedule
                .lr(t.optimizer.lr, t.epoch, t.step.saturating_sub(1) as usize);
        t.epoch = epoch;
        self.done += 1;
        let (val_loss, val_metrics) = match &self.val_data {
            Some(v) => {
                let e = t.evaluate_data(v, self.opts.batch_size)?;
                (Some(e.loss), e.metrics)
            }
            None => (None, Vec::new()),
        };
        let log = EpochLog {
            epoch,
            loss,
            metrics,
            val_loss,
            val_metrics,
            lr,
            seconds,
        };
        for hook in self.opts.on_epoch.iter_mut() {
            self.stopped |= hook(&log) == Control::Stop;
        }
        if let Some(es) = &self.opts.early_stopping {
            let value = log.get(&es.monitor).ok_or_else(|| {
                Error::arg(
                    "early stopping monitor",
                    format!(
                        "'{}' is not reported (try val_loss, loss, or a compiled metric)",
                        es.monitor
                    ),
                )
            })?;
            if es.improved(value, self.best.as_ref().map(|b| b.0)) {
                let snapshot = if es.restore_best {
                    t.snapshot()?
                } else {
                    Vec::new()
                };
                self.best = Some((value, epoch, snapshot));
                self.since_best = 0;
            } else {
                self.since_best += 1;
                if self.since_best >= es.patience {
                    self.stopped = true;
                    self.history.stopped_early = self.done < self.opts.epochs;
                }
            }
        }
        self.history.epochs.push(log.clone());
        Ok(Some(log))
    }

    /// Ends the run: restores the best weights if early stopping asks, returns the history.
    pub fn finish(mut self) -> Result<History> {
        if let (Some(es), Some((_, epoch, snapshot))) =
            (&self.opts.early_stopping, self.best.take())
        {
            if es.restore_best && epoch != self.trainer.epoch {
                self.trainer.restore(snapshot)?;
                self.history.restored_epoch = Some(epoch);
            }
        }
        Ok(self.history)
    }
}
