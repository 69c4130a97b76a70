//! Model files: a sequential model and, optionally, how to train it, in TOML.
//!
//! [`schema`] holds the tables and keys, [`validation`] checks them (each layer's keys in
//! its own file under [`crate::nn::layers`]), [`conversion`] turns a file into a model and
//! back, [`training`] handles the `[training]` section.

pub(crate) mod conversion;
pub(crate) mod schema;
pub(crate) mod training;
pub(crate) mod validation;

pub(crate) use schema::{loss_name, rule_name};
pub use schema::{LayerSpec, ModelFile, Padding, ScheduleSpec, TrainingSpec};
