//! `kiln summary`: a model's layers, output shapes and parameter counts.

use clap::Args;
use kiln::{Device, Result};

use super::bad_arg;
use super::model_args::ModelArgs;

/// The long help of `kiln summary`.
pub const LONG_ABOUT: &str = "\
Print a model's layers, output shapes and parameter counts, as Keras's
model.summary() does, without training it. Describe the model as for
`kiln train`: with --layers (and --activation) or with --model.";

/// Examples for `kiln summary --help`.
pub const EXAMPLES: &str = "\
Examples:
  kiln summary --layers 784,256,128,10
  kiln summary --layers 64,32,10 --activation tanh
  kiln summary --model model.toml";

/// Options of `kiln summary`.
#[derive(Args, Debug)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `kiln summary`.
pub fn run(args: SummaryArgs) -> Result<()> {
    if args.model.layers.is_none() && args.model.model.is_none() {
        return Err(bad_arg(
            "summary",
            "describe the model with --layers WIDTHS (e.g. 784,256,10) or --model FILE.toml",
        ));
    }
    let spec = args.model.build(0, 0)?;
    // The CPU backend: no GPU is needed to count parameters.
    let model = spec.architecture.build(&Device::cpu(), 0)?;
    super::write_out(&model.summary());
    Ok(())
}
