//! Autoregressive sampling from a causal language model: the next token from the last
//! position's probabilities, with temperature, top-k and a seed, the context window
//! sliding once the text is longer than the model's. Each token runs a full forward pass
//! over the window (no key/value cache).

use super::Trainer;
use crate::error::{Error, Result};

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

impl Trainer {
    /// Continues `prompt` (token ids) by `length` sampled tokens and returns only the new
    /// ones. The model must be causal, with `[context]` ids in and `[context, vocab]`
    /// out: a prompt shorter than the context is padded after its end (which a causal
    /// model's earlier positions never see), a longer one keeps its last `context` ids.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        length: usize,
        sampling: &Sampling,
    ) -> Result<Vec<u32>> {
        sampling.check()?;
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
        let mut rng = SplitMix(sampling.seed);
        let mut tokens = prompt.to_vec();
        let mut window = vec![0.0f32; context];
        for _ in 0..length {
            let start = tokens.len().saturating_sub(context);
            let used = tokens.len() - start;
            window.fill(0.0);
            for (w, &t) in window.iter_mut().zip(&tokens[start..]) {
                *w = t as f32;
            }
            let probs = self.predict(&window, 1)?;
            let last = &probs[(used - 1) * vocab..used * vocab];
            tokens.push(sample(last, sampling, rng.next_f64()) as u32);
        }
        Ok(tokens[prompt.len()..].to_vec())
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
