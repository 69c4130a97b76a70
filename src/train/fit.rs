//! `fit`: epochs of steps over uploaded data, with validation, callbacks and early stopping.

use std::time::Instant;

use super::data::DeviceData;
use super::{
    Control, EpochLog, Evaluation, FitOptions, History, StepHook, StepInfo, Trainer, Validation,
};
use crate::dist::AllReduce;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The replica group of a data-parallel fit, if any.
pub(super) type Group<'a> = Option<&'a mut dyn AllReduce>;

/// A shorter-lived borrow of a group, to lend it to one call.
pub(super) fn lend<'b>(group: &'b mut Group<'_>) -> Group<'b> {
    match group {
        Some(g) => Some(&mut **g),
        None => None,
    }
}

impl Trainer {
    /// Trains on rows `x` (row-major) with targets `y` (class ids, or one row of targets each).
    pub fn fit(&mut self, x: &[f32], y: &[f32], opts: FitOptions) -> Result<History> {
        let mut run = self.start_fit(x, y, opts)?;
        while run.next_epoch()?.is_some() {}
        run.finish()
    }

    /// Uploads the data once and returns a run that trains one epoch per
    /// [`FitRun::next_epoch`], giving the trainer back between epochs (to save a
    /// checkpoint, say). [`Trainer::fit`] is this in a loop.
    pub fn start_fit(&mut self, x: &[f32], y: &[f32], opts: FitOptions) -> Result<FitRun<'_>> {
        self.begin_fit(x, y, opts, None)
    }

    /// [`Trainer::start_fit`], as rank `rank` of `size` replicas where given (its first
    /// step then takes its share of the first batch's rows).
    pub(super) fn begin_fit(
        &mut self,
        x: &[f32],
        y: &[f32],
        mut opts: FitOptions,
        replica: Option<(usize, usize)>,
    ) -> Result<FitRun<'_>> {
        let rows = self.check_data(x, y)?;
        if opts.batch_size == 0 {
            return Err(Error::arg("batch_size", "must be at least 1"));
        }
        let (w, tw) = (self.model.input_width(), self.target_width());
        let (train_rows, val) = match std::mem::take(&mut opts.validation) {
            Validation::None => (rows, None),
            Validation::Split(f) => {
                let keep = super::data::split_point(rows, f)?;
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
        // The helpers compile the first step's kernels while the data is packed and sent.
        let first = opts.batch_size.min(train_rows);
        let first = match replica {
            Some((size, rank)) => super::replica::shard(first, size, rank).1,
            None => first,
        };
        // A rehearsal only saves time: whatever it fails on, the first step meets again
        // and reports.
        let _ = self.rehearse_step(first);
        let data = self.upload(&x[..train_rows * w], &y[..train_rows * tw])?;
        let val_data = match &val {
            Some((vx, vy)) if !vx.is_empty() => Some(self.upload(vx, vy)?),
            _ => None,
        };
        Ok(FitRun {
            group: None,
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

    pub(super) fn run_epoch(
        &mut self,
        data: &DeviceData,
        epoch: usize,
        opts: &mut FitOptions,
        mut group: Group<'_>,
    ) -> Result<(f64, Vec<(String, f64)>)> {
        let steps = data.rows.div_ceil(opts.batch_size);
        let mut accs = self.accumulators(steps)?;
        // Models with several outputs exchange their gradients after the backward pass.
        let bytes = opts
            .bucket_bytes
            .unwrap_or_else(|| self.default_bucket_bytes());
        let buckets = (group.is_some() && bytes > 0 && self.outputs.is_none())
            .then(|| self.bucket_plan(bytes));
        for step in 1..=steps {
            let start = (step - 1) * opts.batch_size;
            let batch = opts.batch_size.min(data.rows - start);
            let (offset, rows) = match &group {
                Some(g) => super::replica::shard(batch, g.size(), g.rank()),
                None => (0, batch),
            };
            let key = match rows {
                0 => None,
                _ => Some(self.load_batch(data, start + offset, rows)?),
            };
            match (lend(&mut group), &buckets) {
                (Some(g), Some(b)) => {
                    self.bucketed_step(g, b, key, accs.first_mut(), (rows, batch))?
                }
                (g, _) => {
                    if let Some(key) = key {
                        match self.outputs.is_some() {
                            true => self.step_outputs(key, &mut accs)?,
                            false => self.step_ws(key, accs.first_mut())?,
                        }
                    }
                    if let Some(g) = g {
                        self.exchange(g, rows, batch)?;
                    }
                }
            }
            self.update()?;
            let read = opts.loss_every > 0 && (step % opts.loss_every == 0 || step == steps);
            if read || step % opts.steps_per_execution.max(1) == 0 || step == steps {
                self.model.device.flush()?;
            }
            let loss = if read {
                let value = self.mean_loss_of(&accs)? as f32;
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
        let Evaluation { loss, metrics, .. } = self.finish_with(&accs, group)?;
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
    pub(super) fn penalty(&self) -> Result<f64> {
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
    pub(super) fn snapshot(&self) -> Result<Vec<Tensor>> {
        let params = self.model.params.iter().map(|p| &p.value);
        let buffers = self.model.buffers().into_iter().map(|(_, t)| t);
        params.chain(buffers).map(Tensor::try_clone).collect()
    }

    pub(super) fn restore(&mut self, snapshot: Vec<Tensor>) -> Result<()> {
        let model = &mut self.model;
        let params = model.params.iter_mut().map(|p| &mut p.value);
        let buffers = model.buffers.iter_mut().flat_map(|b| b.named_mut());
        let targets = params.chain(buffers.map(|(_, t)| t));
        for (t, s) in targets.zip(snapshot) {
            t.copy_from(&s)?;
        }
        Ok(())
    }
}

/// A `fit` in progress: one epoch per call, with the trainer reachable in between.
pub struct FitRun<'a> {
    pub(super) trainer: &'a mut Trainer,
    /// The other replicas, in data-parallel training.
    pub(super) group: Group<'a>,
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
            data.shuffle(self.opts.seed, epoch)?;
        }
        let start = Instant::now();
        let (loss, metrics) = t.run_epoch(data, epoch, &mut self.opts, lend(&mut self.group))?;
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
                let e = t.evaluate_shard(v, self.opts.batch_size, lend(&mut self.group))?;
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
        if let Some(g) = lend(&mut self.group) {
            // A hook may stop rank 0 alone: every rank stops when any asks to.
            let mut stop = [f64::from(u8::from(self.stopped))];
            g.all_reduce_sum(&mut stop)?;
            self.stopped = stop[0] > 0.0;
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
