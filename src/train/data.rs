//! Training data on the device: checked, uploaded once, gathered batch by batch.

use super::Trainer;
use crate::error::{Error, Result};
use crate::ops::gather::{PaletteRows, Rows};
use crate::ops::loss::Loss;
use crate::tensor::Tensor;

/// An uploaded data set, in chunks of at most one binding each.
pub(super) struct DeviceData {
    pub(super) rows: usize,
    /// (first row, inputs, targets): one chunk unless the set exceeds a binding.
    pub(super) chunks: Vec<(usize, Rows, Tensor)>,
    pub(super) index: Tensor,
    pub(super) order: Vec<f32>,
}

impl Trainer {
    /// Checks x and y against the model and the loss; returns the number of rows.
    pub(super) fn check_data(&self, x: &[f32], y: &[f32]) -> Result<usize> {
        let rows = self.model.rows_of(x, "input x")?;
        let tw = self.target_width();
        if rows.checked_mul(tw) != Some(y.len()) {
            return Err(Error::shape(
                "targets y",
                format!(
                    "{rows} rows need {} target values ({tw} per row), got {}",
                    rows.saturating_mul(tw),
                    y.len()
                ),
            ));
        }
        self.check_finite(x)?;
        if let Some(i) = y.iter().position(|v| !v.is_finite()) {
            return Err(Error::arg("targets y", format!("value {i} is {}", y[i])));
        }
        if self.outputs.is_some() {
            self.check_output_labels(y)?;
        } else if self.train_loss == Loss::SparseCategoricalCrossEntropy {
            let classes = self.model.output_classes();
            if let Some(i) = y
                .iter()
                .position(|&v| v < 0.0 || v.fract() != 0.0 || v as usize >= classes)
            {
                return Err(Error::arg(
                    "labels y",
                    format!(
                        "row {} has label {} but the model has {classes} classes (0..{})",
                        i / self.target_width().max(1),
                        y[i],
                        classes - 1
                    ),
                ));
            }
        }
        Ok(rows)
    }

    /// An error naming the first NaN or infinite input, which would poison every output.
    pub(super) fn check_finite(&self, x: &[f32]) -> Result<()> {
        match x.iter().position(|v| !v.is_finite()) {
            Some(i) => Err(Error::arg(
                "input x",
                format!(
                    "row {} column {} is {} (NaN or Inf)",
                    i / self.model.input_width(),
                    i % self.model.input_width(),
                    x[i]
                ),
            )),
            None => Ok(()),
        }
    }

    /// Uploads the rows once, in as few chunks as the adapter's binding limit allows;
    /// on a GPU, data of at most 256 distinct values (pixels) goes up as bytes.
    pub(super) fn upload(&self, x: &[f32], y: &[f32]) -> Result<DeviceData> {
        let (w, tw) = (self.model.input_width(), self.target_width());
        let rows = x.len() / w;
        let d = &self.model.device;
        let palette = if d.is_cpu() {
            None
        } else {
            PaletteRows::palette_of(x)
        };
        let row_len = if palette.is_some() { w.div_ceil(4) } else { w };
        let per_chunk = (d.max_tensor_len() / row_len.max(tw)).clamp(1, rows.max(1));
        let chunks = (0..rows)
            .step_by(per_chunk)
            .map(|lo| {
                let hi = (lo + per_chunk).min(rows);
                let xs = &x[lo * w..hi * w];
                let inputs = match &palette {
                    Some(p) => Rows::Palette(PaletteRows::pack(d, xs, w, p)?),
                    None => Rows::F32(Tensor::from_slice(d, xs, &[hi - lo, w])?),
                };
                let ys = Tensor::from_slice(d, &y[lo * tw..hi * tw], &[hi - lo, tw])?;
                Ok((lo, inputs, ys))
            })
            .collect::<Result<Vec<_>>>()?;
        self.finish_upload(rows, chunks)
    }

    pub(super) fn finish_upload(
        &self,
        rows: usize,
        chunks: Vec<(usize, Rows, Tensor)>,
    ) -> Result<DeviceData> {
        let order: Vec<f32> = (0..rows).map(|i| i as f32).collect();
        let index = Tensor::from_slice(&self.model.device, &order, &[rows])?;
        Ok(DeviceData {
            rows,
            chunks,
            index,
            order,
        })
    }

    /// Gathers rows order[start..start + batch] into the workspace's input and target.
    pub(super) fn load_batch(
        &mut self,
        data: &DeviceData,
        start: usize,
        batch: usize,
    ) -> Result<(usize, usize)> {
        let key = (batch, self.target_width());
        let ws = self.model.workspace(batch, key.1)?;
        for (lo, x, y) in &data.chunks {
            x.gather_with_targets(y, *lo, &data.index, start, &mut ws.acts[0], &mut ws.target)?;
        }
        Ok(key)
    }
}
