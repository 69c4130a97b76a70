//! Files: model descriptions in TOML ([`ModelFile`]) and checkpoints in the
//! safetensors format ([`save`], [`load_trainer`], [`load_model`], ...).
//!
//! Both are meant to be read by other tools: the TOML by people, the checkpoints
//! by PyTorch/NumPy through Hugging Face's `safetensors` package. [`onnx`] exports a
//! trained model for ONNX runtimes; [`tensorboard`] writes training logs for TensorBoard.

pub mod checkpoint;
mod ensemble;
pub mod model_file;
pub mod onnx;
pub mod tensorboard;

pub use checkpoint::{load_model, load_trainer, load_weights_into, save, save_model};
pub use model_file::{
    EntryValue, InputSpec, LayerSpec, ModelFile, NodeSpec, OutputSpec, ScheduleSpec, TrainingSpec,
};

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// A file written next to its target, not yet renamed over it.
pub(crate) struct Pending {
    tmp: PathBuf,
    target: PathBuf,
}

impl Pending {
    /// Writes `bytes` to a temporary file beside `target` and flushes it to disk.
    pub(crate) fn write(target: &Path, bytes: &[u8]) -> Result<Pending> {
        let name = target
            .file_name()
            .ok_or_else(|| Error::arg("path", format!("{} names no file", target.display())))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        // Unique per process and write, so concurrent saves never share a temporary file.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
        let tmp = target.with_file_name(tmp_name);
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
        Ok(Pending {
            tmp,
            target: target.to_path_buf(),
        })
    }

    /// Renames the temporary file over the target (atomic on POSIX file systems).
    pub(crate) fn commit(self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.target).map_err(|e| {
            let _ = std::fs::remove_file(&self.tmp);
            Error::io(&self.target, e)
        })
    }

    /// Removes the temporary file after a failure elsewhere.
    pub(crate) fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Pending::write(path, bytes)?.commit()?;
    sync_dir(parent_dir(path))
}

/// The directory holding `path` ("." for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes renames in `dir` durable: without it a crash can forget them.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))?;
    #[cfg(not(unix))]
    let _ = dir; // Windows cannot open a directory as a file; its renames are journaled.
    Ok(())
}
