//! Matrix multiply in the three forms a dense layer needs (A*B, A*B^T, A^T*B),
//! with an optional fused epilogue: bias add and activation.

use super::{device_of, host, launch, matmul_tune, Activation};
use crate::device::{Device, GpuContext, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = concat!(
    include_str!("../../shaders/act.wgsl"),
    include_str!("../../shaders/matmul.wgsl")
);

const fn kernel(entry: &'static str) -> Kernel {
    Kernel {
        file: "matmul.wgsl",
        source: SOURCE,
        entry,
        inputs: 3,
        outputs: 1,
        bounds_checks: false,
    }
}

const VEC4: Kernel = Kernel {
    file: "matmul_vec4.wgsl",
    source: concat!(
        include_str!("../../shaders/act.wgsl"),
        include_str!("../../shaders/matmul_vec4.wgsl")
    ),
    entry: "vec4_8x8",
    inputs: 3,
    outputs: 1,
    bounds_checks: false,
};

/// A generated lane kernel (shaders/matmul_lane/ENTRY.wgsl) after the declarations they
/// share: a module of its own per kernel, so building one pipeline parses no other.
macro_rules! lane {
    ($entry:literal) => {
        Kernel {
            file: concat!("matmul_lane/", $entry, ".wgsl"),
            source: concat!(
                include_str!("../../shaders/act.wgsl"),
                include_str!("../../shaders/matmul_lane.wgsl"),
                include_str!(concat!("../../shaders/matmul_lane/", $entry, ".wgsl"))
            ),
            entry: $entry,
            inputs: 3,
            outputs: 1,
            bounds_checks: false,
        }
    };
}

/// The uniform block of shaders/matmul.wgsl, matmul_vec4.wgsl and matmul_lane.wgsl (one
/// struct in all three), field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) m: u32,
    pub(super) n: u32,
    pub(super) k: u32,
    /// The epilogue's activation code (see act.wgsl).
    pub(super) act: u32,
    /// The activation's parameter (leaky ReLU's slope).
    pub(super) alpha: f32,
    /// `FLAG_*` bits, read by the lane kernels only (the others take pipeline constants).
    pub(super) flags: u32,
}

/// Lane kernels: B is stored [N, K].
const FLAG_TB: u32 = 1;
/// Lane kernels: add the bias.
const FLAG_BIAS: u32 = 2;

/// Every matmul kernel, for the uniform layout test in src/ops/mod.rs.
#[cfg(test)]
pub(super) fn kernels() -> Vec<Kernel> {
    MatmulKernel::ALL.map(|k| k.launch_spec().0).to_vec()
}

/// Products of fewer multiply-adds than this run on a small kernel on CPU adapters, untuned
/// (see `Gemm::small_kernel`).
const SMALL_PRODUCT: usize = 1 << 19;

/// The subgroup lane kernels kiln chooses among, largest tile first. `sg32x16` and
/// `sg16x16` are left out: on lavapipe they compile two to four times longer than `sg32x8`
/// (a cost every fresh machine pays in its first epoch) and never ran clearly faster than
/// it (BENCHMARKS.md, "The matmul autotuner"); they stay selectable by name.
const SG_LANES: [MatmulKernel; 4] = [
    MatmulKernel::LaneSg64x16,
    MatmulKernel::LaneSg32x8,
    MatmulKernel::LaneSg16x8,
    MatmulKernel::LaneSg8x16,
];

/// Which GPU kernel computes the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulKernel {
    /// One output per invocation: the baseline.
    Naive,
    /// 4x4 outputs per invocation in registers, no workgroup memory.
    Blocked,
    /// 8x8 outputs per invocation with vec4 loads, no workgroup memory (needs aligned shapes).
    Vec4,
    /// Workgroup-memory tiles of 64x64: the kernel for real GPUs.
    Tiled,
    /// 16x16 outputs per invocation, straight-line code, workgroup 8x8 (aligned shapes).
    Lane16x16,
    /// 8x16 outputs per invocation, workgroup 8x2: more invocations for mid-size outputs.
    Lane8x16,
    /// 4x16 outputs per invocation, workgroup 8x1: keeps both cores busy on small batches.
    Lane4x16,
    /// 64x16 outputs per invocation, rows of A shared by subgroup broadcast (subgroups of 8).
    LaneSg64x16,
    /// 32x16 outputs per invocation, rows of A shared by subgroup broadcast.
    LaneSg32x16,
    /// 16x16 outputs per invocation, rows of A shared by subgroup broadcast.
    LaneSg16x16,
    /// 8x16 outputs per invocation, rows of A shared by subgroup broadcast.
    LaneSg8x16,
    /// 32x8 outputs per invocation, rows of A shared by subgroup broadcast.
    LaneSg32x8,
    /// 16x8 outputs per invocation, rows of A shared by subgroup broadcast.
    LaneSg16x8,
}

impl MatmulKernel {
    /// Every kernel, in a fixed order.
    pub const ALL: [MatmulKernel; 13] = [
        MatmulKernel::Naive,
        MatmulKernel::Blocked,
        MatmulKernel::Vec4,
        MatmulKernel::Tiled,
        MatmulKernel::Lane16x16,
        MatmulKernel::Lane8x16,
        MatmulKernel::Lane4x16,
        MatmulKernel::LaneSg64x16,
        MatmulKernel::LaneSg32x16,
        MatmulKernel::LaneSg16x16,
        MatmulKernel::LaneSg8x16,
        MatmulKernel::LaneSg32x8,
        MatmulKernel::LaneSg16x8,
    ];

    /// The kernel's name in the autotune cache (lower case).
    pub fn name(self) -> &'static str {
        match self {
            MatmulKernel::Naive => "naive",
            MatmulKernel::Blocked => "blocked",
            MatmulKernel::Vec4 => "vec4",
            MatmulKernel::Tiled => "tiled",
            MatmulKernel::Lane16x16 => "lane16x16",
            MatmulKernel::Lane8x16 => "lane8x16",
            MatmulKernel::Lane4x16 => "lane4x16",
            MatmulKernel::LaneSg64x16 => "sg64x16",
            MatmulKernel::LaneSg32x16 => "sg32x16",
            MatmulKernel::LaneSg16x16 => "sg16x16",
            MatmulKernel::LaneSg8x16 => "sg8x16",
            MatmulKernel::LaneSg32x8 => "sg32x8",
            MatmulKernel::LaneSg16x8 => "sg16x8",
        }
    }

    /// The kernel called `name`, as `name()` writes it.
    pub fn from_name(name: &str) -> Option<MatmulKernel> {
        MatmulKernel::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the kernel reads vec4 rows and so needs `Gemm::vec4_ok` shapes.
    fn needs_vec4(self) -> bool {
        !matches!(
            self,
            MatmulKernel::Naive | MatmulKernel::Blocked | MatmulKernel::Tiled
        )
    }

    /// Whether the kernel shares loads through subgroups of exactly 8 lanes.
    pub fn needs_subgroup8(self) -> bool {
        self.name().starts_with("sg")
    }

    /// How many workgroups the kernel launches for an output of `d`.
    fn workgroups(self, d: Dims) -> usize {
        let (_, (cols, rows), _) = self.launch_spec();
        d.n.div_ceil(cols) * d.m.div_ceil(rows)
    }

    /// Whether the kernel can run on `ctx` at all.
    pub fn runs_on(self, ctx: &GpuContext) -> bool {
        !self.needs_subgroup8() || ctx.subgroup_size() == Some(8)
    }

    /// The shader entry, the outputs one workgroup covers (columns, rows) and, for the
    /// lane kernels, the workgroup shape.
    fn launch_spec(self) -> (Kernel, (usize, usize), Option<(u32, u32)>) {
        match self {
            MatmulKernel::Naive => (kernel("naive"), (16, 16), None),
            MatmulKernel::Blocked => (kernel("blocked"), (32, 32), None),
            MatmulKernel::Vec4 => (VEC4, (64, 64), None),
            MatmulKernel::Tiled => (kernel("tiled"), (64, 64), None),
            MatmulKernel::Lane16x16 => (lane!("lane_16x16"), (128, 128), Some((8, 8))),
            MatmulKernel::Lane8x16 => (lane!("lane_8x16"), (128, 16), Some((8, 2))),
            MatmulKernel::Lane4x16 => (lane!("lane_4x16"), (128, 4), Some((8, 1))),
            // One subgroup per workgroup: the most workgroups for the cores to share.
            MatmulKernel::LaneSg64x16 => (lane!("lane_sg64x16"), (128, 64), Some((8, 1))),
            MatmulKernel::LaneSg32x16 => (lane!("lane_sg32x16"), (128, 32), Some((8, 1))),
            MatmulKernel::LaneSg16x16 => (lane!("lane_sg16x16"), (128, 16), Some((8, 1))),
            MatmulKernel::LaneSg8x16 => (lane!("lane_sg8x16"), (128, 8), Some((8, 1))),
            MatmulKernel::LaneSg32x8 => (lane!("lane_sg32x8"), (64, 32), Some((8, 1))),
            MatmulKernel::LaneSg16x8 => (lane!("lane_sg16x8"), (64, 16), Some((8, 1))),
        }
    }
}

/// A matrix product `act(op(A) * op(B) + bias)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gemm {
    /// Use A^T (A is stored [K, M]).
    pub trans_a: bool,
    /// Use B^T (B is stored [N, K]).
    pub trans_b: bool,
    /// Store the result transposed, as [N, M].
    pub trans_c: bool,
    /// Activation applied after the bias.
    pub act: Activation,
    /// Force a kernel instead of the adapter's choice.
    pub kernel: Option<MatmulKernel>,
}

/// The problem size of one product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Rows of the output.
    pub m: usize,
    /// Columns of the output.
    pub n: usize,
    /// The contracted dimension.
    pub k: usize,
}

impl Gemm {
    /// A * B
    pub fn nn() -> Gemm {
        Gemm::default()
    }

    /// A * B^T
    pub fn nt() -> Gemm {
        Gemm {
            trans_b: true,
            ..Gemm::default()
        }
    }

    /// A^T * B
    pub fn tn() -> Gemm {
        Gemm {
            trans_a: true,
            ..Gemm::default()
        }
    }

    /// The same product stored transposed ([N, M]); no bias or activation then.
    pub fn store_transposed(self) -> Gemm {
        Gemm {
            trans_c: true,
            ..self
        }
    }

    /// The same product followed by `act`.
    pub fn with_act(self, act: Activation) -> Gemm {
        Gemm { act, ..self }
    }

    /// The same product computed by `kernel`.
    pub fn with_kernel(self, kernel: MatmulKernel) -> Gemm {
        Gemm {
            kernel: Some(kernel),
            ..self
        }
    }

    /// Checks operand shapes and returns M, N, K.
    pub fn dims(&self, a: &Tensor, b: &Tensor, bias: Option<&Tensor>) -> Result<Dims> {
        let (ra, ca) = a.dims2("matmul")?;
        let (rb, cb) = b.dims2("matmul")?;
        let (m, k) = if self.trans_a { (ca, ra) } else { (ra, ca) };
        let (k2, n) = if self.trans_b { (cb, rb) } else { (rb, cb) };
        if k != k2 {
            return Err(Error::shape(
                "matmul",
                format!(
                    "inner dimensions differ: A{} {:?} and B{} {:?} give K = {k} and {k2}",
                    if self.trans_a { "^T" } else { "" },
                    a.shape(),
                    if self.trans_b { "^T" } else { "" },
                    b.shape()
                ),
            ));
        }
        if self.trans_c && (bias.is_some() || self.act != Activation::Identity) {
            return Err(Error::arg(
                "matmul",
                "a transposed store takes no bias or activation",
            ));
        }
        if let Some(bias) = bias {
            if bias.len() != n {
                return Err(Error::shape(
                    "matmul bias",
                    format!("bias has {} values, the output has {n} columns", bias.len()),
                ));
            }
        }
        Ok(Dims { m, n, k })
    }

    /// Computes the product into a new [M, N] tensor ([N, M] when stored transposed).
    pub fn run(&self, a: &Tensor, b: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let d = self.dims(a, b, bias)?;
        let shape = if self.trans_c { [d.n, d.m] } else { [d.m, d.n] };
        let mut out = Tensor::uninit(&a.device(), &shape)?;
        self.run_into(a, b, bias, &mut out)?;
        Ok(out)
    }

    /// Computes the product into `out`, which must be [M, N].
    pub fn run_into(
        &self,
        a: &Tensor,
        b: &Tensor,
        bias: Option<&Tensor>,
        out: &mut Tensor,
    ) -> Result<()> {
        let d = self.dims(a, b, bias)?;
        if d.m.checked_mul(d.n) != Some(out.len()) {
            return Err(Error::shape(
                "matmul",
                format!(
                    "output is {:?}, the product is [{}, {}]",
                    out.shape(),
                    d.m,
                    d.n
                ),
            ));
        }
        let mut operands = vec![a, b];
        operands.extend(bias);
        match device_of("matmul", &operands)? {
            Device::Cpu => {
                let bias = bias.and_then(Tensor::host);
                let (a, b) = (host(a), host(b));
                let c = cpu_matmul(self, d, a, b, bias);
                out.host_mut().unwrap_or(&mut []).copy_from_slice(&c);
                Ok(())
            }
            Device::Gpu(ctx) => self.dispatch(&ctx, d, a, b, bias, out),
        }
    }

    /// The product for dimensions `d` whatever the operands' shapes (only their lengths are
    /// checked): rows of samples with several positions ([batch, t, d] as [batch * t, d]).
    pub fn run_flat_into(
        &self,
        d: Dims,
        a: &Tensor,
        b: &Tensor,
        bias: Option<&Tensor>,
        out: &mut Tensor,
    ) -> Result<()> {
        let lens = [
            (a.len(), d.m * d.k),
            (b.len(), d.k * d.n),
            (out.len(), d.m * d.n),
        ];
        let bias_ok = bias.is_none_or(|t| t.len() == d.n);
        if lens.iter().any(|(got, want)| got != want) || !bias_ok || self.trans_c {
            return Err(Error::shape(
                "matmul",
                format!(
                    "{d:?} does not fit operands of {:?}, {:?} and output {:?}",
                    a.shape(),
                    b.shape(),
                    out.shape()
                ),
            ));
        }
        let mut operands = vec![a, b, &*out];
        operands.extend(bias);
        match device_of("matmul", &operands)? {
            Device::Cpu => {
                let c = cpu_matmul(self, d, host(a), host(b), bias.and_then(Tensor::host));
                out.host_mut().unwrap_or(&mut []).copy_from_slice(&c);
                Ok(())
            }
            Device::Gpu(ctx) => self.dispatch(&ctx, d, a, b, bias, out),
        }
    }

    /// The kernel this product runs with on `ctx`: the forced one, else the autotuner's
    /// choice for this shape class if it has made one, else the static choice.
    pub fn choose(&self, ctx: &GpuContext, d: Dims) -> MatmulKernel {
        match self.kernel {
            Some(k) if k.needs_vec4() && !self.vec4_ok(d) => MatmulKernel::Blocked,
            Some(k) if !k.runs_on(ctx) => MatmulKernel::Blocked,
            Some(k) => k,
            None => matmul_tune::cached(self, ctx, d).unwrap_or_else(|| self.static_choice(ctx, d)),
        }
    }

    /// The kernel picked without timing anything (also the choice with `KILN_AUTOTUNE=0`).
    pub fn static_choice(&self, ctx: &GpuContext, d: Dims) -> MatmulKernel {
        let aligned = self.vec4_ok(d);
        if !ctx.is_software() {
            return MatmulKernel::Tiled;
        }
        if let Some(k) = self.small_kernel(ctx, d) {
            return k;
        }
        // The vec4 kernel's A^T form leaks memory in lavapipe (Mesa 22.3) on every
        // dispatch for some shapes (see tests/soak.rs), so software adapters without the
        // sg kernels get the blocked kernel there; kiln's dense layers avoid A^T with an
        // explicit transpose.
        let sg = ctx.subgroup_size() == Some(8);
        if !aligned || (self.trans_a && !sg) {
            return MatmulKernel::Blocked;
        }
        if sg {
            // The largest tile that still gives each of two cores a workgroup, short of
            // `sg64x16`, whose compile time (seconds, on every fresh machine) only the
            // tuner may judge worth it on tall outputs.
            return SG_LANES[1..]
                .iter()
                .copied()
                .find(|k| k.workgroups(d) >= 2)
                .unwrap_or(MatmulKernel::LaneSg8x16);
        }
        // The tuner's usual pick; only tiny outputs (under 8 tiles of 16x16) do better
        // with the 4x16 kernel's more, smaller invocations (from the tuner's picks).
        if d.m.div_ceil(16) * d.n.div_ceil(16) < 8 {
            MatmulKernel::Lane4x16
        } else {
            MatmulKernel::Lane16x16
        }
    }

    /// On a CPU adapter, the kernel for a product too small to repay compiling a large tile:
    /// the blocked one. There the straight-line lane kernels compile (once per process with
    /// a cold shader cache) for far longer than such a product runs, and their speed-up on
    /// it is lost in the dispatch cost.
    fn small_kernel(&self, ctx: &GpuContext, d: Dims) -> Option<MatmulKernel> {
        let macs = d.m.saturating_mul(d.n).saturating_mul(d.k);
        (ctx.is_software() && macs < SMALL_PRODUCT).then_some(MatmulKernel::Blocked)
    }

    /// The kernels the autotuner times for this product on `ctx` (one: nothing to tune).
    pub fn candidates(&self, ctx: &GpuContext, d: Dims) -> Vec<MatmulKernel> {
        if let Some(k) = self.small_kernel(ctx, d) {
            return vec![k];
        }
        let aligned = self.vec4_ok(d);
        let lanes: Vec<MatmulKernel> = if ctx.subgroup_size() == Some(8) {
            // Big tiles compile for seconds on lavapipe: only those that give both cores
            // work are worth timing (the 64-row one only on tall outputs, where it wins);
            // the smallest always is.
            SG_LANES
                .into_iter()
                .filter(|&k| {
                    let tall = k != MatmulKernel::LaneSg64x16 || d.m >= 512;
                    (tall && k.workgroups(d) >= 2) || k == MatmulKernel::LaneSg8x16
                })
                .collect()
        } else {
            vec![
                MatmulKernel::Lane16x16,
                MatmulKernel::Lane8x16,
                MatmulKernel::Lane4x16,
                MatmulKernel::Vec4,
            ]
        };
        let sg = ctx.subgroup_size() == Some(8);
        match (ctx.is_software(), aligned) {
            // A^T stays off the vec4 and plain lane kernels on lavapipe: see
            // `static_choice`; the sg kernels load A^T without that leak.
            (true, true) if !self.trans_a || sg => lanes,
            (true, _) => vec![MatmulKernel::Blocked],
            (false, true) => vec![
                MatmulKernel::Tiled,
                MatmulKernel::Lane16x16,
                MatmulKernel::Vec4,
            ],
            (false, false) => vec![MatmulKernel::Tiled],
        }
    }

    /// The vec4 kernels read rows of 4 along the contiguous dimension of each operand.
    fn vec4_ok(&self, d: Dims) -> bool {
        let a_ok = if self.trans_a {
            d.m.is_multiple_of(4)
        } else {
            d.k.is_multiple_of(4)
        };
        let b_ok = if self.trans_b {
            d.k.is_multiple_of(4)
        } else {
            d.n.is_multiple_of(4)
        };
        a_ok && b_ok && d.n.is_multiple_of(4)
    }

    /// Records the product on the GPU for dimensions `d` the caller has checked against the
    /// operands' lengths: lets an op multiply tensors whose shapes are not [M, K] and [K, N].
    pub(crate) fn dispatch(
        &self,
        ctx: &std::sync::Arc<GpuContext>,
        d: Dims,
        a: &Tensor,
        b: &Tensor,
        bias: Option<&Tensor>,
        out: &mut Tensor,
    ) -> Result<()> {
        let which = match self.kernel {
            Some(_) => self.choose(ctx, d),
            None => matmul_tune::pick(self, ctx, d, a, b, bias, out)?,
        };
        self.record(ctx, d, which, a, b, bias, out)
    }

    /// The pipeline constants and the `FLAG_*` parameter bits of a kernel with workgroup
    /// shape `workgroup` (the lane kernels') or without (the others). The lane kernels
    /// read B's layout, the bias and ReLU (or none) from their parameters instead of
    /// constants, so that one pipeline serves the forward and backward products of ReLU
    /// layers, and a fresh machine compiles it once (BENCHMARKS.md, "First run with cold
    /// caches").
    fn specialise(
        &self,
        workgroup: Option<(u32, u32)>,
        bias: bool,
    ) -> (Vec<(&'static str, f64)>, u32) {
        let flag = |b: bool| f64::from(u8::from(b));
        let Some((x, y)) = workgroup else {
            let constants = vec![
                ("TA", flag(self.trans_a)),
                ("TB", flag(self.trans_b)),
                ("BIAS", flag(bias)),
                ("TC", flag(self.trans_c)),
            ];
            return (constants, 0);
        };
        let act = match self.act {
            Activation::Identity | Activation::Relu => 0,
            other => other.code(),
        };
        let constants = vec![
            ("TA", flag(self.trans_a)),
            ("TC", flag(self.trans_c)),
            ("WGX", f64::from(x)),
            ("WGY", f64::from(y)),
            ("ACT", f64::from(act)),
        ];
        let bit = |on: bool, flag: u32| if on { flag } else { 0 };
        (constants, bit(self.trans_b, FLAG_TB) | bit(bias, FLAG_BIAS))
    }

    /// Records the product with kernel `which` (already checked to suit `d`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        ctx: &std::sync::Arc<GpuContext>,
        d: Dims,
        which: MatmulKernel,
        a: &Tensor,
        b: &Tensor,
        bias: Option<&Tensor>,
        out: &mut Tensor,
    ) -> Result<()> {
        let (kernel, per_group, workgroup) = which.launch_spec();
        let (constants, flags) = self.specialise(workgroup, bias.is_some());
        let params = Params {
            m: d.m as u32,
            n: d.n as u32,
            k: d.k as u32,
            act: self.act.code(),
            alpha: self.act.alpha(),
            flags,
        };
        let groups = [
            d.n.div_ceil(per_group.0) as u32,
            d.m.div_ceil(per_group.1) as u32,
            1,
        ];
        // Without a bias, B stands in for the unused binding (both are read-only).
        let bias = bias.unwrap_or(b);
        launch(
            ctx,
            &kernel,
            &constants,
            &params,
            &[a, b, bias, out],
            groups,
        )
    }
}

/// CPU reference: `act(op(A) op(B) + bias)` with f64 accumulation.
pub fn cpu_matmul(g: &Gemm, d: Dims, a: &[f32], b: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let Dims { m, n, k } = d;
    let at = |i: usize, p: usize| {
        if g.trans_a {
            a[p * m + i]
        } else {
            a[i * k + p]
        }
    };
    let bt = |p: usize, j: usize| {
        if g.trans_b {
            b[j * k + p]
        } else {
            b[p * n + j]
        }
    };
    let mut c = vec![0.0f32; m * n];
    let at_c = |i: usize, j: usize| if g.trans_c { j * m + i } else { i * n + j };
    let mut row = vec![0.0f64; n];
    for i in 0..m {
        row.iter_mut().for_each(|v| *v = 0.0);
        for p in 0..k {
            let av = at(i, p) as f64;
            for (j, r) in row.iter_mut().enumerate() {
                *r += av * bt(p, j) as f64;
            }
        }
        for j in 0..n {
            let z = row[j] + bias.map_or(0.0, |bv| bv[j] as f64);
            c[at_c(i, j)] = g.act.forward(z) as f32;
        }
    }
    c
}

/// A * B
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Gemm::nn().run(a, b, None)
}

#[cfg(test)]
mod tests {
    use super::MatmulKernel;
    use std::collections::BTreeSet;

    /// The names of the `@compute` entry points in a WGSL source.
    fn entry_points(source: &str) -> BTreeSet<String> {
        let mut lines = source.lines();
        let mut found = BTreeSet::new();
        while let Some(line) = lines.next() {
            if !line.trim_start().starts_with("@compute") {
                continue;
            }
            let decl = lines.next().unwrap_or_default().trim_start();
            let name = decl.strip_prefix("fn ").and_then(|d| d.split('(').next());
            found.insert(name.unwrap_or(decl).to_string());
        }
        found
    }

    /// Every kernel's entry point is in its source; the generated folder holds exactly the
    /// lane kernels `MatmulKernel` launches, one entry point per file, named after it.
    #[test]
    fn kernels_and_shader_entry_points_agree() {
        let mut lanes = BTreeSet::new();
        for k in MatmulKernel::ALL {
            let (spec, ..) = k.launch_spec();
            let present = entry_points(spec.source);
            assert!(present.contains(spec.entry), "{k:?}: no {}", spec.entry);
            if let Some(file) = spec.file.strip_prefix("matmul_lane/") {
                assert_eq!(present, BTreeSet::from([spec.entry.to_string()]), "{k:?}");
                assert_eq!(file, format!("{}.wgsl", spec.entry));
                lanes.insert(file.to_string());
            }
        }
        let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/matmul_lane");
        let files: BTreeSet<String> = std::fs::read_dir(folder)
            .expect("the generated kernels' folder")
            .map(|e| {
                e.expect("a folder entry")
                    .file_name()
                    .to_string_lossy()
                    .into()
            })
            .collect();
        assert_eq!(files, lanes);
    }
}
