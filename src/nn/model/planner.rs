//! The planner: lowers a model description to the steps that run it, allocating and
//! initialising each layer's parameters and buffers, then applies the fusions as rewrites
//! on the step list (patterns seen through [`Step::pattern`], so they fire wherever the
//! list has their shape): a dense layer absorbs the activation after it, a training plan
//! hands a final softmax or sigmoid to the loss, and a classifier's output layer becomes
//! the fused head.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Buffers, Model, Param};
use crate::device::Device;
use crate::error::Result;
use crate::nn::layer::Sequential;
use crate::nn::layers::dense::DenseStep;
use crate::nn::layers::{LayerDef, ParamInit, ParamSpec, Pattern, Slots, Step};
use crate::ops::batch_norm::RunningStats;
use crate::ops::loss::Loss;
use crate::ops::Activation;
use crate::tensor::Tensor;

/// One step of the execution plan.
pub(crate) type Stage = Arc<dyn Step>;

impl Sequential {
    /// Allocates and initialises the weights on `device` (seeded) and plans execution.
    pub fn build(&self, device: &Device, seed: u64) -> Result<Model> {
        let widths = self.widths()?;
        let shapes = self.shapes()?;
        let mut params = Vec::new();
        let mut buffers = Vec::new();
        let mut steps = Vec::with_capacity(self.layers.len());
        let mut input = self.input_shape();
        for (i, (layer, output)) in self.layers.iter().zip(&shapes).enumerate() {
            let def = layer.def();
            let at = LayerAt {
                index: i,
                seed: seed.wrapping_mul(0x9e37_79b9).wrapping_add(i as u64),
                input: &input,
                output,
            };
            let slots = at.allocate(device, &*def, &mut params, &mut buffers)?;
            steps.push((def.lower(&slots)?, output.clone()));
            input = output.clone();
        }
        let (stages, stage_shapes) = fold_activations(steps).into_iter().unzip();
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

/// A layer's place in the model while it is being built.
struct LayerAt<'a> {
    index: usize,
    seed: u64,
    input: &'a [usize],
    output: &'a [usize],
}

impl LayerAt<'_> {
    /// Adds the layer's parameters and buffers to the model's; returns where they went.
    fn allocate(
        &self,
        device: &Device,
        def: &dyn LayerDef,
        params: &mut Vec<Param>,
        buffers: &mut Vec<Buffers>,
    ) -> Result<Slots> {
        let mut slots = Slots::default();
        for spec in def.params(self.input, self.output) {
            params.push(self.param(device, def, spec)?);
            slots.params.push(params.len() - 1);
        }
        if let Some(channels) = def.buffer_channels(self.output) {
            buffers.push(Buffers {
                layer: self.index,
                running: RunningStats::new(device, channels)?,
            });
            slots.buffers = Some(buffers.len() - 1);
        }
        Ok(slots)
    }

    /// One parameter, named "{layer}.{field}" as PyTorch's state_dict.
    fn param(&self, device: &Device, def: &dyn LayerDef, spec: ParamSpec) -> Result<Param> {
        let count = spec.len();
        if let (true, Device::Gpu(ctx)) = (spec.checked, device) {
            // Refuse a weight over the adapter's limits before sampling it on the host.
            let what = format!(
                "layer {} ({}) {} {:?}",
                self.index,
                def.kind(),
                spec.field,
                spec.shape
            );
            ctx.check_size(&what, count)?;
        }
        let values = match spec.init {
            ParamInit::Sample {
                init,
                fan_in,
                fan_out,
                salt,
            } => init.try_sample(count, fan_in, fan_out, self.seed ^ salt)?,
            ParamInit::Fill(v) => vec![v; count],
        };
        Ok(Param {
            name: format!("{}.{}", self.index, spec.field),
            value: Tensor::from_slice(device, &values, &spec.shape)?,
            grad: Tensor::zeros(device, &spec.shape)?,
            state: Vec::new(),
            l1: spec.l1,
            l2: spec.l2,
        })
    }
}

/// The activation fold: a dense step without an activation absorbs the activation after
/// it when that activation's derivative can come from its output.
fn fold_activations(steps: Vec<(Stage, Vec<usize>)>) -> Vec<(Stage, Vec<usize>)> {
    let mut out: Vec<(Stage, Vec<usize>)> = Vec::with_capacity(steps.len());
    for (stage, shape) in steps {
        let before = out.last().map(|(s, _)| s.pattern());
        match (before, stage.pattern()) {
            (
                Some(Pattern::Dense {
                    w,
                    b,
                    act: Activation::Identity,
                }),
                Pattern::Act(act),
            ) if act.derivative_from_output() => {
                out.pop();
                out.push((Arc::new(DenseStep { w, b, act }), shape));
            }
            _ => out.push((stage, shape)),
        }
    }
    out
}

/// What `predict` applies to the training-time outputs to give probabilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Output {
    Raw,
    Softmax,
    Sigmoid,
}

/// A training plan: the steps, with the final softmax or sigmoid handed to the loss.
pub(crate) struct TrainPlan {
    /// The steps training and evaluation run: they end in logits where the loss fused
    /// the final softmax or sigmoid.
    pub stages: Vec<Stage>,
    /// The loss as trained.
    pub loss: Loss,
    /// What predictions apply to the outputs of the full plan's steps.
    pub output: Output,
    /// Whether the trained outputs are logits.
    pub logits: bool,
}

/// The loss fusion: a categorical cross-entropy takes the final softmax, a binary one the
/// final sigmoid (standalone, or in a dense step's epilogue), and trains on logits.
pub(crate) fn fuse_loss(stages: &[Stage], loss: Loss) -> TrainPlan {
    let mut plan = TrainPlan {
        stages: stages.to_vec(),
        loss,
        output: Output::Raw,
        logits: false,
    };
    let categorical = matches!(
        loss,
        Loss::CategoricalCrossEntropy | Loss::SparseCategoricalCrossEntropy
    );
    let bce = Loss::BinaryCrossEntropy { from_logits: false };
    let last = plan.stages.last().map(|s| s.pattern());
    match (loss, last) {
        (_, Some(Pattern::Softmax)) if categorical => {
            plan.stages.pop();
            plan.logits = true;
        }
        _ if categorical => {
            plan.output = Output::Softmax;
            plan.logits = true;
        }
        (
            l,
            Some(Pattern::Dense {
                w,
                b,
                act: Activation::Sigmoid,
            }),
        ) if l == bce => {
            // Train on logits with the stable fused loss; predict still gives probabilities.
            plan.stages.pop();
            let act = Activation::Identity;
            plan.stages.push(Arc::new(DenseStep { w, b, act }));
            plan.loss = Loss::BinaryCrossEntropy { from_logits: true };
            plan.logits = true;
        }
        (l, Some(Pattern::Act(Activation::Sigmoid))) if l == bce => {
            plan.stages.pop();
            plan.loss = Loss::BinaryCrossEntropy { from_logits: true };
            plan.logits = true;
        }
        (Loss::BinaryCrossEntropy { from_logits: true }, _) => {
            plan.output = Output::Sigmoid;
            plan.logits = true;
        }
        _ => {}
    }
    plan
}

/// A plan whose last stage is a classifier's output layer: the fused head
/// ([`crate::ops::dense_head::dense_head_at`]) runs it forward and backward, with the
/// loss, in one dispatch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct HeadPlan {
    pub(super) loss: Loss,
    /// The output layer's weight and bias.
    pub(super) w: usize,
    pub(super) b: Option<usize>,
    /// The stage before, when it is a dense layer: its bias and activation. Its dZ, dZ^T and
    /// bias gradient then come from the head, and its backward starts at its weight product.
    pub(super) hidden: Option<(Option<usize>, Activation)>,
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
        let [.., before, last] = stages else {
            return None;
        };
        let Pattern::Dense { w, b, act } = last.pattern() else {
            return None;
        };
        if !categorical || act != Activation::Identity {
            return None;
        }
        let hidden = match before.pattern() {
            Pattern::Dense { b, act, .. } => Some((b, act)),
            _ => None,
        };
        Some(HeadPlan { loss, w, b, hidden })
    }
}
