//! The GPT-2 transformer block and the `gpt` builder (`kiln::nn::blocks`): the GPU
//! against the CPU reference, gradients against central differences, and the graph's
//! shape and parameter names.

mod common;

use common::{assert_close, assert_trainer_fd, gpu, random};
use kiln::nn::blocks::{gpt, transformer_block, GptConfig};
use kiln::{Device, Graph, Layer, Loss, Optimizer, Trainer};

/// Central-difference steps of the f32 losses (the GPU sums f32 partials, so it takes a
/// longer step, as in tests/sequence.rs).
const H: f64 = 1e-3;
const H_GPU: f64 = 1e-2;

/// `n` ids in 0..vocab.
fn ids(n: usize, vocab: usize, seed: u64) -> Vec<f32> {
    random(n, seed)
        .iter()
        .map(|v| (((v + 1.0) * 0.5 * vocab as f32) as usize).min(vocab - 1) as f32)
        .collect()
}

fn tiny(context: usize, dropout: f32) -> GptConfig {
    GptConfig {
        vocab: 5,
        context,
        width: 8,
        heads: 2,
        layers: 1,
        dropout,
    }
}

fn trainer(g: &Graph, device: &Device) -> Trainer {
    g.build(device, 3)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::sgd(0.1),
            &[],
        )
        .unwrap()
}

#[test]
fn gpt_block_gradients_match_finite_differences_on_cpu_and_gpu() {
    let (batch, t) = (2, 3);
    let g = gpt(&tiny(t, 0.0)).unwrap();
    let x = ids(batch * t, 5, 11);
    let y = ids(batch * t, 5, 12);
    let mut cpu = trainer(&g, &Device::cpu());
    let mut gpu_t = trainer(&g, &gpu());
    let (lc, gc) = cpu.gradients(&x, &y).unwrap();
    let (lg, gg) = gpu_t.gradients(&x, &y).unwrap();
    assert!(
        (lc - lg).abs() <= 1e-5 * lc.abs().max(1.0),
        "loss {lc} vs {lg}"
    );
    assert_eq!(gc.len(), gg.len());
    for ((name, c), (_, g)) in gc.iter().zip(&gg) {
        assert_close(g, c, 1e-3, 1e-5, name);
    }
    assert_trainer_fd(&mut cpu, &x, &y, H, "gpt cpu");
    assert_trainer_fd(&mut gpu_t, &x, &y, H_GPU, "gpt gpu");
}

#[test]
fn gpt_forward_agrees_on_cpu_and_gpu_and_is_causal() {
    for t in [1, 3, 17] {
        let g = gpt(&tiny(t, 0.1)).unwrap();
        let x = ids(3 * t, 5, t as u64);
        let mut cpu = trainer(&g, &Device::cpu());
        let mut gpu_t = trainer(&g, &gpu());
        let pc = cpu.predict(&x, 3).unwrap();
        let pg = gpu_t.predict(&x, 3).unwrap();
        assert_eq!(pc.len(), 3 * t * 5);
        assert_close(&pg, &pc, 1e-3, 1e-5, &format!("T={t} logits"));
        // Changing the last token leaves every earlier position's logits as they were.
        let mut x2 = x.clone();
        x2[t - 1] = (x2[t - 1] + 1.0) % 5.0;
        let pc2 = cpu.predict(&x2, 3).unwrap();
        assert_close(&pc2[..(t - 1) * 5], &pc[..(t - 1) * 5], 0.0, 1e-6, "causal");
        if t > 1 {
            assert!(
                pc2[(t - 1) * 5..t * 5] != pc[(t - 1) * 5..t * 5],
                "last position"
            );
        }
    }
}

#[test]
fn block_names_parameters_as_pytorch_and_checks_its_arguments() {
    let mut g = Graph::new();
    g.input("x", &[4 * 8])
        .layer("seq", Layer::Reshape(vec![4, 8]), &["x"]);
    let out = transformer_block(&mut g, "h0", "seq", 2, 8, 0.0).unwrap();
    g.output(&out);
    let model = g.build(&Device::cpu(), 1).unwrap();
    let shape = |n: &str| model.param(n).map(|p| p.shape().to_vec());
    assert_eq!(shape("h0.ln_1.weight"), Some(vec![8]));
    assert_eq!(shape("h0.attn.in_proj_weight"), Some(vec![24, 8]));
    assert_eq!(shape("h0.mlp.c_fc.weight"), Some(vec![32, 8]));
    assert_eq!(shape("h0.mlp.c_proj.weight"), Some(vec![8, 32]));
    assert!(transformer_block(&mut Graph::new(), "b", "x", 3, 8, 0.0).is_err());
    assert!(transformer_block(&mut Graph::new(), "b", "x", 2, 8, 1.0).is_err());
    let mut bad = tiny(4, 0.0);
    bad.vocab = 0;
    assert!(gpt(&bad).is_err());
}

/// A 1-block GPT of width 32 on 100k characters of Shakespeare learns to a validation
/// loss clearly under the unigram entropy (the best loss of a model blind to its input).
/// Skips, saying why, where ../shared/data/shakespeare is absent.
#[test]
fn a_small_gpt_learns_under_the_unigram_entropy() {
    let Some(text) = common::shakespeare() else {
        return;
    };
    let context = 32;
    let data =
        kiln::data::text::windows_of(&text[2_000_000..2_100_000], None, context, context).unwrap();
    let vocab = data.vocab.len();
    let unigram = common::unigram_entropy(&data.train.y, vocab);
    let config = GptConfig {
        vocab,
        context,
        width: 32,
        heads: 4,
        layers: 1,
        dropout: 0.0,
    };
    let mut t = gpt(&config)
        .unwrap()
        .build(&gpu(), 1)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adamw(3e-3, 0.01),
            &[],
        )
        .unwrap();
    t.fit(&data.train.x, &data.train.y, kiln::FitOptions::new(3, 32))
        .unwrap();
    let val = t.evaluate(&data.valid.x, &data.valid.y, 256).unwrap().loss;
    eprintln!("vocabulary {vocab}, unigram entropy {unigram:.3} nats, validation loss {val:.3}");
    assert!(
        val < unigram - 0.4,
        "validation loss {val:.3} is not clearly under the unigram entropy {unigram:.3}"
    );
}
