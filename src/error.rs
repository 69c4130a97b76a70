//! The one error type of kiln's public API.

use thiserror::Error;

/// Everything that can go wrong in kiln, each with what to do about it.
#[derive(Debug, Error)]
pub enum Error {
    /// No GPU adapter could be found or matched the user's filter.
    #[error("no usable GPU adapter: {found}. Install a Vulkan driver (on Debian/Ubuntu without a GPU: `apt-get install -y mesa-vulkan-drivers` for the lavapipe software adapter), check KILN_ADAPTER/KILN_BACKEND, or use Device::cpu()")]
    NoAdapter {
        /// What was found instead.
        found: String,
    },
    /// The adapter refused to open a device.
    #[error("could not open a device on adapter '{adapter}': {reason}")]
    DeviceRequest {
        /// Adapter name.
        adapter: String,
        /// The driver's reason.
        reason: String,
    },
    /// An environment variable holds a value kiln does not understand.
    #[error("{var}={value} is not valid: {expected}")]
    BadEnv {
        /// Variable name.
        var: &'static str,
        /// Its value.
        value: String,
        /// The values accepted.
        expected: &'static str,
    },
    /// Shapes of the operands do not fit together.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The operation or layer that checked.
        op: String,
        /// What did not fit.
        detail: String,
    },
    /// Operands live on different devices.
    #[error("{op}: operands live on different devices (move them with Tensor::to_device)")]
    DeviceMismatch {
        /// The operation that checked.
        op: &'static str,
    },
    /// A buffer would exceed one of the adapter's limits.
    #[error("{what} needs {size} bytes, over the adapter's {limit_name} of {limit} bytes; use a smaller batch or layer, or an adapter with larger limits")]
    OverLimit {
        /// What was being allocated.
        what: String,
        /// Requested size in bytes.
        size: u64,
        /// Name of the wgpu limit.
        limit_name: &'static str,
        /// The limit's value.
        limit: u64,
    },
    /// An argument has a value outside its domain.
    #[error("invalid {name}: {detail}")]
    InvalidArgument {
        /// The argument.
        name: String,
        /// Why it is invalid.
        detail: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file or text is not in the expected format.
    #[error("{what}: {detail}")]
    Format {
        /// The file or input, with the format expected.
        what: String,
        /// What is wrong and where.
        detail: String,
    },
    /// Training produced a NaN or infinite loss.
    #[error("loss became {value} at epoch {epoch}, step {step}; lower the learning rate, clip gradients, or check the inputs for NaN/Inf")]
    Diverged {
        /// The loss value.
        value: f32,
        /// Epoch (1-based).
        epoch: usize,
        /// Step within the epoch (1-based).
        step: usize,
    },
    /// The GPU reported an error that is not one of the kinds below (e.g. validation).
    #[error("GPU error: {0}")]
    Gpu(String),
    /// The device (or the host, for CPU tensors) could not provide the memory asked for.
    #[error("out of memory: {what}{} could not be allocated: {detail}; drop unused tensors (GpuContext::trim_pool returns pooled buffers to the driver), or use a smaller batch or model", bytes_note(*.size))]
    OutOfMemory {
        /// What was being allocated.
        what: String,
        /// Requested size in bytes (0 when the driver reported it later, without a size).
        size: u64,
        /// Who refused, and why.
        detail: String,
    },
    /// The GPU device was lost (driver reset, device removed, or destroyed).
    #[error("the GPU device was lost ({reason}); nothing more can run on it: open a new Device and rebuild or reload the model (from its last checkpoint)")]
    DeviceLost {
        /// The driver's reason.
        reason: String,
    },
    /// A collective operation across ranks (kiln::dist) failed: a peer left or died, a
    /// peer did not join within the timeout, or the ranks called different collectives.
    #[error("distributed, rank {rank}: {detail}")]
    Distributed {
        /// The rank that reports the failure (this process's or this thread's).
        rank: usize,
        /// What failed, naming the peer ranks involved and the cause.
        detail: String,
    },
    /// Ranks disagree on something that must be the same on every rank (model, data set,
    /// batch size), found by `AllReduce::check_fingerprint` before training starts.
    #[error("distributed, rank {rank}: ranks {ranks:?} disagree with rank 0 on {what}: {detail}; start every rank with the same model, data and batch size")]
    RankMismatch {
        /// The rank that reports the mismatch (every rank reports the same one).
        rank: usize,
        /// What was compared.
        what: String,
        /// The ranks whose fingerprint differs from rank 0's.
        ranks: Vec<usize>,
        /// Every rank's fingerprint.
        detail: String,
    },
}

fn bytes_note(size: u64) -> String {
    if size == 0 {
        String::new()
    } else {
        format!(" ({size} bytes)")
    }
}

/// kiln's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for a shape error.
    pub(crate) fn shape(op: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Shape {
            op: op.into(),
            detail: detail.into(),
        }
    }

    /// Shorthand for a format error.
    pub(crate) fn format(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Format {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// Shorthand for an I/O error on `path`.
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// Shorthand for a failed collective operation, reported by `rank`.
    pub(crate) fn dist(rank: usize, detail: impl Into<String>) -> Self {
        Error::Distributed {
            rank,
            detail: detail.into(),
        }
    }

    /// Shorthand for an invalid argument.
    pub(crate) fn arg(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            detail: detail.into(),
        }
    }
}
