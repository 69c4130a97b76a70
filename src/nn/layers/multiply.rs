//! Multiply: the elementwise product of two inputs of one shape (Keras's `Multiply`, as
//! in gating). The gradient of each input is dL/dy times the other input.

use std::sync::Arc;

use super::step::{Backward, Forward, Step};
use super::{LayerDef, Slots};
use crate::error::{Error, Result};
use crate::io::model_file::schema::LayerSpec;
use crate::nn::onnx::Emit;
use crate::ops::elementwise::{binary_into, BinaryOp};

/// The multiply merge (exactly two inputs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Multiply;

impl LayerDef for Multiply {
    fn kind(&self) -> &'static str {
        "multiply"
    }

    fn output_shape(&self, name: &str, _input: &[usize]) -> Result<Vec<usize>> {
        super::merge_needs_inputs(name)
    }

    fn output_shape_of(&self, name: &str, inputs: &[Vec<usize>]) -> Result<Vec<usize>> {
        if inputs.len() > 2 {
            return Err(Error::shape(
                name,
                format!("multiplies two inputs, got {}", inputs.len()),
            ));
        }
        super::same_shapes(name, inputs, 2)
    }

    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        cx.merge("Mul", Vec::new());
        Ok(())
    }

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(MultiplyStep))
    }

    /// Merges have no `[[layers]]` entry: they exist only in graphs.
    fn entry(&self) -> LayerSpec {
        LayerSpec::default()
    }
}

/// The planned multiply.
#[derive(Debug)]
struct MultiplyStep;

impl Step for MultiplyStep {
    /// Row by row: decoding runs it on the new positions alone.
    fn incremental(&self, _inputs: usize) -> bool {
        true
    }

    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        binary_into(BinaryOp::Mul, cx.inputs.get(0)?, cx.inputs.get(1)?, cx.y)
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        let other = cx.inputs.get(1 - cx.slot.min(1))?;
        binary_into(BinaryOp::Mul, cx.dy, other, cx.dx)
    }
}
