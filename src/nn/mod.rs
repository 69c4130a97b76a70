//! Layers, the `Sequential` builder and built models.

pub mod blocks;
pub mod graph;
pub mod init;
pub mod layer;
pub mod layers;
pub mod model;
pub mod onnx;

pub use graph::Graph;
pub use init::Init;
pub use layer::{Dense, Embedding, Layer, Sequential};
pub use model::{Buffers, Model, Param};
