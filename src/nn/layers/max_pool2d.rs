//! Max pooling over NCHW images (the argmax is kept for the backward). [`Pool`], the
//! window options, is shared with average pooling.

use std::sync::Arc;

use super::step::{Backward, Forward, Scratch, Step};
use super::{image, FromEntry, Layer, LayerDef, Slots};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::ops::pool::Pool2d;
use crate::tensor::Tensor;
use crate::nn::onnx::{pads, pair, Attr, Emit};

/// Pooling window, stride and padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Window (height, width).
    pub kernel: (usize, usize),
    /// Step (height, width); Keras and PyTorch default to the window.
    pub stride: (usize, usize),
    /// Zero padding on each side.
    pub padding: (usize, usize),
}

impl Pool {
    /// A `k` x `k` window with stride `k`.
    pub fn new(k: usize) -> Pool {
        Pool {
            kernel: (k, k),
            stride: (k, k),
            padding: (0, 0),
        }
    }

    /// The op descriptor this layer runs.
    pub fn op(&self) -> Pool2d {
        Pool2d::new(self.kernel)
            .with_stride(self.stride)
            .with_padding(self.padding)
    }

    /// The output shape of pooling an image sample.
    pub(crate) fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        let (c, h, w) = image(name, input)?;
        let o = self
            .op()
            .out_shape(&[1, c, h, w])
            .map_err(|e| Error::shape(name, e.to_string()))?;
        Ok(vec![o[1], o[2], o[3]])
    }

    /// The window's ONNX attributes (MaxPool and AveragePool share them).
    pub(crate) fn onnx_attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![
            ("kernel_shape", pair(self.kernel)),
            ("strides", pair(self.stride)),
            ("pads", pads(self.padding)),
        ]
    }

    /// A `max_pool = K` or `avg_pool = K` entry's window.
    pub(crate) fn from_entry(e: &Entry<'_>, key: &'static str) -> std::result::Result<Pool, Invalid> {
        let k = e.usize(key)?.unwrap_or(0);
        e.check(k > 0, key, || "must be at least 1".into())?;
        Ok(Pool::new(k))
    }
}

/// The max pooling layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaxPool2d(pub Pool);

impl From<Pool> for MaxPool2d {
    fn from(pool: Pool) -> MaxPool2d {
        MaxPool2d(pool)
    }
}

impl FromEntry for MaxPool2d {
    const KEY: Option<&'static str> = Some("max_pool");

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        Ok(Layer::MaxPool2d(Pool::from_entry(e, "max_pool")?))
    }
}

impl LayerDef for MaxPool2d {
    fn kind(&self) -> &'static str {
        "max_pooling2d"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        self.0.output_shape(name, input)
    }

    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        // Padding never wins a max, as in ONNX MaxPool.
        cx.apply("MaxPool", &[], self.0.onnx_attrs())
    }

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(MaxPoolStep(self.0.op())))
    }

    fn entry(&self) -> LayerSpec {
        LayerSpec::new("max_pool", self.0.kernel.0)
    }
}

/// The planned max pooling; its scratch holds the argmax.
#[derive(Clone, Copy, Debug, PartialEq)]
struct MaxPoolStep(Pool2d);

impl Step for MaxPoolStep {
    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        let argmax = cx.scratch.tensor_mut(0, "argmax")?;
        self.0.max_forward_into(cx.x, cx.y, argmax)
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        let argmax = cx.scratch.tensor(0, "argmax")?;
        self.0.max_backward_into(cx.dy, argmax, cx.dx)
    }

    fn scratch(&self, device: &Device, y: &[usize]) -> Result<Scratch> {
        Ok(Scratch {
            tensors: vec![Tensor::zeros(device, y)?],
            norm: None,
        })
    }
}
