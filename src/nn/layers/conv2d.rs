//! 2-D convolution over NCHW images; weights [filters, channels, kh, kw] as PyTorch.

use std::sync::Arc;

use super::step::{Backward, Forward, Step};
use super::{image, FromEntry, Layer, LayerDef, ParamInit, ParamSpec, Slots};
use crate::error::{Error, Result};
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::nn::init::Init;
use crate::ops::conv::Conv2d;
use crate::nn::onnx::{pads, pair, Emit};

/// A 2-D convolution layer over NCHW images; weights [filters, channels, kh, kw] as PyTorch.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    /// Output channels.
    pub filters: usize,
    /// Kernel (height, width).
    pub kernel: (usize, usize),
    /// Step between outputs (height, width).
    pub stride: (usize, usize),
    /// Zero padding on each side (height, width); `None` is Keras's 'same' (odd kernels, stride 1).
    pub padding: Option<(usize, usize)>,
    /// Step between kernel taps.
    pub dilation: (usize, usize),
    /// Whether the layer has a bias.
    pub use_bias: bool,
    /// Initializer of the weight.
    pub kernel_init: Init,
}

impl Conv {
    /// `filters` channels out of a `k` x `k` kernel, stride 1, 'valid' padding, He-uniform weights.
    pub fn new(filters: usize, k: usize) -> Conv {
        Conv {
            filters,
            kernel: (k, k),
            stride: (1, 1),
            padding: Some((0, 0)),
            dilation: (1, 1),
            use_bias: true,
            kernel_init: Init::HeUniform,
        }
    }

    /// With Keras's 'same' padding.
    pub fn same(self) -> Conv {
        Conv {
            padding: None,
            ..self
        }
    }

    /// With this stride.
    pub fn stride(self, s: usize) -> Conv {
        Conv {
            stride: (s, s),
            ..self
        }
    }

    /// With explicit zero padding.
    pub fn padding(self, p: usize) -> Conv {
        Conv {
            padding: Some((p, p)),
            ..self
        }
    }

    /// The op descriptor this layer runs.
    pub fn op(&self) -> Result<Conv2d> {
        let base = match self.padding {
            Some(p) => Conv2d::valid().with_padding(p).with_dilation(self.dilation),
            None => Conv2d::same_dilated(self.kernel, self.dilation)?,
        };
        Ok(base.with_stride(self.stride))
    }
}

impl FromEntry for Conv {
    const KEY: Option<&'static str> = Some("conv2d");
    const KEYS: &'static [&'static str] = &["kernel", "stride", "padding"];
    const JOINS_ACTIVATION: bool = true;

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        let filters = e.usize("conv2d")?.unwrap_or(0);
        e.check(filters > 0, "conv2d", || "must be at least 1 filter".into())?;
        let k = e.usize("kernel")?.unwrap_or(3);
        e.check(k > 0, "kernel", || "must be at least 1".into())?;
        let stride = e.usize("stride")?.unwrap_or(1);
        e.check(stride > 0, "stride", || "must be at least 1".into())?;
        let conv = Conv::new(filters, k).stride(stride);
        let conv = match e.spec.get("padding") {
            None => conv,
            Some(toml::Value::Integer(_)) => conv.padding(e.usize("padding")?.unwrap_or(0)),
            Some(v) => match v.as_str() {
                Some("valid") => conv,
                Some("same") => {
                    e.check(k % 2 == 1 && stride == 1, "padding", || {
                        "'same' needs an odd kernel and stride 1".into()
                    })?;
                    conv.same()
                }
                _ => return Err(e.error("padding", format!("{v} is not same, valid or a number"))),
            },
        };
        Ok(Layer::Conv2d(conv))
    }
}

impl LayerDef for Conv {
    fn kind(&self) -> &'static str {
        "conv2d"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        let (c, h, w) = image(name, input)?;
        if self.filters == 0 {
            return Err(Error::arg(format!("{name} filters"), "must be at least 1"));
        }
        let k = [self.filters, c, self.kernel.0, self.kernel.1];
        if k.iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_none()
        {
            return Err(Error::arg(
                format!("{name} filters"),
                format!(
                    "{} filters of {c}x{}x{} is more weights than fit in usize",
                    self.filters, self.kernel.0, self.kernel.1
                ),
            ));
        }
        super::check_init(name, "kernel_init", self.kernel_init)?;
        let o = self
            .op()?
            .out_shape(&[1, c, h, w], &k)
            .map_err(|e| Error::shape(name, e.to_string()))?;
        Ok(vec![o[1], o[2], o[3]])
    }

    fn params(&self, input: &[usize], _output: &[usize]) -> Vec<ParamSpec> {
        let (cin, (kh, kw)) = (input.first().copied().unwrap_or(0), self.kernel);
        // output_shape checked that filters * cin * kh * kw fits in usize.
        let (fan_in, fan_out) = (cin * kh * kw, self.filters * kh * kw);
        let weight = ParamSpec {
            checked: true,
            ..ParamSpec::new(
                "weight",
                &[self.filters, cin, kh, kw],
                ParamInit::sample(self.kernel_init, fan_in, fan_out, 0),
            )
        };
        let bias = ParamSpec::new("bias", &[self.filters], ParamInit::Fill(0.0));
        std::iter::once(weight)
            .chain(self.use_bias.then_some(bias))
            .collect()
    }

    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        let op = self.op()?;
        let params = cx.params.clone();
        let attrs = vec![
            ("kernel_shape", pair(self.kernel)),
            ("strides", pair(op.stride)),
            ("pads", pads(op.padding)),
            ("dilations", pair(op.dilation)),
        ];
        cx.apply("Conv", &params, attrs)
    }

    fn lower(&self, slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(ConvStep {
            w: slots.param(0)?,
            b: if self.use_bias {
                Some(slots.param(1)?)
            } else {
                None
            },
            conv: self.op()?,
        }))
    }

    fn entry(&self) -> LayerSpec {
        let entry = LayerSpec::new("conv2d", self.filters)
            .with("kernel", self.kernel.0)
            .with_some("stride", (self.stride.0 != 1).then_some(self.stride.0));
        match self.padding {
            None => entry.with("padding", "same"),
            Some((0, 0)) => entry.with("padding", "valid"),
            Some((p, _)) => entry.with("padding", p),
        }
    }
}

/// The planned convolution, with its bias.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ConvStep {
    w: usize,
    b: Option<usize>,
    conv: Conv2d,
}

impl Step for ConvStep {
    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        let bias = self.b.map(|b| &cx.params[b].value);
        self.conv
            .forward_into(cx.x, &cx.params[self.w].value, bias, cx.y)
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        let params = cx.params;
        self.conv
            .backward_weight_into(cx.x, cx.dy, &mut params[self.w].grad)?;
        if let Some(b) = self.b {
            self.conv.backward_bias_into(cx.dy, &mut params[b].grad)?;
        }
        if !cx.first {
            self.conv
                .backward_input_into(cx.dy, &params[self.w].value, cx.dx)?;
        }
        Ok(())
    }

    fn has_params(&self) -> bool {
        true
    }
}
