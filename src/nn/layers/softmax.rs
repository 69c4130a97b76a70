//! Row-wise softmax. A final softmax before a categorical cross-entropy is fused into
//! the loss by the planner (the model trains on logits).

use std::sync::Arc;

use super::step::{Backward, Forward, Pattern, Step};
use super::{LayerDef, Slots};
use crate::error::Result;
use crate::io::model_file::schema::LayerSpec;
use crate::ops::activation::{softmax_backward_into, softmax_into};

/// The softmax layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Softmax;

impl LayerDef for Softmax {
    fn kind(&self) -> &'static str {
        "softmax"
    }

    fn output_shape(&self, _name: &str, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(Softmax))
    }

    fn entry(&self) -> LayerSpec {
        LayerSpec {
            activation: Some("softmax".into()),
            ..LayerSpec::default()
        }
    }
}

impl Step for Softmax {
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
