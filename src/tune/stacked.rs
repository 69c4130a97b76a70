//! Training a group of fresh trials stacked ([`crate::train::StackedTrials`]): K dense
//! networks of one shape in the same dispatches, each trial still its own run folder
//! with a checkpoint (weights, optimizer state, step count) and history after every
//! epoch, so it is read, resumed and continued exactly as a trial trained alone.

use std::time::Instant;

use super::search::{TrialJob, TrialOutcome};
use super::trial::{FitRunner, Hyperparams};
use crate::error::{Error, Result};
use crate::train::{History, StackOptions, StackShape, StackedTrials, TrialConfig, Validation};
use crate::Loss;

impl FitRunner<'_> {
    /// Splits `jobs` into stacks, groups of two or more fresh trials that train in the
    /// same dispatches (a classifier with a sparse cross-entropy loss; the same layer
    /// widths and activations, batch size and epochs; no dropout or L1/L2 penalty), and
    /// the trials that train alone.
    pub(super) fn stacks<'j>(
        &self,
        jobs: &'j [TrialJob],
    ) -> (Vec<Vec<&'j TrialJob>>, Vec<&'j TrialJob>) {
        let mut stacks: Vec<(StackShape, usize, usize, Vec<&TrialJob>)> = Vec::new();
        let mut singles = Vec::new();
        for job in jobs {
            match self.stack_key(job) {
                Some((shape, batch)) => {
                    let same = |s: &&mut (StackShape, usize, usize, Vec<&TrialJob>)| {
                        s.0 == shape && s.1 == batch && s.2 == job.epochs
                    };
                    match stacks.iter_mut().find(same) {
                        Some(s) => s.3.push(job),
                        None => stacks.push((shape, batch, job.epochs, vec![job])),
                    }
                }
                None => singles.push(job),
            }
        }
        let mut out = Vec::new();
        for (_, _, _, members) in stacks {
            match members.len() {
                1 => singles.extend(members),
                _ => out.push(members),
            }
        }
        (out, singles)
    }

    /// The stack shape and batch size of a trial that can be stacked.
    fn stack_key(&self, job: &TrialJob) -> Option<(StackShape, usize)> {
        let fresh = !job.dir.join(crate::io::checkpoint::MODEL_FILE).exists();
        let classifier = self.loss == Loss::SparseCategoricalCrossEntropy && self.outputs > 1;
        if !(self.stack && fresh && classifier) {
            return None;
        }
        let hp = self.defaults.with(&job.config);
        if hp.dropout > 0.0 || hp.l1 != 0.0 || hp.l2 != 0.0 {
            return None;
        }
        let model = hp.sequential(self.data.features, self.outputs).ok()?;
        Some((StackShape::of(&model).ok()?, hp.batch_size))
    }

    /// Trains `jobs` (one stack) epoch by epoch, keeping every trial's checkpoint and
    /// history after each epoch; each trial's outcome counts its share of the time.
    pub(super) fn run_stacked(
        &mut self,
        jobs: &[&TrialJob],
        done: &mut dyn FnMut(&TrialJob, Result<TrialOutcome>) -> Result<()>,
    ) -> Result<()> {
        let hps: Vec<Hyperparams> = jobs.iter().map(|j| self.defaults.with(&j.config)).collect();
        let mut configs = Vec::with_capacity(jobs.len());
        for (job, hp) in jobs.iter().zip(&hps) {
            configs.push(TrialConfig {
                model: hp.sequential(self.data.features, self.outputs)?,
                optimizer: hp.optimizer(job.horizon)?,
                seed: self.seed,
            });
            std::fs::create_dir_all(&job.dir).map_err(|e| Error::io(&job.dir, e))?;
            if let Some(hook) = self.on_start.as_mut() {
                hook(job, hp)?;
            }
        }
        if let Some(hook) = self.on_stack.as_mut() {
            hook(jobs);
        }
        let started = Instant::now();
        let result = self.train_stack(jobs, &configs, hps[0].batch_size);
        let share = started.elapsed().as_secs_f64() / jobs.len() as f64;
        match result {
            Ok((stack, histories)) => {
                for (k, (job, history)) in jobs.iter().zip(&histories).enumerate() {
                    let outcome = self.stack_outcome(&stack, k, history, hps[k].batch_size, share);
                    done(job, outcome)?;
                }
            }
            // Every trial of the stack failed with it: each is told why.
            Err(e) => {
                for job in jobs {
                    done(job, Err(Error::arg("stacked trials", e.to_string())))?;
                }
            }
        }
        Ok(())
    }

    /// The stack, trained up to the trials' epochs or the deadline, and each trial's
    /// history.
    fn train_stack(
        &mut self,
        jobs: &[&TrialJob],
        configs: &[TrialConfig],
        batch: usize,
    ) -> Result<(StackedTrials, Vec<History>)> {
        let mut stack = StackedTrials::new(self.device, configs)?;
        let mut opts = StackOptions::new(1, batch);
        opts.seed = self.seed;
        if self.validation_split > 0.0 {
            opts.validation = Validation::Split(self.validation_split);
        }
        if let Some(n) = self.steps_per_execution {
            opts.steps_per_execution = n;
        }
        let mut histories = vec![History::default(); jobs.len()];
        let metrics = self.metrics();
        while stack.epochs() < jobs[0].epochs {
            let logs = stack.fit(&self.data.x, &self.data.y, &opts)?;
            for (k, (job, log)) in jobs.iter().zip(logs).enumerate() {
                histories[k].epochs.extend(log.epochs);
                let trainer = stack.trainer(k, self.loss, &metrics)?;
                self.keep_epoch(job, &histories[k], &trainer)?;
            }
            if jobs[0].deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        Ok((stack, histories))
    }

    /// What trial `k` of a trained stack reached.
    fn stack_outcome(
        &self,
        stack: &StackedTrials,
        k: usize,
        history: &History,
        batch: usize,
        seconds: f64,
    ) -> Result<TrialOutcome> {
        let mut trainer = stack.trainer(k, self.loss, &self.metrics())?;
        let (metric, loss) = self.validation(&mut trainer, history, batch)?;
        Ok(TrialOutcome {
            epochs: stack.epochs(),
            metric,
            loss,
            seconds,
        })
    }
}
