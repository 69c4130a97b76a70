//! The model options shared by `train` and `summary` (`--layers`, `--activation`,
//! `--model`) and the names of losses, optimizers and activations on the command line.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use kiln::data::Dataset;
use kiln::io::TrainingSpec;
use kiln::nn::blocks::{gpt, GptConfig};
use kiln::nn::graph::Op;
use kiln::{
    Activation, Device, Graph, Layer, Loss, Metric, Model, Optimizer, Result, Schedule, Sequential,
};

use super::{bad_arg, checkpoint};

/// How the model is described: layer widths or a model file.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// Layer widths from input to output, e.g. 784,256,128,10: the first is the number
    /// of features, the last the number of outputs (at least the number of classes)
    /// [default: FEATURES,128,OUTPUTS]
    #[arg(
        long,
        value_name = "WIDTHS",
        value_delimiter = ',',
        conflicts_with = "model"
    )]
    pub layers: Option<Vec<usize>>,

    /// Activation after each hidden layer of --layers [default: relu]
    #[arg(long, value_enum, value_name = "NAME")]
    pub activation: Option<ActivationName>,

    /// A model file (TOML) describing the layers, and optionally the loss and optimizer
    #[arg(long, value_name = "FILE.toml")]
    pub model: Option<PathBuf>,

    /// A GPT for --data text:FILE: LAYERS,HEADS,WIDTH causal transformer blocks over
    /// token and position embeddings, e.g. 4,4,128 (kiln::nn::blocks::gpt)
    #[arg(
        long,
        value_name = "LAYERS,HEADS,WIDTH",
        value_delimiter = ',',
        conflicts_with_all = ["model", "layers", "activation"]
    )]
    pub gpt: Option<Vec<usize>>,
}

/// Activations by their command-line names.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ActivationName {
    /// max(x, 0)
    #[default]
    Relu,
    /// max(x, 0.01 x)
    LeakyRelu,
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// tanh(x)
    Tanh,
    /// x Phi(x)
    Gelu,
    /// no activation (the network stays linear)
    Identity,
}

impl ActivationName {
    /// The command-line name.
    pub fn name(self) -> String {
        name_of(self)
    }

    /// The library's activation.
    pub fn activation(self) -> Activation {
        match self {
            ActivationName::Relu => Activation::Relu,
            ActivationName::LeakyRelu => Activation::LeakyRelu(0.01),
            ActivationName::Sigmoid => Activation::Sigmoid,
            ActivationName::Tanh => Activation::Tanh,
            ActivationName::Gelu => Activation::Gelu,
            ActivationName::Identity => Activation::Identity,
        }
    }
}

/// Losses by their command-line (Keras) names.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossName {
    /// Softmax cross-entropy on class ids (classification)
    #[value(name = "sparse_categorical_crossentropy")]
    SparseCategoricalCrossentropy,
    /// Sigmoid cross-entropy on 0/1 labels (two classes, one output)
    #[value(name = "binary_crossentropy")]
    BinaryCrossentropy,
    /// Mean squared error (regression)
    Mse,
    /// Mean absolute error (regression)
    Mae,
}

impl LossName {
    /// The command-line name.
    pub fn name(self) -> String {
        name_of(self)
    }

    /// The library's loss; the network's last layer gives logits, so cross-entropies take them.
    pub fn loss(self) -> Loss {
        match self {
            LossName::SparseCategoricalCrossentropy => Loss::SparseCategoricalCrossEntropy,
            LossName::BinaryCrossentropy => Loss::BinaryCrossEntropy { from_logits: true },
            LossName::Mse => Loss::Mse,
            LossName::Mae => Loss::Mae,
        }
    }

    /// The name of a library loss as the command line trains it (see `for_class_ids`).
    pub fn of(loss: Loss) -> LossName {
        match for_class_ids(loss) {
            Loss::SparseCategoricalCrossEntropy | Loss::CategoricalCrossEntropy => {
                LossName::SparseCategoricalCrossentropy
            }
            Loss::BinaryCrossEntropy { .. } => LossName::BinaryCrossentropy,
            Loss::Mse => LossName::Mse,
            Loss::Mae => LossName::Mae,
        }
    }

    /// The default: cross-entropy on class ids for classification, MSE for regression.
    pub fn default_for(data: &Dataset) -> LossName {
        if data.classes > 0 {
            LossName::SparseCategoricalCrossentropy
        } else {
            LossName::Mse
        }
    }
}

/// Learning-rate schedules by their command-line names.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScheduleName {
    /// the learning rate falls along a half cosine from --lr to 0 over --epochs
    #[default]
    Cosine,
    /// the same learning rate throughout
    Constant,
}

impl ScheduleName {
    /// The library's schedule for a run of `epochs` epochs.
    pub fn schedule(self, epochs: usize) -> Schedule {
        match self {
            ScheduleName::Cosine => Schedule::Cosine {
                t_max: epochs,
                eta_min: 0.0,
            },
            ScheduleName::Constant => Schedule::Constant,
        }
    }
}

/// Optimizers by their command-line names.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OptimizerName {
    /// Adam (default learning rate 0.002 under cosine, 0.001 constant)
    #[default]
    Adam,
    /// plain stochastic gradient descent (default learning rate 0.01)
    Sgd,
    /// SGD with momentum 0.9 (default learning rate 0.01)
    Momentum,
    /// SGD with Nesterov momentum 0.9 (default learning rate 0.01)
    Nesterov,
    /// Adam with decoupled weight decay 0.01 (default learning rate as adam)
    Adamw,
    /// RMSprop (default learning rate as adam)
    Rmsprop,
    /// Adagrad (default learning rate 0.01)
    Adagrad,
}

/// The command-line name of a choice.
fn name_of(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

impl OptimizerName {
    /// The command-line name.
    pub fn name(self) -> String {
        name_of(self)
    }

    /// A learning rate that trains a small network well with this optimizer and schedule.
    pub fn default_lr(self, schedule: ScheduleName) -> f32 {
        match self {
            // A cosine schedule spends half its time below half its peak, so the adaptive
            // optimizers start from twice Keras's constant rate (measured on MNIST: 98.0% at
            // 1e-3, 98.3% at 2e-3 after 5 epochs; docs/cli.md, "Walk-through: MNIST").
            OptimizerName::Adam | OptimizerName::Adamw | OptimizerName::Rmsprop => match schedule {
                ScheduleName::Cosine => 2e-3,
                ScheduleName::Constant => 1e-3,
            },
            OptimizerName::Sgd
            | OptimizerName::Momentum
            | OptimizerName::Nesterov
            | OptimizerName::Adagrad => 1e-2,
        }
    }

    /// The library's optimizer with learning rate `lr`.
    pub fn optimizer(self, lr: f32) -> Result<Optimizer> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(bad_arg("--lr", format!("{lr} is not a positive number")));
        }
        Optimizer::from_name(&self.name(), lr)
            .ok_or_else(|| bad_arg("--optimizer", format!("kiln has no '{}'", self.name())))
    }
}

/// A model as described: a chain of layers, or a graph (from a graph model file).
pub enum Architecture {
    /// Layers in order.
    Sequential(Sequential),
    /// Named inputs, nodes and outputs.
    Graph(Graph),
}

impl Architecture {
    /// Allocates and initialises the model on `device`.
    pub fn build(&self, device: &Device, seed: u64) -> Result<Model> {
        match self {
            Architecture::Sequential(s) => s.build(device, seed),
            Architecture::Graph(g) => g.build(device, seed),
        }
    }

    /// The units of the dense layers and the widths of the embeddings, in order (a
    /// graph's in declaration order).
    pub fn dense_units(&self) -> Vec<usize> {
        let units = |l: &Layer| match l {
            Layer::Dense(d) => Some(d.units),
            Layer::Embedding(e) => Some(e.dim),
            _ => None,
        };
        match self {
            Architecture::Sequential(s) => s.layers.iter().filter_map(units).collect(),
            Architecture::Graph(g) => g
                .nodes
                .iter()
                .filter_map(|n| match &n.op {
                    Op::Layer(l) => units(l),
                    _ => None,
                })
                .collect(),
        }
    }
}

/// What `build` makes from the model options.
pub struct ModelSpec {
    /// The layers.
    pub architecture: Architecture,
    /// The loss a model file names, if any.
    pub loss: Option<Loss>,
    /// The optimizer a model file names, if any, with its name.
    pub optimizer: Option<(String, Optimizer)>,
    /// The batch size a model file names, if any.
    pub batch_size: Option<usize>,
    /// The epochs a model file names, if any.
    pub epochs: Option<usize>,
    /// The seed a model file names, if any.
    pub seed: Option<u64>,
    /// The model file's `[training]` section (empty without one): per-output losses.
    pub training: TrainingSpec,
}

impl ModelArgs {
    /// The model file's description, when the model comes from one.
    pub fn load_file(&self) -> Result<Option<ModelSpec>> {
        let Some(path) = &self.model else {
            return Ok(None);
        };
        if self.activation.is_some() {
            return Err(bad_arg(
                "--activation",
                "applies to --layers; a model file names its own activations",
            ));
        }
        checkpoint::model_file(path).map(Some)
    }

    /// The model described, for data with `features` inputs and `outputs` outputs
    /// (used only when no widths are given).
    pub fn build(&self, features: usize, outputs: usize) -> Result<ModelSpec> {
        if let Some(spec) = self.load_file()? {
            return Ok(spec);
        }
        if self.gpt.is_some() {
            return Err(bad_arg(
                "--gpt",
                "a GPT reads text: use it with --data text:FILE",
            ));
        }
        let widths = match &self.layers {
            Some(w) => w.clone(),
            None => vec![features, 128, outputs],
        };
        Ok(ModelSpec {
            architecture: Architecture::Sequential(sequential(
                &widths,
                self.activation.unwrap_or_default(),
            )?),
            loss: None,
            optimizer: None,
            batch_size: None,
            epochs: None,
            seed: None,
            training: TrainingSpec::default(),
        })
    }
}

impl ModelArgs {
    /// The default language model of text rows (`context` token ids, `vocab` tokens):
    /// token and position embeddings of the first --layers width, a dense layer of each
    /// further width with the activation, and logits over the vocabulary at every
    /// position [default widths: 64,128]. A model file replaces it.
    pub fn text(&self, context: usize, vocab: usize) -> Result<ModelSpec> {
        if let Some(spec) = self.load_file()? {
            return Ok(spec);
        }
        if let Some(sizes) = &self.gpt {
            return gpt_spec(sizes, context, vocab);
        }
        let widths = self.layers.clone().unwrap_or_else(|| vec![64, 128]);
        let Some((&dim, hidden)) = widths.split_first() else {
            return Err(bad_arg("--layers", "text needs an embedding width"));
        };
        let act = self.activation.unwrap_or_default().activation();
        let mut spec = Sequential::new(context)
            .embedding(vocab, dim)
            .positional_embedding(context);
        for &units in hidden {
            spec = spec.dense(units).activation(act);
        }
        Ok(ModelSpec {
            architecture: Architecture::Sequential(spec.dense(vocab)),
            loss: None,
            optimizer: None,
            batch_size: None,
            epochs: None,
            seed: None,
            training: TrainingSpec::default(),
        })
    }
}

/// The GPT of `--gpt LAYERS,HEADS,WIDTH` for `context` ids of `vocab` tokens.
fn gpt_spec(sizes: &[usize], context: usize, vocab: usize) -> Result<ModelSpec> {
    let &[layers, heads, width] = sizes else {
        return Err(bad_arg(
            "--gpt",
            "give three numbers: LAYERS,HEADS,WIDTH, e.g. 4,4,128",
        ));
    };
    let config = GptConfig {
        vocab,
        context,
        width,
        heads,
        layers,
        dropout: 0.0,
    };
    Ok(ModelSpec {
        architecture: Architecture::Graph(gpt(&config)?),
        loss: None,
        optimizer: None,
        batch_size: None,
        epochs: None,
        seed: None,
        training: TrainingSpec::default(),
    })
}

/// Dense layers of these widths with `act` after every hidden one; the last gives logits.
pub fn sequential(widths: &[usize], act: ActivationName) -> Result<Sequential> {
    if widths.len() < 2 {
        return Err(bad_arg(
            "--layers",
            "give at least two widths: the number of features and of outputs, e.g. 64,10",
        ));
    }
    if let Some(i) = widths.iter().position(|&w| w == 0) {
        return Err(bad_arg("--layers", format!("width {} is 0", i + 1)));
    }
    let mut s = Sequential::new(widths[0]);
    let last = widths.len() - 1;
    for (i, &w) in widths.iter().enumerate().skip(1) {
        s = s.dense(w);
        if i < last && act != ActivationName::Identity {
            s = s.activation(act.activation());
        }
    }
    Ok(s)
}

/// The metrics reported while training: accuracy for classifiers, MAE for regression.
pub fn train_metrics(loss: Loss, outputs: usize) -> Vec<Metric> {
    match loss {
        Loss::Mse | Loss::Mae => vec![Metric::Mae],
        _ if outputs == 1 => vec![Metric::BinaryAccuracy],
        _ => vec![Metric::Accuracy],
    }
}

/// Checks the model against the data: inputs equal to features, enough outputs for the
/// classes (one for binary cross-entropy and regression).
pub fn check_fits(model: &Model, loss: Loss, data: &Dataset, what: &str) -> Result<()> {
    let (inputs, outputs) = (model.input_width(), model.output_width());
    if inputs != data.features {
        return Err(bad_arg(
            what,
            format!(
                "the model takes {inputs} inputs but the data has {} features per row; \
                 the first width must be {}",
                data.features, data.features
            ),
        ));
    }
    let classification = !matches!(loss, Loss::Mse | Loss::Mae);
    if classification && data.classes == 0 {
        return Err(bad_arg(
            "--loss",
            "the data looks like regression (labels are not class ids 0..K-1); use mse or mae",
        ));
    }
    match loss {
        Loss::BinaryCrossEntropy { .. } if outputs != 1 || data.classes > 2 => Err(bad_arg(
            what,
            format!(
                "binary_crossentropy needs one output and two classes; the model has {outputs} \
                 outputs and the data {} classes",
                data.classes
            ),
        )),
        Loss::BinaryCrossEntropy { .. } => Ok(()),
        _ if classification && outputs < data.classes => Err(bad_arg(
            what,
            format!(
                "the last width is {outputs} but the data has {} classes; it must be at least {}",
                data.classes, data.classes
            ),
        )),
        Loss::Mse | Loss::Mae if outputs != 1 => Err(bad_arg(
            what,
            format!("regression predicts one value per row; the last width is {outputs}, not 1"),
        )),
        _ => Ok(()),
    }
}

/// The loss to train with on class ids: categorical cross-entropy (say, from a model file)
/// is the sparse one, whose class-id targets the metrics also need.
pub fn for_class_ids(loss: Loss) -> Loss {
    match loss {
        Loss::CategoricalCrossEntropy => Loss::SparseCategoricalCrossEntropy,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_give_hidden_activations_and_logits() {
        let s = sequential(&[64, 32, 10], ActivationName::Relu).unwrap();
        assert_eq!(s.widths().unwrap(), vec![32, 32, 10]);
        assert_eq!(s.layers.len(), 3);
        assert!(sequential(&[64], ActivationName::Relu).is_err());
        assert!(sequential(&[64, 0, 10], ActivationName::Relu).is_err());
    }

    #[test]
    fn loss_names_round_trip() {
        for n in LossName::value_variants() {
            assert_eq!(LossName::of(n.loss()), *n);
        }
        assert_eq!(
            LossName::of(Loss::CategoricalCrossEntropy),
            LossName::SparseCategoricalCrossentropy
        );
    }
}
