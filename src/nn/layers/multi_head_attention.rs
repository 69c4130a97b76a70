//! Multi-head attention over [T, D] samples (T positions of width D), as PyTorch's
//! `nn.MultiheadAttention` with `batch_first=True`: one input is self-attention, two are
//! cross-attention (queries from the first, keys and values from the second, [S, D]).
//! Parameters have PyTorch's names and layouts: `in_proj_weight` [3D, D] (query, key and
//! value projections stacked), `in_proj_bias` [3D], `out_proj.weight` [D, D],
//! `out_proj.bias` [D]. No dropout on the attention weights.
//!
//! The projections are the matmul op over batch * T rows; the attention between them is
//! [`crate::ops::attention`]'s fused kernels. Cross-attention projects both inputs by the
//! whole `in_proj_weight` (a third, resp. two thirds, of each product unused): every
//! projection is then one product into the [q | k | v] rows the kernels read.

use std::sync::Arc;

use super::step::{Backward, Forward, Scratch, Step};
use super::{FromEntry, Layer, LayerDef, ParamInit, ParamSpec, Slots};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::model_file::entry::Entry;
use crate::io::model_file::schema::LayerSpec;
use crate::io::model_file::validation::Invalid;
use crate::nn::init::Init;
use crate::nn::onnx::{Attr, Emit, Values};
use crate::ops::attention::Attention;
use crate::ops::bias::bias_grad_into;
use crate::ops::elementwise::axpy;
use crate::ops::kv_attention::KvAttention;
use crate::ops::matmul::{Dims, Gemm};
use crate::ops::transpose::transpose_into;
use crate::tensor::Tensor;

/// Multi-head attention's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultiHeadAttention {
    /// Heads; the width D must be a multiple of them.
    pub heads: usize,
    /// Whether position i attends only to positions j <= i.
    pub causal: bool,
}

impl MultiHeadAttention {
    /// Attention with `heads` heads over all positions.
    pub fn new(heads: usize) -> MultiHeadAttention {
        MultiHeadAttention {
            heads,
            causal: false,
        }
    }

    /// The same with a causal mask (position i sees positions 0..=i).
    pub fn causal(self) -> MultiHeadAttention {
        MultiHeadAttention {
            causal: true,
            ..self
        }
    }

    /// (T, D) of a [T, D] sample, checked against the heads.
    fn rows(&self, name: &str, shape: &[usize]) -> Result<(usize, usize)> {
        let [t, d] = *shape else {
            return Err(Error::shape(
                name,
                format!("needs [positions, width] samples, got {shape:?}"),
            ));
        };
        if self.heads == 0 {
            return Err(Error::arg(format!("{name} heads"), "must be at least 1"));
        }
        if t == 0 || d == 0 || !d.is_multiple_of(self.heads) {
            return Err(Error::arg(
                format!("{name} heads"),
                format!("a width of {d} does not split into {} heads", self.heads),
            ));
        }
        Ok((t, d))
    }
}

impl FromEntry for MultiHeadAttention {
    const KEY: Option<&'static str> = Some("multi_head_attention");
    const KEYS: &'static [&'static str] = &["causal"];

    fn from_entry(e: &Entry<'_>) -> std::result::Result<Layer, Invalid> {
        let heads = e.usize("multi_head_attention")?.unwrap_or(0);
        e.check(heads > 0, "multi_head_attention", || {
            "must be at least 1 head".into()
        })?;
        Ok(Layer::MultiHeadAttention(MultiHeadAttention {
            heads,
            causal: e.bool("causal")?.unwrap_or(false),
        }))
    }
}

impl LayerDef for MultiHeadAttention {
    fn kind(&self) -> &'static str {
        "multi_head_attention"
    }

    fn output_shape(&self, name: &str, input: &[usize]) -> Result<Vec<usize>> {
        let (t, d) = self.rows(name, input)?;
        Ok(vec![t, d])
    }

    /// Self-attention on one input; cross-attention on two of one width.
    fn output_shape_of(&self, name: &str, inputs: &[Vec<usize>]) -> Result<Vec<usize>> {
        match inputs {
            [x] => self.output_shape(name, x),
            [x, kv] => {
                let (t, d) = self.rows(name, x)?;
                let (_, dk) = self.rows(name, kv)?;
                if dk != d {
                    return Err(Error::shape(
                        name,
                        format!("queries of width {d} and keys of width {dk}"),
                    ));
                }
                Ok(vec![t, d])
            }
            _ => Err(Error::shape(
                name,
                format!("takes one input or two, got {}", inputs.len()),
            )),
        }
    }

    fn max_inputs(&self) -> usize {
        2
    }

    /// PyTorch's initialisation: xavier-uniform over the stacked projections, the output
    /// projection as its Linear (uniform within 1/sqrt(D)), zero biases.
    fn params(&self, input: &[usize], _output: &[usize]) -> Vec<ParamSpec> {
        let d = input.last().copied().unwrap_or(1).max(1);
        let bound = 1.0 / (d as f32).sqrt();
        let out = Init::Uniform(-bound, bound);
        vec![
            ParamSpec {
                checked: true,
                ..ParamSpec::new(
                    "in_proj_weight",
                    &[3 * d, d],
                    ParamInit::sample(Init::GlorotUniform, d, 3 * d, 0),
                )
            },
            ParamSpec::new("in_proj_bias", &[3 * d], ParamInit::Fill(0.0)),
            ParamSpec {
                checked: true,
                ..ParamSpec::new(
                    "out_proj.weight",
                    &[d, d],
                    ParamInit::sample(out, d, d, 0x0a77),
                )
            },
            ParamSpec::new("out_proj.bias", &[d], ParamInit::Fill(0.0)),
        ]
    }

    /// Opset 17 has no attention op: the projections, heads and softmax as MatMul,
    /// Slice, Reshape, Transpose and Softmax nodes (PyTorch's export does the same).
    fn onnx(&self, cx: &mut Emit<'_>) -> Result<()> {
        let (t, d) = self.rows(cx.name, &cx.shape)?;
        let (h, dh) = (self.heads, d / self.heads);
        let cross = cx.inputs.len() > 1;
        if cross && self.causal {
            return Err(Error::arg(
                "onnx export",
                format!("'{}': causal cross-attention has no ONNX form", cx.name),
            ));
        }
        let [w_in, b_in, w_out, b_out] = [0, 1, 2, 3].map(|k| cx.param(k).map(str::to_string));
        let (w_in, b_in, w_out, b_out) = (w_in?, b_in?, w_out?, b_out?);
        let perm = |p: &[i64]| vec![("perm", Attr::Ints(p.to_vec()))];
        let ints = |cx: &mut Emit<'_>, what: &str, v: Vec<i64>| {
            cx.graph.constant(&format!("{}/{what}", cx.name), &[v.len()], Values::I64(v))
        };
        let w_in_t = cx.step("Transpose", &[&w_in], "in_proj_t", perm(&[1, 0]));
        let project = |cx: &mut Emit<'_>, k: usize| -> Result<String> {
            let x = cx.input(k)?.to_string();
            let xw = cx.step("MatMul", &[&x, &w_in_t], "in_proj", Vec::new());
            Ok(cx.step("Add", &[&xw, &b_in], "qkv", Vec::new()))
        };
        let px = project(cx, 0)?;
        let pm = if cross { project(cx, 1)? } else { px.clone() };
        let heads = ints(cx, "heads", vec![0, -1, h as i64, dh as i64]);
        let axis = ints(cx, "axis", vec![2]);
        // One third of the projected rows, split into heads: [batch, h, rows, dh].
        let split = |cx: &mut Emit<'_>, src: &str, third: i64, order: &[i64]| {
            let lo = ints(cx, "start", vec![third * d as i64]);
            let hi = ints(cx, "end", vec![(third + 1) * d as i64]);
            let part = cx.step("Slice", &[src, &lo, &hi, &axis], "part", Vec::new());
            let rows = cx.step("Reshape", &[&part, &heads], "heads", Vec::new());
            cx.step("Transpose", &[&rows], "by_head", perm(order))
        };
        let q = split(cx, &px, 0, &[0, 2, 1, 3]);
        let kt = split(cx, &pm, 1, &[0, 2, 3, 1]);
        let v = split(cx, &pm, 2, &[0, 2, 1, 3]);
        let qk = cx.step("MatMul", &[&q, &kt], "qk", Vec::new());
        let scale = cx.graph.scalar(&format!("{}/scale", cx.name), 1.0 / (dh as f32).sqrt());
        let mut scores = cx.step("Mul", &[&qk, &scale], "scores", Vec::new());
        if self.causal {
            let mask = (0..t * t)
                .map(|e| if e % t > e / t { -1e30 } else { 0.0 })
                .collect();
            let mask = cx.graph.constant(&format!("{}/mask", cx.name), &[t, t], Values::F32(mask));
            scores = cx.step("Add", &[&scores, &mask], "masked", Vec::new());
        }
        let p = cx.step("Softmax", &[&scores], "probs", vec![("axis", Attr::Int(-1))]);
        let o = cx.step("MatMul", &[&p, &v], "o_heads", Vec::new());
        let o = cx.step("Transpose", &[&o], "o_rows", perm(&[0, 2, 1, 3]));
        let rows = ints(cx, "rows", vec![0, -1, d as i64]);
        let o = cx.step("Reshape", &[&o, &rows], "o", Vec::new());
        let w_out_t = cx.step("Transpose", &[&w_out], "out_proj_t", perm(&[1, 0]));
        let y = cx.step("MatMul", &[&o, &w_out_t], "out_proj", Vec::new());
        cx.finish("Add", &[&y, &b_out], Vec::new());
        Ok(())
    }

    fn lower(&self, slots: &Slots) -> Result<Arc<dyn Step>> {
        Ok(Arc::new(AttentionStep {
            heads: self.heads,
            causal: self.causal,
            w_in: slots.param(0)?,
            b_in: slots.param(1)?,
            w_out: slots.param(2)?,
            b_out: slots.param(3)?,
        }))
    }

    fn entry(&self) -> LayerSpec {
        LayerSpec::new("multi_head_attention", self.heads)
            .with_some("causal", self.causal.then_some(true))
    }

    fn describe(&self) -> String {
        let causal = if self.causal { ", causal" } else { "" };
        format!("multi_head_attention {} heads{causal}", self.heads)
    }
}

/// The planned attention: parameter indices and the options.
#[derive(Clone, Copy, Debug, PartialEq)]
struct AttentionStep {
    heads: usize,
    causal: bool,
    w_in: usize,
    b_in: usize,
    w_out: usize,
    b_out: usize,
}

/// Scratch tensors of self-attention; cross-attention adds [`CROSS`] more.
const SELF: usize = 9;
/// Cross-attention's extra scratch, made at its first forward (the step's scratch sees
/// only its output's shape, not the key input's).
const CROSS: usize = 6;

impl AttentionStep {
    /// The attention between the step's inputs ([batch, T, D] and maybe [batch, S, D]).
    fn attention(&self, x: &Tensor, kv: Option<&Tensor>) -> Result<Attention> {
        let shape = |t: &Tensor| match *t.shape() {
            [b, t, d] => Ok((b, t, d)),
            ref s => Err(Error::shape("multi_head_attention", format!("{s:?} is not [batch, T, D]"))),
        };
        let (batch, queries, width) = shape(x)?;
        let keys = match kv {
            Some(kv) => shape(kv)?.1,
            None => queries,
        };
        Ok(Attention {
            batch,
            queries,
            keys,
            width,
            heads: self.heads,
            causal: self.causal,
        })
    }

    /// The cross-attention scratch, made once.
    fn cross_scratch(scratch: &mut Scratch, device: &Device, a: &Attention) -> Result<()> {
        let (rows, d) = (a.batch * a.keys, a.width);
        if let Some(qkv_m) = scratch.tensors.get(SELF) {
            return match qkv_m.len() == rows * 3 * d {
                true => Ok(()),
                false => Err(Error::shape("multi_head_attention", "the key input changed shape")),
            };
        }
        for shape in [&[rows, 3 * d][..], &[rows, 3 * d], &[3 * d, rows], &[3 * d, d], &[3 * d], &[rows, d]] {
            scratch.tensors.push(Tensor::zeros(device, shape)?);
        }
        Ok(())
    }

    /// dL/d(key input) (kept in the scratch by the backward of slot 0).
    fn backward_keys(&self, cx: Backward<'_>) -> Result<()> {
        if !cx.first {
            cx.dx.copy_from(cx.scratch.tensor(SELF + CROSS - 1, "key gradient")?)?;
        }
        Ok(())
    }
}

impl Step for AttentionStep {
    fn forward(&self, cx: Forward<'_>) -> Result<()> {
        let kv_in = (cx.inputs.len() > 1).then(|| cx.inputs.get(1)).transpose()?;
        let a = self.attention(cx.x, kv_in)?;
        if kv_in.is_some() {
            Self::cross_scratch(cx.scratch, &cx.x.device(), &a)?;
        }
        let (bt, d) = (a.batch * a.queries, a.width);
        let at = SELF.min(cx.scratch.tensors.len());
        let (main, cross) = cx.scratch.tensors.split_at_mut(at);
        let [qkv, o, lse, ..] = main else {
            return Err(Error::arg("workspace", "no attention scratch"));
        };
        let (w_in, b_in) = (&cx.params[self.w_in].value, &cx.params[self.b_in].value);
        let rows = |m| Dims { m, n: 3 * d, k: d };
        Gemm::nt().run_flat_into(rows(bt), cx.x, w_in, Some(b_in), qkv)?;
        match (kv_in, cross.first_mut()) {
            (Some(m), Some(qkv_m)) => {
                Gemm::nt().run_flat_into(rows(a.batch * a.keys), m, w_in, Some(b_in), qkv_m)?;
                a.forward_into(qkv, qkv_m, o, lse)?;
            }
            _ => a.forward_into(qkv, qkv, o, lse)?,
        }
        let (w_out, b_out) = (&cx.params[self.w_out].value, &cx.params[self.b_out].value);
        let dims = Dims { m: bt, n: d, k: d };
        Gemm::nt().run_flat_into(dims, o, w_out, Some(b_out), cx.y)
    }

    fn backward(&self, cx: Backward<'_>) -> Result<()> {
        if cx.slot == 1 {
            return self.backward_keys(cx);
        }
        let kv_in = (cx.inputs.len() > 1).then(|| cx.inputs.get(1)).transpose()?;
        let a = self.attention(cx.x, kv_in)?;
        let (bt, d) = (a.batch * a.queries, a.width);
        let at = SELF.min(cx.scratch.tensors.len());
        let (main, cross) = cx.scratch.tensors.split_at_mut(at);
        let [qkv, o, lse, delta, dy2, dyt, d_o, dqkv, dqkvt] = main else {
            return Err(Error::arg("workspace", "no attention scratch"));
        };
        // The output projection: dW = dY^T O, db = column sums of dY, dO = dY W.
        dy2.copy_from(cx.dy)?;
        transpose_into(dy2, dyt)?;
        bias_grad_into(dy2, &mut cx.params[self.b_out].grad)?;
        Gemm::nn().run_into(dyt, o, None, &mut cx.params[self.w_out].grad)?;
        Gemm::nn().run_into(dy2, &cx.params[self.w_out].value, None, d_o)?;
        match (kv_in, &mut *cross) {
            (None, _) => a.backward_into(qkv, qkv, o, lse, d_o, delta, dqkv, None)?,
            (Some(_), [qkv_m, dqkv_m, ..]) => {
                a.backward_into(qkv, qkv_m, o, lse, d_o, delta, dqkv, Some(dqkv_m))?
            }
            _ => return Err(Error::arg("workspace", "no cross-attention scratch")),
        }
        // The in-projection of the query input (of all three for self-attention),
        // transposed for its weight gradient as the dense layer does.
        transpose_into(dqkv, dqkvt)?;
        let dims = Dims { m: 3 * d, n: d, k: bt };
        Gemm::nn().run_flat_into(dims, dqkvt, cx.x, None, &mut cx.params[self.w_in].grad)?;
        bias_grad_into(dqkv, &mut cx.params[self.b_in].grad)?;
        if !cx.first {
            let dims = Dims { m: bt, n: d, k: 3 * d };
            Gemm::nn().run_flat_into(dims, dqkv, &cx.params[self.w_in].value, None, cx.dx)?;
        }
        // Cross-attention: the key input's share of the in-projection's gradients, and its
        // own gradient, which slot 1 hands on.
        if let (Some(m), [_, dqkv_m, dqkv_mt, dw, db, dm]) = (kv_in, cross) {
            let bs = a.batch * a.keys;
            transpose_into(dqkv_m, dqkv_mt)?;
            Gemm::nn().run_flat_into(Dims { m: 3 * d, n: d, k: bs }, dqkv_mt, m, None, dw)?;
            axpy(1.0, dw, &mut cx.params[self.w_in].grad)?;
            bias_grad_into(dqkv_m, db)?;
            axpy(1.0, db, &mut cx.params[self.b_in].grad)?;
            let dims = Dims { m: bs, n: d, k: 3 * d };
            Gemm::nn().run_flat_into(dims, dqkv_m, &cx.params[self.w_in].value, None, dm)?;
        }
        Ok(())
    }

    fn scratch(&self, device: &Device, y: &[usize]) -> Result<Scratch> {
        let [b, t, d] = *y else {
            return Err(Error::shape(
                "multi_head_attention workspace",
                format!("{y:?} is not [batch, T, D]"),
            ));
        };
        let (bt, stats) = (b * t, b * self.heads * t);
        let shapes: [&[usize]; SELF] = [
            &[bt, 3 * d],
            &[bt, d],
            &[stats],
            &[stats],
            &[bt, d],
            &[d, bt],
            &[bt, d],
            &[bt, 3 * d],
            &[3 * d, bt],
        ];
        let tensors = shapes
            .iter()
            .map(|s| Tensor::zeros(device, s))
            .collect::<Result<Vec<_>>>()?;
        Ok(Scratch {
            tensors,
            norm: None,
        })
    }

    fn has_params(&self) -> bool {
        true
    }

    /// Causal self-attention decodes with a cache of the earlier positions' projections.
    fn incremental(&self, inputs: usize) -> bool {
        self.causal && inputs == 1
    }

    /// The in-projection's [q | k | v] rows of every position (as the forward lays them
    /// out, so that a cache row is a projection row).
    fn cache(&self, device: &Device, y: &[usize]) -> Result<Option<Tensor>> {
        let [b, t, d] = *y else {
            return Err(Error::shape("multi_head_attention cache", format!("{y:?} is not [batch, T, D]")));
        };
        Tensor::zeros(device, &[b * t, 3 * d]).map(Some)
    }

    fn forward_at(&self, cx: Forward<'_>, at: usize, cache: Option<&mut Tensor>) -> Result<()> {
        let op = "multi_head_attention";
        let Some(cache) = cache else {
            return Err(Error::arg(op, "decoding needs a key/value cache"));
        };
        let [batch, queries, d] = *cx.x.shape() else {
            return Err(Error::shape(op, format!("{:?} is not [batch, T, D]", cx.x.shape())));
        };
        let a = KvAttention {
            batch,
            queries,
            capacity: cache.len() / (batch * 3 * d).max(1),
            width: d,
            heads: self.heads,
        };
        let [qkv, o, ..] = cx.scratch.tensors.as_mut_slice() else {
            return Err(Error::arg("workspace", "no attention scratch"));
        };
        let (w_in, b_in) = (&cx.params[self.w_in].value, &cx.params[self.b_in].value);
        let bt = batch * queries;
        Gemm::nt().run_flat_into(Dims { m: bt, n: 3 * d, k: d }, cx.x, w_in, Some(b_in), qkv)?;
        a.forward_into(qkv, cache, at, o)?;
        let (w_out, b_out) = (&cx.params[self.w_out].value, &cx.params[self.b_out].value);
        Gemm::nt().run_flat_into(Dims { m: bt, n: d, k: d }, o, w_out, Some(b_out), cx.y)
    }
}
