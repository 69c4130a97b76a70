//! Activations forward and backward (relu, leaky relu, sigmoid, tanh, gelu) and row-wise softmax.

/// A pointwise activation, usable alone or fused into a matmul epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Activation {
    /// f(x) = x
    #[default]
    Identity,
    /// max(x, 0)
    Relu,
    /// x for x > 0, slope * x otherwise
    LeakyRelu(f32),
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// tanh(x)
    Tanh,
    /// x * Phi(x), the exact (erf) form as PyTorch's default
    Gelu,
}

impl Activation {
    /// The code the shaders switch on (see shaders/act.wgsl).
    pub(crate) fn code(self) -> u32 {
        match self {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::LeakyRelu(_) => 2,
            Activation::Sigmoid => 3,
            Activation::Tanh => 4,
            Activation::Gelu => 5,
        }
    }

    /// The activation's parameter (leaky slope), 0 for the others.
    pub(crate) fn alpha(self) -> f32 {
        match self {
            Activation::LeakyRelu(a) => a,
            _ => 0.0,
        }
    }

    /// CPU reference: f(x), in f64.
    pub fn forward(self, x: f64) -> f64 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::LeakyRelu(a) => {
                if x > 0.0 {
                    x
                } else {
                    a as f64 * x
                }
            }
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Tanh => x.tanh(),
            Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        }
    }

    /// CPU reference: f'(x) at the pre-activation x, in f64.
    pub fn derivative(self, x: f64) -> f64 {
        match self {
            Activation::Identity => 1.0,
            Activation::Relu => f64::from(u8::from(x > 0.0)),
            Activation::LeakyRelu(a) => {
                if x > 0.0 {
                    1.0
                } else {
                    a as f64
                }
            }
            Activation::Sigmoid => {
                let s = self.forward(x);
                s * (1.0 - s)
            }
            Activation::Tanh => 1.0 - x.tanh().powi(2),
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                cdf + x * pdf
            }
        }
    }
}

/// erf(x), accurate to about 1e-15 (series for small |x|, continued fraction beyond).
pub fn erf(x: f64) -> f64 {
    if x.abs() < 2.5 {
        // Maclaurin series: erf x = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1)).
        let mut term = x;
        let mut sum = x;
        let x2 = x * x;
        for n in 1..80 {
            term *= -x2 / n as f64;
            sum += term / (2 * n + 1) as f64;
            if term.abs() < 1e-17 {
                break;
            }
        }
        return sum * 2.0 / std::f64::consts::PI.sqrt();
    }
    // Continued fraction for erfc, evaluated bottom-up.
    let a = x.abs();
    let mut f = 0.0;
    for k in (1..60).rev() {
        f = (k as f64 / 2.0) / (a + f);
    }
    let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
    (1.0 - erfc).copysign(x)
}
