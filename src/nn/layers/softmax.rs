//! Row-wise softmax. A final softmax before a categorical cross-entropy is fused into
//! the loss by the planner (the model trains on logits).

use std::sync::Arc;

use super::step::{Backward, Forward, Pattern, Step};
use super::{FromEntry, Layer, LayerDef, Slots};
use crate::error::Result;
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::ops::activation::{softmax_backward_into, softmax_into};
use crate::nn::onnx::{Attr, Emit};

/// The softmax layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Softmax;

impl FromEntry for Softmax {
    // Its entry is `activation = "softmax"`, which the activation layer reads.
    const KEY: Option<&'static str> = None;

    fn from_entry(_e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        Ok(Layer::Softmax)
    }
}

impl LayerDef for Softmax {
    fn kind(&self) -> &'static str {
        "softmax"
    }

    fn output_shape(&self, _name: &str, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }

    /// Over the last axis, as kiln's softmax (each position of a [T, V] sequence).
    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        cx.apply("Softmax", &[], vec![("axis", Attr::Int(-1))])
    }

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(Softmax))
    }

    fn entry(&self) -> LayerSpec {
        LayerSpec::new(super::ACTIVATION_KEY, "softmax")
    }
}

impl Step for Softmax {
    /// Row by row: decoding runs it on the new positions alone.
    fn incremental(&self, _inputs: usize) -> bool {
        true
    }

    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        softmax_into(cx.x, cx.y)
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        softmax_backward_into(cx.y, cx.dy, cx.dx)
    }

    fn pattern(&self) -> Pattern {
        Pattern::Softmax
    }
}
