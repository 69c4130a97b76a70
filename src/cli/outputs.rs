//! Models with several outputs on the command line. The data has one label column, so
//! every output is trained on it, as Keras's `fit(x, [y, y])` (auxiliary classifiers,
//! or one head per loss): each output takes one target per row, a class id or a value.

use std::borrow::Cow;

use kiln::data::Dataset;
use kiln::io::TrainingSpec;
use kiln::{Loss, Model, Optimizer, OutputLoss, Result, Trainer};

use super::bad_arg;
use super::model_args::{self, LossName};

/// Whether `model` trains through `compile_outputs`: several outputs, or a model file's
/// `[training.outputs]` tables.
pub fn wanted(model: &Model, training: &TrainingSpec) -> bool {
    model.output_names().len() > 1 || training.outputs.is_some()
}

/// `model` compiled with each output's loss, weight and metrics from `training`; `flag`
/// (--loss), else `default`, is the loss of outputs the file gives none.
pub fn compile(
    model: Model,
    training: &TrainingSpec,
    (flag, default): (Option<LossName>, LossName),
    optimizer: Optimizer,
    data: &Dataset,
    what: &str,
) -> Result<Trainer> {
    let mut training = training.clone();
    if let Some(name) = flag.or(training.loss.is_none().then_some(default)) {
        training.loss = Some(name.name());
        // The command line's binary cross-entropy reads logits, as its loss() says.
        training.from_logits =
            matches!(name.loss(), Loss::BinaryCrossEntropy { from_logits: true }).then_some(true);
    }
    if model.input_width() != data.features {
        return Err(bad_arg(
            what,
            format!(
                "the model takes {} inputs but the data has {} features per row",
                model.input_width(),
                data.features
            ),
        ));
    }
    let outputs = training
        .output_losses(&model.output_names())?
        .into_iter()
        .map(|o| for_labels(o, data))
        .collect::<Result<Vec<_>>>()?;
    let trainer = model.compile_outputs(&outputs, optimizer)?;
    if trainer.target_width() != outputs.len() {
        let losses: Vec<String> = outputs
            .iter()
            .map(|o| format!("{} {}", o.name, LossName::of(o.loss).name()))
            .collect();
        return Err(bad_arg(
            what,
            format!(
                "every output is trained on the data's one label column, so each needs one \
                 target per row (a classifier, or a regression or binary head of one unit); \
                 the outputs are {}",
                losses.join(", ")
            ),
        ));
    }
    Ok(trainer)
}

/// One output set up for class-id or value labels: a categorical cross-entropy reads class
/// ids, and an output without metrics gets those `kiln train` reports.
fn for_labels(mut o: OutputLoss, data: &Dataset) -> Result<OutputLoss> {
    o.loss = model_args::for_class_ids(o.loss);
    let classification = !matches!(o.loss, Loss::Mse | Loss::Mae);
    if classification && data.classes == 0 {
        return Err(bad_arg(
            "--loss",
            format!(
                "output '{}' is a classifier but the data looks like regression (labels are \
                 not class ids 0..K-1)",
                o.name
            ),
        ));
    }
    if o.metrics.is_empty() {
        let binary = matches!(o.loss, Loss::BinaryCrossEntropy { .. });
        o.metrics = model_args::train_metrics(o.loss, if binary { 1 } else { 2 });
    }
    Ok(o)
}

/// The targets `trainer` takes for labels `y`: `y` itself, or each label once per output.
pub fn targets<'a>(trainer: &Trainer, y: &'a [f32]) -> Result<Cow<'a, [f32]>> {
    match trainer.output_losses() {
        Some(outputs) => Ok(Cow::Owned(trainer.pack_targets(&vec![y; outputs.len()])?)),
        None => Ok(Cow::Borrowed(y)),
    }
}

/// "class: sparse_categorical_crossentropy, aux: ... x0.3": the losses, for the run record.
pub fn describe(outputs: &[OutputLoss]) -> String {
    let each = outputs.iter().map(|o| {
        let weight = if o.weight == 1.0 {
            String::new()
        } else {
            format!(" x{}", o.weight)
        };
        format!("{}: {}{weight}", o.name, LossName::of(o.loss).name())
    });
    each.collect::<Vec<_>>().join(", ")
}
