//! What the recurrent layers (`lstm`, `gru`) share: their options, shape rule,
//! parameters (PyTorch's names and initialisation) and plan step.

use std::sync::Arc;

use super::step::{Backward, Forward, Step};
use super::{ParamInit, ParamSpec, Slots};
use crate::error::{Error, Result};
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::nn::init::Init;
use crate::nn::model::Param;
use crate::nn::onnx::{Attr, Emit, Node, Values};
use crate::ops::rnn_cell::{Cell, Recurrence, RnnGrads, RnnWeights};

/// A recurrent layer's options (one layer, unidirectional, batch-first [steps, features]
/// samples, zero initial state).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recurrent {
    /// Hidden units (PyTorch's `hidden_size`).
    pub units: usize,
    /// Output every step's state, [steps, units], instead of the last one, [units]
    /// (Keras's `return_sequences`).
    pub return_sequences: bool,
    /// Keras's masking of padded steps: a step of the layer's input whose features all
    /// equal this value keeps the state before it and outputs zeros.
    pub mask_value: Option<f32>,
}

/// The model-file keys a recurrent layer's entry takes besides its kind key.
pub(crate) const KEYS: &[&str] = &["return_sequences", "mask_value"];

impl Recurrent {
    /// A layer of `units` returning its last state.
    pub fn new(units: usize) -> Recurrent {
        Recurrent {
            units,
            return_sequences: false,
            mask_value: None,
        }
    }

    /// Treating steps whose features all equal `value` as padding (Keras's `Masking`).
    pub fn masking(self, value: f32) -> Recurrent {
        Recurrent {
            mask_value: Some(value),
            ..self
        }
    }

    /// Returning every step's state.
    pub fn sequences(self) -> Recurrent {
        Recurrent {
            return_sequences: true,
            ..self
        }
    }

    /// The options of an entry whose kind key is `key` (`lstm = 32`).
    pub(crate) fn from_entry(
        e: &Entry<'_>,
        key: &'static str,
    ) -> std::result::Result<Recurrent, Invalid> {
        let units = e.usize(key)?.unwrap_or(0);
        e.check(units > 0, key, || "must be at least 1 unit".into())?;
        Ok(Recurrent {
            units,
            return_sequences: e.bool("return_sequences")?.unwrap_or(false),
            mask_value: e.f32_where("mask_value", f32::is_finite, "a finite value")?,
        })
    }

    /// Its entry under the kind key `key`.
    pub(crate) fn entry(&self, key: &'static str) -> LayerSpec {
        let seq = self.return_sequences.then_some(true);
        LayerSpec::new(key, self.units)
            .with_some("return_sequences", seq)
            .with_some("mask_value", self.mask_value)
    }

    /// The output shape of a `cell` layer on `input` samples, which must be [steps, features].
    pub(crate) fn output_shape(
        &self,
        cell: Cell,
        name: &str,
        input: &[usize],
    ) -> Result<Vec<usize>> {
        let [steps, _features] = *input else {
            return Err(Error::shape(
                name,
                format!("needs [steps, features] samples, got {input:?}: add .reshape(&[steps, features]) first"),
            ));
        };
        if self.units == 0 {
            return Err(Error::arg(format!("{name} units"), "must be at least 1"));
        }
        let too_big = |n: Option<usize>| n.is_none_or(|n| n > u32::MAX as usize);
        if too_big(self.units.checked_mul(cell.gates() * 4)) {
            return Err(Error::arg(
                format!("{name} units"),
                format!("{} is too many", self.units),
            ));
        }
        Ok(if self.return_sequences {
            vec![steps, self.units]
        } else {
            vec![self.units]
        })
    }

    /// `weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0` (PyTorch's order), all
    /// uniform in +-1/sqrt(units) as PyTorch starts them.
    pub(crate) fn params(&self, cell: Cell, input: &[usize]) -> Vec<ParamSpec> {
        let (h, d) = (self.units, input.last().copied().unwrap_or(0));
        let gh = cell.gates() * h;
        let k = 1.0 / (h as f32).sqrt();
        let init = |fan_in, salt| ParamInit::sample(Init::Uniform(-k, k), fan_in, gh, salt);
        let checked = |p: ParamSpec| ParamSpec { checked: true, ..p };
        vec![
            checked(ParamSpec::new("weight_ih_l0", &[gh, d], init(d, 0))),
            checked(ParamSpec::new("weight_hh_l0", &[gh, h], init(h, 0x4848))),
            ParamSpec::new("bias_ih_l0", &[gh], init(d, 0xb1a5)),
            ParamSpec::new("bias_hh_l0", &[gh], init(h, 0xb2a5)),
        ]
    }

    /// The plan step of a `cell` layer.
    pub(crate) fn lower(&self, cell: Cell, slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(RecurrentStep {
            op: Recurrence {
                cell,
                return_sequences: self.return_sequences,
                mask_value: self.mask_value,
            },
            units: self.units,
            params: [
                slots.param(0)?,
                slots.param(1)?,
                slots.param(2)?,
                slots.param(3)?,
            ],
        }))
    }
}

impl Recurrent {
    /// ONNX's LSTM or GRU, its weights reordered from PyTorch's gates to ONNX's (LSTM
    /// i, o, f, c; GRU z, r, h with `linear_before_reset`, which is PyTorch's n gate) by
    /// Gather nodes. The sequence is transposed to time-major around it: onnxruntime runs
    /// only the default `layout`.
    pub(crate) fn onnx(&self, cell: Cell, cx: &mut Emit<'_>) -> Result<()> {
        if self.mask_value.is_some() {
            return Err(Error::arg(
                "onnx export",
                format!("layer '{}': masked steps have no ONNX form", cx.name),
            ));
        }
        let h = self.units;
        let blocks: &[usize] = match cell {
            Cell::Lstm => &[0, 3, 1, 2],
            Cell::Gru => &[1, 0, 2],
        };
        let order: Vec<i64> = blocks
            .iter()
            .flat_map(|&b| (b * h..(b + 1) * h).map(|i| i as i64))
            .collect();
        let order = cx.graph.constant(
            &format!("{}/gate_order", cx.name),
            &[order.len()],
            Values::I64(order),
        );
        let axis0 = cx
            .graph
            .constant(&format!("{}/axis0", cx.name), &[1], Values::I64(vec![0]));
        let params: Vec<String> = (0..4)
            .map(|k| cx.param(k).map(str::to_string))
            .collect::<Result<_>>()?;
        let mut gathered = Vec::new();
        for (p, what) in params.iter().zip(["w", "r", "wb", "rb"]) {
            gathered.push(cx.step("Gather", &[p, &order], what, vec![("axis", Attr::Int(0))]));
        }
        let bias = cx.step(
            "Concat",
            &[&gathered[2], &gathered[3]],
            "b",
            vec![("axis", Attr::Int(0))],
        );
        let w = cx.step("Unsqueeze", &[&gathered[0], &axis0], "W", Vec::new());
        let r = cx.step("Unsqueeze", &[&gathered[1], &axis0], "R", Vec::new());
        let b = cx.step("Unsqueeze", &[&bias, &axis0], "B", Vec::new());
        let (seq, last) = (cx.temp("Y"), cx.temp("Y_h"));
        let mut attrs = vec![("hidden_size", Attr::Int(h as i64))];
        let op = match cell {
            Cell::Lstm => "LSTM",
            Cell::Gru => {
                attrs.push(("linear_before_reset", Attr::Int(1)));
                "GRU"
            }
        };
        let x = cx.input(0)?.to_string();
        let x = cx.step(
            "Transpose",
            &[&x],
            "x_tbd",
            vec![("perm", Attr::Ints(vec![1, 0, 2]))],
        );
        cx.graph.nodes.push(Node {
            op,
            name: format!("{}/{op}", cx.name),
            inputs: vec![x, w, r, b],
            outputs: vec![seq.clone(), last.clone()],
            attrs,
        });
        // Y is [steps, 1, batch, units] and Y_h [1, batch, units].
        let shape = cx.shape.clone();
        let dims = cx.graph.batch_shape(&format!("{}/shape", cx.name), &shape);
        let from = if self.return_sequences {
            cx.step(
                "Transpose",
                &[&seq],
                "y_bt",
                vec![("perm", Attr::Ints(vec![2, 0, 1, 3]))],
            )
        } else {
            last
        };
        cx.finish("Reshape", &[&from, &dims], Vec::new());
        Ok(())
    }
}

/// The planned recurrent layer: its pass, and its parameters' indices (w_ih, w_hh, b_ih,
/// b_hh). Its work buffers are made by the first forward of each workspace, when the
/// input's shape is known.
#[derive(Clone, Copy, Debug, PartialEq)]
struct RecurrentStep {
    op: Recurrence,
    units: usize,
    params: [usize; 4],
}

/// The four parameters of a layer, borrowed disjointly.
fn four(params: &mut [Param], idx: [usize; 4]) -> Result<[&mut Param; 4]> {
    params
        .get_disjoint_mut(idx)
        .map_err(|_| Error::arg("model", "a recurrent layer lowered without its parameters"))
}

impl Step for RecurrentStep {
    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        let [b, t, d] = *cx.x.shape() else {
            return Err(Error::shape(
                "recurrent",
                format!("input {:?} is not [batch, steps, features]", cx.x.shape()),
            ));
        };
        let work = &mut cx.scratch.tensors;
        let made = work.first().is_some_and(|x| x.shape() == [b * t, d]);
        if !made {
            *work = self.op.work(&cx.x.device(), b, t, d, self.units)?;
        }
        let p = |i: usize| cx.params.get(self.params[i]).map(|p| &p.value);
        let (Some(w_ih), Some(w_hh), Some(b_ih), Some(b_hh)) = (p(0), p(1), p(2), p(3)) else {
            return Err(Error::arg(
                "model",
                "a recurrent layer lowered without its parameters",
            ));
        };
        let w = RnnWeights {
            w_ih,
            b_ih,
            w_hh,
            b_hh,
        };
        self.op.forward_into(cx.x, w, work, cx.y)
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        let [w_ih, w_hh, b_ih, b_hh] = four(cx.params, self.params)?;
        let w = RnnWeights {
            w_ih: &w_ih.value,
            b_ih: &b_ih.value,
            w_hh: &w_hh.value,
            b_hh: &b_hh.value,
        };
        let grads = RnnGrads {
            w_ih: &mut w_ih.grad,
            b_ih: &mut b_ih.grad,
            w_hh: &mut w_hh.grad,
            b_hh: &mut b_hh.grad,
        };
        let dx = (!cx.first).then_some(cx.dx);
        self.op
            .backward_into(cx.x, cx.dy, w, &mut cx.scratch.tensors, grads, dx)
    }

    fn has_params(&self) -> bool {
        true
    }
}
