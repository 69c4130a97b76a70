//! Host-side data sets: loading (IDX, CSV, the embedded digits set), splitting,
//! scaling, batching and validation. Nothing here touches the GPU.

pub mod csv;
pub mod idx;
pub mod text;

use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// An in-memory data set: `n` rows of `features` values, one target per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Row-major features, `[n, features]`.
    pub x: Vec<f32>,
    /// Targets, `[n]`: class ids as f32 for classification, values for regression; or
    /// `[n, k]`, k per row (the next token at each position of a text window).
    pub y: Vec<f32>,
    /// Number of rows.
    pub n: usize,
    /// Values per row.
    pub features: usize,
    /// Number of classes; 0 for regression.
    pub classes: usize,
    /// `(channels, height, width)` of each row, for image sets.
    pub image: Option<(usize, usize, usize)>,
}

/// How [`Dataset::scale`] maps each feature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scaling {
    /// Divide every value by a constant (255 for 8-bit pixels).
    Divide(f32),
    /// Subtract each feature's mean and divide by its standard deviation.
    Standardize,
    /// Map each feature's observed range onto [0, 1].
    MinMax,
}

/// Per-feature statistics fitted on one data set, to apply unchanged to others.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaler {
    /// Subtracted from each feature first.
    pub shift: Vec<f32>,
    /// Then each feature is divided by this (never 0).
    pub divisor: Vec<f32>,
}

impl Scaler {
    /// Fits the statistics of `how` on `data` without changing it.
    pub fn fit(data: &Dataset, how: Scaling) -> Result<Scaler> {
        let f = data.features;
        check_len(data)?;
        match how {
            Scaling::Divide(d) => {
                if !d.is_finite() || d == 0.0 {
                    return Err(Error::arg(
                        "Scaling::Divide",
                        format!("divisor must be finite and non-zero, got {d}"),
                    ));
                }
                Ok(Scaler {
                    shift: filled(f, 0.0)?,
                    divisor: filled(f, d)?,
                })
            }
            Scaling::Standardize => {
                // f64 sums: 60000 rows of 0..255 lose digits in f32.
                let mut sum = filled(f, 0f64)?;
                let mut sq = filled(f, 0f64)?;
                for row in data.x.chunks_exact(f.max(1)) {
                    for (j, &v) in row.iter().enumerate() {
                        sum[j] += v as f64;
                    }
                }
                let n = data.n.max(1) as f64;
                let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
                for row in data.x.chunks_exact(f.max(1)) {
                    for (j, &v) in row.iter().enumerate() {
                        let d = v as f64 - mean[j];
                        sq[j] += d * d;
                    }
                }
                let divisor = sq.iter().map(|s| nonzero((s / n).sqrt() as f32)).collect();
                Ok(Scaler {
                    shift: mean.iter().map(|&m| m as f32).collect(),
                    divisor,
                })
            }
            Scaling::MinMax => {
                let mut lo = filled(f, f32::INFINITY)?;
                let mut hi = filled(f, f32::NEG_INFINITY)?;
                for row in data.x.chunks_exact(f.max(1)) {
                    for (j, &v) in row.iter().enumerate() {
                        lo[j] = lo[j].min(v);
                        hi[j] = hi[j].max(v);
                    }
                }
                let shift: Vec<f32> = lo
                    .iter()
                    .map(|&l| if l.is_finite() { l } else { 0.0 })
                    .collect();
                let divisor = lo.iter().zip(&hi).map(|(&l, &h)| nonzero(h - l)).collect();
                Ok(Scaler { shift, divisor })
            }
        }
    }

    /// Number of features the scaler was fitted on.
    pub fn features(&self) -> usize {
        self.shift.len()
    }

    /// Scales row-major values in place; `x.len()` must be a multiple of the feature count.
    pub fn transform(&self, x: &mut [f32]) -> Result<()> {
        let f = self.features();
        if f == 0 || !x.len().is_multiple_of(f) {
            return Err(Error::shape(
                "Scaler::transform",
                format!(
                    "{} values are not whole rows of the {f} features fitted",
                    x.len()
                ),
            ));
        }
        for row in x.chunks_exact_mut(f) {
            for ((v, s), d) in row.iter_mut().zip(&self.shift).zip(&self.divisor) {
                *v = (*v - s) / d;
            }
        }
        Ok(())
    }

    /// Scales another data set (e.g. the test set) with these statistics.
    pub fn apply(&self, data: &mut Dataset) -> Result<()> {
        if data.features != self.features() {
            return Err(Error::shape(
                "Scaler::apply",
                format!(
                    "data set has {} features, scaler was fitted on {}",
                    data.features,
                    self.features()
                ),
            ));
        }
        check_len(data)?;
        if data.n == 0 {
            return Ok(());
        }
        self.transform(&mut data.x)
    }
}

/// Per-feature statistics; a fallible allocation, since `features` is a public field
/// that may hold anything.
fn filled<T: Clone>(features: usize, value: T) -> Result<Vec<T>> {
    crate::tensor::host_filled(features, value, "per-feature statistics")
}

/// Keeps constant features unchanged instead of dividing by zero.
fn nonzero(d: f32) -> f32 {
    if d > 0.0 && d.is_finite() {
        d
    } else {
        1.0
    }
}

fn check_len(data: &Dataset) -> Result<()> {
    if data.n.checked_mul(data.features) != Some(data.x.len()) {
        return Err(Error::shape(
            "dataset",
            format!(
                "x holds {} values, expected n * features = {} * {}",
                data.x.len(),
                data.n,
                data.features
            ),
        ));
    }
    let whole_rows = data.n > 0 && data.y.len().is_multiple_of(data.n) && data.y.len() >= data.n;
    if data.y.len() != data.n && !whole_rows {
        return Err(Error::shape(
            "dataset",
            format!(
                "y holds {} values, expected n = {} (or k per row)",
                data.y.len(),
                data.n
            ),
        ));
    }
    Ok(())
}

impl Dataset {
    /// Targets per row: 1, or k for `[n, k]` targets.
    pub fn targets_per_row(&self) -> usize {
        match self.n {
            0 => 1,
            n => (self.y.len() / n).max(1),
        }
    }

    /// The rows at `indices`, in that order, as a new data set.
    ///
    /// An index not below `n` is an `InvalidArgument` error.
    pub fn select(&self, indices: &[usize]) -> Result<Dataset> {
        let (x, y) = self.batch(indices)?;
        Ok(Dataset {
            x,
            y,
            n: indices.len(),
            features: self.features,
            classes: self.classes,
            image: self.image,
        })
    }

    /// Shuffles with `seed` and splits off `round(n * fraction_second)` rows as the second set.
    ///
    /// A `fraction_second` outside [0, 1] (or NaN) is an `InvalidArgument` error.
    pub fn split(&self, fraction_second: f32, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(0.0..=1.0).contains(&fraction_second) {
            return Err(Error::arg(
                "split fraction",
                format!("{fraction_second} is not within [0, 1]"),
            ));
        }
        check_len(self)?;
        let mut order: Vec<usize> = (0..self.n).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let second = ((self.n as f64 * fraction_second as f64).round() as usize).min(self.n);
        let (b, a) = order.split_at(second);
        Ok((self.select(a)?, self.select(b)?))
    }

    /// Fits `how` on this set, scales it in place, and returns the statistics for other sets.
    ///
    /// `Divide` by zero or a non-finite value is an `InvalidArgument` error, and
    /// `x.len() != n * features` a `Shape` error; the set is unchanged on error.
    pub fn scale(&mut self, how: Scaling) -> Result<Scaler> {
        let scaler = Scaler::fit(self, how)?;
        scaler.apply(self)?;
        Ok(scaler)
    }

    /// Targets as one-hot rows, `[n, classes]`.
    ///
    /// A regression set (`classes == 0`) or a label outside `0..classes` is an
    /// `InvalidArgument` error naming the row.
    pub fn one_hot(&self) -> Result<Vec<f32>> {
        if self.classes == 0 {
            return Err(Error::arg(
                "one_hot",
                "a regression set (classes == 0) has no classes to encode",
            ));
        }
        let len = self.y.len().checked_mul(self.classes).ok_or_else(|| {
            Error::arg(
                "one_hot",
                format!(
                    "{} rows x {} classes overflow the address space",
                    self.y.len(),
                    self.classes
                ),
            )
        })?;
        let mut out = crate::tensor::host_zeros(len, "one_hot")?;
        for (i, (&label, row)) in self
            .y
            .iter()
            .zip(out.chunks_exact_mut(self.classes))
            .enumerate()
        {
            let c = class_of(label, self.classes).ok_or_else(|| {
                Error::arg(
                    "one_hot",
                    format!(
                        "row {i} has label {label}, not a class id in 0..{} (0-based row)",
                        self.classes
                    ),
                )
            })?;
            row[c] = 1.0;
        }
        Ok(out)
    }

    /// Features `[indices.len(), features]` and targets `[indices.len(), k]` of the given rows.
    ///
    /// An index not below `n` is an `InvalidArgument` error.
    pub fn batch(&self, indices: &[usize]) -> Result<(Vec<f32>, Vec<f32>)> {
        check_len(self)?;
        let f = self.features;
        if let Some(&i) = indices.iter().find(|&&i| i >= self.n) {
            return Err(Error::arg(
                "row index",
                format!("row {i} is out of range for a data set of {} rows", self.n),
            ));
        }
        // check_len proved n * f fits, and every index is below n.
        let mut x = Vec::with_capacity(indices.len().saturating_mul(f));
        let k = self.targets_per_row();
        let mut y = Vec::with_capacity(indices.len().saturating_mul(k));
        for &i in indices {
            x.extend_from_slice(&self.x[i * f..(i + 1) * f]);
            y.extend_from_slice(&self.y[i * k..(i + 1) * k]);
        }
        Ok((x, y))
    }

    /// Checks sizes, finiteness of features and targets, and labels against `classes`.
    pub fn validate(&self) -> Result<()> {
        if self.n == 0 {
            return Err(Error::arg("dataset", "it is empty (0 rows)"));
        }
        if self.features == 0 {
            return Err(Error::arg("dataset", "rows have 0 features"));
        }
        check_len(self)?;
        if let Some((c, h, w)) = self.image {
            let values = c.checked_mul(h).and_then(|v| v.checked_mul(w));
            if values != Some(self.features) {
                let held = values.map_or("more than usize::MAX".to_string(), |v| v.to_string());
                return Err(Error::shape(
                    "dataset",
                    format!(
                        "image shape {c}x{h}x{w} holds {held} values, rows have {} features",
                        self.features
                    ),
                ));
            }
        }
        for (i, row) in self.x.chunks_exact(self.features).enumerate() {
            if let Some(j) = row.iter().position(|v| !v.is_finite()) {
                return Err(Error::arg(
                    "dataset",
                    format!("row {i}, feature {j} is {} (0-based)", row[j]),
                ));
            }
        }
        for (i, &label) in self.y.iter().enumerate() {
            if self.classes == 0 {
                if !label.is_finite() {
                    return Err(Error::arg(
                        "dataset",
                        format!("row {i} has target {label} (0-based)"),
                    ));
                }
            } else if class_of(label, self.classes).is_none() {
                return Err(Error::arg(
                    "dataset",
                    format!(
                        "row {i} has label {label}, not a class id in 0..{} (0-based row)",
                        self.classes
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The class index of `label` if it is an integer in `0..classes`.
fn class_of(label: f32, classes: usize) -> Option<usize> {
    if label >= 0.0 && label.fract() == 0.0 && (label as usize) < classes {
        Some(label as usize)
    } else {
        None
    }
}

/// The embedded 8x8 handwritten digits set (1797 rows, 64 features 0..16, 10 classes;
/// BSD-3-Clause, see data/digits/README.md), parsed from text built into the library.
pub fn digits() -> Result<Dataset> {
    let text = include_str!("../../data/digits/digits.csv");
    let mut d = csv::parse(text, "embedded digits.csv", None, Some(true))?;
    d.image = Some((1, 8, 8));
    Ok(d)
}
