//! Add: the elementwise sum of two or more inputs of one shape (Keras's `Add`), the merge
//! of residual blocks. Its backward hands dL/dy to every input unchanged.

use std::sync::Arc;

use super::step::{Backward, Forward, Step};
use super::{LayerDef, Slots};
use crate::error::Result;
use crate::io::model_file::schema::LayerSpec;
use crate::nn::onnx::Emit;
use crate::ops::elementwise::{axpy, binary_into, BinaryOp};

/// The add merge.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Add;

impl LayerDef for Add {
    fn kind(&self) -> &'static str {
        "add"
    }

    fn output_shape(&self, name: &str, _input: &[usize]) -> Result<Vec<usize>> {
        super::merge_needs_inputs(name)
    }

    fn output_shape_of(&self, name: &str, inputs: &[Vec<usize>]) -> Result<Vec<usize>> {
        super::same_shapes(name, inputs, 2)
    }

    /// Sum takes any number of inputs.
    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        cx.merge("Sum", Vec::new());
        Ok(())
    }

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(AddStep))
    }

    /// Merges have no `[[layers]]` entry: they exist only in graphs.
    fn entry(&self) -> LayerSpec {
        LayerSpec::default()
    }
}

/// The planned add.
#[derive(Debug)]
struct AddStep;

impl Step for AddStep {
    /// Row by row: decoding runs it on the new positions alone.
    fn incremental(&self, _inputs: usize) -> bool {
        true
    }

    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        binary_into(BinaryOp::Add, cx.inputs.get(0)?, cx.inputs.get(1)?, cx.y)?;
        for k in 2..cx.inputs.len() {
            axpy(1.0, cx.inputs.get(k)?, cx.y)?;
        }
        Ok(())
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        cx.dx.copy_from(cx.dy)
    }
}
