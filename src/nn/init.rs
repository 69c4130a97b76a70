//! Weight initializers, seeded, with Keras's names and formulas.

use rand::{Rng, SeedableRng};

/// How a parameter tensor is filled before training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All equal to the value.
    Constant(f32),
    /// Uniform in [low, high).
    Uniform(f32, f32),
    /// Normal with (mean, std).
    Normal(f32, f32),
    /// Uniform in ±sqrt(6 / (fan_in + fan_out)).
    GlorotUniform,
    /// Normal with std sqrt(2 / (fan_in + fan_out)).
    GlorotNormal,
    /// Uniform in ±sqrt(6 / fan_in).
    HeUniform,
    /// Normal with std sqrt(2 / fan_in).
    HeNormal,
    /// Normal with std sqrt(1 / fan_in).
    LecunNormal,
}

impl Init {
    /// `n` values for a tensor with the given fans, from a seeded generator.
    pub fn sample(self, n: usize, fan_in: usize, fan_out: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (fi, fo) = (fan_in.max(1) as f32, fan_out.max(1) as f32);
        let uniform = |rng: &mut rand::rngs::StdRng, limit: f32| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(-limit..limit)).collect()
        };
        match self {
            Init::Zeros => vec![0.0; n],
            Init::Constant(v) => vec![v; n],
            Init::Uniform(lo, hi) => (0..n).map(|_| rng.random_range(lo..hi)).collect(),
            Init::Normal(mean, std) => normal(&mut rng, n, mean, std),
            Init::GlorotUniform => uniform(&mut rng, (6.0 / (fi + fo)).sqrt()),
            Init::GlorotNormal => normal(&mut rng, n, 0.0, (2.0 / (fi + fo)).sqrt()),
            Init::HeUniform => uniform(&mut rng, (6.0 / fi).sqrt()),
            Init::HeNormal => normal(&mut rng, n, 0.0, (2.0 / fi).sqrt()),
            Init::LecunNormal => normal(&mut rng, n, 0.0, (1.0 / fi).sqrt()),
        }
    }

    /// Parses a Keras-style name: "zeros", "glorot_uniform", "he_normal", ...
    pub fn from_name(name: &str) -> Option<Init> {
        Some(match name.to_ascii_lowercase().replace('-', "_").as_str() {
            "zeros" => Init::Zeros,
            "ones" => Init::Constant(1.0),
            "glorot_uniform" | "xavier_uniform" => Init::GlorotUniform,
            "glorot_normal" | "xavier_normal" => Init::GlorotNormal,
            "he_uniform" | "kaiming_uniform" => Init::HeUniform,
            "he_normal" | "kaiming_normal" => Init::HeNormal,
            "lecun_normal" => Init::LecunNormal,
            _ => return None,
        })
    }
}

/// Box-Muller: two uniforms give two independent standard normals.
fn normal(rng: &mut impl Rng, n: usize, mean: f32, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: keeps ln finite
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push(mean + std * (r * t.cos()) as f32);
        out.push(mean + std * (r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}
