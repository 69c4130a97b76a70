//! Workspaces: every activation, gradient and step scratch for one batch size, created
//! once and reused every step (nothing is allocated in the steady state).

use super::Model;
use crate::error::{Error, Result};
use crate::nn::layers::Scratch;
use crate::tensor::Tensor;

/// Buffers for one batch size, created once and reused every step.
pub(crate) struct Workspace {
    /// acts[0] is the input, acts[i + 1] the output of stage i.
    pub acts: Vec<Tensor>,
    /// grads[i] is the loss gradient with respect to acts[i] (grads[0] unused).
    pub grads: Vec<Tensor>,
    /// Per stage scratch (dense: dZ and dZ^T; max pool: argmax; normalisations: statistics).
    pub scratch: Vec<Scratch>,
    /// Per stage: a buffer for each summed input gradient (`None` where it is written
    /// directly), then one for each summed parameter gradient.
    pub sums: Vec<Vec<Option<Tensor>>>,
    /// The batch's targets.
    pub target: Tensor,
    /// The batch's mean loss, on the device.
    pub loss: Tensor,
    /// Whether the last forward pass applied dropout (its backward masks likewise).
    pub dropout: bool,
}

impl Model {
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
        let input = self.input_shape.clone();
        let shapes: Vec<Vec<usize>> = std::iter::once(&input)
            .chain(&self.stage_shapes)
            .map(|s| std::iter::once(batch).chain(s.iter().copied()).collect())
            .collect();
        let acts = shapes
            .iter()
            .map(|s| Tensor::zeros(d, s))
            .collect::<Result<Vec<_>>>()?;
        // No layer needs dL/dx of the input, but normalisations compute it anyway.
        let needs_dx = |a: usize| {
            a >= self.input_acts
                || self
                    .stages
                    .iter()
                    .any(|s| s.inputs.contains(&a) && s.step.input_grad_always())
        };
        let grads = shapes
            .iter()
            .enumerate()
            .map(|(a, s)| Tensor::zeros(d, if needs_dx(a) { s } else { &[1] }))
            .collect::<Result<Vec<_>>>()?;
        let scratch = self
            .stages
            .iter()
            .zip(&shapes[1..])
            .map(|(stage, shape)| stage.step.scratch(d, shape))
            .collect::<Result<Vec<_>>>()?;
        // Where a gradient is summed, the stage writes here first.
        let sums =
            self.stages
                .iter()
                .map(|stage| {
                    let dx =
                        stage.inputs.iter().zip(&stage.dx_sum).map(|(&a, &sum)| {
                            sum.then(|| Tensor::zeros(d, &shapes[a])).transpose()
                        });
                    let params = stage.param_sum.iter().map(|&p| {
                        let shape = self.params.get(p).map_or(&[1][..], |p| p.value.shape());
                        Tensor::zeros(d, shape).map(Some)
                    });
                    dx.chain(params).collect::<Result<Vec<_>>>()
                })
                .collect::<Result<Vec<_>>>()?;
        Ok(Workspace {
            acts,
            grads,
            scratch,
            sums,
            target: Tensor::zeros(d, &[batch, target_width])?,
            loss: Tensor::zeros(d, &[1])?,
            dropout: false,
        })
    }
}
