//! A built model: parameters on its device, the fused execution plan, and the
//! forward and backward passes over reusable per-batch-size workspaces.

use std::collections::HashMap;

use super::layer::{norm_channels, Layer, Sequential};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::activation::{
    activation_backward_into, activation_into, softmax_backward_into, softmax_into,
};
use crate::ops::batch_norm::{BatchNorm, NormStats, RunningStats};
use crate::ops::dense_grad::{dense_grad_into, DenseGrad};
use crate::ops::dense_head::{dense_head_at, head_fits, Head, HeadOut};
use crate::ops::dropout::dropout_into;
use crate::ops::layer_norm::LayerNorm;
use crate::ops::loss::Loss;
use crate::ops::matmul::Gemm;
use crate::ops::pool::{global_avg_pool_backward_into, global_avg_pool_into};
use crate::ops::Activation;
use crate::tensor::Tensor;

/// One trainable tensor with its gradient and optimizer state.
pub struct Param {
    /// PyTorch state_dict name: "{layer index}.weight" or ".bias".
    pub name: String,
    /// The values.
    pub value: Tensor,
    /// The gradient of the last backward pass.
    pub grad: Tensor,
    /// Optimizer state (moments), created by the optimizer.
    pub state: Vec<Tensor>,
    /// L1 penalty.
    pub l1: f32,
    /// L2 penalty.
    pub l2: f32,
}

/// Non-trainable state of one layer: batch norm's running statistics, which move during
/// training, are saved in checkpoints (`N.running_mean`, `N.running_var`) and never optimized.
pub struct Buffers {
    /// Index of the layer in the `Sequential`.
    pub layer: usize,
    /// Running mean and unbiased variance, per feature or channel.
    pub running: RunningStats,
}

impl Buffers {
    /// The PyTorch state_dict names of the running mean and variance.
    fn names(&self) -> [String; 2] {
        ["running_mean", "running_var"].map(|field| format!("{}.{field}", self.layer))
    }

    /// The tensors under their names.
    fn named(&self) -> [(String, &Tensor); 2] {
        let [mean, var] = self.names();
        [(mean, &self.running.mean), (var, &self.running.var)]
    }

    /// The tensors under their names, writable.
    pub(crate) fn named_mut(&mut self) -> [(String, &mut Tensor); 2] {
        let [mean, var] = self.names();
        [(mean, &mut self.running.mean), (var, &mut self.running.var)]
    }
}

/// What a forward pass is for: it decides dropout and the statistics batch norm uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// A training step: dropout on, batch statistics, running statistics updated.
    Train,
    /// Gradients without a step: dropout off, batch statistics, running statistics kept.
    Probe,
    /// Gradients without a step, as `Probe` but with dropout on (the current step's masks).
    ProbeTrain,
    /// Inference: dropout off, running statistics.
    Infer,
}

/// One step of the execution plan; a dense layer absorbs the activation after it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Stage {
    /// Matmul with W^T, bias and a fused activation whose derivative follows from its output.
    Dense {
        w: usize,
        b: Option<usize>,
        act: Activation,
    },
    /// A standalone activation (GELU, or one not after a dense layer).
    Act(Activation),
    /// Row-wise softmax.
    Softmax,
    /// Inverted dropout.
    Dropout(f32),
    /// 2-D convolution with bias.
    Conv {
        w: usize,
        b: Option<usize>,
        conv: crate::ops::conv::Conv2d,
    },
    /// Max pooling (keeps the argmax in the workspace for the backward pass).
    MaxPool(crate::ops::pool::Pool2d),
    /// Average pooling.
    AvgPool(crate::ops::pool::Pool2d),
    /// Mean over each channel's plane.
    GlobalAvgPool,
    /// Flatten or reshape each sample: a copy, as tensors do not share buffers.
    Flatten,
    /// Batch normalisation; `running` indexes the model's buffers.
    BatchNorm {
        gamma: usize,
        beta: usize,
        running: usize,
        op: BatchNorm,
    },
    /// Layer normalisation over the features.
    LayerNorm {
        gamma: usize,
        beta: usize,
        op: LayerNorm,
    },
}

/// A plan whose last stage is a classifier's output layer: the fused head
/// ([`dense_head_at`]) runs it forward and backward, with the loss, in one dispatch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct HeadPlan {
    loss: Loss,
    /// The output layer's weight and bias.
    w: usize,
    b: Option<usize>,
    /// The stage before, when it is a dense layer: its bias and activation. Its dZ, dZ^T and
    /// bias gradient then come from the head, and its backward starts at its weight product.
    hidden: Option<(Option<usize>, Activation)>,
}

impl HeadPlan {
    /// Whether the head also did the dense stage before it (dZ, dZ^T, bias gradient).
    pub(crate) fn hidden_is_dense(&self) -> bool {
        self.hidden.is_some()
    }

    /// The plan's head, if `stages` end in logits for a softmax cross-entropy `loss`.
    pub(crate) fn of(stages: &[Stage], loss: Loss) -> Option<HeadPlan> {
        let categorical = matches!(
            loss,
            Loss::SparseCategoricalCrossEntropy | Loss::CategoricalCrossEntropy
        );
        let [.., before, Stage::Dense { w, b, act }] = stages else {
            return None;
        };
        if !categorical || *act != Activation::Identity {
            return None;
        }
        let hidden = match *before {
            Stage::Dense { b, act, .. } => Some((b, act)),
            _ => None,
        };
        Some(HeadPlan {
            loss,
            w: *w,
            b: *b,
            hidden,
        })
    }
}

/// Buffers for one batch size, created once and reused every step.
pub(crate) struct Workspace {
    /// acts[0] is the input, acts[i + 1] the output of stage i.
    pub acts: Vec<Tensor>,
    /// grads[i] is the loss gradient with respect to acts[i] (grads[0] unused).
    pub grads: Vec<Tensor>,
    /// Per stage scratch: dL/dz of dense stages with a fused activation, argmax of max pools.
    dz: Vec<Option<Tensor>>,
    /// Per dense stage: dL/dz transposed to [units, batch].
    dzt: Vec<Option<Tensor>>,
    /// Per normalisation stage: the mean and invstd its forward saved for the backward.
    norm: Vec<Option<NormStats>>,
    /// The batch's targets.
    pub target: Tensor,
    /// The batch's mean loss, on the device.
    pub loss: Tensor,
    /// Whether the last forward pass applied dropout (its backward masks likewise).
    dropout: bool,
}

/// A model with weights on a device.
pub struct Model {
    pub(crate) device: Device,
    pub(crate) spec: Sequential,
    pub(crate) widths: Vec<usize>,
    /// Sample shape after each stage of the plan.
    stage_shapes: Vec<Vec<usize>>,
    pub(crate) params: Vec<Param>,
    /// Non-trainable state, in layer order.
    pub(crate) buffers: Vec<Buffers>,
    pub(crate) stages: Vec<Stage>,
    workspaces: HashMap<(usize, usize), Workspace>,
    pub(crate) seed: u64,
    /// Counts forward passes in training mode, to draw fresh dropout masks.
    pub(crate) dropout_step: u32,
}

impl Sequential {
    /// Allocates and initialises the weights on `device` (seeded) and plans execution.
    pub fn build(&self, device: &Device, seed: u64) -> Result<Model> {
        let widths = self.widths()?;
        let shapes = self.shapes()?;
        let mut params = Vec::new();
        let mut buffers = Vec::new();
        let mut stages = Vec::new();
        let mut stage_shapes: Vec<Vec<usize>> = Vec::new();
        let mut shape = match self.image {
            Some((c, h, w)) => vec![c, h, w],
            None => vec![self.input],
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_seed = seed.wrapping_mul(0x9e37_79b9).wrapping_add(i as u64);
            let stage = match layer {
                Layer::Dense(d) => {
                    let width = shape[0];
                    // shapes() checked that the product fits in usize.
                    let count = d.units.saturating_mul(width);
                    if let Device::Gpu(ctx) = device {
                        // Refuse a weight over the adapter's limits before sampling it on the host.
                        ctx.check_size(
                            &format!("layer {i} (dense) weight [{}, {width}]", d.units),
                            count,
                        )?;
                    }
                    let w = d
                        .kernel_init
                        .try_sample(count, width, d.units, layer_seed)?;
                    let wshape = [d.units, width];
                    params.push(Param::new(
                        device,
                        format!("{i}.weight"),
                        &w,
                        &wshape,
                        d.l1,
                        d.l2,
                    )?);
                    let w = params.len() - 1;
                    let b = match d.use_bias {
                        true => {
                            let v = d.bias_init.try_sample(
                                d.units,
                                width,
                                d.units,
                                layer_seed ^ 0xb1a5,
                            )?;
                            params.push(Param::new(
                                device,
                                format!("{i}.bias"),
                                &v,
                                &[d.units],
                                0.0,
                                0.0,
                            )?);
                            Some(params.len() - 1)
                        }
                        false => None,
                    };
                    Some(Stage::Dense {
                        w,
                        b,
                        act: Activation::Identity,
                    })
                }
                Layer::Conv2d(c) => {
                    let (cin, (kh, kw)) = (shape[0], c.kernel);
                    // shapes() checked that filters * cin * kh * kw fits in usize.
                    let (fan_in, fan_out) = (cin * kh * kw, c.filters * kh * kw);
                    let n = c.filters * fan_in;
                    if let Device::Gpu(ctx) = device {
                        ctx.check_size(
                            &format!(
                                "layer {i} (conv2d) weight [{}, {cin}, {kh}, {kw}]",
                                c.filters
                            ),
                            n,
                        )?;
                    }
                    let w = c.kernel_init.try_sample(n, fan_in, fan_out, layer_seed)?;
                    let wshape = [c.filters, cin, kh, kw];
                    params.push(Param::new(
                        device,
                        format!("{i}.weight"),
                        &w,
                        &wshape,
                        0.0,
                        0.0,
                    )?);
                    let w = params.len() - 1;
                    let b = match c.use_bias {
                        true => {
                            let zeros = vec![0.0; c.filters];
                            params.push(Param::new(
                                device,
                                format!("{i}.bias"),
                                &zeros,
                                &[c.filters],
                                0.0,
                                0.0,
                            )?);
                            Some(params.len() - 1)
                        }
                        false => None,
                    };
                    Some(Stage::Conv {
                        w,
                        b,
                        conv: c.op()?,
                    })
                }
                Layer::Activation(act) => match stages.last_mut() {
                    // Fold into the dense layer when the derivative can come from the output.
                    Some(Stage::Dense { act: slot, .. })
                        if *slot == Activation::Identity && act.derivative_from_output() =>
                    {
                        *slot = *act;
                        None
                    }
                    _ => Some(Stage::Act(*act)),
                },
                Layer::Softmax => Some(Stage::Softmax),
                Layer::Dropout(rate) => Some(Stage::Dropout(*rate)),
                Layer::MaxPool2d(p) => Some(Stage::MaxPool(p.op())),
                Layer::AvgPool2d(p) => Some(Stage::AvgPool(p.op())),
                Layer::GlobalAvgPool => Some(Stage::GlobalAvgPool),
                Layer::Flatten | Layer::Reshape(_) => Some(Stage::Flatten),
                Layer::BatchNorm(op) => {
                    let c = norm_channels(&shape);
                    let (gamma, beta) = push_affine(device, &mut params, i, c)?;
                    buffers.push(Buffers {
                        layer: i,
                        running: RunningStats::new(device, c)?,
                    });
                    let running = buffers.len() - 1;
                    Some(Stage::BatchNorm {
                        gamma,
                        beta,
                        running,
                        op: *op,
                    })
                }
                Layer::LayerNorm(op) => {
                    let (gamma, beta) = push_affine(device, &mut params, i, shape[0])?;
                    Some(Stage::LayerNorm {
                        gamma,
                        beta,
                        op: *op,
                    })
                }
            };
            shape = shapes[i].clone();
            match stage {
                Some(stage) => {
                    stages.push(stage);
                    stage_shapes.push(shape.clone());
                }
                None => {
                    if let Some(last) = stage_shapes.last_mut() {
                        *last = shape.clone();
                    }
                }
            }
        }
        Ok(Model {
            device: device.clone(),
            spec: self.clone(),
            widths,
            stage_shapes,
            params,
            buffers,
            stages,
            workspaces: HashMap::new(),
            seed,
            dropout_step: 0,
        })
    }
}

/// Adds a normalisation's gamma (ones) and beta (zeros) of `c` values; returns their indices.
fn push_affine(
    device: &Device,
    params: &mut Vec<Param>,
    layer: usize,
    c: usize,
) -> Result<(usize, usize)> {
    for (field, start) in [("weight", 1.0), ("bias", 0.0)] {
        let name = format!("{layer}.{field}");
        params.push(Param::new(device, name, &vec![start; c], &[c], 0.0, 0.0)?);
    }
    Ok((params.len() - 2, params.len() - 1))
}

impl Param {
    fn new(
        device: &Device,
        name: String,
        v: &[f32],
        shape: &[usize],
        l1: f32,
        l2: f32,
    ) -> Result<Param> {
        Ok(Param {
            name,
            value: Tensor::from_slice(device, v, shape)?,
            grad: Tensor::zeros(device, shape)?,
            state: Vec::new(),
            l1,
            l2,
        })
    }
}

impl Model {
    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The description the model was built from.
    pub fn spec(&self) -> &Sequential {
        &self.spec
    }

    /// Width of one input sample.
    pub fn input_width(&self) -> usize {
        self.spec.input
    }

    /// Width of the model's output.
    pub fn output_width(&self) -> usize {
        self.widths.last().copied().unwrap_or(self.spec.input)
    }

    /// Every parameter, in layer order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Every parameter, writable (for optimizers and checkpoints).
    pub fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }

    /// A parameter by PyTorch name ("0.weight") or Keras-style name ("dense_0.weight").
    pub fn param(&self, name: &str) -> Option<&Tensor> {
        let index = self.param_index(name)?;
        Some(&self.params[index].value)
    }

    /// Index into `params()` of a parameter named either way.
    pub fn param_index(&self, name: &str) -> Option<usize> {
        if let Some(i) = self.params.iter().position(|p| p.name == name) {
            return Some(i);
        }
        // "dense_K.weight": the K-th dense layer, counted from 0.
        let (layer, field) = name.split_once('.')?;
        let k: usize = layer.strip_prefix("dense_")?.parse().ok()?;
        let (index, _) = self
            .spec
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| matches!(l, Layer::Dense(_)))
            .nth(k)?;
        let canonical = format!("{index}.{field}");
        self.params.iter().position(|p| p.name == canonical)
    }

    /// Total number of trainable values.
    pub fn param_count(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }

    /// Every non-trainable tensor under its state_dict name ("2.running_mean"), in layer order.
    pub fn buffers(&self) -> Vec<(String, &Tensor)> {
        self.buffers.iter().flat_map(Buffers::named).collect()
    }

    /// Every non-trainable tensor, writable (for checkpoints).
    pub fn buffers_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        self.buffers
            .iter_mut()
            .flat_map(Buffers::named_mut)
            .collect()
    }

    /// A non-trainable tensor by state_dict name ("2.running_var").
    pub fn buffer(&self, name: &str) -> Option<&Tensor> {
        self.buffers()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
    }

    /// The first batch norm layer that gets one value per channel from each row (flat
    /// samples, or 1x1 planes), so that it cannot train on a batch of one row.
    pub(crate) fn batch_norm_needing_two_rows(&self) -> Option<usize> {
        let shapes = self.spec.shapes().ok()?;
        self.spec.layers.iter().zip(&shapes).position(|(l, s)| {
            matches!(l, Layer::BatchNorm(_)) && s.iter().skip(1).product::<usize>() == 1
        })
    }

    /// Total number of non-trainable values (batch norm's running statistics).
    pub fn buffer_count(&self) -> usize {
        self.buffers().iter().map(|(_, t)| t.len()).sum()
    }

    /// A Keras-like table of layers, output shapes and parameter counts.
    pub fn summary(&self) -> String {
        let shapes = self.spec.shapes().unwrap_or_default();
        let mut kinds: HashMap<&str, usize> = HashMap::new();
        let mut out = format!("Model: sequential on {}\n", self.device.name());
        let rule = "─".repeat(64);
        out += &format!(
            "{rule}\n{:<28}{:<20}{:>16}\n{rule}\n",
            "Layer (type)", "Output Shape", "Param #"
        );
        for (i, layer) in self.spec.layers.iter().enumerate() {
            let kind = layer.kind();
            let k = kinds.entry(kind).or_default();
            let name = format!("{kind}_{k} ({i})");
            *k += 1;
            let prefix = format!("{i}.");
            // Keras counts a layer's non-trainable values in its row too.
            let count: usize = self
                .params
                .iter()
                .map(|p| (&p.name, p.value.len()))
                .chain(self.buffers().iter().map(|(n, t)| (n, t.len())))
                .filter(|(name, _)| name.starts_with(&prefix))
                .map(|(_, len)| len)
                .sum();
            let dims: Vec<String> = shapes
                .get(i)
                .into_iter()
                .flatten()
                .map(|d| d.to_string())
                .collect();
            out += &format!(
                "{name:<28}{:<20}{count:>16}\n",
                format!("(None, {})", dims.join(", "))
            );
        }
        let (trainable, fixed) = (self.param_count(), self.buffer_count());
        let total = trainable + fixed;
        out += &format!(
            "{rule}\nTotal params: {total} ({:.2} KB)\n",
            total as f64 * 4.0 / 1024.0
        );
        out += &format!("Trainable params: {trainable}\n");
        out += &format!("Non-trainable params: {fixed}\n");
        out
    }

    /// The workspace for this batch size and target width, created on first use.
    pub(crate) fn workspace(
        &mut self,
        batch: usize,
        target_width: usize,
    ) -> Result<&mut Workspace> {
        let key = (batch, target_width);
        if !self.workspaces.contains_key(&key) {
            // Keep at most a few shapes (the full batch, the last partial one, evaluation).
            if self.workspaces.len() >= 4 {
                self.workspaces.clear();
            }
            let ws = self.new_workspace(batch, target_width)?;
            self.workspaces.insert(key, ws);
        }
        self.workspaces
            .get_mut(&key)
            .ok_or_else(|| Error::arg("workspace", "not created"))
    }

    fn new_workspace(&self, batch: usize, target_width: usize) -> Result<Workspace> {
        let d = &self.device;
        let input = match self.spec.image {
            Some((c, h, w)) => vec![c, h, w],
            None => vec![self.spec.input],
        };
        let shapes: Vec<Vec<usize>> = std::iter::once(&input)
            .chain(&self.stage_shapes)
            .map(|s| std::iter::once(batch).chain(s.iter().copied()).collect())
            .collect();
        let acts = shapes
            .iter()
            .map(|s| Tensor::zeros(d, s))
            .collect::<Result<Vec<_>>>()?;
        // No layer needs dL/dx of the input, but normalisations compute it anyway.
        let first_needs_dx = matches!(
            self.stages.first(),
            Some(Stage::BatchNorm { .. } | Stage::LayerNorm { .. })
        );
        let grads = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| Tensor::zeros(d, if i == 0 && !first_needs_dx { &[1] } else { s }))
            .collect::<Result<Vec<_>>>()?;
        let dz = self
            .stages
            .iter()
            .zip(&shapes[1..])
            .map(|(stage, shape)| match stage {
                Stage::Dense { .. } => Tensor::zeros(d, shape).map(Some),
                Stage::MaxPool(_) => Tensor::zeros(d, shape).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let dzt = self
            .stages
            .iter()
            .zip(&shapes[1..])
            .map(|(stage, shape)| match stage {
                Stage::Dense { .. } => Tensor::zeros(d, &[shape[1], batch]).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = self
            .stages
            .iter()
            .zip(&shapes[1..])
            .map(|(stage, shape)| match stage {
                Stage::BatchNorm { .. } => NormStats::new(d, norm_channels(&shape[1..])).map(Some),
                Stage::LayerNorm { .. } => NormStats::new(d, batch).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Workspace {
            acts,
            grads,
            dz,
            dzt,
            norm,
            target: Tensor::zeros(d, &[batch, target_width])?,
            loss: Tensor::zeros(d, &[1])?,
            dropout: false,
        })
    }

    /// Dropout seed of stage `i` in the current training step.
    fn dropout_seed(&self, i: usize) -> u32 {
        let s = self.seed as u32 ^ (self.seed >> 32) as u32;
        s.wrapping_mul(0x9e37_79b9)
            ^ self.dropout_step.wrapping_mul(0x85eb_ca6b)
            ^ (i as u32).wrapping_mul(0xc2b2_ae35)
    }

    /// Runs `stages` on the workspace input acts[0], for the purpose `pass` names.
    pub(crate) fn forward_ws(
        &mut self,
        key: (usize, usize),
        stages: &[Stage],
        pass: Pass,
    ) -> Result<()> {
        let seeds: Vec<u32> = (0..stages.len()).map(|i| self.dropout_seed(i)).collect();
        let training = matches!(pass, Pass::Train | Pass::ProbeTrain);
        let params = &self.params;
        let buffers = &mut self.buffers;
        let ws = self
            .workspaces
            .get_mut(&key)
            .ok_or_else(|| Error::arg("workspace", "not created"))?;
        ws.dropout = training;
        for (i, stage) in stages.iter().enumerate() {
            let (before, after) = ws.acts.split_at_mut(i + 1);
            let (x, y) = (&before[i], &mut after[0]);
            match *stage {
                Stage::Dense { w, b, act } => {
                    let bias = b.map(|b| &params[b].value);
                    Gemm::nt()
                        .with_act(act)
                        .run_into(x, &params[w].value, bias, y)?
                }
                Stage::Act(act) => activation_into(act, x, y)?,
                Stage::Softmax => softmax_into(x, y)?,
                Stage::Dropout(rate) if training => dropout_into(x, rate, seeds[i], y)?,
                Stage::Dropout(_) | Stage::Flatten => y.copy_from(x)?,
                Stage::Conv { w, b, conv } => {
                    conv.forward_into(x, &params[w].value, b.map(|b| &params[b].value), y)?
                }
                Stage::MaxPool(pool) => {
                    let argmax = ws.dz[i]
                        .as_mut()
                        .ok_or_else(|| Error::arg("workspace", "no argmax"))?;
                    pool.max_forward_into(x, y, argmax)?
                }
                Stage::AvgPool(pool) => pool.avg_forward_into(x, y)?,
                Stage::GlobalAvgPool => global_avg_pool_into(x, y)?,
                Stage::BatchNorm {
                    gamma,
                    beta,
                    running,
                    op,
                } => {
                    let saved = ws.norm[i]
                        .as_mut()
                        .ok_or_else(|| Error::arg("workspace", "no batch norm statistics"))?;
                    let (g, b) = (&params[gamma].value, &params[beta].value);
                    let stats = buffers
                        .get_mut(running)
                        .ok_or_else(|| Error::arg("model", "no running statistics"))?;
                    match pass {
                        Pass::Infer => op.forward_eval_into(x, g, b, &stats.running, y)?,
                        Pass::Train => {
                            check_batch(stats.layer, x)?;
                            op.forward_train_into(x, g, b, &mut stats.running, saved, y)?
                        }
                        Pass::Probe | Pass::ProbeTrain => {
                            check_batch(stats.layer, x)?;
                            // Batch statistics as in training, but the model's running ones stay.
                            let mut scratch = RunningStats::new(&x.device(), g.len())?;
                            op.forward_train_into(x, g, b, &mut scratch, saved, y)?
                        }
                    }
                }
                Stage::LayerNorm { gamma, beta, op } => {
                    let saved = ws.norm[i]
                        .as_mut()
                        .ok_or_else(|| Error::arg("workspace", "no layer norm statistics"))?;
                    let (g, b) = (&params[gamma].value, &params[beta].value);
                    op.forward_into(x, g, b, saved, y)?
                }
            }
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
        let top = stages.len().wrapping_sub(1);
        let seeds: Vec<u32> = (0..stages.len()).map(|i| self.dropout_seed(i)).collect();
        let params = &mut self.params;
        let ws = self
            .workspaces
            .get_mut(&key)
            .ok_or_else(|| Error::arg("workspace", "not created"))?;
        for (i, stage) in stages.iter().enumerate().rev() {
            let (gb, ga) = ws.grads.split_at_mut(i + 1);
            let (dx, dy) = (&mut gb[i], &ga[0]);
            let (x, y) = (&ws.acts[i], &ws.acts[i + 1]);
            match *stage {
                Stage::Dense { w, b, act } => {
                    let (Some(dz), Some(dzt)) = (ws.dz[i].as_mut(), ws.dzt[i].as_mut()) else {
                        return Err(Error::arg("workspace", "no dZ for a dense layer"));
                    };
                    // dZ = dY f'(Y), dZ^T and db = column sums of dZ in one dispatch; then
                    // dW = (dZ^T) X and dX = dZ W. dZ^T is made explicitly because the A^T
                    // forms of the matmul run several times slower on lavapipe (and leak
                    // there per dispatch).
                    let (weight, bias) = split_pair(params, w, b)?;
                    let out = DenseGrad {
                        dz,
                        dzt,
                        db: bias.map(|p| &mut p.grad),
                    };
                    if !(top_ready && i == top) {
                        dense_grad_into(act, y, dy, out)?;
                    }
                    let (dz, dzt) = (&*dz, &*dzt);
                    Gemm::nn().run_into(dzt, x, None, &mut weight.grad)?;
                    if i > 0 {
                        Gemm::nn().run_into(dz, &weight.value, None, dx)?;
                    }
                }
                Stage::Conv { w, b, conv } => {
                    conv.backward_weight_into(x, dy, &mut params[w].grad)?;
                    if let Some(b) = b {
                        conv.backward_bias_into(dy, &mut params[b].grad)?;
                    }
                    if i > 0 {
                        conv.backward_input_into(dy, &params[w].value, dx)?;
                    }
                }
                Stage::BatchNorm { gamma, beta, .. } | Stage::LayerNorm { gamma, beta, .. } => {
                    let saved = ws.norm[i]
                        .as_ref()
                        .ok_or_else(|| Error::arg("workspace", "no normalisation statistics"))?;
                    // gamma precedes beta in params: split there to borrow both.
                    let (head, tail) = params.split_at_mut(beta);
                    let (Param { value, grad, .. }, db) = (&mut head[gamma], &mut tail[0].grad);
                    if matches!(stage, Stage::BatchNorm { .. }) {
                        BatchNorm::backward_into(x, dy, value, saved, dx, grad, db)?
                    } else {
                        LayerNorm::backward_into(x, dy, value, saved, dx, grad, db)?
                    }
                }
                _ if i == 0 => {}
                Stage::Act(act) => activation_backward_into(act, x, dy, dx)?,
                Stage::Softmax => softmax_backward_into(y, dy, dx)?,
                Stage::Dropout(rate) if ws.dropout => dropout_into(dy, rate, seeds[i], dx)?,
                Stage::Dropout(_) | Stage::Flatten => dx.copy_from(dy)?,
                Stage::MaxPool(pool) => {
                    let argmax = ws.dz[i]
                        .as_ref()
                        .ok_or_else(|| Error::arg("workspace", "no argmax"))?;
                    pool.max_backward_into(dy, argmax, dx)?
                }
                Stage::AvgPool(pool) => pool.avg_backward_into(dy, dx)?,
                Stage::GlobalAvgPool => global_avg_pool_backward_into(dy, dx)?,
            }
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
            dz,
            dzt,
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
                let (Some(dz), Some(dzt)) = (dz[n - 2].as_mut(), dzt[n - 2].as_mut()) else {
                    return Err(Error::arg("workspace", "no dZ for a dense layer"));
                };
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
    /// with its running statistics).
    pub fn forward(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        let batch = self.rows_of(x, "forward")?;
        let key = (batch, 1);
        self.workspace(batch, 1)?.acts[0].write(x)?;
        let stages = self.stages.clone();
        self.forward_ws(key, &stages, Pass::Infer)?;
        self.workspace(batch, 1)?.acts[stages.len()].to_vec()
    }

    /// Number of rows in a flat input, checking the width.
    pub(crate) fn rows_of(&self, x: &[f32], what: &str) -> Result<usize> {
        let w = self.spec.input;
        if x.is_empty() {
            return Err(Error::arg(
                what,
                format!("is empty (0 rows); the model needs at least one row of {w} features"),
            ));
        }
        if !x.len().is_multiple_of(w) {
            return Err(Error::shape(
                what,
                format!(
                    "{} input values are not whole rows of the model's {w} features",
                    x.len()
                ),
            ));
        }
        Ok(x.len() / w)
    }
}

/// A layer's weight and optional bias, both mutable (the bias comes after the weight).
fn split_pair(
    params: &mut [Param],
    w: usize,
    b: Option<usize>,
) -> Result<(&mut Param, Option<&mut Param>)> {
    match b {
        None => Ok((&mut params[w], None)),
        Some(b) if w < b => {
            let (lo, hi) = params.split_at_mut(b);
            Ok((&mut lo[w], hi.first_mut()))
        }
        Some(_) => Err(Error::arg("model", "a bias stored before its weight")),
    }
}

/// Training statistics need two values per channel: a typed error naming the layer, not
/// the op's, when a batch of one row leaves one.
fn check_batch(layer: usize, x: &Tensor) -> Result<()> {
    let per_channel = match x.shape() {
        [n, _, h, w] => n * h * w,
        s => s.first().copied().unwrap_or(0),
    };
    if per_channel < 2 {
        return Err(Error::arg(
            format!("layer {layer} (batch_normalization)"),
            format!(
                "a training batch of shape {:?} has one value per channel; batch norm \
                 trains on at least 2 (use a batch size over 1, and avoid a last batch of 1 row)",
                x.shape()
            ),
        ));
    }
    Ok(())
}
