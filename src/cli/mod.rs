//! Argument parsing, dispatch to one module per subcommand, and error reporting.

/// Prints a line on standard output, like `println!`, but a closed pipe ends the
/// program quietly instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::write_out(&format!("{}\n", format_args!($($arg)*)))
    };
}

mod adapters;
mod checkpoint;
mod data_source;
mod distributed;
mod eval;
mod export;
mod generate;
mod model_args;
mod outputs;
mod plot;
mod predict;
mod progress;
mod record;
#[cfg(feature = "serve")]
mod serve;
mod summary;
mod train;
mod tune;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

const ABOUT: &str = "Train neural networks on any GPU (through wgpu) or on the CPU";

const LONG_ABOUT: &str = "\
Train neural networks on any GPU (through wgpu) or on the CPU.

kiln trains fully connected networks on tabular or image data: the built-in
8x8 handwritten digits set, MNIST-style IDX files (MNIST, Fashion-MNIST) or a
numeric CSV file. A training run writes its checkpoint, its per-epoch history
and a plot of its learning curves into one folder, which the other commands
then use.";

const EXAMPLES: &str = "\
Examples:
  kiln train                                  train on the built-in digits set
  kiln train --data mnist:data/mnist --layers 784,256,128,10 --epochs 5
  kiln tune --param lr=log:1e-4:1e-1 --param units=32,64,128   search hyperparameters
  kiln eval --checkpoint runs/mnist           loss, accuracy, confusion matrix
  kiln predict --checkpoint runs/mnist --input t10k-images-idx3-ubyte
  kiln export --checkpoint runs/mnist --onnx mnist.onnx
  kiln serve --checkpoint runs/mnist          predictions over HTTP on 127.0.0.1:8080
  kiln adapters                               which GPUs kiln can see
  kiln summary --layers 784,256,128,10        layers and parameter counts

Run `kiln help COMMAND` for a command's options and more examples.";

/// The command line as parsed.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model and save its checkpoint, history and learning curves.
    #[command(long_about = train::LONG_ABOUT, after_long_help = train::EXAMPLES)]
    Train(Box<train::TrainArgs>),
    /// Search hyperparameters: a trial per configuration, ranked on validation.
    #[command(long_about = tune::LONG_ABOUT, after_long_help = tune::EXAMPLES)]
    Tune(Box<tune::TuneArgs>),
    /// Evaluate a checkpoint: loss, metrics and the confusion matrix.
    #[command(long_about = eval::LONG_ABOUT, after_long_help = eval::EXAMPLES)]
    Eval(eval::EvalArgs),
    /// Predict classes (or values) for the rows of a CSV or IDX file.
    #[command(long_about = predict::LONG_ABOUT, after_long_help = predict::EXAMPLES)]
    Predict(predict::PredictArgs),
    /// Generate text with a language model trained on --data text:FILE.
    #[command(long_about = generate::LONG_ABOUT, after_long_help = generate::EXAMPLES)]
    Generate(generate::GenerateArgs),
    /// Export a trained run as an ONNX model for inference elsewhere.
    #[command(long_about = export::LONG_ABOUT, after_long_help = export::EXAMPLES)]
    Export(export::ExportArgs),
    /// Serve a trained run's predictions over HTTP.
    #[cfg(feature = "serve")]
    #[command(long_about = serve::LONG_ABOUT, after_long_help = serve::EXAMPLES)]
    Serve(serve::ServeArgs),
    /// List the GPU adapters kiln can use, with their limits.
    #[command(long_about = adapters::LONG_ABOUT)]
    Adapters,
    /// Print a model's layers, output shapes and parameter counts.
    #[command(long_about = summary::LONG_ABOUT, after_long_help = summary::EXAMPLES)]
    Summary(summary::SummaryArgs),
}

/// Runs the command line; errors are printed as their message and exit with code 1.
pub fn main() -> ExitCode {
    // Bad flags print clap's message and exit with code 2 here.
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Tune(args) => tune::run(*args),
        Command::Eval(args) => eval::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Export(args) => export::run(args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(args),
        Command::Adapters => adapters::run(),
        Command::Summary(args) => summary::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One write: the ranks of a distributed job share one stderr, and eprintln!
            // writes its pieces separately, so two ranks' lines could interleave.
            let line = format!("error: {e}\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            if matches!(e, kiln::Error::NoAdapter { .. }) {
                eprintln!("hint: `--device cpu` trains on the CPU reference backend instead");
            }
            ExitCode::FAILURE
        }
    }
}

/// Set on the ranks of a data-parallel job other than rank 0, which print nothing.
static SILENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stops [`say!`] from printing, for the rest of the process.
fn silence() {
    SILENT.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Writes `text` to standard output. When the reader has gone (`kiln ... | head`),
/// stops as a program killed by SIGPIPE would, but without an error: what the reader
/// wanted it has, and a training run has saved its last epoch.
fn write_out(text: &str) {
    use std::io::Write;
    if SILENT.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

/// An invalid-argument error naming the command-line option at fault.
fn bad_arg(name: &str, detail: impl Into<String>) -> kiln::Error {
    kiln::Error::InvalidArgument {
        name: name.to_string(),
        detail: detail.into(),
    }
}

/// An I/O error on `path`.
fn io_error(path: &std::path::Path, source: std::io::Error) -> kiln::Error {
    kiln::Error::Io {
        path: path.display().to_string(),
        source,
    }
}
