//! `kiln export`: a trained run as an ONNX file for inference elsewhere.

use std::path::PathBuf;

use clap::Args;
use kiln::{Device, Result};

use super::record::RunRecord;

/// The long help of `kiln export`.
pub const LONG_ABOUT: &str = "\
Export a trained run as an ONNX model (IR version 8, opset 17).

The ONNX model takes the same raw features as `kiln predict`: the run's input
scaling (--scale at training time) is written as operations in front of the
layers. It outputs what `kiln predict` gives: class probabilities for classifiers
(a softmax or sigmoid that training folded into the loss is put back), values
for regression. Inputs and outputs have a symbolic first dimension `batch`; a
model built from --layers or a Sequential model file has one input `input` and
one output `output`, a graph model its own input and output names. Dropout is
left out. See docs/deployment.md.";

/// Examples for `kiln export --help`.
pub const EXAMPLES: &str = "\
Examples:
  # The run in runs/mnist as mnist.onnx
  kiln export --checkpoint runs/mnist --onnx mnist.onnx

  # Check it with the onnx package and run it with onnxruntime
  python3 -c \"import onnx; onnx.checker.check_model('mnist.onnx')\"";

/// Options of `kiln export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run folder written by `kiln train` (its --out)
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,

    /// Write the ONNX model to this file (replaced if it exists)
    #[arg(long, value_name = "FILE.onnx")]
    pub onnx: PathBuf,
}

/// Runs `kiln export`.
pub fn run(args: ExportArgs) -> Result<()> {
    let record = RunRecord::load(&args.checkpoint)?;
    // The weights are only read back, so the CPU serves as well as a GPU and needs none.
    let trainer = kiln::io::load_trainer(&args.checkpoint, &Device::cpu())?;
    kiln::io::onnx::export(&trainer, record.scaler().as_ref(), &args.onnx)?;
    eprintln!(
        "wrote {} ({} parameters)",
        args.onnx.display(),
        trainer.model.param_count()
    );
    Ok(())
}
