//! A built model: parameters on its device, the plan that runs it, and per-batch-size
//! workspaces. [`planner`] lowers a description to steps and applies the fusions,
//! [`workspace`] holds the buffers, [`passes`] runs forward, backward and the fused head.

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
pub(crate) use planner::{HeadPlan, Stage};
pub(crate) use workspace::Workspace;

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

/// A model with weights on a device.
pub struct Model {
    pub(crate) device: Device,
    pub(crate) spec: Sequential,
    pub(crate) widths: Vec<usize>,
    /// Sample shape after each stage of the plan.
    pub(crate) stage_shapes: Vec<Vec<usize>>,
    pub(crate) params: Vec<Param>,
    /// Non-trainable state, in layer order.
    pub(crate) buffers: Vec<Buffers>,
    pub(crate) stages: Vec<Stage>,
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
