//! The kiln side of the agreement check against a JAX/optax reference
//! (benches/gpt_jax/gpt_jax.py, run by benches/gpt-jax.sh and tests/gpt_jax.rs): a
//! character-level GPT on Shakespeare's works (../shared/data/shakespeare) with a fixed
//! seed, trained with AdamW on random windows. It is the one source of truth for both
//! sides: into OUT it writes the initial weights (`init.safetensors`, kiln's names), the
//! plan (`plan.json`: sizes, optimizer, vocabulary, every training and validation window's
//! start), then trains and writes `kiln.json` (the validation loss at each evaluation
//! point, training and generation tokens/s).
//!
//! `cargo run --release --example gpt_reference -- OUT [--iters N] [--layers L]
//! [--width D] [--heads H] [--context T] [--batch B] [--chars C] [--eval-every E]
//! [--eval-windows V] [--generate G] [--cpu]`; the defaults are nanoGPT's CPU
//! configuration (examples/shakespeare_gpt.rs) over the whole corpus (`--chars 0`).
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln::data::text::{read_text, Vocab};
use kiln::nn::blocks::{gpt, GptConfig};
use kiln::train::Sampling;
use kiln::{Device, Loss, Optimizer, Trainer};
use rand::{Rng, SeedableRng};
use serde_json::json;

const LR: f32 = 1e-3;
const WEIGHT_DECAY: f32 = 0.1;
const PROMPT: &str = "ROMEO:";

/// Errors of the library and of the command line alike.
type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The run's settings, from the command line.
struct Args {
    out: PathBuf,
    iters: usize,
    config: GptConfig,
    batch: usize,
    chars: usize,
    eval_every: usize,
    eval_windows: usize,
    generate: usize,
    cpu: bool,
}

fn parse() -> Res<Args> {
    let mut args = Args {
        out: PathBuf::new(),
        iters: 2000,
        config: GptConfig {
            vocab: 0,
            context: 64,
            width: 128,
            heads: 4,
            layers: 4,
            dropout: 0.0,
        },
        batch: 12,
        chars: 0,
        eval_every: 250,
        eval_windows: 240,
        generate: 200,
        cpu: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--cpu" {
            args.cpu = true;
            continue;
        }
        if !a.starts_with("--") {
            args.out = PathBuf::from(a);
            continue;
        }
        let value: usize = it
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{a} needs a whole number"))?;
        let c = &mut args.config;
        match a.as_str() {
            "--iters" => args.iters = value,
            "--layers" => c.layers = value,
            "--width" => c.width = value,
            "--heads" => c.heads = value,
            "--context" => c.context = value,
            "--batch" => args.batch = value,
            "--chars" => args.chars = value,
            "--eval-every" => args.eval_every = value.max(1),
            "--eval-windows" => args.eval_windows = value,
            "--generate" => args.generate = value,
            _ => return Err(format!("{a} is not an option of gpt_reference").into()),
        }
    }
    if args.out.as_os_str().is_empty() {
        return Err("the output folder OUT is missing".into());
    }
    Ok(args)
}

fn main() -> Res<()> {
    let mut args = parse()?;
    std::fs::create_dir_all(&args.out)?;
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/shakespeare/shakespeare.txt.gz");
    let mut text = read_text(&path)?;
    if args.chars > 0 {
        text = text.chars().take(args.chars).collect();
    }
    let vocab = Vocab::chars_of(&text);
    let tokens = vocab.encode(&text)?;
    let split = tokens.len() - tokens.len() / 10;
    let (train, valid) = tokens.split_at(split);
    args.config.vocab = vocab.len();
    let (context, batch) = (args.config.context, args.batch);

    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let train_starts = starts(train.len(), context, args.iters * batch, &mut rng)?;
    let mut eval_rng = rand::rngs::StdRng::seed_from_u64(2);
    let valid_starts = starts(valid.len(), context, args.eval_windows, &mut eval_rng)?;
    let symbols = text_symbols(&vocab);
    // A short slice may lack the prompt's characters: then the validation text's first.
    let prompt = vocab.encode(PROMPT).unwrap_or_else(|_| valid[..1].to_vec());
    write_json(
        &args.out.join("plan.json"),
        &json!({
            "chars": args.chars,
            "vocab": symbols,
            "context": context,
            "width": args.config.width,
            "heads": args.config.heads,
            "layers": args.config.layers,
            "batch": batch,
            "iters": args.iters,
            "eval_every": args.eval_every,
            "lr": LR,
            "weight_decay": WEIGHT_DECAY,
            "beta1": 0.9,
            "beta2": 0.999,
            "eps": 1e-8,
            "layer_norm_eps": 1e-5,
            "generate": args.generate,
            "prompt": prompt,
            "train_starts": train_starts,
            "valid_starts": valid_starts,
        }),
    )?;

    let device = if args.cpu {
        Device::cpu()
    } else {
        Device::gpu()?
    };
    let model = gpt(&args.config)?.build(&device, 1)?;
    kiln::io::save_model(args.out.join("init.safetensors"), &model)?;
    let mut t = model.compile(
        Loss::SparseCategoricalCrossEntropy,
        Optimizer::adamw(LR, WEIGHT_DECAY),
        &[],
    )?;
    let (vx, vy) = windows(valid, &valid_starts, context);
    let evaluate = |t: &mut Trainer| t.evaluate(&vx, &vy, batch).map(|e| e.loss);
    let loss = evaluate(&mut t)?;
    println!("step 0: validation loss {loss:.6}");
    let mut evals = vec![json!([0, loss])];
    let mut trained = 0.0;
    let mut step = 0;
    while step < args.iters {
        let end = (step + args.eval_every).min(args.iters);
        let tick = Instant::now();
        for s in step..end {
            let (x, y) = windows(train, &train_starts[s * batch..(s + 1) * batch], context);
            t.train_batch(&x, &y)?;
        }
        device.synchronize()?;
        trained += tick.elapsed().as_secs_f64();
        step = end;
        let loss = evaluate(&mut t)?;
        println!("step {step}: validation loss {loss:.6}");
        evals.push(json!([step, loss]));
    }
    let train_rate = (args.iters * batch * context) as f64 / trained.max(1e-9);
    let gen_rate = generation_rate(&mut t, &prompt, args.generate)?;
    println!("training: {train_rate:.0} tokens/s; generation: {gen_rate:.1} tokens/s");
    write_json(
        &args.out.join("kiln.json"),
        &json!({
            "device": device.name(),
            "evals": evals,
            "train_tokens_per_s": train_rate,
            "generate_tokens_per_s": gen_rate,
        }),
    )
}

/// `n` window starts in `0..len - context - 1`, each leaving room for its targets.
fn starts(len: usize, context: usize, n: usize, rng: &mut impl Rng) -> Res<Vec<usize>> {
    if len < context + 2 {
        return Err(format!("{len} characters are too few for windows of {context}").into());
    }
    Ok((0..n)
        .map(|_| rng.random_range(0..len - context - 1))
        .collect())
}

/// The windows of `tokens` at `starts` and their next-token targets, as f32 ids.
fn windows(tokens: &[u32], starts: &[usize], context: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for &i in starts {
        x.extend(tokens[i..i + context].iter().map(|&v| v as f32));
        y.extend(tokens[i + 1..i + context + 1].iter().map(|&v| v as f32));
    }
    (x, y)
}

/// The vocabulary's characters by id, as code points (the JAX side encodes with them).
fn text_symbols(vocab: &Vocab) -> Vec<u32> {
    let ids: Vec<u32> = (0..vocab.len() as u32).collect();
    vocab.decode(&ids).chars().map(u32::from).collect()
}

/// Generated tokens per second after `prompt` (the first two tokens, which set up the
/// batch-of-one workspace, are not timed).
fn generation_rate(t: &mut Trainer, prompt: &[u32], n: usize) -> Res<f64> {
    let sampling = Sampling {
        temperature: 0.8,
        top_k: Some(40),
        seed: 1,
    };
    t.generate(prompt, 2, &sampling)?;
    let tick = Instant::now();
    let ids = t.generate(prompt, n, &sampling)?;
    Ok(ids.len() as f64 / tick.elapsed().as_secs_f64().max(1e-9))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Res<()> {
    Ok(std::fs::write(path, value.to_string())?)
}
