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
    /// Ensemble members that cannot be combined (or no members at all).
    #[error("ensemble: {0}")]
    Ensemble(String),
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
    /// A graph model's description is inconsistent; nothing was built.
    #[error("graph model: {0}")]
    Graph(#[from] GraphError),
    /// A hyperparameter search (`kiln::tune`) was described or asked for wrongly.
    #[error("tune: {0}")]
    Tune(#[from] TuneError),
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

/// What is wrong with a [`crate::nn::Graph`], naming the nodes involved.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum GraphError {
    /// Two inputs or nodes share a name.
    #[error("the name '{0}' is used twice; every input and node needs its own")]
    DuplicateName(String),
    /// A node (or the outputs, or a shared layer) names a node that does not exist.
    #[error("{node} names '{missing}', which is no input or node of the graph")]
    UnknownNode {
        /// The node that refers (or "outputs").
        node: String,
        /// The name it refers to.
        missing: String,
    },
    /// The nodes feed each other in a loop.
    #[error("the nodes {0:?} form a cycle: each waits for another's output")]
    Cycle(Vec<String>),
    /// An input, or a node, contributes to no output.
    #[error("'{0}' reaches no output: connect it, or remove it")]
    Unused(String),
    /// An output depends on a node that no input reaches (a node without inputs).
    #[error("output '{output}' is reached by no input: node '{node}' has no inputs")]
    Unreached {
        /// The output.
        output: String,
        /// The node without inputs it depends on.
        node: String,
    },
    /// A graph without outputs (or inputs).
    #[error("the graph has no {0}")]
    Empty(&'static str),
    /// The inputs of a merge (add, concatenate, multiply) do not fit together.
    #[error("merge '{node}' cannot join {inputs:?}: {detail}")]
    MergeShapes {
        /// The merge node.
        node: String,
        /// Each input's name and sample shape.
        inputs: Vec<(String, Vec<usize>)>,
        /// Why.
        detail: String,
    },
    /// A layer applied to a node whose output shape it cannot take.
    #[error("node '{node}' cannot take the output {shape:?} of '{input}': {detail}")]
    LayerShape {
        /// The layer's node.
        node: String,
        /// The node it was applied to.
        input: String,
        /// That node's sample shape.
        shape: Vec<usize>,
        /// Why.
        detail: String,
    },
    /// A layer given the wrong number of inputs.
    #[error("node '{node}' takes {expected} input(s), got {got:?}")]
    Arity {
        /// The node.
        node: String,
        /// How many it takes.
        expected: &'static str,
        /// The inputs it was given.
        got: Vec<String>,
    },
    /// An output of a several-output model compiled without a loss.
    #[error("output '{0}' has no loss: give every output one in compile_outputs (a weight of 0 keeps it out of training)")]
    NoLoss(String),
    /// What this version of the graph API does not do yet.
    #[error("{0}")]
    Unsupported(String),
    /// An error of a graph model file, with the line of the node it names.
    #[error("{what}: line {line}: {error}")]
    InFile {
        /// The file.
        what: String,
        /// The 1-based line of the node (or key) involved.
        line: usize,
        /// What is wrong.
        error: Box<GraphError>,
    },
}

/// What is wrong with a hyperparameter search's description or its results.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum TuneError {
    /// A search space without any hyperparameter.
    #[error("the search space is empty: give at least one hyperparameter (--param NAME=VALUES or --space FILE)")]
    EmptySpace,
    /// A hyperparameter kiln does not search over.
    #[error("unknown hyperparameter '{name}'; kiln searches over {known}")]
    UnknownName {
        /// The name given.
        name: String,
        /// The names kiln knows.
        known: String,
    },
    /// A range whose low end is above its high end.
    #[error("{name}: the range {low}:{high} runs backwards; give the low end first")]
    BackwardRange {
        /// The hyperparameter.
        name: String,
        /// The low end given.
        low: f64,
        /// The high end given.
        high: f64,
    },
    /// A value outside what a hyperparameter takes, or a malformed one.
    #[error("{name}: {detail}")]
    BadValue {
        /// The hyperparameter (or option).
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// A budget of zero trials or zero time.
    #[error("the {0} budget is 0: no trial could run; give at least 1")]
    ZeroBudget(&'static str),
    /// A folder that holds no search (no trials.csv).
    #[error("{0} holds no search: trials.csv is missing; run `kiln tune --out DIR` first")]
    NoSearch(String),
    /// `best:N:DIR` with N = 0, or a search with no completed trial to choose from.
    #[error("{0}")]
    NoBest(String),
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
