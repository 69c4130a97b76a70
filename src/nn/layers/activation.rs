//! Pointwise activations (relu, leaky_relu, sigmoid, tanh, gelu, identity). After a dense
//! layer, one whose derivative follows from its output folds into the matmul's epilogue.

use std::sync::Arc;

use super::step::{Backward, Forward, Pattern, Step};
use super::{FromEntry, Layer, LayerDef, Slots};
use crate::error::Result;
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::ops::activation::{activation_backward_into, activation_into};
use crate::ops::Activation;

/// An activation layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Act(pub Activation);

/// The names a model file accepts for `activation`.
pub(crate) const ACTIVATIONS: &str =
    "relu, leaky_relu, sigmoid, tanh, gelu, identity, linear, softmax";

impl Act {
    /// The model-file name of the activation.
    pub fn name(self) -> &'static str {
        match self.0 {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::LeakyRelu(_) => "leaky_relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Gelu => "gelu",
        }
    }
}

/// An activation layer by name (softmax included, a layer of its own kind).
pub(crate) fn parse_activation(name: &str, slope: Option<f32>) -> Option<Layer> {
    Some(match name {
        "relu" => Layer::Activation(Activation::Relu),
        "leaky_relu" => Layer::Activation(Activation::LeakyRelu(slope.unwrap_or(0.01))),
        "sigmoid" => Layer::Activation(Activation::Sigmoid),
        "tanh" => Layer::Activation(Activation::Tanh),
        "gelu" => Layer::Activation(Activation::Gelu),
        "identity" | "linear" => Layer::Activation(Activation::Identity),
        "softmax" => Layer::Softmax,
        _ => return None,
    })
}

impl From<Activation> for Act {
    fn from(a: Activation) -> Act {
        Act(a)
    }
}

impl FromEntry for Act {
    const KEY: Option<&'static str> = Some(super::ACTIVATION_KEY);
    const KEYS: &'static [&'static str] = &["slope"];

    /// The entry's `activation` (and `slope`), or an error listing the known ones.
    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        let name = e.str("activation")?.unwrap_or_default();
        let slope = e.f32("slope")?;
        if slope.is_some() {
            e.check(name == "leaky_relu", "slope", || {
                "only leaky_relu takes a slope".into()
            })?;
            e.f32_where("slope", f32::is_finite, "finite")?;
        }
        parse_activation(name, slope).ok_or_else(|| {
            e.error(
                "activation",
                format!("unknown activation '{name}' (known: {ACTIVATIONS})"),
            )
        })
    }
}

impl LayerDef for Act {
    fn kind(&self) -> &'static str {
        self.name()
    }

    fn output_shape(&self, _name: &str, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }

    fn lower(&self, _slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(ActStep(self.0)))
    }

    fn entry(&self) -> LayerSpec {
        let slope = match self.0 {
            Activation::LeakyRelu(s) => Some(s),
            _ => None,
        };
        LayerSpec::new(super::ACTIVATION_KEY, self.name()).with_some("slope", slope)
    }
}

/// A standalone activation (GELU, or one not after a dense layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ActStep(pub Activation);

impl Step for ActStep {
    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        activation_into(self.0, cx.x, cx.y)
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        activation_backward_into(self.0, cx.x, cx.dy, cx.dx)
    }

    fn pattern(&self) -> Pattern {
        Pattern::Act(self.0)
    }
}
