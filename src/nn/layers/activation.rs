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
use crate::nn::onnx::{Attr, Emit};

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

    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        match self.0 {
            Activation::Identity => cx.pass_through(),
            Activation::Relu => cx.apply("Relu", &[], Vec::new()),
            Activation::LeakyRelu(slope) => {
                cx.apply("LeakyRelu", &[], vec![("alpha", Attr::Float(slope))])
            }
            Activation::Sigmoid => cx.apply("Sigmoid", &[], Vec::new()),
            Activation::Tanh => cx.apply("Tanh", &[], Vec::new()),
            Activation::Gelu => gelu_onnx(cx),
        }
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

/// GELU in its exact form, 0.5 x (1 + erf(x / sqrt 2)), from Erf (opset 9) rather than
/// Gelu, which needs opset 20.
fn gelu_onnx(cx: &mut Emit<'_>) -> Result<()> {
    let x = cx.input(0)?.to_string();
    let name = cx.name.to_string();
    let rsqrt2 = cx.graph.scalar(&format!("{name}/rsqrt2"), std::f32::consts::FRAC_1_SQRT_2);
    let one = cx.graph.scalar(&format!("{name}/one"), 1.0);
    let half = cx.graph.scalar(&format!("{name}/half"), 0.5);
    let scaled = cx.step("Mul", &[&x, &rsqrt2], "scaled", Vec::new());
    let erf = cx.step("Erf", &[&scaled], "erf", Vec::new());
    let cdf2 = cx.step("Add", &[&erf, &one], "cdf2", Vec::new());
    let xcdf2 = cx.step("Mul", &[&x, &cdf2], "xcdf2", Vec::new());
    cx.finish("Mul", &[&xcdf2, &half], Vec::new());
    Ok(())
}

/// A standalone activation (GELU, or one not after a dense layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ActStep(pub Activation);

impl Step for ActStep {
    /// Row by row: decoding runs it on the new positions alone.
    fn incremental(&self, _inputs: usize) -> bool {
        true
    }

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
