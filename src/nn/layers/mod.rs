//! One file per layer. Each holds everything about its layer: its builder and options,
//! its output-shape rule (with typed errors), its parameters (PyTorch's names, their
//! shapes and initializers), the [`Step`] it lowers to (forward and backward as `ops`
//! calls, shared by the CPU reference and the GPU), its model-file entry, its ONNX nodes
//! and its name in summaries. [`Layer`] is the closed set users build models from; [`Layer::def`] is the
//! registry that maps each variant to its [`LayerDef`].
//!
//! Adding a layer: a file here with a type implementing [`LayerDef`], [`FromEntry`] and a
//! [`Step`], its line in the `layers!` registry below (which declares the file's module,
//! the [`Layer`] variant, its arm in [`Layer::def`] and its model-file kind), and its
//! test.

pub mod add;
pub mod concatenate;
pub mod multiply;
pub mod recurrent;
pub mod step;

use std::fmt::Debug;
use std::sync::Arc;

pub use conv2d::Conv;
pub use dense::Dense;
pub use embedding::Embedding;
pub use max_pool2d::Pool;
pub use multi_head_attention::MultiHeadAttention;
pub use recurrent::Recurrent;
pub use step::{Backward, Forward, Inputs, Pass, Pattern, Scratch, Step};

use crate::error::{Error, Result};
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::nn::init::Init;
use crate::nn::onnx::Emit;
use crate::ops::batch_norm::BatchNorm;
use crate::ops::layer_norm::LayerNorm;
use crate::ops::Activation;

/// Declares the layers: for each, its `Layer` variant (with what it holds), and the file
/// and type implementing [`LayerDef`] and [`FromEntry`] for it. It writes the `mod`
/// lines, the [`Layer`] enum, [`Layer::def`] and the model-file table [`KINDS`].
macro_rules! layers {
    ($($(#[$doc:meta])* $variant:ident $(($held:ty))? => $file:ident::$def:ident,)*) => {
        $(pub mod $file;)*

        /// One layer of a model: the closed set users build models from, one variant
        /// per registered layer.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Layer {
            $($(#[$doc])* $variant $(($held))?,)*
        }

        impl Layer {
            /// The registry: the [`LayerDef`] of each variant.
            pub fn def(&self) -> Box<dyn LayerDef> {
                match self {
                    $(layers!(@pat held $variant $($held)?) =>
                        Box::new(layers!(@def held $file::$def $($held)?)),)*
                }
            }

            /// The variant's name ("Dense").
            pub fn variant(&self) -> &'static str {
                match self {
                    $(layers!(@pat _held $variant $($held)?) => stringify!($variant),)*
                }
            }
        }

        /// The variants' names, in registration order.
        pub const VARIANTS: &[&str] = &[$(stringify!($variant)),*];

        /// The model-file form of each registered layer, in registration order.
        pub(crate) static KINDS: &[Kind] = &[$(Kind::of::<$file::$def>()),*];
    };
    (@pat $x:ident $variant:ident $held:ty) => { Layer::$variant($x) };
    (@pat $x:ident $variant:ident) => { Layer::$variant };
    (@def $x:ident $file:ident::$def:ident $held:ty) => { $file::$def::from($x.clone()) };
    (@def $x:ident $file:ident::$def:ident) => { $file::$def };
}

// The registry: one line per layer. Adding a layer is its file, its line here and its test.
layers! {
    /// 2-D convolution over [channels, height, width] samples.
    Conv2d(Conv) => conv2d::Conv,
    /// Max pooling.
    MaxPool2d(Pool) => max_pool2d::MaxPool2d,
    /// Average pooling (padding counted in the divisor, as PyTorch's default).
    AvgPool2d(Pool) => avg_pool2d::AvgPool2d,
    /// Mean over each channel's plane: [c, h, w] -> [c].
    GlobalAvgPool => global_avg_pool::GlobalAvgPool,
    /// [c, h, w] -> [c * h * w].
    Flatten => flatten::Flatten,
    /// Any sample shape to another with as many values (e.g. [784] -> [1, 28, 28]).
    Reshape(Vec<usize>) => reshape::Reshape,
    /// Fully connected.
    Dense(Dense) => dense::Dense,
    /// A pointwise activation.
    Activation(Activation) => activation::Act,
    /// Softmax over the last axis (each sample's row; each position of a sequence).
    Softmax => softmax::Softmax,
    /// Inverted dropout with this rate (training only).
    Dropout(f32) => dropout::Dropout,
    /// Batch normalisation per feature of [features] samples (BatchNorm1d) or per channel
    /// of [c, h, w] ones (BatchNorm2d); momentum follows PyTorch (0.1 = weight of the batch).
    BatchNorm(BatchNorm) => batch_norm::BatchNormLayer,
    /// Layer normalisation over the last axis: the features of each [features] sample,
    /// or of each position of [positions, features] sequences.
    LayerNorm(LayerNorm) => layer_norm::LayerNormLayer,
    /// Token ids [T] -> [T, dim] rows of a learned table (nn.Embedding).
    Embedding(Embedding) => embedding::Embedding,
    /// Learned positions added to [T, dim] sequences of at most this many positions.
    PositionalEmbedding(usize) => positional_embedding::PositionalEmbedding,
    /// Multi-head attention over [T, D] samples: self-attention, or cross-attention to a
    /// second input (PyTorch's nn.MultiheadAttention).
    MultiHeadAttention(MultiHeadAttention) => multi_head_attention::MultiHeadAttention,
    /// LSTM over [steps, features] samples (PyTorch's gates and weight names).
    Lstm(Recurrent) => lstm::Lstm,
    /// GRU over [steps, features] samples (PyTorch's gates and weight names).
    Gru(Recurrent) => gru::Gru,
}

/// The key of the activation that may follow a layer in its entry (or stand alone).
pub(crate) const ACTIVATION_KEY: &str = "activation";

/// A layer's model-file form, read back: its kind key, the other keys its entry takes,
/// and the layer an entry with them describes. [`LayerDef::entry`] writes the same keys.
pub(crate) trait FromEntry {
    /// The key that makes an entry this layer (`dense = 8`), or `None` for a layer that
    /// another's entry stands for (softmax is `activation = "softmax"`).
    const KEY: Option<&'static str>;
    /// The other keys its entry takes.
    const KEYS: &'static [&'static str] = &[];
    /// Whether an `activation` may share its entry (a separate layer after it).
    const ACTIVATION_AFTER: bool = true;
    /// Whether a model file writes a following activation into its entry, as Keras does
    /// for layers with an `activation` argument.
    const JOINS_ACTIVATION: bool = false;
    /// The layer an entry naming [`FromEntry::KEY`] describes; errors name the key.
    fn from_entry(entry: &Entry<'_>) -> std::result::Result<Layer, Invalid>;
}

/// A registered layer's model-file form, as the dispatch over entries needs it.
#[derive(Debug)]
pub(crate) struct Kind {
    /// See [`FromEntry::KEY`].
    pub key: Option<&'static str>,
    /// See [`FromEntry::KEYS`].
    pub keys: &'static [&'static str],
    /// See [`FromEntry::ACTIVATION_AFTER`].
    pub activation_after: bool,
    /// See [`FromEntry::JOINS_ACTIVATION`].
    pub joins_activation: bool,
    /// See [`FromEntry::from_entry`].
    pub parse: fn(&Entry<'_>) -> std::result::Result<Layer, Invalid>,
}

impl Kind {
    const fn of<T: FromEntry>() -> Kind {
        Kind {
            key: T::KEY,
            keys: T::KEYS,
            activation_after: T::ACTIVATION_AFTER,
            joins_activation: T::JOINS_ACTIVATION,
            parse: T::from_entry,
        }
    }

    /// The layer kind of a written entry: its kind key other than an activation riding
    /// along, else the activation's.
    pub(crate) fn of_entry(entry: &LayerSpec) -> Option<&'static Kind> {
        let named = |k: &&Kind| k.key.is_some_and(|key| entry.get(key).is_some());
        let layer = KINDS
            .iter()
            .filter(named)
            .find(|k| k.key != Some(ACTIVATION_KEY));
        layer.or_else(|| KINDS.iter().find(named))
    }
}

/// A layer type: what the builder, the planner and the model files need of it.
///
/// Shapes are of one sample ([features], [positions, features] or [channels, height,
/// width]); `name` in errors is the layer's place in the model ("layer 3 (dense)").
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
    /// The most inputs a layer node may take (attention: keys and values from a second).
    fn max_inputs(&self) -> usize {
        1
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
    /// The layer at inference as ONNX (opset 17) nodes that write `cx.output`.
    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        Err(Error::arg(
            "onnx export",
            format!("layer '{}' ({}) has no ONNX form", cx.name, self.kind()),
        ))
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

impl Layer {
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
