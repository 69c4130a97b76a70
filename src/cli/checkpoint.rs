//! The command line's only door to checkpoints and model files.
//!
//! `kiln::io` (checkpoint::{save, load_trainer} and ModelFile) is being written on
//! another branch. Until it is merged, `save` and `load_trainer` keep weights and
//! optimizer state in an interim file and rebuild the model from the run record, and
//! `model_file` reports that model files are not available yet. When `kiln::io`
//! lands, these three bodies become calls to it and nothing else in `cli` changes.

use std::io::{Read, Write};
use std::path::Path;

use clap::ValueEnum;
use kiln::{Device, Result, Tensor, Trainer};

use super::model_args::{self, ActivationName, LossName, ModelSpec, OptimizerName};
use super::record::RunRecord;
use super::{bad_arg, io_error};

/// The interim weights file inside a run folder.
const WEIGHTS: &str = "kiln-weights.bin";
const MAGIC: &[u8; 8] = b"KILNCLI1";

/// Saves the trainer (weights, optimizer state, progress) into `dir`.
pub fn save(dir: &Path, trainer: &Trainer) -> Result<()> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&trainer.steps().to_le_bytes());
    out.extend_from_slice(&(trainer.epochs_done() as u64).to_le_bytes());
    let params = trainer.model.params();
    out.extend_from_slice(&(params.len() as u64).to_le_bytes());
    for p in params {
        put_bytes(&mut out, p.name.as_bytes());
        put_floats(&mut out, &p.value.to_vec()?);
        out.extend_from_slice(&(p.state.len() as u64).to_le_bytes());
        for s in &p.state {
            put_floats(&mut out, &s.to_vec()?);
        }
    }
    // Write then rename, so an interrupted save leaves the previous checkpoint whole.
    let path = dir.join(WEIGHTS);
    let tmp = dir.join(format!("{WEIGHTS}.tmp"));
    std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&out).and_then(|_| f.sync_all()))
        .map_err(|e| io_error(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))
}

/// Loads the trainer saved in `dir` onto `device`, ready to evaluate or train on.
pub fn load_trainer(dir: &Path, device: &Device, record: &RunRecord) -> Result<Trainer> {
    let path = dir.join(WEIGHTS);
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_error(&path, e))?;
    let what = path.display().to_string();
    let mut r = Reader {
        bytes: &bytes,
        what: &what,
    };
    if r.take(MAGIC.len())? != MAGIC {
        return Err(r.bad("not a kiln checkpoint"));
    }
    let step = r.u64()?;
    let epoch = r.u64()? as usize;

    let act = ActivationName::from_str(&record.activation, true)
        .map_err(|e| r.bad(&format!("activation: {e}")))?;
    let loss = LossName::from_str(&record.loss, true)
        .map_err(|e| r.bad(&format!("loss: {e}")))?
        .loss();
    let optimizer = OptimizerName::from_str(&record.optimizer, true)
        .map_err(|e| r.bad(&format!("optimizer: {e}")))?
        .optimizer(record.lr)?;
    let mut model = model_args::sequential(&record.layers, act)?.build(device, record.seed)?;

    let count = r.u64()? as usize;
    if count != model.params().len() {
        return Err(r.bad(&format!(
            "holds {count} tensors, the model has {}",
            model.params().len()
        )));
    }
    for p in model.params_mut() {
        let name = String::from_utf8_lossy(r.bytes_field()?).into_owned();
        let values = r.floats()?;
        if name != p.name || values.len() != p.value.len() {
            return Err(r.bad(&format!(
                "tensor '{name}' of {} values does not fit parameter '{}' of {}",
                values.len(),
                p.name,
                p.value.len()
            )));
        }
        p.value.write(&values)?;
        let slots = r.u64()? as usize;
        p.state = (0..slots)
            .map(|_| Tensor::from_slice(device, &r.floats()?, p.value.shape()))
            .collect::<Result<_>>()?;
    }
    let outputs = model.output_width();
    let mut trainer = model.compile(loss, optimizer, &model_args::train_metrics(loss, outputs))?;
    trainer.set_progress(step, epoch);
    Ok(trainer)
}

/// The model a TOML model file describes, with its loss and optimizer if it names them.
pub fn model_file(path: &Path) -> Result<ModelSpec> {
    Err(bad_arg(
        "--model",
        format!(
            "{}: model files need kiln's io module, which this build lacks; describe the \
             model with --layers and --activation instead",
            path.display()
        ),
    ))
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_floats(out: &mut Vec<u8>, values: &[f32]) {
    out.extend_from_slice(&(values.len() as u64).to_le_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads the interim file front to back, naming it in errors.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'a str,
}

impl<'a> Reader<'a> {
    fn bad(&self, detail: &str) -> kiln::Error {
        kiln::Error::Format {
            what: self.what.to_string(),
            detail: detail.to_string(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(self.bad("ends early (truncated file?)"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn bytes_field(&mut self) -> Result<&'a [u8]> {
        let n = self.u64()? as usize;
        self.take(n)
    }

    fn floats(&mut self) -> Result<Vec<f32>> {
        let n = self.u64()? as usize;
        let b = self.take(n.checked_mul(4).ok_or_else(|| self.bad("bad length"))?)?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
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
        let trainer = load_trainer(&self.checkpoint, &device, &record)?;
        let batch_size = self.batch_size.unwrap_or(record.batch_size).max(1);
        Ok(Opened {
            record,
            trainer,
            batch_size,
        })
    }
}
