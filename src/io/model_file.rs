//! Model files: a sequential model and, optionally, how to train it, in TOML.

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::nn::layer::{Conv, Pool};
use crate::nn::{Dense, Init, Layer, Sequential};
use crate::ops::batch_norm::BatchNorm;
use crate::ops::layer_norm::LayerNorm;
use crate::ops::Activation;
use crate::optim::{Optimizer, Rule, Schedule};
use crate::train::{Loss, Metric, Trainer};

/// A sequential model (and optionally its training setup) as a hand-writable TOML file.
///
/// Every `[[layers]]` entry is one of: a dense layer (`dense = UNITS`, optionally with
/// the activation that follows it), a standalone `activation`, a `dropout` rate, an
/// image layer (`conv2d`, `max_pool`, `avg_pool`, `global_avg_pool`, `flatten`, or
/// `reshape = [1, 28, 28]` to give flat samples an image shape or any other), or a
/// normalization (`batch_norm = true` or `layer_norm = true`, optionally with an activation).
/// Unknown keys, unknown names and impossible values are errors that name the key and
/// its line. A complete example, every optional key shown with its default where it
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
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Features per input sample (for images: channels * height * width, or left out).
    #[serde(default)]
    pub input: usize,
    /// Image samples: [channels, height, width], NCHW.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<[usize; 3]>,
    /// The layers in order.
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
    /// How to train the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingSpec>,
}

/// One `[[layers]]` entry: a dense layer (with an optional activation), an activation, or dropout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayerSpec {
    /// A dense layer of this many units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dense: Option<usize>,
    /// An activation: after the dense layer of this entry, or alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
    /// The negative slope of leaky_relu (default 0.01).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slope: Option<f32>,
    /// A dropout layer of this rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f32>,
    /// Dense: the declared input width.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<usize>,
    /// Dense: whether the layer has a bias (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_bias: Option<bool>,
    /// Dense: the weight initializer (default glorot_uniform).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_init: Option<String>,
    /// Dense: the bias initializer (default zeros).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bias_init: Option<String>,
    /// Dense: L1 penalty on the weight (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l1: Option<f32>,
    /// Dense: L2 penalty on the weight (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l2: Option<f32>,
    /// A 2-D convolution with this many filters (with `kernel`, `stride`, `padding`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv2d: Option<usize>,
    /// Conv2d: kernel size (default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<usize>,
    /// Conv2d: stride (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stride: Option<usize>,
    /// Conv2d: "same", "valid" (default) or a number of zeros on each side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub padding: Option<Padding>,
    /// Max pooling with this window (and stride).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pool: Option<usize>,
    /// Average pooling with this window (and stride).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avg_pool: Option<usize>,
    /// Global average pooling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_avg_pool: Option<bool>,
    /// Flatten [c, h, w] samples for the dense layers after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flatten: Option<bool>,
    /// Reshape each sample, e.g. [1, 28, 28] for flat pixels going into a conv2d.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reshape: Option<Vec<usize>>,
    /// Batch normalisation per feature, or per channel of images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_norm: Option<bool>,
    /// Layer normalisation over each sample's features.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_norm: Option<bool>,
    /// Batch norm: weight of each batch in the running statistics, as PyTorch (default 0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f32>,
    /// Batch and layer norm: added to the variance (default 1e-5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f32>,
}

/// Conv2d padding: a Keras name or a size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Padding {
    /// "same" or "valid".
    Name(String),
    /// Zeros on each side.
    Size(usize),
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

/// One step of a path into the file, for messages and line look-ups.
#[derive(Clone, Copy, Debug)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A value that is well-formed TOML but impossible: where, and why.
struct Invalid {
    path: Vec<Seg>,
    detail: String,
}

fn invalid(path: &[Seg], detail: impl Into<String>) -> Invalid {
    Invalid {
        path: path.to_vec(),
        detail: detail.into(),
    }
}

fn path_text(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out += k,
            Seg::Key(k) => {
                out.push('.');
                out += k;
            }
            Seg::Index(i) => out += &format!("[{i}]"),
        }
    }
    out
}

/// The 1-based line of the value at `path` in `text` (or of its nearest present parent).
fn line_of(text: &str, path: &[Seg]) -> Option<usize> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut span = None;
    let mut value: Option<&toml::Spanned<toml::de::DeValue>> = None;
    for seg in path {
        let next = match (seg, value) {
            (Seg::Key(k), None) => root
                .get_ref()
                .iter()
                .find(|(key, _)| key.get_ref() == k)
                .map(|(_, v)| v),
            (Seg::Key(k), Some(v)) => v.get_ref().get(*k),
            (Seg::Index(i), Some(v)) => v.get_ref().get(*i),
            (Seg::Index(_), None) => None,
        };
        match next {
            Some(v) => {
                span = Some(v.span());
                value = Some(v);
            }
            None => break,
        }
    }
    Some(text.get(..span?.start)?.matches('\n').count() + 1)
}

fn check(
    ok: bool,
    path: &[Seg],
    detail: impl FnOnce() -> String,
) -> std::result::Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(invalid(path, detail()))
    }
}

/// Checks an optional float against a predicate described as `what`.
fn check_f32(
    value: Option<f32>,
    path: &[Seg],
    ok: impl Fn(f32) -> bool,
    what: &str,
) -> std::result::Result<(), Invalid> {
    match value {
        Some(v) => check(ok(v), path, || format!("{v} is not {what}")),
        None => Ok(()),
    }
}

fn join<T>(base: &[Seg], tail: T) -> Vec<Seg>
where
    T: IntoIterator<Item = Seg>,
{
    base.iter().copied().chain(tail).collect()
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

const ACTIVATIONS: &str = "relu, leaky_relu, sigmoid, tanh, gelu, identity, linear, softmax";
const LOSSES: &str =
    "mse, mae, binary_crossentropy, categorical_crossentropy, sparse_categorical_crossentropy";
const OPTIMIZERS: &str = "sgd, momentum, nesterov, adam, adamw, rmsprop, adagrad";
const METRICS: &str = "accuracy, binary_accuracy, precision, recall, f1, mse, mae";
const SCHEDULES: &str = "constant, step, exponential, cosine";
const INITS: &str = "zeros, ones, constant(V), random_uniform(LO, HI), random_normal(MEAN, STD), \
     glorot_uniform, glorot_normal, he_uniform, he_normal, lecun_normal";

/// An activation layer by name: `None` for softmax (a layer of its own kind).
fn parse_activation(name: &str, slope: Option<f32>) -> Option<Layer> {
    Some(match name {
        "relu" => Layer::Activation(Activation::Relu),
        "leaky_relu" => Layer::Activation(Activation::LeakyRelu(slope.unwrap_or(0.01))),
        "sigmoid" => Layer::Activation(Activation::Sigmoid),
        "tanh" => Layer::Activation(Activation::Tanh),
        "gelu" => Layer::Activation(Activation::Gelu),
        "identity" | "linear" => Layer::Activation(Activation::Identity),
        "softmax" => Layer::Softmax,
        _ => return None,
    })
}

fn parse_loss(name: &str, from_logits: bool) -> Option<Loss> {
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

impl ModelFile {
    /// Parses and validates a model file; errors name the key and its line.
    pub fn parse(text: &str) -> Result<ModelFile> {
        Self::parse_named(text, "model file")
    }

    /// Reads and parses a model file.
    pub fn load(path: impl AsRef<Path>) -> Result<ModelFile> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse_named(&text, &format!("{} (model file)", path.display()))
    }

    pub(crate) fn parse_named(text: &str, what: &str) -> Result<ModelFile> {
        let file: ModelFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end();
            // The parser's messages name the value, not the key: quote the line too.
            let line = e.span().and_then(|s| {
                let start = text.get(..s.start)?;
                let number = start.matches('\n').count() + 1;
                let source = text.lines().nth(number - 1)?.trim();
                Some(format!("line {number} (`{source}`): "))
            });
            Error::format(what, format!("{}{message}", line.unwrap_or_default()))
        })?;
        file.validate().map_err(|bad| {
            let at = match line_of(text, &bad.path) {
                Some(line) => format!("line {line}: "),
                None => String::new(),
            };
            Error::format(
                what,
                format!("{at}{}: {}", path_text(&bad.path), bad.detail),
            )
        })?;
        Ok(file)
    }

    /// The TOML text of the file; `parse` gives back an equal `ModelFile`.
    // Only maps with non-string keys fail to serialize, and these types have none.
    #[allow(clippy::expect_used)]
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a ModelFile always serializes to TOML")
    }

    /// Checks every value; `Err` names the field.
    fn validate(&self) -> std::result::Result<(), Invalid> {
        self.layer_list().map(|_| ())?;
        if let Some(t) = &self.training {
            t.validate(&[Seg::Key("training")])?;
        }
        Ok(())
    }

    /// The layers this file describes, validated.
    fn layer_list(&self) -> std::result::Result<Vec<Layer>, Invalid> {
        let input = self.input_width();
        check(input > 0, &[Seg::Key("input")], || {
            "must be at least 1 (or give image = [channels, height, width])".into()
        })?;
        if let Some(img) = self.image {
            check(
                self.input == 0 || self.input == img.iter().product::<usize>(),
                &[Seg::Key("input")],
                || {
                    format!(
                        "{} is not channels * height * width of image = {img:?}",
                        self.input
                    )
                },
            )?;
        }
        let mut width = input;
        let mut out = Vec::new();
        for (i, spec) in self.layers.iter().enumerate() {
            let at = [Seg::Key("layers"), Seg::Index(i)];
            let field = |name: &'static str| join(&at, [Seg::Key(name)]);
            if let Some(layer) = norm_layer(spec, &field)? {
                out.push(layer);
                if let Some(name) = &spec.activation {
                    out.push(known_activation(name, spec.slope, &field)?);
                }
                // Normalisations keep the width.
                continue;
            }
            check(spec.momentum.is_none(), &field("momentum"), || {
                "only batch_norm layers take this key".into()
            })?;
            check(spec.eps.is_none(), &field("eps"), || {
                "only batch_norm and layer_norm layers take this key".into()
            })?;
            if let Some(layer) = image_layer(spec, &field)? {
                out.push(layer);
                if let Some(name) = &spec.activation {
                    let act = parse_activation(name, spec.slope).ok_or_else(|| {
                        invalid(
                            &field("activation"),
                            format!("unknown activation '{name}' (known: {ACTIVATIONS})"),
                        )
                    })?;
                    out.push(act);
                }
                // Widths after image layers are checked when the model is built.
                width = 0;
                continue;
            }
            match (spec.dense, spec.dropout) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        &field("dropout"),
                        "a layer is dense or dropout, not both: give dropout its own [[layers]]",
                    ))
                }
                (None, None) if spec.activation.is_none() => {
                    return Err(invalid(
                        &at,
                        "a layer needs one of dense = UNITS, activation = NAME or dropout = RATE",
                    ))
                }
                _ => {}
            }
            if spec.dense.is_none() {
                let dense_only = [
                    ("inputs", spec.inputs.is_some()),
                    ("use_bias", spec.use_bias.is_some()),
                    ("kernel_init", spec.kernel_init.is_some()),
                    ("bias_init", spec.bias_init.is_some()),
                    ("l1", spec.l1.is_some()),
                    ("l2", spec.l2.is_some()),
                ];
                if let Some((name, _)) = dense_only.iter().find(|(_, set)| *set) {
                    return Err(invalid(&field(name), "only dense layers take this key"));
                }
            }
            if let Some(rate) = spec.dropout {
                check(spec.activation.is_none(), &field("activation"), || {
                    "a dropout layer has no activation: give it its own [[layers]]".into()
                })?;
                check((0.0..1.0).contains(&rate), &field("dropout"), || {
                    format!("rate {rate} is not in [0, 1)")
                })?;
                out.push(Layer::Dropout(rate));
            }
            if let Some(units) = spec.dense {
                check(units > 0, &field("dense"), || {
                    "must be at least 1 unit".into()
                })?;
                if let Some(inputs) = spec.inputs.filter(|_| width > 0) {
                    check(inputs == width, &field("inputs"), || {
                        format!("declares {inputs} inputs but the previous layer gives {width}")
                    })?;
                }
                let init = |name: &'static str, value: &Option<String>, default: Init| match value {
                    None => Ok(default),
                    Some(text) => parse_init(text).ok_or_else(|| {
                        invalid(
                            &field(name),
                            format!("unknown initializer '{text}' (known: {INITS})"),
                        )
                    }),
                };
                let penalty = |v: f32| v.is_finite() && v >= 0.0;
                check_f32(spec.l1, &field("l1"), penalty, "a finite value >= 0")?;
                check_f32(spec.l2, &field("l2"), penalty, "a finite value >= 0")?;
                out.push(Layer::Dense(Dense {
                    inputs: spec.inputs,
                    units,
                    use_bias: spec.use_bias.unwrap_or(true),
                    kernel_init: init("kernel_init", &spec.kernel_init, Init::GlorotUniform)?,
                    bias_init: init("bias_init", &spec.bias_init, Init::Zeros)?,
                    l1: spec.l1.unwrap_or(0.0),
                    l2: spec.l2.unwrap_or(0.0),
                }));
                width = units;
            }
            match &spec.activation {
                Some(name) => {
                    let layer = parse_activation(name, spec.slope).ok_or_else(|| {
                        invalid(
                            &field("activation"),
                            format!("unknown activation '{name}' (known: {ACTIVATIONS})"),
                        )
                    })?;
                    if spec.slope.is_some() {
                        check(name == "leaky_relu", &field("slope"), || {
                            "only leaky_relu takes a slope".into()
                        })?;
                        check_f32(spec.slope, &field("slope"), f32::is_finite, "finite")?;
                    }
                    out.push(layer);
                }
                None => check(spec.slope.is_none(), &field("slope"), || {
                    "a slope needs activation = \"leaky_relu\"".into()
                })?,
            }
        }
        Ok(out)
    }

    /// The model this file describes.
    pub fn to_sequential(&self) -> Result<Sequential> {
        let layers = self.layer_list().map_err(|bad| {
            Error::format(
                "model file",
                format!("{}: {}", path_text(&bad.path), bad.detail),
            )
        })?;
        Ok(Sequential {
            input: self.input_width(),
            layers,
            image: self.image.map(|[c, h, w]| (c, h, w)),
        })
    }

    /// The file describing `model` (no training section); defaults are left out.
    pub fn from_sequential(model: &Sequential) -> ModelFile {
        let mut layers: Vec<LayerSpec> = Vec::new();
        for layer in &model.layers {
            let (name, slope) = match layer {
                Layer::Dense(d) => {
                    layers.push(LayerSpec {
                        dense: Some(d.units),
                        inputs: d.inputs,
                        use_bias: (!d.use_bias).then_some(false),
                        kernel_init: (d.kernel_init != Init::GlorotUniform)
                            .then(|| init_name(d.kernel_init)),
                        bias_init: (d.bias_init != Init::Zeros).then(|| init_name(d.bias_init)),
                        l1: (d.l1 != 0.0).then_some(d.l1),
                        l2: (d.l2 != 0.0).then_some(d.l2),
                        ..LayerSpec::default()
                    });
                    continue;
                }
                Layer::Dropout(rate) => {
                    layers.push(LayerSpec {
                        dropout: Some(*rate),
                        ..LayerSpec::default()
                    });
                    continue;
                }
                Layer::Softmax => ("softmax", None),
                Layer::Conv2d(c) => {
                    let padding = match c.padding {
                        None => Padding::Name("same".into()),
                        Some((0, 0)) => Padding::Name("valid".into()),
                        Some((p, _)) => Padding::Size(p),
                    };
                    layers.push(LayerSpec {
                        conv2d: Some(c.filters),
                        kernel: Some(c.kernel.0),
                        stride: (c.stride.0 != 1).then_some(c.stride.0),
                        padding: Some(padding),
                        ..LayerSpec::default()
                    });
                    continue;
                }
                Layer::MaxPool2d(p) | Layer::AvgPool2d(p) => {
                    let max = matches!(layer, Layer::MaxPool2d(_));
                    layers.push(LayerSpec {
                        max_pool: max.then_some(p.kernel.0),
                        avg_pool: (!max).then_some(p.kernel.0),
                        ..LayerSpec::default()
                    });
                    continue;
                }
                Layer::Reshape(to) => {
                    layers.push(LayerSpec {
                        reshape: Some(to.clone()),
                        ..LayerSpec::default()
                    });
                    continue;
                }
                Layer::GlobalAvgPool | Layer::Flatten => {
                    let gap = matches!(layer, Layer::GlobalAvgPool);
                    layers.push(LayerSpec {
                        global_avg_pool: gap.then_some(true),
                        flatten: (!gap).then_some(true),
                        ..LayerSpec::default()
                    });
                    continue;
                }
                Layer::BatchNorm(bn) => {
                    let default = BatchNorm::default();
                    layers.push(LayerSpec {
                        batch_norm: Some(true),
                        momentum: (bn.momentum != default.momentum).then_some(bn.momentum),
                        eps: (bn.eps != default.eps).then_some(bn.eps),
                        ..LayerSpec::default()
                    });
                    continue;
                }
                Layer::LayerNorm(ln) => {
                    layers.push(LayerSpec {
                        layer_norm: Some(true),
                        eps: (ln.eps != LayerNorm::default().eps).then_some(ln.eps),
                        ..LayerSpec::default()
                    });
                    continue;
                }
                Layer::Activation(Activation::LeakyRelu(s)) => ("leaky_relu", Some(*s)),
                Layer::Activation(a) => (layer_kind_name(*a), None),
            };
            // An activation right after a dense or conv layer joins its entry, as Keras writes it.
            match layers.last_mut() {
                Some(last)
                    if (last.dense.is_some() || last.conv2d.is_some())
                        && last.activation.is_none() =>
                {
                    last.activation = Some(name.into());
                    last.slope = slope;
                }
                _ => layers.push(LayerSpec {
                    activation: Some(name.into()),
                    slope,
                    ..LayerSpec::default()
                }),
            }
        }
        ModelFile {
            input: model.input,
            image: model.image.map(|(c, h, w)| [c, h, w]),
            layers,
            training: None,
        }
    }

    /// The file describing a trainer's model, loss, optimizer, metrics and seed.
    ///
    /// Fails only for an optimizer this format cannot express (a warmup inside a warmup).
    pub fn from_trainer(trainer: &Trainer) -> Result<ModelFile> {
        let mut file = ModelFile::from_sequential(trainer.model.spec());
        let mut training = TrainingSpec::from_optimizer(trainer.optimizer())?;
        let (loss, from_logits) = loss_name(trainer.loss());
        training.loss = Some(loss.into());
        training.from_logits = from_logits.then_some(true);
        training.metrics = Some(
            trainer
                .metrics()
                .iter()
                .map(|m| m.name().to_string())
                .collect(),
        );
        training.seed = Some(trainer.model.seed);
        file.training = Some(training);
        Ok(file)
    }

    /// The loss of the `[training]` section.
    pub fn loss(&self) -> Result<Loss> {
        self.training_section()?.loss()
    }

    /// The optimizer of the `[training]` section.
    pub fn optimizer(&self) -> Result<Optimizer> {
        self.training_section()?.optimizer()
    }

    /// The metrics of the `[training]` section (none when absent).
    pub fn metrics(&self) -> Result<Vec<Metric>> {
        self.training_section()?.metric_list()
    }

    fn training_section(&self) -> Result<&TrainingSpec> {
        self.training
            .as_ref()
            .ok_or_else(|| Error::format("model file", "has no [training] section"))
    }
}

/// The model-file name of a non-leaky activation.
fn layer_kind_name(act: Activation) -> &'static str {
    Layer::Activation(act).kind()
}

/// Where each optimizer's keys apply.
fn applies(key: &str, optimizer: &str) -> bool {
    let sgd = matches!(optimizer, "sgd" | "momentum" | "nesterov");
    match key {
        "momentum" => sgd || optimizer == "rmsprop",
        "dampening" => sgd,
        "betas" => matches!(optimizer, "adam" | "adamw"),
        "eps" => !sgd,
        "amsgrad" => optimizer == "adam",
        "alpha" | "centered" => optimizer == "rmsprop",
        "lr_decay" | "initial_accumulator" => optimizer == "adagrad",
        _ => true,
    }
}

impl TrainingSpec {
    /// The section describing `opt`: every hyper-parameter written out, so it reads back exactly.
    pub fn from_optimizer(opt: &Optimizer) -> Result<TrainingSpec> {
        let mut t = TrainingSpec {
            optimizer: Some(rule_name(&opt.rule).into()),
            lr: Some(opt.lr),
            weight_decay: Some(opt.weight_decay),
            clip_norm: opt.clip_norm,
            schedule: match opt.schedule {
                Schedule::Constant => None,
                ref s => Some(ScheduleSpec::from_schedule(s)?),
            },
            ..TrainingSpec::default()
        };
        match opt.rule {
            Rule::Sgd {
                momentum,
                dampening,
                ..
            } => {
                t.momentum = (momentum != 0.0).then_some(momentum);
                t.dampening = (dampening != 0.0).then_some(dampening);
            }
            Rule::Adam {
                beta1,
                beta2,
                eps,
                amsgrad,
            } => {
                t.betas = Some([beta1, beta2]);
                t.eps = Some(eps);
                t.amsgrad = amsgrad.then_some(true);
            }
            Rule::AdamW { beta1, beta2, eps } => {
                t.betas = Some([beta1, beta2]);
                t.eps = Some(eps);
            }
            Rule::RmsProp {
                alpha,
                eps,
                momentum,
                centered,
            } => {
                t.alpha = Some(alpha);
                t.eps = Some(eps);
                t.momentum = (momentum != 0.0).then_some(momentum);
                t.centered = centered.then_some(true);
            }
            Rule::Adagrad {
                eps,
                lr_decay,
                initial_accumulator,
            } => {
                t.eps = Some(eps);
                t.lr_decay = (lr_decay != 0.0).then_some(lr_decay);
                t.initial_accumulator = (initial_accumulator != 0.0).then_some(initial_accumulator);
            }
        }
        Ok(t)
    }

    fn validate(&self, at: &[Seg]) -> std::result::Result<(), Invalid> {
        let field = |name: &'static str| join(at, [Seg::Key(name)]);
        if let Some(name) = &self.loss {
            check(parse_loss(name, false).is_some(), &field("loss"), || {
                format!("unknown loss '{name}' (known: {LOSSES})")
            })?;
            check(
                self.from_logits.is_none() || name == "binary_crossentropy",
                &field("from_logits"),
                || "only binary_crossentropy takes from_logits".into(),
            )?;
        }
        let positive = |v: f32| v.is_finite() && v > 0.0;
        let non_negative = |v: f32| v.is_finite() && v >= 0.0;
        let fraction = |v: f32| (0.0..1.0).contains(&v);
        check_f32(self.lr, &field("lr"), positive, "a finite rate > 0")?;
        if let Some(name) = &self.optimizer {
            check(
                Optimizer::from_name(name, 0.1).is_some(),
                &field("optimizer"),
                || format!("unknown optimizer '{name}' (known: {OPTIMIZERS})"),
            )?;
            let set = [
                ("momentum", self.momentum.is_some()),
                ("dampening", self.dampening.is_some()),
                ("betas", self.betas.is_some()),
                ("eps", self.eps.is_some()),
                ("amsgrad", self.amsgrad.is_some()),
                ("alpha", self.alpha.is_some()),
                ("centered", self.centered.is_some()),
                ("lr_decay", self.lr_decay.is_some()),
                ("initial_accumulator", self.initial_accumulator.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(k, s)| *s && !applies(k, name)) {
                return Err(invalid(
                    &field(key),
                    format!("does not apply to optimizer '{name}'"),
                ));
            }
            if name == "nesterov" {
                check(self.momentum != Some(0.0), &field("momentum"), || {
                    "nesterov needs momentum > 0".into()
                })?;
                check(
                    self.dampening.unwrap_or(0.0) == 0.0,
                    &field("dampening"),
                    || "nesterov needs dampening = 0".into(),
                )?;
            }
        }
        check_f32(self.momentum, &field("momentum"), fraction, "in [0, 1)")?;
        check_f32(
            self.dampening,
            &field("dampening"),
            |v| (0.0..=1.0).contains(&v),
            "in [0, 1]",
        )?;
        if let Some(betas) = self.betas {
            for (k, b) in betas.iter().enumerate() {
                check(
                    fraction(*b),
                    &join(at, [Seg::Key("betas"), Seg::Index(k)]),
                    || format!("{b} is not in [0, 1)"),
                )?;
            }
        }
        check_f32(self.eps, &field("eps"), positive, "a finite value > 0")?;
        check_f32(
            self.alpha,
            &field("alpha"),
            |v| (0.0..=1.0).contains(&v),
            "in [0, 1]",
        )?;
        check_f32(
            self.lr_decay,
            &field("lr_decay"),
            non_negative,
            "a finite value >= 0",
        )?;
        check_f32(
            self.initial_accumulator,
            &field("initial_accumulator"),
            non_negative,
            "a finite value >= 0",
        )?;
        check_f32(
            self.weight_decay,
            &field("weight_decay"),
            non_negative,
            "a finite value >= 0",
        )?;
        check_f32(
            self.clip_norm,
            &field("clip_norm"),
            positive,
            "a finite norm > 0",
        )?;
        check(self.batch_size != Some(0), &field("batch_size"), || {
            "must be at least 1".into()
        })?;
        check(self.epochs != Some(0), &field("epochs"), || {
            "must be at least 1".into()
        })?;
        for (k, name) in self.metrics.iter().flatten().enumerate() {
            check(
                Metric::from_name(name).is_some(),
                &join(at, [Seg::Key("metrics"), Seg::Index(k)]),
                || format!("unknown metric '{name}' (known: {METRICS})"),
            )?;
        }
        if let Some(s) = &self.schedule {
            s.to_schedule(&field("schedule"))?;
        }
        Ok(())
    }

    fn checked(&self) -> Result<&TrainingSpec> {
        self.validate(&[Seg::Key("training")]).map_err(|bad| {
            Error::format(
                "model file",
                format!("{}: {}", path_text(&bad.path), bad.detail),
            )
        })?;
        Ok(self)
    }

    /// The loss this section names.
    pub fn loss(&self) -> Result<Loss> {
        let name = self.checked()?.loss.as_deref().ok_or_else(|| {
            Error::format(
                "model file",
                format!("training.loss is missing (one of {LOSSES})"),
            )
        })?;
        parse_loss(name, self.from_logits.unwrap_or(false)).ok_or_else(|| {
            Error::format(
                "model file",
                format!("training.loss '{name}' is not one of {LOSSES}"),
            )
        })
    }

    /// The optimizer this section names, with its hyper-parameters, schedule and clipping.
    pub fn optimizer(&self) -> Result<Optimizer> {
        let name = self.checked()?.optimizer.as_deref().ok_or_else(|| {
            Error::format(
                "model file",
                format!("training.optimizer is missing (one of {OPTIMIZERS})"),
            )
        })?;
        let sgd = matches!(name, "sgd" | "momentum" | "nesterov");
        let lr = self.lr.unwrap_or(if sgd { 0.01 } else { 0.001 });
        let mut opt = Optimizer::from_name(name, lr).ok_or_else(|| {
            Error::format(
                "model file",
                format!("training.optimizer '{name}' is not one of {OPTIMIZERS}"),
            )
        })?;
        opt.rule = match opt.rule {
            Rule::Sgd {
                momentum,
                dampening,
                nesterov,
            } => Rule::Sgd {
                momentum: self.momentum.unwrap_or(momentum),
                dampening: self.dampening.unwrap_or(dampening),
                nesterov,
            },
            Rule::Adam {
                beta1,
                beta2,
                eps,
                amsgrad,
            } => {
                let [beta1, beta2] = self.betas.unwrap_or([beta1, beta2]);
                Rule::Adam {
                    beta1,
                    beta2,
                    eps: self.eps.unwrap_or(eps),
                    amsgrad: self.amsgrad.unwrap_or(amsgrad),
                }
            }
            Rule::AdamW { beta1, beta2, eps } => {
                let [beta1, beta2] = self.betas.unwrap_or([beta1, beta2]);
                Rule::AdamW {
                    beta1,
                    beta2,
                    eps: self.eps.unwrap_or(eps),
                }
            }
            Rule::RmsProp {
                alpha,
                eps,
                momentum,
                centered,
            } => Rule::RmsProp {
                alpha: self.alpha.unwrap_or(alpha),
                eps: self.eps.unwrap_or(eps),
                momentum: self.momentum.unwrap_or(momentum),
                centered: self.centered.unwrap_or(centered),
            },
            Rule::Adagrad {
                eps,
                lr_decay,
                initial_accumulator,
            } => Rule::Adagrad {
                eps: self.eps.unwrap_or(eps),
                lr_decay: self.lr_decay.unwrap_or(lr_decay),
                initial_accumulator: self.initial_accumulator.unwrap_or(initial_accumulator),
            },
        };
        if let Some(wd) = self.weight_decay {
            opt.weight_decay = wd;
        }
        opt.clip_norm = self.clip_norm;
        if let Some(s) = &self.schedule {
            opt.schedule = s
                .to_schedule(&[Seg::Key("training"), Seg::Key("schedule")])
                .map_err(|_| Error::format("model file", "training.schedule is invalid"))?;
        }
        Ok(opt)
    }

    /// The metrics this section names (none when absent).
    pub fn metric_list(&self) -> Result<Vec<Metric>> {
        self.checked()?
            .metrics
            .iter()
            .flatten()
            .map(|m| {
                Metric::from_name(m).ok_or_else(|| {
                    Error::format(
                        "model file",
                        format!("training.metrics: unknown metric '{m}'"),
                    )
                })
            })
            .collect()
    }
}

impl ScheduleSpec {
    /// The table describing `schedule`; a warmup inside a warmup has no table form.
    pub fn from_schedule(schedule: &Schedule) -> Result<ScheduleSpec> {
        let (warmup, inner) = match schedule {
            Schedule::Warmup { steps, then } => (Some(*steps), then.as_ref()),
            s => (None, s),
        };
        let mut spec = match *inner {
            Schedule::Constant => ScheduleSpec {
                name: "constant".into(),
                ..ScheduleSpec::default()
            },
            Schedule::Step { step_size, gamma } => ScheduleSpec {
                name: "step".into(),
                step_size: Some(step_size),
                gamma: Some(gamma),
                ..ScheduleSpec::default()
            },
            Schedule::Exponential { gamma } => ScheduleSpec {
                name: "exponential".into(),
                gamma: Some(gamma),
                ..ScheduleSpec::default()
            },
            Schedule::Cosine { t_max, eta_min } => ScheduleSpec {
                name: "cosine".into(),
                t_max: Some(t_max),
                eta_min: Some(eta_min),
                ..ScheduleSpec::default()
            },
            Schedule::Warmup { .. } => {
                return Err(Error::arg(
                    "schedule",
                    "a warmup inside a warmup cannot be written to a model file",
                ))
            }
        };
        spec.warmup = warmup;
        Ok(spec)
    }

    /// The schedule of this table, each key checked against the schedule's name.
    fn to_schedule(&self, at: &[Seg]) -> std::result::Result<Schedule, Invalid> {
        let field = |name: &'static str| join(at, [Seg::Key(name)]);
        let keys = [
            ("step_size", self.step_size.is_some(), ["step", ""]),
            ("gamma", self.gamma.is_some(), ["step", "exponential"]),
            ("t_max", self.t_max.is_some(), ["cosine", ""]),
            ("eta_min", self.eta_min.is_some(), ["cosine", ""]),
        ];
        if let Some((key, _, _)) = keys
            .iter()
            .find(|(_, set, names)| *set && !names.contains(&self.name.as_str()))
        {
            return Err(invalid(
                &field(key),
                format!("does not apply to schedule '{}'", self.name),
            ));
        }
        let required = |name: &'static str, v: Option<usize>| {
            v.ok_or_else(|| {
                invalid(
                    &field(name),
                    format!("schedule '{}' needs {name}", self.name),
                )
            })
            .and_then(|v| check(v > 0, &field(name), || "must be at least 1".into()).map(|_| v))
        };
        let gamma_ok = |v: f32| v.is_finite() && v > 0.0;
        check_f32(self.gamma, &field("gamma"), gamma_ok, "a finite factor > 0")?;
        check_f32(
            self.eta_min,
            &field("eta_min"),
            |v| v.is_finite() && v >= 0.0,
            "a finite rate >= 0",
        )?;
        let base = match self.name.as_str() {
            "constant" => Schedule::Constant,
            "step" => Schedule::Step {
                step_size: required("step_size", self.step_size)?,
                gamma: self.gamma.unwrap_or(0.1),
            },
            "exponential" => Schedule::Exponential {
                gamma: self.gamma.ok_or_else(|| {
                    invalid(&field("gamma"), "schedule 'exponential' needs gamma")
                })?,
            },
            "cosine" => Schedule::Cosine {
                t_max: required("t_max", self.t_max)?,
                eta_min: self.eta_min.unwrap_or(0.0),
            },
            other => {
                return Err(invalid(
                    &field("name"),
                    format!("unknown schedule '{other}' (known: {SCHEDULES})"),
                ))
            }
        };
        Ok(match self.warmup {
            None => base,
            Some(steps) => Schedule::Warmup {
                steps: required("warmup", Some(steps))?,
                then: Box::new(base),
            },
        })
    }
}

impl ModelFile {
    /// Features per sample: `input`, or the product of `image`.
    fn input_width(&self) -> usize {
        match (self.input, self.image) {
            (0, Some(img)) => img.iter().product(),
            (n, _) => n,
        }
    }
}

/// The image layer an entry describes, if it is one (conv2d, pooling, flatten).
fn image_layer(
    spec: &LayerSpec,
    field: &dyn Fn(&'static str) -> Vec<Seg>,
) -> std::result::Result<Option<Layer>, Invalid> {
    let kinds = [
        spec.conv2d.is_some(),
        spec.max_pool.is_some(),
        spec.avg_pool.is_some(),
        spec.global_avg_pool == Some(true),
        spec.flatten == Some(true),
        spec.reshape.is_some(),
    ];
    let count = kinds.iter().filter(|k| **k).count();
    if count == 0 {
        for (name, set) in [
            ("kernel", spec.kernel.is_some()),
            ("stride", spec.stride.is_some()),
            ("padding", spec.padding.is_some()),
        ] {
            check(!set, &field(name), || {
                "only conv2d layers take this key".into()
            })?;
        }
        return Ok(None);
    }
    check(
        count == 1 && spec.dense.is_none() && spec.dropout.is_none(),
        &field("conv2d"),
        || "one kind of layer per [[layers]] entry".into(),
    )?;
    if let Some(filters) = spec.conv2d {
        check(filters > 0, &field("conv2d"), || {
            "must be at least 1 filter".into()
        })?;
        let k = spec.kernel.unwrap_or(3);
        check(k > 0, &field("kernel"), || "must be at least 1".into())?;
        let stride = spec.stride.unwrap_or(1);
        check(stride > 0, &field("stride"), || "must be at least 1".into())?;
        let mut conv = Conv::new(filters, k).stride(stride);
        conv = match &spec.padding {
            None => conv,
            Some(Padding::Size(p)) => conv.padding(*p),
            Some(Padding::Name(n)) if n == "valid" => conv,
            Some(Padding::Name(n)) if n == "same" => {
                check(k % 2 == 1 && stride == 1, &field("padding"), || {
                    "'same' needs an odd kernel and stride 1".into()
                })?;
                conv.same()
            }
            Some(Padding::Name(n)) => {
                return Err(invalid(
                    &field("padding"),
                    format!("'{n}' is not same, valid or a number"),
                ))
            }
        };
        return Ok(Some(Layer::Conv2d(conv)));
    }
    for (name, value, max) in [
        ("max_pool", spec.max_pool, true),
        ("avg_pool", spec.avg_pool, false),
    ] {
        if let Some(k) = value {
            check(k > 0, &field(name), || "must be at least 1".into())?;
            let pool = Pool::new(k);
            return Ok(Some(if max {
                Layer::MaxPool2d(pool)
            } else {
                Layer::AvgPool2d(pool)
            }));
        }
    }
    if let Some(to) = &spec.reshape {
        check(
            !to.is_empty() && !to.contains(&0),
            &field("reshape"),
            || "needs at least one dimension, none of them 0".into(),
        )?;
        return Ok(Some(Layer::Reshape(to.clone())));
    }
    Ok(Some(if spec.global_avg_pool == Some(true) {
        Layer::GlobalAvgPool
    } else {
        Layer::Flatten
    }))
}

/// An activation by name, or an error listing the known ones.
fn known_activation(
    name: &str,
    slope: Option<f32>,
    field: &dyn Fn(&'static str) -> Vec<Seg>,
) -> std::result::Result<Layer, Invalid> {
    if slope.is_some() {
        check(name == "leaky_relu", &field("slope"), || {
            "only leaky_relu takes a slope".into()
        })?;
        check_f32(slope, &field("slope"), f32::is_finite, "finite")?;
    }
    parse_activation(name, slope).ok_or_else(|| {
        invalid(
            &field("activation"),
            format!("unknown activation '{name}' (known: {ACTIVATIONS})"),
        )
    })
}

/// A `batch_norm = true` or `layer_norm = true` entry, with its optional activation after.
fn norm_layer(
    spec: &LayerSpec,
    field: &dyn Fn(&'static str) -> Vec<Seg>,
) -> std::result::Result<Option<Layer>, Invalid> {
    let (batch, layer) = (spec.batch_norm == Some(true), spec.layer_norm == Some(true));
    if !batch && !layer {
        return Ok(None);
    }
    let key = if batch { "batch_norm" } else { "layer_norm" };
    // Only the activation may share the entry.
    let others = LayerSpec {
        batch_norm: None,
        layer_norm: None,
        momentum: None,
        eps: None,
        activation: None,
        slope: None,
        ..spec.clone()
    };
    check(
        !(batch && layer) && others == LayerSpec::default(),
        &field(key),
        || {
            format!("a {key} entry takes only momentum, eps and activation: give other layers their own [[layers]]")
        },
    )?;
    let eps_ok = |v: f32| v.is_finite() && v >= 0.0;
    check_f32(spec.eps, &field("eps"), eps_ok, "a finite value >= 0")?;
    if layer {
        check(spec.momentum.is_none(), &field("momentum"), || {
            "only batch_norm layers take this key".into()
        })?;
        let eps = spec.eps.unwrap_or(LayerNorm::default().eps);
        return Ok(Some(Layer::LayerNorm(LayerNorm { eps })));
    }
    let momentum_ok = |v: f32| (0.0..=1.0).contains(&v);
    check_f32(spec.momentum, &field("momentum"), momentum_ok, "in [0, 1]")?;
    let default = BatchNorm::default();
    Ok(Some(Layer::BatchNorm(BatchNorm {
        eps: spec.eps.unwrap_or(default.eps),
        momentum: spec.momentum.unwrap_or(default.momentum),
    })))
}
