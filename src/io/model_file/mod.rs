//! Model files: a sequential or graph model and, optionally, how to train it, in TOML.
//!
//! [`schema`] holds the tables and keys, [`validation`] checks them (each layer's keys in
//! its own file under [`crate::nn::layers`]), [`conversion`] turns a file into a model and
//! back, [`graph`] reads and writes graph model files, [`training`] handles the
//! `[training]` section and [`outputs`] its per-output `[training.outputs.NAME]` tables.

pub(crate) mod conversion;
pub(crate) mod entry;
pub(crate) mod graph;
pub(crate) mod outputs;
pub(crate) mod schema;
pub(crate) mod training;
pub(crate) mod validation;

pub(crate) use schema::{loss_name, rule_name};
pub use schema::{
    EntryValue, InputSpec, LayerSpec, ModelFile, NodeSpec, OutputSpec, ScheduleSpec, TrainingSpec,
};
