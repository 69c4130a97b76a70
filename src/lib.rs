//! kiln: train neural networks on any GPU through wgpu compute shaders.
//!
//! Layers, top to bottom (each uses only those below it):
//! `tune` (hyperparameter search: trials as run folders, their results and the best),
//! `io` (model files and checkpoints), `train` (compile, fit, evaluate, predict),
//! `nn` and `optim` (layers, models, optimizers), with `data` (data sets) and `dist`
//! (collective communication across replicas and ranks: threads, and MPI behind the
//! feature `mpi`) beside them, `ops` (one file per op: shape checks, CPU reference, GPU
//! dispatch), `tensor`, `device`, `error`. One exception, by design: each layer's file in `nn::layers`
//! also reads and writes its own model-file entry (the schema types of `io::model_file`).
//!
//! Nothing reachable from the public API panics on bad input: every failure is an
//! [`Error`]. The lints below make clippy prove it for the library's own code (tests may
//! unwrap); an `#[allow]` marks each internal invariant that needs one, with the reason.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod io;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod tensor;
pub mod train;
pub mod tune;

pub use device::{list_adapters, AdapterSummary, Device, Stats};
pub use error::{Error, GraphError, Result, TuneError};
pub use nn::{Dense, Embedding, Graph, Init, Layer, Model, Sequential};
pub use ops::Activation;
pub use optim::{Optimizer, Schedule};
pub use tensor::Tensor;
pub use train::{
    EarlyStopping, FitOptions, History, Loss, Metric, OutputLoss, Trainer, Validation,
};

/// The README's Rust examples, run by `cargo test --doc` so that they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The Rust examples of `docs/models.md`, run by `cargo test --doc`.
#[doc = include_str!("../docs/models.md")]
#[cfg(doctest)]
pub struct ModelsDoctests;

/// The Rust examples of `docs/training.md`, run by `cargo test --doc`.
#[doc = include_str!("../docs/training.md")]
#[cfg(doctest)]
pub struct TrainingDoctests;

/// The Rust examples of `docs/tensorboard.md`, run by `cargo test --doc`.
#[doc = include_str!("../docs/tensorboard.md")]
#[cfg(doctest)]
pub struct TensorboardDoctests;

/// The Rust examples of `docs/tune.md`, run by `cargo test --doc`.
#[doc = include_str!("../docs/tune.md")]
#[cfg(doctest)]
pub struct TuneDoctests;

/// The Rust examples of `docs/data.md`, run by `cargo test --doc`.
#[doc = include_str!("../docs/data.md")]
#[cfg(doctest)]
pub struct DataDoctests;

/// The Rust examples of `docs/checkpoints.md`, run by `cargo test --doc`.
#[doc = include_str!("../docs/checkpoints.md")]
#[cfg(doctest)]
pub struct CheckpointsDoctests;

/// The Rust examples of `docs/errors.md`, run by `cargo test --doc`.
#[doc = include_str!("../docs/errors.md")]
#[cfg(doctest)]
pub struct ErrorsDoctests;

/// The Rust examples of `docs/deployment.md`, compiled by `cargo test --doc`.
#[doc = include_str!("../docs/deployment.md")]
#[cfg(doctest)]
pub struct DeploymentDoctests;

/// The code of `docs/architecture.md` (a sketch, marked `ignore`).
#[doc = include_str!("../docs/architecture.md")]
#[cfg(doctest)]
pub struct ArchitectureDoctests;
