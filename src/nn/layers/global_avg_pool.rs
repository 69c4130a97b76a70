//! Global average pooling: the mean over each channel's plane, [c, h, w] -> [c].

use std::sync::Arc;

use super::step::{Backward, Forward, Step};
use super::{image, FromEntry, Layer, LayerDef, Slots};
use crate::error::Result;
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::ops::pool::{global_avg_pool_backward_into, global_avg_pool_into};
use crate::nn::onnx::{Attr, Emit};

/// The global average pooling layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GlobalAvgPool;

impl FromEntry for GlobalAvgPool {
    const KEY: Option<&'static str> = Some("global_avg_pool");

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        e.flag("global_avg_pool")?;
        Ok(Layer::GlobalAvgPool)
    }
}

impl LayerDef for GlobalAvgPool {
    fn kind(&self) -> &'static str {
        "global_average_pooling2d"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        Ok(vec![image(name, input)?.0])
    }

    /// GlobalAveragePool keeps 1x1 planes; kiln's output is [c].
    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        let x = cx.input(0)?.to_string();
        let pooled = cx.step("GlobalAveragePool", &[&x], "pooled", Vec::new());
        cx.finish("Flatten", &[&pooled], vec![("axis", Attr::Int(1))]);
        Ok(())
    }

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(GlobalAvgPool))
    }

    fn entry(&self) -> LayerSpec {
        LayerSpec::new("global_avg_pool", true)
    }
}

impl Step for GlobalAvgPool {
    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        global_avg_pool_into(cx.x, cx.y)
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        global_avg_pool_backward_into(cx.dy, cx.dx)
    }
}
