//! Training one trial: its hyperparameters resolved against defaults, a dense network
//! built from them, trained epoch by epoch into its run folder (checkpoint and
//! history.csv after each epoch), or continued from the checkpoint there.

use std::path::Path;
use std::time::Instant;

use super::search::{TrialJob, TrialOutcome, TrialRunner};
use super::space::{Config, Hyper};
use crate::data::Dataset;
use crate::error::{Error, Result, TuneError};
use crate::nn::Dense;
use crate::optim::Schedule;
use crate::train::{EpochLog, FitOptions, History, Validation};
use crate::{Activation, Device, Loss, Metric, Optimizer, Sequential, Trainer};

/// A trial's hyperparameters, every one given: the search's values over the defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Hyperparams {
    /// Learning rate; none: the optimizer's usual one (0.002 for the adaptive ones under
    /// the cosine schedule, 0.01 otherwise).
    pub lr: Option<f32>,
    /// Rows per step.
    pub batch_size: usize,
    /// Units of each hidden layer.
    pub units: usize,
    /// Hidden layers.
    pub depth: usize,
    /// Activation after each hidden layer, by name (see [`super::space::ACTIVATIONS`]).
    pub activation: String,
    /// Optimizer, by name.
    pub optimizer: String,
    /// L1 penalty on every dense layer's weights.
    pub l1: f32,
    /// L2 penalty on every dense layer's weights.
    pub l2: f32,
    /// Dropout rate after each hidden layer.
    pub dropout: f32,
}

impl Default for Hyperparams {
    /// `kiln train`'s defaults: one hidden layer of 128 relu units, Adam, batch 32.
    fn default() -> Hyperparams {
        Hyperparams {
            lr: None,
            batch_size: 32,
            units: 128,
            depth: 1,
            activation: "relu".into(),
            optimizer: "adam".into(),
            l1: 0.0,
            l2: 0.0,
            dropout: 0.0,
        }
    }
}

impl Hyperparams {
    /// `defaults` with the values `config` gives.
    pub fn with(&self, config: &Config) -> Hyperparams {
        let mut h = self.clone();
        for (hyper, value) in &config.0 {
            let x = value.number().unwrap_or(0.0);
            let text = || value.to_string();
            match hyper {
                Hyper::Lr => h.lr = Some(x as f32),
                Hyper::BatchSize => h.batch_size = x as usize,
                Hyper::Units => h.units = x as usize,
                Hyper::Depth => h.depth = x as usize,
                Hyper::Activation => h.activation = text(),
                Hyper::Optimizer => h.optimizer = text(),
                Hyper::L1 => h.l1 = x as f32,
                Hyper::L2 => h.l2 = x as f32,
                Hyper::Dropout => h.dropout = x as f32,
            }
        }
        h
    }

    /// The learning rate trained with.
    pub fn learning_rate(&self) -> f32 {
        self.lr.unwrap_or(match self.optimizer.as_str() {
            "adam" | "adamw" | "rmsprop" => 2e-3,
            _ => 1e-2,
        })
    }

    /// The optimizer, its learning rate falling along a cosine over `horizon` epochs.
    pub fn optimizer(&self, horizon: usize) -> Result<Optimizer> {
        let o = Optimizer::from_name(&self.optimizer, self.learning_rate()).ok_or_else(|| {
            TuneError::BadValue {
                name: "optimizer".into(),
                detail: format!("kiln has no '{}'", self.optimizer),
            }
        })?;
        Ok(o.schedule(Schedule::Cosine {
            t_max: horizon,
            eta_min: 0.0,
        }))
    }

    /// The activation after hidden layers; none for identity.
    pub fn activation(&self) -> Result<Option<Activation>> {
        Ok(Some(match self.activation.as_str() {
            "relu" => Activation::Relu,
            "leaky_relu" => Activation::LeakyRelu(0.01),
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "gelu" => Activation::Gelu,
            "identity" => return Ok(None),
            other => {
                return Err(TuneError::BadValue {
                    name: "activation".into(),
                    detail: format!("'{other}' is not an activation kiln has"),
                }
                .into())
            }
        }))
    }

    /// Dense layer widths, input first: `features`, `depth` x `units`, `outputs`.
    pub fn widths(&self, features: usize, outputs: usize) -> Vec<usize> {
        let mut w = vec![features];
        w.extend(std::iter::repeat_n(self.units, self.depth));
        w.push(outputs);
        w
    }

    /// The network: `depth` hidden dense layers, each followed by the activation and
    /// dropout, then a dense output layer of `outputs` logits; every dense layer carries
    /// the L1/L2 penalties.
    pub fn sequential(&self, features: usize, outputs: usize) -> Result<Sequential> {
        let act = self.activation()?;
        let dense = |units| Dense::new(units).regularize(self.l1, self.l2);
        let mut s = Sequential::new(features);
        for _ in 0..self.depth {
            s = s.dense_with(dense(self.units));
            if let Some(a) = act {
                s = s.activation(a);
            }
            if self.dropout > 0.0 {
                s = s.dropout(self.dropout);
            }
        }
        Ok(s.dense_with(dense(outputs)))
    }
}

/// Called before a trial's first epoch with its hyperparameters, when it starts fresh.
pub type StartHook<'a> = Box<dyn FnMut(&TrialJob, &Hyperparams) -> Result<()> + 'a>;
/// Called when fresh trials start training stacked, with them.
pub type StackHook<'a> = Box<dyn FnMut(&[&TrialJob]) + 'a>;
/// Called after each epoch of a trial.
pub type TrialEpochHook<'a> = Box<dyn FnMut(&TrialJob, &EpochLog) + 'a>;

/// Trains trials of dense networks on one data set, the last `validation_split` of
/// its rows validating (as `kiln train` does).
pub struct FitRunner<'a> {
    /// Where trials train.
    pub device: &'a Device,
    /// The training rows (scaled), validation rows last.
    pub data: &'a Dataset,
    /// Fraction of the rows that validate (above 0: trials are ranked on them).
    pub validation_split: f32,
    /// The loss; the network's last layer gives logits.
    pub loss: Loss,
    /// Outputs of the network: classes, or 1.
    pub outputs: usize,
    /// Seed of every trial's weights and shuffling.
    pub seed: u64,
    /// The hyperparameters the search does not vary.
    pub defaults: Hyperparams,
    /// Training steps per GPU submission (see [`FitOptions`]).
    pub steps_per_execution: Option<usize>,
    /// Run before a fresh trial trains (`kiln tune` writes the run record here).
    pub on_start: Option<StartHook<'a>>,
    /// Run after every epoch, once its checkpoint is saved (progress lines).
    pub on_epoch: Option<TrialEpochHook<'a>>,
    /// Train fresh trials of one shape stacked in the same dispatches where they can be
    /// (the default; see `FitRunner::run_group`).
    pub stack: bool,
    /// Run when a stack of fresh trials starts (`kiln tune` prints its trials).
    pub on_stack: Option<StackHook<'a>>,
}

impl<'a> FitRunner<'a> {
    /// Trials of `data` on `device` with `loss`, everything else at its default.
    pub fn new(device: &'a Device, data: &'a Dataset, loss: Loss) -> FitRunner<'a> {
        let outputs = match loss {
            Loss::SparseCategoricalCrossEntropy | Loss::CategoricalCrossEntropy => {
                data.classes.max(1)
            }
            _ => 1,
        };
        FitRunner {
            device,
            data,
            validation_split: 0.1,
            loss,
            outputs,
            seed: 0,
            defaults: Hyperparams::default(),
            steps_per_execution: None,
            on_start: None,
            on_epoch: None,
            stack: true,
            on_stack: None,
        }
    }

    /// The metrics trials report: accuracy for classifiers, MAE for regression.
    pub(super) fn metrics(&self) -> Vec<Metric> {
        match self.loss {
            Loss::Mse | Loss::Mae => vec![Metric::Mae],
            _ if self.outputs == 1 => vec![Metric::BinaryAccuracy],
            _ => vec![Metric::Accuracy],
        }
    }

    /// The trial's trainer: from the checkpoint in its folder, or new.
    fn trainer(&mut self, job: &TrialJob) -> Result<(Trainer, History)> {
        if job.dir.join(crate::io::checkpoint::MODEL_FILE).exists() {
            let trainer = crate::io::load_trainer(&job.dir, self.device)?;
            let history = read_history(&job.dir, trainer.epochs_done());
            return Ok((trainer, history));
        }
        let hp = self.defaults.with(&job.config);
        let model = hp
            .sequential(self.data.features, self.outputs)?
            .build(self.device, self.seed)?;
        let trainer = model.compile(self.loss, hp.optimizer(job.horizon)?, &self.metrics())?;
        std::fs::create_dir_all(&job.dir).map_err(|e| Error::io(&job.dir, e))?;
        if let Some(hook) = self.on_start.as_mut() {
            hook(job, &hp)?;
        }
        crate::io::save(&job.dir, &trainer)?;
        Ok((trainer, History::default()))
    }

    /// Trains one trial up to its epochs (or its deadline).
    pub fn run_one(&mut self, job: &TrialJob) -> Result<TrialOutcome> {
        let (mut trainer, mut history) = self.trainer(job)?;
        let batch = self.defaults.with(&job.config).batch_size;
        let remaining = job.epochs.saturating_sub(trainer.epochs_done());
        let started = Instant::now();
        if remaining > 0 {
            let mut opts = FitOptions::new(remaining, batch);
            opts.seed = self.seed;
            if self.validation_split > 0.0 {
                opts.validation = Validation::Split(self.validation_split);
            }
            if let Some(n) = self.steps_per_execution {
                opts.steps_per_execution = n;
            }
            let mut fit = trainer.start_fit(&self.data.x, &self.data.y, opts)?;
            while let Some(log) = fit.next_epoch()? {
                history.epochs.push(log);
                self.keep_epoch(job, &history, fit.trainer())?;
                if job.deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
            fit.finish()?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let (metric, loss) = self.validation(&mut trainer, &history, batch)?;
        Ok(TrialOutcome {
            epochs: trainer.epochs_done(),
            metric,
            loss,
            seconds,
        })
    }

    /// Writes a trial's history and checkpoint after an epoch, then reports the epoch.
    pub(super) fn keep_epoch(
        &mut self,
        job: &TrialJob,
        history: &History,
        trainer: &Trainer,
    ) -> Result<()> {
        // History first: a run killed between the two writes reads back only the epochs
        // its checkpoint holds.
        let path = job.dir.join("history.csv");
        std::fs::write(&path, history.to_csv()).map_err(|e| Error::io(&path, e))?;
        crate::io::save(&job.dir, trainer)?;
        // After the saves: an epoch reported is an epoch kept.
        if let (Some(hook), Some(log)) = (self.on_epoch.as_mut(), history.epochs.last()) {
            hook(job, log);
        }
        Ok(())
    }

    /// The validation metric and loss after the last epoch: from its log, or (when this
    /// call trained no epoch) by evaluating the validation rows.
    pub(super) fn validation(
        &self,
        trainer: &mut Trainer,
        history: &History,
        batch: usize,
    ) -> Result<(Option<f64>, Option<f64>)> {
        let name = format!("val_{}", self.metric());
        if let Some(last) = history
            .epochs
            .last()
            .filter(|l| l.epoch == trainer.epochs_done() && l.val_loss.is_some())
        {
            return Ok((last.get(&name), last.val_loss));
        }
        let d = self.data;
        let val = (d.n as f32 * self.validation_split).round() as usize;
        if val == 0 {
            return Ok((None, None));
        }
        let from = d.n - val;
        let e = trainer.evaluate(&d.x[from * d.features..], &d.y[from..], batch)?;
        Ok((e.get(&self.metric()), Some(e.loss)))
    }
}

impl TrialRunner for FitRunner<'_> {
    fn metric(&self) -> String {
        self.metrics()
            .first()
            .map_or("loss".into(), |m| m.name().to_string())
    }

    /// Fresh trials that can share dispatches train stacked (`FitRunner::stacks`);
    /// the rest, and trials continued from a checkpoint, one after another.
    fn run_group(
        &mut self,
        jobs: &[TrialJob],
        done: &mut dyn FnMut(&TrialJob, Result<TrialOutcome>) -> Result<()>,
    ) -> Result<()> {
        let (stacks, singles) = self.stacks(jobs);
        for stack in stacks {
            if stack[0].deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            self.run_stacked(&stack, done)?;
        }
        for job in singles {
            // Past the time budget, the rest of the group waits for a resumed search.
            if job.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let outcome = self.run_one(job);
            done(job, outcome)?;
        }
        Ok(())
    }
}

/// The epochs of `dir/history.csv` up to `epochs` (those the checkpoint holds), enough
/// for the history to continue; an unreadable file starts a new one.
fn read_history(dir: &Path, epochs: usize) -> History {
    let Ok(text) = std::fs::read_to_string(dir.join("history.csv")) else {
        return History::default();
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let mut history = History::default();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let num = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .and_then(|i| f.get(i))
                .and_then(|v| v.parse::<f64>().ok())
        };
        let Some(epoch) = num("epoch").map(|e| e as usize).filter(|&e| e <= epochs) else {
            continue;
        };
        let (mut metrics, mut val_metrics) = (Vec::new(), Vec::new());
        for h in &header[1..] {
            let Some(v) = num(h) else { continue };
            match h.strip_prefix("val_") {
                Some("loss") | None if matches!(*h, "loss" | "lr" | "seconds" | "val_loss") => {}
                Some(m) => val_metrics.push((m.to_string(), v)),
                None => metrics.push((h.to_string(), v)),
            }
        }
        history.epochs.push(EpochLog {
            epoch,
            loss: num("loss").unwrap_or(0.0),
            metrics,
            val_loss: num("val_loss"),
            val_metrics,
            lr: num("lr").unwrap_or(0.0) as f32,
            seconds: num("seconds").unwrap_or(0.0),
        });
    }
    history
}
