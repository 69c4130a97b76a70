//! The model file's schema: the TOML tables and keys, as serde reads and writes them,
//! and the names of losses, optimizers, metrics and initializers.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::nn::Init;
use crate::ops::loss::Loss;
use crate::optim::Rule;

/// A sequential model (and optionally its training setup) as a hand-writable TOML file;
/// a graph model declares `[[inputs]]`, `[[nodes]]` and `outputs` instead of `input` and
/// `[[layers]]` (see [`NodeSpec`]).
///
/// Every `[[layers]]` entry is one of: a dense layer (`dense = UNITS`, optionally with
/// the activation that follows it), a standalone `activation`, a `dropout` rate, an
/// image layer (`conv2d`, `max_pool`, `avg_pool`, `global_avg_pool`, `flatten`, or
/// `reshape = [1, 28, 28]` to give flat samples an image shape or any other), or a
/// normalization (`batch_norm = true` or `layer_norm = true`, optionally with an activation),
/// or multi-head attention over [T, D] samples (`multi_head_attention = HEADS`, with
/// `causal = false` by default; a graph node gives it a second input for cross-attention).
/// Each layer's file in [`crate::nn::layers`] declares its kind key and the keys it
/// takes ([`LayerSpec`]). Unknown keys, unknown names and impossible values are errors
/// that name the key and its line. A complete example, every optional key shown with its default where it
/// has one:
///
/// ```toml
/// input = 784                      # features per sample
///
/// [[layers]]
/// dense = 128                      # units
/// activation = "relu"              # applied after this layer (optional)
/// inputs = 784                     # checked against the previous width (optional)
/// use_bias = true
/// kernel_init = "glorot_uniform"   # zeros, ones, constant(V), random_uniform(LO, HI),
///                                  # random_normal(MEAN, STD), glorot_uniform,
///                                  # glorot_normal, he_uniform, he_normal, lecun_normal
/// bias_init = "zeros"
/// l1 = 0.0                         # penalties on the weight
/// l2 = 0.0
///
/// [[layers]]
/// dropout = 0.2                    # rate in [0, 1)
///
/// [[layers]]
/// batch_norm = true                # per feature (per channel of images)
/// momentum = 0.1                   # PyTorch's: running = (1 - m) * running + m * batch
/// eps = 1e-5                       # layer_norm = true takes eps too
///
/// [[layers]]
/// activation = "leaky_relu"        # relu, leaky_relu, sigmoid, tanh, gelu,
/// slope = 0.01                     # identity (or linear), softmax
///
/// [[layers]]
/// dense = 10
///
/// [training]
/// loss = "sparse_categorical_crossentropy"  # mse, mae, binary_crossentropy,
///                                  # categorical_crossentropy, sparse_categorical_crossentropy
/// # from_logits = true            # binary_crossentropy: the model outputs logits
/// optimizer = "adam"               # sgd, momentum, nesterov, adam, adamw, rmsprop, adagrad
/// lr = 0.001                       # default: 0.01 for the SGD family, 0.001 otherwise
/// betas = [0.9, 0.999]             # adam, adamw
/// eps = 1e-8                       # adam, adamw, rmsprop (1e-8), adagrad (1e-10)
/// amsgrad = false                  # adam
/// weight_decay = 0.0               # any optimizer (adamw: 0.01)
/// clip_norm = 1.0                  # clip the global gradient norm (optional)
/// # momentum = 0.9                 # momentum, nesterov (0.9), sgd, rmsprop (0)
/// # dampening = 0.0                # sgd family
/// # alpha = 0.99                   # rmsprop, with centered = false
/// # lr_decay = 0.0                 # adagrad, with initial_accumulator = 0.0
/// batch_size = 32
/// epochs = 10
/// metrics = ["accuracy"]           # accuracy, binary_accuracy, precision, recall, f1, mse, mae
/// seed = 42
///
/// [training.schedule]              # optional; name is constant, step, exponential or cosine
/// name = "cosine"
/// t_max = 10                       # cosine: epochs of the half period; eta_min = 0.0
/// warmup = 100                     # any: linear warmup over this many steps first
/// # step: step_size = N, gamma = 0.1; exponential: gamma = G
///
/// # A graph with several outputs gives each one its own table (Keras's loss, loss_weights
/// # and metrics dicts); loss, from_logits and metrics above are the defaults of the keys
/// # and outputs it leaves out. Targets are packed in the order of `outputs`.
/// # [training.outputs.NAME]       # NAME: one of the graph's outputs
/// # loss = "mse"                   # and from_logits, as above
/// # weight = 0.5                   # in the total loss: finite, >= 0 (default 1)
/// # metrics = ["mae"]
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Features per input sample (for images: channels * height * width, or left out).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub input: usize,
    /// Image samples: [channels, height, width], NCHW.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<[usize; 3]>,
    /// The layers in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerSpec>,
    /// A graph model's outputs, by node name (see [`NodeSpec`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// A graph model's named inputs (`[[inputs]]`), in place of `input`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputSpec>,
    /// A graph model's nodes (`[[nodes]]`), in place of `layers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeSpec>,
    /// How to train the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingSpec>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One `[[inputs]]` entry of a graph model file: a named input and its sample shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The input's name, which nodes list in their `inputs`.
    pub name: String,
    /// Its sample shape: `[features]` or `[channels, height, width]`.
    pub shape: Vec<usize>,
}

/// One `[[nodes]]` entry of a graph model file: a name, what it reads (`inputs`, by
/// name) and what it computes: one layer (the keys of a `[[layers]]` entry: a layer and
/// optionally the activation after it, as Keras's `Dense(4, activation="relu")`, whose
/// output is the node's), `shares = "NODE"` (that node's layer, activation and weights),
/// or a merge (`add = true`, `concatenate = true`, `multiply = true`).
///
/// ```toml
/// outputs = ["out"]
///
/// [[inputs]]
/// name = "x"
/// shape = [4]
///
/// [[nodes]]
/// name = "d1"                      # weights d1.weight, d1.bias
/// dense = 4
/// activation = "relu"              # optional: d1's output is after it
/// inputs = ["x"]
///
/// [[nodes]]
/// name = "res"
/// add = true                       # or concatenate = true, multiply = true
/// inputs = ["x", "d1"]
///
/// [[nodes]]
/// name = "d1_again"
/// shares = "d1"                    # d1's layer, activation and weights
/// inputs = ["res"]
///
/// [[nodes]]
/// name = "out"
/// dense = 3
/// inputs = ["d1_again"]
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeSpec {
    /// The node's name: its parameters are `{name}.weight`, `{name}.bias`.
    pub name: String,
    /// The inputs or nodes it reads, by name.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Applies the layer of this node, with its weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<String>,
    /// The elementwise sum of two or more inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<bool>,
    /// The inputs joined on the feature (or channel) axis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concatenate: Option<bool>,
    /// The elementwise product of two inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiply: Option<bool>,
    /// The layer's keys, as in a `[[layers]]` entry (unknown keys are refused there).
    #[serde(flatten)]
    pub layer: LayerSpec,
}

/// The node's own keys, read first; the rest must be a layer's (serde's `flatten` would
/// let unknown keys through).
impl<'de> Deserialize<'de> for NodeSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<NodeSpec, D::Error> {
        #[derive(Deserialize)]
        struct Keys {
            name: String,
            #[serde(default)]
            inputs: Vec<String>,
            shares: Option<String>,
            add: Option<bool>,
            concatenate: Option<bool>,
            multiply: Option<bool>,
        }
        let mut layer = toml::Table::deserialize(d)?;
        let mut own = toml::Table::new();
        for key in ["name", "inputs", "shares", "add", "concatenate", "multiply"] {
            if let Some(v) = layer.remove(key) {
                own.insert(key.into(), v);
            }
        }
        let keys: Keys = toml::Value::Table(own)
            .try_into()
            .map_err(serde::de::Error::custom)?;
        let layer: LayerSpec =
            toml::Value::Table(layer)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    serde::de::Error::custom(format!("node '{}': {}", keys.name, e.message()))
                })?;
        Ok(NodeSpec {
            name: keys.name,
            inputs: keys.inputs,
            shares: keys.shares,
            add: keys.add,
            concatenate: keys.concatenate,
            multiply: keys.multiply,
            layer,
        })
    }
}

/// One `[[layers]]` entry (or the layer keys of a `[[nodes]]` one): its keys as written.
///
/// The central schema names no layer's keys: each layer's file reads its own through
/// [`crate::nn::layers::FromEntry`] and writes them back in [`crate::nn::layers::LayerDef::entry`];
/// a key no layer of the entry takes is an error naming it and its line. Floats are kept
/// as the f32 they stand for (every layer's float keys are f32), so that a file read
/// back equals the file a model writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct LayerSpec(pub toml::Table);

impl<'de> Deserialize<'de> for LayerSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<LayerSpec, D::Error> {
        let mut table = toml::Table::deserialize(d)?;
        for (_, value) in table.iter_mut() {
            if let toml::Value::Float(v) = value {
                *v = f32_value(*v as f32);
            }
        }
        Ok(LayerSpec(table))
    }
}

/// A value a layer writes into its entry.
pub trait EntryValue {
    /// The TOML value.
    fn value(self) -> toml::Value;
}

impl EntryValue for usize {
    fn value(self) -> toml::Value {
        toml::Value::Integer(i64::try_from(self).unwrap_or(i64::MAX))
    }
}

impl EntryValue for f32 {
    fn value(self) -> toml::Value {
        toml::Value::Float(f32_value(self))
    }
}

impl EntryValue for bool {
    fn value(self) -> toml::Value {
        toml::Value::Boolean(self)
    }
}

impl EntryValue for &str {
    fn value(self) -> toml::Value {
        toml::Value::String(self.to_string())
    }
}

impl EntryValue for String {
    fn value(self) -> toml::Value {
        toml::Value::String(self)
    }
}

impl EntryValue for Vec<usize> {
    fn value(self) -> toml::Value {
        toml::Value::Array(self.into_iter().map(EntryValue::value).collect())
    }
}

/// The f64 an f32 prints as (0.2, not 0.20000000298023224), so files stay as written.
fn f32_value(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

impl LayerSpec {
    /// An entry with its kind key: `LayerSpec::new("dense", 8)`.
    pub fn new(key: &str, value: impl EntryValue) -> LayerSpec {
        LayerSpec::default().with(key, value)
    }

    /// With `key = value` added (or replaced).
    pub fn with(mut self, key: &str, value: impl EntryValue) -> LayerSpec {
        self.0.insert(key.to_string(), value.value());
        self
    }

    /// With `key = value` added where there is a value (defaults are left out).
    pub fn with_some<V: EntryValue>(self, key: &str, value: Option<V>) -> LayerSpec {
        match value {
            Some(v) => self.with(key, v),
            None => self,
        }
    }

    /// The value of `key`, if the entry has it.
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        self.0.get(key)
    }

    /// Whether the entry has no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The `[training]` section: loss, optimizer and its hyper-parameters, and fit settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSpec {
    /// Keras loss name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    /// binary_crossentropy: the model outputs logits (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_logits: Option<bool>,
    /// Optimizer name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<String>,
    /// Base learning rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f32>,
    /// Momentum of the SGD family and RMSprop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f32>,
    /// Dampening of the SGD family.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dampening: Option<f32>,
    /// Adam and AdamW moment decays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub betas: Option<[f32; 2]>,
    /// Denominator epsilon of Adam, AdamW, RMSprop and Adagrad.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f32>,
    /// Adam: use the running maximum of the second moment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amsgrad: Option<bool>,
    /// RMSprop smoothing constant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f32>,
    /// RMSprop: normalise by the estimated variance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub centered: Option<bool>,
    /// Adagrad learning-rate decay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_decay: Option<f32>,
    /// Adagrad's starting sum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_accumulator: Option<f32>,
    /// Weight decay (decoupled for AdamW).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f32>,
    /// Clip gradients to this global L2 norm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_norm: Option<f32>,
    /// Rows per optimizer step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Passes over the data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Metric names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<String>>,
    /// Seed of initialisation, shuffling and dropout.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "seed_out",
        deserialize_with = "seed_in"
    )]
    pub seed: Option<u64>,
    /// Learning-rate schedule (default constant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// A graph model's outputs by name (`[training.outputs.NAME]`): each one's loss,
    /// weight and metrics; `loss`, `from_logits` and `metrics` above are their defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<BTreeMap<String, OutputSpec>>,
}

/// One `[training.outputs.NAME]` table: the loss, weight and metrics of output NAME
/// (Keras's `compile(loss={..}, loss_weights={..}, metrics={..})`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputSpec {
    /// Keras loss name (default: the section's `loss`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    /// binary_crossentropy: the output is logits (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_logits: Option<bool>,
    /// Its weight in the total loss, finite and >= 0 (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f32>,
    /// Metric names (default: the section's `metrics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<String>>,
}

/// The `[training.schedule]` table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// constant, step, exponential or cosine.
    pub name: String,
    /// step: epochs between decays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_size: Option<usize>,
    /// step (default 0.1), exponential: decay factor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f32>,
    /// cosine: epochs of the half period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t_max: Option<usize>,
    /// cosine: final rate (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_min: Option<f32>,
    /// Linear warmup over this many optimizer steps before the schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<usize>,
}

/// TOML integers stop at i64::MAX: larger seeds travel as decimal strings.
fn seed_out<S: Serializer>(seed: &Option<u64>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match seed.map(i64::try_from) {
        Some(Ok(v)) => s.serialize_i64(v),
        Some(Err(_)) => s.serialize_str(&seed.unwrap_or_default().to_string()),
        None => s.serialize_none(),
    }
}

fn seed_in<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seed {
        Int(u64),
        Text(String),
    }
    match Seed::deserialize(d)? {
        Seed::Int(v) => Ok(Some(v)),
        Seed::Text(t) => t.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("seed '{t}' is not a non-negative integer"))
        }),
    }
}

/// Parses an initializer: a Keras name, or constant(V), random_uniform(LO, HI), random_normal(MEAN, STD).
pub(crate) fn parse_init(text: &str) -> Option<Init> {
    let text = text.trim();
    let Some((name, rest)) = text.split_once('(') else {
        return Init::from_name(text);
    };
    let args: Vec<f32> = rest
        .strip_suffix(')')?
        .split(',')
        .map(|a| a.trim().parse::<f32>().ok().filter(|v| v.is_finite()))
        .collect::<Option<_>>()?;
    match (name.trim().to_ascii_lowercase().as_str(), args.as_slice()) {
        ("constant", [v]) => Some(Init::Constant(*v)),
        ("random_uniform" | "uniform", [lo, hi]) if lo < hi => Some(Init::Uniform(*lo, *hi)),
        ("random_normal" | "normal", [mean, std]) if *std >= 0.0 => Some(Init::Normal(*mean, *std)),
        _ => None,
    }
}

/// The name `parse_init` reads back as `init`.
pub(crate) fn init_name(init: Init) -> String {
    match init {
        Init::Zeros => "zeros".into(),
        Init::Constant(v) if v == 1.0 && v.is_sign_positive() => "ones".into(),
        Init::Constant(v) => format!("constant({v})"),
        Init::Uniform(lo, hi) => format!("random_uniform({lo}, {hi})"),
        Init::Normal(mean, std) => format!("random_normal({mean}, {std})"),
        Init::GlorotUniform => "glorot_uniform".into(),
        Init::GlorotNormal => "glorot_normal".into(),
        Init::HeUniform => "he_uniform".into(),
        Init::HeNormal => "he_normal".into(),
        Init::LecunNormal => "lecun_normal".into(),
    }
}

pub(crate) const LOSSES: &str =
    "mse, mae, binary_crossentropy, categorical_crossentropy, sparse_categorical_crossentropy";
pub(crate) const OPTIMIZERS: &str = "sgd, momentum, nesterov, adam, adamw, rmsprop, adagrad";
pub(crate) const METRICS: &str = "accuracy, binary_accuracy, precision, recall, f1, mse, mae";
pub(crate) const SCHEDULES: &str = "constant, step, exponential, cosine";
pub(crate) const INITS: &str =
    "zeros, ones, constant(V), random_uniform(LO, HI), random_normal(MEAN, STD), \
     glorot_uniform, glorot_normal, he_uniform, he_normal, lecun_normal";

pub(crate) fn parse_loss(name: &str, from_logits: bool) -> Option<Loss> {
    Some(match name {
        "mse" | "mean_squared_error" => Loss::Mse,
        "mae" | "mean_absolute_error" => Loss::Mae,
        "binary_crossentropy" => Loss::BinaryCrossEntropy { from_logits },
        "categorical_crossentropy" => Loss::CategoricalCrossEntropy,
        "sparse_categorical_crossentropy" => Loss::SparseCategoricalCrossEntropy,
        _ => return None,
    })
}

/// Keras's name of a loss and whether it reads logits.
pub(crate) fn loss_name(loss: Loss) -> (&'static str, bool) {
    match loss {
        Loss::Mse => ("mse", false),
        Loss::Mae => ("mae", false),
        Loss::BinaryCrossEntropy { from_logits } => ("binary_crossentropy", from_logits),
        Loss::CategoricalCrossEntropy => ("categorical_crossentropy", false),
        Loss::SparseCategoricalCrossEntropy => ("sparse_categorical_crossentropy", false),
    }
}

/// The optimizer name that `TrainingSpec::optimizer` maps back to `rule`.
pub(crate) fn rule_name(rule: &Rule) -> &'static str {
    match *rule {
        Rule::Sgd { nesterov: true, .. } => "nesterov",
        Rule::Sgd { momentum, .. } if momentum != 0.0 => "momentum",
        Rule::Sgd { .. } => "sgd",
        Rule::Adam { .. } => "adam",
        Rule::AdamW { .. } => "adamw",
        Rule::RmsProp { .. } => "rmsprop",
        Rule::Adagrad { .. } => "adagrad",
    }
}
