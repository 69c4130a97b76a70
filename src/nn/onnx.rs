//! The ONNX form of a model as plain data: nodes (op type, value names, attributes) and
//! constant tensors. Each layer writes its own nodes ([`crate::nn::layers::LayerDef::onnx`])
//! through an [`Emit`]; `kiln::io::onnx` turns the result into protobuf. Kept free of the
//! protobuf types so that `nn` does not depend on `io`.

use std::collections::HashSet;

use crate::error::{Error, Result};

/// An attribute value of a node.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    /// An integer (`axis`, `transB`).
    Int(i64),
    /// A float (`alpha`, `epsilon`).
    Float(f32),
    /// A list of integers (`kernel_shape`, `pads`).
    Ints(Vec<i64>),
}

/// One ONNX node.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The operator ("Gemm", "Relu").
    pub op: &'static str,
    /// A name unique in the graph.
    pub name: String,
    /// The values it reads ("" for a skipped optional input).
    pub inputs: Vec<String>,
    /// The values it writes.
    pub outputs: Vec<String>,
    /// Its attributes.
    pub attrs: Vec<(&'static str, Attr)>,
}

/// The values of a constant tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit integers (shapes).
    I64(Vec<i64>),
}

/// A constant tensor (an initializer): weights, running statistics, shapes, scalars.
#[derive(Clone, Debug, PartialEq)]
pub struct Constant {
    /// Its value name.
    pub name: String,
    /// Its dimensions (none for a scalar).
    pub dims: Vec<i64>,
    /// Its values, row-major.
    pub values: Values,
}

/// A graph under construction: nodes in execution order, constants, and the value names
/// taken so far (every name written once, as ONNX requires).
#[derive(Debug, Default)]
pub struct OnnxGraph {
    /// The nodes, each after the ones it reads.
    pub nodes: Vec<Node>,
    /// The constants.
    pub constants: Vec<Constant>,
    used: HashSet<String>,
}

impl OnnxGraph {
    /// An empty graph.
    pub fn new() -> OnnxGraph {
        OnnxGraph::default()
    }

    /// Takes `name` for a value written elsewhere (an input or a chosen output name).
    pub fn reserve(&mut self, name: &str) -> Result<()> {
        if self.used.insert(name.to_string()) {
            Ok(())
        } else {
            Err(Error::arg(
                "onnx export",
                format!("the name '{name}' is given to two values"),
            ))
        }
    }

    /// `base`, or `base_2`, `base_3`, .. when taken; the name is taken.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 2;
        while self.used.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.used.insert(name.clone());
        name
    }

    /// Adds a node named after its first output.
    pub fn node(
        &mut self,
        op: &'static str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<(&'static str, Attr)>,
    ) {
        self.nodes.push(Node {
            op,
            name: format!("{output}/{op}"),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![output.to_string()],
            attrs,
        });
    }

    /// Adds a constant under a fresh name derived from `base` and returns the name.
    pub fn constant(&mut self, base: &str, dims: &[usize], values: Values) -> String {
        let name = self.fresh(base);
        self.constants.push(Constant {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            values,
        });
        name
    }

    /// A float scalar constant.
    pub fn scalar(&mut self, base: &str, value: f32) -> String {
        self.constant(base, &[], Values::F32(vec![value]))
    }

    /// A shape constant for Reshape: any batch, then the sample shape.
    pub fn batch_shape(&mut self, base: &str, sample: &[usize]) -> String {
        let dims: Vec<i64> = std::iter::once(-1)
            .chain(sample.iter().map(|&d| d as i64))
            .collect();
        self.constant(base, &[dims.len()], Values::I64(dims))
    }
}

/// What a layer's [`crate::nn::layers::LayerDef::onnx`] gets: where to write, the
/// values it reads, its parameters' names, and its output, which it must write.
#[derive(Debug)]
pub struct Emit<'a> {
    /// The graph being built.
    pub graph: &'a mut OnnxGraph,
    /// The node's name in the model (prefixes the names of intermediate values).
    pub name: &'a str,
    /// The value names of its inputs.
    pub inputs: Vec<String>,
    /// Its output's sample shape.
    pub shape: Vec<usize>,
    /// The constants holding its parameters, in [`crate::nn::layers::LayerDef::params`] order
    /// (a shared layer's are its owner's).
    pub params: Vec<String>,
    /// The constants holding its running mean and variance (batch norm).
    pub buffers: Option<[String; 2]>,
    /// The value name its last node must write.
    pub output: String,
}

impl Emit<'_> {
    /// The value name of input `k`.
    pub fn input(&self, k: usize) -> Result<&str> {
        self.inputs
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| self.missing(format!("input {k}")))
    }

    /// The constant holding parameter `k`.
    pub fn param(&self, k: usize) -> Result<&str> {
        self.params
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| self.missing(format!("parameter {k}")))
    }

    /// The constants holding the running mean and variance.
    pub fn buffers(&self) -> Result<[String; 2]> {
        self.buffers
            .clone()
            .ok_or_else(|| self.missing("running statistics".to_string()))
    }

    fn missing(&self, what: String) -> Error {
        Error::arg(
            "onnx export",
            format!("layer '{}' has no {what}", self.name),
        )
    }

    /// A fresh name for an intermediate value of this layer.
    pub fn temp(&mut self, what: &str) -> String {
        self.graph.fresh(&format!("{}/{what}", self.name))
    }

    /// Adds a node writing the intermediate value `what` and returns its name.
    pub fn step(
        &mut self,
        op: &'static str,
        inputs: &[&str],
        what: &str,
        attrs: Vec<(&'static str, Attr)>,
    ) -> String {
        let out = self.temp(what);
        self.graph.node(op, inputs, &out, attrs);
        out
    }

    /// Adds the last node, which writes the layer's output.
    pub fn finish(&mut self, op: &'static str, inputs: &[&str], attrs: Vec<(&'static str, Attr)>) {
        let out = self.output.clone();
        self.graph.node(op, inputs, &out, attrs);
    }

    /// The layer's output as `op` of its input and then `rest` (its parameters).
    pub fn apply(
        &mut self,
        op: &'static str,
        rest: &[String],
        attrs: Vec<(&'static str, Attr)>,
    ) -> Result<()> {
        let inputs: Vec<String> = std::iter::once(self.input(0)?.to_string())
            .chain(rest.iter().cloned())
            .collect();
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.finish(op, &inputs, attrs);
        Ok(())
    }

    /// The layer's output as `op` of all its inputs (the merges).
    pub fn merge(&mut self, op: &'static str, attrs: Vec<(&'static str, Attr)>) {
        let inputs: Vec<String> = self.inputs.clone();
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.finish(op, &inputs, attrs);
    }

    /// The layer's input passed on unchanged (dropout and identity at inference).
    pub fn pass_through(&mut self) -> Result<()> {
        let x = self.input(0)?.to_string();
        self.finish("Identity", &[&x], Vec::new());
        Ok(())
    }

    /// `op` (its first input the layer's input, then `rest`) over each sample viewed as
    /// one row of [batch, features]; other sample shapes are flattened and restored
    /// around it, as kiln's row-wise kernels see them.
    pub fn on_rows(
        &mut self,
        op: &'static str,
        rest: &[&str],
        attrs: Vec<(&'static str, Attr)>,
    ) -> Result<()> {
        let x = self.input(0)?.to_string();
        if self.shape.len() == 1 {
            let inputs: Vec<&str> = std::iter::once(x.as_str())
                .chain(rest.iter().copied())
                .collect();
            self.finish(op, &inputs, attrs);
            return Ok(());
        }
        let flat = self.step("Flatten", &[&x], "rows", vec![("axis", Attr::Int(1))]);
        let inputs: Vec<&str> = std::iter::once(flat.as_str())
            .chain(rest.iter().copied())
            .collect();
        let y = self.step(op, &inputs, "on_rows", attrs);
        let shape = self.shape.clone();
        let dims = self
            .graph
            .batch_shape(&format!("{}/shape", self.name), &shape);
        self.finish("Reshape", &[&y, &dims], Vec::new());
        Ok(())
    }
}

/// A usize as an ONNX integer attribute value.
fn int(v: usize) -> i64 {
    v as i64
}

/// A (height, width) pair as an ONNX integer list.
pub fn pair(p: (usize, usize)) -> Attr {
    Attr::Ints(vec![int(p.0), int(p.1)])
}

/// Symmetric (height, width) padding as ONNX `pads` [top, left, bottom, right].
pub fn pads(p: (usize, usize)) -> Attr {
    Attr::Ints(vec![int(p.0), int(p.1), int(p.0), int(p.1)])
}
