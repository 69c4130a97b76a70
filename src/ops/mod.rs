//! Ops: one file per op family with its shape checks, CPU reference and GPU dispatch.
//!
//! Every op takes its operands by reference and either returns a new tensor or
//! writes into an output the caller owns (`*_into`), so a training step can reuse
//! its buffers. On the GPU an op only records a dispatch; see [`Device::flush`].

pub mod activation;
pub mod attention;
pub mod batch_norm;
pub mod batched_matmul;
pub mod bias;
pub mod concat;
pub mod conv;
pub mod dense_grad;
pub mod dense_head;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod gather;
pub mod kv_attention;
pub mod layer_norm;
pub mod loss;
pub mod matmul;
pub mod matmul_tune;
pub mod metrics;
pub mod optim;
pub mod pool;
pub mod reduce;
pub mod rnn_cell;
pub mod transpose;

use crate::device::{Device, GpuContext, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::Arc;

pub use activation::Activation;

/// Invocations per workgroup of the 1-D kernels.
pub(crate) const WG: u32 = 256;

/// The device all `tensors` share, or an error naming `op`.
pub(crate) fn device_of(op: &'static str, tensors: &[&Tensor]) -> Result<Device> {
    let Some((first, rest)) = tensors.split_first() else {
        return Err(Error::arg(op, "no operands"));
    };
    let first = first.device();
    if rest.iter().all(|t| t.device().same(&first)) {
        Ok(first)
    } else {
        Err(Error::DeviceMismatch { op })
    }
}

/// Workgroup counts covering `n` items at `per_group` each, folded into 2-D past the
/// per-dimension limit; kernels rebuild the index as `x + y * num_workgroups.x`.
pub(crate) fn grid(n: usize, per_group: u32) -> [u32; 3] {
    let groups = (n as u64).div_ceil(per_group as u64).max(1);
    if groups <= 65535 {
        [groups as u32, 1, 1]
    } else {
        [65535, groups.div_ceil(65535) as u32, 1]
    }
}

/// Records `kernel` over the tensors' buffers (inputs first, then outputs); `params` is
/// the kernel family's uniform block, the `#[repr(C)]` struct next to its `Kernel`.
pub(crate) fn launch<P: bytemuck::Pod>(
    ctx: &Arc<GpuContext>,
    kernel: &Kernel,
    constants: &[(&'static str, f64)],
    params: &P,
    tensors: &[&Tensor],
    groups: [u32; 3],
) -> Result<()> {
    let buffers: Vec<crate::device::Span<'_>> = tensors
        .iter()
        .map(|t| t.buffer().ok_or(Error::DeviceMismatch { op: kernel.entry }))
        .collect::<Result<_>>()?;
    ctx.dispatch(kernel, constants, params, &buffers, groups)
}

/// Checks that two tensors have the same shape.
pub(crate) fn same_shape(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() == b.shape() {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("{:?} vs {:?}", a.shape(), b.shape()),
        ))
    }
}

/// Whether `target` holds a value for each of `pred`'s, row for row: the same shape, or
/// the same rows with each row's values packed flat (a batch of [T, D] outputs against
/// its [B, T * D] targets).
pub(crate) fn same_samples(pred: &Tensor, target: &Tensor) -> bool {
    pred.shape() == target.shape()
        || (pred.len() == target.len()
            && target.shape().len() == 2
            && pred.shape().len() > 2
            && pred.shape().first() == target.shape().first())
}

/// The host values of a CPU tensor (empty for a GPU tensor).
pub(crate) fn host(t: &Tensor) -> &[f32] {
    t.host().unwrap_or(&[])
}

/// Rounds `acc` into the CPU tensor `out`.
pub(crate) fn write_f64(op: &'static str, out: &mut Tensor, acc: &[f64]) -> Result<()> {
    let o = out.host_mut().ok_or(Error::DeviceMismatch { op })?;
    for (o, a) in o.iter_mut().zip(acc) {
        *o = *a as f32;
    }
    Ok(())
}

/// Checks that each (name, tensor, length) is a 1-D tensor of that length.
pub(crate) fn check_vectors(op: &str, want: &[(&str, &Tensor, usize)]) -> Result<()> {
    for &(name, t, len) in want {
        if t.shape() != [len] {
            return Err(Error::shape(
                op,
                format!("{name} is {:?}, expected [{len}]", t.shape()),
            ));
        }
    }
    Ok(())
}

/// Checks a normalisation's eps: finite and not negative.
pub(crate) fn check_eps(op: &str, eps: f32) -> Result<()> {
    if eps >= 0.0 && eps.is_finite() {
        Ok(())
    } else {
        Err(Error::arg(
            format!("{op} eps"),
            format!("{eps} is not >= 0"),
        ))
    }
}

/// Each kernel's uniform block in Rust against the WGSL struct it mirrors: naga parses
/// the kernel's source (as the device compiles it), finds the `var<uniform>` its entry
/// point uses, and the struct's size and every member's name, offset and type must
/// match the Rust struct's.
#[cfg(test)]
mod uniform_layout {
    use super::*;
    use bytemuck::Zeroable;
    use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
    use std::collections::HashMap;
    // Not the crate's Result: the checks report mismatches as text.
    use std::result::Result;

    /// A Rust uniform struct: its name, size and (field, offset, type) in order.
    struct Layout {
        name: &'static str,
        size: usize,
        fields: Vec<(&'static str, usize, &'static str)>,
    }

    /// The layout of a struct from its type and field names (all of them, in order).
    macro_rules! layout {
        ($t:ty { $($f:ident),* $(,)? }) => {{
            let z = <$t as Zeroable>::zeroed();
            Layout {
                name: stringify!($t),
                size: std::mem::size_of::<$t>(),
                fields: vec![$((
                    stringify!($f),
                    std::mem::offset_of!($t, $f),
                    std::any::type_name_of_val(&z.$f),
                )),*],
            }
        }};
    }

    /// Every kernel family: its kernels and the struct they take.
    fn table() -> Vec<(Vec<Kernel>, Layout)> {
        vec![
            (
                vec![
                    activation::FORWARD,
                    activation::BACKWARD,
                    activation::BACKWARD_FROM_OUTPUT,
                    activation::SOFTMAX_ROWS,
                    activation::SOFTMAX_GROUPS,
                    activation::SOFTMAX_BACKWARD_ROWS,
                    activation::SOFTMAX_BACKWARD_GROUPS,
                ],
                layout!(activation::Params {
                    n,
                    cols,
                    code,
                    alpha
                }),
            ),
            (
                vec![
                    batch_norm::ROW_MOMENTS,
                    batch_norm::CHANNEL_STATS,
                    batch_norm::NORMALIZE,
                    batch_norm::ROW_GRADS,
                    batch_norm::CHANNEL_GRADS,
                    batch_norm::INPUT_GRAD,
                ],
                layout!(batch_norm::Params {
                    n,
                    c,
                    hw,
                    eps,
                    momentum
                }),
            ),
            (
                vec![batched_matmul::BATCHED],
                layout!(batched_matmul::Params {
                    m,
                    n,
                    k,
                    act,
                    alpha,
                    sa,
                    sb,
                    sc,
                    sbias,
                    lda,
                    ldb,
                    ldc
                }),
            ),
            (
                vec![
                    attention::FORWARD,
                    attention::FORWARD4,
                    attention::BACKWARD_Q,
                    attention::BACKWARD_KV,
                    attention::BACKWARD_Q4,
                    attention::BACKWARD_KV4,
                    attention::SCORES,
                    attention::PV,
                ],
                layout!(attention::Params { batch, scale }),
            ),
            (
                vec![bias::ADD, bias::ADD_INPLACE, bias::COL_SUM],
                layout!(bias::Params { rows, cols, chunk }),
            ),
            (
                vec![
                    conv::FORWARD_NAIVE,
                    conv::BACKWARD_INPUT_NAIVE,
                    conv::BACKWARD_WEIGHT_NAIVE,
                    conv::FORWARD,
                    conv::BACKWARD_INPUT,
                    conv::BACKWARD_WEIGHT,
                    conv::IM2COL,
                    conv::COL2IM,
                ],
                layout!(conv::Params {
                    n,
                    c,
                    h,
                    w,
                    oc,
                    oh,
                    ow,
                    kh,
                    kw,
                    sh,
                    sw,
                    ph,
                    pw,
                    dh,
                    dw,
                    chunk
                }),
            ),
            (
                vec![conv::SWAP],
                layout!(conv::SwapParams {
                    batch,
                    rows,
                    cols,
                    padded
                }),
            ),
            (
                vec![dense_grad::DENSE_GRAD],
                layout!(dense_grad::Params {
                    rows,
                    cols,
                    act,
                    alpha
                }),
            ),
            (
                vec![kv_attention::APPEND, kv_attention::ATTEND],
                layout!(kv_attention::Params { at, scale }),
            ),
            (
                vec![dense_head::DENSE_HEAD],
                layout!(dense_head::Params {
                    rows,
                    hid,
                    alpha,
                    scale,
                    nan,
                    slot
                }),
            ),
            (
                vec![dropout::DROPOUT],
                layout!(dropout::Params {
                    n,
                    seed,
                    rate,
                    scale
                }),
            ),
            (
                vec![elementwise::BINARY],
                layout!(elementwise::Params { n, alpha }),
            ),
            (
                vec![elementwise::AXPY, elementwise::PENALTY, elementwise::SCALE],
                layout!(elementwise::AxpyParams { n, alpha, beta }),
            ),
            (
                vec![
                    gather::GATHER,
                    gather::GATHER_PALETTE,
                    gather::GATHER4_Y,
                    gather::GATHER_PALETTE4_Y,
                    gather::GATHER4,
                    gather::GATHER_PALETTE4,
                ],
                layout!(gather::Params {
                    rows,
                    cols,
                    start,
                    lo,
                    hi,
                    ycols
                }),
            ),
            (
                vec![
                    layer_norm::FORWARD,
                    layer_norm::INPUT_GRAD,
                    layer_norm::GAMMA_GRAD,
                ],
                layout!(layer_norm::Params {
                    rows,
                    d,
                    eps,
                    chunk
                }),
            ),
            (
                vec![
                    embedding::LOOKUP,
                    embedding::BUCKET_COUNT,
                    embedding::BUCKET_SCAN,
                    embedding::BUCKET_FILL,
                    embedding::LOOKUP_GRAD,
                    embedding::POSITIONAL,
                    embedding::POSITIONAL_GRAD,
                ],
                layout!(embedding::Params {
                    n,
                    dim,
                    rows,
                    period,
                    start
                }),
            ),
            (
                vec![
                    loss::ELEM_GRAD,
                    loss::ELEM_VALUE,
                    loss::ROWS_GRAD,
                    loss::ROWS_VALUE,
                    loss::FINISH,
                ],
                layout!(loss::Params {
                    n,
                    cols,
                    scale,
                    nan,
                    slot,
                    stride
                }),
            ),
            (
                matmul::kernels(),
                layout!(matmul::Params {
                    m,
                    n,
                    k,
                    act,
                    alpha,
                    flags
                }),
            ),
            (
                vec![
                    metrics::CONFUSION_LOCAL,
                    metrics::CONFUSION_GLOBAL,
                    metrics::ABS_SQ,
                    metrics::ABS_SQ_FINISH,
                ],
                layout!(metrics::Params {
                    n,
                    classes,
                    threshold
                }),
            ),
            (
                vec![
                    optim::UPDATE,
                    optim::UPDATE4,
                    optim::SUMSQ,
                    optim::SUM_PARTIALS,
                    optim::CLIP,
                    optim::UPDATE_TRIALS,
                    optim::UPDATE_TRIALS4,
                ],
                layout!(optim::Params {
                    n,
                    first,
                    base,
                    lr,
                    wd,
                    a,
                    b,
                    eps,
                    bc1,
                    bc2_sqrt,
                    max_norm,
                    n1,
                    n2,
                    n3
                }),
            ),
            (
                vec![pool::MAX_FORWARD, pool::BACKWARD, pool::AVG_FORWARD],
                layout!(pool::Params {
                    planes,
                    h,
                    w,
                    oh,
                    ow,
                    kh,
                    kw,
                    sh,
                    sw,
                    ph,
                    pw,
                    include_pad
                }),
            ),
            (
                vec![pool::ROW_MEAN, pool::SPREAD],
                layout!(pool::RowParams { rows, cols, scale }),
            ),
            (
                vec![
                    reduce::SUM_BLOCKS,
                    reduce::ARGMAX_ROWS,
                    reduce::ARGMAX_GROUPS,
                ],
                layout!(reduce::Params { n, cols, scale }),
            ),
            (
                vec![concat::SCATTER, concat::GATHER],
                layout!(concat::Params {
                    rows,
                    part,
                    whole,
                    offset
                }),
            ),
            (
                vec![transpose::TRANSPOSE],
                layout!(transpose::Params { rows, cols }),
            ),
            (
                vec![
                    rnn_cell::LSTM_FORWARD,
                    rnn_cell::GRU_FORWARD,
                    rnn_cell::LSTM_BACKWARD,
                    rnn_cell::GRU_BACKWARD,
                    rnn_cell::STEP_MASK,
                ],
                layout!(rnn_cell::Params {
                    batch,
                    steps,
                    hidden,
                    t,
                    seq,
                    gh,
                    inputs,
                    masked,
                    mask
                }),
            ),
        ]
    }

    /// Parsed and validated kernel sources, by source text.
    #[derive(Default)]
    struct Modules(HashMap<&'static str, (naga::Module, ModuleInfo)>);

    impl Modules {
        fn get(&mut self, k: &Kernel) -> Result<&(naga::Module, ModuleInfo), String> {
            if !self.0.contains_key(k.source) {
                let module = naga::front::wgsl::parse_str(k.source)
                    .map_err(|e| format!("{}: {}", k.file, e.emit_to_string(k.source)))?;
                let info = Validator::new(ValidationFlags::all(), Capabilities::all())
                    .validate(&module)
                    .map_err(|e| format!("{}: {}", k.file, e.emit_to_string(k.source)))?;
                self.0.insert(k.source, (module, info));
            }
            self.0
                .get(k.source)
                .ok_or_else(|| format!("{}: not parsed", k.file))
        }
    }

    /// The WGSL name of a scalar member's type, as Rust's type_name spells it.
    fn wgsl_type(module: &naga::Module, ty: naga::Handle<naga::Type>) -> String {
        use naga::{Scalar, ScalarKind, TypeInner};
        match module.types[ty].inner {
            TypeInner::Scalar(Scalar {
                kind: ScalarKind::Uint,
                width: 4,
            }) => "u32".into(),
            TypeInner::Scalar(Scalar {
                kind: ScalarKind::Sint,
                width: 4,
            }) => "i32".into(),
            TypeInner::Scalar(Scalar {
                kind: ScalarKind::Float,
                width: 4,
            }) => "f32".into(),
            ref other => format!("{other:?}"),
        }
    }

    /// Checks the uniform block `k`'s entry point uses against `rust`.
    fn check(modules: &mut Modules, k: &Kernel, rust: &Layout) -> Result<(), String> {
        let at = format!("{}::{} vs {}", k.file, k.entry, rust.name);
        let (module, info) = modules.get(k)?;
        let index = module
            .entry_points
            .iter()
            .position(|e| e.name == k.entry)
            .ok_or_else(|| format!("{at}: no such entry point"))?;
        let uses = info.get_entry_point(index);
        let uniforms: Vec<_> = module
            .global_variables
            .iter()
            .filter(|(h, g)| g.space == naga::AddressSpace::Uniform && !uses[*h].is_empty())
            .map(|(_, g)| g)
            .collect();
        let [g] = uniforms[..] else {
            return Err(format!("{at}: uses {} uniforms, not 1", uniforms.len()));
        };
        let binding = g.binding.as_ref().map(|b| (b.group, b.binding));
        if binding != Some((0, 0)) {
            return Err(format!(
                "{at}: uniform at {binding:?}, not group 0 binding 0"
            ));
        }
        let ty = &module.types[g.ty];
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            return Err(format!("{at}: the uniform is not a struct"));
        };
        let wgsl: Vec<(String, usize, String)> = members
            .iter()
            .map(|m| {
                let name = m.name.clone().unwrap_or_default();
                (name, m.offset as usize, wgsl_type(module, m.ty))
            })
            .collect();
        let ours: Vec<(String, usize, String)> = rust
            .fields
            .iter()
            .map(|&(f, o, t)| (f.to_string(), o, t.to_string()))
            .collect();
        let size = ty.inner.size(module.to_ctx()) as usize;
        if size != *span as usize || size != rust.size || wgsl != ours {
            return Err(format!(
                "{at}: WGSL {} is {size} bytes {wgsl:?}, Rust is {} bytes {ours:?}",
                ty.name.as_deref().unwrap_or("?"),
                rust.size,
            ));
        }
        Ok(())
    }

    #[test]
    fn rust_params_match_wgsl() {
        let mut modules = Modules::default();
        let mut errors = Vec::new();
        let mut checked = 0;
        for (kernels, rust) in table() {
            for k in &kernels {
                match check(&mut modules, k, &rust) {
                    Ok(()) => checked += 1,
                    Err(e) => errors.push(e),
                }
            }
        }
        assert!(errors.is_empty(), "{}", errors.join("\n"));
        assert!(checked > 60, "only {checked} kernels checked");
    }

    /// Every entry point of every tested source is in the table, and every shader file
    /// is part of some tested source: a new kernel cannot skip the check.
    #[test]
    fn table_covers_every_kernel() {
        let table = table();
        let mut modules = Modules::default();
        let mut missing = Vec::new();
        for (kernels, _) in &table {
            for k in kernels {
                let (module, _) = modules.get(k).unwrap();
                for e in &module.entry_points {
                    let listed = table
                        .iter()
                        .flat_map(|(ks, _)| ks)
                        .any(|t| t.source == k.source && t.entry == e.name);
                    if !listed {
                        missing.push(format!("{}::{}", k.file, e.name));
                    }
                }
            }
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "wgsl") {
                let text = std::fs::read_to_string(&path).unwrap();
                let used = table
                    .iter()
                    .flat_map(|(ks, _)| ks)
                    .any(|k| k.source.contains(&text));
                if !used {
                    missing.push(path.display().to_string());
                }
            }
        }
        missing.sort();
        missing.dedup();
        assert!(missing.is_empty(), "not in the table: {missing:?}");
    }

    /// The check fails on a struct that differs from the WGSL one.
    #[test]
    fn mismatches_are_reported() {
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, Zeroable)]
        struct Longer {
            rows: u32,
            cols: u32,
            extra: u32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, Zeroable)]
        struct Swapped {
            cols: u32,
            rows: u32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, Zeroable)]
        struct Retyped {
            rows: u32,
            cols: f32,
        }
        let mut modules = Modules::default();
        let k = transpose::TRANSPOSE;
        assert!(check(&mut modules, &k, &layout!(transpose::Params { rows, cols })).is_ok());
        for wrong in [
            layout!(Longer { rows, cols, extra }),
            layout!(Swapped { cols, rows }),
            layout!(Retyped { rows, cols }),
            // Unlisted fields: the size still differs.
            layout!(Longer { rows, cols }),
        ] {
            let e = check(&mut modules, &k, &wrong).unwrap_err();
            assert!(e.contains("transpose.wgsl::transpose"), "{e}");
        }
    }
}
