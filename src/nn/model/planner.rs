//! The planner: lowers a model description to the steps that run it, allocating and
//! initialising each layer's parameters and buffers, then applies the fusions as rewrites
//! on the step list (patterns seen through [`Step::pattern`], so they fire wherever the
//! list has their shape): a dense layer absorbs the activation after it, a training plan
//! hands a final softmax or sigmoid to the loss, and a classifier's output layer becomes
//! the fused head.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Buffers, Model, Param};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::graph::{Graph, Resolved};
use crate::nn::layer::Sequential;
use crate::nn::layers::dense::DenseStep;
use crate::nn::layers::{LayerDef, ParamInit, ParamSpec, Pattern, Slots, Step};
use crate::ops::batch_norm::RunningStats;
use crate::ops::loss::Loss;
use crate::ops::Activation;
use crate::tensor::Tensor;

/// One step of the execution plan, wired into the workspace's activations.
#[derive(Clone, Debug)]
pub(crate) struct Stage {
    /// What runs.
    pub step: Arc<dyn Step>,
    /// Activation indices of its inputs: 0 is the model's input, i + 1 stage i's output.
    pub inputs: Vec<usize>,
    /// Per input: another stage's backward writes that gradient first, so this one writes
    /// into a workspace buffer that is then added (a node feeding several consumers).
    pub dx_sum: Vec<bool>,
    /// Those another stage's backward writes first (a shared layer): summed likewise.
    pub param_sum: Vec<usize>,
    /// The parameters whose gradients its backward writes or adds to.
    pub params: Vec<usize>,
}

impl Stage {
    /// What the rewrites see of the step.
    pub fn pattern(&self) -> Pattern {
        self.step.pattern()
    }

    /// The same wiring running another step (a rewrite).
    fn with_step(&self, step: Arc<dyn Step>) -> Stage {
        Stage {
            step,
            ..self.clone()
        }
    }
}

/// A node of a built model as summaries and messages show it (before the fusions).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NodeInfo {
    /// Its name.
    pub name: String,
    /// Its layer's kind.
    pub kind: &'static str,
    /// Its output's sample shape.
    pub shape: Vec<usize>,
    /// The names of its inputs.
    pub inputs: Vec<String>,
    /// The prefix of its parameters' names (the owner's name, for a shared layer).
    pub prefix: String,
}

impl Sequential {
    /// Allocates and initialises the weights on `device` (seeded) and plans execution.
    pub fn build(&self, device: &Device, seed: u64) -> Result<Model> {
        // The sequential messages ("layer 3 (dense)") for what does not fit.
        self.shapes()?;
        let resolved = Graph::from_sequential(self).resolve()?;
        let inputs = [("input".to_string(), self.input_shape())];
        plan(&resolved, &inputs, Some(self.clone()), device, seed)
    }
}

/// A lowered node before the fusions and the wiring.
struct Planned {
    step: Arc<dyn Step>,
    inputs: Vec<usize>,
    params: Vec<usize>,
    shape: Vec<usize>,
}

/// Lowers a checked graph: allocates each layer's parameters and buffers once (a shared
/// layer's uses get the same slots), lowers every node to its step, then applies the
/// activation fold and marks the gradients that are summed.
pub(crate) fn plan(
    r: &Resolved,
    inputs: &[(String, Vec<usize>)],
    spec: Option<Sequential>,
    device: &Device,
    seed: u64,
) -> Result<Model> {
    let (steps, params, buffers) = lower_nodes(r, device, seed)?;
    let nodes = r
        .nodes
        .iter()
        .map(|n| NodeInfo {
            name: n.name.clone(),
            kind: n.def.kind(),
            shape: n.shape.clone(),
            inputs: n.input_names.clone(),
            prefix: r
                .nodes
                .get(n.owner)
                .map_or(n.name.clone(), |o| o.name.clone()),
        })
        .collect();
    let (steps, output_acts) = fold_activations(steps, &r.outputs);
    let (stages, stage_shapes) = wire(steps, r.input_acts);
    let outputs = r
        .outputs
        .iter()
        .zip(output_acts)
        .map(|(&a, act)| {
            let name = a
                .checked_sub(1)
                .and_then(|k| r.nodes.get(k))
                .map_or(r.input.0.clone(), |n| n.name.clone());
            (name, act)
        })
        .collect();
    let mut params = params;
    let packed = super::packed::Packed::of(device, &mut params)?;
    Ok(Model {
        device: device.clone(),
        packed,
        spec,
        graph: None,
        input_shape: r.input.1.clone(),
        input_acts: r.input_acts,
        inputs: inputs.to_vec(),
        nodes,
        stage_shapes,
        params,
        buffers,
        stages,
        outputs,
        workspaces: HashMap::new(),
        seed,
        dropout_step: 0,
    })
}

/// Every node lowered to its step, with the parameters and buffers of each layer made
/// once (a shared layer's uses get the same slots).
fn lower_nodes(
    r: &Resolved,
    device: &Device,
    seed: u64,
) -> Result<(Vec<Planned>, Vec<Param>, Vec<Buffers>)> {
    let mut params = Vec::new();
    let mut buffers = Vec::new();
    let mut slots: Vec<Option<Slots>> = vec![None; r.nodes.len()];
    let mut steps = Vec::with_capacity(r.nodes.len());
    for node in &r.nodes {
        let owner = r
            .nodes
            .get(node.owner)
            .ok_or_else(|| Error::arg("graph", "a shared layer without its owner"))?;
        let s = match &slots[node.owner] {
            Some(s) => s.clone(),
            None => {
                let at = LayerAt {
                    name: &owner.name,
                    seed: seed
                        .wrapping_mul(0x9e37_79b9)
                        .wrapping_add(owner.decl as u64),
                    input: &owner.input_shape,
                    output: &owner.shape,
                };
                let s = at.allocate(device, &*owner.def, &mut params, &mut buffers)?;
                slots[node.owner] = Some(s.clone());
                s
            }
        };
        steps.push(Planned {
            step: node.def.lower(&s)?,
            inputs: node.inputs.clone(),
            params: s.params,
            shape: node.shape.clone(),
        });
    }
    Ok((steps, params, buffers))
}

/// A layer's place in the model while it is being built.
struct LayerAt<'a> {
    name: &'a str,
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
                prefix: self.name.to_string(),
                running: RunningStats::new(device, channels)?,
            });
            slots.buffers = Some(buffers.len() - 1);
        }
        Ok(slots)
    }

    /// One parameter, named "{node}.{field}" as PyTorch's state_dict (a Sequential's
    /// nodes are named by layer index).
    fn param(&self, device: &Device, def: &dyn LayerDef, spec: ParamSpec) -> Result<Param> {
        let count = spec.len();
        if let (true, Device::Gpu(ctx)) = (spec.checked, device) {
            // Refuse a weight over the adapter's limits before sampling it on the host.
            let what = format!(
                "layer {} ({}) {} {:?}",
                self.name,
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
            name: format!("{}.{}", self.name, spec.field),
            value: Tensor::from_slice(device, &values, &spec.shape)?,
            grad: Tensor::zeros(device, &spec.shape)?,
            state: Vec::new(),
            l1: spec.l1,
            l2: spec.l2,
        })
    }
}

/// The activation fold: a dense step without an activation absorbs the activation that
/// is the only consumer of its output, when that activation's derivative can come from
/// its output. Fires wherever the pattern is, inside residual branches included, but not
/// on a dense layer that is itself one of the model's `outputs` (activation indices),
/// whose new activation indices it returns with the steps.
fn fold_activations(mut steps: Vec<Planned>, outputs: &[usize]) -> (Vec<Planned>, Vec<usize>) {
    let n = steps.len();
    let mut consumers = vec![0usize; n + 1];
    for a in steps.iter().flat_map(|s| &s.inputs).chain(outputs) {
        if let Some(c) = consumers.get_mut(*a) {
            *c += 1;
        }
    }
    // alias[act]: the activation that stands for `act` once its node is folded away.
    let mut alias: Vec<usize> = (0..=n).collect();
    let mut keep = vec![true; n];
    for j in 0..n {
        steps[j].inputs = steps[j].inputs.iter().map(|&a| alias[a]).collect();
        let (Pattern::Act(act), [a]) = (steps[j].step.pattern(), steps[j].inputs.as_slice()) else {
            continue;
        };
        let a = *a;
        if a == 0 || consumers[a] != 1 || !act.derivative_from_output() {
            continue;
        }
        if let Pattern::Dense {
            w,
            b,
            act: Activation::Identity,
        } = steps[a - 1].step.pattern()
        {
            steps[a - 1].step = Arc::new(DenseStep { w, b, act });
            keep[j] = false;
            alias[j + 1] = a;
        }
    }
    // Renumber the activations of the steps that remain.
    let mut renumber = vec![0usize; n + 1];
    let mut next = 1;
    for j in 0..n {
        if keep[j] {
            renumber[j + 1] = next;
            next += 1;
        }
    }
    for j in 0..n {
        if !keep[j] {
            renumber[j + 1] = renumber[alias[j + 1]];
        }
    }
    let outputs = outputs
        .iter()
        .map(|&a| renumber.get(a).copied().unwrap_or(0))
        .collect();
    let steps = steps
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(mut s, _)| {
            s.inputs = s.inputs.iter().map(|&a| renumber[a]).collect();
            s
        })
        .collect();
    (steps, outputs)
}

/// The stages with their summed gradients marked: walking the plan backwards (the order
/// the backward pass runs), the first stage to write a gradient overwrites it, the
/// others add theirs. The model's inputs (the first `input_acts` activations) take no
/// sum: their gradients are not wanted.
fn wire(steps: Vec<Planned>, input_acts: usize) -> (Vec<Stage>, Vec<Vec<usize>>) {
    let mut written = HashSet::new();
    let mut params_written = HashSet::new();
    let mut out: Vec<(Stage, Vec<usize>)> = Vec::with_capacity(steps.len());
    for s in steps.into_iter().rev() {
        let dx_sum = s
            .inputs
            .iter()
            .map(|&a| a >= input_acts && !written.insert(a))
            .collect();
        let param_sum = s
            .params
            .iter()
            .copied()
            .filter(|&p| !params_written.insert(p))
            .collect();
        let stage = Stage {
            step: s.step,
            inputs: s.inputs,
            dx_sum,
            param_sum,
            params: s.params,
        };
        out.push((stage, s.shape));
    }
    out.into_iter().rev().unzip()
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
            let act = Activation::Identity;
            if let Some(last) = plan.stages.pop() {
                plan.stages
                    .push(last.with_step(Arc::new(DenseStep { w, b, act })));
            }
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
        let n = stages.len();
        let [.., before, last] = stages else {
            return None;
        };
        let Pattern::Dense { w, b, act } = last.pattern() else {
            return None;
        };
        // The head reads the stage before's output (the plan's wiring, in a graph too).
        if !categorical || act != Activation::Identity || last.inputs != [n - 1] {
            return None;
        }
        let hidden = match before.pattern() {
            // Not where the stage before shares a weight written first elsewhere.
            Pattern::Dense { b, act, .. } if before.param_sum.is_empty() => Some((b, act)),
            _ => None,
        };
        Some(HeadPlan { loss, w, b, hidden })
    }
}
