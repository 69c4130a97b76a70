//! The exported graph ([`super::Exported`]) as ONNX protobuf messages.

use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use super::{Exported, BATCH, IR_VERSION, OPSET};
use crate::nn::onnx::{Attr, Constant, Node, Values};

/// The model message: the graph with its IR version and opset.
pub(super) fn model(exported: &Exported) -> ModelProto {
    let graph = GraphProto {
        name: Some("kiln".to_string()),
        node: exported.graph.nodes.iter().map(node).collect(),
        initializer: exported.graph.constants.iter().map(tensor).collect(),
        input: exported
            .inputs
            .iter()
            .map(|(n, s)| value_info(n, s))
            .collect(),
        output: exported
            .outputs
            .iter()
            .map(|(n, s)| value_info(n, s))
            .collect(),
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("kiln".to_string()),
        producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        graph: Some(graph),
        ..Default::default()
    }
}

fn node(n: &Node) -> NodeProto {
    NodeProto {
        name: Some(n.name.clone()),
        op_type: Some(n.op.to_string()),
        input: n.inputs.clone(),
        output: n.outputs.clone(),
        attribute: n.attrs.iter().map(|(k, v)| attribute(k, v)).collect(),
        ..Default::default()
    }
}

fn attribute(name: &str, value: &Attr) -> AttributeProto {
    let a = AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => AttributeProto {
            r#type: Some(AttributeType::Int as i32),
            i: Some(*i),
            ..a
        },
        Attr::Float(f) => AttributeProto {
            r#type: Some(AttributeType::Float as i32),
            f: Some(*f),
            ..a
        },
        Attr::Ints(v) => AttributeProto {
            r#type: Some(AttributeType::Ints as i32),
            ints: v.clone(),
            ..a
        },
    }
}

/// An initializer, its values little-endian in `raw_data` as ONNX stores them.
fn tensor(c: &Constant) -> TensorProto {
    let (data_type, raw) = match &c.values {
        Values::F32(v) => (
            DataType::Float,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        Values::I64(v) => (
            DataType::Int64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    };
    TensorProto {
        name: Some(c.name.clone()),
        dims: c.dims.clone(),
        data_type: Some(data_type as i32),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// A float tensor of [batch, ..sample] with the batch symbolic.
fn value_info(name: &str, sample: &[usize]) -> ValueInfoProto {
    let batch = dimension::Value::DimParam(BATCH.to_string());
    let dims =
        std::iter::once(batch).chain(sample.iter().map(|&d| dimension::Value::DimValue(d as i64)));
    let shape = TensorShapeProto {
        dim: dims
            .map(|v| Dimension {
                value: Some(v),
                ..Default::default()
            })
            .collect(),
    };
    let tensor = type_proto::Tensor {
        elem_type: Some(DataType::Float as i32),
        shape: Some(shape),
    };
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
            ..Default::default()
        }),
        ..Default::default()
    }
}
