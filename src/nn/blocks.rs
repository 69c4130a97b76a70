//! Blocks of several nodes added to a [`Graph`] in one call: GPT-2's pre-LayerNorm
//! transformer block, and a whole character-level GPT built from them. Residual sums need
//! a graph, so these are graph helpers rather than `Sequential` layers. Node names follow
//! the PyTorch modules of nanoGPT (`h0.ln_1`, `h0.attn`, `h0.mlp.c_fc`, ..), so the
//! parameters read as `h0.attn.in_proj_weight`, `h0.mlp.c_proj.weight`.

use crate::error::{Error, Result};
use crate::nn::graph::Graph;
use crate::nn::layer::{Dense, Embedding, Layer};
use crate::nn::layers::MultiHeadAttention;
use crate::ops::layer_norm::LayerNorm;
use crate::ops::Activation;

/// A GPT's sizes (nanoGPT's `GPTConfig`, without bias and dropout switches).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptConfig {
    /// Tokens in the vocabulary (the logits' width).
    pub vocab: usize,
    /// Positions per sample (the model's input is `[context]` token ids).
    pub context: usize,
    /// Embedding width D, a multiple of `heads`.
    pub width: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Dropout after the embeddings, the attention and the MLP (0 for none).
    pub dropout: f32,
}

/// Appends the causal pre-LayerNorm block `x + attn(ln_1(x))`, then
/// `x + mlp(ln_2(x))` with `mlp = c_proj(gelu(c_fc(x)))` (4 * width hidden units), to
/// `input`, a `[T, width]` node; returns the name of the block's output node.
pub fn transformer_block(
    g: &mut Graph,
    name: &str,
    input: &str,
    heads: usize,
    width: usize,
    dropout: f32,
) -> Result<String> {
    if heads == 0 || width == 0 || !width.is_multiple_of(heads) {
        return Err(Error::arg(
            "transformer_block",
            format!("width {width} must be a positive multiple of heads {heads}"),
        ));
    }
    if !(0.0..1.0).contains(&dropout) {
        return Err(Error::arg("dropout", format!("{dropout} is not in [0, 1)")));
    }
    let n = |part: &str| format!("{name}.{part}");
    let attn = MultiHeadAttention::new(heads).causal();
    g.layer(&n("ln_1"), Layer::LayerNorm(LayerNorm::default()), &[input])
        .layer(&n("attn"), Layer::MultiHeadAttention(attn), &[&n("ln_1")]);
    let attn_out = with_dropout(g, &n("attn"), &n("attn.dropout"), dropout);
    g.add(&n("res_1"), &[input, &attn_out])
        .layer(
            &n("ln_2"),
            Layer::LayerNorm(LayerNorm::default()),
            &[&n("res_1")],
        )
        .layer_with_activation(
            &n("mlp.c_fc"),
            Layer::Dense(Dense::new(4 * width)),
            Layer::Activation(Activation::Gelu),
            &[&n("ln_2")],
        )
        .layer(
            &n("mlp.c_proj"),
            Layer::Dense(Dense::new(width)),
            &[&n("mlp.c_fc")],
        );
    let mlp_out = with_dropout(g, &n("mlp.c_proj"), &n("mlp.dropout"), dropout);
    g.add(&n("res_2"), &[&n("res_1"), &mlp_out]);
    Ok(n("res_2"))
}

/// `from`, or a dropout node named `name` after it when `rate` is positive.
fn with_dropout(g: &mut Graph, from: &str, name: &str, rate: f32) -> String {
    if rate > 0.0 {
        g.layer(name, Layer::Dropout(rate), &[from]);
        name.to_string()
    } else {
        from.to_string()
    }
}

/// A character-level GPT as a graph: input "idx" (`[context]` token ids), `wte` token
/// and `wpe` position embeddings, `layers` blocks `h0`.., a final `ln_f` and the
/// `lm_head` output, `[context, vocab]` logits for the next token at every position.
pub fn gpt(config: &GptConfig) -> Result<Graph> {
    let GptConfig {
        vocab,
        context,
        width,
        heads,
        layers,
        dropout,
    } = *config;
    if vocab == 0 || context == 0 {
        return Err(Error::arg(
            "gpt",
            format!("vocab {vocab} and context {context} must be positive"),
        ));
    }
    let mut g = Graph::new();
    g.input("idx", &[context])
        .layer(
            "wte",
            Layer::Embedding(Embedding::new(vocab, width)),
            &["idx"],
        )
        .layer("wpe", Layer::PositionalEmbedding(context), &["wte"]);
    let mut x = with_dropout(&mut g, "wpe", "drop", dropout);
    for i in 0..layers {
        x = transformer_block(&mut g, &format!("h{i}"), &x, heads, width, dropout)?;
    }
    g.layer("ln_f", Layer::LayerNorm(LayerNorm::default()), &[&x])
        .layer("lm_head", Layer::Dense(Dense::new(vocab)), &["ln_f"])
        .output("lm_head");
    Ok(g)
}
