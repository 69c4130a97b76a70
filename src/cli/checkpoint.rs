//! The command line's door to `kiln::io`: the options that name a trained run
//! (`eval`, `predict`), loading it, and reading model files.

use std::path::{Path, PathBuf};

use kiln::io::ModelFile;
use kiln::train::{Combine, Ensemble, Member};
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
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "ensemble",
        conflicts_with = "ensemble"
    )]
    pub checkpoint: Option<PathBuf>,

    /// Several run folders, comma-separated, combined as one ensemble of classifiers
    /// (instead of --checkpoint); each scales the input as its run did. best:N:DIR stands
    /// for the N best completed trials of the `kiln tune` search in DIR
    #[arg(long, value_name = "DIR,DIR,...", value_delimiter = ',')]
    pub ensemble: Vec<PathBuf>,

    /// How --ensemble combines its members: mean (the argmax of the averaged
    /// probabilities) or vote (the majority class; ties go to the higher averaged
    /// probability, then the lower class id)
    #[arg(long, value_name = "HOW", default_value = "mean", value_parser = parse_combine)]
    pub combine: Combine,

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
        let path = self.path()?;
        let record = RunRecord::load(path)?;
        let trainer = kiln::io::load_trainer(path, &device)?;
        let batch_size = self.batch_size.unwrap_or(record.batch_size).max(1);
        Ok(Opened {
            record,
            trainer,
            batch_size,
        })
    }
}

/// The runs of `--ensemble`: their records (in order) and the ensemble of their models.
pub struct OpenedEnsemble {
    /// How each run prepared its data.
    pub records: Vec<RunRecord>,
    /// The members, each scaling the raw input as its run did.
    pub ensemble: Ensemble,
    /// Rows per batch.
    pub batch_size: usize,
}

impl CheckpointArgs {
    /// The `--checkpoint` folder.
    pub fn path(&self) -> Result<&Path> {
        self.checkpoint
            .as_deref()
            .ok_or_else(|| super::bad_arg("--checkpoint", "name the run folder to use"))
    }

    /// The `--ensemble` run folders, each `best:N:DIR` replaced by the search's best N.
    pub fn ensemble_dirs(&self) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for entry in &self.ensemble {
            let text = entry.to_string_lossy();
            let Some(rest) = text.strip_prefix("best:") else {
                dirs.push(entry.clone());
                continue;
            };
            let (n, dir) = rest.split_once(':').ok_or_else(|| {
                super::bad_arg("--ensemble", format!("'{text}': write best:N:SEARCH_DIR"))
            })?;
            let n: usize = n.trim().parse().map_err(|_| {
                super::bad_arg(
                    "--ensemble",
                    format!("'{text}': '{n}' is not a number of trials"),
                )
            })?;
            dirs.extend(kiln::tune::best_runs(dir, n)?);
        }
        Ok(dirs)
    }

    /// Opens the device and loads every `--ensemble` run onto it as a member named by its
    /// folder, with the run's scaling.
    pub fn open_ensemble(&self) -> Result<OpenedEnsemble> {
        let device = Device::from_name(&self.device)?;
        let mut records = Vec::new();
        let mut members = Vec::new();
        for dir in &self.ensemble_dirs()? {
            let record = RunRecord::load(dir)?;
            let trainer = kiln::io::load_trainer(dir, &device)?;
            members
                .push(Member::new(dir.display().to_string(), trainer).with_scaler(record.scaler()));
            records.push(record);
        }
        let ensemble = Ensemble::new(members)?;
        let batch_size = match (self.batch_size, records.first()) {
            (Some(b), _) => b,
            (None, Some(r)) => r.batch_size,
            (None, None) => 1,
        };
        Ok(OpenedEnsemble {
            records,
            ensemble,
            batch_size: batch_size.max(1),
        })
    }
}

/// `--combine`: mean or vote.
fn parse_combine(s: &str) -> std::result::Result<Combine, String> {
    match s {
        "mean" => Ok(Combine::Mean),
        "vote" => Ok(Combine::Vote),
        _ => Err(format!("'{s}' is not a way to combine: mean or vote")),
    }
}
