//! Autoregressive sampling from a causal language model: the next token from the last
//! position's probabilities, with temperature, top-k and a seed, the context window
//! sliding once the text is longer than the model's.
//!
//! Where the model decodes incrementally (a GPT: causal self-attention, positional
//! embeddings and row-wise layers, see [`Model::decoder`](crate::nn::Model::decoder)),
//! the prompt runs once and each new token then runs the model on its one position,
//! each attention layer keeping the keys and values of the earlier positions in a cache
//! on the device. Other models (recurrent, non-causal) run the whole window for every
//! token, as does [`Decoding::FullWindow`]. Past the context the window slides: learned
//! positions make every token's keys and values depend on its place in the window, so
//! once the window moves no cached row is valid any more; each token then runs the
//! whole window of the last `context` tokens, exactly as without a cache (a ring of
//! cached rows would give other outputs). Both paths give the same logits, and one
//! readback per token.

use super::Trainer;
use crate::error::{Error, Result};
use crate::nn::model::planner::Output;
use crate::nn::model::{Decoder, Pass};

/// How [`Trainer::generate`] picks each next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Divides the logits: below 1 sharper, above 1 flatter; must be positive.
    pub temperature: f32,
    /// Sample only among the `k` most likely tokens (`None`: all of them).
    pub top_k: Option<usize>,
    /// Seeds the sampler: one seed, one text.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Sampling {
        Sampling {
            temperature: 1.0,
            top_k: None,
            seed: 0,
        }
    }
}

impl Sampling {
    /// Typed errors for a temperature that is not positive and finite, or a top-k of 0.
    pub fn check(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::arg(
                "temperature",
                format!("{} must be positive", self.temperature),
            ));
        }
        if self.top_k == Some(0) {
            return Err(Error::arg("top-k", "must be at least 1"));
        }
        Ok(())
    }
}

/// How a generation runs the model for each new token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Decoding {
    /// Key/value caches where the model decodes incrementally, whole windows otherwise.
    #[default]
    Auto,
    /// The whole window for every token (the path without caches).
    FullWindow,
}

/// A text being generated: the tokens so far and, where the model allows it, its
/// key/value caches ([`Trainer::generation`]).
pub struct Generation<'a> {
    trainer: &'a mut Trainer,
    context: usize,
    vocab: usize,
    tokens: Vec<u32>,
    decoder: Option<Decoder>,
    /// The next token's logits, until a token is pushed.
    last: Option<Vec<f32>>,
}

impl Trainer {
    /// Continues `prompt` (token ids) by `length` sampled tokens and returns only the new
    /// ones. The model must be causal, with `[context]` ids in and `[context, vocab]`
    /// out: a prompt shorter than the context is padded after its end (which a causal
    /// model's earlier positions never see), a longer one keeps its last `context` ids.
    /// Uses key/value caches where the model allows it ([`Decoding::Auto`]).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        length: usize,
        sampling: &Sampling,
    ) -> Result<Vec<u32>> {
        self.generate_with(prompt, length, sampling, Decoding::Auto)
    }

    /// [`Trainer::generate`] with the decoding chosen: `FullWindow` runs the whole window
    /// for every token, the baseline the cache is measured and tested against.
    pub fn generate_with(
        &mut self,
        prompt: &[u32],
        length: usize,
        sampling: &Sampling,
        decoding: Decoding,
    ) -> Result<Vec<u32>> {
        sampling.check()?;
        let mut g = self.generation(prompt, decoding)?;
        let mut rng = SplitMix(sampling.seed);
        for _ in 0..length {
            let probs = g.next_probs()?;
            g.push(sample(&probs, sampling, rng.next_f64()) as u32)?;
        }
        Ok(g.tokens[prompt.len()..].to_vec())
    }

    /// Starts a generation after `prompt`: read the next token's logits or
    /// probabilities, push the token chosen, repeat.
    pub fn generation(&mut self, prompt: &[u32], decoding: Decoding) -> Result<Generation<'_>> {
        let (context, vocab) = self.language_model_shape()?;
        if prompt.is_empty() {
            return Err(Error::arg("prompt", "needs at least one token"));
        }
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::arg(
                "prompt",
                format!("token {id} is not below {vocab}"),
            ));
        }
        let decoder = match decoding {
            Decoding::Auto => self.model.decoder()?,
            Decoding::FullWindow => None,
        };
        Ok(Generation {
            trainer: self,
            context,
            vocab,
            tokens: prompt.to_vec(),
            decoder,
            last: None,
        })
    }

    /// (context, vocab) of a model taking `[context]` ids and giving `[context, vocab]`.
    fn language_model_shape(&self) -> Result<(usize, usize)> {
        let context = self.model.input_width();
        let out = self.model.output_width();
        if context == 0 || out == 0 || !out.is_multiple_of(context) {
            return Err(Error::arg(
                "model",
                format!(
                    "{context} inputs and {out} outputs are not a [T] -> [T, vocab] language model"
                ),
            ));
        }
        Ok((context, out / context))
    }
}

impl Generation<'_> {
    /// Whether the tokens go through key/value caches (else each runs the whole window).
    pub fn cached(&self) -> bool {
        self.decoder.is_some()
    }

    /// The prompt and the tokens pushed since.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Appends the next token.
    pub fn push(&mut self, token: u32) -> Result<()> {
        if token as usize >= self.vocab {
            return Err(Error::arg(
                "token",
                format!("{token} is not below {}", self.vocab),
            ));
        }
        self.tokens.push(token);
        self.last = None;
        Ok(())
    }

    /// The model's output at the last position (the next token's logits, `vocab` values):
    /// through the caches while the text fits the context, else from the whole window.
    pub fn next_logits(&mut self) -> Result<Vec<f32>> {
        if let Some(last) = &self.last {
            return Ok(last.clone());
        }
        let n = self.tokens.len();
        let logits = match self.decoder.as_mut() {
            Some(d) if n <= self.context => {
                let new: Vec<f32> = self.tokens[d.len()..].iter().map(|&t| t as f32).collect();
                let y = self.trainer.model.decode(d, &new)?.to_vec()?;
                y[y.len() - self.vocab..].to_vec()
            }
            _ => self.full_window()?,
        };
        self.last = Some(logits.clone());
        Ok(logits)
    }

    /// The next token's probabilities: the logits through the output's softmax or
    /// sigmoid (as `predict` gives them), raw for a model trained on raw outputs.
    pub fn next_probs(&mut self) -> Result<Vec<f32>> {
        let logits = self.next_logits()?;
        Ok(match self.trainer.output {
            Output::Raw => logits,
            Output::Sigmoid => logits
                .iter()
                .map(|&z| (1.0 / (1.0 + (-f64::from(z)).exp())) as f32)
                .collect(),
            Output::Softmax => {
                let m = logits
                    .iter()
                    .fold(f64::NEG_INFINITY, |m, &z| m.max(f64::from(z)));
                let e: Vec<f64> = logits.iter().map(|&z| (f64::from(z) - m).exp()).collect();
                let total: f64 = e.iter().sum();
                e.iter().map(|&v| (v / total) as f32).collect()
            }
        })
    }

    /// The last position's output from a forward pass over the last `context` tokens,
    /// padded after their end.
    fn full_window(&mut self) -> Result<Vec<f32>> {
        let (context, vocab) = (self.context, self.vocab);
        let start = self.tokens.len().saturating_sub(context);
        let used = self.tokens.len() - start;
        let mut window = vec![0.0f32; context];
        for (w, &t) in window.iter_mut().zip(&self.tokens[start..]) {
            *w = t as f32;
        }
        let t = &mut *self.trainer;
        let key = (1, t.target_width());
        t.model.workspace(key.0, key.1)?.acts[0].write(&window)?;
        let stages = t.model.stages.clone();
        t.model.forward_ws(key, &stages, Pass::Infer)?;
        let y = t.model.workspace(key.0, key.1)?.acts[stages.len()].to_vec()?;
        Ok(y[(used - 1) * vocab..used * vocab].to_vec())
    }
}

/// The token drawn from `probs` (a softmax row) by the uniform `u` in [0, 1): the
/// probabilities raised to 1 / temperature (the logits divided by it), the top k kept.
pub fn sample(probs: &[f32], sampling: &Sampling, u: f64) -> usize {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // Ties keep the lower id first, so top-k 1 is the argmax that takes the first maximum.
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order.truncate(sampling.top_k.unwrap_or(probs.len()).max(1));
    let top = f64::from(probs[order[0]]).max(f64::MIN_POSITIVE);
    let inv_t = 1.0 / f64::from(sampling.temperature);
    // Relative to the most likely token, so that small temperatures do not underflow it.
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| (f64::from(probs[i]).max(0.0) / top).powf(inv_t))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut target = u * total;
    for (&i, w) in order.iter().zip(&weights) {
        if target < *w {
            return i;
        }
        target -= w;
    }
    order[0]
}

/// SplitMix64: a small seeded generator, enough for drawing tokens.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
