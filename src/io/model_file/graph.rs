//! Graph model files: `[[inputs]]`, `[[nodes]]` and `outputs` in place of `input` and
//! `[[layers]]`. Each node's layer keys are those of a `[[layers]]` entry, checked by the
//! layer's own file; the graph as a whole is checked by [`Graph::resolve`], whose
//! [`GraphError`]s come back with the line of the node they name.

use super::conversion::joined;
use super::entry::{entry_layers, Entry};
use super::schema::{InputSpec, ModelFile, NodeSpec};
use super::validation::{check, invalid, join, line_of, Invalid, Seg};
use crate::error::{Error, GraphError, Result};
use crate::nn::graph::{Graph, Node, Op};

impl ModelFile {
    /// Whether the file describes a graph (`[[inputs]]`, `[[nodes]]` or `outputs`).
    pub fn is_graph(&self) -> bool {
        !self.inputs.is_empty() || !self.nodes.is_empty() || !self.outputs.is_empty()
    }

    /// The graph this file describes, each node's keys checked (not yet the graph as a
    /// whole: [`ModelFile::to_graph`] does both).
    pub(crate) fn graph_of(&self) -> std::result::Result<Graph, Invalid> {
        for (key, set) in [
            ("input", self.input != 0),
            ("image", self.image.is_some()),
            ("layers", !self.layers.is_empty()),
        ] {
            check(!set, &[Seg::Key(key)], || {
                "a graph model file declares [[inputs]] and [[nodes]], not input, image or layers"
                    .into()
            })?;
        }
        let mut g = Graph::new();
        for (i, input) in self.inputs.iter().enumerate() {
            let at = [Seg::Key("inputs"), Seg::Index(i)];
            check(
                !input.name.is_empty(),
                &join(&at, [Seg::Key("name")]),
                || "an input needs a name".into(),
            )?;
            check(
                matches!(input.shape.len(), 1 | 3) && input.shape.iter().all(|&d| d > 0),
                &join(&at, [Seg::Key("shape")]),
                || {
                    format!(
                        "{:?} is not [features] or [channels, height, width] of sizes >= 1",
                        input.shape
                    )
                },
            )?;
            g.input(&input.name, &input.shape);
        }
        for (i, node) in self.nodes.iter().enumerate() {
            g.nodes.push(node_of(node, i)?);
        }
        g.outputs = self.outputs.clone();
        Ok(g)
    }

    /// The graph this file describes, checked whole: a bad graph is a
    /// [`GraphError::InFile`] naming the nodes and the line.
    pub fn to_graph(&self) -> Result<Graph> {
        self.checked_graph(None, "model file")
    }

    /// The graph, checked whole; with the file's text, errors carry lines.
    pub(crate) fn checked_graph(&self, text: Option<&str>, what: &str) -> Result<Graph> {
        let g = self.graph_of().map_err(|bad| {
            let at = text
                .and_then(|t| line_of(t, &bad.path))
                .map(|l| format!("line {l}: "))
                .unwrap_or_default();
            let path = super::validation::path_text(&bad.path);
            Error::format(what, format!("{at}{path}: {}", bad.detail))
        })?;
        if let Err(e) = g.resolve() {
            return Err(match e {
                Error::Graph(error) => {
                    let line = text.and_then(|t| line_of(t, &self.path_of(&error)));
                    match line {
                        Some(line) => GraphError::InFile {
                            what: what.to_string(),
                            line,
                            error: Box::new(error),
                        }
                        .into(),
                        None => error.into(),
                    }
                }
                other => other,
            });
        }
        Ok(g)
    }

    /// Where in the file the nodes a graph error names are.
    fn path_of(&self, error: &GraphError) -> Vec<Seg> {
        let node_key = |name: &str, key: &'static str| -> Vec<Seg> {
            match self.nodes.iter().rposition(|n| n.name == name) {
                Some(i) => vec![Seg::Key("nodes"), Seg::Index(i), Seg::Key(key)],
                None => match self.inputs.iter().rposition(|n| n.name == name) {
                    Some(i) => vec![Seg::Key("inputs"), Seg::Index(i), Seg::Key("name")],
                    None => vec![Seg::Key("outputs")],
                },
            }
        };
        match error {
            GraphError::DuplicateName(name) | GraphError::Unused(name) => node_key(name, "name"),
            GraphError::UnknownNode { node, missing } => {
                let shares = self
                    .nodes
                    .iter()
                    .any(|n| &n.name == node && n.shares.as_ref() == Some(missing));
                node_key(node, if shares { "shares" } else { "inputs" })
            }
            GraphError::Cycle(names) => node_key(names.first().map_or("", |s| s), "inputs"),
            GraphError::Unreached { node, .. } => node_key(node, "name"),
            GraphError::Empty(what) => vec![Seg::Key(what)],
            GraphError::MergeShapes { node, .. }
            | GraphError::LayerShape { node, .. }
            | GraphError::Arity { node, .. } => node_key(node, "inputs"),
            GraphError::Unsupported(_) | GraphError::NoLoss(_) | GraphError::InFile { .. } => {
                vec![Seg::Key("outputs")]
            }
        }
    }

    /// The file describing `graph` (no training section).
    pub fn from_graph(graph: &Graph) -> ModelFile {
        let inputs = graph
            .inputs
            .iter()
            .map(|(name, shape)| InputSpec {
                name: name.clone(),
                shape: shape.clone(),
            })
            .collect();
        let nodes = graph
            .nodes
            .iter()
            .map(|node| {
                let mut spec = NodeSpec {
                    name: node.name.clone(),
                    inputs: node.inputs.clone(),
                    ..NodeSpec::default()
                };
                match &node.op {
                    Op::Layer(layer) => {
                        spec.layer = layer.def().entry();
                        if let Some(act) = &node.activation {
                            spec.layer = joined(&spec.layer, act.def().entry());
                        }
                        // The node's inputs are its names; shapes are checked when built.
                        spec.layer.0.remove("inputs");
                    }
                    Op::Shared(of) => spec.shares = Some(of.clone()),
                    Op::Add => spec.add = Some(true),
                    Op::Concatenate => spec.concatenate = Some(true),
                    Op::Multiply => spec.multiply = Some(true),
                }
                spec
            })
            .collect();
        ModelFile {
            inputs,
            nodes,
            outputs: graph.outputs.clone(),
            ..ModelFile::default()
        }
    }
}

/// The node a `[[nodes]]` entry describes: one layer, a shared layer or a merge.
fn node_of(spec: &NodeSpec, i: usize) -> std::result::Result<Node, Invalid> {
    let at = [Seg::Key("nodes"), Seg::Index(i)];
    let field = |name: &'static str| join(&at, [Seg::Key(name)]);
    check(!spec.name.is_empty(), &field("name"), || {
        "a node needs a name".into()
    })?;
    let merges = [
        ("add", spec.add, Op::Add),
        ("concatenate", spec.concatenate, Op::Concatenate),
        ("multiply", spec.multiply, Op::Multiply),
    ];
    for (key, value, _) in &merges {
        check(*value != Some(false), &field(key), || {
            format!("leave {key} out, or set it to true")
        })?;
    }
    let mut kinds: Vec<(&'static str, Op)> = merges
        .into_iter()
        .filter(|(_, value, _)| *value == Some(true))
        .map(|(key, _, op)| (key, op))
        .collect();
    if let Some(of) = &spec.shares {
        kinds.push(("shares", Op::Shared(of.clone())));
    }
    let has_layer = !spec.layer.is_empty();
    let op = match kinds.pop() {
        Some((key, op)) => {
            check(kinds.is_empty() && !has_layer, &field(key), || {
                "a node is one layer, one shared layer or one merge: give the others their own [[nodes]]"
                    .into()
            })?;
            op
        }
        None => {
            check(has_layer, &at, || {
                "a node needs a layer (dense = UNITS, activation = NAME, ...), shares = \"NODE\", \
                 or a merge (add, concatenate, multiply = true)"
                    .into()
            })?;
            let entry = Entry {
                spec: &spec.layer,
                field: &field,
                width: 0,
            };
            let mut layers = entry_layers(&entry, &at)?.into_iter();
            let (layer, activation) = (layers.next(), layers.next());
            let op = layer
                .map(Op::Layer)
                .ok_or_else(|| invalid(&at, "a node needs a layer"))?;
            return Ok(Node {
                name: spec.name.clone(),
                op,
                inputs: spec.inputs.clone(),
                activation,
            });
        }
    };
    Ok(Node {
        name: spec.name.clone(),
        op,
        inputs: spec.inputs.clone(),
        activation: None,
    })
}
