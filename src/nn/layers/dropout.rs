//! Inverted dropout: on in training, a copy otherwise; the mask follows the step's seed,
//! so the backward redraws it instead of storing it.

use std::sync::Arc;

use super::step::{Backward, Forward, Pass, Step};
use super::{LayerDef, Slots};
use crate::error::{Error, Result};
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::{check, Field, Invalid};
use crate::ops::dropout::dropout_into;

/// Dropout with this rate, in [0, 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout(pub f32);

impl Dropout {
    /// The `dropout = RATE` entry of a model file, if this is one.
    pub(crate) fn from_entry(
        spec: &LayerSpec,
        field: Field<'_>,
    ) -> std::result::Result<Option<Dropout>, Invalid> {
        let Some(rate) = spec.dropout else {
            return Ok(None);
        };
        check(spec.activation.is_none(), &field("activation"), || {
            "a dropout layer has no activation: give it its own [[layers]]".into()
        })?;
        check((0.0..1.0).contains(&rate), &field("dropout"), || {
            format!("rate {rate} is not in [0, 1)")
        })?;
        Ok(Some(Dropout(rate)))
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

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(*self))
    }

    fn entry(&self) -> LayerSpec {
        LayerSpec {
            dropout: Some(self.0),
            ..LayerSpec::default()
        }
    }

    fn describe(&self) -> String {
        format!("dropout {}", self.0)
    }
}

impl Step for Dropout {
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
