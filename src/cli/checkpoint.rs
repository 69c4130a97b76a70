//! The command line's door to `kiln::io`: the options that name a trained run
//! (`eval`, `predict`), loading it, and reading model files.

use std::path::Path;

use kiln::io::ModelFile;
use kiln::{Device, Result, Trainer};

use super::model_args::{Architecture, ModelSpec};
use super::record::RunRecord;

/// The model (Sequential or graph) a TOML model file describes, with what its `[training]` section names.
pub fn model_file(path: &Path) -> Result<ModelSpec> {
    let file = ModelFile::load(path)?;
    let architecture = if file.is_graph() {
        Architecture::Graph(file.to_graph()?)
    } else {
        Architecture::Sequential(file.to_sequential()?)
    };
    let training = file.training.clone().unwrap_or_default();
    Ok(ModelSpec {
        architecture,
        loss: match training.loss {
            Some(_) => Some(file.loss()?),
            None => None,
        },
        optimizer: match &training.optimizer {
            Some(name) => Some((name.clone(), file.optimizer()?)),
            None => None,
        },
        batch_size: training.batch_size,
        epochs: training.epochs,
        seed: training.seed,
        training,
    })
}

/// The options of the commands that use a trained run (`eval`, `predict`).
#[derive(clap::Args, Debug)]
pub struct CheckpointArgs {
    /// The run folder written by `kiln train` (its --out)
    #[arg(long, value_name = "DIR")]
    pub checkpoint: std::path::PathBuf,

    /// Where to run: gpu, gpu:NAME or cpu
    #[arg(long, value_name = "DEVICE", default_value = "gpu")]
    pub device: String,

    /// Rows per batch [default: the run's batch size]
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
}

/// A loaded run: its record, its trainer and the batch size to use.
pub struct Opened {
    /// How the run prepared its data.
    pub record: RunRecord,
    /// The trained model, compiled as it was trained.
    pub trainer: Trainer,
    /// Rows per batch.
    pub batch_size: usize,
}

impl CheckpointArgs {
    /// Opens the device and loads the run onto it.
    pub fn open(&self) -> Result<Opened> {
        let device = Device::from_name(&self.device)?;
        let record = RunRecord::load(&self.checkpoint)?;
        let trainer = kiln::io::load_trainer(&self.checkpoint, &device)?;
        let batch_size = self.batch_size.unwrap_or(record.batch_size).max(1);
        Ok(Opened {
            record,
            trainer,
            batch_size,
        })
    }
}
