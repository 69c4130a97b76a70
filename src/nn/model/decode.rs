//! Incremental decoding of a causal sequence model: after the prompt, each new position
//! runs the plan on that position alone. Row-wise steps (dense, layer norm, activations,
//! merges, dropout in inference, embeddings) run on the new rows, a positional embedding
//! adds the rows of their positions, and causal self-attention appends each new
//! position's projections to a cache of the earlier ones (one per attention step, sized
//! to the context) and attends over it. The steps say what they can do
//! ([`Step::incremental`](crate::nn::layers::Step::incremental)); a model with any other
//! step has no decoder, and its callers run whole windows instead.

use super::Model;
use crate::error::{Error, Result};
use crate::nn::layers::{Forward, Inputs, Pass, Scratch};
use crate::tensor::Tensor;

/// An incremental decoding in progress: how many positions are decoded and the caches
/// that hold them (made by [`Model::decoder`], run by [`Model::decode`]).
pub struct Decoder {
    context: usize,
    len: usize,
    /// Per stage of the plan: its cache, if it keeps one.
    caches: Vec<Option<Tensor>>,
    /// Activations and step scratch per count of new positions (a prompt's, then 1).
    runs: Vec<(usize, Run)>,
}

/// The activations and scratch of one count of new positions.
struct Run {
    acts: Vec<Tensor>,
    scratch: Vec<Scratch>,
}

impl Decoder {
    /// Positions decoded so far (held in the caches).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is decoded yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions the caches hold: the model's context.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Forgets every decoded position: the next [`Model::decode`] starts at position 0.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl Model {
    /// A decoder for this model if it decodes incrementally: one input of `[context]` token
    /// ids, one output, every stage's output `[context, ..]` and every step able to run on
    /// new positions alone (causal self-attention, row-wise and positional steps). `None`
    /// for any other model (recurrent, non-causal, reshaping): it runs whole windows.
    pub fn decoder(&self) -> Result<Option<Decoder>> {
        let &[context] = self.input_shape.as_slice() else {
            return Ok(None);
        };
        let single = self.inputs.len() == 1
            && self.input_acts == 1
            && self.outputs.len() == 1
            && self.outputs.first().map(|o| o.1) == Some(self.stages.len());
        let sequences = self
            .stage_shapes
            .iter()
            .all(|s| s.len() >= 2 && s.first() == Some(&context));
        let steps = self
            .stages
            .iter()
            .all(|s| s.step.incremental(s.inputs.len()));
        if context == 0 || self.stages.is_empty() || !(single && sequences && steps) {
            return Ok(None);
        }
        let caches = self
            .stages
            .iter()
            .zip(&self.stage_shapes)
            .map(|(stage, shape)| {
                let y: Vec<usize> = std::iter::once(1).chain(shape.iter().copied()).collect();
                stage.step.cache(&self.device, &y)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Decoder {
            context,
            len: 0,
            caches,
            runs: Vec::new(),
        }))
    }

    /// Runs the token ids of the next positions (`decoder.len()..`, at most up to the
    /// context) through the plan, appending them to the caches; returns the output of the
    /// new positions, `[1, ids.len(), ..]`, on the device.
    pub fn decode<'d>(&mut self, decoder: &'d mut Decoder, ids: &[f32]) -> Result<&'d Tensor> {
        let (at, n) = (decoder.len, ids.len());
        if n == 0 || at + n > decoder.context {
            return Err(Error::arg(
                "decode",
                format!(
                    "{n} new positions after {at}: at least 1, and at most the context {} in all",
                    decoder.context
                ),
            ));
        }
        if decoder.caches.len() != self.stages.len() {
            return Err(Error::arg(
                "decode",
                "the decoder was made for another model",
            ));
        }
        let k = match decoder.runs.iter().position(|(m, _)| *m == n) {
            Some(k) => k,
            None => {
                // A prompt's count, then 1 for each token: keep a few.
                if decoder.runs.len() >= 3 {
                    decoder.runs.retain(|(m, _)| *m == 1);
                }
                decoder.runs.push((n, self.run(n)?));
                decoder.runs.len() - 1
            }
        };
        let run = &mut decoder.runs[k].1;
        run.acts[0].write(ids)?;
        let parts = self
            .stages
            .iter()
            .zip(run.scratch.iter_mut())
            .zip(decoder.caches.iter_mut());
        for (i, ((stage, scratch), cache)) in parts.enumerate() {
            let (before, after) = run.acts.split_at_mut(i + 1);
            let inputs = Inputs {
                acts: before,
                wires: &stage.inputs,
            };
            let cx = Forward {
                x: inputs.get(0)?,
                inputs,
                y: &mut after[0],
                params: &self.params,
                buffers: &mut self.buffers,
                scratch,
                pass: Pass::Infer,
                seed: 0,
            };
            stage.step.forward_at(cx, at, cache.as_mut())?;
        }
        decoder.len += n;
        run.acts
            .last()
            .ok_or_else(|| Error::arg("decode", "a plan without steps"))
    }

    /// Activations `[1, n, ..]` and scratch for `n` new positions.
    fn run(&self, n: usize) -> Result<Run> {
        let shapes: Vec<Vec<usize>> = std::iter::once(&self.input_shape)
            .chain(&self.stage_shapes)
            .map(|s| {
                [1, n]
                    .into_iter()
                    .chain(s.iter().skip(1).copied())
                    .collect()
            })
            .collect();
        let acts = shapes
            .iter()
            .map(|s| Tensor::zeros(&self.device, s))
            .collect::<Result<Vec<_>>>()?;
        let scratch = self
            .stages
            .iter()
            .zip(&shapes[1..])
            .map(|(stage, shape)| stage.step.scratch(&self.device, shape))
            .collect::<Result<Vec<_>>>()?;
        Ok(Run { acts, scratch })
    }
}
