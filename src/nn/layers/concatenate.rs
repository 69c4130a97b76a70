//! Concatenate: joins its inputs along the feature axis of [features] samples or the
//! channel axis of [c, h, w] ones (Keras's `Concatenate`). A sample is contiguous in
//! both layouts, so each input is a block of columns of the output's rows.

use std::sync::Arc;

use super::step::{Backward, Forward, Step};
use super::{LayerDef, Slots};
use crate::error::{Error, Result};
use crate::io::model_file::schema::LayerSpec;
use crate::nn::onnx::{Attr, Emit};
use crate::ops::concat::{concat_cols_into, split_cols_into};

/// The concatenate merge.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Concatenate;

impl LayerDef for Concatenate {
    fn kind(&self) -> &'static str {
        "concatenate"
    }

    fn output_shape(&self, name: &str, _input: &[usize]) -> Result<Vec<usize>> {
        super::merge_needs_inputs(name)
    }

    fn output_shape_of(&self, name: &str, inputs: &[Vec<usize>]) -> Result<Vec<usize>> {
        if inputs.len() < 2 {
            return super::merge_needs_inputs(name);
        }
        let total = |axis: usize| inputs.iter().map(|s| s[axis]).sum::<usize>();
        let flat = inputs.iter().all(|s| s.len() == 1);
        let image = inputs
            .iter()
            .all(|s| s.len() == 3 && s[1..] == inputs[0][1..]);
        match () {
            _ if flat => Ok(vec![total(0)]),
            _ if image => Ok(vec![total(0), inputs[0][1], inputs[0][2]]),
            _ => Err(Error::shape(
                name,
                format!(
                    "joins [features] samples, or [c, h, w] ones of one height and width; got {inputs:?}"
                ),
            )),
        }
    }

    /// Axis 1 is the feature axis of [batch, features] and the channel axis of NCHW.
    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        cx.merge("Concat", vec![("axis", Attr::Int(1))]);
        Ok(())
    }

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(ConcatStep))
    }

    /// Merges have no `[[layers]]` entry: they exist only in graphs.
    fn entry(&self) -> LayerSpec {
        LayerSpec::default()
    }
}

/// The planned concatenate.
#[derive(Debug)]
struct ConcatStep;

/// Values per row of the inputs before input `k`: where its block starts.
fn offset(inputs: &super::Inputs<'_>, k: usize) -> Result<usize> {
    (0..k).try_fold(0, |sum, j| {
        let t = inputs.get(j)?;
        Ok(sum + t.len() / t.shape().first().copied().unwrap_or(1).max(1))
    })
}

impl Step for ConcatStep {
    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        for k in 0..cx.inputs.len() {
            concat_cols_into(cx.inputs.get(k)?, cx.y, offset(&cx.inputs, k)?)?;
        }
        Ok(())
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        split_cols_into(cx.dy, offset(&cx.inputs, cx.slot)?, cx.dx)
    }
}
