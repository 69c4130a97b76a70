//! `evaluate` and `predict`: inference passes over batches, with the loss and metrics or
//! the probabilities.

use super::data::DeviceData;
use super::outputs::Losses;
use super::{Evaluation, Trainer};
use crate::error::Result;
use crate::nn::model::planner::Output;
use crate::nn::model::Pass;
use crate::ops::activation::{activation_into, softmax_into};
use crate::ops::loss::loss_value_at;
use crate::ops::Activation;
use crate::tensor::Tensor;

impl Trainer {
    pub(super) fn evaluate_data(
        &mut self,
        data: &DeviceData,
        batch_size: usize,
    ) -> Result<Evaluation> {
        self.evaluate_shard(data, batch_size, None)
    }

    /// Evaluates this rank's [`shard`](super::replica::shard) of the rows and sums the
    /// metrics over the ranks of `group` (all rows when there is none).
    pub(super) fn evaluate_shard(
        &mut self,
        data: &DeviceData,
        batch_size: usize,
        group: super::fit::Group<'_>,
    ) -> Result<Evaluation> {
        let (first, rows) = match &group {
            Some(g) => super::replica::shard(data.rows, g.size(), g.rank()),
            None => (0, data.rows),
        };
        let mut accs = self.accumulators(rows.div_ceil(batch_size.max(1)))?;
        let n = self.train_stages.len();
        let end = first + rows;
        let mut start = first;
        while start < end {
            let batch = batch_size.max(1).min(end - start);
            let key = self.load_batch(data, start, batch)?;
            self.model
                .forward_ws(key, &self.train_stages, Pass::Infer)?;
            if self.outputs.is_some() {
                self.output_losses_ws(key, Losses::Eval(&mut accs))?;
            } else if let Some(acc) = accs.first_mut() {
                let ws = self.model.workspace(key.0, key.1)?;
                let (log, slot) = acc.loss_slot()?;
                loss_value_at(self.train_loss, &ws.acts[n], &ws.target, log, slot)?;
                acc.add(&ws.acts[n], &ws.target, batch)?;
            }
            start += batch;
        }
        let mut e = self.finish_with(&accs, group)?;
        e.loss += self.penalty()?;
        Ok(e)
    }

    /// Loss and metrics on rows `x` with targets `y`, in batches of `batch_size`.
    pub fn evaluate(&mut self, x: &[f32], y: &[f32], batch_size: usize) -> Result<Evaluation> {
        self.check_data(x, y)?;
        let data = self.upload(x, y)?;
        self.evaluate_data(&data, batch_size)
    }

    /// Model outputs for rows `x`: probabilities for classifiers, raw values for regression.
    /// A model with several outputs: [`Trainer::predict_outputs`].
    pub fn predict(&mut self, x: &[f32], batch_size: usize) -> Result<Vec<f32>> {
        if self.outputs.is_some() {
            return Err(crate::error::GraphError::Unsupported(
                "the model has several outputs: use predict_outputs".into(),
            )
            .into());
        }
        let rows = self.model.rows_of(x, "input x")?;
        self.check_finite(x)?;
        let w = self.model.input_width();
        // The full plan, with any final softmax or sigmoid the training loss had fused.
        let stages = self.model.stages.clone();
        let mut out = crate::tensor::host_vec(
            rows.saturating_mul(self.model.output_width()),
            "predictions",
        )?;
        for chunk in x.chunks(batch_size.clamp(1, rows).saturating_mul(w)) {
            let batch = chunk.len() / w;
            let key = (batch, self.target_width());
            self.model.workspace(batch, key.1)?.acts[0].write(chunk)?;
            self.model.forward_ws(key, &stages, Pass::Infer)?;
            let y = &self.model.workspace(batch, key.1)?.acts[stages.len()];
            let mut p = Tensor::uninit(&y.device(), y.shape())?;
            match self.output {
                Output::Raw => p.copy_from(y)?,
                Output::Softmax => softmax_into(y, &mut p)?,
                Output::Sigmoid => activation_into(Activation::Sigmoid, y, &mut p)?,
            }
            out.extend(p.to_vec()?);
        }
        Ok(out)
    }

    /// The predicted class of every row: the argmax, or probability > 0.5 for one output.
    pub fn predict_classes(&mut self, x: &[f32], batch_size: usize) -> Result<Vec<usize>> {
        let out_w = self.model.output_width();
        let probs = self.predict(x, batch_size)?;
        Ok(probs
            .chunks(out_w)
            .map(|row| {
                if out_w == 1 {
                    usize::from(row[0] > 0.5)
                } else {
                    row.iter()
                        .enumerate()
                        .fold(
                            (0, f32::NEG_INFINITY),
                            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                        )
                        .0
                }
            })
            .collect())
    }
}
