//! Several inputs: a multi-input graph takes each row as its inputs' values packed one
//! after the other (declaration order), so that batching, shuffling and the device-side
//! data path stay those of a one-input model. The plan starts with one step per input
//! that copies its columns out of the packed row ([`crate::ops::concat::split_cols_into`]).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::model_file::schema::LayerSpec;
use crate::nn::layers::{Backward, Forward, LayerDef, Slots, Step};
use crate::ops::concat::split_cols_into;

/// One input's columns of the packed row, as a node of the plan.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct InputSlice {
    /// Where its values start in the packed row.
    pub offset: usize,
    /// Its sample shape.
    pub shape: Vec<usize>,
}

impl LayerDef for InputSlice {
    fn kind(&self) -> &'static str {
        "input"
    }

    fn output_shape(&self, _name: &str, _input: &[usize]) -> Result<Vec<usize>> {
        Ok(self.shape.clone())
    }

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(SliceStep {
            offset: self.offset,
        }))
    }

    /// Inputs are declared, not layers: no `[[layers]]` entry.
    fn entry(&self) -> LayerSpec {
        LayerSpec::default()
    }
}

/// The planned slice.
#[derive(Debug)]
struct SliceStep {
    offset: usize,
}

impl Step for SliceStep {
    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        split_cols_into(cx.x, self.offset, cx.y)
    }

    /// Never runs: the packed input's gradient is not wanted.
    fn backward(&self, _cx: Backward<'_>) -> Result<()> {
        Err(Error::arg(
            "model",
            "no gradient flows into the packed inputs",
        ))
    }
}

/// Packs one slice of rows per input into the rows a multi-input model takes: each row
/// holds input 0's values, then input 1's, and so on. `widths` are the inputs' values
/// per row; every input must hold the same number of rows.
pub fn pack(xs: &[&[f32]], widths: &[usize]) -> Result<Vec<f32>> {
    if xs.len() != widths.len() {
        return Err(Error::arg(
            "inputs",
            format!("the model takes {} inputs, got {}", widths.len(), xs.len()),
        ));
    }
    let mut rows = None;
    for (k, (x, &w)) in xs.iter().zip(widths).enumerate() {
        if w == 0 || !x.len().is_multiple_of(w) {
            return Err(Error::shape(
                format!("input {k}"),
                format!("{} values are not whole rows of {w}", x.len()),
            ));
        }
        match rows {
            Some(r) if r != x.len() / w => {
                return Err(Error::shape(
                    format!("input {k}"),
                    format!("has {} rows, input 0 has {r}", x.len() / w),
                ))
            }
            _ => rows = Some(x.len() / w),
        }
    }
    let rows = rows.unwrap_or(0);
    let mut out = crate::tensor::host_vec(rows.saturating_mul(widths.iter().sum()), "inputs")?;
    for r in 0..rows {
        for (x, &w) in xs.iter().zip(widths) {
            out.extend_from_slice(&x[r * w..(r + 1) * w]);
        }
    }
    Ok(out)
}
