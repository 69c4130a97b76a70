//! One file per layer. Each holds everything about its layer: its builder and options,
//! its output-shape rule (with typed errors), its parameters (PyTorch's names, their
//! shapes and initializers), the [`Step`] it lowers to (forward and backward as `ops`
//! calls, shared by the CPU reference and the GPU), its model-file entry and its name in
//! summaries. [`Layer`] is the closed set users build models from; [`Layer::def`] is the
//! registry that maps each variant to its [`LayerDef`].
//!
//! Adding a layer: a file here with a type implementing [`LayerDef`] and a [`Step`], a
//! variant of [`Layer`] and its arm in [`Layer::def`] (the registration), and its test.

pub mod activation;
pub mod add;
pub mod avg_pool2d;
pub mod batch_norm;
pub mod concatenate;
pub mod conv2d;
pub mod dense;
pub mod dropout;
pub mod flatten;
pub mod global_avg_pool;
pub mod layer_norm;
pub mod max_pool2d;
pub mod multiply;
pub mod reshape;
pub mod softmax;
pub mod step;

use std::fmt::Debug;
use std::sync::Arc;

pub use conv2d::Conv;
pub use dense::Dense;
pub use max_pool2d::Pool;
pub use step::{Backward, Forward, Inputs, Pass, Pattern, Scratch, Step};

use crate::error::{Error, Result};
use crate::io::model_file::schema::LayerSpec;
use crate::nn::init::Init;
use crate::ops::batch_norm::BatchNorm;
use crate::ops::layer_norm::LayerNorm;
use crate::ops::Activation;

/// A layer type: what the builder, the planner and the model files need of it.
///
/// Shapes are of one sample ([features] or [channels, height, width]); `name` in errors
/// is the layer's place in the model ("layer 3 (dense)").
pub trait LayerDef: Debug {
    /// The Keras-style kind name used in summaries and names ("dense").
    fn kind(&self) -> &'static str;
    /// The output shape for this input shape, or a typed error naming `name`.
    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>>;
    /// The output shape for these input shapes: one for most layers, several for merges
    /// (which override this).
    fn output_shape_of(&self, name: &str, inputs: &[Vec<usize>]) -> Result<Vec<usize>> {
        match inputs {
            [one] => self.output_shape(name, one),
            _ => Err(Error::shape(
                name,
                format!("takes one input, got {}", inputs.len()),
            )),
        }
    }
    /// The trainable parameters, in order, for these (checked) shapes.
    fn params(&self, _input: &[usize], _output: &[usize]) -> Vec<ParamSpec> {
        Vec::new()
    }
    /// Channels of running statistics kept as non-trainable buffers (batch norm).
    fn buffer_channels(&self, _output: &[usize]) -> Option<usize> {
        None
    }
    /// The plan step running this layer, given where its parameters and buffers live.
    fn lower(&self, slots: &Slots) -> Result<Arc<dyn Step>>;
    /// The layer's `[[layers]]` entry in a model file (defaults left out).
    fn entry(&self) -> LayerSpec;
    /// A short description for messages ("dense 8", "dropout 0.5").
    fn describe(&self) -> String {
        self.kind().to_string()
    }
}

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamInit {
    /// Drawn from an initializer with these fans; `salt` is xored into the layer's seed.
    Sample {
        /// The initializer.
        init: Init,
        /// Inputs per output.
        fan_in: usize,
        /// Outputs per input.
        fan_out: usize,
        /// Distinguishes the draws of one layer's parameters.
        salt: u64,
    },
    /// Every value this one.
    Fill(f32),
}

impl ParamInit {
    /// Drawn from `init`.
    pub fn sample(init: Init, fan_in: usize, fan_out: usize, salt: u64) -> ParamInit {
        ParamInit::Sample {
            init,
            fan_in,
            fan_out,
            salt,
        }
    }
}

/// One trainable tensor a layer declares.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// The PyTorch field name ("weight", "bias"); the model prefixes the layer's name.
    pub field: &'static str,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its initial values.
    pub init: ParamInit,
    /// L1 penalty.
    pub l1: f32,
    /// L2 penalty.
    pub l2: f32,
    /// Checked against the adapter's buffer limits before it is sampled (large weights).
    pub checked: bool,
}

impl ParamSpec {
    /// A parameter without penalties.
    pub fn new(field: &'static str, shape: &[usize], init: ParamInit) -> ParamSpec {
        ParamSpec {
            field,
            shape: shape.to_vec(),
            init,
            l1: 0.0,
            l2: 0.0,
            checked: false,
        }
    }

    /// Values it holds.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a lowered layer's state lives in the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slots {
    /// Indices into the model's parameters, in the order of [`LayerDef::params`].
    pub params: Vec<usize>,
    /// Index into the model's buffers.
    pub buffers: Option<usize>,
}

impl Slots {
    /// The model index of the layer's `k`-th parameter.
    pub fn param(&self, k: usize) -> Result<usize> {
        self.params
            .get(k)
            .copied()
            .ok_or_else(|| Error::arg("model", format!("a layer lowered without parameter {k}")))
    }

    /// The model index of the layer's buffers.
    pub fn buffer(&self) -> Result<usize> {
        self.buffers
            .ok_or_else(|| Error::arg("model", "a layer lowered without its buffers"))
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
    /// The registry: the [`LayerDef`] of each variant.
    pub fn def(&self) -> Box<dyn LayerDef> {
        match self {
            Layer::Conv2d(c) => Box::new(c.clone()),
            Layer::MaxPool2d(p) => Box::new(max_pool2d::MaxPool2d(*p)),
            Layer::AvgPool2d(p) => Box::new(avg_pool2d::AvgPool2d(*p)),
            Layer::GlobalAvgPool => Box::new(global_avg_pool::GlobalAvgPool),
            Layer::Flatten => Box::new(flatten::Flatten),
            Layer::Reshape(to) => Box::new(reshape::Reshape(to.clone())),
            Layer::Dense(d) => Box::new(d.clone()),
            Layer::Activation(a) => Box::new(activation::Act(*a)),
            Layer::Softmax => Box::new(softmax::Softmax),
            Layer::Dropout(rate) => Box::new(dropout::Dropout(*rate)),
            Layer::BatchNorm(bn) => Box::new(batch_norm::BatchNormLayer(*bn)),
            Layer::LayerNorm(ln) => Box::new(layer_norm::LayerNormLayer(*ln)),
        }
    }

    /// The Keras-style kind name used in summaries and names.
    pub fn kind(&self) -> &'static str {
        self.def().kind()
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

/// The one shape all of a merge's inputs share, or an error listing them.
pub(crate) fn same_shapes(
    name: &str,
    inputs: &[Vec<usize>],
    at_least: usize,
) -> Result<Vec<usize>> {
    match inputs {
        [first, rest @ ..] if inputs.len() >= at_least && rest.iter().all(|s| s == first) => {
            Ok(first.clone())
        }
        _ if inputs.len() < at_least => Err(Error::shape(
            name,
            format!("needs at least {at_least} inputs, got {}", inputs.len()),
        )),
        _ => Err(Error::shape(
            name,
            format!("needs inputs of one shape, got {inputs:?}"),
        )),
    }
}

/// A merge's LayerDef::output_shape: merges take several inputs.
pub(crate) fn merge_needs_inputs(name: &str) -> Result<Vec<usize>> {
    Err(Error::shape(
        name,
        "is a merge: it needs at least two inputs (use it in a Graph)",
    ))
}

/// An image shape, or an error naming the layer that needs one.
pub(crate) fn image(name: &str, shape: &[usize]) -> Result<(usize, usize, usize)> {
    match *shape {
        [c, h, w] => Ok((c, h, w)),
        _ => Err(Error::shape(
            name,
            format!(
                "needs [channels, height, width] samples, got {shape:?}: start with Sequential::image"
            ),
        )),
    }
}

/// An initializer's check, its error naming the layer's key.
pub(crate) fn check_init(name: &str, which: &str, init: Init) -> Result<()> {
    init.check().map_err(|e| match e {
        Error::InvalidArgument { detail, .. } => Error::arg(format!("{name} {which}"), detail),
        other => other,
    })
}

/// A normalisation's gamma (`weight`, ones) and beta (`bias`, zeros) of `c` values.
pub(crate) fn affine_params(c: usize) -> Vec<ParamSpec> {
    vec![
        ParamSpec::new("weight", &[c], ParamInit::Fill(1.0)),
        ParamSpec::new("bias", &[c], ParamInit::Fill(0.0)),
    ]
}

/// gamma's value and gradient and beta's gradient, borrowed together (gamma comes first).
pub(crate) fn affine_grads(
    params: &mut [crate::nn::model::Param],
    gamma: usize,
    beta: usize,
) -> Result<(
    &crate::tensor::Tensor,
    &mut crate::tensor::Tensor,
    &mut crate::tensor::Tensor,
)> {
    if gamma >= beta || beta >= params.len() {
        return Err(Error::arg(
            "model",
            "a normalisation's beta stored before its gamma",
        ));
    }
    let (head, tail) = params.split_at_mut(beta);
    let gamma = &mut head[gamma];
    Ok((&gamma.value, &mut gamma.grad, &mut tail[0].grad))
}
