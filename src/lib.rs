//! kiln: train neural networks on any GPU through wgpu compute shaders.
//!
//! Layers, top to bottom: `ops` (one file per op: shape checks, CPU reference,
//! GPU dispatch), `tensor`, `device`, `error`.

pub mod data;
pub mod device;
pub mod error;
pub mod ops;
pub mod tensor;

pub use device::{list_adapters, AdapterSummary, Device, Stats};
pub use error::{Error, Result};
pub use tensor::Tensor;
