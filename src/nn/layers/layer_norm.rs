//! Layer normalisation over the features of each [features] sample, or of each position of
//! [positions, features] sequences (the last axis, as nn.LayerNorm(D)); gamma and beta are
//! `weight` and `bias`, as in PyTorch's state_dict.

use std::sync::Arc;

use super::step::{Backward, Forward, Scratch, Step};
use super::{affine_params, FromEntry, Layer, LayerDef, ParamSpec, Slots};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::ops::batch_norm::NormStats;
use crate::ops::layer_norm::LayerNorm;
use crate::nn::onnx::{Attr, Emit};

/// The layer normalisation layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNormLayer(pub LayerNorm);

impl From<LayerNorm> for LayerNormLayer {
    fn from(ln: LayerNorm) -> LayerNormLayer {
        LayerNormLayer(ln)
    }
}

impl FromEntry for LayerNormLayer {
    const KEY: Option<&'static str> = Some("layer_norm");
    const KEYS: &'static [&'static str] = &["eps"];

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        e.flag("layer_norm")?;
        let eps_ok = |v: f32| v.is_finite() && v >= 0.0;
        let eps = e.f32_where("eps", eps_ok, "a finite value >= 0")?;
        Ok(Layer::LayerNorm(LayerNorm {
            eps: eps.unwrap_or(LayerNorm::default().eps),
        }))
    }
}

impl LayerDef for LayerNormLayer {
    fn kind(&self) -> &'static str {
        "layer_normalization"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        crate::ops::check_eps(name, self.0.eps)?;
        if !matches!(input.len(), 1 | 2) {
            return Err(Error::shape(
                name,
                format!("normalises flat samples or each position of [positions, features] sequences, got {input:?}: add .flatten() first (or use batch_norm per channel)"),
            ));
        }
        Ok(input.to_vec())
    }

    fn params(&self, input: &[usize], _output: &[usize]) -> Vec<ParamSpec> {
        affine_params(input.last().copied().unwrap_or(0))
    }

    /// LayerNormalization-17 over the features (biased variance, as kiln's).
    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        let params = [cx.param(0)?.to_string(), cx.param(1)?.to_string()];
        let attrs = vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(self.0.eps))];
        cx.apply("LayerNormalization", &params, attrs)
    }

    fn lower(&self, slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(LayerNormStep {
            gamma: slots.param(0)?,
            beta: slots.param(1)?,
            op: self.0,
        }))
    }

    fn entry(&self) -> LayerSpec {
        let eps = (self.0.eps != LayerNorm::default().eps).then_some(self.0.eps);
        LayerSpec::new("layer_norm", true).with_some("eps", eps)
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
    /// Row by row: decoding runs it on the new positions alone.
    fn incremental(&self, _inputs: usize) -> bool {
        true
    }

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
            // One mean and invstd per normalised row: per sample, or per position.
            norm: Some(NormStats::new(device, y.split_last().map_or(0, |(_, rows)| rows.iter().product()))?),
        })
    }

    fn has_params(&self) -> bool {
        true
    }

    fn input_grad_always(&self) -> bool {
        true
    }
}
