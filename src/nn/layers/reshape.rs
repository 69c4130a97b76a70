//! Reshape: any sample shape to another with as many values (e.g. [784] -> [1, 28, 28]).

use std::sync::Arc;

use super::flatten::Copy;
use super::step::Step;
use super::{LayerDef, Slots};
use crate::error::{Error, Result};
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::{check, Field, Invalid};

/// The reshape layer, to this sample shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Reshape(pub Vec<usize>);

impl Reshape {
    /// A `reshape = [..]` entry's shape.
    pub(crate) fn from_entry(
        to: &[usize],
        field: Field<'_>,
    ) -> std::result::Result<Vec<usize>, Invalid> {
        check(
            !to.is_empty() && !to.contains(&0),
            &field("reshape"),
            || "needs at least one dimension, none of them 0".into(),
        )?;
        Ok(to.to_vec())
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

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(Copy))
    }

    fn entry(&self) -> LayerSpec {
        LayerSpec {
            reshape: Some(self.0.clone()),
            ..LayerSpec::default()
        }
    }
}
