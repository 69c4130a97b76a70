//! A small character-level GPT on Shakespeare's works (../shared/data/shakespeare), in
//! nanoGPT's CPU configuration: 4 blocks of 4 heads, width 128, context 64, batches of 12
//! random windows, AdamW. Prints the training throughput, the validation loss every
//! `--eval-every` iterations (against the unigram entropy) and a sample.
//!
//! `cargo run --release --example shakespeare_gpt -- [ITERS] [cpu]` (default 300).
use std::time::Instant;

use kiln::data::text::{read_text, Vocab};
use kiln::nn::blocks::{gpt, GptConfig};
use kiln::train::Sampling;
use kiln::{Device, Loss, Optimizer, Trainer};
use rand::{Rng, SeedableRng};

const CONTEXT: usize = 64;
const BATCH: usize = 12;
const EVAL_BATCHES: usize = 20;

fn main() -> kiln::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let iters: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(300);
    let device = if args.iter().any(|a| a == "cpu") {
        Device::cpu()
    } else {
        Device::gpu()?
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/shakespeare/shakespeare.txt.gz");
    let text = read_text(&path)?;
    let vocab = Vocab::chars_of(&text);
    let tokens = vocab.encode(&text)?;
    let split = tokens.len() - tokens.len() / 10;
    let (train, valid) = tokens.split_at(split);
    println!("{} characters, vocabulary {}", tokens.len(), vocab.len());

    let config = GptConfig {
        vocab: vocab.len(),
        context: CONTEXT,
        width: 128,
        heads: 4,
        layers: 4,
        dropout: 0.0,
    };
    let model = gpt(&config)?.build(&device, 1)?;
    println!("{} parameters", model.param_count());
    let mut t = model.compile(
        Loss::SparseCategoricalCrossEntropy,
        Optimizer::adamw(1e-3, 0.1),
        &[],
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut eval_rng = rand::rngs::StdRng::seed_from_u64(2);
    let (vx, vy) = batch(valid, BATCH * EVAL_BATCHES, &mut eval_rng);
    println!(
        "unigram entropy {:.3} nats",
        unigram(train, valid, vocab.len())
    );
    println!(
        "step 0: validation loss {:.4}",
        t.evaluate(&vx, &vy, BATCH)?.loss
    );
    let every = (iters / 6).max(1);
    let start = Instant::now();
    let mut trained = 0.0;
    for step in 1..=iters {
        let (x, y) = batch(train, BATCH, &mut rng);
        let tick = Instant::now();
        t.train_batch(&x, &y)?;
        trained += tick.elapsed().as_secs_f64();
        if step % every == 0 || step == iters {
            let val = t.evaluate(&vx, &vy, BATCH)?.loss;
            println!("step {step}: validation loss {val:.4}");
        }
    }
    let tokens_per_s = (iters * BATCH * CONTEXT) as f64 / trained;
    println!(
        "training: {tokens_per_s:.0} tokens/s ({iters} steps, {:.1} s with evaluation)",
        start.elapsed().as_secs_f64()
    );
    sample(&mut t, &vocab)
}

/// Prints 200 characters after "ROMEO:" and the generation speed.
fn sample(t: &mut Trainer, vocab: &Vocab) -> kiln::Result<()> {
    let prompt = vocab.encode("ROMEO:")?;
    let sampling = Sampling {
        temperature: 0.8,
        top_k: Some(40),
        seed: 1,
    };
    let tick = Instant::now();
    let ids = t.generate(&prompt, 200, &sampling)?;
    let rate = ids.len() as f64 / tick.elapsed().as_secs_f64();
    println!("ROMEO:{}", vocab.decode(&ids));
    // The first 59 new tokens run through the key/value caches; past the context of 64
    // each runs the whole window (see kiln::train::generate).
    println!("generation: {rate:.1} tokens/s (key/value cache within the context)");
    Ok(())
}

/// `rows` random windows of `tokens` and their next-token targets, as f32 ids.
fn batch(tokens: &[u32], rows: usize, rng: &mut impl Rng) -> (Vec<f32>, Vec<f32>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..rows {
        let i = rng.random_range(0..tokens.len() - CONTEXT - 1);
        x.extend(tokens[i..i + CONTEXT].iter().map(|&v| v as f32));
        y.extend(tokens[i + 1..i + CONTEXT + 1].iter().map(|&v| v as f32));
    }
    (x, y)
}

/// The validation characters' cross-entropy under the training frequencies.
fn unigram(train: &[u32], valid: &[u32], vocab: usize) -> f64 {
    let mut counts = vec![1.0f64; vocab];
    for &id in train {
        counts[id as usize] += 1.0;
    }
    let total: f64 = counts.iter().sum();
    let nll: f64 = valid
        .iter()
        .map(|&id| -(counts[id as usize] / total).ln())
        .sum();
    nll / valid.len() as f64
}
