//! Graph models (Keras's Functional API): named inputs, layers applied to named nodes,
//! merges (`add`, `concatenate`, `multiply`), a layer applied at several places sharing
//! its weights, and named outputs. A [`Graph`] is a description; [`Graph::build`] checks
//! it whole (typed [`GraphError`]s naming the nodes, nothing half-built) and plans it like
//! a [`Sequential`], which is the one-input, one-output chain of the same machinery.
//!
//! ```
//! use kiln::{Activation, Dense, Device, Graph, Layer};
//! let mut g = Graph::new();
//! g.input("x", &[4])
//!     .layer("h", Layer::Dense(Dense::new(4)), &["x"])
//!     .layer("r", Layer::Activation(Activation::Relu), &["h"])
//!     .add("sum", &["x", "r"])
//!     .layer("out", Layer::Dense(Dense::new(2)), &["sum"])
//!     .output("out");
//! let model = g.build(&Device::cpu(), 7)?;
//! assert!(model.param("h.weight").is_some());
//! # Ok::<(), kiln::Error>(())
//! ```

pub mod inputs;
mod resolve;

use crate::device::Device;
use crate::error::Result;
use crate::nn::layer::Sequential;
use crate::nn::layers::{add, concatenate, multiply, Layer, LayerDef};
use crate::nn::model::Model;

pub(crate) use resolve::Resolved;

/// What a node computes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A layer with its own weights.
    Layer(Layer),
    /// The layer of another node, with that node's weights (their gradients are summed).
    Shared(String),
    /// Elementwise sum of two or more inputs of one shape.
    Add,
    /// Inputs joined on the feature axis ([features]) or the channel axis ([c, h, w]).
    Concatenate,
    /// Elementwise product of two inputs of one shape.
    Multiply,
}

impl Op {
    /// The layer definition of a layer or merge (`None` for a shared layer).
    pub(crate) fn def(&self) -> Option<Box<dyn LayerDef>> {
        match self {
            Op::Layer(layer) => Some(layer.def()),
            Op::Shared(_) => None,
            Op::Add => Some(Box::new(add::Add)),
            Op::Concatenate => Some(Box::new(concatenate::Concatenate)),
            Op::Multiply => Some(Box::new(multiply::Multiply)),
        }
    }

    /// Whether the op joins several inputs.
    pub(crate) fn is_merge(&self) -> bool {
        matches!(self, Op::Add | Op::Concatenate | Op::Multiply)
    }
}

/// One named node: an op applied to named inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Its name: parameters are `{name}.weight`, summaries and errors show it.
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// The inputs or nodes it reads, by name.
    pub inputs: Vec<String>,
    /// An activation (or softmax) after a layer node's layer, as Keras's
    /// `Dense(4, activation="relu")`: the node's output, which other nodes read by its
    /// name, is after it, and its weights keep the node's name. A node sharing this one's
    /// layer applies it too.
    pub activation: Option<Layer>,
}

/// A model described as named nodes (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    /// Named inputs with their sample shapes ([features] or [c, h, w]).
    pub inputs: Vec<(String, Vec<usize>)>,
    /// The nodes, in the order declared (which seeds their weights).
    pub nodes: Vec<Node>,
    /// The nodes whose outputs the model returns.
    pub outputs: Vec<String>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Declares an input taking samples of `shape` ([features], or [c, h, w] images). A
    /// graph with several inputs takes their rows packed (see [`inputs::pack`]).
    pub fn input(&mut self, name: &str, shape: &[usize]) -> &mut Graph {
        self.inputs.push((name.to_string(), shape.to_vec()));
        self
    }

    /// Any node.
    pub fn node(&mut self, name: &str, op: Op, inputs: &[&str]) -> &mut Graph {
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            activation: None,
        });
        self
    }

    /// Applies a new layer followed by `activation` (an activation or softmax) as one
    /// node: its weights are `{name}.weight`, its output is after the activation.
    pub fn layer_with_activation(
        &mut self,
        name: &str,
        layer: Layer,
        activation: Layer,
        inputs: &[&str],
    ) -> &mut Graph {
        self.layer(name, layer, inputs);
        if let Some(node) = self.nodes.last_mut() {
            node.activation = Some(activation);
        }
        self
    }

    /// Applies a new layer (with its own weights) to one input.
    pub fn layer(&mut self, name: &str, layer: Layer, inputs: &[&str]) -> &mut Graph {
        self.node(name, Op::Layer(layer), inputs)
    }

    /// Applies the layer of node `of`, with its weights, to another input.
    pub fn shared(&mut self, name: &str, of: &str, inputs: &[&str]) -> &mut Graph {
        self.node(name, Op::Shared(of.to_string()), inputs)
    }

    /// The elementwise sum of `inputs`.
    pub fn add(&mut self, name: &str, inputs: &[&str]) -> &mut Graph {
        self.node(name, Op::Add, inputs)
    }

    /// `inputs` joined on the feature (or channel) axis.
    pub fn concatenate(&mut self, name: &str, inputs: &[&str]) -> &mut Graph {
        self.node(name, Op::Concatenate, inputs)
    }

    /// The elementwise product of two inputs.
    pub fn multiply(&mut self, name: &str, inputs: &[&str]) -> &mut Graph {
        self.node(name, Op::Multiply, inputs)
    }

    /// Marks a node as an output of the model.
    pub fn output(&mut self, name: &str) -> &mut Graph {
        self.outputs.push(name.to_string());
        self
    }

    /// Checks the graph, allocates and initialises the weights on `device` (seeded) and
    /// plans execution. Errors are [`crate::GraphError`]s naming the nodes involved.
    pub fn build(&self, device: &Device, seed: u64) -> Result<Model> {
        let resolved = self.resolve()?;
        let mut model =
            crate::nn::model::planner::plan(&resolved, &self.inputs, None, device, seed)?;
        model.graph = Some(self.clone());
        Ok(model)
    }

    /// The number of trainable values the graph's layers hold (a shared layer's once).
    pub fn param_count(&self) -> Result<usize> {
        let resolved = self.resolve()?;
        Ok(resolved
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.owner == *i)
            .flat_map(|(_, n)| n.def.params(&n.input_shape, &n.shape))
            .map(|p| p.shape.iter().product::<usize>())
            .sum())
    }

    /// The chain a `Sequential` stands for: input "input", nodes named by layer index
    /// ("0", "1", ..), the last one the output.
    pub fn from_sequential(seq: &Sequential) -> Graph {
        let mut g = Graph::new();
        g.input("input", &seq.input_shape());
        let mut last = "input".to_string();
        for (i, layer) in seq.layers.iter().enumerate() {
            let name = i.to_string();
            g.layer(&name, layer.clone(), &[&last]);
            last = name;
        }
        g.output(&last);
        g
    }
}
