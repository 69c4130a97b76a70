//! GRU over [steps, features] samples, PyTorch's gates (r, z, n; r scales W_hn h + b_hn)
//! and weight names.

use std::sync::Arc;

use super::recurrent::{Recurrent, KEYS};
use super::step::Step;
use super::{FromEntry, Layer, LayerDef, ParamSpec, Slots};
use crate::error::Result;
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::nn::onnx::Emit;
use crate::ops::rnn_cell::Cell;

/// The GRU layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gru(pub Recurrent);

impl From<Recurrent> for Gru {
    fn from(r: Recurrent) -> Gru {
        Gru(r)
    }
}

impl FromEntry for Gru {
    const KEY: Option<&'static str> = Some("gru");
    const KEYS: &'static [&'static str] = KEYS;

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        Recurrent::from_entry(e, "gru").map(Layer::Gru)
    }
}

impl LayerDef for Gru {
    fn kind(&self) -> &'static str {
        "gru"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        self.0.output_shape(Cell::Gru, name, input)
    }

    fn params(&self, input: &[usize], _output: &[usize]) -> Vec<ParamSpec> {
        self.0.params(Cell::Gru, input)
    }

    fn lower(&self, slots: &Slots) -> Result<Arc<dyn Step>> {
        self.0.lower(Cell::Gru, slots)
    }

    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        self.0.onnx(Cell::Gru, cx)
    }

    fn entry(&self) -> LayerSpec {
        self.0.entry("gru")
    }

    fn describe(&self) -> String {
        format!("gru {}", self.0.units)
    }
}
