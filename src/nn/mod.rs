//! Layers, the `Sequential` builder and built models.

pub mod init;
pub mod layer;
pub mod layers;
pub mod model;

pub use init::Init;
pub use layer::{Dense, Layer, Sequential};
pub use model::{Buffers, Model, Param};
