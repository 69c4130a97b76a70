//! Many small models trained at once: K trials of one MLP shape (a hyperparameter
//! search's candidates) stacked into the same dispatches, with per-trial learning
//! rates, weight decay, seeds, optimizer state and logs.
//!
//! A 784-128-10 step is a handful of small dispatches, so one trial leaves a GPU idle;
//! K stacked trials run the same number of dispatches, each K times wider. The trials
//! share the data order and batch size, so one gathered batch serves all of them. The
//! hidden activations lie side by side in one wide matrix (`[rows, K * units]`), so
//! the first layer's forward and weight gradient are each one ordinary matmul over
//! every trial; the other products are strided batched ones
//! ([`crate::ops::batched_matmul`]) and the logits are stacked (`[K, rows, classes]`)
//! for the loss. Each trial's loss and confusion matrix go into device logs that are
//! read back once per epoch for all K.

use std::collections::HashMap;
use std::time::Instant;

use super::data::{split_point, upload_rows, DeviceData};
use super::{EpochLog, History, Metric, Trainer, Validation};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{Layer, Model, Sequential};
use crate::ops::batched_matmul::{Batched, Operand, Strides};
use crate::ops::dense_grad::{dense_grad_into, DenseGrad};
use crate::ops::loss::{stacked_softmax_ce_at, Loss};
use crate::ops::matmul::{Dims, Gemm};
use crate::ops::metrics::{confusion_accumulate_stacked, ConfusionMatrix};
use crate::ops::optim::{step_trials, Rule, TrialSlot, TRIAL_ROW};
use crate::ops::Activation;
use crate::optim::Optimizer;
use crate::tensor::Tensor;

/// Most trials one stack holds: each kernel takes the trial from the grid's z dimension.
pub const MAX_TRIALS: usize = 65535;

/// One trial: a model, its optimizer (learning rate, schedule, and the L2 penalty as its
/// weight decay) and the seed of its initial weights.
#[derive(Clone, Debug)]
pub struct TrialConfig {
    /// Dense layers with activations, ending in logits (a final softmax is allowed).
    pub model: Sequential,
    /// The update rule and its numbers; gradient clipping is not stacked.
    pub optimizer: Optimizer,
    /// Seeds the initial weights, as `Sequential::build`.
    pub seed: u64,
}

/// What trials must share to be stacked: the input width and each dense layer's units
/// and activation (the last has none: it gives the logits).
#[derive(Clone, Debug, PartialEq)]
pub struct StackShape {
    /// Input width.
    pub inputs: usize,
    /// (units, activation) of each dense layer in order.
    pub layers: Vec<(usize, Activation)>,
}

impl StackShape {
    /// The shape of `model`, or an error naming what cannot be stacked.
    pub fn of(model: &Sequential) -> Result<StackShape> {
        let bad = |why: String| Error::arg("stacked trials", why);
        let mut layers: Vec<(usize, Activation)> = Vec::new();
        let mut softmax = false;
        for (i, layer) in model.layers.iter().enumerate() {
            if softmax {
                return Err(bad(format!("layer {i} follows the final softmax")));
            }
            match layer {
                Layer::Dense(d) if d.use_bias && d.l1 == 0.0 && d.l2 == 0.0 => {
                    layers.push((d.units, Activation::Identity));
                }
                Layer::Dense(_) => {
                    return Err(bad(format!(
                        "layer {i}: stacked dense layers have a bias and no L1/L2 of \
                         their own (give each trial its optimizer's weight decay)"
                    )))
                }
                Layer::Activation(a) => match layers.last_mut() {
                    Some(last) if last.1 == Activation::Identity && a.derivative_from_output() => {
                        last.1 = *a;
                    }
                    _ => {
                        return Err(bad(format!(
                            "layer {i}: an activation stacks only after a dense layer \
                             without one, and not GELU"
                        )))
                    }
                },
                Layer::Softmax if !layers.is_empty() => softmax = true,
                Layer::Flatten => {}
                other => {
                    return Err(bad(format!(
                        "layer {i} ({}) does not stack: only dense layers, activations \
                         and a final softmax do",
                        other.variant()
                    )))
                }
            }
        }
        match layers.last() {
            Some((_, Activation::Identity)) => Ok(StackShape {
                inputs: model.input,
                layers,
            }),
            Some(_) => Err(bad(
                "the last dense layer must give logits (no activation but softmax)".into(),
            )),
            None => Err(bad("the model has no dense layer".into())),
        }
    }

    /// The width before dense layer `l` (0-based) and after it (`l + 1`).
    fn width(&self, l: usize) -> usize {
        match l {
            0 => self.inputs,
            _ => self.layers[l - 1].0,
        }
    }

    /// The number of classes: the last layer's units.
    pub fn classes(&self) -> usize {
        self.width(self.layers.len())
    }
}

/// The indices of `trials` grouped by [`StackShape`], each group in the given order and
/// the groups in order of their first trial: each group can be one [`StackedTrials`].
pub fn group_by_shape(trials: &[TrialConfig]) -> Result<Vec<Vec<usize>>> {
    let mut groups: Vec<(StackShape, Vec<usize>)> = Vec::new();
    for (i, t) in trials.iter().enumerate() {
        let shape = StackShape::of(&t.model)?;
        match groups.iter_mut().find(|(s, _)| *s == shape) {
            Some((_, members)) => members.push(i),
            None => groups.push((shape, vec![i])),
        }
    }
    Ok(groups.into_iter().map(|(_, m)| m).collect())
}

/// How stacked trials train: what [`crate::FitOptions`] says, for every trial at once.
#[derive(Clone, Debug)]
pub struct StackOptions {
    /// Passes over the data.
    pub epochs: usize,
    /// Rows per optimizer step, shared by every trial.
    pub batch_size: usize,
    /// Shuffle the rows every epoch (seeded; every trial sees the same order).
    pub shuffle: bool,
    /// Seed of the shuffling (as `FitOptions::seed`: the same order as `fit`).
    pub seed: u64,
    /// Validation data, evaluated for every trial after every epoch.
    pub validation: Validation,
    /// Training steps recorded into one GPU submission (0 counts as 1).
    pub steps_per_execution: usize,
}

impl StackOptions {
    /// `epochs` passes in batches of `batch_size`, shuffled with seed 0, no validation.
    pub fn new(epochs: usize, batch_size: usize) -> StackOptions {
        StackOptions {
            epochs,
            batch_size,
            shuffle: true,
            seed: 0,
            validation: Validation::None,
            steps_per_execution: 8,
        }
    }
}

/// Trains every trial in `trials` (one shape) stacked; one [`History`] per trial.
pub fn fit_stacked(
    device: &Device,
    trials: &[TrialConfig],
    x: &[f32],
    y: &[f32],
    opts: &StackOptions,
) -> Result<Vec<History>> {
    StackedTrials::new(device, trials)?.fit(x, y, opts)
}

/// Trains trials of any shapes: each group of one shape ([`group_by_shape`]) stacked,
/// one group after another; the histories come back in the order of `trials`.
pub fn fit_grouped(
    device: &Device,
    trials: &[TrialConfig],
    x: &[f32],
    y: &[f32],
    opts: &StackOptions,
) -> Result<Vec<History>> {
    let mut out: Vec<Option<History>> = vec![None; trials.len()];
    for group in group_by_shape(trials)? {
        let members: Vec<TrialConfig> = group.iter().map(|&i| trials[i].clone()).collect();
        for (i, h) in group
            .into_iter()
            .zip(fit_stacked(device, &members, x, y, opts)?)
        {
            out[i] = Some(h);
        }
    }
    out.into_iter()
        .map(|h| h.ok_or_else(|| Error::arg("stacked trials", "a trial was not trained")))
        .collect()
}

/// One parameter of every trial, stacked, with its gradient and, per optimizer kernel
/// ([`Rule::same_kernel`]), its state.
struct Param {
    value: Tensor,
    grad: Tensor,
    state: Vec<Vec<Tensor>>,
}

/// The activations and gradients of one batch size.
struct Workspace {
    x: Tensor,
    y: Tensor,
    /// Ones, `[rows]`: the output bias gradient is `1^T dZ`.
    ones: Tensor,
    /// Each hidden layer's output, wide: `[rows, K * units]`.
    acts: Vec<Tensor>,
    /// The gradient into each hidden layer's output, wide.
    dy: Vec<Tensor>,
    /// The gradient of each hidden layer's pre-activation, wide, and its transpose.
    dz: Vec<Tensor>,
    dzt: Vec<Tensor>,
    /// Stacked logits and their gradient: `[K, rows, classes]`.
    logits: Tensor,
    dlogits: Tensor,
}

/// Device logs of one pass over a data set: each trial's mean loss per batch, and its
/// confusion counts.
struct Logs {
    losses: Tensor,
    counts: Tensor,
    rows: Vec<usize>,
}

/// K trials of one shape, their weights stacked on one device.
pub struct StackedTrials {
    device: Device,
    shape: StackShape,
    trials: Vec<TrialConfig>,
    /// The layer index of each dense layer (its parameters' names).
    dense_at: Vec<usize>,
    /// Weight then bias of each dense layer.
    params: Vec<Param>,
    /// The distinct optimizer kernels and, per trial, which one updates it.
    kinds: Vec<Rule>,
    kind_of: Vec<usize>,
    step: u64,
    epoch: usize,
    workspaces: HashMap<usize, Workspace>,
}

impl StackedTrials {
    /// Stacks `trials` on `device`: each trial's weights initialised as
    /// `Sequential::build(seed)` initialises them. Trials of different shapes, or none,
    /// are an error.
    pub fn new(device: &Device, trials: &[TrialConfig]) -> Result<StackedTrials> {
        let Some(first) = trials.first() else {
            return Err(Error::arg("trials", "no trials to stack"));
        };
        if trials.len() > MAX_TRIALS {
            return Err(Error::arg(
                "trials",
                format!(
                    "{} trials; a stack holds at most {MAX_TRIALS}",
                    trials.len()
                ),
            ));
        }
        let shape = StackShape::of(&first.model)?;
        for (i, t) in trials.iter().enumerate() {
            let other = StackShape::of(&t.model)?;
            if other != shape {
                return Err(Error::shape(
                    "stacked trials",
                    format!(
                        "trial {i} is {other:?} but trial 0 is {shape:?}: stack each shape \
                         apart (group_by_shape, fit_grouped)"
                    ),
                ));
            }
            if t.optimizer.clip_norm.is_some() {
                return Err(Error::arg(
                    "stacked trials",
                    format!("trial {i} clips gradients, which stacked training does not"),
                ));
            }
        }
        let mut kinds: Vec<Rule> = Vec::new();
        let mut kind_of = Vec::new();
        for t in trials {
            let rule = t.optimizer.rule;
            match kinds.iter().position(|k| k.same_kernel(&rule)) {
                Some(i) => kind_of.push(i),
                None => {
                    kind_of.push(kinds.len());
                    kinds.push(rule);
                }
            }
        }
        let dense_at: Vec<usize> = (first.model.layers.iter().enumerate())
            .filter(|(_, l)| matches!(l, Layer::Dense(_)))
            .map(|(i, _)| i)
            .collect();
        let params = init_params(device, &shape, trials, &dense_at, &kinds)?;
        Ok(StackedTrials {
            device: device.clone(),
            shape,
            trials: trials.to_vec(),
            dense_at,
            params,
            kinds,
            kind_of,
            step: 0,
            epoch: 0,
            workspaces: HashMap::new(),
        })
    }

    /// How many trials are stacked.
    pub fn len(&self) -> usize {
        self.trials.len()
    }

    /// Whether no trial is stacked (never: `new` refuses that).
    pub fn is_empty(&self) -> bool {
        self.trials.is_empty()
    }

    /// The shape every trial has.
    pub fn shape(&self) -> &StackShape {
        &self.shape
    }

    /// Optimizer steps taken so far (the same for every trial).
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Trial `trial`'s parameters by their model names ("0.weight", "0.bias", ...).
    pub fn params(&self, trial: usize) -> Result<Vec<(String, Vec<f32>)>> {
        if trial >= self.len() {
            return Err(Error::arg(
                "trial",
                format!("{trial} of {} trials", self.len()),
            ));
        }
        let mut out = Vec::new();
        for (l, &at) in self.dense_at.iter().enumerate() {
            for (field, p) in ["weight", "bias"]
                .iter()
                .zip(&self.params[2 * l..2 * l + 2])
            {
                let n = p.value.len() / self.len();
                let all = p.value.to_vec()?;
                out.push((
                    format!("{at}.{field}"),
                    all[trial * n..(trial + 1) * n].to_vec(),
                ));
            }
        }
        Ok(out)
    }

    /// Trial `trial` as an ordinary model on the stack's device, holding its trained
    /// weights (to evaluate, save or train further with a `Trainer`).
    pub fn model(&self, trial: usize) -> Result<Model> {
        let values = self.params(trial)?;
        let t = &self.trials[trial];
        let mut model = t.model.build(&self.device, t.seed)?;
        for p in model.params_mut() {
            if let Some((_, v)) = values.iter().find(|(n, _)| *n == p.name) {
                p.value.write(v)?;
            }
        }
        Ok(model)
    }

    /// Epochs trained so far (over every call to [`StackedTrials::fit`]).
    pub fn epochs(&self) -> usize {
        self.epoch
    }

    /// Trial `trial` as a trainer that carries on where the stack is: its weights, its
    /// optimizer's state (moments) and its step and epoch counts, compiled with `loss`
    /// and `metrics`, so that a checkpoint of it resumes as if it had trained alone.
    pub fn trainer(&self, trial: usize, loss: Loss, metrics: &[Metric]) -> Result<Trainer> {
        let t = self
            .trials
            .get(trial)
            .ok_or_else(|| Error::arg("trial", format!("{trial} of {} trials", self.len())))?;
        let mut trainer = self
            .model(trial)?
            .compile(loss, t.optimizer.clone(), metrics)?;
        let kind = self.kind_of[trial];
        for (l, &at) in self.dense_at.iter().enumerate() {
            for (field, p) in ["weight", "bias"]
                .iter()
                .zip(&self.params[2 * l..2 * l + 2])
            {
                let name = format!("{at}.{field}");
                let n = p.value.len() / self.len();
                let Some(target) = trainer
                    .model
                    .params_mut()
                    .iter_mut()
                    .find(|q| q.name == name)
                else {
                    return Err(Error::arg("stacked trials", format!("no parameter {name}")));
                };
                let shape = target.value.shape().to_vec();
                target.state = p.state[kind]
                    .iter()
                    .map(|slot| {
                        let all = slot.to_vec()?;
                        Tensor::from_slice(&self.device, &all[trial * n..(trial + 1) * n], &shape)
                    })
                    .collect::<Result<_>>()?;
            }
        }
        trainer.set_progress(self.step, self.epoch);
        Ok(trainer)
    }

    /// Trains every trial on rows `x` with class ids `y`; one history per trial, in order.
    /// A trial whose loss is not finite keeps training (its log shows NaN) so as not
    /// to stop the others.
    pub fn fit(&mut self, x: &[f32], y: &[f32], opts: &StackOptions) -> Result<Vec<History>> {
        let rows = self.check_data(x, y)?;
        if opts.batch_size == 0 {
            return Err(Error::arg("batch_size", "must be at least 1"));
        }
        let w = self.shape.inputs;
        let (train_rows, val) = match &opts.validation {
            Validation::None => (rows, None),
            Validation::Split(f) => {
                let keep = split_point(rows, *f)?;
                (keep, Some((&x[keep * w..], &y[keep..])))
            }
            Validation::Data { x: vx, y: vy } => {
                self.check_data(vx, vy)?;
                (rows, Some((vx.as_slice(), vy.as_slice())))
            }
        };
        let mut data = upload_rows(&self.device, &x[..train_rows * w], &y[..train_rows], w, 1)?;
        let val_data = match val {
            Some((vx, vy)) if !vx.is_empty() => Some(upload_rows(&self.device, vx, vy, w, 1)?),
            _ => None,
        };
        let steps = train_rows.div_ceil(opts.batch_size);
        let mut train_logs = self.logs(train_rows, opts.batch_size)?;
        let mut val_logs = match &val_data {
            Some(v) => Some(self.logs(v.rows, opts.batch_size)?),
            None => None,
        };
        let table_len = self.kinds.len() * steps * self.len() * TRIAL_ROW;
        let mut table = Tensor::zeros(&self.device, &[table_len])?;
        let mut histories = vec![History::default(); self.len()];
        for _ in 0..opts.epochs {
            let epoch = self.epoch + 1;
            if opts.shuffle {
                data.shuffle(opts.seed, epoch)?;
            }
            table.write(&self.table(steps)?)?;
            train_logs.reset()?;
            let start = Instant::now();
            self.train_epoch(&data, opts, &mut train_logs, &table)?;
            if let (Some(v), Some(logs)) = (&val_data, val_logs.as_mut()) {
                logs.reset()?;
                self.evaluate(v, opts, logs)?;
            }
            let mut read: Vec<&Tensor> = vec![&train_logs.losses, &train_logs.counts];
            if let Some(logs) = &val_logs {
                read.extend([&logs.losses, &logs.counts]);
            }
            let values = Tensor::read_many(&read)?;
            let seconds = start.elapsed().as_secs_f64();
            let (train, rest) = values.split_at(train_logs.len());
            for (k, h) in histories.iter_mut().enumerate() {
                let (loss, metrics) = train_logs.trial(train, k, self.len())?;
                let (val_loss, val_metrics) = match &val_logs {
                    Some(logs) => {
                        let (l, m) = logs.trial(rest, k, self.len())?;
                        (Some(l), m)
                    }
                    None => (None, Vec::new()),
                };
                let o = &self.trials[k].optimizer;
                let last = self.step.saturating_sub(1) as usize;
                h.epochs.push(EpochLog {
                    epoch,
                    loss,
                    metrics,
                    val_loss,
                    val_metrics,
                    lr: o.schedule.lr(o.lr, self.epoch, last),
                    seconds,
                });
            }
            self.epoch = epoch;
        }
        Ok(histories)
    }

    /// Checks rows against the input width and labels against the classes; returns rows.
    fn check_data(&self, x: &[f32], y: &[f32]) -> Result<usize> {
        let w = self.shape.inputs;
        let classes = self.shape.classes();
        if w == 0 || !x.len().is_multiple_of(w) || x.len() / w != y.len() {
            return Err(Error::shape(
                "stacked trials data",
                format!(
                    "{} input values and {} labels for rows of {w} inputs",
                    x.len(),
                    y.len()
                ),
            ));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::arg("input x", format!("value {i} is {}", x[i])));
        }
        if let Some(i) =
            (y.iter()).position(|&v| !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < classes))
        {
            return Err(Error::arg(
                "labels y",
                format!("row {i} has label {} but there are {classes} classes", y[i]),
            ));
        }
        Ok(y.len())
    }

    /// Empty logs for a pass over `rows` rows in batches of `batch`.
    fn logs(&self, rows: usize, batch: usize) -> Result<Logs> {
        let (k, c) = (self.len(), self.shape.classes());
        let batches = rows.div_ceil(batch);
        Ok(Logs {
            losses: Tensor::zeros(&self.device, &[k * batches])?,
            counts: Tensor::zeros(&self.device, &[k, c, c])?,
            rows: (0..batches).map(|b| batch.min(rows - b * batch)).collect(),
        })
    }

    /// The hyperparameter table of the next `steps` steps: per optimizer kernel, per
    /// step, a row per trial (zeros for the trials that kernel does not update).
    fn table(&self, steps: usize) -> Result<Vec<f32>> {
        let k = self.len();
        let mut table = vec![0.0; self.kinds.len() * steps * k * TRIAL_ROW];
        for s in 0..steps {
            let t = self.step + s as u64 + 1;
            for (trial, cfg) in self.trials.iter().enumerate() {
                let o = &cfg.optimizer;
                let lr = o.schedule.lr(o.lr, self.epoch, (t - 1) as usize);
                let row = o.rule.trial_row(lr, o.weight_decay, t)?;
                let at = ((self.kind_of[trial] * steps + s) * k + trial) * TRIAL_ROW;
                table[at..at + TRIAL_ROW].copy_from_slice(&row);
            }
        }
        Ok(table)
    }

    /// One epoch of steps, recorded with no readback.
    fn train_epoch(
        &mut self,
        data: &DeviceData,
        opts: &StackOptions,
        logs: &mut Logs,
        table: &Tensor,
    ) -> Result<()> {
        let steps = logs.rows.len();
        for s in 0..steps {
            let rows = self.loss(data, s * opts.batch_size, (logs, s), true)?;
            self.backward(rows)?;
            let t = self.step + 1;
            for (c, rule) in self.kinds.iter().enumerate() {
                for p in self.params.iter_mut() {
                    let slot = TrialSlot {
                        value: &mut p.value,
                        grad: &p.grad,
                        state: &mut p.state[c],
                    };
                    let row = (c * steps + s) * self.trials.len();
                    step_trials(rule, t, (table, row), self.trials.len(), slot)?;
                }
            }
            self.step = t;
            if (s + 1) % opts.steps_per_execution.max(1) == 0 || s + 1 == steps {
                self.device.flush()?;
            }
        }
        Ok(())
    }

    /// Every trial's loss and confusion counts on `data`, into `logs` (no readback).
    fn evaluate(&mut self, data: &DeviceData, opts: &StackOptions, logs: &mut Logs) -> Result<()> {
        let batches = logs.rows.len();
        for b in 0..batches {
            self.loss(data, b * opts.batch_size, (logs, b), false)?;
            if (b + 1) % opts.steps_per_execution.max(1) == 0 {
                self.device.flush()?;
            }
        }
        Ok(())
    }

    /// Every trial's forward pass on batch `b` of `logs` (at row `start` of `data`), its
    /// loss into the log and its confusion counts, and with `grad` the logits' gradient;
    /// returns the batch's rows.
    fn loss(
        &mut self,
        data: &DeviceData,
        start: usize,
        (logs, b): (&mut Logs, usize),
        grad: bool,
    ) -> Result<usize> {
        let (rows, batches) = (logs.rows[b], logs.rows.len());
        self.forward(data, start, rows)?;
        let ws = self.workspace(rows)?;
        let dlogits = if grad { Some(&mut ws.dlogits) } else { None };
        let log = (&mut logs.losses, b, batches);
        let sparse = Loss::SparseCategoricalCrossEntropy;
        stacked_softmax_ce_at(sparse, &ws.logits, &ws.y, dlogits, log)?;
        confusion_accumulate_stacked(&ws.logits, &ws.y, &mut logs.counts)?;
        Ok(rows)
    }

    /// The workspace of batches of `rows` rows, made on first use.
    fn workspace(&mut self, rows: usize) -> Result<&mut Workspace> {
        if !self.workspaces.contains_key(&rows) {
            let ws = Workspace::new(&self.device, &self.shape, self.trials.len(), rows)?;
            self.workspaces.insert(rows, ws);
        }
        self.workspaces
            .get_mut(&rows)
            .ok_or_else(|| Error::arg("stacked trials", "no workspace"))
    }

    /// Gathers the batch at `start` and runs every trial's forward pass to the logits.
    fn forward(&mut self, data: &DeviceData, start: usize, rows: usize) -> Result<()> {
        let k = self.trials.len();
        let ws = self.workspace(rows)?;
        data.gather(start, &mut ws.x, &mut ws.y)?;
        let (shape, params) = (&self.shape, &self.params);
        let ws = self
            .workspaces
            .get_mut(&rows)
            .ok_or_else(|| Error::arg("stacked trials", "no workspace"))?;
        let last = shape.layers.len();
        for (l, &(units, act)) in shape.layers.iter().enumerate() {
            let inw = shape.width(l);
            let (w, b) = (&params[2 * l].value, &params[2 * l + 1].value);
            let (before, after) = ws.acts.split_at_mut(l);
            let a = match before.last() {
                Some(h) => Operand {
                    tensor: h,
                    strides: Strides::wide(k, inw),
                },
                None => Operand {
                    tensor: &ws.x,
                    strides: Strides::shared(inw),
                },
            };
            if l == 0 && l + 1 < last {
                // Every trial's first layer is one product: x by all trials' weights.
                Gemm::nt()
                    .with_act(act)
                    .run_into(&ws.x, w, Some(b), &mut after[0])?;
                continue;
            }
            let (out, strides) = match after.first_mut() {
                Some(out) if l + 1 < last => (out, Strides::wide(k, units)),
                _ => (&mut ws.logits, Strides::stacked(rows, units)),
            };
            let product = Batched {
                gemm: Gemm::nt().with_act(act),
                dims: Dims {
                    m: rows,
                    n: units,
                    k: inw,
                },
                trials: k,
            };
            let w = Operand {
                tensor: w,
                strides: Strides::stacked(units, inw),
            };
            let b = Operand {
                tensor: b,
                strides: Strides::stacked(1, units),
            };
            product.run_into(a, w, Some(b), out, strides)?;
        }
        Ok(())
    }

    /// Every trial's backward pass from the logits' gradient to its weight gradients.
    fn backward(&mut self, rows: usize) -> Result<()> {
        let k = self.trials.len();
        let (shape, params) = (&self.shape, &mut self.params);
        let ws = self
            .workspaces
            .get_mut(&rows)
            .ok_or_else(|| Error::arg("stacked trials", "no workspace"))?;
        let last = shape.layers.len() - 1;
        // The output layer: dW = dZ^T A, db = 1^T dZ, and dA = dZ W into the last hidden layer.
        let (classes, inw) = (shape.classes(), shape.width(last));
        let dz = Operand {
            tensor: &ws.dlogits,
            strides: Strides::stacked(rows, classes),
        };
        let a = layer_input(&ws.x, &ws.acts, last, inw, k);
        let dw = &mut params[2 * last].grad;
        weight_grad(Gemm::tn(), (k, rows), dz, a, (classes, inw), dw)?;
        let ones = Operand {
            tensor: &ws.ones,
            strides: Strides::shared(rows),
        };
        let bias_grad = Batched {
            gemm: Gemm::nn(),
            dims: Dims {
                m: 1,
                n: classes,
                k: rows,
            },
            trials: k,
        };
        let db = &mut params[2 * last + 1].grad;
        bias_grad.run_into(ones, dz, None, db, Strides::stacked(1, classes))?;
        if last > 0 {
            let (w, out) = (&params[2 * last].value, &mut ws.dy[last - 1]);
            input_grad(k, rows, dz, w, (classes, inw), out)?;
        }
        for l in (0..last).rev() {
            let (units, act) = shape.layers[l];
            let grads = DenseGrad {
                dz: &mut ws.dz[l],
                dzt: &mut ws.dzt[l],
                db: Some(&mut params[2 * l + 1].grad),
            };
            dense_grad_into(act, &ws.acts[l], &ws.dy[l], grads)?;
            let inw = shape.width(l);
            if l == 0 {
                // Every trial's first weight gradient is one product: dZ^T (all trials) by x.
                Gemm::nn().run_into(&ws.dzt[0], &ws.x, None, &mut params[0].grad)?;
                continue;
            }
            let dzt = Operand {
                tensor: &ws.dzt[l],
                strides: Strides::stacked(units, rows),
            };
            let a = layer_input(&ws.x, &ws.acts, l, inw, k);
            let dw = &mut params[2 * l].grad;
            weight_grad(Gemm::nn(), (k, rows), dzt, a, (units, inw), dw)?;
            let dz = Operand {
                tensor: &ws.dz[l],
                strides: Strides::wide(k, units),
            };
            let (w, out) = (&params[2 * l].value, &mut ws.dy[l - 1]);
            input_grad(k, rows, dz, w, (units, inw), out)?;
        }
        Ok(())
    }
}

/// The input of dense layer `l` (`inw` wide) for the batched products: the shared batch
/// for the first layer, else the previous layer's wide output.
fn layer_input<'a>(
    x: &'a Tensor,
    acts: &'a [Tensor],
    l: usize,
    inw: usize,
    k: usize,
) -> Operand<'a> {
    match l.checked_sub(1).and_then(|i| acts.get(i)) {
        Some(h) => Operand {
            tensor: h,
            strides: Strides::wide(k, inw),
        },
        None => Operand {
            tensor: x,
            strides: Strides::shared(inw),
        },
    }
}

/// `dW = dZ^T A` for every trial of a layer of `units` from `inw` inputs, from `dz`
/// stored as `gemm` reads it (`[rows, units]` with A^T, or `[units, rows]`).
fn weight_grad(
    gemm: Gemm,
    (k, rows): (usize, usize),
    dz: Operand,
    a: Operand,
    (units, inw): (usize, usize),
    dw: &mut Tensor,
) -> Result<()> {
    let product = Batched {
        gemm,
        dims: Dims {
            m: units,
            n: inw,
            k: rows,
        },
        trials: k,
    };
    product.run_into(dz, a, None, dw, Strides::stacked(units, inw))
}

/// `dA = dZ W` for every trial of a layer of `units` from `inw` inputs, into the wide
/// gradient of the layer's input.
fn input_grad(
    k: usize,
    rows: usize,
    dz: Operand,
    w: &Tensor,
    (units, inw): (usize, usize),
    out: &mut Tensor,
) -> Result<()> {
    let w = Operand {
        tensor: w,
        strides: Strides::stacked(units, inw),
    };
    let product = Batched {
        gemm: Gemm::nn(),
        dims: Dims {
            m: rows,
            n: inw,
            k: units,
        },
        trials: k,
    };
    product.run_into(dz, w, None, out, Strides::wide(k, inw))
}

/// Every trial's initial weights, stacked, with zero gradients and state.
fn init_params(
    device: &Device,
    shape: &StackShape,
    trials: &[TrialConfig],
    dense_at: &[usize],
    kinds: &[Rule],
) -> Result<Vec<Param>> {
    let k = trials.len();
    let shapes: Vec<Vec<usize>> = (0..shape.layers.len())
        .flat_map(|l| {
            let (units, inw) = (shape.width(l + 1), shape.width(l));
            [vec![k * units, inw], vec![k * units]]
        })
        .collect();
    let mut hosts: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| vec![0.0; s.iter().product()])
        .collect();
    for (t, cfg) in trials.iter().enumerate() {
        let model = cfg.model.build(&Device::Cpu, cfg.seed)?;
        for (l, &at) in dense_at.iter().enumerate() {
            for (j, field) in ["weight", "bias"].iter().enumerate() {
                let name = format!("{at}.{field}");
                let host = &mut hosts[2 * l + j];
                let n = host.len() / k;
                let v = match model.param(&name) {
                    Some(p) if p.len() == n => p.to_vec()?,
                    _ => return Err(Error::arg("stacked trials", format!("no {n}-value {name}"))),
                };
                host[t * n..(t + 1) * n].copy_from_slice(&v);
            }
        }
    }
    hosts
        .iter()
        .zip(&shapes)
        .map(|(h, s)| {
            let zeros = || Tensor::zeros(device, s);
            let state = kinds
                .iter()
                .map(|r| (0..r.state_slots()).map(|_| zeros()).collect())
                .collect::<Result<Vec<Vec<Tensor>>>>()?;
            Ok(Param {
                value: Tensor::from_slice(device, h, s)?,
                grad: zeros()?,
                state,
            })
        })
        .collect()
}

impl Workspace {
    /// The buffers of `k` trials on batches of `rows` rows.
    fn new(device: &Device, shape: &StackShape, k: usize, rows: usize) -> Result<Workspace> {
        let z = |s: &[usize]| Tensor::zeros(device, s);
        let hidden = &shape.layers[..shape.layers.len() - 1];
        let wide = |_: ()| -> Result<Vec<Tensor>> {
            hidden.iter().map(|&(u, _)| z(&[rows, k * u])).collect()
        };
        let classes = shape.classes();
        Ok(Workspace {
            x: z(&[rows, shape.inputs])?,
            y: z(&[rows, 1])?,
            ones: Tensor::full(device, &[rows], 1.0)?,
            acts: wide(())?,
            dy: wide(())?,
            dz: wide(())?,
            dzt: hidden
                .iter()
                .map(|&(u, _)| z(&[k * u, rows]))
                .collect::<Result<_>>()?,
            logits: z(&[k, rows, classes])?,
            dlogits: z(&[k, rows, classes])?,
        })
    }
}

impl Logs {
    /// Values read back: the losses, then the counts.
    fn len(&self) -> usize {
        self.losses.len() + self.counts.len()
    }

    /// Zeroes the counts for a new pass (each batch overwrites its loss slot).
    fn reset(&mut self) -> Result<()> {
        self.counts.write(&vec![0.0; self.counts.len()])
    }

    /// Trial `k`'s mean loss and accuracy from the values read back (`self.len()` of them).
    fn trial(&self, values: &[f32], k: usize, trials: usize) -> Result<(f64, Vec<(String, f64)>)> {
        let batches = self.rows.len();
        let total: usize = self.rows.iter().sum();
        let losses = &values[k * batches..(k + 1) * batches];
        let sum: f64 = (losses.iter().zip(&self.rows))
            .map(|(&l, &r)| f64::from(l) * r as f64)
            .sum();
        let cells = self.counts.len() / trials;
        let at = trials * batches + k * cells;
        let classes = self.counts.shape()[1];
        let counts = values[at..at + cells].iter().map(|&v| v as u64).collect();
        let accuracy = ConfusionMatrix::new(classes, counts)?.accuracy();
        Ok((
            sum / total.max(1) as f64,
            vec![("accuracy".into(), accuracy)],
        ))
    }
}
