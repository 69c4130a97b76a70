//! A built model: parameters on its device, the plan that runs it, and per-batch-size
//! workspaces. [`planner`] lowers a description to steps and applies the fusions,
//! [`workspace`] holds the buffers, [`passes`] runs forward, backward and the fused head.

mod decode;
mod packed;
mod passes;
pub(crate) mod planner;
mod workspace;

use std::collections::HashMap;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::layer::Sequential;
use crate::nn::layers::Layer;
use crate::ops::batch_norm::RunningStats;
use crate::tensor::Tensor;

pub(crate) use crate::nn::layers::Pass;
pub use decode::Decoder;
pub(crate) use packed::Packed;
pub(crate) use planner::{HeadPlan, NodeInfo, Stage};
pub(crate) use workspace::Workspace;

/// One trainable tensor with its gradient and optimizer state.
pub struct Param {
    /// PyTorch state_dict name: "{node}.weight" or ".bias" (a Sequential's nodes are
    /// named by layer index: "0.weight").
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
    /// The layer's node name (its index in a `Sequential`), which prefixes the names.
    pub prefix: String,
    /// Running mean and unbiased variance, per feature or channel.
    pub running: RunningStats,
}

impl Buffers {
    /// The PyTorch state_dict names of the running mean and variance.
    fn names(&self) -> [String; 2] {
        ["running_mean", "running_var"].map(|field| format!("{}.{field}", self.prefix))
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

/// A model with weights on a device.
pub struct Model {
    pub(crate) device: Device,
    /// The Sequential the model was built from (none for a graph).
    pub(crate) spec: Option<Sequential>,
    /// The graph the model was built from (none for a Sequential).
    pub(crate) graph: Option<crate::nn::graph::Graph>,
    /// The input's sample shape (a multi-input graph's: its packed rows).
    pub(crate) input_shape: Vec<usize>,
    /// Activations holding inputs: the input (packed), then each input's slice.
    pub(crate) input_acts: usize,
    /// The inputs as declared.
    pub(crate) inputs: Vec<(String, Vec<usize>)>,
    /// The nodes as described (before the fusions), in execution order.
    pub(crate) nodes: Vec<NodeInfo>,
    /// Sample shape after each stage of the plan.
    pub(crate) stage_shapes: Vec<Vec<usize>>,
    pub(crate) params: Vec<Param>,
    /// The parameters' values, gradients and optimizer state in one buffer each (GPU).
    pub(crate) packed: Option<packed::Packed>,
    /// Non-trainable state, in layer order.
    pub(crate) buffers: Vec<Buffers>,
    pub(crate) stages: Vec<Stage>,
    /// The outputs as declared: names and the activations holding them.
    pub(crate) outputs: Vec<(String, usize)>,
    pub(crate) workspaces: HashMap<(usize, usize), Workspace>,
    pub(crate) seed: u64,
    /// Counts forward passes in training mode, to draw fresh dropout masks.
    pub(crate) dropout_step: u32,
}

impl Model {
    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The `Sequential` the model was built from (`None` for a graph model).
    pub fn spec(&self) -> Option<&Sequential> {
        self.spec.as_ref()
    }

    /// The `Sequential` the model was built from, or an error for a graph model.
    pub fn sequential(&self) -> Result<&Sequential> {
        self.spec.as_ref().ok_or_else(|| {
            crate::error::GraphError::Unsupported(
                "a graph model is no Sequential (see Model::graph)".into(),
            )
            .into()
        })
    }

    /// The `Graph` the model was built from (`None` for a `Sequential`).
    pub fn graph(&self) -> Option<&crate::nn::graph::Graph> {
        self.graph.as_ref()
    }

    /// The inputs as declared: names and sample shapes.
    pub fn inputs(&self) -> &[(String, Vec<usize>)] {
        &self.inputs
    }

    /// The rows a multi-input model takes, packed from one slice of rows per input (in
    /// declaration order); see [`crate::nn::graph::inputs::pack`].
    pub fn pack_inputs(&self, xs: &[&[f32]]) -> Result<Vec<f32>> {
        let widths: Vec<usize> = self
            .inputs
            .iter()
            .map(|(_, s)| s.iter().product())
            .collect();
        crate::nn::graph::inputs::pack(xs, &widths)
    }

    /// Width of one input sample (a multi-input graph's: all inputs' values, packed).
    pub fn input_width(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Width of the model's output.
    pub fn output_width(&self) -> usize {
        self.nodes
            .last()
            .map_or(self.input_width(), |n| n.shape.iter().product())
    }

    /// Classes of a classifier's output: its last axis (a [T, V] sequence output has V
    /// classes at each of its T positions).
    pub fn output_classes(&self) -> usize {
        self.nodes
            .last()
            .and_then(|n| n.shape.last().copied())
            .unwrap_or_else(|| self.input_width())
    }

    /// Every parameter, in layer order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Whether the parameters, their gradients and the optimizer state live in one
    /// buffer each, so that an optimizer step is one dispatch (GPU models, by default).
    pub fn is_packed(&self) -> bool {
        self.packed.as_ref().is_some_and(|p| p.holds(&self.params))
    }

    /// Gives every parameter, gradient and optimizer state its own buffer again: the
    /// baseline the benches compare packing against.
    pub fn unpack(&mut self) -> Result<()> {
        for p in &mut self.params {
            p.value = p.value.try_clone()?;
            p.grad = p.grad.try_clone()?;
            p.state = p
                .state
                .iter()
                .map(Tensor::try_clone)
                .collect::<Result<_>>()?;
        }
        self.packed = None;
        Ok(())
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
            .as_ref()?
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| matches!(l, Layer::Dense(_)))
            .nth(k)?;
        let canonical = format!("{index}.{field}");
        self.params.iter().position(|p| p.name == canonical)
    }

    /// Steps in the execution plan after the fusions (a dense layer that absorbed the
    /// activation after it is one step), for checking where the rewrites fired.
    pub fn plan_len(&self) -> usize {
        self.stages.len()
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
        self.nodes.iter().position(|n| {
            n.kind == "batch_normalization" && n.shape.iter().skip(1).product::<usize>() == 1
        })
    }

    /// Total number of non-trainable values (batch norm's running statistics).
    pub fn buffer_count(&self) -> usize {
        self.buffers().iter().map(|(_, t)| t.len()).sum()
    }

    /// A Keras-like table of layers, output shapes and parameter counts; a graph model's
    /// also shows each node's inputs (Keras's "Connected to").
    pub fn summary(&self) -> String {
        let graph = self.spec.is_none();
        let mut kinds: HashMap<&str, usize> = HashMap::new();
        let what = if graph { "graph" } else { "sequential" };
        let mut out = format!("Model: {what} on {}\n", self.device.name());
        let width = if graph { 92 } else { 64 };
        let rule = "─".repeat(width);
        out += &format!(
            "{rule}\n{:<28}{:<20}{:>16}{}\n{rule}\n",
            "Layer (type)",
            "Output Shape",
            "Param #",
            if graph { "  Connected to" } else { "" }
        );
        let mut counted = std::collections::HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let name = if graph {
                format!("{} ({})", node.name, node.kind)
            } else {
                let k = kinds.entry(node.kind).or_default();
                let name = format!("{}_{k} ({i})", node.kind);
                *k += 1;
                name
            };
            let prefix = format!("{}.", node.prefix);
            // Keras counts a layer's non-trainable values in its row too, once.
            let count: usize = if counted.insert(node.prefix.clone()) {
                self.params
                    .iter()
                    .map(|p| (&p.name, p.value.len()))
                    .chain(self.buffers().iter().map(|(n, t)| (n, t.len())))
                    .filter(|(name, _)| name.starts_with(&prefix))
                    .map(|(_, len)| len)
                    .sum()
            } else {
                0
            };
            let dims: Vec<String> = node.shape.iter().map(|d| d.to_string()).collect();
            out += &format!(
                "{name:<28}{:<20}{count:>16}",
                format!("(None, {})", dims.join(", "))
            );
            if graph {
                out += &format!("  {}", node.inputs.join(", "));
            }
            out += "\n";
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

    /// Number of rows in a flat input, checking the width.
    pub(crate) fn rows_of(&self, x: &[f32], what: &str) -> Result<usize> {
        let w = self.input_width();
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
