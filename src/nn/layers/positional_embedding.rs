//! Learned positional embedding: adds row t of `weight` [max_positions, dim] to position t
//! of each [T, dim] sequence (T <= max_positions), as GPT's `wpe` table added to the token
//! embeddings. Its gradient is each position's sum over the batch (`ops::embedding`).

use std::sync::Arc;

use super::step::{Backward, Forward, Step};
use super::{FromEntry, Layer, LayerDef, ParamInit, ParamSpec, Slots};
use crate::error::{Error, Result};
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::nn::init::Init;
use crate::nn::onnx::Emit;
use crate::ops::elementwise::scale_into;
use crate::ops::embedding::{positional_at_into, positional_grad_into, positional_into};
use crate::tensor::Tensor;

/// Learned positions for sequences of up to this many positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PositionalEmbedding(pub usize);

impl From<usize> for PositionalEmbedding {
    fn from(max_positions: usize) -> PositionalEmbedding {
        PositionalEmbedding(max_positions)
    }
}

impl FromEntry for PositionalEmbedding {
    const KEY: Option<&'static str> = Some("positional_embedding");

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        let max = e.usize("positional_embedding")?.unwrap_or(0);
        e.check(max > 0, "positional_embedding", || {
            "must allow at least 1 position".into()
        })?;
        Ok(Layer::PositionalEmbedding(max))
    }
}

impl LayerDef for PositionalEmbedding {
    fn kind(&self) -> &'static str {
        "positional_embedding"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        match *input {
            [t, d] if t <= self.0 && t > 0 && d > 0 && self.0.checked_mul(d).is_some() => {
                Ok(input.to_vec())
            }
            ref s => Err(Error::shape(
                name,
                format!(
                    "needs [positions, features] sequences of at most {} positions, got {s:?}",
                    self.0
                ),
            )),
        }
    }

    fn params(&self, input: &[usize], _output: &[usize]) -> Vec<ParamSpec> {
        let dim = input.last().copied().unwrap_or(0);
        let init = ParamInit::sample(Init::Normal(0.0, 1.0), self.0, dim, 0);
        vec![ParamSpec {
            checked: true,
            ..ParamSpec::new("weight", &[self.0, dim], init)
        }]
    }

    /// Add of the weight, which broadcasts over the batch when the sequences use every
    /// position.
    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        if cx.shape.first() != Some(&self.0) {
            return Err(Error::arg(
                "onnx export",
                format!(
                    "positional embedding '{}' exports sequences of all {} positions only",
                    cx.name, self.0
                ),
            ));
        }
        let w = cx.param(0)?.to_string();
        cx.apply("Add", &[w], Vec::new())
    }

    fn lower(&self, slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(PositionalStep { w: slots.param(0)? }))
    }

    fn entry(&self) -> LayerSpec {
        LayerSpec::new("positional_embedding", self.0)
    }

    fn describe(&self) -> String {
        format!("positional embedding {}", self.0)
    }
}

/// The planned addition.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PositionalStep {
    w: usize,
}

impl Step for PositionalStep {
    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        positional_into(cx.x, &cx.params[self.w].value, cx.y)
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        positional_grad_into(cx.dy, &mut cx.params[self.w].grad)?;
        if !cx.first {
            scale_into(cx.dy, 1.0, cx.dx)?;
        }
        Ok(())
    }

    fn has_params(&self) -> bool {
        true
    }

    /// Row by row, each row adding its position's row of the table.
    fn incremental(&self, _inputs: usize) -> bool {
        true
    }

    fn forward_at(&self, cx: Forward<'_>, at: usize, _cache: Option<&mut Tensor>) -> Result<()> {
        positional_at_into(cx.x, &cx.params[self.w].value, at, cx.y)
    }
}
