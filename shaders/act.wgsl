// Activation functions shared by the activation kernels and the matmul epilogue.
// Codes: 0 identity, 1 relu, 2 leaky relu (alpha = slope), 3 sigmoid, 4 tanh, 5 gelu (erf form).

fn sigmoid_f(x: f32) -> f32 {
    // Branch on the sign so exp never overflows.
    if x >= 0.0 {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
fn erf_f(x: f32) -> f32 {
    let s = sign(x);
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return s * (1.0 - poly * exp(-a * a));
}

fn act_forward(code: u32, alpha: f32, x: f32) -> f32 {
    switch code {
        case 1u: { return max(x, 0.0); }
        case 2u: { return select(alpha * x, x, x > 0.0); }
        case 3u: { return sigmoid_f(x); }
        case 4u: { return tanh(x); }
        case 5u: { return 0.5 * x * (1.0 + erf_f(x * 0.70710678118654752)); }
        default: { return x; }
    }
}

// Derivative of the activation at pre-activation x.
fn act_derivative(code: u32, alpha: f32, x: f32) -> f32 {
    switch code {
        case 1u: { return select(0.0, 1.0, x > 0.0); }
        case 2u: { return select(alpha, 1.0, x > 0.0); }
        case 3u: {
            let s = sigmoid_f(x);
            return s * (1.0 - s);
        }
        case 4u: {
            let t = tanh(x);
            return 1.0 - t * t;
        }
        case 5u: {
            let cdf = 0.5 * (1.0 + erf_f(x * 0.70710678118654752));
            let pdf = 0.39894228040143268 * exp(-0.5 * x * x);
            return cdf + x * pdf;
        }
        default: { return 1.0; }
    }
}

// Derivative from the output y = f(z), for all but gelu and leaky relu with a negative slope
// (whose outputs do not determine the side of zero z is on; the host keeps z for those).
fn act_derivative_from_output(code: u32, alpha: f32, y: f32) -> f32 {
    switch code {
        case 1u: { return select(0.0, 1.0, y > 0.0); }
        case 2u: { return select(alpha, 1.0, y > 0.0); }
        case 3u: { return y * (1.0 - y); }
        case 4u: { return 1.0 - y * y; }
        default: { return 1.0; }
    }
}
