//! Checkpoints in Hugging Face's safetensors format, readable from PyTorch and NumPy.
//!
//! A checkpoint directory holds `model.safetensors` (the weights, named and shaped as
//! a PyTorch `nn.Sequential` state_dict, a graph model's by node name, `{node}.weight`,
//! plus the architecture as model-file TOML) and
//! `optimizer.safetensors` (the optimizer state and the training progress). The
//! checkpoints guide, docs/checkpoints.md, documents every name and metadata key.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors, View};

use super::model_file::{loss_name, rule_name, ModelFile, ScheduleSpec, TrainingSpec};
use super::{sync_dir, write_atomic, Pending};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{Layer, Model, Sequential};
use crate::tensor::Tensor;
use crate::train::Trainer;

/// The weights file of a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimizer-state file of a checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The optimizer state of the previous save, kept while a save replaces the pair.
const PREVIOUS_OPTIMIZER_FILE: &str = "optimizer.prev.safetensors";
/// The value of the "format" metadata key.
pub const FORMAT: &str = "kiln-1";
/// The safetensors crate refuses headers over 100 MB; refusing them first avoids reading them.
const MAX_HEADER: u64 = 100_000_000;

/// Parameters a metadata model may have beyond the tensors in its file (4 MB of f32).
const SMALL_MODEL: usize = 1 << 20;

/// An f32 tensor's little-endian bytes, as the safetensors writer wants them.
struct F32Bytes {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl F32Bytes {
    fn of(t: &Tensor) -> Result<F32Bytes> {
        Ok(F32Bytes {
            shape: t.shape().to_vec(),
            bytes: t.to_vec()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }
}

impl View for F32Bytes {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn serialize(tensors: Vec<(String, F32Bytes)>, meta: HashMap<String, String>) -> Result<Vec<u8>> {
    safetensors::serialize(tensors, Some(meta))
        .map_err(|e| Error::format("safetensors", format!("cannot serialize: {e}")))
}

/// The weights of `model` as safetensors bytes, with the architecture in the metadata
/// (unless `meta` has it already).
fn model_bytes(model: &Model, mut meta: HashMap<String, String>) -> Result<Vec<u8>> {
    meta.insert("format".into(), FORMAT.into());
    if !meta.contains_key("model") {
        meta.insert("model".into(), ModelFile::from_model(model)?.to_toml());
    }
    meta.insert("seed".into(), model.seed.to_string());
    // Weights, then the non-trainable running statistics, all under state_dict names.
    let params = model.params().iter().map(|p| (p.name.clone(), &p.value));
    let tensors = params
        .chain(model.buffers())
        .map(|(name, t)| Ok((name, F32Bytes::of(t)?)))
        .collect::<Result<Vec<_>>>()?;
    serialize(tensors, meta)
}

/// Writes the weights of `model` to one safetensors file (a directory gets `model.safetensors`).
///
/// The file is replaced atomically: a crash leaves the old or the new file, never a mix.
pub fn save_model(path: impl AsRef<Path>, model: &Model) -> Result<()> {
    let path = file_in(path.as_ref());
    write_atomic(&path, &model_bytes(model, HashMap::new())?)
}

/// Writes a checkpoint of `trainer` into `dir` (created if missing): weights, optimizer
/// state, progress and the training setup, enough for [`load_trainer`] to resume exactly.
///
/// Each file is replaced atomically, and the previous optimizer state is kept aside
/// until the new weights are in place, so a crash at any moment leaves the old or the
/// new checkpoint loadable.
pub fn save(dir: impl AsRef<Path>, trainer: &Trainer) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut file = ModelFile::from_trainer(trainer)?;
    let training = file.training.take().unwrap_or_default();
    let id = checkpoint_id(trainer);
    let model = model_part(trainer, &file, &id)?;
    let optimizer = optimizer_part(trainer, &training, id)?;
    replace_both(dir, &optimizer, &model)
}

/// The weights file of a checkpoint: the model with what it was trained with.
fn model_part(trainer: &Trainer, file: &ModelFile, id: &str) -> Result<Vec<u8>> {
    let (loss, _) = loss_name(trainer.loss());
    let metrics: Vec<&str> = trainer.metrics().iter().map(|m| m.name()).collect();
    let meta = HashMap::from([
        ("checkpoint".to_string(), id.to_string()),
        ("loss".into(), loss.into()),
        (
            "optimizer".into(),
            rule_name(&trainer.optimizer().rule).into(),
        ),
        ("metrics".into(), metrics.join(",")),
        // The trainer's file: several outputs listed in the order they were compiled in.
        ("model".into(), file.to_toml()),
    ]);
    model_bytes(&trainer.model, meta)
}

/// The optimizer file of a checkpoint: the state tensors, progress, rule and schedule.
fn optimizer_part(trainer: &Trainer, training: &TrainingSpec, id: String) -> Result<Vec<u8>> {
    let opt = trainer.optimizer();
    let slots = opt.rule.state_slots();
    let params = trainer.model.params();
    // Before the first step the state does not exist yet: save none rather than zeros.
    let saved_slots = if params.iter().all(|p| p.state.len() == slots) {
        slots
    } else {
        0
    };
    let mut states = Vec::new();
    for p in params {
        for (k, s) in p.state.iter().take(saved_slots).enumerate() {
            states.push((format!("{}.state{k}", p.name), F32Bytes::of(s)?));
        }
    }
    let schedule = toml::to_string(&ScheduleSpec::from_schedule(&opt.schedule)?)
        .map_err(|e| Error::format("schedule", format!("cannot write as TOML: {e}")))?;
    let training = toml::to_string(training)
        .map_err(|e| Error::format("training setup", format!("cannot write as TOML: {e}")))?;
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("checkpoint".into(), id),
        ("step".into(), trainer.steps().to_string()),
        ("epoch".into(), trainer.epochs_done().to_string()),
        ("optimizer".into(), rule_name(&opt.rule).into()),
        ("rule".into(), format!("{:?}", opt.rule)),
        ("lr".into(), opt.lr.to_string()),
        ("schedule".into(), schedule),
        ("seed".into(), trainer.model.seed.to_string()),
        ("state_slots".into(), saved_slots.to_string()),
        ("training".into(), training),
    ]);
    serialize(states, meta)
}

/// Replaces the optimizer and weights files in `dir`, each atomically, keeping the
/// previous optimizer state aside until the new weights are in place.
fn replace_both(dir: &Path, optimizer: &[u8], model: &[u8]) -> Result<()> {
    let opt_path = dir.join(OPTIMIZER_FILE);
    let prev_path = dir.join(PREVIOUS_OPTIMIZER_FILE);
    let new_opt = Pending::write(&opt_path, optimizer)?;
    let new_model = match Pending::write(&dir.join(MODEL_FILE), model) {
        Ok(p) => p,
        Err(e) => {
            new_opt.discard();
            return Err(e);
        }
    };
    // Keep the state that matches the current weights until the new weights land.
    if opt_path.exists() {
        if let Err(e) = std::fs::rename(&opt_path, &prev_path) {
            new_opt.discard();
            new_model.discard();
            return Err(Error::io(&prev_path, e));
        }
        sync_dir(dir)?;
    }
    new_opt.commit()?;
    sync_dir(dir)?;
    new_model.commit()?;
    sync_dir(dir)?;
    let _ = std::fs::remove_file(&prev_path);
    Ok(())
}

/// Ties the two files of one save together: unique per save, not meant to be secret.
fn checkpoint_id(trainer: &Trainer) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{:016x}-{}-{}",
        nanos ^ (u64::from(std::process::id()) << 40),
        trainer.epochs_done(),
        trainer.steps()
    )
}

/// A directory means the `model.safetensors` in it.
fn file_in(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(MODEL_FILE)
    } else {
        path.to_path_buf()
    }
}

/// A safetensors file whose header was read and checked against the file's length.
struct Checked {
    /// The file, for messages.
    what: String,
    /// Open until the data is read.
    file: Option<File>,
    /// The file's length in bytes.
    len: u64,
    /// The header, then (after `read_data`) the tensor data.
    bytes: Vec<u8>,
    /// Offset of the tensor data in `bytes`.
    data_start: usize,
    header: Metadata,
}

impl Checked {
    fn meta(&self, key: &str) -> Option<&str> {
        self.header
            .metadata()
            .as_ref()?
            .get(key)
            .map(|s| s.as_str())
    }

    fn format_error(&self, detail: impl Into<String>) -> Error {
        Error::format(&self.what, detail)
    }

    /// A metadata value parsed as a number.
    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let text = self
            .meta(key)
            .ok_or_else(|| self.format_error(format!("metadata has no '{key}'")))?;
        text.parse()
            .map_err(|_| self.format_error(format!("metadata '{key}' = '{text}' is not a number")))
    }

    /// Checks that the file holds exactly `expected` (name, shape) as F32 tensors.
    fn expect(&self, expected: &[(String, Vec<usize>)], whose: &str) -> Result<()> {
        let found = self.header.tensors();
        let missing: Vec<&str> = expected
            .iter()
            .filter(|(n, _)| !found.contains_key(n))
            .map(|(n, _)| n.as_str())
            .collect();
        let mut extra: Vec<&str> = found
            .keys()
            .filter(|n| !expected.iter().any(|(e, _)| e == *n) && !batches_tracked(n, expected))
            .map(|n| n.as_str())
            .collect();
        extra.sort();
        if !missing.is_empty() || !extra.is_empty() {
            let mut differences = Vec::new();
            if !missing.is_empty() {
                differences.push(format!("missing [{}]", missing.join(", ")));
            }
            if !extra.is_empty() {
                differences.push(format!("unexpected [{}]", extra.join(", ")));
            }
            return Err(self.format_error(format!(
                "tensor names differ from {whose}: {}; expected {}{}",
                differences.join(", "),
                listing(expected),
                self.saved_from()
            )));
        }
        for (name, shape) in expected {
            let info = found[name];
            if info.dtype != Dtype::F32 {
                return Err(self.format_error(format!(
                    "tensor '{name}' has dtype {:?}, expected F32 (kiln stores f32 only)",
                    info.dtype
                )));
            }
            if &info.shape != shape {
                return Err(self.format_error(format!(
                    "tensor '{name}' has shape {:?}, {whose} expects {shape:?}{}",
                    info.shape,
                    self.saved_from()
                )));
            }
        }
        Ok(())
    }

    /// " (the file says it holds MODEL)" when its metadata names the model.
    fn saved_from(&self) -> String {
        self.meta("model")
            .and_then(|t| ModelFile::parse(t).ok())
            .map(|f| format!(" (the file says it holds the model {})", describe_file(&f)))
            .unwrap_or_default()
    }

    /// The values of a tensor that `expect` has checked.
    fn values(&self, name: &str) -> Result<Vec<f32>> {
        let info = self
            .header
            .info(name)
            .ok_or_else(|| self.format_error(format!("no tensor '{name}'")))?;
        let (start, end) = info.data_offsets;
        let bytes = self
            .bytes
            .get(self.data_start + start..self.data_start + end)
            .ok_or_else(|| self.format_error(format!("tensor '{name}' lies outside the file")))?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// PyTorch's batch norm counter `N.num_batches_tracked`, for a batch norm `N` kiln expects:
/// kiln keeps no such counter, so a PyTorch state_dict loads without it.
fn batches_tracked(name: &str, expected: &[(String, Vec<usize>)]) -> bool {
    name.strip_suffix(".num_batches_tracked")
        .is_some_and(|layer| {
            expected
                .iter()
                .any(|(e, _)| *e == format!("{layer}.running_mean"))
        })
}

/// A Sequential file as `describe` writes it, a graph as its nodes' count.
fn describe_file(file: &ModelFile) -> String {
    match file.to_sequential() {
        Ok(s) => describe(&s),
        Err(_) => format!("a graph of {} nodes", file.nodes.len()),
    }
}

/// "input 4 -> dense 8 -> relu -> dense 3", for messages.
fn describe(s: &Sequential) -> String {
    let mut out = format!("input {}", s.input);
    for layer in &s.layers {
        out += " -> ";
        out += &match layer {
            Layer::Dense(d) => format!("dense {}", d.units),
            Layer::Dropout(r) => format!("dropout {r}"),
            l => l.kind().to_string(),
        };
    }
    out
}

fn listing(tensors: &[(String, Vec<usize>)]) -> String {
    let items: Vec<String> = tensors.iter().map(|(n, s)| format!("{n} {s:?}")).collect();
    format!("[{}]", items.join(", "))
}

/// Opens a safetensors file and reads its header, checking the header against the file's
/// length; the tensor data is read later, by [`Checked::read_data`], once the caller has
/// checked the tensor table.
fn open_checked(path: &Path) -> Result<Checked> {
    let what = format!("{} (safetensors)", path.display());
    let bad = |detail: String| Error::format(&what, detail);
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 8 {
        return Err(bad(format!(
            "truncated or not safetensors: {len} bytes, shorter than the 8-byte header length"
        )));
    }
    let mut n_bytes = [0u8; 8];
    file.read_exact(&mut n_bytes)
        .map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(n_bytes);
    if n > MAX_HEADER || n > len - 8 {
        return Err(bad(format!(
            "truncated or not safetensors: the header length field says {n} bytes, \
             but {} follow it (and headers are at most {MAX_HEADER})",
            len - 8
        )));
    }
    let mut bytes = Vec::with_capacity(8 + n as usize);
    bytes.extend_from_slice(&n_bytes);
    (&mut file)
        .take(n)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let header: Metadata = serde_json::from_slice(&bytes[8..]).map_err(|e| {
        bad(format!(
            "not a safetensors file: the header is not a valid tensor table ({e})"
        ))
    })?;
    let data_len = header.data_len() as u64;
    let have = len - 8 - n;
    if data_len != have {
        return Err(bad(if data_len > have {
            format!("truncated: the header describes {data_len} bytes of tensor data but only {have} follow")
        } else {
            format!(
                "{} unexpected bytes after the {data_len} bytes of tensor data",
                have - data_len
            )
        }));
    }
    Ok(Checked {
        what,
        file: Some(file),
        len,
        data_start: bytes.len(),
        bytes,
        header,
    })
}

impl Checked {
    /// Reads the tensor data, whose size the header and the file length agree on.
    fn read_data(&mut self) -> Result<()> {
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        let size = usize::try_from(self.len).map_err(|_| {
            self.format_error(format!("{} bytes do not fit in memory here", self.len))
        })?;
        self.bytes.reserve_exact(size - self.bytes.len());
        let data_len = self.len - self.data_start as u64;
        (&mut file)
            .take(data_len)
            .read_to_end(&mut self.bytes)
            .map_err(|e| self.format_error(format!("reading the tensor data: {e}")))?;
        if self.bytes.len() as u64 != self.len {
            return Err(self.format_error("the file changed while it was read"));
        }
        // The crate's own checks (offsets, sizes) on top of ours.
        SafeTensors::deserialize(&self.bytes)
            .map_err(|e| self.format_error(format!("not a valid safetensors file: {e}")))?;
        Ok(())
    }
}

/// Checks the tensors of `file` against the parameters and buffers of `model`, then
/// copies them in.
fn fill(model: &mut Model, file: &mut Checked, whose: &str) -> Result<()> {
    let params = model.params().iter().map(|p| (p.name.clone(), &p.value));
    let expected: Vec<(String, Vec<usize>)> = params
        .chain(model.buffers())
        .map(|(name, t)| (name, t.shape().to_vec()))
        .collect();
    file.expect(&expected, whose)?;
    file.read_data()?;
    for p in model.params_mut() {
        let values = file.values(&p.name)?;
        p.value.write(&values)?;
    }
    for (name, t) in model.buffers_mut() {
        t.write(&file.values(&name)?)?;
    }
    Ok(())
}

/// Rebuilds the model a kiln safetensors file describes, on `device`, with its weights.
fn build(file: &mut Checked, device: &Device) -> Result<Model> {
    check_format(file)?;
    let toml = file.meta("model").ok_or_else(|| {
        file.format_error(
            "no 'model' metadata, so not saved by kiln: build the model yourself \
             and use load_weights_into",
        )
    })?;
    let spec = ModelFile::parse_named(toml, &format!("{} metadata 'model'", file.what))?;
    let seed = match file.meta("seed") {
        Some(_) => file.number("seed")?,
        None => 0,
    };
    // The file's length bounds its tensors, and they bound what building may allocate:
    // a metadata model much larger than the weights present is refused before it is
    // built. A small one is built, so `fill` can name the tensors that differ.
    let needed = if spec.is_graph() {
        spec.to_graph()?.param_count()?
    } else {
        spec.to_sequential()?.param_count()?
    };
    let held = file
        .header
        .tensors()
        .values()
        .map(|t| {
            t.shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .unwrap_or(usize::MAX)
        })
        .fold(0usize, usize::saturating_add);
    if needed > held && needed > SMALL_MODEL {
        return Err(file.format_error(format!(
            "the model in its metadata ({}) has {needed} parameters, but the file holds \
             only {held} values",
            describe_file(&spec)
        )));
    }
    let mut model = spec.build(device, seed)?;
    fill(&mut model, file, "the model in its metadata")?;
    Ok(model)
}

/// A "format" other than ours means a layout this version does not know.
fn check_format(file: &Checked) -> Result<()> {
    match file.meta("format") {
        Some(format) if format != FORMAT => Err(file.format_error(format!(
            "metadata format is '{format}', this kiln reads '{FORMAT}'"
        ))),
        _ => Ok(()),
    }
}

/// Loads the model of a checkpoint directory or of one `.safetensors` file saved by kiln.
pub fn load_model(path: impl AsRef<Path>, device: &Device) -> Result<Model> {
    let mut file = open_checked(&file_in(path.as_ref()))?;
    build(&mut file, device)
}

/// Loads weights into an existing model, checking every tensor's name, dtype and shape.
///
/// Any safetensors file with the model's state_dict names works, e.g. one written by
/// PyTorch for an `nn.Sequential` of the same layers.
pub fn load_weights_into(model: &mut Model, path: impl AsRef<Path>) -> Result<()> {
    let mut file = open_checked(&file_in(path.as_ref()))?;
    fill(model, &mut file, "the model")
}

/// Rebuilds a trainer from a checkpoint directory written by [`save`]: model, weights,
/// loss, optimizer with its state, metrics (each output's loss, weight and metrics for a
/// trainer of `compile_outputs`), and the step and epoch counters, so that `fit`
/// continues as if it had never stopped.
pub fn load_trainer(dir: impl AsRef<Path>, device: &Device) -> Result<Trainer> {
    let dir = dir.as_ref();
    let mut weights = open_checked(&dir.join(MODEL_FILE))?;
    let model = build(&mut weights, device)?;
    let mut opt_file = matching_optimizer(dir, &weights)?;
    check_format(&opt_file)?;
    let training_text = opt_file
        .meta("training")
        .ok_or_else(|| opt_file.format_error("metadata has no 'training'"))?;
    let training: TrainingSpec = toml::from_str(training_text).map_err(|e| {
        opt_file.format_error(format!("metadata 'training' is not valid: {}", e.message()))
    })?;
    let mut trainer = training.compile(model)?;
    let step: u64 = opt_file.number("step")?;
    let epoch: usize = opt_file.number("epoch")?;
    let saved_slots: usize = opt_file.number("state_slots")?;
    let slots = trainer.optimizer().rule.state_slots();
    if saved_slots != 0 && saved_slots != slots {
        return Err(opt_file.format_error(format!(
            "holds {saved_slots} state tensors per parameter, the optimizer uses {slots}"
        )));
    }
    let expected: Vec<(String, Vec<usize>)> = trainer
        .model
        .params()
        .iter()
        .flat_map(|p| {
            (0..saved_slots).map(|k| (format!("{}.state{k}", p.name), p.value.shape().to_vec()))
        })
        .collect();
    opt_file.expect(&expected, "the optimizer state of the model")?;
    opt_file.read_data()?;
    for p in trainer.model.params_mut() {
        p.state = (0..saved_slots)
            .map(|k| {
                let v = opt_file.values(&format!("{}.state{k}", p.name))?;
                Tensor::from_slice(device, &v, p.value.shape())
            })
            .collect::<Result<_>>()?;
    }
    trainer.set_progress(step, epoch);
    Ok(trainer)
}

/// The optimizer file saved together with `weights`: the current one, or the previous one
/// when a save was interrupted between its two renames.
fn matching_optimizer(dir: &Path, weights: &Checked) -> Result<Checked> {
    let id = weights.meta("checkpoint");
    let current = open_checked(&dir.join(OPTIMIZER_FILE));
    if let Ok(file) = &current {
        if file.meta("checkpoint") == id {
            return current;
        }
    }
    let prev_path = dir.join(PREVIOUS_OPTIMIZER_FILE);
    if prev_path.exists() {
        if let Ok(prev) = open_checked(&prev_path) {
            if prev.meta("checkpoint") == id {
                return Ok(prev);
            }
        }
    }
    let file = current?;
    Err(file.format_error(format!(
        "belongs to another save than {} (checkpoint '{}' vs '{}')",
        weights.what,
        file.meta("checkpoint").unwrap_or("none"),
        id.unwrap_or("none")
    )))
}
