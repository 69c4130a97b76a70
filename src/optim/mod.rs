//! Optimizers: one parameterised update kernel (see `ops::optim`), a learning-rate
//! schedule, weight decay and gradient clipping, applied to a model's parameters.

pub mod schedule;

pub use crate::ops::optim::Rule;
pub use schedule::Schedule;

use crate::error::Result;
use crate::nn::model::Packed;
use crate::nn::Param;
use crate::ops::optim;
use crate::tensor::Tensor;

/// An optimizer configuration, as PyTorch's torch.optim classes define them.
#[derive(Clone, Debug)]
pub struct Optimizer {
    /// The update rule and its hyper-parameters.
    pub rule: Rule,
    /// Base learning rate.
    pub lr: f32,
    /// Weight decay (L2 in the gradient; decoupled for AdamW).
    pub weight_decay: f32,
    /// How the learning rate changes over training.
    pub schedule: Schedule,
    /// Clip gradients to this global L2 norm.
    pub clip_norm: Option<f32>,
}

impl Optimizer {
    fn with_rule(rule: Rule, lr: f32) -> Optimizer {
        Optimizer {
            rule,
            lr,
            weight_decay: 0.0,
            schedule: Schedule::Constant,
            clip_norm: None,
        }
    }

    /// Plain stochastic gradient descent.
    pub fn sgd(lr: f32) -> Optimizer {
        Self::sgd_momentum(lr, 0.0, false)
    }

    /// SGD with (optionally Nesterov) momentum.
    pub fn sgd_momentum(lr: f32, momentum: f32, nesterov: bool) -> Optimizer {
        let rule = Rule::Sgd {
            momentum,
            dampening: 0.0,
            nesterov,
        };
        Self::with_rule(rule, lr)
    }

    /// Adam with PyTorch's defaults (0.9, 0.999, 1e-8).
    pub fn adam(lr: f32) -> Optimizer {
        let rule = Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            amsgrad: false,
        };
        Self::with_rule(rule, lr)
    }

    /// AdamW with decoupled weight decay.
    pub fn adamw(lr: f32, weight_decay: f32) -> Optimizer {
        let rule = Rule::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        Self::with_rule(rule, lr).weight_decay(weight_decay)
    }

    /// RMSprop with PyTorch's defaults (alpha 0.99, eps 1e-8).
    pub fn rmsprop(lr: f32) -> Optimizer {
        let rule = Rule::RmsProp {
            alpha: 0.99,
            eps: 1e-8,
            momentum: 0.0,
            centered: false,
        };
        Self::with_rule(rule, lr)
    }

    /// Adagrad with PyTorch's defaults.
    pub fn adagrad(lr: f32) -> Optimizer {
        let rule = Rule::Adagrad {
            eps: 1e-10,
            lr_decay: 0.0,
            initial_accumulator: 0.0,
        };
        Self::with_rule(rule, lr)
    }

    /// The optimizer named as on the command line: sgd, momentum, nesterov, adam, adamw, rmsprop, adagrad.
    pub fn from_name(name: &str, lr: f32) -> Option<Optimizer> {
        Some(match name.to_ascii_lowercase().as_str() {
            "sgd" => Self::sgd(lr),
            "momentum" => Self::sgd_momentum(lr, 0.9, false),
            "nesterov" => Self::sgd_momentum(lr, 0.9, true),
            "adam" => Self::adam(lr),
            "adamw" => Self::adamw(lr, 0.01),
            "rmsprop" => Self::rmsprop(lr),
            "adagrad" => Self::adagrad(lr),
            _ => return None,
        })
    }

    /// With weight decay.
    pub fn weight_decay(self, weight_decay: f32) -> Optimizer {
        Optimizer {
            weight_decay,
            ..self
        }
    }

    /// With a learning-rate schedule.
    pub fn schedule(self, schedule: Schedule) -> Optimizer {
        Optimizer { schedule, ..self }
    }

    /// With clipping of the global gradient norm.
    pub fn clip_norm(self, max_norm: f32) -> Optimizer {
        Optimizer {
            clip_norm: Some(max_norm),
            ..self
        }
    }

    /// Updates every parameter from its gradient: `t` is the 1-based step. Where the
    /// parameters live in `packed` buffers, every update is one dispatch.
    pub(crate) fn step(
        &self,
        params: &mut [Param],
        packed: Option<&mut Packed>,
        lr: f32,
        t: u64,
        norm: &mut Tensor,
    ) -> Result<()> {
        if let Some(max_norm) = self.clip_norm {
            optim::global_norm_sq_into(&params.iter().map(|p| &p.grad).collect::<Vec<_>>(), norm)?;
            let mut grads: Vec<&mut Tensor> = params.iter_mut().map(|p| &mut p.grad).collect();
            optim::clip_by_global_norm(&mut grads, norm, max_norm)?;
        }
        for p in params.iter_mut().filter(|p| p.l1 != 0.0 || p.l2 != 0.0) {
            crate::ops::elementwise::add_penalty_grad(&p.value, &mut p.grad, p.l1, p.l2)?;
        }
        let slots = self.rule.state_slots();
        if let Some(pk) = packed.filter(|pk| pk.holds(params)) {
            pk.ensure_state(params, slots)?;
            let mut all = [optim::Slot {
                value: &mut pk.values,
                grad: &pk.grads,
                state: &mut pk.state,
            }];
            return optim::step_many(&self.rule, lr, self.weight_decay, t, &mut all);
        }
        for p in params.iter_mut().filter(|p| p.state.len() != slots) {
            p.state = (0..slots)
                .map(|_| Tensor::zeros(&p.value.device(), p.value.shape()))
                .collect::<Result<_>>()?;
        }
        // One dispatch for every four parameter tensors.
        let mut slots: Vec<optim::Slot> = params
            .iter_mut()
            .map(|p| optim::Slot {
                value: &mut p.value,
                grad: &p.grad,
                state: &mut p.state,
            })
            .collect();
        optim::step_many(&self.rule, lr, self.weight_decay, t, &mut slots)
    }
}
