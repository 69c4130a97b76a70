//! Batch normalisation per feature of [features] samples (BatchNorm1d) or per channel of
//! [c, h, w] ones (BatchNorm2d); gamma and beta are `weight` and `bias`, the running
//! statistics `running_mean` and `running_var`, as in PyTorch's state_dict.

use std::sync::Arc;

use super::step::{Backward, Forward, Pass, Scratch, Step};
use super::{affine_params, norm_channels, FromEntry, Layer, LayerDef, ParamSpec, Slots};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::ops::batch_norm::{BatchNorm, NormStats, RunningStats};
use crate::tensor::Tensor;
use crate::nn::onnx::{Attr, Emit};

/// The batch normalisation layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormLayer(pub BatchNorm);

impl From<BatchNorm> for BatchNormLayer {
    fn from(bn: BatchNorm) -> BatchNormLayer {
        BatchNormLayer(bn)
    }
}

impl FromEntry for BatchNormLayer {
    const KEY: Option<&'static str> = Some("batch_norm");
    const KEYS: &'static [&'static str] = &["momentum", "eps"];

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        e.flag("batch_norm")?;
        let eps_ok = |v: f32| v.is_finite() && v >= 0.0;
        let eps = e.f32_where("eps", eps_ok, "a finite value >= 0")?;
        let momentum_ok = |v: f32| (0.0..=1.0).contains(&v);
        let momentum = e.f32_where("momentum", momentum_ok, "in [0, 1]")?;
        let default = BatchNorm::default();
        Ok(Layer::BatchNorm(BatchNorm {
            eps: eps.unwrap_or(default.eps),
            momentum: momentum.unwrap_or(default.momentum),
        }))
    }
}

impl LayerDef for BatchNormLayer {
    fn kind(&self) -> &'static str {
        "batch_normalization"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        crate::ops::check_eps(name, self.0.eps)?;
        if !(0.0..=1.0).contains(&self.0.momentum) {
            return Err(Error::arg(
                format!("{name} momentum"),
                format!("{} is not in [0, 1]", self.0.momentum),
            ));
        }
        Ok(input.to_vec())
    }

    fn params(&self, _input: &[usize], output: &[usize]) -> Vec<ParamSpec> {
        affine_params(norm_channels(output))
    }

    fn buffer_channels(&self, output: &[usize]) -> Option<usize> {
        Some(norm_channels(output))
    }

    /// BatchNormalization (inference: running statistics) over channels of [c, h, w]
    /// samples or over features of flat ones (any other shape viewed flat).
    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        let [mean, var] = cx.buffers()?;
        let rest = [cx.param(0)?.to_string(), cx.param(1)?.to_string(), mean, var];
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        let attrs = vec![("epsilon", Attr::Float(self.0.eps))];
        if cx.shape.len() == 3 {
            let x = cx.input(0)?.to_string();
            let inputs: Vec<&str> = std::iter::once(x.as_str()).chain(rest).collect();
            cx.finish("BatchNormalization", &inputs, attrs);
            return Ok(());
        }
        cx.on_rows("BatchNormalization", &rest, attrs)
    }

    fn lower(&self, slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(BatchNormStep {
            gamma: slots.param(0)?,
            beta: slots.param(1)?,
            running: slots.buffer()?,
            op: self.0,
        }))
    }

    fn entry(&self) -> LayerSpec {
        let default = BatchNorm::default();
        LayerSpec::new("batch_norm", true)
            .with_some(
                "momentum",
                (self.0.momentum != default.momentum).then_some(self.0.momentum),
            )
            .with_some("eps", (self.0.eps != default.eps).then_some(self.0.eps))
    }
}

/// The planned batch norm; `running` indexes the model's buffers.
#[derive(Clone, Copy, Debug, PartialEq)]
struct BatchNormStep {
    gamma: usize,
    beta: usize,
    running: usize,
    op: BatchNorm,
}

impl Step for BatchNormStep {
    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        let saved = cx.scratch.norm_mut()?;
        let (g, b) = (&cx.params[self.gamma].value, &cx.params[self.beta].value);
        let stats = cx
            .buffers
            .get_mut(self.running)
            .ok_or_else(|| Error::arg("model", "no running statistics"))?;
        let (x, y, op) = (cx.x, cx.y, self.op);
        match cx.pass {
            Pass::Infer => op.forward_eval_into(x, g, b, &stats.running, y),
            Pass::Train => {
                check_batch(&stats.prefix, x)?;
                op.forward_train_into(x, g, b, &mut stats.running, saved, y)
            }
            Pass::Probe | Pass::ProbeTrain => {
                check_batch(&stats.prefix, x)?;
                // Batch statistics as in training, but the model's running ones stay.
                let mut scratch = RunningStats::new(&x.device(), g.len())?;
                op.forward_train_into(x, g, b, &mut scratch, saved, y)
            }
        }
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        let saved = cx.scratch.norm_mut()?;
        let (value, dgamma, dbeta) = super::affine_grads(cx.params, self.gamma, self.beta)?;
        BatchNorm::backward_into(cx.x, cx.dy, value, saved, cx.dx, dgamma, dbeta)
    }

    fn scratch(&self, device: &Device, y: &[usize]) -> Result<Scratch> {
        Ok(Scratch {
            tensors: Vec::new(),
            norm: Some(NormStats::new(device, norm_channels(&y[1..]))?),
        })
    }

    fn has_params(&self) -> bool {
        true
    }

    fn input_grad_always(&self) -> bool {
        true
    }
}

/// Training statistics need two values per channel: a typed error naming the layer, not
/// the op's, when a batch of one row leaves one.
fn check_batch(layer: &str, x: &Tensor) -> Result<()> {
    let per_channel = match x.shape() {
        [n, _, h, w] => n * h * w,
        s => s.first().copied().unwrap_or(0),
    };
    if per_channel < 2 {
        return Err(Error::arg(
            format!("layer {layer} (batch_normalization)"),
            format!(
                "a training batch of shape {:?} has one value per channel; batch norm \
                 trains on at least 2 (use a batch size over 1, and avoid a last batch of 1 row)",
                x.shape()
            ),
        ));
    }
    Ok(())
}
