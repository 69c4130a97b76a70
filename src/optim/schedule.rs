//! Learning-rate schedules, as PyTorch's schedulers define them (in closed form).

/// How the learning rate changes over training.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` every `step_size` epochs (StepLR).
    Step {
        /// Epochs between decays.
        step_size: usize,
        /// Decay factor.
        gamma: f32,
    },
    /// Multiply by `gamma` every epoch (ExponentialLR).
    Exponential {
        /// Decay factor per epoch.
        gamma: f32,
    },
    /// Cosine annealing from the base rate to `eta_min` over `t_max` epochs (CosineAnnealingLR).
    Cosine {
        /// Epochs of one half period.
        t_max: usize,
        /// Final rate.
        eta_min: f32,
    },
    /// Linear warmup over the first `steps` optimizer steps: 0-based step s takes
    /// (s + 1) / steps of the rate `then` gives; after them, `then`.
    Warmup {
        /// Steps of warmup.
        steps: usize,
        /// The schedule after warmup.
        then: Box<Schedule>,
    },
}

impl Schedule {
    /// The learning rate at 0-based `epoch` and 0-based global optimizer `step`.
    pub fn lr(&self, base: f32, epoch: usize, step: usize) -> f32 {
        match self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => {
                base * gamma.powi((epoch / (*step_size).max(1)) as i32)
            }
            Schedule::Exponential { gamma } => base * gamma.powi(epoch as i32),
            Schedule::Cosine { t_max, eta_min } => {
                let t = epoch.min(*t_max) as f32 / (*t_max).max(1) as f32;
                eta_min + (base - eta_min) * 0.5 * (1.0 + (std::f32::consts::PI * t).cos())
            }
            Schedule::Warmup { steps, then } => {
                let after = then.lr(base, epoch, step);
                if step < *steps {
                    after * (step + 1) as f32 / *steps as f32
                } else {
                    after
                }
            }
        }
    }
}
