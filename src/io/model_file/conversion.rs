//! Conversion between model files and models: the `Sequential` a file describes, and the
//! file describing a model or a trainer. Each layer writes its own entry
//! ([`crate::nn::layers::LayerDef::entry`]).

use std::path::Path;

use super::schema::{loss_name, LayerSpec, ModelFile, TrainingSpec};
use super::validation::path_text;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::layers::{Kind, ACTIVATION_KEY};
use crate::nn::{Model, Sequential};
use crate::optim::Optimizer;
use crate::train::{Loss, Metric, Trainer};

impl ModelFile {
    /// Reads and parses a model file.
    pub fn load(path: impl AsRef<Path>) -> Result<ModelFile> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse_named(&text, &format!("{} (model file)", path.display()))
    }

    /// The TOML text of the file; `parse` gives back an equal `ModelFile`.
    // Only maps with non-string keys fail to serialize, and these types have none.
    #[allow(clippy::expect_used)]
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a ModelFile always serializes to TOML")
    }

    /// The Sequential model this file describes (see [`ModelFile::to_graph`] for graphs).
    pub fn to_sequential(&self) -> Result<Sequential> {
        if self.is_graph() {
            return Err(Error::format(
                "model file",
                "describes a graph ([[inputs]], [[nodes]], outputs): use to_graph",
            ));
        }
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

    /// Builds the model this file describes, Sequential or graph, seeded.
    pub fn build(&self, device: &Device, seed: u64) -> Result<Model> {
        if self.is_graph() {
            self.to_graph()?.build(device, seed)
        } else {
            self.to_sequential()?.build(device, seed)
        }
    }

    /// The file describing a built model, Sequential or graph (no training section).
    pub fn from_model(model: &Model) -> Result<ModelFile> {
        match (model.spec(), model.graph()) {
            (Some(seq), _) => Ok(ModelFile::from_sequential(seq)),
            (None, Some(graph)) => Ok(ModelFile::from_graph(graph)),
            (None, None) => Err(crate::error::GraphError::Unsupported(
                "the model keeps no description to write".into(),
            )
            .into()),
        }
    }

    /// The file describing `model` (no training section); defaults are left out.
    pub fn from_sequential(model: &Sequential) -> ModelFile {
        let mut layers: Vec<LayerSpec> = Vec::new();
        for layer in &model.layers {
            let entry = layer.def().entry();
            match layers.last_mut() {
                Some(last) if joins(last, &entry) => *last = joined(last, entry),
                _ => layers.push(entry),
            }
        }
        ModelFile {
            input: model.input,
            image: model.image.map(|(c, h, w)| [c, h, w]),
            layers,
            ..ModelFile::default()
        }
    }

    /// The file describing a trainer's model, loss, optimizer, metrics and seed (each
    /// output's loss, weight and metrics for a trainer of `compile_outputs`).
    ///
    /// Fails only for an optimizer this format cannot express (a warmup inside a warmup).
    pub fn from_trainer(trainer: &Trainer) -> Result<ModelFile> {
        let mut file = ModelFile::from_model(&trainer.model)?;
        let mut training = TrainingSpec::from_optimizer(trainer.optimizer())?;
        if let Some(outputs) = trainer.output_losses() {
            training.set_outputs(&outputs);
            // Targets are packed in the order of `outputs`: the order they were compiled in.
            file.outputs = outputs.into_iter().map(|o| o.name).collect();
        } else {
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
        }
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

/// Whether `next`, an activation's entry, joins `last`: after a layer that takes an
/// activation argument in Keras (dense, conv2d) and has none yet.
pub(crate) fn joins(last: &LayerSpec, next: &LayerSpec) -> bool {
    let is_activation = Kind::of_entry(next).is_some_and(|k| k.key == Some(ACTIVATION_KEY));
    let takes = Kind::of_entry(last).is_some_and(|k| k.joins_activation);
    is_activation && takes && last.get(ACTIVATION_KEY).is_none()
}

/// `last` with the activation `next` after its kind key, where the file has written it.
pub(crate) fn joined(last: &LayerSpec, next: LayerSpec) -> LayerSpec {
    let mut keys = last.0.iter();
    let mut out = toml::Table::new();
    out.extend(keys.next().map(|(k, v)| (k.clone(), v.clone())));
    out.extend(next.0);
    out.extend(keys.map(|(k, v)| (k.clone(), v.clone())));
    LayerSpec(out)
}
