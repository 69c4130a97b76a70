//! Layer normalisation over the features of each [features] sample; gamma and beta are
//! `weight` and `bias`, as in PyTorch's state_dict.

use std::sync::Arc;

use super::step::{Backward, Forward, Scratch, Step};
use super::{affine_params, LayerDef, ParamSpec, Slots};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::{check, Field, Invalid};
use crate::ops::batch_norm::NormStats;
use crate::ops::layer_norm::LayerNorm;

/// The layer normalisation layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNormLayer(pub LayerNorm);

impl LayerNormLayer {
    /// A `layer_norm = true` entry's eps (the entry's keys checked already).
    pub(crate) fn from_entry(
        spec: &LayerSpec,
        field: Field<'_>,
    ) -> std::result::Result<LayerNorm, Invalid> {
        check(spec.momentum.is_none(), &field("momentum"), || {
            "only batch_norm layers take this key".into()
        })?;
        let eps = spec.eps.unwrap_or(LayerNorm::default().eps);
        Ok(LayerNorm { eps })
    }
}

impl LayerDef for LayerNormLayer {
    fn kind(&self) -> &'static str {
        "layer_normalization"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        crate::ops::check_eps(name, self.0.eps)?;
        if input.len() != 1 {
            return Err(Error::shape(
                name,
                format!("normalises flat samples, got {input:?}: add .flatten() first (or use batch_norm per channel)"),
            ));
        }
        Ok(input.to_vec())
    }

    fn params(&self, input: &[usize], _output: &[usize]) -> Vec<ParamSpec> {
        affine_params(input.iter().product())
    }

    fn lower(&self, slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(LayerNormStep {
            gamma: slots.param(0)?,
            beta: slots.param(1)?,
            op: self.0,
        }))
    }

    fn entry(&self) -> LayerSpec {
        LayerSpec {
            layer_norm: Some(true),
            eps: (self.0.eps != LayerNorm::default().eps).then_some(self.0.eps),
            ..LayerSpec::default()
        }
    }
}

/// The planned layer norm.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LayerNormStep {
    gamma: usize,
    beta: usize,
    op: LayerNorm,
}

impl Step for LayerNormStep {
    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        let saved = cx.scratch.norm_mut()?;
        let (g, b) = (&cx.params[self.gamma].value, &cx.params[self.beta].value);
        self.op.forward_into(cx.x, g, b, saved, cx.y)
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        let saved = cx.scratch.norm_mut()?;
        let (value, dgamma, dbeta) = super::affine_grads(cx.params, self.gamma, self.beta)?;
        LayerNorm::backward_into(cx.x, cx.dy, value, saved, cx.dx, dgamma, dbeta)
    }

    fn scratch(&self, device: &Device, y: &[usize]) -> Result<Scratch> {
        Ok(Scratch {
            tensors: Vec::new(),
            norm: Some(NormStats::new(device, y.first().copied().unwrap_or(0))?),
        })
    }

    fn has_params(&self) -> bool {
        true
    }

    fn input_grad_always(&self) -> bool {
        true
    }
}
