//! Generation through key/value caches (`Trainer::generation`, `Decoding::Auto`) against
//! the full-window path (`Decoding::FullWindow`) on a small random GPT (2 layers, width
//! 16, 2 heads, context 8), on the CPU device and the GPU: the same logits at every step
//! for prompts of 1 token, of exactly the context and longer than it (the window
//! sliding), the same sampled and greedy text; one readback per cached token; and the
//! fallback to whole windows for models that cannot decode incrementally.
mod common;

use kiln::nn::blocks::{gpt, GptConfig};
use kiln::nn::layers::{MultiHeadAttention, Recurrent};
use kiln::train::{Decoding, Sampling};
use kiln::{Device, Graph, Layer, Loss, Optimizer, Sequential, Trainer};

const VOCAB: usize = 11;
const CONTEXT: usize = 8;

fn compile(model: kiln::Model) -> Trainer {
    model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(0.01),
            &[],
        )
        .unwrap()
}

fn small_gpt(device: &Device) -> Trainer {
    let config = GptConfig {
        vocab: VOCAB,
        context: CONTEXT,
        width: 16,
        heads: 2,
        layers: 2,
        dropout: 0.0,
    };
    compile(gpt(&config).unwrap().build(device, 7).unwrap())
}

/// The next token after each step: a fixed mix, so both paths see the same text.
fn token(step: usize) -> u32 {
    ((step * 5 + 3) % VOCAB) as u32
}

/// Logits within 1e-4 of the largest |logit| (the paths sum in other orders: the
/// products over one row or the whole window, the cached attention's loop).
fn assert_logits_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), VOCAB, "{what}");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * scale,
            "{what}: logit {i} is {g}, the full window gives {w}"
        );
    }
}

#[test]
fn cached_logits_equal_the_full_window_at_every_step() {
    for device in [Device::cpu(), common::gpu()] {
        let mut t = small_gpt(&device);
        let prompts: [Vec<u32>; 4] = [
            vec![4],
            (0..CONTEXT as u32).collect(),
            (0..11).map(|i| (i * 3 % VOCAB) as u32).collect(),
            vec![1, 9, 2],
        ];
        for prompt in &prompts {
            // 12 steps: the window fills up and then slides.
            let mut want = Vec::new();
            let mut g = t.generation(prompt, Decoding::FullWindow).unwrap();
            assert!(!g.cached());
            for step in 0..12 {
                want.push(g.next_logits().unwrap());
                g.push(token(step)).unwrap();
            }
            let mut g = t.generation(prompt, Decoding::Auto).unwrap();
            assert!(g.cached(), "a GPT decodes through its caches");
            for (step, want) in want.iter().enumerate() {
                let what = format!("{device:?}, prompt {prompt:?}, step {step}");
                assert_logits_close(&g.next_logits().unwrap(), want, &what);
                g.push(token(step)).unwrap();
            }
        }
    }
}

#[test]
fn cached_text_equals_the_full_window_text() {
    for device in [Device::cpu(), common::gpu()] {
        let mut t = small_gpt(&device);
        let sampled = Sampling {
            temperature: 0.9,
            top_k: Some(5),
            seed: 3,
        };
        let greedy = Sampling {
            top_k: Some(1),
            ..sampled
        };
        for (prompt, s) in [(&[2u32][..], sampled), (&[5, 1, 7][..], greedy)] {
            let full = t
                .generate_with(prompt, 14, &s, Decoding::FullWindow)
                .unwrap();
            let cached = t.generate(prompt, 14, &s).unwrap();
            assert_eq!(cached, full, "{device:?} {s:?}");
        }
    }
}

/// Once the prompt is in, each cached token reads back its logits once and nothing else,
/// in one submission.
#[test]
fn a_cached_token_is_one_readback_of_its_logits() {
    // A device of its own: the statistics count what every test on a device does.
    common::isolate_autotune_cache();
    let device = Device::gpu().unwrap();
    let mut t = small_gpt(&device);
    let mut g = t.generation(&[3, 1], Decoding::Auto).unwrap();
    // The prompt, then two tokens (the matmul autotuner times the one-row products once).
    for step in 0..3 {
        g.next_logits().unwrap();
        g.push(token(step)).unwrap();
    }
    let before = device.stats();
    for step in 0..4 {
        g.next_logits().unwrap();
        g.push(token(step)).unwrap();
    }
    let after = device.stats();
    assert_eq!(after.bytes_read - before.bytes_read, 4 * 4 * VOCAB as u64);
    assert!(after.submissions - before.submissions <= 4);
}

/// A recurrent model and a non-causal attention model run whole windows, and say so.
#[test]
fn models_that_cannot_decode_incrementally_run_whole_windows() {
    let device = Device::cpu();
    let lstm = Sequential::new(CONTEXT)
        .embedding(VOCAB, 8)
        .add(Layer::Lstm(Recurrent::new(8).sequences()))
        .dense(VOCAB)
        .build(&device, 1)
        .unwrap();
    let mut g = Graph::new();
    g.input("idx", &[CONTEXT])
        .layer(
            "wte",
            Layer::Embedding(kiln::Embedding::new(VOCAB, 8)),
            &["idx"],
        )
        .layer(
            "attn",
            Layer::MultiHeadAttention(MultiHeadAttention::new(2)),
            &["wte"],
        )
        .layer("head", Layer::Dense(kiln::Dense::new(VOCAB)), &["attn"])
        .output("head");
    let bidirectional = g.build(&device, 1).unwrap();
    for model in [lstm, bidirectional] {
        let mut t = compile(model);
        let mut g = t.generation(&[1, 2], Decoding::Auto).unwrap();
        assert!(!g.cached());
        assert_eq!(g.next_probs().unwrap().len(), VOCAB);
        let text = t.generate(&[1, 2], 10, &Sampling::default()).unwrap();
        assert_eq!(text.len(), 10);
    }
}
