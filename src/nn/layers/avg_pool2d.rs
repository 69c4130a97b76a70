//! Average pooling over NCHW images (padding counted in the divisor, as PyTorch's default).

use std::sync::Arc;

use super::max_pool2d::Pool;
use super::step::{Backward, Forward, Step};
use super::{FromEntry, Layer, LayerDef, Slots};
use crate::error::Result;
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::ops::pool::Pool2d;
use crate::nn::onnx::{Attr, Emit};

/// The average pooling layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AvgPool2d(pub Pool);

impl From<Pool> for AvgPool2d {
    fn from(pool: Pool) -> AvgPool2d {
        AvgPool2d(pool)
    }
}

impl FromEntry for AvgPool2d {
    const KEY: Option<&'static str> = Some("avg_pool");

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        Ok(Layer::AvgPool2d(Pool::from_entry(e, "avg_pool")?))
    }
}

impl LayerDef for AvgPool2d {
    fn kind(&self) -> &'static str {
        "average_pooling2d"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        self.0.output_shape(name, input)
    }

    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        let mut attrs = self.0.onnx_attrs();
        let include = i64::from(self.0.op().count_include_pad);
        attrs.push(("count_include_pad", Attr::Int(include)));
        cx.apply("AveragePool", &[], attrs)
    }

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(AvgPoolStep(self.0.op())))
    }

    fn entry(&self) -> LayerSpec {
        LayerSpec::new("avg_pool", self.0.kernel.0)
    }
}

/// The planned average pooling.
#[derive(Clone, Copy, Debug, PartialEq)]
struct AvgPoolStep(Pool2d);

impl Step for AvgPoolStep {
    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        self.0.avg_forward_into(cx.x, cx.y)
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        self.0.avg_backward_into(cx.dy, cx.dx)
    }
}
