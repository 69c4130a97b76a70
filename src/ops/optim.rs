//! Optimizer updates (SGD, Adam, AdamW, RMSprop, Adagrad) and global-norm gradient clipping.
//!
//! One parameterised kernel (shaders/optim_update.wgsl) implements every rule: override
//! constants pick the rule and which state buffers exist, the uniform carries the
//! numbers. The formulas are PyTorch's, as documented for torch.optim.SGD, Adam, AdamW,
//! RMSprop and Adagrad and for torch.nn.utils.clip_grad_norm_ (`maximize`, `foreach`
//! and friends are not modelled). On the first step (t = 1) the update initialises the
//! state itself, so state tensors may start uninitialised.

use super::{device_of, grid, host, launch, same_shape, WG};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const UPDATE: Kernel = Kernel {
    file: "optim_update.wgsl",
    source: concat!(
        include_str!("../../shaders/optim_params.wgsl"),
        include_str!("../../shaders/optim_update.wgsl")
    ),
    entry: "update",
    inputs: 1,
    outputs: 4,
    bounds_checks: true,
};
pub(super) const UPDATE4: Kernel = Kernel {
    entry: "update4",
    inputs: 4,
    outputs: 16,
    ..UPDATE
};
pub(super) const UPDATE_TRIALS: Kernel = Kernel {
    entry: "update_trials",
    inputs: 2,
    outputs: 4,
    ..UPDATE
};
pub(super) const UPDATE_TRIALS4: Kernel = Kernel {
    entry: "update_trials4",
    ..UPDATE_TRIALS
};
pub(super) const SUMSQ: Kernel = Kernel {
    file: "optim.wgsl",
    source: concat!(
        include_str!("../../shaders/optim_params.wgsl"),
        include_str!("../../shaders/optim.wgsl")
    ),
    entry: "sumsq",
    inputs: 1,
    outputs: 1,
    bounds_checks: true,
};
pub(super) const SUM_PARTIALS: Kernel = Kernel {
    entry: "sum_partials",
    ..SUMSQ
};
pub(super) const CLIP: Kernel = Kernel {
    entry: "clip",
    ..SUMSQ
};

/// The uniform block of shaders/optim_params.wgsl (every optimizer kernel), field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) n: u32,
    /// 1 on the first step (t == 1): state is initialised here, whatever the buffers hold.
    pub(super) first: u32,
    /// sumsq: where this gradient's partial sums start in the partials.
    pub(super) base: u32,
    /// The learning rate (Adagrad: already decayed, clr).
    pub(super) lr: f32,
    pub(super) wd: f32,
    /// SGD: momentum mu; Adam/AdamW: beta1; RMSprop: alpha.
    pub(super) a: f32,
    /// SGD: dampening tau; Adam/AdamW: beta2; RMSprop: momentum mu; Adagrad: initial accumulator.
    pub(super) b: f32,
    pub(super) eps: f32,
    /// Adam/AdamW: 1 - beta1^t and sqrt(1 - beta2^t).
    pub(super) bc1: f32,
    pub(super) bc2_sqrt: f32,
    /// clip: the global norm's bound.
    pub(super) max_norm: f32,
    /// update4: the value counts of tensors 1 to 3 (tensor 0's is n).
    pub(super) n1: u32,
    pub(super) n2: u32,
    pub(super) n3: u32,
}

/// Most workgroups (hence partial sums) one gradient contributes to the global norm.
const MAX_PARTIALS: usize = 256;

/// An optimizer's update rule with its hyperparameters (names and defaults as in torch.optim).
///
/// The learning rate and weight decay are passed to [`step`] so schedules can change them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// torch.optim.SGD. State: the momentum buffer when `momentum != 0`.
    Sgd {
        /// mu (PyTorch default 0).
        momentum: f32,
        /// tau (PyTorch default 0).
        dampening: f32,
        /// Nesterov momentum; needs momentum > 0 and dampening = 0.
        nesterov: bool,
    },
    /// torch.optim.Adam (L2 weight decay). State: exp_avg, exp_avg_sq, then max_exp_avg_sq with amsgrad.
    Adam {
        /// PyTorch default 0.9.
        beta1: f32,
        /// PyTorch default 0.999.
        beta2: f32,
        /// PyTorch default 1e-8.
        eps: f32,
        /// Use the running maximum of the second moment.
        amsgrad: bool,
    },
    /// torch.optim.AdamW (decoupled weight decay). State: exp_avg, exp_avg_sq.
    AdamW {
        /// PyTorch default 0.9.
        beta1: f32,
        /// PyTorch default 0.999.
        beta2: f32,
        /// PyTorch default 1e-8.
        eps: f32,
    },
    /// torch.optim.RMSprop. State: square_avg, then momentum_buffer if momentum > 0, then grad_avg if centered.
    RmsProp {
        /// Smoothing constant (PyTorch default 0.99).
        alpha: f32,
        /// PyTorch default 1e-8.
        eps: f32,
        /// mu (PyTorch default 0).
        momentum: f32,
        /// Normalise by the estimated variance instead of the second moment.
        centered: bool,
    },
    /// torch.optim.Adagrad. State: the sum of squared gradients.
    Adagrad {
        /// PyTorch default 1e-10.
        eps: f32,
        /// eta in clr = lr / (1 + (t - 1) * eta) (PyTorch default 0).
        lr_decay: f32,
        /// The sum's starting value (PyTorch default 0).
        initial_accumulator: f32,
    },
}

/// Per-step numbers of one update, shared by the CPU loop and the GPU uniform.
struct Scalars {
    first: bool,
    /// Adagrad: the decayed clr.
    lr: f64,
    wd: f64,
    bc1: f64,
    bc2_sqrt: f64,
}

impl Rule {
    /// How many state tensors of the parameter's shape [`step`] needs, in the order the variant's doc lists.
    pub fn state_slots(&self) -> usize {
        self.slots().iter().filter(|&&used| used).count()
    }

    /// Which of the kernel's three state bindings the rule uses; the caller's state fills them in order.
    fn slots(&self) -> [bool; 3] {
        match *self {
            Rule::Sgd { momentum, .. } => [momentum != 0.0, false, false],
            Rule::Adam { amsgrad, .. } => [true, true, amsgrad],
            Rule::AdamW { .. } => [true, true, false],
            Rule::RmsProp {
                momentum, centered, ..
            } => [true, momentum > 0.0, centered],
            Rule::Adagrad { .. } => [true, false, false],
        }
    }

    /// Fresh (zeroed) state tensors for `param`, on its device.
    pub fn new_state(&self, param: &Tensor) -> Result<Vec<Tensor>> {
        (0..self.state_slots())
            .map(|_| Tensor::zeros(&param.device(), param.shape()))
            .collect()
    }

    /// The override constants that give the kernel this rule's shape (no numbers: see [`step`]).
    fn constants(&self) -> [(&'static str, f64); 8] {
        let flag = |b: bool| f64::from(u8::from(b));
        let (rule, momentum, nesterov, amsgrad, centered) = match *self {
            Rule::Sgd {
                momentum, nesterov, ..
            } => (0, momentum != 0.0, nesterov, false, false),
            Rule::Adam { amsgrad, .. } => (1, false, false, amsgrad, false),
            Rule::AdamW { .. } => (2, false, false, false, false),
            Rule::RmsProp {
                momentum, centered, ..
            } => (3, momentum > 0.0, false, false, centered),
            Rule::Adagrad { .. } => (4, false, false, false, false),
        };
        [
            ("RULE", f64::from(rule)),
            ("MOMENTUM", flag(momentum)),
            ("NESTEROV", flag(nesterov)),
            ("AMSGRAD", flag(amsgrad)),
            ("CENTERED", flag(centered)),
            ("USE0", flag(self.slots()[0])),
            ("USE1", flag(self.slots()[1])),
            ("USE2", flag(self.slots()[2])),
        ]
    }

    /// The hyperparameter words of the uniform: (a, b, eps), as shaders/optim.wgsl names them.
    fn hyper(&self) -> (f32, f32, f32) {
        match *self {
            Rule::Sgd {
                momentum,
                dampening,
                ..
            } => (momentum, dampening, 0.0),
            Rule::Adam {
                beta1, beta2, eps, ..
            }
            | Rule::AdamW { beta1, beta2, eps } => (beta1, beta2, eps),
            Rule::RmsProp {
                alpha,
                eps,
                momentum,
                ..
            } => (alpha, momentum, eps),
            Rule::Adagrad {
                eps,
                initial_accumulator,
                ..
            } => (0.0, initial_accumulator, eps),
        }
    }

    /// Rejects hyperparameters PyTorch rejects (and NaN), naming the first bad one.
    fn validate(&self, lr: f32, weight_decay: f32, t: u64) -> Result<()> {
        let nonneg = |name: &str, v: f32| {
            if v >= 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(Error::arg(name, format!("{v} must be finite and >= 0")))
            }
        };
        let beta = |name: &str, v: f32| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::arg(name, format!("{v} must be in [0, 1)")))
            }
        };
        if t == 0 {
            return Err(Error::arg("t", "steps count from 1"));
        }
        nonneg("lr", lr)?;
        nonneg("weight_decay", weight_decay)?;
        match *self {
            Rule::Sgd {
                momentum,
                dampening,
                nesterov,
            } => {
                nonneg("momentum", momentum)?;
                if !dampening.is_finite() {
                    return Err(Error::arg(
                        "dampening",
                        format!("{dampening} must be finite"),
                    ));
                }
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return Err(Error::arg(
                        "nesterov",
                        "Nesterov momentum needs momentum > 0 and dampening = 0",
                    ));
                }
            }
            Rule::Adam {
                beta1, beta2, eps, ..
            }
            | Rule::AdamW { beta1, beta2, eps } => {
                beta("beta1", beta1)?;
                beta("beta2", beta2)?;
                nonneg("eps", eps)?;
            }
            Rule::RmsProp {
                alpha,
                eps,
                momentum,
                ..
            } => {
                nonneg("alpha", alpha)?;
                nonneg("eps", eps)?;
                nonneg("momentum", momentum)?;
            }
            Rule::Adagrad {
                eps,
                lr_decay,
                initial_accumulator,
            } => {
                nonneg("eps", eps)?;
                nonneg("lr_decay", lr_decay)?;
                nonneg("initial_accumulator", initial_accumulator)?;
            }
        }
        Ok(())
    }

    /// The per-step numbers for step `t`, in f64 so the GPU gets them correctly rounded.
    fn scalars(&self, lr: f32, weight_decay: f32, t: u64) -> Scalars {
        let (lr, wd, tf) = (lr as f64, weight_decay as f64, t as f64);
        let (mut bc1, mut bc2_sqrt, mut clr) = (1.0, 1.0, lr);
        match *self {
            Rule::Adam { beta1, beta2, .. } | Rule::AdamW { beta1, beta2, .. } => {
                bc1 = 1.0 - (beta1 as f64).powf(tf);
                bc2_sqrt = (1.0 - (beta2 as f64).powf(tf)).sqrt();
            }
            Rule::Adagrad { lr_decay, .. } => clr = lr / (1.0 + (tf - 1.0) * lr_decay as f64),
            _ => {}
        }
        Scalars {
            first: t == 1,
            lr: clr,
            wd,
            bc1,
            bc2_sqrt,
        }
    }

    /// CPU reference of one element: the new parameter and state from the old, in f64.
    ///
    /// `old` is indexed by kernel slot (see `slots`); unused slots are ignored.
    fn update(&self, s: &Scalars, theta: f64, g: f64, old: [f64; 3]) -> (f64, [f64; 3]) {
        // State read on the first step is its initial value, whatever the tensor holds.
        let prev = |k: usize, init: f64| if s.first { init } else { old[k] };
        let mut st = old;
        let theta = match *self {
            Rule::Sgd {
                momentum,
                dampening,
                nesterov,
            } => {
                // g <- g + wd*theta
                let mut g = g + s.wd * theta;
                if momentum != 0.0 {
                    let mu = momentum as f64;
                    // b_1 = g;  b_t = mu*b_{t-1} + (1 - tau)*g
                    let b = if s.first {
                        g
                    } else {
                        mu * old[0] + (1.0 - dampening as f64) * g
                    };
                    st[0] = b;
                    // nesterov: g <- g + mu*b_t, else g <- b_t
                    g = if nesterov { g + mu * b } else { b };
                }
                // theta <- theta - lr*g
                theta - s.lr * g
            }
            Rule::Adam {
                beta1,
                beta2,
                eps,
                amsgrad,
            } => {
                // g <- g + wd*theta (L2)
                let g = g + s.wd * theta;
                adam(s, theta, g, (beta1, beta2, eps, amsgrad), prev, &mut st)
            }
            Rule::AdamW { beta1, beta2, eps } => {
                // theta <- theta - lr*wd*theta (decoupled), before the Adam step
                let theta = theta * (1.0 - s.lr * s.wd);
                adam(s, theta, g, (beta1, beta2, eps, false), prev, &mut st)
            }
            Rule::RmsProp {
                alpha,
                eps,
                momentum,
                centered,
            } => {
                let (alpha, eps, mu) = (alpha as f64, eps as f64, momentum as f64);
                // g <- g + wd*theta
                let g = g + s.wd * theta;
                // v_t = alpha*v + (1 - alpha)*g^2
                let v = alpha * prev(0, 0.0) + (1.0 - alpha) * g * g;
                st[0] = v;
                let mut vt = v;
                if centered {
                    // g_ave = alpha*g_ave + (1 - alpha)*g;  v~ = v - g_ave^2
                    let ga = alpha * prev(2, 0.0) + (1.0 - alpha) * g;
                    st[2] = ga;
                    vt = v - ga * ga;
                }
                let scaled = g / (vt.sqrt() + eps);
                if momentum > 0.0 {
                    // b = mu*b + g/(sqrt(v~) + eps);  theta <- theta - lr*b
                    let b = mu * prev(1, 0.0) + scaled;
                    st[1] = b;
                    theta - s.lr * b
                } else {
                    // theta <- theta - lr*g/(sqrt(v~) + eps)
                    theta - s.lr * scaled
                }
            }
            Rule::Adagrad {
                eps,
                initial_accumulator,
                ..
            } => {
                // g <- g + wd*theta;  sum <- sum + g^2 (sum_0 = initial accumulator)
                let g = g + s.wd * theta;
                let sum = prev(0, initial_accumulator as f64) + g * g;
                st[0] = sum;
                // theta <- theta - clr*g/(sqrt(sum) + eps), clr = lr/(1 + (t-1)*lr_decay)
                theta - s.lr * g / (sum.sqrt() + eps as f64)
            }
        };
        (theta, st)
    }
}

/// The Adam/AdamW moment update and step, after weight decay was applied.
fn adam(
    s: &Scalars,
    theta: f64,
    g: f64,
    (beta1, beta2, eps, amsgrad): (f32, f32, f32, bool),
    prev: impl Fn(usize, f64) -> f64,
    st: &mut [f64; 3],
) -> f64 {
    let (b1, b2) = (beta1 as f64, beta2 as f64);
    // m_t = b1*m + (1 - b1)*g;  v_t = b2*v + (1 - b2)*g^2
    let m = b1 * prev(0, 0.0) + (1.0 - b1) * g;
    let mut v = b2 * prev(1, 0.0) + (1.0 - b2) * g * g;
    st[0] = m;
    st[1] = v;
    if amsgrad {
        // v_max = max(v_max, v_t), and the step uses v_max
        v = prev(2, 0.0).max(v);
        st[2] = v;
    }
    // theta <- theta - lr * m_hat/(sqrt(v_hat) + eps), m_hat = m/(1 - b1^t),
    // v_hat = v/(1 - b2^t); written as PyTorch computes it
    let denom = v.sqrt() / s.bc2_sqrt + eps as f64;
    theta - (s.lr / s.bc1) * m / denom
}

/// One optimizer step for one parameter tensor: updates `param` and `state` in place from `grad`.
///
/// `t` is the 1-based step number; on `t == 1` the state is initialised by the update
/// itself (PyTorch's lazily created buffers), so its previous contents do not matter.
/// `state` holds [`Rule::state_slots`] tensors of `param`'s shape, in the order the
/// rule's doc lists (e.g. from [`Rule::new_state`]).
///
/// Hot path: on the GPU this records exactly one dispatch. Everything that changes
/// from step to step (lr, weight decay, bias corrections, Adagrad's decayed lr, the
/// first-step flag) travels in the uniform, and only the rule's discrete shape is an
/// override constant, so each rule compiles one pipeline for the whole run. A later
/// step can batch all parameters of a model into fewer dispatches with the same kernel
/// by giving it offsets into concatenated buffers.
pub fn step(
    rule: &Rule,
    lr: f32,
    weight_decay: f32,
    t: u64,
    param: &mut Tensor,
    grad: &Tensor,
    state: &mut [Tensor],
) -> Result<()> {
    let name = "optim::step";
    rule.validate(lr, weight_decay, t)?;
    check_tensors(name, rule, param, grad, state)?;
    let mut all: Vec<&Tensor> = vec![param, grad];
    all.extend(state.iter());
    let device = device_of(name, &all)?;
    let s = rule.scalars(lr, weight_decay, t);
    match &device {
        Device::Cpu => {
            let g = host(grad);
            let mut slots: [Option<&mut [f32]>; 3] = [None, None, None];
            let mut given = state.iter_mut();
            for (slot, used) in slots.iter_mut().zip(rule.slots()) {
                if used {
                    *slot = given.next().and_then(Tensor::host_mut);
                }
            }
            let p = param.host_mut().ok_or(Error::DeviceMismatch { op: name })?;
            for (i, (p, g)) in p.iter_mut().zip(g).enumerate() {
                let old = [0, 1, 2].map(|k| slots[k].as_ref().map_or(0.0, |v| v[i] as f64));
                let (theta, new) = rule.update(&s, *p as f64, *g as f64, old);
                *p = theta as f32;
                for (slot, v) in slots.iter_mut().zip(new) {
                    if let Some(slot) = slot {
                        slot[i] = v as f32;
                    }
                }
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let n = param.len();
            let params = uniform(rule, &s, [n, 0, 0, 0]);
            // Unused state bindings get distinct one-element buffers: never touched, but
            // a writable binding must not alias the parameter or another binding.
            let mut dummies = Vec::new();
            for used in rule.slots() {
                if !used {
                    dummies.push(Tensor::uninit(&device, &[1])?);
                }
            }
            let (mut given, mut spare) = (state.iter(), dummies.iter());
            let mut bound: Vec<&Tensor> = vec![grad, param];
            for used in rule.slots() {
                let t = if used { given.next() } else { spare.next() };
                bound.push(t.ok_or(Error::arg("state", "fewer tensors than the rule uses"))?);
            }
            launch(
                ctx,
                &UPDATE,
                &rule.constants(),
                &params,
                &bound,
                grid(n.div_ceil(4), WG),
            )
        }
    }
}

/// A parameter's gradient and state must have its shape, and the state the rule's count.
fn check_tensors(
    name: &str,
    rule: &Rule,
    param: &Tensor,
    grad: &Tensor,
    state: &[Tensor],
) -> Result<()> {
    same_shape(name, param, grad)?;
    if state.len() != rule.state_slots() {
        return Err(Error::arg(
            "state",
            format!(
                "{rule:?} keeps {} state tensors, got {}",
                rule.state_slots(),
                state.len()
            ),
        ));
    }
    state.iter().try_for_each(|s| same_shape(name, param, s))
}

/// The update kernels' uniform for tensors of `n` values (update4: up to four of them).
fn uniform(rule: &Rule, s: &Scalars, n: [usize; 4]) -> Params {
    let (a, b, eps) = rule.hyper();
    Params {
        n: n[0] as u32,
        first: u32::from(s.first),
        base: 0,
        lr: s.lr as f32,
        wd: s.wd as f32,
        a,
        b,
        eps,
        bc1: s.bc1 as f32,
        bc2_sqrt: s.bc2_sqrt as f32,
        max_norm: 0.0,
        n1: n[1] as u32,
        n2: n[2] as u32,
        n3: n[3] as u32,
    }
}

/// One parameter tensor for [`step_many`]: its value, gradient and optimizer state.
pub struct Slot<'a> {
    /// The parameter, updated in place.
    pub value: &'a mut Tensor,
    /// Its gradient.
    pub grad: &'a Tensor,
    /// Its [`Rule::state_slots`] state tensors.
    pub state: &'a mut [Tensor],
}

/// Tensors of at least this many values get an `update` dispatch of their own. In
/// `update4` the tensor an invocation updates differs between lanes, and lavapipe runs
/// all four of its cases for every lane (masked): measured there, a 100,352-value Adam
/// update took 550 us alone and 870-930 us inside `update4`, against about 50 us for a
/// dispatch of its own.
const OWN_DISPATCH: usize = 16384;

/// Whether [`step_many`] updates up to four small tensors per dispatch on `device`: a GPU
/// whose shaders may bind the 20 storage buffers that takes (GL adapters often bind fewer).
pub fn groups_of_four(device: &Device) -> bool {
    device.gpu_context().is_some_and(|c| {
        c.limits().max_storage_buffers_per_shader_stage >= UPDATE4.inputs + UPDATE4.outputs
    })
}

/// [`step`] for many parameter tensors at once: on the GPU one dispatch updates up to
/// four small ones (where the adapter binds 20 storage buffers per shader; else one
/// each), and each large one (`OWN_DISPATCH` values or more) has its own. Reorders `slots`.
pub fn step_many(
    rule: &Rule,
    lr: f32,
    weight_decay: f32,
    t: u64,
    slots: &mut [Slot],
) -> Result<()> {
    let four = slots.iter().all(|s| groups_of_four(&s.value.device()));
    // Small tensors first, then the large ones, each of which makes a chunk of its own.
    slots.sort_by_key(|s| s.value.len() >= OWN_DISPATCH);
    let small = slots.partition_point(|s| s.value.len() < OWN_DISPATCH);
    let (small, large) = slots.split_at_mut(small);
    let chunks = small
        .chunks_mut(if four { 4 } else { 1 })
        .chain(large.chunks_mut(1));
    for chunk in chunks {
        if let [one] = chunk {
            step(rule, lr, weight_decay, t, one.value, one.grad, one.state)?;
        } else {
            step4(rule, lr, weight_decay, t, chunk)?;
        }
    }
    Ok(())
}

/// One `update4` dispatch for two to four GPU tensors.
fn step4(rule: &Rule, lr: f32, weight_decay: f32, t: u64, chunk: &mut [Slot]) -> Result<()> {
    let name = "optim::step_many";
    rule.validate(lr, weight_decay, t)?;
    for s in chunk.iter() {
        check_tensors(name, rule, s.value, s.grad, s.state)?;
    }
    let mut all: Vec<&Tensor> = Vec::new();
    for s in chunk.iter() {
        all.extend([&*s.value, s.grad]);
        all.extend(s.state.iter());
    }
    let device = device_of(name, &all)?;
    let Device::Gpu(ctx) = &device else {
        return Err(Error::DeviceMismatch { op: name });
    };
    let mut n = [0; 4];
    for (k, s) in chunk.iter().enumerate() {
        n[k] = s.value.len();
    }
    let params = uniform(rule, &rule.scalars(lr, weight_decay, t), n);
    // Missing tensors and unused state slots get distinct one-element buffers: never
    // touched, but a writable binding must not alias another.
    let used = rule.slots();
    // Missing gradients (read-only) may share one spare, the last.
    let writable = 4 * 4 - chunk.len() * (1 + rule.state_slots());
    let spares: Vec<Tensor> = (0..=writable)
        .map(|_| Tensor::uninit(&device, &[1]))
        .collect::<Result<_>>()?;
    let (read_spare, spares) = spares.split_last().ok_or(Error::arg(name, "spares"))?;
    let mut spare = spares.iter();
    let mut next_spare = || spare.next().ok_or(Error::arg(name, "spare buffers"));
    let mut bound: Vec<&Tensor> = Vec::with_capacity(20);
    for k in 0..4 {
        bound.push(chunk.get(k).map_or(read_spare, |s| s.grad));
    }
    for k in 0..4 {
        bound.push(match chunk.get(k) {
            Some(s) => &*s.value,
            None => next_spare()?,
        });
    }
    for (slot, &is_used) in used.iter().enumerate() {
        // The rule's state tensors fill its used slots in order.
        let index = used[..slot].iter().filter(|&&u| u).count();
        for k in 0..4 {
            bound.push(match chunk.get(k) {
                Some(s) if is_used => &s.state[index],
                _ => next_spare()?,
            });
        }
    }
    let vec4s: usize = n.iter().map(|v| v.div_ceil(4)).sum();
    launch(
        ctx,
        &UPDATE4,
        &rule.constants(),
        &params,
        &bound,
        grid(vec4s, WG),
    )
}

/// The gradient scale of global-norm clipping: min(1, max_norm / (sqrt(norm_sq) + 1e-6)), as torch.nn.utils.clip_grad_norm_.
pub fn grad_scale(norm_sq: f64, max_norm: f32) -> f64 {
    (max_norm as f64 / (norm_sq.sqrt() + 1e-6)).min(1.0)
}

/// `out[0]` = the sum of squares of every element of every gradient (the squared global L2 norm).
///
/// On the GPU the result stays there (no readback), ready for [`clip_by_global_norm`];
/// it costs one dispatch per gradient plus one, and sums in a fixed order.
pub fn global_norm_sq_into(grads: &[&Tensor], out: &mut Tensor) -> Result<()> {
    let name = "optim::global_norm_sq_into";
    if out.len() != 1 {
        return Err(Error::shape(
            name,
            format!("out must hold one value, has shape {:?}", out.shape()),
        ));
    }
    let mut all: Vec<&Tensor> = grads.to_vec();
    all.push(out);
    let device = device_of(name, &all)?;
    match &device {
        Device::Cpu => {
            let sum: f64 = grads
                .iter()
                .flat_map(|g| host(g))
                .map(|&v| v as f64 * v as f64)
                .sum();
            out.host_mut().ok_or(Error::DeviceMismatch { op: name })?[0] = sum as f32;
            Ok(())
        }
        Device::Gpu(ctx) => {
            let groups: Vec<usize> = grads
                .iter()
                .map(|g| g.len().div_ceil(WG as usize).min(MAX_PARTIALS))
                .collect();
            let total: usize = groups.iter().sum();
            let partials = Tensor::uninit(&device, &[total.max(1)])?;
            let mut base = 0;
            for (g, &count) in grads.iter().zip(&groups) {
                if count == 0 {
                    continue;
                }
                let params = Params {
                    n: g.len() as u32,
                    base: base as u32,
                    ..Params::zeroed()
                };
                launch(
                    ctx,
                    &SUMSQ,
                    &[],
                    &params,
                    &[g, &partials],
                    [count as u32, 1, 1],
                )?;
                base += count;
            }
            launch(
                ctx,
                &SUM_PARTIALS,
                &[],
                &Params {
                    n: total as u32,
                    ..Params::zeroed()
                },
                &[&partials, out],
                [1, 1, 1],
            )
        }
    }
}

/// Scales every gradient by [`grad_scale`]`(norm_sq, max_norm)` in place, reading `norm_sq` (one value) on the device.
pub fn clip_by_global_norm(
    grads: &mut [&mut Tensor],
    norm_sq: &Tensor,
    max_norm: f32,
) -> Result<()> {
    let name = "optim::clip_by_global_norm";
    if norm_sq.len() != 1 {
        return Err(Error::shape(
            name,
            format!(
                "norm_sq must hold one value, has shape {:?}",
                norm_sq.shape()
            ),
        ));
    }
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(Error::arg("max_norm", format!("{max_norm} must be >= 0")));
    }
    let mut all: Vec<&Tensor> = grads.iter().map(|g| &**g).collect();
    all.push(norm_sq);
    match device_of(name, &all)? {
        Device::Cpu => {
            let scale = grad_scale(norm_sq.host().unwrap_or(&[0.0])[0] as f64, max_norm);
            for g in grads.iter_mut() {
                for v in g.host_mut().unwrap_or(&mut []) {
                    *v = (*v as f64 * scale) as f32;
                }
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            for g in grads.iter_mut() {
                let n = g.len();
                let params = Params {
                    n: n as u32,
                    max_norm,
                    ..Params::zeroed()
                };
                launch(&ctx, &CLIP, &[], &params, &[norm_sq, &**g], grid(n, WG))?;
            }
            Ok(())
        }
    }
}

/// Values per row of a stacked-trials hyperparameter table (see [`Rule::trial_row`]).
pub const TRIAL_ROW: usize = 8;

impl Rule {
    /// One trial's row of the table [`step_trials`] reads, for step `t` (1-based): the
    /// learning rate, weight decay, the rule's numbers and bias corrections, and 1 for
    /// "update this trial". A trial another dispatch updates gets a row of zeros.
    pub fn trial_row(&self, lr: f32, weight_decay: f32, t: u64) -> Result<[f32; TRIAL_ROW]> {
        self.validate(lr, weight_decay, t)?;
        let s = self.scalars(lr, weight_decay, t);
        let (a, b, eps) = self.hyper();
        Ok([
            s.lr as f32,
            s.wd as f32,
            a,
            b,
            eps,
            s.bc1 as f32,
            s.bc2_sqrt as f32,
            1.0,
        ])
    }

    /// Whether one update dispatch serves both rules: the same rule with the same state
    /// buffers and branches (their numbers may differ).
    pub fn same_kernel(&self, other: &Rule) -> bool {
        self.constants() == other.constants()
    }

    /// The rule with a table row's numbers in place of its own (the CPU reference of
    /// [`step_trials`], which reads them per trial as the kernel does).
    fn with_row(&self, row: &[f32]) -> Rule {
        let (a, b, eps) = (row[2], row[3], row[4]);
        match *self {
            Rule::Sgd { nesterov, .. } => Rule::Sgd {
                momentum: a,
                dampening: b,
                nesterov,
            },
            Rule::Adam { amsgrad, .. } => Rule::Adam {
                beta1: a,
                beta2: b,
                eps,
                amsgrad,
            },
            Rule::AdamW { .. } => Rule::AdamW {
                beta1: a,
                beta2: b,
                eps,
            },
            Rule::RmsProp { centered, .. } => Rule::RmsProp {
                alpha: a,
                momentum: b,
                eps,
                centered,
            },
            Rule::Adagrad { lr_decay, .. } => Rule::Adagrad {
                eps,
                lr_decay,
                initial_accumulator: b,
            },
        }
    }
}

/// One parameter tensor of every stacked trial (trial `k`'s values at `k * n`), with
/// its gradient and state, for [`step_trials`].
pub struct TrialSlot<'a> {
    /// Every trial's values, updated in place.
    pub value: &'a mut Tensor,
    /// Their gradients, laid out alike.
    pub grad: &'a Tensor,
    /// [`Rule::state_slots`] state tensors, laid out alike.
    pub state: &'a mut [Tensor],
}

/// The optimizer step of `trials` stacked trials on one parameter tensor, each trial `k`
/// with the numbers in row `row + k` of `table` (rows of [`TRIAL_ROW`] values from
/// [`Rule::trial_row`]); `rule` gives only the kernel's shape, which every updated trial
/// shares ([`Rule::same_kernel`]). `t` is the 1-based step. One dispatch on the GPU.
pub fn step_trials(
    rule: &Rule,
    t: u64,
    (table, row): (&Tensor, usize),
    trials: usize,
    slot: TrialSlot,
) -> Result<()> {
    let name = "optim::step_trials";
    if t == 0 {
        return Err(Error::arg("t", "steps count from 1"));
    }
    let len = slot.value.len();
    if trials == 0 || !len.is_multiple_of(trials) || (row + trials) * TRIAL_ROW > table.len() {
        return Err(Error::shape(
            name,
            format!(
                "{trials} trials of {len} values, rows {row}.. of a {}-value table",
                table.len()
            ),
        ));
    }
    check_tensors(name, rule, slot.value, slot.grad, slot.state)?;
    let n = len / trials;
    let mut all: Vec<&Tensor> = vec![&*slot.value, slot.grad, table];
    all.extend(slot.state.iter());
    let device = device_of(name, &all)?;
    let ctx = match &device {
        Device::Cpu => return trials_cpu(rule, t, &host(table)[row * TRIAL_ROW..], n, slot),
        Device::Gpu(ctx) => ctx,
    };
    let s = rule.scalars(0.0, 0.0, t);
    let mut params = uniform(rule, &s, [n, 0, 0, 0]);
    params.base = row as u32;
    // Unused state bindings get distinct one-element buffers, as in `step`.
    let mut dummies = Vec::new();
    for used in rule.slots() {
        if !used {
            dummies.push(Tensor::uninit(&device, &[1])?);
        }
    }
    let (mut given, mut spare) = (slot.state.iter(), dummies.iter());
    let mut bound: Vec<&Tensor> = vec![table, slot.grad, slot.value];
    for used in rule.slots() {
        let t = if used { given.next() } else { spare.next() };
        bound.push(t.ok_or(Error::arg("state", "fewer tensors than the rule uses"))?);
    }
    let kernel = if n.is_multiple_of(4) {
        &UPDATE_TRIALS4
    } else {
        &UPDATE_TRIALS
    };
    let mut groups = grid(n.div_ceil(4), WG);
    groups[2] = trials as u32;
    launch(ctx, kernel, &rule.constants(), &params, &bound, groups)
}

/// The CPU reference of [`step_trials`]: each trial's row made into its rule and scalars.
fn trials_cpu(rule: &Rule, t: u64, table: &[f32], n: usize, slot: TrialSlot) -> Result<()> {
    let op = "optim::step_trials";
    let g = host(slot.grad).to_vec();
    let mut states: Vec<Vec<f32>> = slot.state.iter().map(|s| host(s).to_vec()).collect();
    let values = slot.value.host_mut().ok_or(Error::DeviceMismatch { op })?;
    let trials = values.len() / n.max(1);
    for k in 0..trials {
        let row = &table[k * TRIAL_ROW..(k + 1) * TRIAL_ROW];
        if row[7] == 0.0 {
            continue;
        }
        let r = rule.with_row(row);
        let s = Scalars {
            first: t == 1,
            lr: f64::from(row[0]),
            wd: f64::from(row[1]),
            bc1: f64::from(row[5]),
            bc2_sqrt: f64::from(row[6]),
        };
        for i in k * n..(k + 1) * n {
            let mut old = [0.0; 3];
            let mut used = rule.slots().into_iter().enumerate().filter(|(_, u)| *u);
            for st in states.iter() {
                if let Some((j, _)) = used.next() {
                    old[j] = f64::from(st[i]);
                }
            }
            let (theta, new) = r.update(&s, f64::from(values[i]), f64::from(g[i]), old);
            values[i] = theta as f32;
            let used = rule.slots().into_iter().enumerate().filter(|(_, u)| *u);
            for (st, (j, _)) in states.iter_mut().zip(used) {
                st[i] = new[j] as f32;
            }
        }
    }
    for (tensor, st) in slot.state.iter_mut().zip(states) {
        tensor.write(&st)?;
    }
    Ok(())
}
