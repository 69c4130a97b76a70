//! Inverted dropout: on in training, a copy otherwise; the mask follows the step's seed,
//! so the backward redraws it instead of storing it.

use std::sync::Arc;

use super::step::{Backward, Forward, Pass, Step};
use super::{FromEntry, Layer, LayerDef, Slots};
use crate::error::{Error, Result};
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::ops::dropout::dropout_into;
use crate::nn::onnx::Emit;

/// Dropout with this rate, in [0, 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout(pub f32);

impl From<f32> for Dropout {
    fn from(rate: f32) -> Dropout {
        Dropout(rate)
    }
}

impl FromEntry for Dropout {
    const KEY: Option<&'static str> = Some("dropout");
    const ACTIVATION_AFTER: bool = false;

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        let rate = e.f32("dropout")?.unwrap_or(0.0);
        e.check((0.0..1.0).contains(&rate), "dropout", || {
            format!("rate {rate} is not in [0, 1)")
        })?;
        Ok(Layer::Dropout(rate))
    }
}

impl LayerDef for Dropout {
    fn kind(&self) -> &'static str {
        "dropout"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        let rate = self.0;
        if !(0.0..1.0).contains(&rate) {
            return Err(Error::arg(
                format!("{name} rate"),
                format!("{rate} is not in [0, 1)"),
            ));
        }
        Ok(input.to_vec())
    }

    /// Dropout does nothing at inference.
    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        cx.pass_through()
    }

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(*self))
    }

    fn entry(&self) -> LayerSpec {
        LayerSpec::new("dropout", self.0)
    }

    fn describe(&self) -> String {
        format!("dropout {}", self.0)
    }
}

impl Step for Dropout {
    /// Row by row: decoding runs it on the new positions alone.
    fn incremental(&self, _inputs: usize) -> bool {
        true
    }

    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        match cx.pass {
            Pass::Train | Pass::ProbeTrain => dropout_into(cx.x, self.0, cx.seed, cx.y),
            Pass::Probe | Pass::Infer => cx.y.copy_from(cx.x),
        }
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        match cx.dropout {
            true => dropout_into(cx.dy, self.0, cx.seed, cx.dx),
            false => cx.dx.copy_from(cx.dy),
        }
    }
}
