//! `[training.outputs.NAME]`: each output of a graph model with its own loss, weight and
//! metrics (Keras's `compile(loss={..}, loss_weights={..}, metrics={..})`). The section's
//! `loss`, `from_logits` and `metrics` are the defaults of outputs that leave them out, and
//! of outputs with no table. Targets are packed in the order of the graph's `outputs`
//! ([`Trainer::pack_targets`]), as Keras orders its dicts by the model's outputs.

use std::collections::BTreeMap;

use super::schema::{loss_name, parse_loss, ModelFile, OutputSpec, TrainingSpec, LOSSES};
use super::training::check_metrics;
use super::validation::{check, check_f32, join, Invalid, Seg};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::Model;
use crate::train::{Metric, OutputLoss, Trainer};

impl OutputSpec {
    /// Checks the table's own keys; `default_loss` is the section's `loss`.
    fn validate(&self, at: &[Seg], default_loss: Option<&str>) -> std::result::Result<(), Invalid> {
        let field = |name: &'static str| join(at, [Seg::Key(name)]);
        if let Some(name) = &self.loss {
            check(parse_loss(name, false).is_some(), &field("loss"), || {
                format!("unknown loss '{name}' (known: {LOSSES})")
            })?;
        }
        let loss = self.loss.as_deref().or(default_loss);
        check(
            self.from_logits.is_none() || loss == Some("binary_crossentropy"),
            &field("from_logits"),
            || "only binary_crossentropy takes from_logits".into(),
        )?;
        let weight_ok = |w: f32| w.is_finite() && w >= 0.0;
        check_f32(
            self.weight,
            &field("weight"),
            weight_ok,
            "a finite weight >= 0",
        )?;
        check_metrics(self.metrics.as_deref(), at)
    }

    /// The table describing `output` (a weight of 1 left out).
    fn of(output: &OutputLoss) -> OutputSpec {
        let (loss, from_logits) = loss_name(output.loss);
        OutputSpec {
            loss: Some(loss.into()),
            from_logits: from_logits.then_some(true),
            weight: (output.weight != 1.0).then_some(output.weight),
            metrics: Some(output.metrics.iter().map(|m| m.name().into()).collect()),
        }
    }
}

impl TrainingSpec {
    /// Checks the keys of every `[training.outputs.NAME]` table (not yet the names).
    pub(super) fn validate_output_tables(&self, at: &[Seg]) -> std::result::Result<(), Invalid> {
        for (name, table) in self.outputs.iter().flatten() {
            let path = join(at, [Seg::Key("outputs"), Seg::Name(name.clone())]);
            table.validate(&path, self.loss.as_deref())?;
        }
        Ok(())
    }

    /// The tables describing `outputs`, in place of the one loss and metrics.
    pub(super) fn set_outputs(&mut self, outputs: &[OutputLoss]) {
        self.loss = None;
        self.from_logits = None;
        self.metrics = None;
        let tables = outputs.iter().map(|o| (o.name.clone(), OutputSpec::of(o)));
        self.outputs = Some(tables.collect::<BTreeMap<_, _>>());
    }

    /// Each of `names` (a model's outputs, in order) with its loss, weight and metrics:
    /// its own table's, else the section's defaults.
    pub fn output_losses(&self, names: &[&str]) -> Result<Vec<OutputLoss>> {
        let bad = |detail: String| Error::format("model file", detail);
        if let Some(name) = self
            .checked()?
            .outputs
            .iter()
            .flat_map(|t| t.keys())
            .find(|n| !names.contains(&n.as_str()))
        {
            return Err(bad(format!(
                "training.outputs.{name}: not an output of the model (its outputs: {})",
                names.join(", ")
            )));
        }
        let none = OutputSpec::default();
        names
            .iter()
            .map(|&name| {
                let own = self.outputs.as_ref().and_then(|t| t.get(name));
                let table = own.unwrap_or(&none);
                let text = table.loss.as_deref().or(self.loss.as_deref());
                let text = text.ok_or_else(|| {
                    bad(format!(
                        "output '{name}' has no loss: give training.outputs.{name}.loss, \
                         or training.loss for every output (one of {LOSSES})"
                    ))
                })?;
                // from_logits goes with the loss it was given for.
                let inherited = self.from_logits.filter(|_| table.loss.is_none());
                let from_logits = table.from_logits.or(inherited).unwrap_or(false);
                let loss = parse_loss(text, from_logits)
                    .ok_or_else(|| bad(format!("unknown loss '{text}' (known: {LOSSES})")))?;
                let metrics = table.metrics.as_ref().or(self.metrics.as_ref());
                let metrics = metrics
                    .iter()
                    .flat_map(|m| m.iter())
                    .map(|m| {
                        Metric::from_name(m)
                            .ok_or_else(|| bad(format!("output '{name}': unknown metric '{m}'")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(OutputLoss::new(name, loss)
                    .weight(table.weight.unwrap_or(1.0))
                    .metrics(&metrics))
            })
            .collect()
    }

    /// `model` compiled as this section says: with `compile_outputs` where the model has
    /// several outputs or the section has `[training.outputs]`, else with `compile`.
    pub fn compile(&self, model: Model) -> Result<Trainer> {
        let optimizer = self.optimizer()?;
        let names = model.output_names();
        if names.len() > 1 || self.outputs.is_some() {
            let outputs = self.output_losses(&names)?;
            return model.compile_outputs(&outputs, optimizer);
        }
        model.compile(self.loss()?, optimizer, &self.metric_list()?)
    }
}

impl ModelFile {
    /// Checks the names of `[training.outputs]` against the graph's outputs, and that every
    /// output has a loss.
    pub(super) fn validate_outputs(&self, t: &TrainingSpec) -> std::result::Result<(), Invalid> {
        let Some(tables) = &t.outputs else {
            return Ok(());
        };
        let at = [Seg::Key("training"), Seg::Key("outputs")];
        check(self.is_graph(), &at, || {
            "a Sequential model has one output: give its loss as training.loss".into()
        })?;
        for name in tables.keys() {
            check(
                self.outputs.contains(name),
                &join(&at, [Seg::Name(name.clone())]),
                || {
                    format!(
                        "'{name}' is not an output of the graph (outputs: {})",
                        self.outputs.join(", ")
                    )
                },
            )?;
        }
        for name in &self.outputs {
            let own = tables.get(name);
            let path = match own {
                Some(_) => join(&at, [Seg::Name(name.clone()), Seg::Key("loss")]),
                None => at.to_vec(),
            };
            let loss = own.and_then(|o| o.loss.as_ref()).or(t.loss.as_ref());
            check(loss.is_some(), &path, || {
                format!(
                    "output '{name}' has no loss: give [training.outputs.{name}] a loss, \
                     or training.loss for every output"
                )
            })?;
        }
        Ok(())
    }

    /// The model this file describes, built with its `[training]` seed (0 when absent) and
    /// compiled as the section says ([`TrainingSpec::compile`]).
    pub fn trainer(&self, device: &Device) -> Result<Trainer> {
        let training = self
            .training
            .as_ref()
            .ok_or_else(|| Error::format("model file", "has no [training] section"))?;
        let model = self.build(device, training.seed.unwrap_or(0))?;
        training.compile(model)
    }
}
