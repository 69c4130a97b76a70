//! LSTM over [steps, features] samples, PyTorch's gates (i, f, g, o) and weight names.

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

/// The LSTM layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lstm(pub Recurrent);

impl From<Recurrent> for Lstm {
    fn from(r: Recurrent) -> Lstm {
        Lstm(r)
    }
}

impl FromEntry for Lstm {
    const KEY: Option<&'static str> = Some("lstm");
    const KEYS: &'static [&'static str] = KEYS;

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        Recurrent::from_entry(e, "lstm").map(Layer::Lstm)
    }
}

impl LayerDef for Lstm {
    fn kind(&self) -> &'static str {
        "lstm"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        self.0.output_shape(Cell::Lstm, name, input)
    }

    fn params(&self, input: &[usize], _output: &[usize]) -> Vec<ParamSpec> {
        self.0.params(Cell::Lstm, input)
    }

    fn lower(&self, slots: &Slots) -> Result<Arc<dyn Step>> {
        self.0.lower(Cell::Lstm, slots)
    }

    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        self.0.onnx(Cell::Lstm, cx)
    }

    fn entry(&self) -> LayerSpec {
        self.0.entry("lstm")
    }

    fn describe(&self) -> String {
        format!("lstm {}", self.0.units)
    }
}
