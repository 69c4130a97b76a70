//! Reshape: any sample shape to another with as many values (e.g. [784] -> [1, 28, 28]).

use std::sync::Arc;

use super::flatten::Copy;
use super::step::Step;
use super::{FromEntry, Layer, LayerDef, Slots};
use crate::error::{Error, Result};
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::nn::onnx::Emit;

/// The reshape layer, to this sample shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Reshape(pub Vec<usize>);

impl From<Vec<usize>> for Reshape {
    fn from(to: Vec<usize>) -> Reshape {
        Reshape(to)
    }
}

impl FromEntry for Reshape {
    const KEY: Option<&'static str> = Some("reshape");

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        let to = e.usizes("reshape")?.unwrap_or_default();
        e.check(!to.is_empty() && !to.contains(&0), "reshape", || {
            "needs at least one dimension, none of them 0".into()
        })?;
        Ok(Layer::Reshape(to))
    }
}

impl LayerDef for Reshape {
    fn kind(&self) -> &'static str {
        "reshape"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        let values = |shape: &[usize]| shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let to = &self.0;
        if to.is_empty() || to.contains(&0) || values(to) != values(input) {
            return Err(Error::shape(
                name,
                format!("cannot reshape {input:?} samples to {to:?}: the number of values differs"),
            ));
        }
        Ok(to.clone())
    }

    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        let shape = cx.shape.clone();
        let dims = cx.graph.batch_shape(&format!("{}/shape", cx.name), &shape);
        cx.apply("Reshape", &[dims], Vec::new())
    }

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(Copy))
    }

    fn entry(&self) -> LayerSpec {
        LayerSpec::new("reshape", self.0.clone())
    }
}
