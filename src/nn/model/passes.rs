//! The passes over a plan: forward, backward and the fused classifier head, each step
//! handed its tensors from the workspace. Every op records into the device's pending
//! work; nothing here reads back.

use super::planner::{HeadPlan, Stage};
use super::{Model, Workspace};
use crate::error::{Error, Result};
use crate::nn::layers::dense::dz_pair;
use crate::nn::layers::{Backward, Forward, Inputs, Pass};
use crate::nn::model::Param;
use crate::ops::dense_head::{dense_head_at, head_fits, Head, HeadOut};
use crate::ops::elementwise::axpy;
use crate::ops::Activation;
use crate::tensor::Tensor;

/// Dropout seed of stage `i` in training step `step` of a model seeded `seed`.
fn dropout_seed(seed: u64, step: u32, i: usize) -> u32 {
    let s = seed as u32 ^ (seed >> 32) as u32;
    s.wrapping_mul(0x9e37_79b9)
        ^ step.wrapping_mul(0x85eb_ca6b)
        ^ (i as u32).wrapping_mul(0xc2b2_ae35)
}

/// Swaps the gradients of `which` parameters with their buffers in `sums` (no copy).
fn swap_grads(params: &mut [Param], which: &[usize], sums: &mut [Option<Tensor>]) -> Result<()> {
    for (&p, sum) in which.iter().zip(sums.iter_mut()) {
        let (Some(param), Some(sum)) = (params.get_mut(p), sum.as_mut()) else {
            return Err(Error::arg("workspace", "no buffer for a shared gradient"));
        };
        std::mem::swap(&mut param.grad, sum);
    }
    Ok(())
}

impl Model {
    /// Runs `stages` on the workspace input acts[0], for the purpose `pass` names.
    pub(crate) fn forward_ws(
        &mut self,
        key: (usize, usize),
        stages: &[Stage],
        pass: Pass,
    ) -> Result<()> {
        let (seed, step) = (self.seed, self.dropout_step);
        let params = &self.params;
        let buffers = &mut self.buffers;
        let ws = self
            .workspaces
            .get_mut(&key)
            .ok_or_else(|| Error::arg("workspace", "not created"))?;
        ws.dropout = matches!(pass, Pass::Train | Pass::ProbeTrain);
        for (i, (stage, scratch)) in stages.iter().zip(ws.scratch.iter_mut()).enumerate() {
            // Every input comes before the output (the plan is in execution order).
            let (before, after) = ws.acts.split_at_mut(i + 1);
            let inputs = Inputs {
                acts: before,
                wires: &stage.inputs,
            };
            stage.step.forward(Forward {
                x: inputs.get(0)?,
                inputs,
                y: &mut after[0],
                params,
                buffers,
                scratch,
                pass,
                seed: dropout_seed(seed, step, i),
            })?;
        }
        Ok(())
    }

    /// Back-propagates grads[stages.len()] through `stages`, filling every parameter's grad.
    /// With `top_ready`, the last stage is a dense layer whose dZ, dZ^T and bias gradient
    /// are already in place (the fused head wrote them).
    pub(crate) fn backward_ws(
        &mut self,
        key: (usize, usize),
        stages: &[Stage],
        top_ready: bool,
    ) -> Result<()> {
        self.backward_ws_then(key, stages, top_ready, &mut |_, _| Ok(()))
    }

    /// [`backward_ws`](Self::backward_ws), calling `after(i, params)` once stage `i`'s
    /// backward is recorded (the stages run from the last to the first): a data-parallel
    /// step starts exchanging the gradients that are complete while the rest are computed.
    pub(crate) fn backward_ws_then(
        &mut self,
        key: (usize, usize),
        stages: &[Stage],
        top_ready: bool,
        after: &mut dyn FnMut(usize, &[Param]) -> Result<()>,
    ) -> Result<()> {
        let top = stages.len().wrapping_sub(1);
        let inputs_end = self.input_acts;
        let (seed, step) = (self.seed, self.dropout_step);
        let params = &mut self.params;
        let Workspace {
            acts,
            grads,
            scratch,
            sums,
            dropout,
            ..
        } = self
            .workspaces
            .get_mut(&key)
            .ok_or_else(|| Error::arg("workspace", "not created"))?;
        for (i, stage) in stages.iter().enumerate().rev() {
            let missing = || Error::arg("workspace", "no buffers for a stage");
            let scratch = scratch.get_mut(i).ok_or_else(missing)?;
            let sums = sums.get_mut(i).ok_or_else(missing)?;
            let split = stage.inputs.len().min(sums.len());
            let (dx_sums, param_sums) = sums.split_at_mut(split);
            // A shared layer's later uses write their gradients aside, then add them.
            swap_grads(params, &stage.param_sum, param_sums)?;
            let (gb, ga) = grads.split_at_mut(i + 1);
            for (k, (&a, sum)) in stage.inputs.iter().zip(dx_sums.iter_mut()).enumerate() {
                // Nothing flows back into the model's input from a step without parameters.
                if a < inputs_end && !stage.step.has_params() {
                    continue;
                }
                let inputs = Inputs {
                    acts: &acts[..i + 1],
                    wires: &stage.inputs,
                };
                let direct = gb.get_mut(a).ok_or_else(missing)?;
                let dx = match sum.as_mut() {
                    Some(sum) => sum,
                    None => &mut *direct,
                };
                stage.step.backward(Backward {
                    x: inputs.get(k)?,
                    inputs,
                    slot: k,
                    y: &acts[i + 1],
                    dy: &ga[0],
                    dx,
                    first: a < inputs_end,
                    params,
                    scratch,
                    seed: dropout_seed(seed, step, i),
                    dropout: *dropout,
                    ready: top_ready && i == top,
                })?;
                if let Some(sum) = sum {
                    axpy(1.0, sum, direct)?;
                }
            }
            swap_grads(params, &stage.param_sum, param_sums)?;
            for (&p, sum) in stage.param_sum.iter().zip(param_sums.iter()) {
                if let (Some(sum), Some(p)) = (sum, params.get_mut(p)) {
                    axpy(1.0, sum, &mut p.grad)?;
                }
            }
            after(i, params)?;
        }
        Ok(())
    }

    /// Whether the fused head pays for the workspace `key` (its batch and layer sizes).
    pub(crate) fn head_fits(&self, key: (usize, usize), stages: &[Stage]) -> bool {
        let Some(ws) = self.workspaces.get(&key) else {
            return false;
        };
        let n = stages.len();
        match (ws.acts[n - 1].shape(), ws.acts[n].shape()) {
            (&[rows, hid], &[_, cols]) => head_fits(&self.device, rows, hid, cols),
            _ => false,
        }
    }

    /// A training step's last stage, loss and the backward into the stage before, fused
    /// (see [`HeadPlan`]); the loss goes to `log[slot]`, or to the workspace's loss.
    /// Continue with [`Model::backward_ws`] over `stages[..n - 1]`.
    pub(crate) fn head_ws(
        &mut self,
        key: (usize, usize),
        stages: &[Stage],
        plan: HeadPlan,
        log: Option<(&mut Tensor, usize)>,
    ) -> Result<()> {
        let n = stages.len();
        let ws = self
            .workspaces
            .get_mut(&key)
            .ok_or_else(|| Error::arg("workspace", "not created"))?;
        let Workspace {
            acts,
            grads,
            scratch,
            target,
            loss,
            ..
        } = ws;
        let (hidden_acts, out_acts) = acts.split_at_mut(n);
        let (hidden_grads, out_grads) = grads.split_at_mut(n);
        // The head writes three gradients; each is a distinct parameter.
        let (value, grad): (Vec<&Tensor>, Vec<&mut Tensor>) = self
            .params
            .iter_mut()
            .map(|p| (&p.value, &mut p.grad))
            .unzip();
        let mut grad: Vec<Option<&mut Tensor>> = grad.into_iter().map(Some).collect();
        let mut take = |i: usize| {
            grad[i]
                .take()
                .ok_or_else(|| Error::arg("model", "a parameter used twice in the head"))
        };
        let dw = take(plan.w)?;
        let db = plan.b.map(&mut take).transpose()?;
        let (dh, dht, dhb, act) = match plan.hidden {
            Some((hb, act)) => {
                let hidden = scratch
                    .get_mut(n - 2)
                    .ok_or_else(|| Error::arg("workspace", "no dZ for a dense layer"))?;
                let (dz, dzt) = dz_pair(hidden)?;
                (dz, Some(dzt), hb.map(&mut take).transpose()?, act)
            }
            None => (&mut hidden_grads[n - 1], None, None, Activation::Identity),
        };
        let head = Head {
            loss: plan.loss,
            h: &hidden_acts[n - 1],
            act,
            w: value[plan.w],
            b: plan.b.map(|b| value[b]),
            target,
        };
        let out = HeadOut {
            logits: &mut out_acts[0],
            dz: &mut out_grads[0],
            dw,
            db,
            dh,
            dht,
            dhb,
        };
        match log {
            Some((log, slot)) => dense_head_at(head, out, log, slot),
            None => dense_head_at(head, out, loss, 0),
        }
    }

    /// Forward pass of a batch of host inputs; returns the output (no dropout, batch norm
    /// with its running statistics). A model with several outputs: compile it and use
    /// `Trainer::predict_outputs`.
    pub fn forward(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        if self.outputs.len() > 1 {
            return Err(crate::error::GraphError::Unsupported(
                "the model has several outputs: use Trainer::predict_outputs".into(),
            )
            .into());
        }
        let batch = self.rows_of(x, "forward")?;
        let key = (batch, 1);
        self.workspace(batch, 1)?.acts[0].write(x)?;
        let stages = self.stages.clone();
        self.forward_ws(key, &stages, Pass::Infer)?;
        self.workspace(batch, 1)?.acts[stages.len()].to_vec()
    }
}
