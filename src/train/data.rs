//! Training data on the device: checked, uploaded once, gathered batch by batch.

use super::Trainer;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::gather::{PaletteRows, Rows};
use crate::ops::loss::Loss;
use crate::tensor::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;

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
        upload_rows(&self.model.device, x, y, w, tw)
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
        data.gather(start, &mut ws.acts[0], &mut ws.target)?;
        Ok(key)
    }
}

/// Uploads rows of `w` inputs and `tw` targets once, in as few chunks as the adapter's
/// binding limit allows; on a GPU, data of at most 256 distinct values (pixels) goes up
/// as bytes.
pub(super) fn upload_rows(
    d: &Device,
    x: &[f32],
    y: &[f32],
    w: usize,
    tw: usize,
) -> Result<DeviceData> {
    let rows = x.len() / w.max(1);
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
    DeviceData::new(d, rows, chunks)
}

impl DeviceData {
    /// The uploaded chunks, in their given order until shuffled.
    fn new(d: &Device, rows: usize, chunks: Vec<(usize, Rows, Tensor)>) -> Result<DeviceData> {
        let order: Vec<f32> = (0..rows).map(|i| i as f32).collect();
        let index = Tensor::from_slice(d, &order, &[rows])?;
        Ok(DeviceData {
            rows,
            chunks,
            index,
            order,
        })
    }

    /// Shuffles the row order for `epoch` (1-based): one generator per epoch, so resuming
    /// at any epoch shuffles as an uninterrupted run does.
    pub(super) fn shuffle(&mut self, seed: u64, epoch: usize) -> Result<()> {
        let epoch_seed = seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.order = (0..self.rows).map(|i| i as f32).collect();
        self.order
            .shuffle(&mut rand::rngs::StdRng::seed_from_u64(epoch_seed));
        self.index.write(&self.order)
    }

    /// Gathers rows order[start..start + batch] into `x` and their targets into `y`.
    pub(super) fn gather(&self, start: usize, x: &mut Tensor, y: &mut Tensor) -> Result<()> {
        for (lo, rows, targets) in &self.chunks {
            rows.gather_with_targets(targets, *lo, &self.index, start, x, y)?;
        }
        Ok(())
    }
}

/// The training rows a validation split of `fraction` keeps (the last rows validate, as
/// Keras holds them out).
pub(super) fn split_point(rows: usize, fraction: f32) -> Result<usize> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::arg(
            "validation split",
            format!("{fraction} is not in [0, 1)"),
        ));
    }
    let keep = rows - (rows as f32 * fraction).round() as usize;
    if keep == 0 {
        return Err(Error::arg("validation split", "leaves no training rows"));
    }
    Ok(keep)
}
