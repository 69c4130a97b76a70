//! What a layer lowers to: a [`Step`] of the execution plan, and the contexts its forward
//! and backward passes see. A step never indexes the model's workspaces itself: the
//! planner hands it its input, output, gradients, parameters and scratch, so the same
//! step runs wherever the plan places it.

use std::fmt::Debug;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::model::{Buffers, Param};
use crate::ops::batch_norm::NormStats;
use crate::ops::Activation;
use crate::tensor::Tensor;

/// What a forward pass is for: it decides dropout and the statistics batch norm uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// A training step: dropout on, batch statistics, running statistics updated.
    Train,
    /// Gradients without a step: dropout off, batch statistics, running statistics kept.
    Probe,
    /// Gradients without a step, as `Probe` but with dropout on (the current step's masks).
    ProbeTrain,
    /// Inference: dropout off, running statistics.
    Infer,
}

/// Per-step buffers of one workspace, made once by [`Step::scratch`] and reused.
#[derive(Default)]
pub struct Scratch {
    /// Tensors the step keeps between its passes (dense: dZ and dZ^T; max pool: argmax).
    pub tensors: Vec<Tensor>,
    /// The mean and invstd a normalisation's forward saves for its backward.
    pub norm: Option<NormStats>,
}

impl Scratch {
    /// The scratch tensor `i`, or an error naming what is missing.
    pub fn tensor(&self, i: usize, what: &str) -> Result<&Tensor> {
        self.tensors
            .get(i)
            .ok_or_else(|| Error::arg("workspace", format!("no {what}")))
    }

    /// The scratch tensor `i`, writable.
    pub fn tensor_mut(&mut self, i: usize, what: &str) -> Result<&mut Tensor> {
        self.tensors
            .get_mut(i)
            .ok_or_else(|| Error::arg("workspace", format!("no {what}")))
    }

    /// The saved normalisation statistics.
    pub fn norm_mut(&mut self) -> Result<&mut NormStats> {
        self.norm
            .as_mut()
            .ok_or_else(|| Error::arg("workspace", "no normalisation statistics"))
    }
}

/// The forward pass of one step: its input, its output and what it may read or update.
pub struct Forward<'a> {
    /// The (first) input activation [batch, ..].
    pub x: &'a Tensor,
    /// Every input of a merge step (see [`Inputs`]).
    pub inputs: Inputs<'a>,
    /// The output activation, written.
    pub y: &'a mut Tensor,
    /// Every parameter of the model; a step reads the indices it was lowered with.
    pub params: &'a [Param],
    /// The model's non-trainable state (running statistics).
    pub buffers: &'a mut [Buffers],
    /// The step's scratch in this workspace.
    pub scratch: &'a mut Scratch,
    /// What the pass is for.
    pub pass: Pass,
    /// The dropout seed of this step in the current training step.
    pub seed: u32,
}

/// The backward pass of one step: dL/dy in, dL/dx and the parameter gradients out.
///
/// A step with several inputs (a merge) is called once per input, `slot` naming which
/// one `x` and `dx` are; a step's parameter gradients are written on slot 0.
pub struct Backward<'a> {
    /// The input the forward read (input `slot`).
    pub x: &'a Tensor,
    /// Every input, for merges whose gradient needs the others (multiply).
    pub inputs: Inputs<'a>,
    /// Which input `x` and `dx` are.
    pub slot: usize,
    /// The output the forward wrote.
    pub y: &'a Tensor,
    /// dL/dy.
    pub dy: &'a Tensor,
    /// dL/dx, written unless `first`.
    pub dx: &'a mut Tensor,
    /// The input is the model's: its gradient is not wanted (steps with
    /// [`Step::input_grad_always`] write it anyway).
    pub first: bool,
    /// Every parameter of the model; a step writes the gradients of its own.
    pub params: &'a mut [Param],
    /// The step's scratch in this workspace.
    pub scratch: &'a mut Scratch,
    /// The dropout seed the forward used.
    pub seed: u32,
    /// Whether the forward applied dropout (its backward masks likewise).
    pub dropout: bool,
    /// The fused classifier head already wrote this step's dZ, dZ^T and bias gradient.
    pub ready: bool,
}

/// The inputs of a step, borrowed from the workspace without copying: `acts` are the
/// activations before the step's output, `wires` the indices of its inputs among them.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// The workspace's activations up to (not including) the step's output.
    pub acts: &'a [Tensor],
    /// The index of each input in `acts`.
    pub wires: &'a [usize],
}

impl<'a> Inputs<'a> {
    /// How many inputs the step has.
    pub fn len(&self) -> usize {
        self.wires.len()
    }

    /// Whether the step has no inputs.
    pub fn is_empty(&self) -> bool {
        self.wires.is_empty()
    }

    /// Input `k`, or an error.
    pub fn get(&self, k: usize) -> Result<&'a Tensor> {
        self.wires
            .get(k)
            .and_then(|&i| self.acts.get(i))
            .ok_or_else(|| Error::arg("workspace", format!("a step without input {k}")))
    }
}

/// What the planner's rewrites (the fusions) can see of a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    /// A matmul with W^T, an optional bias and an activation in its epilogue.
    Dense {
        /// Index of the weight in the model's parameters.
        w: usize,
        /// Index of the bias.
        b: Option<usize>,
        /// The fused activation.
        act: Activation,
    },
    /// A standalone pointwise activation.
    Act(Activation),
    /// A row-wise softmax.
    Softmax,
    /// Anything no rewrite looks into.
    Other,
}

/// One step of an execution plan, lowered from a layer: its passes as `ops` calls, which
/// run on the CPU reference and record GPU dispatches alike.
pub trait Step: Debug + Send + Sync {
    /// Writes `cx.y` from `cx.x`.
    fn forward(&self, cx: Forward<'_>) -> Result<()>;
    /// Writes `cx.dx` and the gradients of the step's parameters from `cx.dy`.
    fn backward(&self, cx: Backward<'_>) -> Result<()>;
    /// The step's scratch for a workspace whose output is `y` ([batch, ..]).
    fn scratch(&self, _device: &Device, _y: &[usize]) -> Result<Scratch> {
        Ok(Scratch::default())
    }
    /// Whether the step has parameters (a step without any skips its backward when its
    /// input is the model's).
    fn has_params(&self) -> bool {
        false
    }
    /// Whether the backward writes dL/dx even of the model's input (normalisations).
    fn input_grad_always(&self) -> bool {
        false
    }
    /// What the fusions can see of this step.
    fn pattern(&self) -> Pattern {
        Pattern::Other
    }
    /// Whether the step, given `inputs` inputs, can run on the new positions of a causal
    /// sequence alone ([`Step::forward_at`]): each output row follows from its own input
    /// row and position, or from earlier rows kept in its [`Step::cache`].
    fn incremental(&self, _inputs: usize) -> bool {
        false
    }
    /// The cache of earlier positions for decoding a sequence whose whole output would be
    /// `y` ([batch, context, ..]); `None` for the steps that keep none.
    fn cache(&self, _device: &Device, _y: &[usize]) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// The forward of positions `at..at + T` of a [batch, T, ..] input alone, the cache
    /// holding the earlier positions (the new ones are appended). Row-wise steps run
    /// their forward, which folds the leading axes into rows.
    fn forward_at(&self, cx: Forward<'_>, _at: usize, _cache: Option<&mut Tensor>) -> Result<()> {
        self.forward(cx)
    }
}
