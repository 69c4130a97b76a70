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
    ///
    /// An initializer that [`Init::check`] rejects gives its first parameter everywhere
    /// (e.g. `low` for an empty `Uniform` range) instead of panicking.
    pub fn sample(self, n: usize, fan_in: usize, fan_out: usize, seed: u64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n);
        self.fill(&mut out, n, fan_in, fan_out, seed);
        out
    }

    /// Like [`Init::sample`], but an `OutOfMemory` error instead of an abort when the
    /// host cannot hold `n` values, and an `InvalidArgument` error for a bad initializer.
    pub(crate) fn try_sample(
        self,
        n: usize,
        fan_in: usize,
        fan_out: usize,
        seed: u64,
    ) -> crate::Result<Vec<f32>> {
        self.check()?;
        let mut out = crate::tensor::host_vec(n, "initial weights")?;
        self.fill(&mut out, n, fan_in, fan_out, seed);
        Ok(out)
    }

    /// An `InvalidArgument` error unless the parameters describe a distribution:
    /// finite values, `low < high` with a finite width, `std >= 0`.
    pub fn check(self) -> crate::Result<()> {
        let bad = |detail: String| Err(crate::Error::arg("initializer", detail));
        match self {
            Init::Constant(v) if !v.is_finite() => bad(format!("Constant({v}) is not finite")),
            Init::Uniform(lo, hi) if !(lo < hi && (hi - lo).is_finite()) => bad(format!(
                "Uniform({lo}, {hi}) needs finite bounds with low < high"
            )),
            Init::Normal(mean, std) if !(mean.is_finite() && std.is_finite() && std >= 0.0) => bad(
                format!("Normal({mean}, {std}) needs a finite mean and a finite std >= 0"),
            ),
            _ => Ok(()),
        }
    }

    fn fill(self, out: &mut Vec<f32>, n: usize, fan_in: usize, fan_out: usize, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (fi, fo) = (fan_in.max(1) as f32, fan_out.max(1) as f32);
        let uniform = |out: &mut Vec<f32>, rng: &mut rand::rngs::StdRng, lo: f32, hi: f32| {
            // rand panics on an empty or infinite range; check() reports those.
            if lo < hi && (hi - lo).is_finite() {
                out.extend((0..n).map(|_| rng.random_range(lo..hi)));
            } else {
                out.resize(n, lo);
            }
        };
        match self {
            Init::Zeros => out.resize(n, 0.0),
            Init::Constant(v) => out.resize(n, v),
            Init::Uniform(lo, hi) => uniform(out, &mut rng, lo, hi),
            Init::Normal(mean, std) => normal(out, &mut rng, n, mean, std),
            Init::GlorotUniform => {
                let limit = (6.0 / (fi + fo)).sqrt();
                uniform(out, &mut rng, -limit, limit)
            }
            Init::GlorotNormal => normal(out, &mut rng, n, 0.0, (2.0 / (fi + fo)).sqrt()),
            Init::HeUniform => {
                let limit = (6.0 / fi).sqrt();
                uniform(out, &mut rng, -limit, limit)
            }
            Init::HeNormal => normal(out, &mut rng, n, 0.0, (2.0 / fi).sqrt()),
            Init::LecunNormal => normal(out, &mut rng, n, 0.0, (1.0 / fi).sqrt()),
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
fn normal(out: &mut Vec<f32>, rng: &mut impl Rng, n: usize, mean: f32, std: f32) {
    let end = out.len() + n;
    while out.len() < end {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: keeps ln finite
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push(mean + std * (r * t.cos()) as f32);
        // The pair's second value only when wanted, so `out` never outgrows its reservation.
        if out.len() < end {
            out.push(mean + std * (r * t.sin()) as f32);
        }
    }
}
