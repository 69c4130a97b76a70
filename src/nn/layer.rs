//! Layer descriptions and the `Sequential` builder: what a model is, before it has weights.

use super::init::Init;
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

/// One layer of a sequential model.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// Fully connected.
    Dense(Dense),
    /// A pointwise activation.
    Activation(Activation),
    /// Row-wise softmax.
    Softmax,
    /// Inverted dropout with this rate (training only).
    Dropout(f32),
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
        }
    }
}

/// A stack of layers, each feeding the next: the description a model is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequential {
    /// Width of one input sample.
    pub input: usize,
    /// The layers in order.
    pub layers: Vec<Layer>,
}

impl Sequential {
    /// An empty model taking samples of `input` features.
    pub fn new(input: usize) -> Sequential {
        Sequential {
            input,
            layers: Vec::new(),
        }
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

    /// Output width of each layer, checking that dense layers chain.
    pub fn widths(&self) -> crate::Result<Vec<usize>> {
        let mut width = self.input;
        let mut out = Vec::with_capacity(self.layers.len());
        if width == 0 {
            return Err(crate::Error::arg(
                "Sequential input",
                "a model needs at least one input feature",
            ));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            match layer {
                Layer::Dense(d) => {
                    if let Some(inputs) = d.inputs {
                        if inputs != width {
                            return Err(crate::Error::shape(
                                format!("layer {i} (dense)"),
                                format!(
                                    "declared {inputs} inputs but the previous layer gives {width}"
                                ),
                            ));
                        }
                    }
                    if d.units == 0 {
                        return Err(crate::Error::arg(
                            format!("layer {i} (dense) units"),
                            "must be at least 1",
                        ));
                    }
                    if d.units.checked_mul(width).is_none() {
                        return Err(crate::Error::arg(
                            format!("layer {i} (dense) units"),
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
                            crate::Error::InvalidArgument { detail, .. } => {
                                crate::Error::arg(format!("layer {i} (dense) {which}"), detail)
                            }
                            other => other,
                        })?;
                    }
                    width = d.units;
                }
                Layer::Dropout(rate) if !(0.0..1.0).contains(rate) => {
                    return Err(crate::Error::arg(
                        format!("layer {i} (dropout) rate"),
                        format!("{rate} is not in [0, 1)"),
                    ))
                }
                _ => {}
            }
            out.push(width);
        }
        Ok(out)
    }
}
