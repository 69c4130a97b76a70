//! Flatten: [c, h, w] -> [c * h * w]. Its step, a copy (tensors do not share buffers),
//! also runs reshapes.

use std::sync::Arc;

use super::step::{Backward, Forward, Step};
use super::{FromEntry, Layer, LayerDef, Slots};
use crate::error::Result;
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::nn::onnx::{Attr, Emit};

/// The flatten layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flatten;

impl FromEntry for Flatten {
    const KEY: Option<&'static str> = Some("flatten");

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        e.flag("flatten")?;
        Ok(Layer::Flatten)
    }
}

impl LayerDef for Flatten {
    fn kind(&self) -> &'static str {
        "flatten"
    }

    fn output_shape(&self, _name: &str, input: &[usize]) -> Result<Vec<usize>> {
        // The shape coming in was checked against usize by the model's shape walk.
        let values = input.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        Ok(vec![values.unwrap_or(usize::MAX)])
    }

    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        cx.apply("Flatten", &[], vec![("axis", Attr::Int(1))])
    }

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(Copy))
    }

    fn entry(&self) -> LayerSpec {
        LayerSpec::new("flatten", true)
    }
}

/// A step that copies its input: the same values under another sample shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Copy;

impl Step for Copy {
    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        cx.y.copy_from(cx.x)
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        cx.dx.copy_from(cx.dy)
    }
}
