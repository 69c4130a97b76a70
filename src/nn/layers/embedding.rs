//! Token embedding (`nn.Embedding`): [T] token ids (f32, exact below 2^24) -> [T, dim]
//! rows of a learned `weight` [vocab, dim]. Its backward adds each position's gradient
//! into its token's row (`ops::embedding`: the tokens sorted by row in the step's
//! scratch, then summed in token order, deterministic); the ids have no gradient.

use std::sync::Arc;

use super::step::{Backward, Forward, Scratch, Step};
use super::{FromEntry, Layer, LayerDef, ParamInit, ParamSpec, Slots};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::nn::init::Init;
use crate::nn::onnx::{Attr, Emit};
use crate::ops::embedding::{embedding_grad_into, embedding_into, zero_into, TokenSort};

/// A lookup table of `vocab` rows of `dim` values, indexed by token id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embedding {
    /// Token ids run over 0..vocab.
    pub vocab: usize,
    /// Values per token.
    pub dim: usize,
}

impl Embedding {
    /// A table of `vocab` tokens of `dim` values each, drawn from N(0, 1) as PyTorch's.
    pub fn new(vocab: usize, dim: usize) -> Embedding {
        Embedding { vocab, dim }
    }
}

impl FromEntry for Embedding {
    const KEY: Option<&'static str> = Some("embedding");
    const KEYS: &'static [&'static str] = &["dim"];

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        let vocab = e.usize("embedding")?.unwrap_or(0);
        e.check(vocab > 0, "embedding", || "must be at least 1 token".into())?;
        let dim = e.usize("dim")?.unwrap_or(0);
        e.check(dim > 0, "dim", || "must be at least 1 value per token".into())?;
        Ok(Layer::Embedding(Embedding { vocab, dim }))
    }
}

impl LayerDef for Embedding {
    fn kind(&self) -> &'static str {
        "embedding"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        if self.vocab == 0 || self.dim == 0 {
            return Err(Error::arg(
                name,
                format!("a table of {} tokens x {} values is empty", self.vocab, self.dim),
            ));
        }
        if self.vocab > 1 << 24 {
            return Err(Error::arg(
                name,
                format!("{} tokens: ids are f32, exact up to 2^24", self.vocab),
            ));
        }
        match *input {
            [t] if t.checked_mul(self.dim).is_some() && self.vocab.checked_mul(self.dim).is_some() => {
                Ok(vec![t, self.dim])
            }
            ref s => Err(Error::shape(
                name,
                format!("needs [positions] token ids, got {s:?}"),
            )),
        }
    }

    fn params(&self, _input: &[usize], _output: &[usize]) -> Vec<ParamSpec> {
        let init = ParamInit::sample(Init::Normal(0.0, 1.0), self.vocab, self.dim, 0);
        vec![ParamSpec {
            checked: true,
            ..ParamSpec::new("weight", &[self.vocab, self.dim], init)
        }]
    }

    /// Gather of the weight's rows by the ids, cast to int64.
    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        let (x, w) = (cx.input(0)?.to_string(), cx.param(0)?.to_string());
        let ids = cx.step("Cast", &[&x], "ids", vec![("to", Attr::Int(7))]);
        cx.finish("Gather", &[&w, &ids], vec![("axis", Attr::Int(0))]);
        Ok(())
    }

    fn lower(&self, slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(EmbeddingStep {
            w: slots.param(0)?,
            vocab: self.vocab,
        }))
    }

    fn entry(&self) -> LayerSpec {
        LayerSpec::new("embedding", self.vocab).with("dim", self.dim)
    }

    fn describe(&self) -> String {
        format!("embedding {}x{}", self.vocab, self.dim)
    }
}

/// The planned lookup.
#[derive(Clone, Copy, Debug, PartialEq)]
struct EmbeddingStep {
    w: usize,
    vocab: usize,
}

impl Step for EmbeddingStep {
    /// Row by row: decoding runs it on the new positions alone.
    fn incremental(&self, _inputs: usize) -> bool {
        true
    }

    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        embedding_into(cx.x, &cx.params[self.w].value, cx.y)
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        let sort = match cx.scratch.tensors.as_mut_slice() {
            [offsets, positions, ..] => TokenSort { offsets, positions },
            _ => return Err(Error::arg("workspace", "no token sort for an embedding")),
        };
        embedding_grad_into(cx.x, cx.dy, &mut cx.params[self.w].grad, sort)?;
        if !cx.first {
            zero_into(cx.dx)?;
        }
        Ok(())
    }

    fn scratch(&self, device: &Device, y: &[usize]) -> Result<Scratch> {
        // y is [batch, T, dim]: one sorted slot per token.
        let tokens = y.split_last().map_or(0, |(_, lead)| lead.iter().product());
        Ok(Scratch {
            tensors: TokenSort::buffers(device, self.vocab, tokens)?.into(),
            norm: None,
        })
    }

    fn has_params(&self) -> bool {
        true
    }
}
