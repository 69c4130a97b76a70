//! Recurrent layers' sequence passes (PyTorch's LSTM and GRU, one layer, batch-first):
//! forward over all time steps and backpropagation through time. The input projection
//! of every step is one matmul; each step is then one fused dispatch (recurrent product
//! and gates, `shaders/rnn_cell.wgsl`); the backward runs the steps in reverse and ends
//! with the weight gradients as matmuls over all steps. A whole pass is recorded into the
//! pending submission, with no readback: T + 1 dispatches forward (plus a copy, and one
//! dispatch to find the padded steps when masked), T + 6 (LSTM) or T + 7 (GRU) backward.

use super::bias::bias_grad_into;
use super::matmul::Gemm;
use super::transpose::transpose_into;
use super::{device_of, grid, launch};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const LSTM_FORWARD: Kernel = Kernel {
    file: "rnn_cell.wgsl",
    source: include_str!("../../shaders/rnn_cell.wgsl"),
    entry: "lstm_forward",
    inputs: 4,
    outputs: 4,
    bounds_checks: true,
};
pub(super) const GRU_FORWARD: Kernel = Kernel {
    entry: "gru_forward",
    outputs: 3,
    ..LSTM_FORWARD
};
pub(super) const LSTM_BACKWARD: Kernel = Kernel {
    entry: "lstm_backward",
    inputs: 5,
    outputs: 2,
    ..LSTM_FORWARD
};
pub(super) const GRU_BACKWARD: Kernel = Kernel {
    entry: "gru_backward",
    inputs: 5,
    outputs: 3,
    ..LSTM_FORWARD
};
pub(super) const STEP_MASK: Kernel = Kernel {
    entry: "step_mask",
    inputs: 1,
    outputs: 1,
    ..LSTM_FORWARD
};

/// Invocations per workgroup of the step kernels.
const CELL_WG: u32 = 64;

/// The uniform block of shaders/rnn_cell.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) batch: u32,
    pub(super) steps: u32,
    pub(super) hidden: u32,
    /// The time step this dispatch runs.
    pub(super) t: u32,
    /// 1 when y (and dy) hold every step, 0 when only the last.
    pub(super) seq: u32,
    /// Gates times hidden: the width of the input projection.
    pub(super) gh: u32,
    /// Features per step (the mask kernel's row width).
    pub(super) inputs: u32,
    /// 1 when steps whose features all equal `mask` are padding.
    pub(super) masked: u32,
    pub(super) mask: f32,
}

/// Which recurrent cell, with PyTorch's gate order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// Gates i, f, g, o; c = f c' + i g, h = o tanh(c).
    Lstm,
    /// Gates r, z, n; n = tanh(W_in x + b_in + r (W_hn h' + b_hn)), h = (1 - z) n + z h'.
    Gru,
}

impl Cell {
    /// Gates per unit: the rows of `weight_ih_l0` are this times the units.
    pub fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }
}

/// One recurrent layer's pass over [batch, steps, inputs] sequences.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recurrence {
    /// The cell.
    pub cell: Cell,
    /// Output every step's state ([batch, steps, hidden]) or only the last ([batch, hidden]).
    pub return_sequences: bool,
    /// Keras's masking: a step whose features all equal this value is padding; it keeps
    /// the state of the step before (the last state is the last real step's) and outputs
    /// zeros, and no gradient flows into it.
    pub mask_value: Option<f32>,
}

/// The weights a pass reads, PyTorch's `weight_ih_l0` [GH, D], `bias_ih_l0` [GH],
/// `weight_hh_l0` [GH, H] and `bias_hh_l0` [GH] (G gates, H units, D inputs).
#[derive(Clone, Copy)]
pub struct RnnWeights<'a> {
    /// `weight_ih_l0`.
    pub w_ih: &'a Tensor,
    /// `bias_ih_l0`.
    pub b_ih: &'a Tensor,
    /// `weight_hh_l0`.
    pub w_hh: &'a Tensor,
    /// `bias_hh_l0`.
    pub b_hh: &'a Tensor,
}

/// The gradients a backward pass writes (overwrites), shaped as [`RnnWeights`].
pub struct RnnGrads<'a> {
    /// dL/d`weight_ih_l0`.
    pub w_ih: &'a mut Tensor,
    /// dL/d`bias_ih_l0`.
    pub b_ih: &'a mut Tensor,
    /// dL/d`weight_hh_l0`.
    pub w_hh: &'a mut Tensor,
    /// dL/d`bias_hh_l0`.
    pub b_hh: &'a mut Tensor,
}

/// Sizes of one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dims {
    batch: usize,
    steps: usize,
    inputs: usize,
    hidden: usize,
    gh: usize,
}

/// How many work tensors [`Recurrence::work`] makes.
const WORK: usize = 11;

impl Recurrence {
    /// The buffers a pass over `batch` sequences of `steps` x `inputs` with `hidden` units
    /// keeps from its forward for its backward, made once and reused.
    pub fn work(
        &self,
        device: &Device,
        batch: usize,
        steps: usize,
        inputs: usize,
        hidden: usize,
    ) -> Result<Vec<Tensor>> {
        let rows = batch.checked_mul(steps).ok_or_else(|| {
            Error::shape(
                "recurrent",
                format!("{batch} x {steps} rows overflow usize"),
            )
        })?;
        let gh = self.cell.gates() * hidden;
        let lstm = self.cell == Cell::Lstm;
        let shapes: [&[usize]; WORK] = [
            &[rows, inputs],                           // x as [B*T, D]
            &[rows, gh],                               // input projection
            &[rows, hidden],                           // h_{t-1} per row
            &[rows, 4 * hidden],                       // saved gates
            if lstm { &[rows, hidden] } else { &[1] }, // LSTM cell states
            &[rows, gh],                               // dL/d gates (input side)
            if lstm { &[1] } else { &[rows, gh] },     // GRU: recurrent side
            &[2, batch, hidden],                       // carries between steps
            &[gh, rows],                               // a gate gradient transposed
            &[rows, inputs],                           // dL/dx as [B*T, D]
            &[rows],                                   // 1 per real step, 0 padding
        ];
        shapes.iter().map(|s| Tensor::zeros(device, s)).collect()
    }

    /// Checks the operands and returns the pass's sizes.
    fn dims(&self, x: &Tensor, w: RnnWeights<'_>, work: &[Tensor]) -> Result<Dims> {
        let op = "recurrent";
        let [batch, steps, inputs] = *x.shape() else {
            return Err(Error::shape(
                op,
                format!("x is {:?}, not [batch, steps, inputs]", x.shape()),
            ));
        };
        let (gh, hidden) = w.w_hh.dims2(op)?;
        let d = Dims {
            batch,
            steps,
            inputs,
            hidden,
            gh,
        };
        let want: [(&str, &Tensor, Vec<usize>); 3] = [
            ("weight_ih_l0", w.w_ih, vec![gh, inputs]),
            ("bias_ih_l0", w.b_ih, vec![gh]),
            ("bias_hh_l0", w.b_hh, vec![gh]),
        ];
        for (name, t, shape) in want {
            if t.shape() != shape {
                return Err(Error::shape(
                    op,
                    format!("{name} is {:?}, expected {shape:?}", t.shape()),
                ));
            }
        }
        if gh != self.cell.gates() * hidden || steps == 0 || hidden == 0 {
            return Err(Error::shape(
                op,
                format!(
                    "weight_hh_l0 {:?} does not fit a {:?} cell",
                    w.w_hh.shape(),
                    self.cell
                ),
            ));
        }
        let made = self.work(&Device::cpu(), 0, 0, 0, 0)?.len();
        let fits = work.len() == made
            && work[0].shape() == [batch * steps, inputs]
            && work[7].shape() == [2, batch, hidden];
        if !fits {
            return Err(Error::arg(op, "work buffers made for another shape"));
        }
        Ok(d)
    }

    /// The output shape for these sizes.
    fn y_shape(&self, d: Dims) -> Vec<usize> {
        if self.return_sequences {
            vec![d.batch, d.steps, d.hidden]
        } else {
            vec![d.batch, d.hidden]
        }
    }

    fn params(&self, d: Dims, t: usize) -> Params {
        Params {
            batch: d.batch as u32,
            steps: d.steps as u32,
            hidden: d.hidden as u32,
            t: t as u32,
            seq: u32::from(self.return_sequences),
            gh: d.gh as u32,
            inputs: d.inputs as u32,
            masked: u32::from(self.mask_value.is_some()),
            mask: self.mask_value.unwrap_or(0.0),
        }
    }

    /// Runs the layer over `x` [batch, steps, inputs] into `y`, keeping in `work` (from
    /// [`Recurrence::work`]) what the backward needs.
    pub fn forward_into(
        &self,
        x: &Tensor,
        w: RnnWeights<'_>,
        work: &mut [Tensor],
        y: &mut Tensor,
    ) -> Result<()> {
        let d = self.dims(x, w, work)?;
        if y.shape() != self.y_shape(d) {
            return Err(Error::shape(
                "recurrent",
                format!("y is {:?}, expected {:?}", y.shape(), self.y_shape(d)),
            ));
        }
        let [x2, xp, hprev, gates, cell, _, _, _, _, _, keep] = work else {
            return Err(Error::arg("recurrent", "missing work buffers"));
        };
        x2.copy_from(x)?;
        Gemm::nt().run_into(x2, w.w_ih, Some(w.b_ih), xp)?;
        self.mark_padding(d, x2, keep)?;
        match device_of("recurrent", &[x, w.w_hh, w.b_hh, y])? {
            Device::Cpu => {
                let mut s = CpuForward {
                    hprev: host_mut(hprev)?,
                    gates: host_mut(gates)?,
                    cell: host_mut(cell)?,
                    y: host_mut(y)?,
                    keep: host(keep),
                };
                let (xp, whh, bhh) = (host(xp), host(w.w_hh), host(w.b_hh));
                for t in 0..d.steps {
                    self.cpu_forward_step(d, t, xp, whh, bhh, &mut s);
                }
                Ok(())
            }
            Device::Gpu(ctx) => {
                for t in 0..d.steps {
                    let p = self.params(d, t);
                    let (kernel, tensors): (_, Vec<&Tensor>) = match self.cell {
                        Cell::Lstm => (
                            &LSTM_FORWARD,
                            vec![xp, w.w_hh, w.b_hh, keep, hprev, gates, cell, y],
                        ),
                        Cell::Gru => (
                            &GRU_FORWARD,
                            vec![xp, w.w_hh, w.b_hh, keep, hprev, gates, y],
                        ),
                    };
                    launch(
                        &ctx,
                        kernel,
                        &[],
                        &p,
                        &tensors,
                        grid(d.batch * d.hidden, CELL_WG),
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Backpropagation through time: from `dy` (shaped as the forward's `y`) writes the
    /// four weight gradients and, when given, dL/dx [batch, steps, inputs]. `work` is the
    /// forward's, unchanged since.
    pub fn backward_into(
        &self,
        x: &Tensor,
        dy: &Tensor,
        w: RnnWeights<'_>,
        work: &mut [Tensor],
        grads: RnnGrads<'_>,
        dx: Option<&mut Tensor>,
    ) -> Result<()> {
        let d = self.dims(x, w, work)?;
        if dy.shape() != self.y_shape(d) {
            return Err(Error::shape(
                "recurrent",
                format!("dy is {:?}, expected {:?}", dy.shape(), self.y_shape(d)),
            ));
        }
        self.backward_steps(d, dy, w, work)?;
        let [x2, _, hprev, _, _, dgi, dgh, _, dgt, dx2, _] = work else {
            return Err(Error::arg("recurrent", "missing work buffers"));
        };
        transpose_into(dgi, dgt)?;
        Gemm::nn().run_into(dgt, x2, None, grads.w_ih)?;
        bias_grad_into(dgi, grads.b_ih)?;
        // The LSTM's two biases have one gradient; summed again rather than copied, since
        // both may be views of one packed buffer, which a GPU copy cannot read and write.
        match self.cell {
            Cell::Lstm => bias_grad_into(dgi, grads.b_hh)?,
            Cell::Gru => {
                transpose_into(dgh, dgt)?;
                bias_grad_into(dgh, grads.b_hh)?;
            }
        }
        Gemm::nn().run_into(dgt, hprev, None, grads.w_hh)?;
        if let Some(dx) = dx {
            Gemm::nn().run_into(dgi, w.w_ih, None, dx2)?;
            dx.copy_from(dx2)?;
        }
        Ok(())
    }

    /// The steps in reverse: the gate gradients of every step into `work`.
    fn backward_steps(
        &self,
        d: Dims,
        dy: &Tensor,
        w: RnnWeights<'_>,
        work: &mut [Tensor],
    ) -> Result<()> {
        let [_, _, hprev, gates, cell, dgi, dgh, carry, _, _, keep] = work else {
            return Err(Error::arg("recurrent", "missing work buffers"));
        };
        match device_of("recurrent", &[dy, w.w_hh, gates])? {
            Device::Cpu => {
                let mut s = CpuBackward {
                    dgi: host_mut(dgi)?,
                    dgh: host_mut(dgh)?,
                    carry: host_mut(carry)?,
                    keep: host(keep),
                };
                let saved = match self.cell {
                    Cell::Lstm => host(cell),
                    Cell::Gru => host(hprev),
                };
                let (dy, whh, gates) = (host(dy), host(w.w_hh), host(gates));
                for t in (0..d.steps).rev() {
                    self.cpu_backward_step(d, t, dy, whh, gates, saved, &mut s);
                }
                Ok(())
            }
            Device::Gpu(ctx) => {
                for t in (0..d.steps).rev() {
                    let p = self.params(d, t);
                    let (kernel, tensors): (_, Vec<&Tensor>) = match self.cell {
                        Cell::Lstm => (
                            &LSTM_BACKWARD,
                            vec![dy, w.w_hh, gates, cell, keep, dgi, carry],
                        ),
                        Cell::Gru => (
                            &GRU_BACKWARD,
                            vec![dy, w.w_hh, gates, hprev, keep, dgi, dgh, carry],
                        ),
                    };
                    launch(
                        &ctx,
                        kernel,
                        &[],
                        &p,
                        &tensors,
                        grid(d.batch * d.hidden, CELL_WG),
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl Recurrence {
    /// `keep` [B*T]: 0 where every feature of the step equals the mask value, else 1
    /// (left as made, all zeros and unread, without a mask value).
    fn mark_padding(&self, d: Dims, x2: &Tensor, keep: &mut Tensor) -> Result<()> {
        let Some(mask) = self.mask_value else {
            return Ok(());
        };
        match device_of("recurrent", &[x2, keep])? {
            Device::Cpu => {
                let x = host(x2);
                for (row, k) in host_mut(keep)?.iter_mut().enumerate() {
                    let values = &x[row * d.inputs..(row + 1) * d.inputs];
                    *k = if values.iter().all(|&v| v == mask) {
                        0.0
                    } else {
                        1.0
                    };
                }
                Ok(())
            }
            Device::Gpu(ctx) => {
                let p = self.params(d, 0);
                let rows = d.batch * d.steps;
                launch(&ctx, &STEP_MASK, &[], &p, &[x2, keep], grid(rows, CELL_WG))
            }
        }
    }

    /// Whether row `row` is a real step.
    fn kept(&self, keep: &[f32], row: usize) -> bool {
        self.mask_value.is_none() || keep[row] != 0.0
    }
}

fn host(t: &Tensor) -> &[f32] {
    super::host(t)
}

fn host_mut(t: &mut Tensor) -> Result<&mut [f32]> {
    t.host_mut()
        .ok_or(Error::DeviceMismatch { op: "recurrent" })
}

/// What the CPU forward writes.
struct CpuForward<'a> {
    hprev: &'a mut [f32],
    gates: &'a mut [f32],
    cell: &'a mut [f32],
    y: &'a mut [f32],
    keep: &'a [f32],
}

/// What the CPU backward writes.
struct CpuBackward<'a> {
    dgi: &'a mut [f32],
    dgh: &'a mut [f32],
    carry: &'a mut [f32],
    keep: &'a [f32],
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// Row `k` of a [_, n] matrix dotted with row `r` of another.
fn dot_rows(a: &[f32], k: usize, b: &[f32], r: usize, n: usize) -> f32 {
    let (a, b) = (&a[k * n..(k + 1) * n], &b[r * n..(r + 1) * n]);
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Recurrence {
    /// The CPU reference of one forward step, as the kernels compute it.
    fn cpu_forward_step(
        &self,
        d: Dims,
        t: usize,
        xp: &[f32],
        whh: &[f32],
        bhh: &[f32],
        s: &mut CpuForward<'_>,
    ) {
        let (hs, gh) = (d.hidden, d.gh);
        for b in 0..d.batch {
            let row = b * d.steps + t;
            let kept = self.kept(s.keep, row);
            for j in 0..hs {
                let recur = |k: usize| match t {
                    0 => 0.0,
                    _ => dot_rows(whh, k, s.hprev, row, hs),
                };
                let pre = |k: usize| xp[row * gh + k] + bhh[k] + recur(k);
                let hp = if t == 0 { 0.0 } else { s.hprev[row * hs + j] };
                let g = row * 4 * hs + j;
                let h = match self.cell {
                    Cell::Lstm => {
                        let cp = if t == 0 {
                            0.0
                        } else {
                            s.cell[(row - 1) * hs + j]
                        };
                        if kept {
                            let (gi, gf) = (sigmoid(pre(j)), sigmoid(pre(hs + j)));
                            let (gg, go) = (pre(2 * hs + j).tanh(), sigmoid(pre(3 * hs + j)));
                            let c = gf * cp + gi * gg;
                            s.cell[row * hs + j] = c;
                            put(s.gates, g, hs, &[gi, gf, gg, go]);
                            go * c.tanh()
                        } else {
                            s.cell[row * hs + j] = cp;
                            hp
                        }
                    }
                    Cell::Gru if kept => {
                        let (r, z) = (sigmoid(pre(j)), sigmoid(pre(hs + j)));
                        let hn = bhh[2 * hs + j] + recur(2 * hs + j);
                        let n = (xp[row * gh + 2 * hs + j] + r * hn).tanh();
                        put(s.gates, g, hs, &[r, z, n, hn]);
                        (1.0 - z) * n + z * hp
                    }
                    Cell::Gru => hp,
                };
                self.cpu_emit(d, t, b, j, h, kept, s);
            }
        }
    }

    /// Writes step t's h of (b, j) where the kernels do: the next row's h_{t-1} and y.
    #[allow(clippy::too_many_arguments)]
    fn cpu_emit(
        &self,
        d: Dims,
        t: usize,
        b: usize,
        j: usize,
        h: f32,
        kept: bool,
        s: &mut CpuForward<'_>,
    ) {
        let (hs, row) = (d.hidden, b * d.steps + t);
        if t == 0 {
            s.hprev[row * hs + j] = 0.0;
        }
        if t + 1 < d.steps {
            s.hprev[(row + 1) * hs + j] = h;
        }
        if self.return_sequences {
            s.y[row * hs + j] = if kept { h } else { 0.0 };
        } else if t + 1 == d.steps {
            s.y[b * hs + j] = h;
        }
    }
}

/// Writes `values` at `at`, `at + stride`, ..
fn put(out: &mut [f32], at: usize, stride: usize, values: &[f32]) {
    for (q, v) in values.iter().enumerate() {
        out[at + q * stride] = *v;
    }
}

impl Recurrence {
    /// The CPU reference of one backward step, as the kernels compute it; `saved` is the
    /// LSTM's cell states or the GRU's h_{t-1}.
    #[allow(clippy::too_many_arguments)]
    fn cpu_backward_step(
        &self,
        d: Dims,
        t: usize,
        dy: &[f32],
        whh: &[f32],
        gates: &[f32],
        saved: &[f32],
        s: &mut CpuBackward<'_>,
    ) {
        let (hs, gh, last) = (d.hidden, d.gh, t + 1 == d.steps);
        let bh = d.batch * hs;
        for b in 0..d.batch {
            let row = b * d.steps + t;
            let kept = self.kept(s.keep, row);
            for j in 0..hs {
                let e = b * hs + j;
                let mut dh = match (self.return_sequences, kept) {
                    (true, true) => dy[row * hs + j],
                    (false, _) if last => dy[b * hs + j],
                    _ => 0.0,
                };
                let next = match self.cell {
                    Cell::Lstm => &*s.dgi,
                    Cell::Gru => &*s.dgh,
                };
                let mut dc = 0.0;
                if !last {
                    let recur = (0..gh).map(|k| next[(row + 1) * gh + k] * whh[k * hs + j]);
                    dh += recur.sum::<f32>();
                    match self.cell {
                        Cell::Lstm => {
                            dh += s.carry[bh + e];
                            dc = s.carry[e];
                        }
                        Cell::Gru => dh += s.carry[e],
                    }
                }
                let o = row * gh + j;
                if !kept {
                    let carry = if self.cell == Cell::Lstm { bh + e } else { e };
                    s.carry[carry] = dh;
                    if self.cell == Cell::Lstm {
                        s.carry[e] = dc;
                    }
                    put(s.dgi, o, hs, &[0.0; 4][..self.cell.gates()]);
                    if self.cell == Cell::Gru {
                        put(s.dgh, o, hs, &[0.0; 3]);
                    }
                    continue;
                }
                self.cpu_unit_grads(d, t, b, j, (dh, dc), gates, saved, s);
            }
        }
    }
}

impl Recurrence {
    /// The gate gradients of unit (b, j) at a real step t from its dL/dh (and the LSTM's
    /// dL/dc from the step after), and the carries to step t - 1.
    #[allow(clippy::too_many_arguments)]
    fn cpu_unit_grads(
        &self,
        d: Dims,
        t: usize,
        b: usize,
        j: usize,
        (dh, dc): (f32, f32),
        gates: &[f32],
        saved: &[f32],
        s: &mut CpuBackward<'_>,
    ) {
        let (hs, row) = (d.hidden, b * d.steps + t);
        let (e, o, g) = (b * hs + j, row * d.gh + j, row * 4 * hs + j);
        let q = |i: usize| gates[g + i * hs];
        match self.cell {
            Cell::Lstm => {
                let (gi, gf, gg, go) = (q(0), q(1), q(2), q(3));
                let tc = saved[row * hs + j].tanh();
                let cp = if t == 0 {
                    0.0
                } else {
                    saved[(row - 1) * hs + j]
                };
                let dc = dc + dh * go * (1.0 - tc * tc);
                s.carry[e] = dc * gf;
                s.carry[d.batch * hs + e] = 0.0;
                let dg = [
                    dc * gg * gi * (1.0 - gi),
                    dc * cp * gf * (1.0 - gf),
                    dc * gi * (1.0 - gg * gg),
                    dh * tc * go * (1.0 - go),
                ];
                put(s.dgi, o, hs, &dg);
            }
            Cell::Gru => {
                let (r, z, n, hn) = (q(0), q(1), q(2), q(3));
                let hp = saved[row * hs + j];
                s.carry[e] = dh * z;
                let dn = dh * (1.0 - z) * (1.0 - n * n);
                let dr = dn * hn * r * (1.0 - r);
                let dz = dh * (hp - n) * z * (1.0 - z);
                put(s.dgi, o, hs, &[dr, dz, dn]);
                put(s.dgh, o, hs, &[dr, dz, dn * r]);
            }
        }
    }
}
