//! Dense (fully connected): `y = x W^T + b`, W stored [units, inputs] as PyTorch does.
//! Its matmul takes the bias and a following activation in its epilogue (the planner's
//! activation fold), and the fused classifier head can run it with the loss.

use std::sync::Arc;

use super::step::{Backward, Forward, Pattern, Scratch, Step};
use super::{FromEntry, Layer, LayerDef, ParamInit, ParamSpec, Slots};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::{init_name, LayerSpec};
use crate::io::model_file::validation::Invalid;
use crate::nn::init::Init;
use crate::nn::model::Param;
use crate::ops::dense_grad::{dense_grad_into, DenseGrad};
use crate::ops::matmul::Gemm;
use crate::ops::Activation;
use crate::tensor::Tensor;
use crate::nn::onnx::{Attr, Emit};

/// A fully connected layer: `y = x W^T + b`, W stored [units, inputs] as PyTorch does.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    /// Input width; `None` takes the previous layer's output.
    pub inputs: Option<usize>,
    /// Output width.
    pub units: usize,
    /// Whether the layer has a bias.
    pub use_bias: bool,
    /// Initializer of the weight.
    pub kernel_init: Init,
    /// Initializer of the bias.
    pub bias_init: Init,
    /// L1 penalty on the weight (adds l1 * sum|w| to the loss).
    pub l1: f32,
    /// L2 penalty on the weight (adds l2 * sum w^2 to the loss, as Keras).
    pub l2: f32,
}

impl Dense {
    /// A layer of `units` outputs taking its width from the previous layer.
    pub fn new(units: usize) -> Dense {
        Dense {
            inputs: None,
            units,
            use_bias: true,
            kernel_init: Init::GlorotUniform,
            bias_init: Init::Zeros,
            l1: 0.0,
            l2: 0.0,
        }
    }

    /// A layer with an explicit input width, checked when the model is built.
    pub fn with_inputs(inputs: usize, units: usize) -> Dense {
        Dense {
            inputs: Some(inputs),
            ..Dense::new(units)
        }
    }

    /// Without a bias.
    pub fn no_bias(self) -> Dense {
        Dense {
            use_bias: false,
            ..self
        }
    }

    /// With a weight initializer.
    pub fn kernel_init(self, init: Init) -> Dense {
        Dense {
            kernel_init: init,
            ..self
        }
    }

    /// With a bias initializer.
    pub fn bias_init(self, init: Init) -> Dense {
        Dense {
            bias_init: init,
            ..self
        }
    }

    /// With L1 and L2 penalties on the weight.
    pub fn regularize(self, l1: f32, l2: f32) -> Dense {
        Dense { l1, l2, ..self }
    }

    /// The width of flat samples or of each position of [T, D] sequences (the layer acts
    /// on the last axis, as nn.Linear), or an error asking an image for a flatten.
    fn width(name: &str, input: &[usize]) -> Result<usize> {
        match input {
            [w] | [_, w] => Ok(*w),
            s => Err(Error::shape(
                name,
                format!("needs flat samples or [positions, features] sequences, got {s:?}: add .flatten() first"),
            )),
        }
    }
}

impl FromEntry for Dense {
    const KEY: Option<&'static str> = Some("dense");
    const KEYS: &'static [&'static str] =
        &["inputs", "use_bias", "kernel_init", "bias_init", "l1", "l2"];
    const JOINS_ACTIVATION: bool = true;

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        let units = e.usize("dense")?.unwrap_or(0);
        e.check(units > 0, "dense", || "must be at least 1 unit".into())?;
        let inputs = e.usize("inputs")?;
        if let Some(inputs) = inputs.filter(|_| e.width > 0) {
            e.check(inputs == e.width, "inputs", || {
                format!(
                    "declares {inputs} inputs but the previous layer gives {}",
                    e.width
                )
            })?;
        }
        let penalty = |v: f32| v.is_finite() && v >= 0.0;
        let l1 = e.f32_where("l1", penalty, "a finite value >= 0")?;
        let l2 = e.f32_where("l2", penalty, "a finite value >= 0")?;
        Ok(Layer::Dense(Dense {
            inputs,
            units,
            use_bias: e.bool("use_bias")?.unwrap_or(true),
            kernel_init: e.init("kernel_init", Init::GlorotUniform)?,
            bias_init: e.init("bias_init", Init::Zeros)?,
            l1: l1.unwrap_or(0.0),
            l2: l2.unwrap_or(0.0),
        }))
    }
}

impl LayerDef for Dense {
    fn kind(&self) -> &'static str {
        "dense"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        let width = Dense::width(name, input)?;
        if let Some(inputs) = self.inputs {
            if inputs != width {
                return Err(Error::shape(
                    name,
                    format!("declared {inputs} inputs but the previous layer gives {width}"),
                ));
            }
        }
        if self.units == 0 {
            return Err(Error::arg(format!("{name} units"), "must be at least 1"));
        }
        if self.units.checked_mul(width).is_none() {
            return Err(Error::arg(
                format!("{name} units"),
                format!(
                    "{} units x {width} inputs is more weights than fit in usize",
                    self.units
                ),
            ));
        }
        for (which, init) in [
            ("kernel_init", self.kernel_init),
            ("bias_init", self.bias_init),
        ] {
            super::check_init(name, which, init)?;
        }
        let mut out = input.to_vec();
        out.pop();
        out.push(self.units);
        Ok(out)
    }

    fn params(&self, input: &[usize], _output: &[usize]) -> Vec<ParamSpec> {
        let (width, units) = (input.last().copied().unwrap_or(0), self.units);
        let weight = ParamSpec {
            l1: self.l1,
            l2: self.l2,
            checked: true,
            ..ParamSpec::new(
                "weight",
                &[units, width],
                ParamInit::sample(self.kernel_init, width, units, 0),
            )
        };
        let bias = ParamInit::sample(self.bias_init, width, units, 0xb1a5);
        let bias = self
            .use_bias
            .then(|| ParamSpec::new("bias", &[units], bias));
        std::iter::once(weight).chain(bias).collect()
    }

    /// Gemm with W as stored ([units, inputs], hence transB).
    /// On [T, D] sequences: MatMul by W^T (Gemm takes 2-D inputs only), then the bias.
    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        if cx.shape.len() > 1 {
            let (x, w) = (cx.input(0)?.to_string(), cx.param(0)?.to_string());
            let perm = vec![("perm", Attr::Ints(vec![1, 0]))];
            let wt = cx.step("Transpose", &[&w], "weight_t", perm);
            match cx.params.get(1).cloned() {
                Some(b) => {
                    let xw = cx.step("MatMul", &[&x, &wt], "matmul", Vec::new());
                    cx.finish("Add", &[&xw, &b], Vec::new());
                }
                None => cx.finish("MatMul", &[&x, &wt], Vec::new()),
            }
            return Ok(());
        }
        let params = cx.params.clone();
        cx.apply("Gemm", &params, vec![("transB", Attr::Int(1))])
    }

    fn lower(&self, slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(DenseStep {
            w: slots.param(0)?,
            b: if self.use_bias {
                Some(slots.param(1)?)
            } else {
                None
            },
            act: Activation::Identity,
        }))
    }

    fn entry(&self) -> LayerSpec {
        let init = |init: Init, default: Init| (init != default).then(|| init_name(init));
        LayerSpec::new("dense", self.units)
            .with_some("inputs", self.inputs)
            .with_some("use_bias", (!self.use_bias).then_some(false))
            .with_some("kernel_init", init(self.kernel_init, Init::GlorotUniform))
            .with_some("bias_init", init(self.bias_init, Init::Zeros))
            .with_some("l1", (self.l1 != 0.0).then_some(self.l1))
            .with_some("l2", (self.l2 != 0.0).then_some(self.l2))
    }

    fn describe(&self) -> String {
        format!("dense {}", self.units)
    }
}

/// The planned dense step: matmul with W^T, bias and a fused activation whose
/// derivative follows from its output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct DenseStep {
    pub w: usize,
    pub b: Option<usize>,
    pub act: Activation,
}

/// The dZ [batch, units] and dZ^T [units, batch] a dense step keeps in its scratch.
pub(crate) fn dz_pair(scratch: &mut Scratch) -> Result<(&mut Tensor, &mut Tensor)> {
    match scratch.tensors.as_mut_slice() {
        [dz, dzt, ..] => Ok((dz, dzt)),
        _ => Err(Error::arg("workspace", "no dZ for a dense layer")),
    }
}

impl Step for DenseStep {
    /// Row by row: decoding runs it on the new positions alone.
    fn incremental(&self, _inputs: usize) -> bool {
        true
    }

    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        let bias = self.b.map(|b| &cx.params[b].value);
        Gemm::nt()
            .with_act(self.act)
            .run_into(cx.x, &cx.params[self.w].value, bias, cx.y)
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        let (dz, dzt) = dz_pair(cx.scratch)?;
        // dZ = dY f'(Y), dZ^T and db = column sums of dZ in one dispatch; then
        // dW = (dZ^T) X and dX = dZ W. dZ^T is made explicitly because the A^T
        // forms of the matmul run several times slower on lavapipe (and leak
        // there per dispatch).
        let (weight, bias) = split_pair(cx.params, self.w, self.b)?;
        if !cx.ready {
            let out = DenseGrad {
                dz,
                dzt,
                db: bias.map(|p| &mut p.grad),
            };
            dense_grad_into(self.act, cx.y, cx.dy, out)?;
        }
        let (dz, dzt) = (&*dz, &*dzt);
        Gemm::nn().run_into(dzt, cx.x, None, &mut weight.grad)?;
        if !cx.first {
            Gemm::nn().run_into(dz, &weight.value, None, cx.dx)?;
        }
        Ok(())
    }

    fn scratch(&self, device: &Device, y: &[usize]) -> Result<Scratch> {
        // [batch, T, units] sequences are batch * T rows of units (Tensor::dims2).
        let (batch, units) = match *y {
            [batch, units] => (batch, units),
            [batch, t, units] => (batch * t, units),
            ref s => {
                return Err(Error::shape(
                    "dense workspace",
                    format!("{s:?} is not [batch, units] or [batch, positions, units]"),
                ))
            }
        };
        Ok(Scratch {
            tensors: vec![
                Tensor::zeros(device, y)?,
                Tensor::zeros(device, &[units, batch])?,
            ],
            norm: None,
        })
    }

    fn has_params(&self) -> bool {
        true
    }

    fn pattern(&self) -> Pattern {
        Pattern::Dense {
            w: self.w,
            b: self.b,
            act: self.act,
        }
    }
}

/// A layer's weight and optional bias, both mutable (the bias comes after the weight).
fn split_pair(
    params: &mut [Param],
    w: usize,
    b: Option<usize>,
) -> Result<(&mut Param, Option<&mut Param>)> {
    match b {
        None => params
            .get_mut(w)
            .map(|p| (p, None))
            .ok_or_else(|| Error::arg("model", "no dense weight")),
        Some(b) if w < b && b < params.len() => {
            let (lo, hi) = params.split_at_mut(b);
            Ok((&mut lo[w], hi.first_mut()))
        }
        Some(_) => Err(Error::arg("model", "a bias stored before its weight")),
    }
}
