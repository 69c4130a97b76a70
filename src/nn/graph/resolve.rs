//! Checking a graph whole before anything is allocated: names, references, reachability,
//! cycles, arities and shapes, each failure a [`GraphError`] naming the nodes. What comes
//! out is the nodes in an execution order (every node after its inputs, the output last)
//! with their shapes, wired by activation index.

use std::collections::{HashMap, HashSet};

use super::inputs::InputSlice;
use super::{Graph, Op};
use crate::error::{GraphError, Result};
use crate::nn::layers::{Layer, LayerDef};

/// The name of a multi-input model's packed input.
pub(crate) const PACKED: &str = "(packed inputs)";

/// A checked node in execution order.
#[derive(Debug)]
pub(crate) struct ResolvedNode {
    /// Its name.
    pub name: String,
    /// The layer it runs (the owner's, for a shared layer).
    pub def: Box<dyn LayerDef>,
    /// Activation indices of its inputs: 0 is the model's input, k + 1 node k's output.
    pub inputs: Vec<usize>,
    /// The names of its inputs.
    pub input_names: Vec<String>,
    /// Its first input's sample shape (parameters follow it).
    pub input_shape: Vec<usize>,
    /// Its output's sample shape.
    pub shape: Vec<usize>,
    /// The node (index in execution order) whose parameters it uses: itself, or the
    /// owner of a shared layer.
    pub owner: usize,
    /// Its place in the declaration order (seeds its weights).
    pub decl: usize,
}

/// A checked graph: its input and its nodes in execution order.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The input's name and sample shape (several inputs: their packed rows, see
    /// [`super::inputs`]).
    pub input: (String, Vec<usize>),
    /// Activations that hold inputs: the packed row and one per input's slice.
    pub input_acts: usize,
    /// The nodes in execution order; the output is the last (or the input, if none).
    pub nodes: Vec<ResolvedNode>,
    /// The outputs' activation indices, in declaration order (one output: the last).
    pub outputs: Vec<usize>,
}

impl Graph {
    /// Checks the graph and orders its nodes.
    pub(crate) fn resolve(&self) -> Result<Resolved> {
        self.check_names()?;
        if self.inputs.is_empty() {
            return Err(GraphError::Empty("inputs").into());
        }
        if self.outputs.is_empty() {
            return Err(GraphError::Empty("outputs").into());
        }
        if self.outputs.len() > 1 {
            for (k, output) in self.outputs.iter().enumerate() {
                if self.outputs[..k].contains(output) {
                    return Err(GraphError::DuplicateName(output.clone()).into());
                }
                if !self.nodes.iter().any(|n| &n.name == output) {
                    return Err(GraphError::Unsupported(format!(
                        "output '{output}' is an input: each of several outputs must be a node"
                    ))
                    .into());
                }
            }
        }
        self.check_reach()?;
        let order = self.order()?;
        let (input, slices) = self.input_slices();
        let input_acts = 1 + slices.len();
        let nodes = self.shapes(&input, slices, &order)?;
        let outputs = self
            .outputs
            .iter()
            // A node with an activation resolves to two of its name: its output is the last.
            .map(|o| {
                nodes
                    .iter()
                    .rposition(|n| &n.name == o)
                    .map_or(0, |k| k + 1)
            })
            .collect();
        Ok(Resolved {
            input,
            input_acts,
            nodes,
            outputs,
        })
    }

    /// Every input's and node's name, inputs first.
    fn names(&self) -> impl Iterator<Item = &String> {
        let nodes = self.nodes.iter().map(|n| &n.name);
        self.inputs.iter().map(|(n, _)| n).chain(nodes)
    }

    /// Every name once; every reference to a known name.
    fn check_names(&self) -> Result<()> {
        let mut seen = HashSet::new();
        let names = self.names();
        for name in names {
            if !seen.insert(name.as_str()) {
                return Err(GraphError::DuplicateName(name.clone()).into());
            }
        }
        let unknown = |node: &str, missing: &str| GraphError::UnknownNode {
            node: node.to_string(),
            missing: missing.to_string(),
        };
        for node in &self.nodes {
            for input in &node.inputs {
                if !seen.contains(input.as_str()) {
                    return Err(unknown(&node.name, input).into());
                }
            }
            if node.activation.is_some() && !matches!(node.op, Op::Layer(_)) {
                return Err(GraphError::Unsupported(format!(
                    "'{}' has an activation, which only a layer node takes",
                    node.name
                ))
                .into());
            }
            if let Some(act) = &node.activation {
                if !matches!(act, Layer::Activation(_) | Layer::Softmax) {
                    return Err(GraphError::Unsupported(format!(
                        "'{}' has a {} layer as its activation",
                        node.name,
                        act.kind()
                    ))
                    .into());
                }
            }
            if let Op::Shared(of) = &node.op {
                match self.nodes.iter().find(|n| &n.name == of) {
                    Some(n) if matches!(n.op, Op::Layer(_)) => {}
                    Some(_) => {
                        return Err(GraphError::Unsupported(format!(
                            "'{}' shares '{of}', which is not a layer node",
                            node.name
                        ))
                        .into())
                    }
                    None => return Err(unknown(&node.name, of).into()),
                }
            }
        }
        for output in &self.outputs {
            if !seen.contains(output.as_str()) {
                return Err(unknown("outputs", output).into());
            }
        }
        Ok(())
    }

    /// Every input and node contributes to an output, which inputs reach.
    fn check_reach(&self) -> Result<()> {
        let by_name: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut reached: HashSet<&str> = HashSet::new();
        for output in &self.outputs {
            let mut stack = vec![output.as_str()];
            while let Some(name) = stack.pop() {
                if !reached.insert(name) {
                    continue;
                }
                if let Some(node) = by_name.get(name).map(|&i| &self.nodes[i]) {
                    if node.inputs.is_empty() {
                        return Err(GraphError::Unreached {
                            output: output.clone(),
                            node: node.name.clone(),
                        }
                        .into());
                    }
                    stack.extend(node.inputs.iter().map(String::as_str));
                }
            }
        }
        let names = self.names();
        for name in names {
            if !reached.contains(name.as_str()) {
                return Err(GraphError::Unused(name.clone()).into());
            }
        }
        Ok(())
    }

    /// Node indices (declaration order) in an execution order, or the cycle.
    fn order(&self) -> Result<Vec<usize>> {
        let mut placed: HashSet<&str> = self.inputs.iter().map(|(n, _)| n.as_str()).collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        let mut pending: Vec<usize> = (0..self.nodes.len()).collect();
        while !pending.is_empty() {
            let before = pending.len();
            let mut waiting = Vec::new();
            for i in pending {
                let node = &self.nodes[i];
                if node.inputs.iter().all(|n| placed.contains(n.as_str())) {
                    placed.insert(&node.name);
                    order.push(i);
                } else {
                    waiting.push(i);
                }
            }
            if waiting.len() == before {
                return Err(GraphError::Cycle(self.cycle(waiting)).into());
            }
            pending = waiting;
        }
        Ok(order)
    }

    /// The names of the nodes in a cycle among `waiting` (those that could not be placed),
    /// leaving out the ones only downstream of it.
    fn cycle(&self, mut waiting: Vec<usize>) -> Vec<String> {
        loop {
            let feeds = |i: usize, w: &[usize]| {
                let name = &self.nodes[i].name;
                w.iter().any(|&j| self.nodes[j].inputs.contains(name))
            };
            let kept: Vec<usize> = waiting
                .iter()
                .copied()
                .filter(|&i| feeds(i, &waiting))
                .collect();
            if kept.len() == waiting.len() {
                return waiting
                    .iter()
                    .map(|&i| self.nodes[i].name.clone())
                    .collect();
            }
            waiting = kept;
        }
    }

    /// The model's input, and where there are several, the nodes that slice each out of
    /// the packed rows.
    fn input_slices(&self) -> ((String, Vec<usize>), Vec<ResolvedNode>) {
        if let [one] = self.inputs.as_slice() {
            return (one.clone(), Vec::new());
        }
        let width = |s: &[usize]| s.iter().product::<usize>();
        let total: usize = self.inputs.iter().map(|(_, s)| width(s)).sum();
        let mut offset = 0;
        let slices = self
            .inputs
            .iter()
            .enumerate()
            .map(|(k, (name, shape))| {
                let def = InputSlice {
                    offset,
                    shape: shape.clone(),
                };
                offset += width(shape);
                ResolvedNode {
                    name: name.clone(),
                    def: Box::new(def),
                    inputs: vec![0],
                    input_names: vec![PACKED.to_string()],
                    input_shape: vec![total],
                    shape: shape.clone(),
                    owner: k,
                    // Not a declared node (and no weights to seed).
                    decl: usize::MAX,
                }
            })
            .collect();
        ((PACKED.to_string(), vec![total]), slices)
    }

    /// Shapes in execution order, with the layer behind each node.
    fn shapes(
        &self,
        input: &(String, Vec<usize>),
        slices: Vec<ResolvedNode>,
        order: &[usize],
    ) -> Result<Vec<ResolvedNode>> {
        let mut act: HashMap<&str, usize> = HashMap::from([(input.0.as_str(), 0)]);
        let mut shapes: Vec<Vec<usize>> = vec![input.1.clone()];
        let mut out: Vec<ResolvedNode> = Vec::with_capacity(order.len() + slices.len());
        for (k, (name, shape)) in self
            .inputs
            .iter()
            .enumerate()
            .filter(|_| !slices.is_empty())
        {
            act.insert(name, k + 1);
            shapes.push(shape.clone());
        }
        out.extend(slices);
        for &i in order {
            let node = &self.nodes[i];
            let def = match &node.op {
                Op::Shared(of) => self
                    .nodes
                    .iter()
                    .find(|n| &n.name == of)
                    .and_then(|n| n.op.def()),
                op => op.def(),
            };
            let def = def.ok_or_else(|| {
                GraphError::Unsupported(format!("node '{}' has no layer", node.name))
            })?;
            let inputs: Vec<usize> = node
                .inputs
                .iter()
                .map(|n| act.get(n.as_str()).copied().unwrap_or(0))
                .collect();
            let in_shapes: Vec<Vec<usize>> = inputs.iter().map(|&a| shapes[a].clone()).collect();
            check_arity(&node.name, &node.op, def.max_inputs(), &node.inputs)?;
            let shape = def
                .output_shape_of(&node.name, &in_shapes)
                .map_err(|e| shape_error(node, &in_shapes, e.to_string()))?;
            shapes.push(shape.clone());
            out.push(ResolvedNode {
                name: node.name.clone(),
                def,
                inputs,
                input_names: node.inputs.clone(),
                input_shape: in_shapes[0].clone(),
                shape,
                // A shared node's owner is linked below, once every node has its place.
                owner: out.len(),
                decl: i,
            });
            if let Some(layer) = self.activation_of(node) {
                let after = activation_node(&node.name, layer, out.len(), &shapes)?;
                shapes.push(after.shape.clone());
                out.push(after);
            }
            act.insert(&node.name, out.len());
        }
        self.link_owners(&mut out)?;
        Ok(out)
    }

    /// The activation after a node's layer: its own, or that of the node it shares.
    fn activation_of<'a>(&'a self, node: &'a super::Node) -> Option<&'a Layer> {
        match &node.op {
            Op::Shared(of) => self
                .nodes
                .iter()
                .find(|n| &n.name == of)
                .and_then(|n| n.activation.as_ref()),
            _ => node.activation.as_ref(),
        }
    }

    /// Points each shared node at its owner, whose parameters must have its shapes.
    fn link_owners(&self, nodes: &mut [ResolvedNode]) -> Result<()> {
        // A node's layer comes before its activation, which has its name too.
        let mut place: HashMap<String, usize> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            place.entry(n.name.clone()).or_insert(i);
        }
        for i in 0..nodes.len() {
            let Some(Op::Shared(of)) = self.nodes.get(nodes[i].decl).map(|n| &n.op) else {
                continue;
            };
            let Some(&owner) = place.get(of) else {
                return Err(GraphError::UnknownNode {
                    node: nodes[i].name.clone(),
                    missing: of.clone(),
                }
                .into());
            };
            let shapes = |n: &ResolvedNode| -> Vec<Vec<usize>> {
                n.def
                    .params(&n.input_shape, &n.shape)
                    .into_iter()
                    .map(|p| p.shape)
                    .collect()
            };
            if shapes(&nodes[i]) != shapes(&nodes[owner]) {
                let n = &nodes[i];
                return Err(GraphError::LayerShape {
                    node: n.name.clone(),
                    input: n.input_names.first().cloned().unwrap_or_default(),
                    shape: n.input_shape.clone(),
                    detail: format!(
                        "the weights of '{of}' were made for inputs {:?}",
                        nodes[owner].input_shape
                    ),
                }
                .into());
            }
            nodes[i].owner = owner;
        }
        Ok(())
    }
}

/// A node's shape error: at a merge, its inputs' shapes; at a layer, its input's.
fn shape_error(node: &super::Node, in_shapes: &[Vec<usize>], detail: String) -> GraphError {
    if node.op.is_merge() {
        GraphError::MergeShapes {
            node: node.name.clone(),
            inputs: node
                .inputs
                .iter()
                .cloned()
                .zip(in_shapes.iter().cloned())
                .collect(),
            detail,
        }
    } else {
        GraphError::LayerShape {
            node: node.name.clone(),
            input: node.inputs.first().cloned().unwrap_or_default(),
            shape: in_shapes.first().cloned().unwrap_or_default(),
            detail,
        }
    }
}

/// The node running a layer node's activation: it has the node's name (other nodes read
/// its output by that name), reads activation `act` and holds no weights.
fn activation_node(
    name: &str,
    layer: &Layer,
    act: usize,
    shapes: &[Vec<usize>],
) -> Result<ResolvedNode> {
    let def = layer.def();
    let input_shape = shapes.get(act).cloned().unwrap_or_default();
    let shape = def.output_shape(name, &input_shape)?;
    Ok(ResolvedNode {
        name: name.to_string(),
        def,
        inputs: vec![act],
        input_names: vec![name.to_string()],
        input_shape,
        shape,
        // Its own place in execution order: right after the layer whose output is `act`.
        owner: act,
        // Not a declared node (and no weights to seed).
        decl: usize::MAX,
    })
}

/// A layer takes one input (attention one or two), add and concatenate two or more,
/// multiply two.
fn check_arity(node: &str, op: &Op, max: usize, inputs: &[String]) -> Result<()> {
    let (ok, expected) = match op {
        Op::Layer(_) | Op::Shared(_) if max > 1 => ((1..=max).contains(&inputs.len()), "1 or 2"),
        Op::Layer(_) | Op::Shared(_) => (inputs.len() == 1, "1"),
        Op::Add | Op::Concatenate => (inputs.len() >= 2, "2 or more"),
        Op::Multiply => (inputs.len() == 2, "2"),
    };
    if ok {
        return Ok(());
    }
    Err(GraphError::Arity {
        node: node.to_string(),
        expected,
        got: inputs.to_vec(),
    }
    .into())
}
