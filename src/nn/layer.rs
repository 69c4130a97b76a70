//! Layer descriptions and the `Sequential` builder: what a model is, before it has weights.

use super::init::Init;
use crate::ops::batch_norm::BatchNorm;
use crate::ops::layer_norm::LayerNorm;
use crate::ops::Activation;

/// A fully connected layer: `y = x W^T + b`, W stored [units, inputs] as PyTorch does.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    /// Input width; `None` takes the previous layer's output.
    pub inputs: Option<usize>,
    /// Output width.
    pub units: usize,
    /// Whether the layer has a bias.
    pub use_bias: bool,
    /// Initializer of the weight.
    pub kernel_init: Init,
    /// Initializer of the bias.
    pub bias_init: Init,
    /// L1 penalty on the weight (adds l1 * sum|w| to the loss).
    pub l1: f32,
    /// L2 penalty on the weight (adds l2 * sum w^2 to the loss, as Keras).
    pub l2: f32,
}

impl Dense {
    /// A layer of `units` outputs taking its width from the previous layer.
    pub fn new(units: usize) -> Dense {
        Dense {
            inputs: None,
            units,
            use_bias: true,
            kernel_init: Init::GlorotUniform,
            bias_init: Init::Zeros,
            l1: 0.0,
            l2: 0.0,
        }
    }

    /// A layer with an explicit input width, checked when the model is built.
    pub fn with_inputs(inputs: usize, units: usize) -> Dense {
        Dense {
            inputs: Some(inputs),
            ..Dense::new(units)
        }
    }

    /// Without a bias.
    pub fn no_bias(self) -> Dense {
        Dense {
            use_bias: false,
            ..self
        }
    }

    /// With a weight initializer.
    pub fn kernel_init(self, init: Init) -> Dense {
        Dense {
            kernel_init: init,
            ..self
        }
    }

    /// With a bias initializer.
    pub fn bias_init(self, init: Init) -> Dense {
        Dense {
            bias_init: init,
            ..self
        }
    }

    /// With L1 and L2 penalties on the weight.
    pub fn regularize(self, l1: f32, l2: f32) -> Dense {
        Dense { l1, l2, ..self }
    }
}

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
    pub fn op(&self) -> crate::Result<crate::ops::conv::Conv2d> {
        let base = match self.padding {
            Some(p) => crate::ops::conv::Conv2d::valid()
                .with_padding(p)
                .with_dilation(self.dilation),
            None => crate::ops::conv::Conv2d::same_dilated(self.kernel, self.dilation)?,
        };
        Ok(base.with_stride(self.stride))
    }
}

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
    pub fn op(&self) -> crate::ops::pool::Pool2d {
        crate::ops::pool::Pool2d::new(self.kernel)
            .with_stride(self.stride)
            .with_padding(self.padding)
    }
}

/// One layer of a sequential model.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// 2-D convolution over [channels, height, width] samples.
    Conv2d(Conv),
    /// Max pooling.
    MaxPool2d(Pool),
    /// Average pooling (padding not counted).
    AvgPool2d(Pool),
    /// Mean over each channel's plane: [c, h, w] -> [c].
    GlobalAvgPool,
    /// [c, h, w] -> [c * h * w].
    Flatten,
    /// Any sample shape to another with as many values (e.g. [784] -> [1, 28, 28]).
    Reshape(Vec<usize>),
    /// Fully connected.
    Dense(Dense),
    /// A pointwise activation.
    Activation(Activation),
    /// Row-wise softmax.
    Softmax,
    /// Inverted dropout with this rate (training only).
    Dropout(f32),
    /// Batch normalisation per feature of [features] samples (BatchNorm1d) or per channel
    /// of [c, h, w] ones (BatchNorm2d); momentum follows PyTorch (0.1 = weight of the batch).
    BatchNorm(BatchNorm),
    /// Layer normalisation over the features of each [features] sample.
    LayerNorm(LayerNorm),
}

impl Layer {
    /// The Keras-style kind name used in summaries and names.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Dense(_) => "dense",
            Layer::Activation(Activation::Identity) => "identity",
            Layer::Activation(Activation::Relu) => "relu",
            Layer::Activation(Activation::LeakyRelu(_)) => "leaky_relu",
            Layer::Activation(Activation::Sigmoid) => "sigmoid",
            Layer::Activation(Activation::Tanh) => "tanh",
            Layer::Activation(Activation::Gelu) => "gelu",
            Layer::Softmax => "softmax",
            Layer::Dropout(_) => "dropout",
            Layer::Conv2d(_) => "conv2d",
            Layer::MaxPool2d(_) => "max_pooling2d",
            Layer::AvgPool2d(_) => "average_pooling2d",
            Layer::GlobalAvgPool => "global_average_pooling2d",
            Layer::Flatten => "flatten",
            Layer::Reshape(_) => "reshape",
            Layer::BatchNorm(_) => "batch_normalization",
            Layer::LayerNorm(_) => "layer_normalization",
        }
    }
}

/// A stack of layers, each feeding the next: the description a model is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequential {
    /// Width of one input sample (channels * height * width for images).
    pub input: usize,
    /// The layers in order.
    pub layers: Vec<Layer>,
    /// (channels, height, width) of image samples, stored NCHW row-major.
    pub image: Option<(usize, usize, usize)>,
}

impl Sequential {
    /// An empty model taking samples of `input` features.
    pub fn new(input: usize) -> Sequential {
        Sequential {
            input,
            layers: Vec::new(),
            image: None,
        }
    }

    /// An empty model taking images of `channels` x `height` x `width` (NCHW).
    pub fn image(channels: usize, height: usize, width: usize) -> Sequential {
        Sequential {
            // Saturating: shapes() reports a product that overflows instead of panicking here.
            input: channels.saturating_mul(height).saturating_mul(width),
            layers: Vec::new(),
            image: Some((channels, height, width)),
        }
    }

    /// Appends a convolution of `filters` channels with a `k` x `k` kernel and 'same' padding.
    pub fn conv2d(self, filters: usize, k: usize) -> Sequential {
        self.add(Layer::Conv2d(Conv::new(filters, k).same()))
    }

    /// Appends a configured convolution.
    pub fn conv2d_with(self, conv: Conv) -> Sequential {
        self.add(Layer::Conv2d(conv))
    }

    /// Appends `k` x `k` max pooling with stride `k`.
    pub fn max_pool(self, k: usize) -> Sequential {
        self.add(Layer::MaxPool2d(Pool::new(k)))
    }

    /// Appends `k` x `k` average pooling with stride `k`.
    pub fn avg_pool(self, k: usize) -> Sequential {
        self.add(Layer::AvgPool2d(Pool::new(k)))
    }

    /// Appends global average pooling.
    pub fn global_avg_pool(self) -> Sequential {
        self.add(Layer::GlobalAvgPool)
    }

    /// Appends a flatten.
    pub fn flatten(self) -> Sequential {
        self.add(Layer::Flatten)
    }

    /// Appends a reshape of each sample to `shape` (Keras's `Reshape`, without the batch).
    pub fn reshape(self, shape: &[usize]) -> Sequential {
        self.add(Layer::Reshape(shape.to_vec()))
    }

    /// Appends any layer (Keras's `model.add`).
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: Layer) -> Sequential {
        self.layers.push(layer);
        self
    }

    /// Appends a dense layer of `units` outputs (glorot-uniform weights, zero bias).
    pub fn dense(self, units: usize) -> Sequential {
        self.add(Layer::Dense(Dense::new(units)))
    }

    /// Appends a configured dense layer.
    pub fn dense_with(self, dense: Dense) -> Sequential {
        self.add(Layer::Dense(dense))
    }

    /// Appends an activation.
    pub fn activation(self, act: Activation) -> Sequential {
        self.add(Layer::Activation(act))
    }

    /// Appends ReLU.
    pub fn relu(self) -> Sequential {
        self.activation(Activation::Relu)
    }

    /// Appends leaky ReLU with this negative slope.
    pub fn leaky_relu(self, slope: f32) -> Sequential {
        self.activation(Activation::LeakyRelu(slope))
    }

    /// Appends sigmoid.
    pub fn sigmoid(self) -> Sequential {
        self.activation(Activation::Sigmoid)
    }

    /// Appends tanh.
    pub fn tanh(self) -> Sequential {
        self.activation(Activation::Tanh)
    }

    /// Appends GELU.
    pub fn gelu(self) -> Sequential {
        self.activation(Activation::Gelu)
    }

    /// Appends a row-wise softmax.
    pub fn softmax(self) -> Sequential {
        self.add(Layer::Softmax)
    }

    /// Appends dropout with this rate.
    pub fn dropout(self, rate: f32) -> Sequential {
        self.add(Layer::Dropout(rate))
    }

    /// Appends batch normalisation with PyTorch's defaults (eps 1e-5, momentum 0.1).
    pub fn batch_norm(self) -> Sequential {
        self.batch_norm_with(BatchNorm::default())
    }

    /// Appends batch normalisation with this eps and momentum (PyTorch's convention:
    /// running = (1 - momentum) * running + momentum * batch; Keras's 0.99 is 0.01 here).
    pub fn batch_norm_with(self, bn: BatchNorm) -> Sequential {
        self.add(Layer::BatchNorm(bn))
    }

    /// Appends layer normalisation with PyTorch's default eps (1e-5).
    pub fn layer_norm(self) -> Sequential {
        self.layer_norm_with(LayerNorm::default())
    }

    /// Appends layer normalisation with this eps.
    pub fn layer_norm_with(self, ln: LayerNorm) -> Sequential {
        self.add(Layer::LayerNorm(ln))
    }

    /// Trainable values the built model will hold, computed without allocating them
    /// (e.g. to check a file's claim before building what it describes).
    pub fn param_count(&self) -> crate::Result<usize> {
        let shapes = self.shapes()?;
        let mut inputs = match self.image {
            Some((c, _, _)) => c,
            None => self.input,
        };
        let mut total = 0usize;
        for (layer, shape) in self.layers.iter().zip(&shapes) {
            // shapes() checked every product below against usize.
            let count = match layer {
                Layer::Dense(d) => d.units * inputs + if d.use_bias { d.units } else { 0 },
                Layer::Conv2d(c) => {
                    c.filters * inputs * c.kernel.0 * c.kernel.1
                        + if c.use_bias { c.filters } else { 0 }
                }
                // gamma and beta, one per feature or channel.
                Layer::BatchNorm(_) | Layer::LayerNorm(_) => 2 * norm_channels(shape),
                _ => 0,
            };
            total = total.saturating_add(count);
            // Dense layers read flat widths, convolutions the channel count.
            inputs = match shape.as_slice() {
                [c, _, _] => *c,
                s => s.iter().product(),
            };
        }
        Ok(total)
    }

    /// Non-trainable values the built model will hold: batch norm's running mean and variance.
    pub fn buffer_count(&self) -> crate::Result<usize> {
        let shapes = self.shapes()?;
        Ok(self
            .layers
            .iter()
            .zip(&shapes)
            .filter(|(l, _)| matches!(l, Layer::BatchNorm(_)))
            .map(|(_, s)| 2 * norm_channels(s))
            .sum())
    }

    /// Output width of each layer (all values of one sample), checking that layers chain.
    pub fn widths(&self) -> crate::Result<Vec<usize>> {
        Ok(self.shapes()?.iter().map(|s| s.iter().product()).collect())
    }

    /// Output shape of one sample after each layer: [features] or [channels, height, width].
    pub fn shapes(&self) -> crate::Result<Vec<Vec<usize>>> {
        use crate::Error;
        let mut shape = match self.image {
            Some((c, h, w)) => vec![c, h, w],
            None => vec![self.input],
        };
        let mut out = Vec::with_capacity(self.layers.len());
        if self.input == 0 || shape.contains(&0) {
            return Err(Error::arg(
                "Sequential input",
                "a model needs at least one input feature",
            ));
        }
        let values = |shape: &[usize]| shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if values(&shape).is_none() {
            return Err(Error::arg(
                "Sequential input",
                format!("{shape:?} holds more values than fit in usize"),
            ));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let name = format!("layer {i} ({})", layer.kind());
            let image = |shape: &[usize]| -> crate::Result<(usize, usize, usize)> {
                match *shape {
                    [c, h, w] => Ok((c, h, w)),
                    _ => Err(Error::shape(
                        name.clone(),
                        format!("needs [channels, height, width] samples, got {shape:?}: start with Sequential::image"),
                    )),
                }
            };
            shape = match layer {
                Layer::Dense(d) => {
                    let width = match shape.as_slice() {
                        [w] => *w,
                        s => {
                            return Err(Error::shape(
                                name,
                                format!("needs flat samples, got {s:?}: add .flatten() first"),
                            ))
                        }
                    };
                    if let Some(inputs) = d.inputs {
                        if inputs != width {
                            return Err(Error::shape(
                                name,
                                format!(
                                    "declared {inputs} inputs but the previous layer gives {width}"
                                ),
                            ));
                        }
                    }
                    if d.units == 0 {
                        return Err(Error::arg(format!("{name} units"), "must be at least 1"));
                    }
                    if d.units.checked_mul(width).is_none() {
                        return Err(Error::arg(
                            format!("{name} units"),
                            format!(
                                "{} units x {width} inputs is more weights than fit in usize",
                                d.units
                            ),
                        ));
                    }
                    for (which, init) in
                        [("kernel_init", d.kernel_init), ("bias_init", d.bias_init)]
                    {
                        init.check().map_err(|e| match e {
                            Error::InvalidArgument { detail, .. } => {
                                Error::arg(format!("{name} {which}"), detail)
                            }
                            other => other,
                        })?;
                    }
                    vec![d.units]
                }
                Layer::Dropout(rate) if !(0.0..1.0).contains(rate) => {
                    return Err(Error::arg(
                        format!("{name} rate"),
                        format!("{rate} is not in [0, 1)"),
                    ))
                }
                Layer::Conv2d(conv) => {
                    let (c, h, w) = image(&shape)?;
                    if conv.filters == 0 {
                        return Err(Error::arg(format!("{name} filters"), "must be at least 1"));
                    }
                    let weights = [conv.filters, c, conv.kernel.0, conv.kernel.1]
                        .iter()
                        .try_fold(1usize, |a, &d| a.checked_mul(d));
                    if weights.is_none() {
                        return Err(Error::arg(
                            format!("{name} filters"),
                            format!(
                                "{} filters of {c}x{}x{} is more weights than fit in usize",
                                conv.filters, conv.kernel.0, conv.kernel.1
                            ),
                        ));
                    }
                    conv.kernel_init.check().map_err(|e| match e {
                        Error::InvalidArgument { detail, .. } => {
                            Error::arg(format!("{name} kernel_init"), detail)
                        }
                        other => other,
                    })?;
                    let k = [conv.filters, c, conv.kernel.0, conv.kernel.1];
                    let o = conv
                        .op()?
                        .out_shape(&[1, c, h, w], &k)
                        .map_err(|e| Error::shape(name, e.to_string()))?;
                    vec![o[1], o[2], o[3]]
                }
                Layer::MaxPool2d(p) | Layer::AvgPool2d(p) => {
                    let (c, h, w) = image(&shape)?;
                    let o = p
                        .op()
                        .out_shape(&[1, c, h, w])
                        .map_err(|e| Error::shape(name, e.to_string()))?;
                    vec![o[1], o[2], o[3]]
                }
                Layer::GlobalAvgPool => vec![image(&shape)?.0],
                Layer::BatchNorm(bn) => {
                    crate::ops::check_eps(&name, bn.eps)?;
                    if !(0.0..=1.0).contains(&bn.momentum) {
                        return Err(Error::arg(
                            format!("{name} momentum"),
                            format!("{} is not in [0, 1]", bn.momentum),
                        ));
                    }
                    shape
                }
                Layer::LayerNorm(ln) => {
                    crate::ops::check_eps(&name, ln.eps)?;
                    if shape.len() != 1 {
                        return Err(Error::shape(
                            name,
                            format!("normalises flat samples, got {shape:?}: add .flatten() first (or use batch_norm per channel)"),
                        ));
                    }
                    shape
                }
                // The shape coming in was checked below (or above, for the input).
                Layer::Flatten => vec![values(&shape).unwrap_or(usize::MAX)],
                Layer::Reshape(to) => {
                    if to.is_empty() || to.contains(&0) || values(to) != values(&shape) {
                        return Err(Error::shape(
                            name,
                            format!("cannot reshape {shape:?} samples to {to:?}: the number of values differs"),
                        ));
                    }
                    to.clone()
                }
                _ => shape,
            };
            // widths() and the plan multiply these out: refuse what overflows.
            if values(&shape).is_none() {
                return Err(Error::shape(
                    format!("layer {i}"),
                    format!("output {shape:?} holds more values than fit in usize"),
                ));
            }
            out.push(shape.clone());
        }
        Ok(out)
    }
}

/// Channels a normalisation keeps statistics and gamma/beta for: the features of a flat
/// sample, the channels of an image.
pub(crate) fn norm_channels(shape: &[usize]) -> usize {
    match shape {
        [c, _, _] => *c,
        s => s.iter().product(),
    }
}
