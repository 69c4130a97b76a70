//! One training step: forward, loss, backward (fused into the classifier head where the
//! plan has one) and the optimizer update, recorded without a readback.

use super::metrics::Accumulator;
use super::{NamedValues, Trainer};
use crate::error::Result;
use crate::nn::model::{HeadPlan, Param, Pass};
use crate::ops::loss::{loss_and_grad_at, loss_and_grad_into};

impl Trainer {
    /// Forward and backward on the batch in workspace `key`, leaving the gradients for
    /// [`Trainer::update`]; nothing is read back.
    pub(super) fn step_ws(
        &mut self,
        key: (usize, usize),
        acc: Option<&mut Accumulator>,
    ) -> Result<()> {
        self.step_ws_then(key, acc, &mut |_, _| Ok(()))
    }

    /// [`Trainer::step_ws`], calling `after(i, params)` once stage `i`'s backward is
    /// recorded (see `Model::backward_ws_then`).
    pub(super) fn step_ws_then(
        &mut self,
        key: (usize, usize),
        acc: Option<&mut Accumulator>,
        after: &mut dyn FnMut(usize, &[Param]) -> Result<()>,
    ) -> Result<()> {
        let n = self.train_stages.len();
        // Masks follow the step count, so a resumed run draws the same ones.
        self.model.dropout_step = self.step as u32;
        if let Some(plan) = self.head_for(key) {
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
            after(n - 1, &self.model.params)?;
            self.model
                .backward_ws_then(key, stages, plan.hidden_is_dense(), after)?;
            return Ok(());
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
        self.model
            .backward_ws_then(key, &self.train_stages, false, after)
    }

    /// The fused classifier head a step on the batch in workspace `key` runs, if the plan
    /// has one and it fits the batch.
    fn head_for(&self, key: (usize, usize)) -> Option<HeadPlan> {
        self.head
            .filter(|_| self.model.head_fits(key, &self.train_stages))
    }

    /// On a CPU adapter with compile helpers, rehearses the forward pass (and fused head)
    /// of a first step on `rows` rows: its kernels start compiling on the helpers now, as
    /// the caller goes on (a fit uploads its data), rather than at the step. Nothing is
    /// recorded and nothing but the workspace for `rows` is made, so no weight, optimizer
    /// state or result changes. Skipped where products are tuned: tuning times real runs.
    pub(super) fn rehearse_step(&mut self, rows: usize) -> Result<()> {
        let Some(ctx) = self.model.device.gpu_context().cloned() else {
            return Ok(());
        };
        if rows == 0
            || !ctx.precompiles()
            || crate::ops::matmul_tune::enabled(&ctx)
            || self.outputs.is_some()
        {
            return Ok(());
        }
        let key = (rows, self.target_width());
        self.model.workspace(rows, key.1)?;
        let n = self.train_stages.len();
        let head = self.head_for(key);
        let (model, stages) = (&mut self.model, &self.train_stages);
        ctx.rehearse(|| match head {
            Some(plan) => {
                model.forward_ws(key, &stages[..n - 1], Pass::Train)?;
                model.head_ws(key, stages, plan, None)
            }
            None => model.forward_ws(key, stages, Pass::Train),
        })
    }

    /// The optimizer step on the gradients in place (recorded; the caller submits).
    pub(super) fn update(&mut self) -> Result<()> {
        // Ask the schedule before counting the step: its index is 0-based.
        let lr = self.current_lr();
        self.step += 1;
        let model = &mut self.model;
        self.optimizer.step(
            &mut model.params,
            model.packed.as_mut(),
            lr,
            self.step,
            &mut self.norm,
        )
    }

    /// One training step on a batch of host rows; returns nothing (no readback).
    pub fn train_batch(&mut self, x: &[f32], y: &[f32]) -> Result<()> {
        let rows = self.check_data(x, y)?;
        let key = (rows, self.target_width());
        let ws = self.model.workspace(rows, key.1)?;
        ws.acts[0].write(x)?;
        ws.target.write(y)?;
        if self.outputs.is_some() {
            let mut accs = self.accumulators(1)?;
            self.step_outputs(key, &mut accs)?;
        } else {
            self.step_ws(key, None)?;
        }
        self.update()?;
        self.model.device.flush()
    }

    /// The mean loss and every parameter's gradient on a batch, without updating: dropout off,
    /// batch norm with the batch's statistics (as in training) but its running ones untouched.
    pub fn gradients(&mut self, x: &[f32], y: &[f32]) -> Result<(f32, NamedValues)> {
        self.probe(x, y, Pass::Probe)
    }

    /// As [`Trainer::gradients`] but with dropout on, masked as the next training step will
    /// be (the step is not advanced, so repeated calls draw the same masks).
    pub fn gradients_training(&mut self, x: &[f32], y: &[f32]) -> Result<(f32, NamedValues)> {
        self.model.dropout_step = self.step as u32;
        self.probe(x, y, Pass::ProbeTrain)
    }

    /// The loss and gradients of one forward and backward `pass`, without an update.
    fn probe(&mut self, x: &[f32], y: &[f32], pass: Pass) -> Result<(f32, NamedValues)> {
        let rows = self.check_data(x, y)?;
        let key = (rows, self.target_width());
        let n = self.train_stages.len();
        let ws = self.model.workspace(rows, key.1)?;
        ws.acts[0].write(x)?;
        ws.target.write(y)?;
        self.model.forward_ws(key, &self.train_stages, pass)?;
        if self.outputs.is_some() {
            let loss = self.probe_outputs(key)?;
            self.model.backward_ws(key, &self.train_stages, false)?;
            return Ok((loss, self.grads()?));
        }
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
        Ok((loss, self.grads()?))
    }

    /// Host copies of every parameter's gradient.
    fn grads(&self) -> Result<NamedValues> {
        self.model
            .params
            .iter()
            .map(|p| Ok((p.name.clone(), p.grad.to_vec()?)))
            .collect()
    }
}
