//! Several outputs (Keras's `compile(loss={..}, loss_weights={..}, metrics={..})`): each
//! output has its own loss, weight and metrics. Targets come packed per row like the
//! inputs ([`Trainer::pack_targets`]); a step splits each output's columns out on the
//! device, writes each output's loss into its own device-side log (nothing is read back
//! inside a step) and its gradient, scaled by the weight, where that output's consumers
//! add theirs. The reported loss is the weighted sum; logs add `{output}_loss` and
//! `{output}_{metric}`.
//!
//! Fusions: the final softmax of an output trained with a categorical cross-entropy is
//! handed to its loss (per output); the sigmoid/binary cross-entropy fold and the fused
//! classifier head are not used with several outputs.

use std::collections::HashMap;
use std::sync::Arc;

use super::metrics::{Accumulator, Metric};
use super::{Evaluation, Trainer};
use crate::error::{Error, GraphError, Result};
use crate::nn::layers::{Backward, Forward, Pattern, Step};
use crate::nn::model::planner::Output;
use crate::nn::model::{Pass, Stage};
use crate::nn::Model;
use crate::ops::activation::{activation_into, softmax_into};
use crate::ops::concat::split_cols_into;
use crate::ops::elementwise::scale_into;
use crate::ops::loss::{loss_and_grad_at, loss_value_at, Loss};
use crate::ops::Activation;
use crate::optim::Optimizer;
use crate::tensor::Tensor;

/// One output's loss, weight and metrics, for [`Model::compile_outputs`].
#[derive(Clone, Debug, PartialEq)]
pub struct OutputLoss {
    /// The output node's name.
    pub name: String,
    /// Its loss.
    pub loss: Loss,
    /// Its weight in the total loss (Keras's `loss_weights`), 1 unless set.
    pub weight: f32,
    /// Its metrics.
    pub metrics: Vec<Metric>,
}

impl OutputLoss {
    /// Output `name` trained with `loss`, weight 1, no metrics.
    pub fn new(name: &str, loss: Loss) -> OutputLoss {
        OutputLoss {
            name: name.to_string(),
            loss,
            weight: 1.0,
            metrics: Vec::new(),
        }
    }

    /// Its weight in the total loss.
    pub fn weight(mut self, weight: f32) -> OutputLoss {
        self.weight = weight;
        self
    }

    /// Its metrics, logged as `{name}_{metric}`.
    pub fn metrics(mut self, metrics: &[Metric]) -> OutputLoss {
        self.metrics = metrics.to_vec();
        self
    }
}

/// One output as planned for training.
#[derive(Clone, Debug)]
pub(crate) struct OutputPlan {
    pub spec: OutputLoss,
    /// The loss as trained (on logits where the final softmax was handed to it).
    train_loss: Loss,
    /// The activation the loss reads (the logits, for a fused softmax).
    act: usize,
    /// The activation holding the output (what `predict_outputs` reads).
    out_act: usize,
    /// Values per row of what the loss reads.
    width: usize,
    /// The sample shape of what the loss reads.
    shape: Vec<usize>,
    /// Its last axis: the classes of a softmax cross-entropy (at each position of a
    /// [T, V] sequence).
    classes: usize,
    /// Target values per row, and where they start in the packed row.
    pub target_width: usize,
    offset: usize,
    /// What predictions apply to the output.
    output: Output,
    /// Whether the loss reads logits.
    logits: bool,
}

/// Per batch size: each output's targets and (weight != 1) unscaled gradient.
type Bufs = Vec<(Tensor, Option<Tensor>)>;

/// The outputs of a several-output trainer.
pub(crate) struct Outputs {
    pub plans: Vec<OutputPlan>,
    bufs: HashMap<usize, Bufs>,
    /// Each output's loss of `gradients` (one slot each).
    probe: Tensor,
}

/// A step that does nothing: an output's final softmax, handed to its loss, in training.
#[derive(Debug)]
struct Skip;

impl Step for Skip {
    fn forward(&self, _cx: Forward<'_>) -> Result<()> {
        Ok(())
    }

    fn backward(&self, _cx: Backward<'_>) -> Result<()> {
        Ok(())
    }
}

fn categorical(loss: Loss) -> bool {
    matches!(
        loss,
        Loss::CategoricalCrossEntropy | Loss::SparseCategoricalCrossEntropy
    )
}

impl Model {
    /// The outputs' names, in declaration order.
    pub fn output_names(&self) -> Vec<&str> {
        self.outputs.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Attaches a loss, weight and metrics to every output of a graph model (Keras's
    /// `compile` with `loss`, `loss_weights` and `metrics` per output). Every output needs
    /// exactly one entry; targets are packed per row in the entries' order
    /// ([`Trainer::pack_targets`]).
    pub fn compile_outputs(
        mut self,
        outputs: &[OutputLoss],
        optimizer: Optimizer,
    ) -> Result<Trainer> {
        let mut plans: Vec<OutputPlan> = Vec::with_capacity(outputs.len());
        let mut offset = 0;
        for spec in outputs {
            if plans.iter().any(|p| p.spec.name == spec.name) {
                return Err(GraphError::DuplicateName(spec.name.clone()).into());
            }
            let plan = self.plan_output(spec, offset)?;
            offset += plan.target_width;
            plans.push(plan);
        }
        if let Some((name, _)) = self
            .outputs
            .iter()
            .find(|(n, _)| !plans.iter().any(|p| &p.spec.name == n))
        {
            return Err(GraphError::NoLoss(name.clone()).into());
        }
        let train = self.wire_losses(&plans);
        // Workspaces made before are wired for one output.
        self.workspaces.clear();
        let probe = Tensor::zeros(&self.device, &[plans.len().max(1)])?;
        let first = plans
            .first()
            .map(|p| p.spec.loss)
            .ok_or(GraphError::Empty("outputs"))?;
        let mut t = self.compile_one(first, optimizer, &[])?;
        t.train_stages = train;
        t.head = None;
        t.output = Output::Raw;
        t.logits = false;
        t.outputs = Some(Outputs {
            plans,
            bufs: HashMap::new(),
            probe,
        });
        Ok(t)
    }

    /// One output's plan: where its loss reads (the logits, where a final softmax is handed
    /// to a categorical loss), its widths and its columns of the packed targets.
    fn plan_output(&self, spec: &OutputLoss, offset: usize) -> Result<OutputPlan> {
        let Some(&(_, out_act)) = self.outputs.iter().find(|(n, _)| *n == spec.name) else {
            return Err(GraphError::UnknownNode {
                node: "compile_outputs".into(),
                missing: spec.name.clone(),
            }
            .into());
        };
        if !spec.weight.is_finite() || spec.weight < 0.0 {
            let detail = format!(
                "output '{}': {} is not finite and >= 0",
                spec.name, spec.weight
            );
            return Err(Error::arg("loss weight", detail));
        }
        let fused = self.softmax_logits(spec, out_act)?;
        let act = fused.unwrap_or(out_act);
        let shape = match act.checked_sub(1) {
            Some(i) => self.stage_shapes.get(i).cloned().unwrap_or_default(),
            None => self.input_shape.clone(),
        };
        let width: usize = shape.iter().product();
        let classes = shape.last().copied().unwrap_or(1).max(1);
        let (output, logits) = match spec.loss {
            _ if fused.is_some() => (Output::Raw, true),
            l if categorical(l) => (Output::Softmax, true),
            Loss::BinaryCrossEntropy { from_logits: true } => (Output::Sigmoid, true),
            _ => (Output::Raw, false),
        };
        let target_width = match spec.loss {
            Loss::SparseCategoricalCrossEntropy => width / classes,
            _ => width,
        };
        Ok(OutputPlan {
            spec: spec.clone(),
            train_loss: spec.loss,
            act,
            out_act,
            width,
            classes,
            shape,
            target_width,
            offset,
            output,
            logits,
        })
    }

    /// The logits' activation where output `out_act` is a softmax that `spec`'s categorical
    /// loss takes over in training; an error where those logits are used elsewhere.
    fn softmax_logits(&self, spec: &OutputLoss, out_act: usize) -> Result<Option<usize>> {
        let producer = out_act.checked_sub(1).and_then(|i| self.stages.get(i));
        let Some(s) =
            producer.filter(|s| categorical(spec.loss) && s.pattern() == Pattern::Softmax)
        else {
            return Ok(None);
        };
        let logits = s.inputs.first().copied().unwrap_or(0);
        let feeds = self
            .stages
            .iter()
            .filter(|s| s.inputs.contains(&logits))
            .count();
        let other_output = self.outputs.iter().any(|(_, a)| *a == logits);
        if feeds != 1 || other_output || logits < self.input_acts {
            return Err(GraphError::Unsupported(format!(
                "output '{}' is a softmax whose input is also used elsewhere: \
                 train its input with the cross-entropy instead",
                spec.name
            ))
            .into());
        }
        Ok(Some(logits))
    }

    /// The training stages: a stage whose output nothing reads and no loss takes (a
    /// softmax handed to its loss) is skipped; a loss writes its gradient first, so every
    /// stage reading a loss's activation adds to it.
    fn wire_losses(&mut self, plans: &[OutputPlan]) -> Vec<Stage> {
        let loss_acts: Vec<usize> = plans.iter().map(|p| p.act).collect();
        let mut train: Vec<Stage> = self.stages.clone();
        let mut skipped = vec![false; train.len()];
        for (i, stage) in train.iter_mut().enumerate() {
            let read = self.stages.iter().any(|s| s.inputs.contains(&(i + 1)));
            if !read && !loss_acts.contains(&(i + 1)) {
                stage.step = Arc::new(Skip);
                skipped[i] = true;
            }
        }
        let wired = self.stages.iter_mut().zip(train.iter_mut());
        for ((full, stage), skip) in wired.zip(skipped) {
            if skip {
                continue;
            }
            for (k, &a) in full.inputs.iter().enumerate() {
                if loss_acts.contains(&a) {
                    full.dx_sum[k] = true;
                    stage.dx_sum[k] = true;
                }
            }
        }
        train
    }
}

/// Which losses a step computes.
pub(super) enum Losses<'a> {
    /// Training: gradients too, the losses into the accumulators' logs.
    Train(&'a mut [Accumulator]),
    /// Evaluation: values only, into the accumulators' logs.
    Eval(&'a mut [Accumulator]),
    /// `gradients`: gradients, the values into the probe log.
    Probe,
}

impl Trainer {
    /// The outputs' losses, weights and metrics as compiled (`None`: one output, `compile`).
    pub fn output_losses(&self) -> Option<Vec<OutputLoss>> {
        self.outputs
            .as_ref()
            .map(|o| o.plans.iter().map(|p| p.spec.clone()).collect())
    }

    /// The rows of targets a several-output trainer takes, packed from one slice per
    /// output (in `compile_outputs` order): class ids for a sparse categorical
    /// cross-entropy (1 per row), else one value per output value.
    pub fn pack_targets(&self, ys: &[&[f32]]) -> Result<Vec<f32>> {
        let widths: Vec<usize> = match &self.outputs {
            Some(o) => o.plans.iter().map(|p| p.target_width).collect(),
            None => vec![self.target_width()],
        };
        crate::nn::graph::inputs::pack(ys, &widths)
    }

    /// The accumulators of an epoch or evaluation of `batches` batches: one per output.
    pub(super) fn accumulators(&self, batches: usize) -> Result<Vec<Accumulator>> {
        let d = &self.model.device;
        match &self.outputs {
            Some(o) => o
                .plans
                .iter()
                .map(|p| {
                    let counted = if categorical(p.train_loss) {
                        p.classes
                    } else {
                        p.width
                    };
                    Accumulator::new(d, &p.spec.metrics, counted, p.logits, batches)
                })
                .collect(),
            None => Ok(vec![Accumulator::new(
                d,
                &self.metrics,
                self.accumulator_width(),
                self.logits,
                batches,
            )?]),
        }
    }

    /// What a single output's metrics count over: the classes at each position for a
    /// softmax cross-entropy (the last axis), every output value otherwise.
    fn accumulator_width(&self) -> usize {
        match self.train_loss {
            Loss::SparseCategoricalCrossEntropy | Loss::CategoricalCrossEntropy => {
                self.model.output_classes()
            }
            _ => self.model.output_width(),
        }
    }

    /// The weighted mean loss so far (reads the logs back).
    pub(super) fn mean_loss_of(&self, accs: &[Accumulator]) -> Result<f64> {
        match &self.outputs {
            Some(o) => o.plans.iter().zip(accs).try_fold(0.0, |sum, (p, a)| {
                Ok(sum + p.spec.weight as f64 * a.mean_loss()?)
            }),
            None => accs.first().map_or(Ok(0.0), Accumulator::mean_loss),
        }
    }

    /// The loss (weighted sum) and metrics, with `{output}_loss` and `{output}_{metric}`,
    /// over the sums of every rank of `group`, if given.
    pub(super) fn finish_with(
        &self,
        accs: &[Accumulator],
        mut group: super::fit::Group<'_>,
    ) -> Result<Evaluation> {
        let mut finish = |a: &Accumulator| match super::fit::lend(&mut group) {
            Some(g) => {
                let mut sums = a.sums()?;
                g.all_reduce_sum(&mut sums)?;
                a.finish_from(&sums)
            }
            None => a.finish(),
        };
        let Some(o) = &self.outputs else {
            return match accs.first() {
                Some(a) => finish(a),
                None => Err(Error::arg("accumulator", "none")),
            };
        };
        let mut e = Evaluation {
            loss: 0.0,
            metrics: Vec::new(),
            confusion: None,
        };
        for (p, a) in o.plans.iter().zip(accs) {
            let one = finish(a)?;
            let name = &p.spec.name;
            e.loss += p.spec.weight as f64 * one.loss;
            e.metrics.push((format!("{name}_loss"), one.loss));
            for (m, v) in one.metrics {
                e.metrics.push((format!("{name}_{m}"), v));
            }
            if e.confusion.is_none() {
                e.confusion = one.confusion;
            }
        }
        Ok(e)
    }

    /// Each output's loss on the batch in workspace `key` (after a forward pass), its
    /// gradient (weighted) unless evaluating; nothing is read back.
    pub(super) fn output_losses_ws(
        &mut self,
        key: (usize, usize),
        losses: Losses<'_>,
    ) -> Result<()> {
        let Some(Outputs { plans, bufs, probe }) = self.outputs.as_mut() else {
            return Err(Error::arg("model", "not compiled with compile_outputs"));
        };
        let device = self.model.device.clone();
        let rows = key.0;
        if !bufs.contains_key(&rows) {
            if bufs.len() >= 4 {
                bufs.clear();
            }
            let made = plans
                .iter()
                .map(|p| {
                    let grad = (p.spec.weight != 1.0)
                        .then(|| {
                            let shape: Vec<usize> = std::iter::once(rows)
                                .chain(p.shape.iter().copied())
                                .collect();
                            Tensor::zeros(&device, &shape)
                        })
                        .transpose()?;
                    Ok((Tensor::zeros(&device, &[rows, p.target_width])?, grad))
                })
                .collect::<Result<Bufs>>()?;
            bufs.insert(rows, made);
        }
        let b = bufs
            .get_mut(&rows)
            .ok_or_else(|| Error::arg("workspace", "no output buffers"))?;
        let ws = self.model.workspace(key.0, key.1)?;
        let (mut accs, grad) = match losses {
            Losses::Train(a) => (Some(a), true),
            Losses::Eval(a) => (Some(a), false),
            Losses::Probe => (None, true),
        };
        for (k, (p, (target, scratch))) in plans.iter().zip(b.iter_mut()).enumerate() {
            split_cols_into(&ws.target, p.offset, target)?;
            let missing = || Error::arg("workspace", "no activation for an output");
            let pred = ws.acts.get(p.act).ok_or_else(missing)?;
            let (log, slot) = match accs.as_deref_mut() {
                Some(a) => a.get_mut(k).ok_or_else(missing)?.loss_slot()?,
                None => (&mut *probe, k),
            };
            if grad {
                let g = ws.grads.get_mut(p.act).ok_or_else(missing)?;
                match scratch.as_mut() {
                    Some(s) => {
                        loss_and_grad_at(p.train_loss, pred, target, s, log, slot)?;
                        scale_into(s, p.spec.weight, g)?;
                    }
                    None => loss_and_grad_at(p.train_loss, pred, target, g, log, slot)?,
                }
            } else {
                loss_value_at(p.train_loss, pred, target, log, slot)?;
            }
            if let Some(a) = accs.as_deref_mut() {
                a.get_mut(k).ok_or_else(missing)?.add(pred, target, rows)?;
            }
        }
        Ok(())
    }

    /// Forward and backward of a several-output trainer on the batch in workspace `key`.
    pub(super) fn step_outputs(
        &mut self,
        key: (usize, usize),
        accs: &mut [Accumulator],
    ) -> Result<()> {
        self.model.dropout_step = self.step as u32;
        self.model
            .forward_ws(key, &self.train_stages, Pass::Train)?;
        self.output_losses_ws(key, Losses::Train(accs))?;
        self.model.backward_ws(key, &self.train_stages, false)?;
        Ok(())
    }

    /// The weighted loss of `gradients` (reads the probe log back).
    pub(super) fn probe_outputs(&mut self, key: (usize, usize)) -> Result<f32> {
        self.output_losses_ws(key, Losses::Probe)?;
        let Some(o) = &self.outputs else {
            return Err(Error::arg("model", "not compiled with compile_outputs"));
        };
        let values = o.probe.to_vec()?;
        Ok(o.plans
            .iter()
            .zip(values)
            .map(|(p, v)| p.spec.weight * v)
            .sum())
    }

    /// What predictions apply to each output (a softmax or sigmoid the loss took), by
    /// output name, in the model's order.
    pub(crate) fn prediction_heads(&self) -> Vec<(String, Output)> {
        match &self.outputs {
            Some(o) => o
                .plans
                .iter()
                .map(|p| (p.spec.name.clone(), p.output))
                .collect(),
            None => self
                .model
                .outputs
                .iter()
                .map(|o| (o.0.clone(), self.output))
                .collect(),
        }
    }

    /// Each output's predictions for rows `x`, by name: probabilities for classifiers
    /// (a softmax or sigmoid the loss took is applied), raw values otherwise.
    pub fn predict_outputs(
        &mut self,
        x: &[f32],
        batch_size: usize,
    ) -> Result<Vec<(String, Vec<f32>)>> {
        let rows = self.model.rows_of(x, "input x")?;
        self.check_finite(x)?;
        let w = self.model.input_width();
        let stages = self.model.stages.clone();
        let heads: Vec<(String, usize, Output)> = match &self.outputs {
            Some(o) => o
                .plans
                .iter()
                .map(|p| (p.spec.name.clone(), p.out_act, p.output))
                .collect(),
            None => {
                let name = self
                    .model
                    .outputs
                    .first()
                    .map_or(String::new(), |o| o.0.clone());
                let out = self.predict(x, batch_size)?;
                return Ok(vec![(name, out)]);
            }
        };
        let mut out: Vec<(String, Vec<f32>)> = heads
            .iter()
            .map(|(n, _, _)| (n.clone(), Vec::new()))
            .collect();
        for chunk in x.chunks(batch_size.clamp(1, rows).saturating_mul(w)) {
            let batch = chunk.len() / w;
            let key = (batch, self.target_width());
            self.model.workspace(batch, key.1)?.acts[0].write(chunk)?;
            self.model.forward_ws(key, &stages, Pass::Infer)?;
            let ws = self.model.workspace(batch, key.1)?;
            for ((_, act, output), (_, values)) in heads.iter().zip(out.iter_mut()) {
                let y = ws
                    .acts
                    .get(*act)
                    .ok_or_else(|| Error::arg("workspace", "no activation for an output"))?;
                let mut p = Tensor::uninit(&y.device(), y.shape())?;
                match output {
                    Output::Raw => p.copy_from(y)?,
                    Output::Softmax => softmax_into(y, &mut p)?,
                    Output::Sigmoid => activation_into(Activation::Sigmoid, y, &mut p)?,
                }
                values.extend(p.to_vec()?);
            }
        }
        Ok(out)
    }

    /// Checks the class ids of every sparse categorical output's column of packed `y`.
    pub(super) fn check_output_labels(&self, y: &[f32]) -> Result<()> {
        let Some(o) = &self.outputs else {
            return Ok(());
        };
        let tw = self.target_width().max(1);
        for p in o
            .plans
            .iter()
            .filter(|p| p.train_loss == Loss::SparseCategoricalCrossEntropy)
        {
            let classes = p.classes;
            for (r, row) in y.chunks(tw).enumerate() {
                let ids = row.get(p.offset..p.offset + p.target_width).unwrap_or(&[]);
                let bad = ids
                    .iter()
                    .find(|&&v| v < 0.0 || v.fract() != 0.0 || v as usize >= classes);
                if let Some(&v) = bad {
                    return Err(Error::arg(
                        "labels y",
                        format!(
                            "row {r} of output '{}' has label {v} but it has {classes} classes",
                            p.spec.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
