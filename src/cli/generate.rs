//! `kiln generate`: text from a run trained on `--data text:FILE`, continuing a prompt
//! with the library's sampler ([`kiln::train::generate`]).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use kiln::train::{Decoding, Sampling};
use kiln::Result;

use super::checkpoint::CheckpointArgs;
use super::train::{saved_vocab, VOCAB_FILE};
use super::{bad_arg, io_error};

/// The long help of `kiln generate`.
pub const LONG_ABOUT: &str = "\
Generate text with a causal language model trained on --data text:FILE.

The prompt is encoded with the run's vocab.json (a character the training text did
not hold is an error), then each next character is drawn from the model's
probabilities at the last position, divided by --temperature and limited to the
--top-k most likely, until --length characters are added. Once the text is longer
than the model's context, the window slides: the model sees the last context
characters. A GPT runs the prompt once, then each new character on its one
position, its attention layers keeping the keys and values of the earlier ones
(a key/value cache); past the context, and for models that cannot decode this way
(an LSTM), each character runs the model over the whole window, as --no-cache
does for every character (the same text, slower). The same --seed gives the same
text. The prompt and the generated text are printed to standard output.";

/// Examples for `kiln generate --help`.
pub const EXAMPLES: &str = "\
Examples:
  # 500 characters after a prompt, reproducible
  kiln generate --checkpoint runs/shakespeare --prompt \"ROMEO:\" --length 500 --temperature 0.8 --top-k 40 --seed 1

  # The most likely character each time (greedy)
  kiln generate --checkpoint runs/shakespeare --prompt \"JULIET:\" --top-k 1";

/// Options of `kiln generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The run folder written by `kiln train --data text:FILE` (its --out)
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,

    /// The text to continue
    #[arg(long, value_name = "TEXT", default_value = "\n")]
    pub prompt: String,

    /// Characters to add
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub length: usize,

    /// Divides the logits: below 1 more conservative, above 1 more varied
    #[arg(long, value_name = "T", default_value_t = 1.0)]
    pub temperature: f32,

    /// Draw only among the K most likely characters [default: all]
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,

    /// Seeds the sampler
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// Where to run: gpu, gpu:NAME or cpu
    #[arg(long, value_name = "DEVICE", default_value = "gpu")]
    pub device: String,

    /// Run the whole window for every character (no key/value cache)
    #[arg(long)]
    pub no_cache: bool,
}

/// Runs `kiln generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        seed: args.seed,
    };
    sampling.check()?;
    let Some(vocab) = saved_vocab(Some(&args.checkpoint))? else {
        return Err(bad_arg(
            "--checkpoint",
            format!(
                "{} has no {VOCAB_FILE}: it is not a text model (train one with --data text:FILE)",
                args.checkpoint.display()
            ),
        ));
    };
    let prompt = vocab.encode(&args.prompt)?;
    let opened = CheckpointArgs {
        checkpoint: Some(args.checkpoint.clone()),
        ensemble: Vec::new(),
        combine: kiln::train::Combine::Mean,
        device: args.device.clone(),
        batch_size: None,
    }
    .open()?;
    let mut trainer = opened.trainer;
    let decoding = match args.no_cache {
        true => Decoding::FullWindow,
        false => Decoding::Auto,
    };
    let ids = trainer.generate_with(&prompt, args.length, &sampling, decoding)?;
    let text = format!("{}{}\n", args.prompt, vocab.decode(&ids));
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| io_error(&PathBuf::from("<stdout>"), e))
}
